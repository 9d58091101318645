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
 * Pruned entries become exact zeros in the arrays, so downstream "kept" is
 * simply "nonzero": a kept dW has |dW| > r_w >= 0 and a kept m has |m| > r_o
 * >= 0, hence both are nonzero.
 */

/** Counts of what survived. */
export interface PruneResult {
  weightThreshold: number;
  momentThreshold: number;
  keptWeights: number;
  keptMoments: number;
  /** Value restored at pruned v positions (0 for the paper's behaviour). */
  vFill: number;
}

const HIST_BINS = 1 << 16;
const histogram = new Float64Array(HIST_BINS);
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
  let bin = 0;
  let below = 0;
  while (below + histogram[bin]! <= k) below += histogram[bin++]!;
  // Second pass: the low 16 bits of the values in that bin settle the rank
  // exactly, with no sort (a chunk of zeros puts every value in one bin).
  histogram.fill(0);
  for (let i = 0; i < n; i++) {
    const b = bits[i]! & 0x7fffffff;
    if (b >>> 16 === bin) histogram[b & 0xffff]!++;
  }
  let low = 0;
  while (below + histogram[low]! <= k) below += histogram[low++]!;
  u32[0] = (bin << 16) | low;
  return f32[0]!;
}

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
  const factor = meanV > 0 ? Math.min(2.5, alpha / Math.sqrt(meanV)) : 2.5;
  return medianAbs(residual) * factor;
}

/**
 * Apply the joint prune in place.
 * @param residual dW, or null for a keyframe (no residual: moments tested alone)
 * @param m first moment, or null when the tensor has no optimizer state
 * @param v second moment, or null
 * @param options alpha, beta, and whether pruned v restores as the mean of the pruned v (`'mean'`) or 0 (`'zero'`, the paper)
 * @returns thresholds and counts
 */
export function pruneJoint(
  residual: Float32Array | null,
  m: Float32Array | null,
  v: Float32Array | null,
  options: { alpha: number; beta: number; vFill: 'mean' | 'zero' },
): PruneResult {
  const meanV = v ? meanAbs(v) : 0;
  let rw = 0;
  let keptWeights = 0;
  if (residual) {
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
