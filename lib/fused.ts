/**
 * The encoder's common chunk in a few fused passes: a lossy weight coded
 * against a base, with lossy moments, under the weight rules `paper` and
 * `magnitude` (the default). Passes 1 to 4 below read float32 (views of F32
 * input; BF16 and F16 are converted first, as the staged path does); pass 5
 * is for F32 (other dtypes restore through lib/codec.ts's reconstruct). It produces exactly the bytes of the
 * stage-by-stage composition in lib/codec.ts (residual, extractNonFinite,
 * pruneJoint, three quantizeStream, reconstruct, hash), which stays the
 * definition and the path of every other chunk; spec/fused.spec.ts checks
 * the two against each other.
 *
 * The stage-by-stage path runs about fifteen passes over the chunk, with
 * float copies of m, v and the restored tensors. Here:
 *   1. residual (a float32 view for F32 input, no copies), the |dW|
 *      histogram of the selection's first pass, sum |m| and sum |v|;
 *   2. dW gathered where it may be kept (for the rule `magnitude`, the
 *      selection's second pass then looks at the gathered values only);
 *   3. m and v read at the kept dW only, and gathered; the pruned v summed;
 *   4. k-means and symbol assignment over the gathered values, which also
 *      yields the contexts of m and v (the nonzero dW and m symbols) and the
 *      weight symbols' counts for the entropy statistic;
 *   5. the restored words, block by block: a copy of the base (w), zeros
 *      (m) and the fill (v), then only the kept positions written, and each
 *      block hashed while it is in cache.
 * Nothing is written into the input buffers. Non-finite values (rare) are
 * only detected by the fast loops; exact slower loops then handle them.
 *
 * V8 notes, measured in micro-benchmarks on this machine: short loops with
 * one or two typed-array stores each ran faster than one loop doing all of
 * it (pass 1: 6 ns against 9 ns per element); a never-taken branch that
 * pushes to an array made a summing loop 3x slower; and hot loops run in
 * the interpreter until compiled, which the warm-up at the end shortens.
 */
import { DEFAULT_OPTIONS } from './constants.js';
import { Hasher, hashBytes } from './hash.js';
import { selectAbsFrom } from './prune.js';
import { quantizeGathered } from './quantize.js';
import { type ChunkCode, type Exceptions, type SymbolCost, encodePayload, entropyOfJoint } from './entropy.js';
import { type ChunkLayout, type EncodedChunk, reconstructChunk, restoredDigests } from './codec.js';
import { type DType, DTYPE_BYTES, LOSSY_DTYPES, toFloat32 } from './dtype.js';
import type { ChunkInput, CodecOptions } from './types.js';
import { Scratch } from './scratch.js';

/**
 * Code a chunk by the fused passes when it is of the common kind.
 * @param layout the entry's dtypes and modes
 * @param input raw element bytes of the chunk
 * @param options method options
 * @returns the encoded chunk (the same as encodeChunk's), or null when the chunk is of another kind
 */
