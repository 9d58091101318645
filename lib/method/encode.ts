/**
 * The method's encoder (ExCP, arXiv 2406.11257, sections 3.1-3.3): every
 * chunk with lossy moments, in a few fused passes. A residual chunk codes a
 * lossy weight against its base under the rule `paper`, `magnitude` (the
 * default) or `saliency`; a keyframe chunk (exact weight) prunes its moments
 * alone, as if every dW were kept. Passes 1 to 4 below read float32 (views
 * of F32 input; BF16 and F16 are converted first); pass 5 is for F32 (other
 * dtypes and keyframes restore through lib/method/reconstruct.ts). It
 * produces exactly the bytes of the stage-by-stage composition of the
 * method (residual, extractNonFinite, pruneJoint, three quantizeStream,
 * reconstruct, hash) that spec/reference/ keeps as its definition;
 * spec/fused.spec.ts checks the two against each other.
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
 *
 * Passes 1 to 3 are in encode-gather.ts and pass 5 in encode-digests.ts;
 * this module runs the passes in order.
 */
import { DTYPE_BYTES, LOSSY_DTYPES, roundToBf16 } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { hashBytes } from '../core/hash.js';
import type { CodecOptions } from '../core/options.js';
import { Scratch } from '../core/scratch.js';
import { encodeExact } from '../coding/exact.js';
import { keepRank, paperFactor, selectAbsFrom } from './select.js';
import { quantizeGathered } from './quantize.js';
import { type ChunkCode, type SymbolCost, encodePayload, entropyOfJoint } from './payload/payload.js';
import { type ChunkInput, type ChunkLayout, type EncodedChunk, pickExceptions, reconstructChunk, reconstructInto, restoredDigests } from './reconstruct.js';
import { gatherMoments, gatherTopWeights, gatherWeights, momentPass, residualPass, saliencyPass } from './encode-gather.js';
import { restoredDigestsF32 } from './encode-digests.js';
import { DEFAULT_OPTIONS } from '../core/options.js';

/**
 * Code a chunk with lossy moments: a residual (lossy weight against the
 * base) or a keyframe chunk (exact weight).
 * @param layout the entry's dtypes and modes (lossy moments)
 * @param input raw element bytes of the chunk
 * @param options method options
 * @returns the encoded chunk
 * @throws ExcpError ERR_INVALID_ARG when the layout or the buffers do not describe such a chunk
 */
