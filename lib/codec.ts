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
import { type DType, DTYPE_BYTES, fromFloat32, toFloat32 } from './dtype.js';
import { ExcpError } from './errors.js';
import { hashBytes } from './hash.js';
import { computeResidual, extractNonFinite } from './residual.js';
import { pruneJoint } from './prune.js';
import { dequantizeStream, expandSymbols, quantizeStream } from './quantize.js';
import { type ChunkCode, type Exceptions, type MomentCode, type WeightCode, decodePayload, encodePayload } from './entropy.js';
import { decodeExact, encodeExact } from './exact.js';
import type { ChunkInput, ChunkStats, CodecOptions } from './types.js';

/** What the chunk codec must know about an entry. */
export interface ChunkLayout {
  weightDtype: DType;
  /** dtype of both moments, or null for an entry without optimizer state. */
  momentDtype: DType | null;
  exactWeight: boolean;
  exactMoments: boolean;
  /** The weight is coded against a base tensor. */
  base: boolean;
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
    const m = toFloat32(input.expAvg!, md);
    const v = toFloat32(input.expAvgSq!, md);
    const mExceptions = pickExceptions(input.expAvg!, extractNonFinite(m), mb);
    const vExceptions = pickExceptions(input.expAvgSq!, extractNonFinite(v), mb);
    let residual: Float32Array | null = null;
    let weightExceptions: Exceptions | null = null;
    if (!weight) {
      residual = new Float32Array(n);
      const positions = computeResidual(toFloat32(input.weight, layout.weightDtype), toFloat32(base!, layout.weightDtype), residual);
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
    const vq = quantizeStream(v, expandSymbols(mq.symbols, wFull, n), options.bits, options.vDomain);
    moments = { m: mq, v: vq, vFill: pruned.vFill, mExceptions, vExceptions };
  }
  if (!weight) throw new ExcpError('ERR_INVALID_ARG', 'codec: no weight stream');

  const code: ChunkCode = { baseDigest, weight, moments };
  const restored = reconstructChunk(layout, code, n, base, input.weight, input.expAvg, input.expAvgSq);
  return { payload: encodePayload(code, n), digests: restoredDigests(restored), baseDigest, stats: { elements: n, keptWeights, keptMoments } };
}

/**
 * Digests of restored bytes (weight, then m and v when present): the
 * per-chunk input of the fingerprints, computed where the bytes are made
 * (in the worker) rather than again on the main thread.
 */
export function restoredDigests(restored: RestoredChunk): string[] {
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
  const code = decodePayload(payload, n, { weight: DTYPE_BYTES[layout.weightDtype], moments: mb }, layout.momentDtype !== null);
  if (Boolean(code.baseDigest) !== layout.base) throw new ExcpError('ERR_CORRUPT', `restore: tensor '${what}': base flag disagrees with the header`);
  if (layout.base) {
    if (!base) throw new ExcpError('ERR_BASE_MISSING', `restore: tensor '${what}' was compressed against a base; pass --base`);
    const digest = hashBytes(base);
    if (digest !== code.baseDigest) {
      throw new ExcpError('ERR_BASE_MISMATCH', `restore: tensor '${what}': the base differs from the one used at compression (digest ${digest}, expected ${code.baseDigest})`);
    }
  }
  const restored = reconstructChunk(layout, code, n, base, null, null, null);
  return { ...restored, digests: restoredDigests(restored) };
}

/**
 * Streams -> tensor bytes. Exact streams are decoded unless the original
 * bytes are passed (the encoder's shortcut: exact means equal).
 */
export function reconstructChunk(
  layout: ChunkLayout, code: ChunkCode, n: number, base: Uint8Array | null,
  exactWeight: Uint8Array | null, exactM: Uint8Array | null, exactV: Uint8Array | null,
): RestoredChunk {
  const wd = layout.weightDtype;
  const eb = DTYPE_BYTES[wd];
  let weight: Uint8Array;
  let wFull: Uint8Array | null = null;
  if ('exact' in code.weight) {
    weight = exactWeight ?? decodeExact(code.weight.exact, wd, n * eb, base ?? undefined);
  } else {
    const { residual, exceptions } = code.weight;
    wFull = residual.symbols;
    if (wFull.length !== n) throw new ExcpError('ERR_CORRUPT', `codec: ${wFull.length} residual symbols for ${n} elements`);
    const restored = toFloat32(base!, wd);
    const centers = residual.centers;
    for (let i = 0; i < n; i++) {
      const s = wFull[i]!;
      // Pruned positions keep the base value untouched (even -0).
      if (s !== 0) restored[i] = restored[i]! + centers[s - 1]!;
    }
    weight = fromFloat32(restored, wd);
    applyExceptions(weight, exceptions, eb);
  }
  let expAvg: Uint8Array | null = null;
  let expAvgSq: Uint8Array | null = null;
  const m = code.moments;
  const md = layout.momentDtype;
  if (m && md) {
    const mb = DTYPE_BYTES[md];
    if ('exactM' in m) {
      expAvg = exactM ?? decodeExact(m.exactM, md, n * mb);
      expAvgSq = exactV ?? decodeExact(m.exactV, md, n * mb);
    } else {
      const values = new Float32Array(n);
      expAvg = fromFloat32(dequantizeStream(m.m, wFull, values, 0), md);
      applyExceptions(expAvg, m.mExceptions, mb);
      const mFull = expandSymbols(m.m.symbols, wFull, n);
      expAvgSq = fromFloat32(dequantizeStream(m.v, mFull, values, m.vFill), md);
      applyExceptions(expAvgSq, m.vExceptions, mb);
    }
  }
  if (weight.length !== n * eb) throw new ExcpError('ERR_CORRUPT', `codec: restored ${weight.length} weight bytes, expected ${n * eb}`);
  return { weight, expAvg, expAvgSq };
}

function pickExceptions(raw: Uint8Array, positions: number[], eb: number): Exceptions {
  const out = new Uint8Array(positions.length * eb);
  positions.forEach((p, i) => out.set(raw.subarray(p * eb, p * eb + eb), i * eb));
  return { positions, raw: out };
}

function applyExceptions(bytes: Uint8Array, e: Exceptions, eb: number): void {
  e.positions.forEach((p, i) => bytes.set(e.raw.subarray(i * eb, i * eb + eb), p * eb));
}
