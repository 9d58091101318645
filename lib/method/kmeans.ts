/**
 * Stage 4 (pure): non-uniform quantisation by 1-D k-means.
 *
 * ExCP section 3.3: per tensor and per stream, k-means over the *nonzero*
 * values with 2^bits - 1 centers; symbol 0 is reserved for "zero / pruned".
 *
 * Why a histogram: Lloyd's algorithm over a million values per iteration is
 * the slowest part of the reference code. Here the values are first binned
 * by the bits of their magnitude (per sign), which gives every bin the same
 * *relative* width (~0.4% at 2048 bins per sign over ~8 binades), so heavy
 * tails and the dense region near the prune threshold are both resolved.
 * Weighted Lloyd then runs on at most 4096 bin means, and one final pass over
 * the exact values (during assignment) moves each center to the mean of its
 * members.
 *
 * Determinism: initial centers sit at the weighted quantiles (j + 0.5) / k,
 * so no random seed is involved and equal inputs give equal bytes.
 *
 * Domains: `linear` is the paper's. `log` clusters log|x| (for Adam's v,
 * which spans many orders of magnitude and enters the update as 1/sqrt(v),
 * so relative error is what matters); assignment thresholds are then
 * geometric midpoints.
 */

import type { QuantDomain } from '../core/options.js';

export type { QuantDomain };

const BINS_PER_SIGN = 2048;
const MAX_ITERATIONS = 60;

/**
 * Fit up to k centers to nonzero finite values.
 * @param values nonzero finite values (length may be 0)
 * @param k number of centers, 1..255
 * @param domain clustering domain; `log` requires positive values (falls back to linear otherwise)
 * @returns centers, ascending, distinct, length <= k (exact values when there are at most k distinct values)
 */
export function fitKMeans(values: Float32Array, k: number, domain: QuantDomain = 'linear'): Float32Array {
  const n = values.length;
  if (n === 0) return new Float32Array(0);
  if (n <= k) return distinct(values, k);
  const useLog = domain === 'log' && allPositive(values);
  const { points, weights } = histogramPoints(values, useLog);
  if (points.length <= k) {
    const exact = distinct(values, k);
    if (exact.length <= k) return exact;
  }
  const centers = lloyd(points, weights, k);
  const out = new Float32Array(centers.length);
  for (let j = 0; j < centers.length; j++) out[j] = useLog ? Math.exp(centers[j]!) : centers[j]!;
  return dedupeSorted(out);
}

function allPositive(values: Float32Array): boolean {
  for (let i = 0; i < values.length; i++) if (!(values[i]! > 0)) return false;
  return true;
}

/** Sorted distinct values if there are at most k of them, else more than k (caller checks). */
function distinct(values: Float32Array, k: number): Float32Array {
  const seen = new Set<number>();
  for (let i = 0; i < values.length && seen.size <= k; i++) seen.add(values[i]!);
  return Float32Array.from([...seen].sort((a, b) => a - b));
}

function dedupeSorted(centers: Float32Array): Float32Array {
  const sorted = centers.slice().sort();
  let w = 0;
  for (let i = 0; i < sorted.length; i++) if (i === 0 || sorted[i] !== sorted[w - 1]) sorted[w++] = sorted[i]!;
  return sorted.slice(0, w);
}

