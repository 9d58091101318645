/**
 * Shared types: how a checkpoint is described inside the codec, and the
 * options of the method.
 */
import type { DType } from './dtype.js';
import type { QuantDomain } from '../method/kmeans.js';

/** What a tensor is to the method. */
export type Role = 'weight' | 'exp_avg' | 'exp_avg_sq' | 'plain';

/** Options of the method (all have defaults, see DEFAULT_OPTIONS). */
export interface CodecOptions {
  /** Weight prune factor numerator: r_w = median|dW| * min(2.5, alpha / sqrt(mean v)). > 0. Used by weightRule `paper`. */
  alpha: number;
  /**
   * How dW is pruned: `paper` (the alpha formula), `magnitude` (keep the `keep`
   * share of largest |dW|) or `saliency` (keep the `keep` share of largest
   * |dW| * sqrt(v)). See lib/prune.ts.
   */
  weightRule: 'paper' | 'magnitude' | 'saliency';
  /** Share of dW kept per chunk by weightRule `magnitude` / `saliency`. (0, 1]. */
  keep: number;
  /** Moment prune factor: r_o = beta * mean|m|. >= 0. */
  beta: number;
  /** Index bits: 2^bits - 1 centers plus zero. 1..8. */
  bits: number;
  /** Code everything exactly (no pruning, no quantisation). */
  lossless: boolean;
  /** Elements per chunk; statistics are per chunk. */
  chunkElements: number;
  /** What a pruned v restores as: the chunk's mean pruned v (`mean`) or 0 (`zero`, the paper). */
  vFill: 'mean' | 'zero';
  /** Clustering domain of v (`log` keeps relative precision; `linear` is the paper). */
  vDomain: QuantDomain;
}

/** A tensor as the container describes it. */
export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
  role: Role;
  /** Index of the entry this tensor belongs to. */
  entry: number;
}

/**
 * The unit of coding: a parameter with its Adam moments (`param`), one
 * tensor on its own (`plain`), or small exact tensors of one dtype coded as
 * one (`pack`, see lib/pack.ts). Chunks of a param entry cover the same
 * element range of all of its tensors; a pack has one chunk, the
 * concatenation of its members.
 */
export interface EntrySpec {
  kind: 'param' | 'plain' | 'pack';
  /** Tensor indices: the weight (or the plain tensor, or a pack's first member), and the moments of a param. */
  weight: number;
  expAvg: number | null;
  expAvgSq: number | null;
  /** Weight coded exactly (keyframe, lossless, plain tensors) instead of as a pruned residual. */
  exactWeight: boolean;
  /** Moments coded exactly (lossless). */
  exactMoments: boolean;
  /** A base tensor of the same name, dtype and shape is used. */
  base: boolean;
  /** Elements per tensor of this entry (a pack: of all members together). */
  elements: number;
  /** A pack's tensors in coding order (members[0] === weight); absent otherwise. */
  members?: number[];
}

/** Raw element bytes of one chunk of an entry, as read from the checkpoint. */
export interface ChunkInput {
  weight: Uint8Array;
  base: Uint8Array | null;
  expAvg: Uint8Array | null;
  expAvgSq: Uint8Array | null;
}

/** Per-chunk statistics, summed per entry into the footer. */
export interface ChunkStats {
  elements: number;
  keptWeights: number;
  keptMoments: number;
  /** Empirical entropy of the chunk's coded symbols, in bits (lossy chunks; 0 otherwise). */
  entropyBits?: number;
  /** Bits of the chunk's coded symbol streams, tables included (lossy chunks; 0 otherwise). */
  symbolBits?: number;
}

/** Options as users pass them: any may be missing or undefined (defaults apply). */
export type LooseOptions = { [K in keyof CodecOptions]?: CodecOptions[K] | undefined };
