/**
 * One chunk through all stages, both ways: the composition the stream
 * stages and the worker pool share, so that every path produces the same
 * bytes.
 *
 *   encode: residual -> joint prune -> quantize -> reconstruct (for the
 *           fingerprint) -> payload
 *   decode: payload -> reconstruct
 *
 * `reconstructChunk` is the only code that turns streams back into tensor
 * bytes; the encoder runs it too, so the fingerprint recorded at compression
 * is of exactly what restore will produce.
 */
import { type DType, DTYPE_BYTES, fromFloat32, toFloat32 } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { hashBytes } from '../core/hash.js';
import { computeResidual, extractNonFinite } from './residual.js';
import { pruneJoint } from './prune.js';
import { dequantizeNested, dequantizeStream, expandSymbols, quantizeStream } from './quantize.js';
import { type ChunkCode, type Exceptions, type MomentCode, type SymbolCost, type WeightCode, decodePayload, encodePayload } from './payload.js';
import { decodeExact, encodeExact } from '../coding/exact.js';
import { encodeFused } from './encode.js';
import type { ChunkInput, ChunkStats, CodecOptions } from '../core/types.js';
import { Scratch } from '../core/scratch.js';

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
 * Code one chunk (residual -> prune -> quantize -> payload).
 * @param layout the entry's dtypes and modes
 * @param input raw element bytes of the chunk
 * @param options method options
 * @returns the payload, digests of what restore will produce, and counts
 */
export function encodeChunk(layout: ChunkLayout, input: ChunkInput, options: CodecOptions): EncodedChunk {
  // The common chunk (lossy weight against a base, lossy moments) in fused passes, same bytes.
  return encodeFused(layout, input, options) ?? encodeChunkStaged(layout, input, options);
}

/**
 * encodeChunk stage by stage: the definition lib/fused.ts must equal, and
 * the path of every chunk it does not take.
 */
export function encodeChunkStaged(layout: ChunkLayout, input: ChunkInput, options: CodecOptions): EncodedChunk {
  const eb = DTYPE_BYTES[layout.weightDtype];
  const n = input.weight.length / eb;
  const base = layout.base ? input.base : null;
  if (layout.base && !base) throw new ExcpError('ERR_BASE_MISSING', 'codec: entry needs base bytes');
  const baseDigest = base ? hashBytes(base) : null;

  const md = layout.momentDtype;
  const hasMoments = md !== null && input.expAvg !== null && input.expAvgSq !== null;
  // A lossy weight is only planned for a param entry: its threshold needs v.
  if (!layout.exactWeight && !(hasMoments && !layout.exactMoments)) {
    throw new ExcpError('ERR_INVALID_ARG', 'codec: a lossy weight needs lossy moments in the same entry');
  }
  let weight: WeightCode | null = layout.exactWeight ? { exact: encodeExact(input.weight, layout.weightDtype, base ?? undefined) } : null;
  let moments: MomentCode | null = null;
  let keptMoments = 0;
  let keptWeights = n;
  if (hasMoments && layout.exactMoments) {
    moments = { exactM: encodeExact(input.expAvg!, md), exactV: encodeExact(input.expAvgSq!, md) };
    keptMoments = n;
  } else if (hasMoments) {
    const mb = DTYPE_BYTES[md];
    const m = toFloat32(input.expAvg!, md, work.f32(SCRATCH_M, n));
    const v = toFloat32(input.expAvgSq!, md, work.f32(SCRATCH_V, n));
    const mExceptions = pickExceptions(input.expAvg!, extractNonFinite(m), mb);
    const vExceptions = pickExceptions(input.expAvgSq!, extractNonFinite(v), mb);
    let residual: Float32Array | null = null;
    let weightExceptions: Exceptions | null = null;
    if (!weight) {
      residual = work.f32(SCRATCH_RESIDUAL, n);
      const current = work.readFloat32(input.weight, layout.weightDtype, SCRATCH_WEIGHT, n);
      const positions = computeResidual(current, work.readFloat32(base!, layout.weightDtype, SCRATCH_BASE, n), residual);
      weightExceptions = pickExceptions(input.weight, positions, eb);
    }
    const pruned = pruneJoint(residual, m, v, options);
    keptMoments = pruned.keptMoments;
    let wFull: Uint8Array | null = null;
    if (residual && weightExceptions) {
      keptWeights = pruned.keptWeights;
      const q = quantizeStream(residual, null, options.bits, 'linear');
      weight = { residual: q, exceptions: weightExceptions };
      wFull = q.symbols;
    }
    const mq = quantizeStream(m, wFull, options.bits, 'linear');
    // v is selected by the full-length m symbols: nonzero m inside the dW selection.
    const vq = quantizeStream(v, expandSymbols(mq.symbols, wFull, n, work.u8(SCRATCH_SELECT, n)), options.bits, options.vDomain);
    moments = { m: mq, v: vq, vFill: pruned.vFill, mExceptions, vExceptions };
  }
  if (!weight) throw new ExcpError('ERR_INVALID_ARG', 'codec: no weight stream');

  const code: ChunkCode = { baseDigest, weight, moments };
  // The restored bytes are only hashed here, so they may live in scratch.
  const restored = reconstructInto(layout, code, n, base, input.weight, input.expAvg, input.expAvgSq, true);
  const digests = restoredDigests(restored, layout.pieces);
  const cost: SymbolCost = { entropyBits: 0, symbolBits: 0 };
  const payload = encodePayload(code, n, cost);
  return { payload, digests, baseDigest, stats: { elements: n, keptWeights, keptMoments, entropyBits: cost.entropyBits, symbolBits: cost.symbolBits } };
}

