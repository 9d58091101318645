/**
 * Selection (pure): the thresholds of the method's pruning rules, found
 * exactly without sorting (lib/method/encode.ts applies them).
 *
 * ExCP (arXiv 2406.11257), section 3.2: the paper's weight threshold is
 * r_w = median(|dW|) * min(2.5, alpha / sqrt(mean(v))); the rules that keep
 * a share (`magnitude`, `saliency`) keep the scores strictly above the one
 * of rank floor((1 - keep) * n).
 */

/** Bins of the selection histograms (16 bits of a float32). */
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

