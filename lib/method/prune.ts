/**
 * Stage 3 (pure): weight-momentum joint shrinking.
 *
 * ExCP (arXiv 2406.11257), section 3.2 and the reference code:
 * - weight residual: keep dW[i] where |dW[i]| > r_w,
 *   r_w = median(|dW|) * min(2.5, alpha / sqrt(mean(v)));
 * - moments: keep m[i], v[i] where |m[i]| > r_o = beta * mean(|m|) AND dW[i]
 *   was kept (for a keyframe, which has no residual, only the first test).
 * Statistics are taken per chunk (see spec/FORMAT.md, "Chunks").
 *
 * `weightRule` chooses how dW is pruned (the moment rule is the same for all):
 * - `paper`: the formula above. Its factor alpha / sqrt(mean v) depends on
 *   the gradient scale, so one alpha does not carry across models;
 * - `magnitude`: keep the `keep` share of the chunk's largest |dW[i]|;
 * - `saliency`: keep the `keep` share of the largest |dW[i]| * sqrt(v[i]),
 *   the loss increase of undoing dW[i] in the diagonal-Fisher (v ~ E[g^2])
 *   approximation: 1/2 v[i] dW[i]^2. Free of the gradient and weight scale.
 *
 * Pruned entries become exact zeros in the arrays, so downstream "kept" is
 * simply "nonzero": a kept dW has |dW| > r_w >= 0 and a kept m has |m| > r_o
 * >= 0, hence both are nonzero.
 */

import { DEFAULT_OPTIONS } from '../core/constants.js';

/** Counts of what survived. */
export interface PruneResult {
  /** r_w: on |dW| (rules `paper`, `magnitude`) or on |dW| * sqrt(v) (`saliency`). */
  weightThreshold: number;
  momentThreshold: number;
  keptWeights: number;
  keptMoments: number;
  /** Value restored at pruned v positions (0 for the paper's behaviour). */
  vFill: number;
}

const HIST_BINS = 1 << 16;
const histogram = new Int32Array(HIST_BINS);
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * The k-th smallest |x| (0-based), exactly, in two passes: a histogram of the
 * top 16 bits of |x| (monotone in |x| for finite floats) finds the bin, then
 * a histogram of the low 16 bits of the values in that bin finds the value.
 * @param values finite float32 values
 * @param k rank, 0 <= k < length
 * @returns the k-th smallest absolute value
 */
export function selectAbs(values: Float32Array, k: number): number {
  const n = values.length;
  if (n === 0) return 0;
  histogram.fill(0);
  const bits = new Uint32Array(values.buffer, values.byteOffset, n);
  for (let i = 0; i < n; i++) histogram[(bits[i]! & 0x7fffffff) >>> 16]!++;
  return selectAbsFrom(values, k, histogram);
}

/**
 * selectAbs given its first pass: `top[b]` is the number of values whose
 * top 16 bits of |x| are b (an encoder that already reads every value fills
 * it on the way). Only the second pass is left.
 * @param values finite float32 values (non-empty)
 * @param k rank, 0 <= k < length
 * @param top the 65536-bin histogram of (bits(x) & 0x7fffffff) >>> 16
 * @returns the k-th smallest absolute value
 */
export function selectAbsFrom(values: Float32Array, k: number, top: ArrayLike<number>): number {
  const n = values.length;
  const bits = new Uint32Array(values.buffer, values.byteOffset, n);
  let bin = 0;
  let below = 0;
  while (below + top[bin]! <= k) below += top[bin++]!;
  // Second pass: the low 16 bits of the values in that bin settle the rank
  // exactly, with no sort (a chunk of zeros puts every value in one bin).
  const low16 = lowHistogram.fill(0);
  for (let i = 0; i < n; i++) {
    const b = bits[i]! & 0x7fffffff;
    if (b >>> 16 === bin) low16[b & 0xffff]!++;
  }
  let low = 0;
  while (below + low16[low]! <= k) below += low16[low++]!;
  u32[0] = (bin << 16) | low;
  return f32[0]!;
}

const lowHistogram = new Int32Array(HIST_BINS);

/**
 * median(|x|) as torch.median defines it: the lower middle value.
 * @param values finite values
 * @returns the median absolute value (0 for an empty array)
 */
export function medianAbs(values: Float32Array): number {
  return values.length ? selectAbs(values, (values.length - 1) >> 1) : 0;
}

/**
 * mean(|x|) in double precision.
 * @param values finite values
 * @returns the mean absolute value (0 for an empty array)
 */
export function meanAbs(values: Float32Array): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += Math.abs(values[i]!);
  return values.length ? s / values.length : 0;
}

