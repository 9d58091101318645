/**
 * Decoding side of the chunk codec (pure): a chunk's streams back into
 * tensor bytes, and the digests of those bytes. The encoder runs the same
 * functions (or, for F32 chunks, lib/method/encode-digests.ts, checked
 * against them), so the fingerprint recorded at compression is of exactly
 * what restore will produce.
 */
import { type DType, DTYPE_BYTES, fromFloat32, toFloat32 } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { hashBytes } from '../core/hash.js';
import { Scratch } from '../core/scratch.js';
import { decodeExact } from '../coding/exact.js';
import { dequantizeNested, dequantizeStream } from './quantize.js';
import type { ChunkCode, Exceptions } from './payload/payload.js';
import type { QuantizedStream } from './quantize.js';
import { type ChunkPosition, ditheredResidual, factoredV, residualScratch, restoreDithered, restoreFactored } from './reconstruct-factored.js';

export type { ChunkPosition } from './reconstruct-factored.js';

/** Raw element bytes of one chunk of an entry, as read from the checkpoint. */
export interface ChunkInput {
  weight: Uint8Array;
  base: Uint8Array | null;
  expAvg: Uint8Array | null;
  expAvgSq: Uint8Array | null;
}

/** Per-chunk statistics, summed per entry into the footer. */
export interface ChunkStats {
  elements: number;
  keptWeights: number;
  keptMoments: number;
  /** Empirical entropy of the chunk's coded symbols, in bits (lossy chunks; 0 otherwise). */
  entropyBits?: number;
  /** Bits of the chunk's coded symbol streams, tables included (lossy chunks; 0 otherwise). */
  symbolBits?: number;
  /** Method 2's lossy chunks: how far the restored streams are from the originals (errorSums). */
  errors?: ErrorSums;
}

/** What the chunk codec must know about an entry. */
export interface ChunkLayout {
  weightDtype: DType;
  /** dtype of both moments, or null for an entry without optimizer state. */
  momentDtype: DType | null;
  exactWeight: boolean;
  exactMoments: boolean;
  /** The weight is coded against a base tensor. */
  base: boolean;
  /** A format 1 container: symbol streams use the range coder (lib/symbols-v1.ts), not rANS. */
  legacySymbols?: boolean;
  /**
   * Columns of the weight tensor seen as a matrix (the product of its
   * dimensions after the first; a vector is one row): the grid of method
   * 2's factored v (lib/method/rank1.ts). Format 3 and later.
   */
  columns?: number;
  /** A format 3 container: method 2's factored moments have no drift gain (m is 0 where the step stream leaves it). */
  driftless?: boolean;
  /**
   * A pack (lib/pack.ts): byte lengths of its non-empty members, in order.
   * The weight's digest is then one per member, so a member's tensor hash
   * is what it would be unpacked.
   */
  pieces?: number[];
}

/** Restored bytes of a chunk, per tensor of the entry. */
export interface RestoredChunk {
  weight: Uint8Array;
  expAvg: Uint8Array | null;
  expAvgSq: Uint8Array | null;
}

/** A decoded chunk with the digests of its restored bytes. */
export interface DecodedChunk extends RestoredChunk {
  digests: string[];
}

/** Result of coding a chunk. */
export interface EncodedChunk {
  payload: Uint8Array;
  /** Digests of the restored bytes (weight, m, v), for the fingerprint. */
  digests: string[];
  baseDigest: string | null;
  stats: ChunkStats;
}

/**
 * Digests of restored bytes (weight, then m and v when present; a pack's
 * weight per piece): the per-chunk input of the fingerprints, computed where
 * the bytes are made (in the worker) rather than again on the main thread.
 */
export function restoredDigests(restored: RestoredChunk, pieces?: readonly number[]): string[] {
  if (pieces) {
    let at = 0;
    return pieces.map((length) => hashBytes(restored.weight.subarray(at, (at += length))));
  }
  const digests = [hashBytes(restored.weight)];
  if (restored.expAvg) digests.push(hashBytes(restored.expAvg));
  if (restored.expAvgSq) digests.push(hashBytes(restored.expAvgSq));
  return digests;
}

