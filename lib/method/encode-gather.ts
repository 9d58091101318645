/**
 * Passes 1 to 3 of the encoder (lib/method/encode.ts explains the passes and
 * the V8 measurements behind their shape): the residual with the |dW|
 * histogram and the moment sums, then pruning and gathering of dW, m and v,
 * branch-free. Apart from encode.ts because these loops are the part tuned
 * against micro-benchmarks, and read best without the chunk plumbing around
 * them.
 */

/**
 * Pass 1 (see the file comment); sums receives sum |m| and sum |v| (non-finite as 0).
 *
 * Short loops with few stores each (faster than one loop, see the file
 * comment). Non-finite values are rare: the loops only note that one
 * occurred, and then exact but slower loops run.
 */
export function residualPass(
  cur: Float32Array, bas: Float32Array, m: Float32Array, v: Float32Array, residual: Float32Array, top: Int32Array,
  wExc: number[], mExc: number[], vExc: number[], sums: Float64Array,
): void {
  const n = residual.length;
  let bad = 0;
  for (let i = 0; i < n; i++) {
    const d = Math.fround(cur[i]! - bas[i]!);
    residual[i] = d;
    bad |= +(d - d !== 0);
  }
  if (bad) {
    for (let i = 0; i < n; i++) {
      const d = residual[i]!;
      if (d - d !== 0) {
        wExc.push(i);
        residual[i] = 0;
      }
    }
  }
  const rbits = new Int32Array(residual.buffer, residual.byteOffset, n);
  for (let i = 0; i < n; i++) top[(rbits[i]! & 0x7fffffff) >>> 16]!++;
  momentPass(m, v, mExc, vExc, sums);
}

/**
 * The moments' part of pass 1 (a keyframe's whole pass 1): sums receives
 * sum |m| and sum |v| (non-finite as 0), the exception lists their positions.
 */
export function momentPass(m: Float32Array, v: Float32Array, mExc: number[], vExc: number[], sums: Float64Array): void {
  const n = m.length;
  let sumM = 0;
  let sumV = 0;
  let bad = 0;
  for (let i = 0; i < n; i++) {
    const x = m[i]!;
    const y = v[i]!;
    bad |= +(x - x !== 0) | +(y - y !== 0);
    sumM += Math.abs(x);
    sumV += Math.abs(y);
  }
  if (bad) {
    sumM = sumNonFinite(m, mExc);
    sumV = sumNonFinite(v, vExc);
  }
  sums[0] = sumM;
  sums[1] = sumV;
}

/**
 * The scores of the rule `saliency`, |dW| sqrt(v) as float32 (a v that is
 * not finite and > 0 scores 0), with the top-bits histogram of the scores
 * for the selection of r_w.
 */
export function saliencyPass(residual: Float32Array, v: Float32Array, score: Float32Array, top: Int32Array): void {
  const n = residual.length;
  for (let i = 0; i < n; i++) {
    const y = v[i]!;
    score[i] = y > 0 && y - y === 0 ? Math.abs(residual[i]!) * Math.sqrt(y) : 0;
  }
  const sbits = new Int32Array(score.buffer, score.byteOffset, n);
  for (let i = 0; i < n; i++) top[(sbits[i]! & 0x7fffffff) >>> 16]!++;
}

/** sum |x| in order with non-finite values as 0, and their positions. */
function sumNonFinite(values: Float32Array, positions: number[]): number {
  let sum = 0;
  for (let i = 0; i < values.length; i++) {
    const x = values[i]!;
    if (x - x !== 0) positions.push(i);
    else sum += Math.abs(x);
  }
  return sum;
}

/**
 * Pass 2 for dW under a threshold: gathers the dW whose score is above rw
 * (|score| > rw) and dW != 0, branch-free (writes past the current end are
 * overwritten or ignored). The score is dW itself (rules `paper`,
 * `magnitude`) or |dW| sqrt(v) (`saliency`). counts[0] receives how many.
 */
export function gatherWeights(residual: Float32Array, score: Float32Array, rw: number, nzW: Float32Array, slotW: Int32Array, counts: Float64Array): void {
  const n = residual.length;
  let nw = 0;
  for (let i = 0; i < n; i++) {
    const d = residual[i]!;
    nzW[nw] = d;
    slotW[nw] = i;
    nw += +(Math.abs(score[i]!) > rw) & +(d !== 0);
  }
  counts[0] = nw;
}