/**
 * The weight threshold r_w of the method.
 * @param residual dW of the chunk
 * @param meanV mean of v over the chunk
 * @param alpha the method's alpha (> 0)
 * @returns r_w
 */
export function weightThreshold(residual: Float32Array, meanV: number, alpha: number): number {
  return medianAbs(residual) * paperFactor(meanV, alpha);
}

/**
 * The factor of the rule `paper`: r_w = median(|dW|) * this.
 * @param meanV mean of v over the chunk
 * @param alpha the method's alpha (> 0)
 * @returns min(2.5, alpha / sqrt(meanV)), or 2.5 when meanV is 0
 */
export function paperFactor(meanV: number, alpha: number): number {
  return meanV > 0 ? Math.min(2.5, alpha / Math.sqrt(meanV)) : 2.5;
}

/**
 * The rank of r_w under the rules that keep a share (`magnitude`,
 * `saliency`): the scores strictly above the score of this rank are kept.
 * @param n values in the chunk (> 0)
 * @param keep share kept, (0, 1]
 * @returns floor((1 - keep) * n), clamped to 0..n - 1
 */
export function keepRank(n: number, keep: number): number {
  return Math.min(n - 1, Math.max(0, Math.floor((1 - keep) * n)));
}

/** How the weight residual is pruned (see the file comment). */
export type WeightRule = 'paper' | 'magnitude' | 'saliency';

/** What pruneJoint reads of the codec options. */
export interface PruneOptions {
  alpha: number;
  beta: number;
  vFill: 'mean' | 'zero';
  /** Weight rule; absent means `paper`. */
  weightRule?: WeightRule;
  /** Share of dW kept by the `magnitude` and `saliency` rules, (0, 1]; absent means DEFAULT_OPTIONS.keep. */
  keep?: number;
}

/**
 * |dW[i]| * sqrt(v[i]) as float32 (v < 0 cannot occur in Adam; it counts as 0).
 * @param residual dW
 * @param v second moment
 * @returns the scores
 */
export function saliencyScores(residual: Float32Array, v: Float32Array): Float32Array {
  const out = new Float32Array(residual.length);
  for (let i = 0; i < residual.length; i++) {
    const vi = v[i]!;
    out[i] = vi > 0 ? Math.abs(residual[i]!) * Math.sqrt(vi) : 0;
  }
  return out;
}

/**
 * Apply the joint prune in place.
 * @param residual dW, or null for a keyframe (no residual: moments tested alone)
 * @param m first moment, or null when the tensor has no optimizer state
 * @param v second moment, or null
 * @param options alpha, beta, weight rule and keep share, and whether pruned v restores as the mean of the pruned v (`'mean'`) or 0 (`'zero'`, the paper)
 * @returns thresholds and counts
 */
export function pruneJoint(
  residual: Float32Array | null,
  m: Float32Array | null,
  v: Float32Array | null,
  options: PruneOptions,
): PruneResult {
  const meanV = v ? meanAbs(v) : 0;
  let rw = 0;
  let keptWeights = 0;
  const rule = options.weightRule ?? 'paper';
  if (residual && rule !== 'paper' && v) {
    const keep = options.keep ?? DEFAULT_OPTIONS.keep;
    const n = residual.length;
    const score = rule === 'saliency' ? saliencyScores(residual, v) : residual;
    // Keep the scores strictly above the (1 - keep) quantile: a zero dW never survives.
    rw = keep >= 1 ? 0 : selectAbs(score, keepRank(n, keep));
    for (let i = 0; i < n; i++) {
      if (Math.abs(score[i]!) > rw && residual[i] !== 0) keptWeights++;
      else residual[i] = 0;
    }
  } else if (residual) {
    rw = weightThreshold(residual, meanV, options.alpha);
    for (let i = 0; i < residual.length; i++) {
      if (Math.abs(residual[i]!) > rw) keptWeights++;
      else residual[i] = 0;
    }
  }
  let ro = 0;
  let keptMoments = 0;
  let fillSum = 0;
  if (m && v) {
    ro = options.beta * meanAbs(m);
    for (let i = 0; i < m.length; i++) {
      const keep = Math.abs(m[i]!) > ro && (residual === null || residual[i] !== 0);
      if (keep) {
        keptMoments++;
      } else {
        fillSum += v[i]!;
        m[i] = 0;
        v[i] = 0;
      }
    }
  }
  const pruned = (m?.length ?? 0) - keptMoments;
  const vFill = options.vFill === 'mean' && pruned > 0 ? Math.fround(fillSum / pruned) : 0;
  return { weightThreshold: rw, momentThreshold: ro, keptWeights, keptMoments, vFill };
}
