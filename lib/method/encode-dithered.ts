/**
 * Method 2's encoder (the default from container format 3): a chunk of a
 * parameter with lossy Adam moments, residual or keyframe.
 *
 * - v: its row and column means (lib/method/rank1.ts); restore estimates v
 *   from them (v^), the factored second moment of Adafactor.
 * - the weight residual dW (against the restored base): quantised with
 *   subtractive dither on a uniform grid, k = floor(dW / step_i + u),
 *   restored base + (k + 1/2 - u) * step_i, u a uniform offset both sides
 *   draw (lib/method/dither.ts). The error is uniform in a step and
 *   independent of dW: the restored update is unbiased, where pruning the
 *   small |dW| (method 1, the paper's) loses them systematically, and that
 *   is what training resumed from restored checkpoints measured as the
 *   largest cost (examples/realrun/FINDINGS.md). step_i is finer where v^
 *   is large, (v^ / mean v^)^(-1/4) clamped to [1/2, 2], and the step of
 *   the chunk follows from the requested relative error of the update
 *   (options.updateError: a uniform error of a step is step / sqrt(12)).
 * - m: as Adam's step u = m / sqrt(v^), kept where |u| > beta * mean|u|
 *   and the weight moved (k != 0; everywhere for a keyframe), k-means over
 *   the kept values (2^bits - 1 centers), restored centre * sqrt(v^);
 *   elsewhere (a residual) a drift along the restored update (driftGain).
 * - a keyframe's weight is exact, or (options.keyframe 'lossy') rounded to
 *   bf16's precision first (8 significant bits, as a bf16 round trip, which
 *   resumed training does not notice).
 *
 * Every value restore computes is computed here by the same functions
 * (reconstruct-factored.ts), and the digests are of those bytes.
 */
import { DTYPE_BYTES, LOSSY_DTYPES, roundToBf16 } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { hashBytes } from '../core/hash.js';
import type { CodecOptions } from '../core/options.js';
import { Scratch } from '../core/scratch.js';
import { encodeExact } from '../coding/exact.js';
import { ditherAt, ditherSeed, ditherStream } from './dither.js';
import { type ChunkCode, encodePayload } from './payload/payload.js';
import { type DitheredWeight, type FactoredMoments, MAX_INDEX, indexSymbol, movedBit } from './payload/factored.js';
import { quantizeGathered } from './quantize.js';
import { type Rank1Table, rank1Factors, rank1Table } from './rank1.js';
import { type ChunkInput, type ChunkLayout, type ChunkPosition, type EncodedChunk, errorSums, pickExceptions, restoredDigests } from './reconstruct.js';
import { ditheredValue, restoreDithered, restoreFactored, rootTable, scaleMean, stepScales, tableSteps } from './reconstruct-factored.js';
import type { SymbolCost } from './payload/streams.js';

/** The clamp of the per-element step's scale (v^ / mean v^)^(1/4): at most 2x finer or coarser. */
export const STEP_CLIP = 2;

/**
 * Code a chunk with lossy moments by method 2.
 * @param layout the entry's dtypes and modes (lossy moments; `columns` set)
 * @param input raw element bytes of the chunk
 * @param options method options (updateError, beta, bits, keyframe)
 * @param position where the chunk is (its dither and its v grid)
 * @returns the encoded chunk
 * @throws ExcpError ERR_INVALID_ARG when the layout or the buffers do not describe such a chunk
 */