/**
 * Pass 2 for dW under the rule `magnitude`: keeps the |dW| above the k-th
 * smallest, as selectAbs and the threshold would, with the selection's
 * second pass over the gathered values only. For finite floats the order of
 * |x| is the order of their bits without the sign, so: gather every dW whose
 * top 16 bits are at least the k-th smallest's bin (the histogram `top`
 * finds it), rank the bin's values by their low 16 bits, and compact the
 * gathered to those strictly above r_w (never a zero: its bits are 0).
 * counts[0] receives how many were kept.
 */
export function gatherTopWeights(residual: Float32Array, k: number, top: Int32Array, nzW: Float32Array, slotW: Int32Array, counts: Float64Array): void {
  const n = residual.length;
  let bin = 0;
  let below = 0;
  while (below + top[bin]! <= k) below += top[bin++]!;
  const rbits = new Int32Array(residual.buffer, residual.byteOffset, n);
  const lo = Math.max(bin << 16, 1);
  let nw = 0;
  for (let i = 0; i < n; i++) {
    nzW[nw] = residual[i]!;
    slotW[nw] = i;
    nw += +((rbits[i]! & 0x7fffffff) >= lo);
  }
  const nzBits = new Int32Array(nzW.buffer, nzW.byteOffset, nzW.length);
  const low16 = lowHistogram.fill(0);
  let inBin = 0;
  for (let t = 0; t < nw; t++) {
    const b = nzBits[t]! & 0x7fffffff;
    if (b >>> 16 === bin) {
      low16[b & 0xffff]!++;
      inBin++;
    }
  }
  // The zeros of bin 0 were not gathered; they rank lowest.
  if (bin === 0) low16[0]! += top[0]! - inBin;
  let low = 0;
  while (below + low16[low]! <= k) below += low16[low++]!;
  const rwBits = (bin << 16) | low;
  let kept = 0;
  for (let t = 0; t < nw; t++) {
    const b = nzBits[t]!;
    nzBits[kept] = b;
    slotW[kept] = slotW[t]!;
    kept += +((b & 0x7fffffff) > rwBits);
  }
  counts[0] = kept;
}

const lowHistogram = new Int32Array(1 << 16);

/**
 * Pass 3 for the moments: m and v only at the kept dW (30% at the
 * defaults), branch-free, marking the kept moments; then the sum of the
 * pruned v over the chunk, in order (a kept one adds a zero). counts
 * receives: [1] the kept moments, [2] the gathered v, [3] that sum.
 * (Separate loops measured faster in V8 than one loop doing all of pass 3.)
 */
export function gatherMoments(
  nw: number, m: Float32Array, v: Float32Array, ro: number, finite: boolean,
  slotW: Int32Array, nzM: Float32Array, slotM: Int32Array, nzV: Float32Array, slotV: Int32Array, counts: Float64Array,
): void {
  const n = m.length;
  if (keptMask.length < n) keptMask = new Uint8Array(n);
  const kept = keptMask;
  kept.fill(0, 0, n);
  let nm = 0;
  let nv = 0;
  for (let t = 0; t < nw; t++) {
    const i = slotW[t]!;
    let x = m[i]!;
    x = x - x === 0 ? x : 0;
    const km = +(Math.abs(x) > ro);
    nzM[nm] = x;
    slotM[nm] = t;
    let y = v[i]!;
    y = y - y === 0 ? y : 0;
    nzV[nv] = y;
    slotV[nv] = nm;
    nv += km & +(y !== 0);
    nm += km;
    kept[i] = km;
  }
  let fillSum = 0;
  if (finite) {
    for (let i = 0; i < n; i++) fillSum += v[i]! * (1 - kept[i]!);
  } else {
    for (let i = 0; i < n; i++) {
      const y = v[i]!;
      fillSum += (y - y === 0 ? y : 0) * (1 - kept[i]!);
    }
  }
  counts[1] = nm;
  counts[2] = nv;
  counts[3] = fillSum;
}

let keptMask = new Uint8Array(0);
