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
import { fillDither, ditherSeed } from './dither.js';
import type { DitheredWeight, FactoredMoments } from './payload/factored.js';
import { symbolIndex } from './payload/factored.js';
import { chunkGrid, rank1Estimate } from './rank1.js';
import type { Exceptions } from './payload/streams.js';

/** Where a chunk is: what its dither and its v^ grid depend on. */
export interface ChunkPosition {
  entry: number;
  chunk: number;
  /** The chunk's first element in its tensor. */
  start: number;
}

const SLOT_VHAT = 0;
const SLOT_DITHER = 1;
const SLOT_W = 2;
const SLOT_M = 3;
const SLOT_V = 4;
const SLOT_RESIDUAL = 5;
const work = new Scratch();

/**
 * v^ of a chunk from its factors.
 * @param f the factored moments
 * @param n elements in the chunk
 * @param columns columns of the tensor's matrix
 * @param start the chunk's first element
 * @param out receives v^
 * @throws ExcpError ERR_CORRUPT when the factor counts do not fit the chunk's grid
 */
export function factoredV(f: FactoredMoments, n: number, columns: number, start: number, out: Float32Array): Float32Array {
  const grid = chunkGrid(start, n, columns);
  if (f.rows.length !== grid.rows || f.cols.length !== grid.cols) {
    throw new ExcpError('ERR_CORRUPT', `codec: ${f.rows.length} x ${f.cols.length} v factors for a grid of ${grid.rows} x ${grid.cols}`);
  }
  return rank1Estimate(f.rows, f.cols, start, columns, out);
}

/**
 * The per-element step of a dithered weight: step / scale, the scale
 * clamp((v^ / mean v^)^(1/4), 1/clip, clip) (1 without a clip or a v^):
 * finer steps where v, Adam's curvature estimate, is large.
 * @param step the stored step
 * @param clip the stored clip (0: no scale)
 * @param vHat v^ of the chunk, or null
 * @param out receives the steps
 */
export function elementSteps(step: number, clip: number, vHat: Float32Array | null, out: Float32Array): Float32Array {
  const n = out.length;
  if (clip === 0 || !vHat) return out.fill(step);
  let sum = 0;
  for (let i = 0; i < n; i++) sum += vHat[i]!;
  const mean = Math.fround(sum / n);
  if (!(mean > 0)) return out.fill(step);
  const lo = Math.fround(1 / clip);
  const hi = Math.fround(clip);
  for (let i = 0; i < n; i++) {
    let s = Math.fround(Math.sqrt(Math.fround(Math.sqrt(Math.fround(vHat[i]! / mean)))));
    s = s < lo ? lo : s > hi ? hi : s;
    out[i] = Math.fround(step / s);
  }
  return out;
}

/**
 * The restored residual of a dithered weight, dW^ = (k + 1/2 - u) * step_i
 * (all 0 when the step is 0): what restoreDithered adds to the base, and
 * what m's drift multiplies.
 * @param d the dithered weight
 * @param baseDigest the chunk's base digest (the dither's seed)
 * @param position where the chunk is
 * @param vHat v^ (for the per-element step), or null
 * @param out receives dW^ (its length is the chunk's)
 */
export function ditheredResidual(d: DitheredWeight, baseDigest: string | null, position: ChunkPosition, vHat: Float32Array | null, out: Float32Array): Float32Array {
  const n = out.length;
  if (!(d.step > 0)) return out.fill(0);
  if (d.clip > 0 && !vHat) throw new ExcpError('ERR_CORRUPT', 'codec: a scaled dithered weight without factored moments');
  const steps = elementSteps(d.step, d.clip, vHat, work.f32(SLOT_DITHER, n));
  const u = fillDither(ditherSeed(baseDigest, position.entry, position.chunk), out);
  for (let i = 0; i < n; i++) {
    const k = symbolIndex(d.symbols[i]!);
    out[i] = Math.fround(Math.fround(Math.fround(k + 0.5) - u[i]!) * steps[i]!);
  }
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
  toFloat32(base, dtype, out);
  if (d.step > 0) for (let i = 0; i < n; i++) out[i] = out[i]! + residual[i]!;
  const bytes = dtype === 'F32' ? new Uint8Array(out.buffer, out.byteOffset, n * 4) : fromFloat32(out, dtype);
  applyExceptions(bytes, d.exceptions, eb);
  return bytes;
}

/**
 * Restored m and v of factored moments.
 * @param f the factored moments
 * @param vHat v^ of the chunk
 * @param moved the weight's symbols (m is coded where they are nonzero), or null for an exact weight (m coded everywhere)
 * @param residual dW^ of a dithered weight (ditheredResidual), or null for an exact weight
 * @param dtype the moments' dtype
 * @param scratch whether the results may live in scratch
 */
export function restoreFactored(f: FactoredMoments, vHat: Float32Array, moved: Uint8Array | null, residual: Float32Array | null, dtype: DType,
  scratch: boolean): { m: Uint8Array; v: Uint8Array } {
  const n = vHat.length;
  const mb = DTYPE_BYTES[dtype];
  const direct = dtype === 'F32' && !scratch;
  const m = direct ? new Float32Array(n) : work.f32(SLOT_M, n).fill(0);
  const { centers, symbols } = f.step;
  const drift = residual ? f.drift : 0;
  let t = 0;
  for (let i = 0; i < n; i++) {
    const root = Math.fround(Math.sqrt(vHat[i]!));
    const s = moved && moved[i] === 0 ? 0 : symbols[t++]!;
    if (s !== 0) m[i] = Math.fround(centers[s - 1]! * root);
    else if (drift !== 0) m[i] = Math.fround(drift * Math.fround(residual![i]! * root));
  }
  if (t !== symbols.length) throw new ExcpError('ERR_CORRUPT', `codec: ${symbols.length} step symbols for ${t} positions`);
  const v = direct ? new Float32Array(vHat) : work.f32(SLOT_V, n);
  if (!direct) v.set(vHat);
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

/** A scratch array for v^ (the encoder and the decoder compute it first). */
export function vHatScratch(n: number): Float32Array {
  return work.f32(SLOT_VHAT, n);
}

function applyExceptions(bytes: Uint8Array, e: Exceptions, eb: number): void {
  e.positions.forEach((p, i) => bytes.set(e.raw.subarray(i * eb, i * eb + eb), p * eb));
}