export function encodeDithered(layout: ChunkLayout, input: ChunkInput, options: CodecOptions, position: ChunkPosition): EncodedChunk {
  const { base, expAvg, expAvgSq } = input;
  const wd = layout.weightDtype;
  const md = layout.momentDtype;
  const keyframe = layout.exactWeight;
  const invalid = (what: string): never => {
    throw new ExcpError('ERR_INVALID_ARG', `codec: ${what}`);
  };
  if (md === null || !LOSSY_DTYPES.has(md) || layout.exactMoments || !expAvg || !expAvgSq) invalid('lossy moments need float moments');
  if (!keyframe && (!LOSSY_DTYPES.has(wd) || !layout.base || !base)) invalid('a lossy weight needs a float weight and its base');
  if (!layout.columns) invalid('method 2 needs the tensor\'s columns');
  const eb = DTYPE_BYTES[wd];
  const mb = DTYPE_BYTES[md!];
  const n = input.weight.length / eb;
  if (!Number.isInteger(n) || n === 0 || (layout.base && base!.length !== n * eb) || expAvg!.length !== n * mb || expAvgSq!.length !== n * mb) invalid('chunk buffers of different element counts');
  const baseDigest = layout.base ? hashBytes(base!) : null;
  const m = work.readFloat32(expAvg!, md!, SLOT_M, n);
  const v = work.readFloat32(expAvgSq!, md!, SLOT_V, n);

  // v: its factors (what is not a finite v >= 0 is an exception, and 0 to the factors).
  const vExc: number[] = [];
  const factors = rank1Factors(v, position.start, layout.columns!, vExc);
  const vHat = rank1Table(factors.rows, factors.cols, position.start, layout.columns!, work.i32(SLOT_INDEX, n), work.f32(SLOT_VHAT, n));
  const index = vHat.index;
  const roots = rootTable(vHat, work.f32(SLOT_SQRT, vHat.values.length));

  // The weight, and its restored residual dW^ (what restore adds to the base).
  let exactBytes: Uint8Array | null = null;
  let dithered: DitheredWeight | null = null;
  const residual = work.f32(SLOT_RESIDUAL, n);
  if (keyframe) {
    exactBytes = options.keyframe === 'lossy' && wd === 'F32' && !layout.base ? roundToBf16(input.weight) : input.weight;
  } else {
    dithered = ditherWeight(input.weight, base!, wd, vHat, baseDigest, position, options.updateError * Math.sqrt(12), residual);
  }

  // m as Adam's step, where the weight moved (everywhere for a keyframe).
  const moved = dithered ? dithered.symbols : null;
  const mExc: number[] = [];
  const u = work.f32(SLOT_U, n);
  let sumU = 0;
  for (let i = 0; i < n; i++) {
    const x = m[i]!;
    const root = roots[index[i]!]!;
    const step = root > 0 ? x / root : x === 0 ? 0 : Infinity;
    if (step - step !== 0) {
      // Not finite, or no v^ to divide by: m is kept exactly.
      mExc.push(i);
      u[i] = 0;
    } else {
      u[i] = step;
      sumU += Math.abs(step);
    }
  }
  const tau = options.beta * (sumU / n);
  // The kept steps, gathered in place over u (the gather writes at or before the position it reads).
  const nz = u;
  const slot = work.i32(SLOT_SLOT, n);
  // Positions the step stream codes: where the weight moved (every position for a keyframe), the chunk's kept weights.
  let coded = 0;
  let kept = 0;
  for (let i = 0; i < n; i++) {
    // Without branches (movedBit): every position writes, the kept ones advance.
    const mv = moved ? movedBit(moved[i]!) : 1;
    const x = u[i]!;
    nz[kept] = x;
    slot[kept] = coded;
    kept += mv & +(Math.abs(x) > tau) & +(x !== 0);
    coded += mv;
  }
  const stepStream = quantizeGathered(nz.subarray(0, kept), slot, coded, options.bits, 'linear');
  const drift = dithered ? driftGain(dithered, stepStream.symbols, m, roots, index, residual) : 0;

  const factored: FactoredMoments = {
    rows: factors.rows, cols: factors.cols, step: stepStream, drift,
    mExceptions: pickExceptions(expAvg!, mExc, mb), vExceptions: pickExceptions(expAvgSq!, vExc, mb),
  };
  const code: ChunkCode = {
    baseDigest,
    weight: dithered ? { dithered } : { exact: encodeExact(exactBytes!, wd, layout.base ? base! : undefined) },
    moments: { factored },
  };
  // What restore computes (reconstruct.ts's method 2 path), from the v^ and dW^ already at hand.
  const restoredM = restoreFactored(factored, vHat, moved, dithered ? residual : null, md!, true);
  const restored = { weight: dithered ? restoreDithered(dithered, base!, wd, residual, true) : exactBytes!, expAvg: restoredM.m, expAvgSq: restoredM.v };
  const digests = restoredDigests(restored);
  const cost: SymbolCost = { entropyBits: 0, symbolBits: 0 };
  const payload = encodePayload(code, n, cost);
  // Measured after the digests: errorSums reads restored bytes that may sit in the reconstruct's scratch.
  const errors = errorSums(wd, md!, input, restored, n);
  return { payload, digests, baseDigest, stats: { elements: n, keptWeights: coded, keptMoments: kept, entropyBits: cost.entropyBits, symbolBits: cost.symbolBits, errors } };
}