/*
 * Per-thread scratch for restored floats that are only hashed (the encoder)
 * or converted (dtypes other than F32).
 */
const SCRATCH_M = 0;
const SCRATCH_V = 1;
const SCRATCH_WEIGHT = 2;
const work = new Scratch();

/**
 * Streams -> tensor bytes. Exact streams are decoded unless the original
 * bytes are passed (the encoder's shortcut: exact means equal).
 */
export function reconstructChunk(
  layout: ChunkLayout, code: ChunkCode, n: number, base: Uint8Array | null,
  exactWeight: Uint8Array | null, exactM: Uint8Array | null, exactV: Uint8Array | null, position?: ChunkPosition,
): RestoredChunk {
  return reconstructInto(layout, code, n, base, exactWeight, exactM, exactV, false, position);
}

/**
 * reconstructChunk; with `scratch`, the lossy outputs may be views of this
 * module's scratch buffers, valid until the next call (the encoder only
 * hashes them).
 */
export function reconstructInto(
  layout: ChunkLayout, code: ChunkCode, n: number, base: Uint8Array | null,
  exactWeight: Uint8Array | null, exactM: Uint8Array | null, exactV: Uint8Array | null, scratch: boolean, position?: ChunkPosition,
): RestoredChunk {
  if ('dithered' in code.weight || (code.moments && 'factored' in code.moments)) {
    return reconstructMethod2(layout, code, n, base, exactWeight, exactM, exactV, scratch, position);
  }
  const wd = layout.weightDtype;
  const eb = DTYPE_BYTES[wd];
  let weight: Uint8Array;
  let wFull: Uint8Array | null = null;
  if ('exact' in code.weight) {
    weight = exactWeight ?? decodeExactStream(code.weight.exact, wd, n * eb, base);
  } else {
    const { residual, exceptions } = code.weight as { residual: QuantizedStream; exceptions: Exceptions };
    wFull = residual.symbols;
    if (wFull.length !== n) throw new ExcpError('ERR_CORRUPT', `codec: ${wFull.length} residual symbols for ${n} elements`);
    // For F32 the float32 values are the output bytes: no conversion copy.
    const direct = wd === 'F32';
    const outBytes = direct && !scratch ? new Uint8Array(n * 4) : null;
    const restored = toFloat32(base!, wd, outBytes ? new Float32Array(outBytes.buffer, 0, n) : work.f32(SCRATCH_WEIGHT, n));
    const centers = residual.centers;
    for (let i = 0; i < n; i++) {
      const s = wFull[i]!;
      // Pruned positions keep the base value untouched (even -0).
      if (s !== 0) restored[i] = restored[i]! + centers[s - 1]!;
    }
    weight = outBytes ?? (direct ? new Uint8Array(restored.buffer, 0, n * 4) : fromFloat32(restored, wd));
    applyExceptions(weight, exceptions, eb);
  }
  let expAvg: Uint8Array | null = null;
  let expAvgSq: Uint8Array | null = null;
  const m = code.moments;
  const md = layout.momentDtype;
  if (m && md) {
    const mb = DTYPE_BYTES[md];
    if ('exactM' in m) {
      expAvg = exactM ?? decodeExactStream(m.exactM, md, n * mb, null);
      expAvgSq = exactV ?? decodeExactStream(m.exactV, md, n * mb, null);
    } else if ('m' in m) {
      const mValues = floatTarget(md, n, scratch, SCRATCH_M);
      expAvg = finishFloat(dequantizeStream(m.m, wFull, mValues.values, 0), md, mValues.bytes);
      applyExceptions(expAvg, m.mExceptions, mb);
      const vValues = floatTarget(md, n, scratch, SCRATCH_V);
      expAvgSq = finishFloat(dequantizeNested(m.v, wFull, m.m.symbols, vValues.values, m.vFill), md, vValues.bytes);
      applyExceptions(expAvgSq, m.vExceptions, mb);
    }
  }
  if (weight.length !== n * eb) throw new ExcpError('ERR_CORRUPT', `codec: restored ${weight.length} weight bytes, expected ${n * eb}`);
  return { weight, expAvg, expAvgSq };
}