/** Bin means and counts, ascending by value, in the clustering domain. */
function histogramPoints(values: Float32Array, useLog: boolean): { points: Float64Array; weights: Float64Array } {
  const n = values.length;
  const bits = new Uint32Array(values.buffer, values.byteOffset, n);
  // Per sign (0 positive, 1 negative): smallest and largest magnitude bits.
  magnitudeBounds(bits, bounds);
  const lo0 = bounds[0]!, hi0 = bounds[1]!, lo1 = bounds[2]!, hi1 = bounds[3]!;
  let shift0 = 0, shift1 = 0;
  while (hi0 >= lo0 && (hi0 - lo0) >>> shift0 >= BINS_PER_SIGN) shift0++;
  while (hi1 >= lo1 && (hi1 - lo1) >>> shift1 >= BINS_PER_SIGN) shift1++;
  // bins 0..B-1: negative values, most negative first; B..2B-1: positive ascending.
  // Integer counts: an Int32Array increment is about twice as fast here.
  const count = new Int32Array(2 * BINS_PER_SIGN);
  const sum = new Float64Array(2 * BINS_PER_SIGN);
  // log requires positive values (the caller checked), so every bin is positive.
  if (useLog) binLog(values, bits, lo0, shift0, count, sum);
  else binLinear(values, bits, lo0, shift0, lo1, shift1, count, sum);
  let m = 0;
  for (let i = 0; i < count.length; i++) if (count[i]! > 0) m++;
  const points = new Float64Array(m);
  const weights = new Float64Array(m);
  let j = 0;
  for (let i = 0; i < count.length; i++) {
    if (count[i]! > 0) {
      points[j] = sum[i]! / count[i]!;
      weights[j++] = count[i]!;
    }
  }
  return { points, weights };
}

/*
 * The loops of histogramPoints are functions of their own: V8 then compiles
 * each as a whole after a few calls, instead of compiling the one large
 * function on-stack loop by loop (measured slower on the first chunks).
 */
const bounds = new Float64Array(4);

/**
 * Branch-free (the signs mix at random): a value of the other sign offers
 * 0x7fffffff to the minimum and 0 to the maximum, which change nothing that
 * is used (a side with no values keeps hi < lo, so no bins).
 * out: lo0, hi0 (positive), lo1, hi1 (negative).
 */
function magnitudeBounds(bits: Uint32Array, out: Float64Array): void {
  let lo0 = 0xffffffff, lo1 = 0xffffffff, hi0 = 0, hi1 = 0;
  for (let i = 0; i < bits.length; i++) {
    const b = bits[i]!;
    const mag = b & 0x7fffffff;
    const neg = b >>> 31;
    lo0 = Math.min(lo0, mag | (neg * 0x7fffffff));
    hi0 = Math.max(hi0, mag * (1 - neg));
    lo1 = Math.min(lo1, mag | ((1 - neg) * 0x7fffffff));
    hi1 = Math.max(hi1, mag * neg);
  }
  out[0] = lo0;
  out[1] = hi0;
  out[2] = lo1;
  out[3] = hi1;
}

function binLog(values: Float32Array, bits: Uint32Array, lo0: number, shift0: number, count: Int32Array, sum: Float64Array): void {
  for (let i = 0; i < values.length; i++) {
    const bin = BINS_PER_SIGN + (((bits[i]! & 0x7fffffff) - lo0) >>> shift0);
    count[bin]!++;
    sum[bin]! += Math.log(values[i]!);
  }
}

function binLinear(values: Float32Array, bits: Uint32Array, lo0: number, shift0: number, lo1: number, shift1: number, count: Int32Array, sum: Float64Array): void {
  const words = new Int32Array(bits.buffer, bits.byteOffset, bits.length);
  for (let i = 0; i < values.length; i++) {
    const b = words[i]!;
    const mag = b & 0x7fffffff;
    // Both candidates in int32 arithmetic, then a branch-free choice by the
    // sign mask (a branch on the sign mispredicts). The candidate used has
    // mag >= its lo, so `>>` equals the `>>>` of the definition; the other
    // one may be garbage and is masked off.
    const negMask = b >> 31;
    const below = (BINS_PER_SIGN - 1 - ((mag - lo1) >> shift1)) | 0;
    const above = (BINS_PER_SIGN + ((mag - lo0) >> shift0)) | 0;
    const bin = (above & ~negMask) | (below & negMask);
    count[bin]!++;
    sum[bin]! += values[i]!;
  }
}

