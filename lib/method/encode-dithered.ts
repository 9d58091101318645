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
import { ditherSeed, fillDither } from './dither.js';
import { type ChunkCode, encodePayload } from './payload/payload.js';
import { type DitheredWeight, MAX_INDEX, indexSymbol } from './payload/factored.js';
import { quantizeGathered } from './quantize.js';
import { rank1Estimate, rank1Factors } from './rank1.js';
import { type ChunkInput, type ChunkLayout, type ChunkPosition, type EncodedChunk, errorSums, pickExceptions, reconstructInto, restoredDigests } from './reconstruct.js';
import { ditheredResidual, elementSteps, residualScratch } from './reconstruct-factored.js';
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
  for (let i = 0; i < n; i++) {
    const y = v[i]!;
    if (!(y >= 0 && y - y === 0)) vExc.push(i);
  }
  const factors = rank1Factors(v, position.start, layout.columns!);
  const vHat = rank1Estimate(factors.rows, factors.cols, position.start, layout.columns!, work.f32(SLOT_VHAT, n));

  // The weight.
  let exactBytes: Uint8Array | null = null;
  let dithered: DitheredWeight | null = null;
  if (keyframe) {
    exactBytes = options.keyframe === 'lossy' && wd === 'F32' && !layout.base ? roundToBf16(input.weight) : input.weight;
  } else {
    dithered = ditherWeight(input.weight, base!, wd, vHat, baseDigest, position, options.updateError * Math.sqrt(12));
  }

  // m as Adam's step, where the weight moved (everywhere for a keyframe).
  const moved = dithered ? dithered.symbols : null;
  const mExc: number[] = [];
  const sq = work.f32(SLOT_SQRT, n);
  const u = work.f32(SLOT_U, n);
  let sumU = 0;
  for (let i = 0; i < n; i++) {
    const x = m[i]!;
    sq[i] = Math.fround(Math.sqrt(vHat[i]!));
    const step = sq[i]! > 0 ? x / sq[i]! : x === 0 ? 0 : Infinity;
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
  const nz = work.f32(SLOT_NZ, n);
  const slot = work.i32(SLOT_SLOT, n);
  let coded = 0;
  let kept = 0;
  for (let i = 0; i < n; i++) {
    if (moved && moved[i] === 0) continue;
    const x = u[i]!;
    if (Math.abs(x) > tau && x !== 0) {
      nz[kept] = x;
      slot[kept] = coded;
      kept++;
    }
    coded++;
  }
  const stepStream = quantizeGathered(nz.subarray(0, kept), slot, coded, options.bits, 'linear');
  const drift = dithered ? driftGain(dithered, stepStream.symbols, m, sq, baseDigest, position, vHat) : 0;

  const code: ChunkCode = {
    baseDigest,
    weight: dithered ? { dithered } : { exact: encodeExact(exactBytes!, wd, layout.base ? base! : undefined) },
    moments: {
      factored: {
        rows: factors.rows, cols: factors.cols, step: stepStream, drift,
        mExceptions: pickExceptions(expAvg!, mExc, mb), vExceptions: pickExceptions(expAvgSq!, vExc, mb),
      },
    },
  };
  const restored = reconstructInto(layout, code, n, base, exactBytes, null, null, true, position);
  const digests = restoredDigests(restored);
  const cost: SymbolCost = { entropyBits: 0, symbolBits: 0 };
  const payload = encodePayload(code, n, cost);
  let movedCount = n;
  if (moved) {
    movedCount = 0;
    for (let i = 0; i < n; i++) movedCount += +(moved[i] !== 0);
  }
  // Measured after the digests: errorSums reads restored bytes that may sit in the reconstruct's scratch.
  const errors = errorSums(wd, md!, input, restored, n);
  return { payload, digests, baseDigest, stats: { elements: n, keptWeights: movedCount, keptMoments: kept, entropyBits: cost.entropyBits, symbolBits: cost.symbolBits, errors } };
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
 * @param root fround(sqrt(v^)) per element
 */
function driftGain(d: DitheredWeight, stepSymbols: Uint8Array, m: Float32Array, root: Float32Array, baseDigest: string | null,
  position: ChunkPosition, vHat: Float32Array): number {
  const n = m.length;
  const residual = ditheredResidual(d, baseDigest, position, vHat, residualScratch(n));
  let num = 0;
  let den = 0;
  let t = 0;
  for (let i = 0; i < n; i++) {
    const s = d.symbols[i] === 0 ? 0 : stepSymbols[t++]!;
    if (s !== 0) continue;
    const x = Math.fround(residual[i]! * root[i]!);
    const y = m[i]!;
    if (y - y !== 0) continue;
    num += x * y;
    den += x * x;
  }
  const c = den > 0 ? Math.fround(num / den) : 0;
  return Number.isFinite(c) ? c : 0;
}

/**
 * The dithered residual of a weight chunk.
 * @param factor the chunk's step in units of the rms of the scaled residual
 */
function ditherWeight(weight: Uint8Array, base: Uint8Array, dtype: ChunkLayout['weightDtype'], vHat: Float32Array, baseDigest: string | null,
  position: ChunkPosition, factor: number): DitheredWeight {
  const n = vHat.length;
  const eb = DTYPE_BYTES[dtype];
  const cur = work.readFloat32(weight, dtype, SLOT_CUR, n);
  const bas = work.readFloat32(base, dtype, SLOT_BASE, n);
  const dW = work.f32(SLOT_DW, n);
  const wExc: number[] = [];
  for (let i = 0; i < n; i++) {
    const d = Math.fround(cur[i]! - bas[i]!);
    if (d - d !== 0) {
      wExc.push(i);
      dW[i] = 0;
    } else {
      dW[i] = d;
    }
  }
  // The unit steps give the scale: dW / unit is the scaled residual, whose rms sets the chunk's step.
  const unit = elementSteps(1, STEP_CLIP, vHat, work.f32(SLOT_STEP, n));
  let sumSq = 0;
  for (let i = 0; i < n; i++) {
    const x = dW[i]! / unit[i]!;
    sumSq += x * x;
  }
  const step = Math.fround(factor * Math.sqrt(sumSq / n));
  const symbols = new Uint8Array(n);
  if (step > 0 && Number.isFinite(step)) {
    const steps = elementSteps(step, STEP_CLIP, vHat, unit);
    const u = fillDither(ditherSeed(baseDigest, position.entry, position.chunk), work.f32(SLOT_DITHER, n));
    for (let i = 0; i < n; i++) {
      const k = Math.floor(dW[i]! / steps[i]! + u[i]!);
      if (k > MAX_INDEX || k < -MAX_INDEX) {
        // An outlier of the residual: the exact weight.
        wExc.push(i);
      } else {
        symbols[i] = indexSymbol(k);
      }
    }
    wExc.sort((a, b) => a - b);
  }
  return { step: step > 0 && Number.isFinite(step) ? step : 0, clip: STEP_CLIP, symbols, exceptions: pickExceptions(weight, wExc, eb) };
}

const SLOT_M = 0;
const SLOT_V = 1;
const SLOT_VHAT = 2;
const SLOT_SQRT = 3;
const SLOT_U = 4;
const SLOT_NZ = 5;
const SLOT_SLOT = 6;
const SLOT_CUR = 7;
const SLOT_BASE = 8;
const SLOT_DW = 9;
const SLOT_STEP = 10;
const SLOT_DITHER = 11;
const work = new Scratch();
