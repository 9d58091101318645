/**
 * Restore of a chunk coded by method 2 (spec/FORMAT.md, "Restore of a
 * method 2 chunk"): v^ from its row and column factors; the weight as its
 * base plus the dithered residual, each index's step scaled by v^; m as
 * its quantised step times sqrt(v^). The encoder (encode-dithered.ts) runs
 * this too, so what it fingerprints is what restore produces. Every value
 * is computed in float32 in a fixed order.
 */
import { type DType, DTYPE_BYTES, fromFloat32, toFloat32 } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { Scratch } from '../core/scratch.js';
import { ditherAt, ditherSeed, ditherStream } from './dither.js';
import type { DitheredWeight, FactoredMoments } from './payload/factored.js';
import { movedBit, symbolIndex } from './payload/factored.js';
import { type Rank1Table, chunkGrid, rank1Table } from './rank1.js';
import type { Exceptions } from './payload/streams.js';

/** Where a chunk is: what its dither and its v^ grid depend on. */
export interface ChunkPosition {
  entry: number;
  chunk: number;
  /** The chunk's first element in its tensor. */
  start: number;
}

const SLOT_INDEX = 0;
const SLOT_TABLE = 1;
const SLOT_W = 2;
const SLOT_M = 3;
const SLOT_V = 4;
const SLOT_RESIDUAL = 5;
const SLOT_STEPS = 6;
const SLOT_ROOTS = 7;
const work = new Scratch();

/**
 * v^ of a chunk from its factors, as a table (rank1Table), in this module's scratch.
 * @param f the factored moments
 * @param n elements in the chunk
 * @param columns columns of the tensor's matrix
 * @param start the chunk's first element
 * @throws ExcpError ERR_CORRUPT when the factor counts do not fit the chunk's grid
 */
export function factoredV(f: FactoredMoments, n: number, columns: number, start: number): Rank1Table {
  const grid = chunkGrid(start, n, columns);
  if (f.rows.length !== grid.rows || f.cols.length !== grid.cols) {
    throw new ExcpError('ERR_CORRUPT', `codec: ${f.rows.length} x ${f.cols.length} v factors for a grid of ${grid.rows} x ${grid.cols}`);
  }
  return rank1Table(f.rows, f.cols, start, columns, work.i32(SLOT_INDEX, n), work.f32(SLOT_TABLE, n));
}

/**
 * The mean of v^ that scales a dithered weight's steps, or 0 when its steps
 * are not scaled (no clip, no v^, or a mean that is not > 0). The sum runs
 * over the elements in order, as the format says.
 * @param clip the stored clip (0: no scale)
 * @param vHat v^ of the chunk, or null
 */
export function scaleMean(clip: number, vHat: Rank1Table | null): number {
  if (clip === 0 || !vHat) return 0;
  const { index, values } = vHat;
  const n = index.length;
  let sum = 0;
  for (let i = 0; i < n; i++) sum += values[index[i]!]!;
  const mean = Math.fround(sum / n);
  return mean > 0 ? mean : 0;
}

/**
 * One element's step scale, clamp((v^ / mean)^(1/4), lo, hi) in float32:
 * finer steps where v, Adam's curvature estimate, is large.
 * @param lo fround(1 / clip)
 * @param hi fround(clip)
 */
export function stepScale(vHat: number, mean: number, lo: number, hi: number): number {
  const s = Math.fround(Math.sqrt(Math.fround(Math.sqrt(Math.fround(vHat / mean)))));
  return s < lo ? lo : s > hi ? hi : s;
}

/**
 * The step scale per position of v^'s table (1 everywhere where the mean is 0).
 * @param mean scaleMean of the chunk
 * @param clip the stored clip
 * @param out receives one scale per table value
 */
export function stepScales(vHat: Rank1Table, mean: number, clip: number, out: Float32Array): Float32Array {
  const values = vHat.values;
  if (mean === 0) return out.fill(1);
  const lo = Math.fround(1 / clip);
  const hi = Math.fround(clip);
  for (let k = 0; k < values.length; k++) out[k] = stepScale(values[k]!, mean, lo, hi);
  return out;
}

/**
 * fround(sqrt(v^)) per position of v^'s table.
 * @param out receives one root per table value
 */
export function rootTable(vHat: Rank1Table, out: Float32Array): Float32Array {
  const values = vHat.values;
  for (let k = 0; k < values.length; k++) out[k] = Math.fround(Math.sqrt(values[k]!));
  return out;
}

/**
 * step / scale per position of v^'s table (stepScales): the per-element
 * steps of a dithered weight; with step 1, its unit steps.
 * @param out receives the steps (may be `scales` itself)
 */
export function tableSteps(step: number, scales: Float32Array, out: Float32Array): Float32Array {
  for (let k = 0; k < scales.length; k++) out[k] = Math.fround(step / scales[k]!);
  return out;
}

/** One element of dW^: (k + 1/2 - u) * step_i in float32, as restore computes it (the encoder calls it too). */
export function ditheredValue(k: number, u: number, step: number): number {
  return Math.fround(Math.fround(Math.fround(k + 0.5) - u) * step);
}

/**
 * The restored residual of a dithered weight, dW^ = (k + 1/2 - u) * step_i
 * with step_i = step / scale (stepScale; the step itself where the steps
 * are not scaled), all 0 when the step is 0: what restoreDithered adds to
 * the base, and what m's drift multiplies.
 * @param d the dithered weight
 * @param baseDigest the chunk's base digest (the dither's seed)
 * @param position where the chunk is
 * @param vHat v^ (for the per-element step), or null
 * @param out receives dW^ (its length is the chunk's)
 */