/** Weighted Lloyd on sorted points; returns ascending centers (empty clusters dropped). */
function lloyd(points: Float64Array, weights: Float64Array, k: number): Float64Array {
  const m = points.length;
  let total = 0;
  for (let i = 0; i < m; i++) total += weights[i]!;
  let centers = new Float64Array(k);
  let cum = 0;
  let p = 0;
  for (let j = 0; j < k; j++) {
    const target = ((j + 0.5) / k) * total;
    while (p < m - 1 && cum + weights[p]! <= target) cum += weights[p++]!;
    centers[j] = points[p]!;
  }
  const mids = new Float64Array(k);
  // Each step assigns the sorted points by walking them once: a point moves
  // to the next cluster while it is above that cluster's midpoint. So each
  // cluster is a run of points, found by a scan and summed in local
  // variables (the same additions in the same order as accumulating point
  // by point into arrays, which was slower).
  const xw = new Float64Array(m);
  for (let i = 0; i < m; i++) xw[i] = points[i]! * weights[i]!;
  for (let iter = 0; iter < MAX_ITERATIONS; iter++) {
    for (let j = 0; j + 1 < k; j++) mids[j] = (centers[j]! + centers[j + 1]!) / 2;
    let moved = false;
    const next = new Float64Array(k);
    let start = 0;
    for (let j = 0; j < k; j++) {
      let end = m;
      if (j < k - 1) {
        const mid = mids[j]!;
        end = start;
        while (end < m && !(points[end]! > mid)) end++;
      }
      let sum = 0;
      let count = 0;
      for (let i = start; i < end; i++) {
        sum += xw[i]!;
        count += weights[i]!;
      }
      start = end;
      next[j] = count > 0 ? sum / count : centers[j]!;
      if (next[j] !== centers[j]) moved = true;
    }
    centers = next;
    if (!moved) break;
  }
  // Drop clusters that ended empty: their symbol would never be used.
  const counts = new Float64Array(k);
  let c = 0;
  for (let i = 0; i < m; i++) {
    while (c < k - 1 && points[i]! > (centers[c]! + centers[c + 1]!) / 2) c++;
    counts[c]! += weights[i]!;
  }
  return centers.filter((_, j) => counts[j]! > 0);
}

/**
 * Decision thresholds between consecutive centers: midpoints (linear) or
 * geometric midpoints (log, for positive centers).
 * @param centers ascending centers
 * @param domain the domain the centers were fitted in
 * @returns length centers.length - 1
 */
export function clusterBoundaries(centers: Float32Array, domain: QuantDomain): Float64Array {
  const b = new Float64Array(Math.max(0, centers.length - 1));
  const geometric = domain === 'log' && centers.length > 0 && centers[0]! > 0;
  for (let j = 0; j + 1 < centers.length; j++) {
    b[j] = geometric ? Math.sqrt(centers[j]! * centers[j + 1]!) : (centers[j]! + centers[j + 1]!) / 2;
  }
  return b;
}

/**
 * Symbol of each value: 1 + index of the nearest center (in the domain).
 * @param values nonzero finite values
 * @param centers ascending centers (non-empty when values is non-empty)
 * @param domain clustering domain
 * @param out symbols, same length as values
 * @returns `out`
 */
export function assignClusters(values: Float32Array, centers: Float32Array, domain: QuantDomain, out: Uint8Array): Uint8Array {
  const bounds = clusterBoundaries(centers, domain);
  const nb = bounds.length;
  for (let i = 0; i < values.length; i++) {
    const x = values[i]!;
    let lo = 0;
    let hi = nb;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (x > bounds[mid]!) lo = mid + 1;
      else hi = mid;
    }
    out[i] = lo + 1;
  }
  return out;
}

/**
 * Move each linear-domain center to the exact mean of its members (one Lloyd
 * step on the real values instead of the bin means). Log-domain centers are
 * left as fitted.
 * @param values the values that were assigned
 * @param symbols their symbols (1-based)
 * @param centers modified in place
 * @param domain clustering domain
 */
export function refineCenters(values: Float32Array, symbols: Uint8Array, centers: Float32Array, domain: QuantDomain): void {
  if (domain === 'log') return;
  const sums = new Float64Array(centers.length);
  const counts = new Float64Array(centers.length);
  for (let i = 0; i < values.length; i++) {
    const s = symbols[i]! - 1;
    sums[s]! += values[i]!;
    counts[s]!++;
  }
  for (let j = 0; j < centers.length; j++) if (counts[j]! > 0) centers[j] = sums[j]! / counts[j]!;
}