export function encodeFused(layout: ChunkLayout, input: ChunkInput, options: CodecOptions): EncodedChunk | null {
  if (!warmedUp) warmUp();
  const rule = options.weightRule ?? 'paper';
  const { base, expAvg, expAvgSq } = input;
  const wd = layout.weightDtype;
  const md = layout.momentDtype;
  if (!LOSSY_DTYPES.has(wd) || md === null || !LOSSY_DTYPES.has(md) || layout.exactWeight || layout.exactMoments || !layout.base) return null;
  if (!base || !expAvg || !expAvgSq || (rule !== 'paper' && rule !== 'magnitude')) return null;
  const eb = DTYPE_BYTES[wd];
  const mb = DTYPE_BYTES[md];
  const n = input.weight.length / eb;
  if (n === 0 || !Number.isInteger(n) || base.length !== n * eb || expAvg.length !== n * mb || expAvgSq.length !== n * mb) return null;

  const baseDigest = hashBytes(base);
  const cur = floats(input.weight, wd, SLOT_CUR, n);
  const bas = floats(base, wd, SLOT_BASE, n);
  const m = floats(expAvg, md, SLOT_M, n);
  const v = floats(expAvgSq, md, SLOT_V, n);

  // Pass 1: residual (non-finite -> exception, 0), |dW| top-bits histogram, sum |m|, sum |v|.
  const residual = work.f32(SLOT_RESIDUAL, n);
  const top = topHistogram.fill(0);
  const wExc: number[] = [];
  const mExc: number[] = [];
  const vExc: number[] = [];
  residualPass(cur, bas, m, v, residual, top, wExc, mExc, vExc, sums);
  const sumM = sums[0]!;
  const sumV = sums[1]!;

  // Passes 2 and 3: prune and gather, branch-free (kept and pruned mix at
  // random). dW is kept where |dW| > r_w and dW != 0; m and v where that
  // holds and |m| > r_o. The slot of a gathered value is its index among the
  // positions its stream is coded at: all (dW), kept dW (m), kept m (v).
  // The thresholds are pruneJoint's (the paper's rule runs the selection's
  // second pass over the whole chunk: its r_w is not a value of the chunk).
  const nzW = work.f32(SLOT_NZ_W, n);
  const slotW = work.i32(SLOT_SLOT_W, n);
  if (rule === 'paper') {
    const meanV = sumV / n;
    const factor = meanV > 0 ? Math.min(2.5, options.alpha / Math.sqrt(meanV)) : 2.5;
    gatherWeights(residual, selectAbsFrom(residual, (n - 1) >> 1, top) * factor, nzW, slotW, counts);
  } else {
    const keep = options.keep ?? DEFAULT_OPTIONS.keep;
    const rank = Math.min(n - 1, Math.max(0, Math.floor((1 - keep) * n)));
    if (keep >= 1) gatherWeights(residual, 0, nzW, slotW, counts);
    else gatherTopWeights(residual, rank, top, nzW, slotW, counts);
  }
  const ro = options.beta * (sumM / n);
  // The moments are gathered among the kept dW only: arrays of that size do.
  const keptW = counts[0]!;
  const nzM = work.f32(SLOT_NZ_M, keptW);
  const slotM = work.i32(SLOT_SLOT_M, keptW);
  const nzV = work.f32(SLOT_NZ_V, keptW);
  const slotV = work.i32(SLOT_SLOT_V, keptW);
  gatherMoments(keptW, m, v, ro, vExc.length === 0, slotW, nzM, slotM, nzV, slotV, counts);
  const nw = counts[0]!;
  const nm = counts[1]!;
  const nv = counts[2]!;
  const fillSum = counts[3]!;
  const keptWeights = nw;
  const keptMoments = nm;
  const pruned = n - keptMoments;
  const vFill = options.vFill === 'mean' && pruned > 0 ? Math.fround(fillSum / pruned) : 0;

  // Pass 4: k-means and assignment over the gathered values; the nonzero
  // symbols come out in order, and they are the contexts of the next stream.
  const wOrdered = work.u8(SLOT_ORDER_W, nw);
  const mOrdered = work.u8(SLOT_ORDER_M, nm);
  const wMembers = new Float64Array(256);
  const wq = quantizeGathered(nzW.subarray(0, nw), slotW, n, options.bits, 'linear', wOrdered, wMembers);
  // m is coded where dW was kept: nw positions, of which the nm gathered are nonzero.
  const mq = quantizeGathered(nzM.subarray(0, nm), slotM, nw, options.bits, 'linear', mOrdered);
  const vq = quantizeGathered(nzV.subarray(0, nv), slotV, nm, options.bits, options.vDomain);

  const weightExceptions = pickExceptions(input.weight, wExc, eb);
  const mExceptions = pickExceptions(expAvg, mExc, mb);
  const vExceptions = pickExceptions(expAvgSq, vExc, mb);
  const code: ChunkCode = {
    baseDigest,
    weight: { residual: wq, exceptions: weightExceptions },
    moments: { m: mq, v: vq, vFill, mExceptions, vExceptions },
  };
  // Pass 5. F32 restores to the float32 words themselves; other dtypes
  // through the decoder's reconstruct (fresh arrays, as restore makes them).
  const digests = wd !== 'F32' || md !== 'F32'
    ? restoredDigests(reconstructChunk(layout, code, n, base, null, null, null))
    : restoredDigestsF32(n, bas, slotW, slotM, nw, nm, wOrdered, wq.centers, mq.symbols, mq.centers, vq.symbols, vq.centers, vFill, cur, m, v, wExc, mExc, vExc);
  const cost: SymbolCost = { entropyBits: 0, symbolBits: 0 };
  // The weight symbols' counts are the members of each center, and zeros elsewhere.
  const wCounts = new Float64Array(256);
  wCounts[0] = n - nw;
  for (let s = 0; s < wq.centers.length; s++) wCounts[s + 1] = wMembers[s]!;
  const weightEntropyBits = entropyOfJoint(wCounts, 256);
  const payload = encodePayload(code, n, cost, { mContexts: wOrdered, vContexts: mOrdered, weightEntropyBits });
  return { payload, digests, baseDigest, stats: { elements: n, keptWeights, keptMoments, entropyBits: cost.entropyBits, symbolBits: cost.symbolBits } };
}

const sums = new Float64Array(2);
const counts = new Float64Array(4);

/**
 * Pass 1 (see the file comment); sums receives sum |m| and sum |v| (non-finite as 0).
 *
 * Short loops with few stores each (faster than one loop, see the file
 * comment). Non-finite values are rare: the loops only note that one
 * occurred, and then exact but slower loops run.
 */
