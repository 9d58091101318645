/**
 * The format-neutral model of a checkpoint, as the container stores it:
 * tensors with their roles, and the entries they are coded in.
 */
import type { DType } from '../core/dtype.js';

/** What a tensor is to the method. */
export type Role = 'weight' | 'exp_avg' | 'exp_avg_sq' | 'plain';

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