/**
 * m's drift gain: where m is not coded it restores as c * (dW^ * sqrt(v^)),
 * the restored update in Adam's units, with c fitted by least squares over
 * those positions. Over an interval the momentum has not forgotten (close
 * checkpoints), m and the update point the same way and c carries that;
 * over a long one c comes out near 0. One float per chunk
 * (examples/realrun/FINDINGS.md: at a checkpoint every 25 steps the final
 * gap went from +1.61% to +0.50%).
 * @param stepSymbols the step stream's symbols (over the positions the weight moved)
 * @param roots fround(sqrt(v^)) per position of v^'s table
 * @param index v^'s table position per element
 * @param residual dW^ of the chunk
 */
function driftGain(d: DitheredWeight, stepSymbols: Uint8Array, m: Float32Array, roots: Float32Array, index: Int32Array, residual: Float32Array): number {
  const n = m.length;
  let num = 0;
  let den = 0;
  const count = stepSymbols.length;
  let t = 0;
  for (let i = 0; i < n; i++) {
    const mv = movedBit(d.symbols[i]!);
    const s = (t < count ? stepSymbols[t]! : 0) * mv;
    t += mv;
    if (s !== 0) continue;
    const x = Math.fround(residual[i]! * roots[index[i]!]!);
    const y = m[i]!;
    if (y - y !== 0) continue;
    num += x * y;
    den += x * x;
  }
  const c = den > 0 ? Math.fround(num / den) : 0;
  return Number.isFinite(c) ? c : 0;
}

/**
 * The dithered residual of a weight chunk, and dW^ as restore computes it
 * (ditheredResidual, in the same float32 operations), in two passes.
 * @param factor the chunk's step in units of the rms of the scaled residual
 * @param residual receives dW^
 */
function ditherWeight(weight: Uint8Array, base: Uint8Array, dtype: ChunkLayout['weightDtype'], vHat: Rank1Table, baseDigest: string | null,
  position: ChunkPosition, factor: number, residual: Float32Array): DitheredWeight {
  const index = vHat.index;
  const n = index.length;
  const size = vHat.values.length;
  const eb = DTYPE_BYTES[dtype];
  const cur = work.readFloat32(weight, dtype, SLOT_CUR, n);
  const bas = work.readFloat32(base, dtype, SLOT_BASE, n);
  // dW lives where dW^ will: the quantising pass reads each dW before it writes that position's dW^.
  const dW = residual;
  // Per position of v^'s table: the scale, the unit step fround(1 / scale), and (below) the step.
  const scale = stepScales(vHat, scaleMean(STEP_CLIP, vHat), STEP_CLIP, work.f32(SLOT_STEP, size));
  const unit = tableSteps(1, scale, work.f32(SLOT_UNIT, size));
  const wExc: number[] = [];
  // dW, each element's scale, and the rms of the scaled residual dW / unit step (unit = fround(1 / scale)): the chunk's step.
  let sumSq = 0;
  for (let i = 0; i < n; i++) {
    let d = Math.fround(cur[i]! - bas[i]!);
    if (d - d !== 0) {
      wExc.push(i);
      d = 0;
    }
    dW[i] = d;
    const x = d / unit[index[i]!]!;
    sumSq += x * x;
  }
  const step = Math.fround(factor * Math.sqrt(sumSq / n));
  const symbols = new Uint8Array(n);
  if (step > 0 && Number.isFinite(step)) {
    const steps = tableSteps(step, scale, unit);
    const stream = ditherStream(ditherSeed(baseDigest, position.entry, position.chunk));
    for (let i = 0; i < n; i++) {
      const st = steps[index[i]!]!;
      const u = ditherAt(stream, i);
      let k = Math.floor(dW[i]! / st + u);
      if (k > MAX_INDEX || k < -MAX_INDEX) {
        // An outlier of the residual: the exact weight (its index is 0 in the stream).
        wExc.push(i);
        k = 0;
      } else {
        symbols[i] = indexSymbol(k);
      }
      residual[i] = ditheredValue(k, u, st);
    }
    wExc.sort((a, b) => a - b);
  } else {
    residual.fill(0);
  }
  return { step: step > 0 && Number.isFinite(step) ? step : 0, clip: STEP_CLIP, symbols, exceptions: pickExceptions(weight, wExc, eb) };
}

const SLOT_M = 0;
const SLOT_V = 1;
const SLOT_VHAT = 2;
const SLOT_SQRT = 3;
const SLOT_U = 4;
const SLOT_SLOT = 6;
const SLOT_CUR = 7;
const SLOT_BASE = 8;
const SLOT_STEP = 10;
const SLOT_RESIDUAL = 11;
const SLOT_INDEX = 12;
const SLOT_UNIT = 13;
const work = new Scratch();