/** reconstructInto for method 2's streams (lib/method/reconstruct-factored.ts). */
function reconstructMethod2(
  layout: ChunkLayout, code: ChunkCode, n: number, base: Uint8Array | null,
  exactWeight: Uint8Array | null, exactM: Uint8Array | null, exactV: Uint8Array | null, scratch: boolean, position: ChunkPosition | undefined,
): RestoredChunk {
  const wd = layout.weightDtype;
  const md = layout.momentDtype;
  const m = code.moments;
  if (!position || !layout.columns) throw new ExcpError('ERR_CORRUPT', 'codec: a method 2 chunk in a container that does not place it');
  const vHat = m && 'factored' in m ? factoredV(m.factored, n, layout.columns, position.start) : null;
  let weight: Uint8Array;
  let moved: Uint8Array | null = null;
  let residual: Float32Array | null = null;
  if ('exact' in code.weight) {
    weight = exactWeight ?? decodeExactStream(code.weight.exact, wd, n * DTYPE_BYTES[wd], base);
  } else if ('dithered' in code.weight) {
    if (!base) throw new ExcpError('ERR_CORRUPT', 'codec: a dithered weight without its base');
    const d = code.weight.dithered;
    if (d.symbols.length !== n) throw new ExcpError('ERR_CORRUPT', `codec: ${d.symbols.length} weight symbols for ${n} elements`);
    residual = ditheredResidual(d, code.baseDigest, position, vHat, residualScratch(n));
    weight = restoreDithered(d, base, wd, residual, scratch);
    moved = d.symbols;
  } else {
    throw new ExcpError('ERR_CORRUPT', 'codec: a method 1 weight with method 2 moments');
  }
  let expAvg: Uint8Array | null = null;
  let expAvgSq: Uint8Array | null = null;
  if (m && md) {
    if ('exactM' in m) {
      expAvg = exactM ?? decodeExactStream(m.exactM, md, n * DTYPE_BYTES[md], null);
      expAvgSq = exactV ?? decodeExactStream(m.exactV, md, n * DTYPE_BYTES[md], null);
    } else if ('factored' in m) {
      const restored = restoreFactored(m.factored, vHat!, moved, residual, md, scratch);
      expAvg = restored.m;
      expAvgSq = restored.v;
    } else {
      throw new ExcpError('ERR_CORRUPT', 'codec: method 1 moments with a method 2 weight');
    }
  }
  if (weight.length !== n * DTYPE_BYTES[wd]) throw new ExcpError('ERR_CORRUPT', `codec: restored ${weight.length} weight bytes, expected ${n * DTYPE_BYTES[wd]}`);
  return { weight, expAvg, expAvgSq };
}

/**
 * Where a restored float tensor is computed: for F32 directly in its output
 * bytes (fresh, or scratch), otherwise in scratch float32 then converted.
 */
function floatTarget(dtype: DType, n: number, scratch: boolean, slot: number): { values: Float32Array; bytes: Uint8Array | null } {
  if (dtype === 'F32') {
    const values = scratch ? work.f32(slot, n) : new Float32Array(n);
    return { values, bytes: new Uint8Array(values.buffer, 0, n * 4) };
  }
  return { values: work.f32(slot, n), bytes: null };
}

function finishFloat(values: Float32Array, dtype: DType, bytes: Uint8Array | null): Uint8Array {
  return bytes ?? fromFloat32(values, dtype);
}

/**
 * The exceptions at `positions`: their original element bytes, in order.
 * @param raw the tensor's element bytes
 * @param positions element indices, ascending
 * @param eb bytes per element
 * @returns positions and their raw bytes
 */
export function pickExceptions(raw: Uint8Array, positions: number[], eb: number): Exceptions {
  const out = new Uint8Array(positions.length * eb);
  positions.forEach((p, i) => out.set(raw.subarray(p * eb, p * eb + eb), i * eb));
  return { positions, raw: out };
}

function applyExceptions(bytes: Uint8Array, e: Exceptions, eb: number): void {
  e.positions.forEach((p, i) => bytes.set(e.raw.subarray(i * eb, i * eb + eb), p * eb));
}