export function encodeLossy(layout: ChunkLayout, input: ChunkInput, options: CodecOptions): EncodedChunk {
  if (!warmedUp) warmUp();
  const { base, expAvg, expAvgSq } = input;
  const wd = layout.weightDtype;
  const md = layout.momentDtype;
  const keyframe = layout.exactWeight;
  const invalid = (what: string): never => {
    throw new ExcpError('ERR_INVALID_ARG', `codec: ${what}`);
  };
  if (md === null || !LOSSY_DTYPES.has(md) || layout.exactMoments || !expAvg || !expAvgSq) invalid('lossy moments need float moments');
  if (!keyframe && (!LOSSY_DTYPES.has(wd) || !layout.base || !base)) invalid('a lossy weight needs a float weight and its base');
  const eb = DTYPE_BYTES[wd];
  const mb = DTYPE_BYTES[md!];
  const n = input.weight.length / eb;
  if (!Number.isInteger(n) || (layout.base && base!.length !== n * eb) || expAvg!.length !== n * mb || expAvgSq!.length !== n * mb) invalid('chunk buffers of different element counts');
  const baseDigest = layout.base ? hashBytes(base!) : null;
  const m = work.readFloat32(expAvg!, md!, SLOT_M, n);
  const v = work.readFloat32(expAvgSq!, md!, SLOT_V, n);
  const mExc: number[] = [];
  const vExc: number[] = [];

  // The positions dW is kept at, gathered (slotW[t] is the t-th); a keyframe
  // keeps every position (its weight is exact).
  const nzW = work.f32(SLOT_NZ_W, n);
  const slotW = work.i32(SLOT_SLOT_W, n);
  let cur: Float32Array | null = null;
  let bas: Float32Array | null = null;
  const wExc: number[] = [];
  if (keyframe) {
    momentPass(m, v, mExc, vExc, sums);
    for (let i = 0; i < n; i++) slotW[i] = i;
    counts[0] = n;
  } else {
    cur = work.readFloat32(input.weight, wd, SLOT_CUR, n);
    bas = work.readFloat32(base!, wd, SLOT_BASE, n);
    // Pass 1: residual (non-finite -> exception, 0), |dW| top-bits histogram, sum |m|, sum |v|.
    const residual = work.f32(SLOT_RESIDUAL, n);
    const top = topHistogram.fill(0);
    residualPass(cur, bas, m, v, residual, top, wExc, mExc, vExc, sums);
    // Pass 2: prune and gather dW, branch-free (kept and pruned mix at
    // random). dW is kept where its score (|dW|, or |dW| sqrt(v) for
    // `saliency`) is above r_w and dW != 0. The thresholds are the method's
    // (the paper's rule runs the selection's second pass over the whole
    // chunk: its r_w is not a value of the chunk).
    const rule = options.weightRule;
    const keep = options.keep;
    if (rule === 'paper') {
      gatherWeights(residual, residual, n ? selectAbsFrom(residual, (n - 1) >> 1, top) * paperFactor(sums[1]! / n, options.alpha) : 0, nzW, slotW, counts);
    } else if (rule === 'saliency') {
      const score = work.f32(SLOT_SCORE, n);
      const scoreTop = topHistogram.fill(0);
      saliencyPass(residual, v, score, scoreTop);
      gatherWeights(residual, score, keep >= 1 || n === 0 ? 0 : selectAbsFrom(score, keepRank(n, keep), scoreTop), nzW, slotW, counts);
    } else if (keep >= 1 || n === 0) {
      gatherWeights(residual, residual, 0, nzW, slotW, counts);
    } else {
      gatherTopWeights(residual, keepRank(n, keep), top, nzW, slotW, counts);
    }
  }
  const sumM = sums[0]!;
  const ro = options.beta * (sumM / n);

  // Pass 3: m and v where dW was kept and |m| > r_o, gathered; the slot of a
  // gathered value is its index among the positions its stream is coded at:
  // kept dW (m), kept m (v). Arrays of the kept dW's size do.
  const nw = counts[0]!;
  const nzM = work.f32(SLOT_NZ_M, nw);
  const slotM = work.i32(SLOT_SLOT_M, nw);
  const nzV = work.f32(SLOT_NZ_V, nw);
  const slotV = work.i32(SLOT_SLOT_V, nw);
  gatherMoments(nw, m, v, ro, vExc.length === 0, slotW, nzM, slotM, nzV, slotV, counts);
  const nm = counts[1]!;
  const nv = counts[2]!;
  const fillSum = counts[3]!;
  const pruned = n - nm;
  const vFill = options.vFill === 'mean' && pruned > 0 ? Math.fround(fillSum / pruned) : 0;

  // Pass 4: k-means and assignment over the gathered values; the nonzero
  // symbols come out in order, and they are the contexts of the next stream.
  const mOrdered = work.u8(SLOT_ORDER_M, nm);
  const mq = quantizeGathered(nzM.subarray(0, nm), slotM, nw, options.bits, 'linear', mOrdered);
  const vq = quantizeGathered(nzV.subarray(0, nv), slotV, nm, options.bits, options.vDomain);
  const moments = { m: mq, v: vq, vFill, mExceptions: pickExceptions(expAvg!, mExc, mb), vExceptions: pickExceptions(expAvgSq!, vExc, mb) };
  const cost: SymbolCost = { entropyBits: 0, symbolBits: 0 };

  if (keyframe) {
    // A lossy keyframe's fp32 weight is rounded to bf16's precision, then coded exactly.
    const weightBytes = options.keyframe === 'lossy' && wd === 'F32' && !layout.base ? roundToBf16(input.weight) : input.weight;
    const code: ChunkCode = { baseDigest, weight: { exact: encodeExact(weightBytes, wd, layout.base ? base! : undefined) }, moments };
    // Exact means equal: the weight's digest is of the bytes coded.
    const digests = restoredDigests(reconstructInto(layout, code, n, base, weightBytes, null, null, true));
    const payload = encodePayload(code, n, cost, { vContexts: mOrdered });
    return { payload, digests, baseDigest, stats: { elements: n, keptWeights: n, keptMoments: nm, entropyBits: cost.entropyBits, symbolBits: cost.symbolBits } };
  }

  const wOrdered = work.u8(SLOT_ORDER_W, nw);
  const wMembers = new Float64Array(256);
  // dW is coded at every position (count n), m where dW was kept.
  const wq = quantizeGathered(nzW.subarray(0, nw), slotW, n, options.bits, 'linear', wOrdered, wMembers);
  const code: ChunkCode = { baseDigest, weight: { residual: wq, exceptions: pickExceptions(input.weight, wExc, eb) }, moments };
  // Pass 5. F32 restores to the float32 words themselves; other dtypes
  // through the decoder's reconstruct (fresh arrays, as restore makes them).
  const digests = wd !== 'F32' || md !== 'F32'
    ? restoredDigests(reconstructChunk(layout, code, n, base, null, null, null))
    : restoredDigestsF32(n, bas!, slotW, slotM, nw, nm, wOrdered, wq.centers, mq.symbols, mq.centers, vq.symbols, vq.centers, vFill, cur!, m, v, wExc, mExc, vExc);
  // The weight symbols' counts are the members of each center, and zeros elsewhere.
  const wCounts = new Float64Array(256);
  wCounts[0] = n - nw;
  for (let s = 0; s < wq.centers.length; s++) wCounts[s + 1] = wMembers[s]!;
  const weightEntropyBits = entropyOfJoint(wCounts, 256);
  const payload = encodePayload(code, n, cost, { mContexts: wOrdered, vContexts: mOrdered, weightEntropyBits });
  return { payload, digests, baseDigest, stats: { elements: n, keptWeights: nw, keptMoments: nm, entropyBits: cost.entropyBits, symbolBits: cost.symbolBits } };
}

const sums = new Float64Array(2);
const counts = new Float64Array(4);

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
const SLOT_SCORE = 13;
const work = new Scratch();
const topHistogram = new Int32Array(1 << 16);

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
  // Best effort: an error here would come again, reported, from the real
  // chunk that triggered the warm-up, so it is not thrown from here.
  try {
    for (let r = 0; r < 8; r++) encodeLossy(warmLayout, input, { ...DEFAULT_OPTIONS });
    encodeLossy(warmLayout, input, { ...DEFAULT_OPTIONS, bits: 4, vDomain: 'linear', weightRule: 'paper' });
  } catch {
    // nothing to do: see above
  }
}