export function ditheredResidual(d: DitheredWeight, baseDigest: string | null, position: ChunkPosition, vHat: Rank1Table | null, out: Float32Array): Float32Array {
  const n = out.length;
  if (!(d.step > 0)) return out.fill(0);
  if (d.clip > 0 && !vHat) throw new ExcpError('ERR_CORRUPT', 'codec: a scaled dithered weight without factored moments');
  const step = d.step;
  const symbols = d.symbols;
  const stream = ditherStream(ditherSeed(baseDigest, position.entry, position.chunk));
  const mean = scaleMean(d.clip, vHat);
  if (mean === 0) {
    for (let i = 0; i < n; i++) out[i] = ditheredValue(symbolIndex(symbols[i]!), ditherAt(stream, i), step);
    return out;
  }
  const scales = stepScales(vHat!, mean, d.clip, work.f32(SLOT_STEPS, vHat!.values.length));
  const steps = tableSteps(step, scales, scales);
  const index = vHat!.index;
  for (let i = 0; i < n; i++) out[i] = ditheredValue(symbolIndex(symbols[i]!), ditherAt(stream, i), steps[index[i]!]!);
  return out;
}

/**
 * The restored weight of a dithered residual: base + dW^, the base's own
 * bits where the step is 0; then the exceptions.
 * @param d the dithered weight
 * @param base the base bytes
 * @param dtype the weight's dtype
 * @param residual dW^ of the chunk (ditheredResidual)
 * @param scratch whether the result may live in this module's scratch (the encoder only hashes it)
 */
export function restoreDithered(d: DitheredWeight, base: Uint8Array, dtype: DType, residual: Float32Array, scratch: boolean): Uint8Array {
  const n = d.symbols.length;
  const eb = DTYPE_BYTES[dtype];
  if (base.length !== n * eb) throw new ExcpError('ERR_CORRUPT', `codec: ${base.length} base bytes for ${n} elements`);
  const direct = dtype === 'F32' && !scratch;
  const out = direct ? new Float32Array(n) : work.f32(SLOT_W, n);
  // Aligned F32 base bytes are read in place (one pass instead of a copy and an add).
  const b = dtype === 'F32' && base.byteOffset % 4 === 0 ? new Float32Array(base.buffer, base.byteOffset, n) : toFloat32(base, dtype, out);
  if (d.step > 0) for (let i = 0; i < n; i++) out[i] = b[i]! + residual[i]!;
  else if (b !== out) out.set(b);
  const bytes = dtype === 'F32' ? new Uint8Array(out.buffer, out.byteOffset, n * 4) : fromFloat32(out, dtype);
  applyExceptions(bytes, d.exceptions, eb);
  return bytes;
}

/**
 * Restored m and v of factored moments.
 * @param f the factored moments
 * @param vHat v^ of the chunk (factoredV)
 * @param moved the weight's symbols (m is coded where they are nonzero), or null for an exact weight (m coded everywhere)
 * @param residual dW^ of a dithered weight (ditheredResidual), or null for an exact weight
 * @param dtype the moments' dtype
 * @param scratch whether the results may live in scratch
 */
export function restoreFactored(f: FactoredMoments, vHat: Rank1Table, moved: Uint8Array | null, residual: Float32Array | null, dtype: DType,
  scratch: boolean): { m: Uint8Array; v: Uint8Array } {
  const { index, values } = vHat;
  const n = index.length;
  const roots = rootTable(vHat, work.f32(SLOT_ROOTS, values.length));
  const mb = DTYPE_BYTES[dtype];
  const direct = dtype === 'F32' && !scratch;
  const m = direct ? new Float32Array(n) : work.f32(SLOT_M, n);
  const v = direct ? new Float32Array(n) : work.f32(SLOT_V, n);
  const { centers, symbols } = f.step;
  const drift = residual ? f.drift : 0;
  const count = symbols.length;
  let t = 0;
  // m and v in one pass (every element of both written).
  for (let i = 0; i < n; i++) {
    const k = index[i]!;
    const root = roots[k]!;
    v[i] = values[k]!;
    // The step stream's position without a branch (movedBit); a stream too short shows in t below.
    const mv = moved ? movedBit(moved[i]!) : 1;
    const s = (t < count ? symbols[t]! : 0) * mv;
    t += mv;
    m[i] = s !== 0 ? Math.fround(centers[s - 1]! * root) : drift !== 0 ? Math.fround(drift * Math.fround(residual![i]! * root)) : 0;
  }
  if (t !== count) throw new ExcpError('ERR_CORRUPT', `codec: ${count} step symbols for ${t} positions`);
  const mBytes = dtype === 'F32' ? new Uint8Array(m.buffer, m.byteOffset, n * 4) : fromFloat32(m, dtype);
  const vBytes = dtype === 'F32' ? new Uint8Array(v.buffer, v.byteOffset, n * 4) : fromFloat32(v, dtype);
  applyExceptions(mBytes, f.mExceptions, mb);
  applyExceptions(vBytes, f.vExceptions, mb);
  return { m: mBytes, v: vBytes };
}

/** A scratch array for dW^ (ditheredResidual). */
export function residualScratch(n: number): Float32Array {
  return work.f32(SLOT_RESIDUAL, n);
}

function applyExceptions(bytes: Uint8Array, e: Exceptions, eb: number): void {
  e.positions.forEach((p, i) => bytes.set(e.raw.subarray(i * eb, i * eb + eb), p * eb));
}