/**
 * decodeExact inside a container: the header already said whether a base is
 * used, so an exact stream that asks for a base the header did not give is
 * corrupt data, not a missing argument.
 */
function decodeExactStream(coded: Uint8Array, dtype: DType, byteLength: number, base: Uint8Array | null): Uint8Array {
  try {
    return decodeExact(coded, dtype, byteLength, base ?? undefined);
  } catch (e) {
    if (!base && e instanceof ExcpError && e.code === 'ERR_BASE_MISSING') throw new ExcpError('ERR_CORRUPT', `codec: ${e.message}`);
    throw e;
  }
}

/*
 * How far a chunk's restored streams are from the originals, measured by the
 * encoder (which has both) and kept in the container's footer, so that
 * `excp inspect` can say what a container lost without the original.
 *
 * Sums of squares, so that chunks add up to a tensor: for the weight, the
 * error against the update W - W_base of a residual (what --update-error
 * budgets) or against W itself for a keyframe; for m and v, against m and v.
 * Positions where either value is not finite are left out (they are
 * exceptions, restored bit for bit).
 */

/** Elements converted at a time: small buffers, whatever the chunk size. */
const BLOCK = 4096;

/** Per stream (weight, m, v): the sum of squared errors and the sum of squares it is relative to. */
export type ErrorSums = [errW: number, refW: number, errM: number, refM: number, errV: number, refV: number];

const bufA = new Float32Array(BLOCK);
const bufB = new Float32Array(BLOCK);
const bufC = new Float32Array(BLOCK);

/** Sum of (b - a)^2 and of (a - ref)^2 (ref: zero when null) over n elements of one dtype. */
function sums(a: Uint8Array, b: Uint8Array, ref: Uint8Array | null, dtype: DType, n: number): [number, number] {
  const eb = DTYPE_BYTES[dtype];
  let err = 0;
  let total = 0;
  for (let start = 0; start < n; start += BLOCK) {
    const k = Math.min(BLOCK, n - start);
    // Aligned F32 bytes are read in place; anything else is converted a block at a time.
    const at = (bytes: Uint8Array, out: Float32Array) => dtype === 'F32' && bytes.byteOffset % 4 === 0
      ? new Float32Array(bytes.buffer, bytes.byteOffset + start * 4, k)
      : toFloat32(bytes.subarray(start * eb, (start + k) * eb), dtype, out.subarray(0, k));
    const x = at(a, bufA);
    const y = at(b, bufB);
    const r = ref ? at(ref, bufC) : null;
    for (let i = 0; i < k; i++) {
      const o = x[i]!;
      const d = y[i]! - o;
      const u = r ? o - r[i]! : o;
      // Inf - Inf and NaN fail this test: such positions are exceptions, restored exactly.
      if (d - d !== 0 || u - u !== 0) continue;
      err += d * d;
      total += u * u;
    }
  }
  return [err, total];
}

/**
 * The error sums of a lossy chunk.
 * @param weightDtype dtype of the weight (and of the base)
 * @param momentDtype dtype of both moments
 * @param input the original chunk (base null for a keyframe)
 * @param restored what restore gives for it
 * @param n elements
 */
export function errorSums(weightDtype: DType, momentDtype: DType, input: ChunkInput, restored: RestoredChunk, n: number): ErrorSums {
  const w = sums(input.weight, restored.weight, input.base, weightDtype, n);
  const m = input.expAvg && restored.expAvg ? sums(input.expAvg, restored.expAvg, null, momentDtype, n) : [0, 0];
  const v = input.expAvgSq && restored.expAvgSq ? sums(input.expAvgSq, restored.expAvgSq, null, momentDtype, n) : [0, 0];
  return [w[0], w[1], m[0]!, m[1]!, v[0]!, v[1]!];
}

/** A relative error from its sums: sqrt(err / ref); 0 when nothing was lost, Infinity when the reference is 0 but the error is not. */
export function relativeError(err: number, ref: number): number {
  if (err === 0) return 0;
  return ref > 0 ? Math.sqrt(err / ref) : Infinity;
}