/*
 * Per-thread scratch: the float32 working copies of a chunk, reused from
 * chunk to chunk instead of allocated (a worker codes one chunk at a time,
 * and nothing returned from this module points into them). This keeps a
 * worker's memory at a few chunk-sized arrays whatever the checkpoint size.
 */
const SCRATCH_M = 0;
const SCRATCH_V = 1;
const SCRATCH_RESIDUAL = 2;
const SCRATCH_WEIGHT = 3;
const SCRATCH_BASE = 4;
const SCRATCH_SELECT = 5;
const work = new Scratch();

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

/**
 * Decode one chunk's payload into tensor bytes.
 * @param layout the entry's dtypes and modes
 * @param payload the record payload
 * @param n elements in the chunk
 * @param base base bytes of the chunk's weight (when layout.base)
 * @param what tensor name for error messages
 * @returns restored bytes and their digests
 * @throws ExcpError ERR_BASE_MISSING, ERR_BASE_MISMATCH, ERR_CORRUPT
 */
export function decodeChunk(layout: ChunkLayout, payload: Uint8Array, n: number, base: Uint8Array | null, what: string): DecodedChunk {
  const mb = layout.momentDtype ? DTYPE_BYTES[layout.momentDtype] : 1;
  const code = decodePayload(payload, n, { weight: DTYPE_BYTES[layout.weightDtype], moments: mb }, layout.momentDtype !== null, layout.legacySymbols === true);
  if (Boolean(code.baseDigest) !== layout.base) throw new ExcpError('ERR_CORRUPT', `restore: tensor '${what}': base flag disagrees with the header`);
  if (layout.base) {
    if (!base) throw new ExcpError('ERR_BASE_MISSING', `restore: tensor '${what}' was compressed against a base; pass --base`);
    const digest = hashBytes(base);
    if (digest !== code.baseDigest) {
      throw new ExcpError('ERR_BASE_MISMATCH', `restore: tensor '${what}': the base differs from the one used at compression (digest ${digest}, expected ${code.baseDigest})`);
    }
  }
  const restored = reconstructChunk(layout, code, n, base, null, null, null);
  return { ...restored, digests: restoredDigests(restored, layout.pieces) };
}

/**
 * Streams -> tensor bytes. Exact streams are decoded unless the original
 * bytes are passed (the encoder's shortcut: exact means equal).
 */
export function reconstructChunk(
  layout: ChunkLayout, code: ChunkCode, n: number, base: Uint8Array | null,
  exactWeight: Uint8Array | null, exactM: Uint8Array | null, exactV: Uint8Array | null,
): RestoredChunk {
  return reconstructInto(layout, code, n, base, exactWeight, exactM, exactV, false);
}

/**
 * reconstructChunk; with `scratch`, the lossy outputs may be views of this
 * module's scratch buffers, valid until the next call (the encoder only
 * hashes them).
 */
function reconstructInto(
  layout: ChunkLayout, code: ChunkCode, n: number, base: Uint8Array | null,
  exactWeight: Uint8Array | null, exactM: Uint8Array | null, exactV: Uint8Array | null, scratch: boolean,
): RestoredChunk {
  const wd = layout.weightDtype;
  const eb = DTYPE_BYTES[wd];
  let weight: Uint8Array;
  let wFull: Uint8Array | null = null;
  if ('exact' in code.weight) {
    weight = exactWeight ?? decodeExactStream(code.weight.exact, wd, n * eb, base);
  } else {
    const { residual, exceptions } = code.weight;
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
    } else {
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