function residualPass(
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
  let sumM = 0;
  let sumV = 0;
  bad = 0;
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
 * Pass 3 for dW under a threshold: gathers the dW with |dW| > rw and
 * dW != 0, branch-free (writes past the current end are overwritten or
 * ignored). counts[0] receives how many.
 */
function gatherWeights(residual: Float32Array, rw: number, nzW: Float32Array, slotW: Int32Array, counts: Float64Array): void {
  const n = residual.length;
  let nw = 0;
  for (let i = 0; i < n; i++) {
    const d = residual[i]!;
    nzW[nw] = d;
    slotW[nw] = i;
    nw += +(Math.abs(d) > rw) & +(d !== 0);
  }
  counts[0] = nw;
}

/**
 * Pass 3 for dW under the rule `magnitude`: keeps the |dW| above the k-th
 * smallest, as selectAbs and the threshold would, with the selection's
 * second pass over the gathered values only. For finite floats the order of
 * |x| is the order of their bits without the sign, so: gather every dW whose
 * top 16 bits are at least the k-th smallest's bin (the histogram `top`
 * finds it), rank the bin's values by their low 16 bits, and compact the
 * gathered to those strictly above r_w (never a zero: its bits are 0).
 * counts[0] receives how many were kept.
 */
function gatherTopWeights(residual: Float32Array, k: number, top: Int32Array, nzW: Float32Array, slotW: Int32Array, counts: Float64Array): void {
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
function gatherMoments(
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

const BLOCK = 4096;
const blockW = new Float32Array(BLOCK);
const blockWBits = new Int32Array(blockW.buffer);
const blockM = new Int32Array(BLOCK);
const blockV = new Int32Array(BLOCK);
const oneF32 = new Float32Array(1);
const oneI32 = new Int32Array(oneF32.buffer);

function bitsOf(x: number): number {
  oneF32[0] = x;
  return oneI32[0]!;
}

/**
 * Digests of the bytes restore will produce for this chunk (weight, m, v),
 * without making them whole: the words are made block by block, exceptions
 * patched in, and each block hashed while it is in cache. The same values
 * as reconstructInto: w = fround(base + center) where dW was kept, else the
 * base bits; m and v are their centers where coded, 0 at a symbol 0, and 0
 * (m) or vFill (v) where not coded; exceptions are the original bits.
 *
 * Each block starts as a copy of the base (w), zeros (m) and vFill (v), and
 * only the kept positions are written: the gather's slots say where they are
 * (slotW[t] is the position of the t-th kept dW, slotW[slotM[u]] that of
 * the u-th kept moment), and the t-th nonzero symbol of each stream is its
 * symbol there.
 */
function restoredDigestsF32(
  n: number, bas: Float32Array, slotW: Int32Array, slotM: Int32Array, nw: number, nm: number,
  wOrdered: Uint8Array, wCenters: Float32Array, mSym: Uint8Array, mCenters: Float32Array, vSym: Uint8Array, vCenters: Float32Array, vFill: number,
  cur: Float32Array, m: Float32Array, v: Float32Array, wExc: number[], mExc: number[], vExc: number[],
): string[] {
  const wAdd = new Float64Array(wCenters.length + 1);
  for (let s = 0; s < wCenters.length; s++) wAdd[s + 1] = wCenters[s]!;
  const mWords = new Int32Array(mCenters.length + 1);
  for (let s = 0; s < mCenters.length; s++) mWords[s + 1] = bitsOf(mCenters[s]!);
  const vWords = new Int32Array(vCenters.length + 1);
  for (let s = 0; s < vCenters.length; s++) vWords[s + 1] = bitsOf(vCenters[s]!);
  const fillBits = bitsOf(vFill);
  const basBits = new Int32Array(bas.buffer, bas.byteOffset, n);
  const curBits = new Int32Array(cur.buffer, cur.byteOffset, n);
  const mBits = new Int32Array(m.buffer, m.byteOffset, n);
  const vBits = new Int32Array(v.buffer, v.byteOffset, n);
  const hw = new Hasher();
  const hm = new Hasher();
  const hv = new Hasher();
  const wBytes = new Uint8Array(blockW.buffer);
  const mBytes = new Uint8Array(blockM.buffer);
  const vBytes = new Uint8Array(blockV.buffer);
  let t = 0;
  let u = 0;
  let ew = 0;
  let em = 0;
  let ev = 0;
  for (let start = 0; start < n; start += BLOCK) {
    const end = Math.min(n, start + BLOCK);
    blockWBits.set(basBits.subarray(start, end));
    blockM.fill(0);
    blockV.fill(fillBits);
    // Kept dW in this block: w = fround(base + center); m at its m symbol.
    for (; t < nw; t++) {
      const i = slotW[t]!;
      if (i >= end) break;
      blockW[i - start] = bas[i]! + wAdd[wOrdered[t]!]!;
      blockM[i - start] = mWords[mSym[t]!]!;
    }
    // Kept moments in this block: v at its v symbol (0 is the value 0).
    for (; u < nm; u++) {
      const i = slotW[slotM[u]!]!;
      if (i >= end) break;
      blockV[i - start] = vWords[vSym[u]!]!;
    }
    for (; ew < wExc.length && wExc[ew]! < end; ew++) blockWBits[wExc[ew]! - start] = curBits[wExc[ew]!]!;
    for (; em < mExc.length && mExc[em]! < end; em++) blockM[mExc[em]! - start] = mBits[mExc[em]!]!;
    for (; ev < vExc.length && vExc[ev]! < end; ev++) blockV[vExc[ev]! - start] = vBits[vExc[ev]!]!;
    const bytes = 4 * (end - start);
    hw.update(wBytes.subarray(0, bytes));
    hm.update(mBytes.subarray(0, bytes));
    hv.update(vBytes.subarray(0, bytes));
  }
  return [hw.digest(), hm.digest(), hv.digest()];
}

function pickExceptions(raw: Uint8Array, positions: number[], eb: number): Exceptions {
  const out = new Uint8Array(positions.length * eb);
  positions.forEach((p, i) => out.set(raw.subarray(p * eb, p * eb + eb), i * eb));
  return { positions, raw: out };
}

/*
 * Per-thread scratch, reused from chunk to chunk (a worker codes one chunk
 * at a time; nothing returned points into it).
 */
const SLOT_CUR = 0;
const SLOT_BASE = 1;
const SLOT_M = 2;
const SLOT_V = 3;
const SLOT_RESIDUAL = 4;
const SLOT_NZ_W = 5;
const SLOT_SLOT_W = 6;
const SLOT_NZ_M = 7;
const SLOT_SLOT_M = 8;
const SLOT_NZ_V = 9;
const SLOT_SLOT_V = 10;
const SLOT_ORDER_W = 11;
const SLOT_ORDER_M = 12;
const work = new Scratch();
const topHistogram = new Int32Array(1 << 16);





/**
 * Element bytes as float32, for reading only: for F32 a view when aligned,
 * else a bit-exact copy into scratch; other dtypes converted into scratch.
 */
function floats(bytes: Uint8Array, dtype: DType, slot: number, n: number): Float32Array {
  if (dtype !== 'F32') return toFloat32(bytes, dtype, work.f32(slot, n));
  if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, n);
  const out = work.f32(slot, n);
  new Uint8Array(out.buffer, 0, 4 * n).set(bytes.subarray(0, 4 * n));
  return out;
}

/*
 * Warm-up: code a few small chunks before the first real one (not at
 * import: restore does not need it). A function whose hot
 * loop V8 compiles on-stack before the code after the loop has ever run
 * bails out there ("insufficient type feedback"), and when that happens on
 * every call, each chunk's loops run in the interpreter until compiled
 * again. A few tiny chunks first give every path its feedback (a few
 * milliseconds, once per thread; measured: about 0.1 s less CPU for the
 * first 120 MB).
 */
let warmedUp = false;

function warmUp(): void {
  warmedUp = true;
  const k = 512;
  const w = new Float32Array(k);
  const b = new Float32Array(k);
  const mm = new Float32Array(k);
  const vv = new Float32Array(k);
  for (let i = 0; i < k; i++) {
    b[i] = (((i * 37) % 101) - 50) / 100;
    w[i] = b[i]! + (((i * 53) % 29) - 14) / 1000;
    mm[i] = (((i * 17) % 31) - 15) / 1e4;
    vv[i] = mm[i]! * mm[i]! + 1e-9;
  }
  const input = { weight: new Uint8Array(w.buffer), base: new Uint8Array(b.buffer), expAvg: new Uint8Array(mm.buffer), expAvgSq: new Uint8Array(vv.buffer) };
  const warmLayout: ChunkLayout = { weightDtype: 'F32', momentDtype: 'F32', exactWeight: false, exactMoments: false, base: true };
  // Several calls, so that V8 also compiles the functions whole.
  // Best effort: an error here would come again, reported, from the first
  // real chunk, and must not make merely importing the codec fail.
  try {
    for (let r = 0; r < 8; r++) encodeFused(warmLayout, input, { ...DEFAULT_OPTIONS });
    encodeFused(warmLayout, input, { ...DEFAULT_OPTIONS, bits: 4, vDomain: 'linear', weightRule: 'paper' });
  } catch {
    // nothing to do: see above
  }
}
