/**
 * Stage 5 (pure): the bytes of one chunk record's payload.
 *
 * What the method gives for free is used here: m and v share one mask, and
 * that mask is a subset of the dW mask, so m is coded only where dW was kept
 * (with the dW symbol as context) and v only where m was kept (with the m
 * symbol as context). The symbol coder decides per stream whether the
 * context pays for its tables. Layout: spec/FORMAT.md, "Chunk payload".
 */
import { ByteReader, ByteWriter } from '../../core/bytes.js';
import { ExcpError } from '../../core/errors.js';
import { type QuantizedStream, nonzeroSymbols } from '../quantize.js';
import { type Exceptions, type SymbolCost, readBlob, readExceptions, readStream, writeBlob, writeExceptions, writeStream } from './streams.js';
import { type DitheredWeight, type FactoredMoments, moveContexts, readDithered, readFactored, writeDithered, writeFactored } from './factored.js';

export type { Exceptions, SymbolCost } from './streams.js';
export { entropyOfJoint, streamEntropyBits } from './streams.js';

/** The weight stream of a chunk: exact, a method 1 residual (pruned, k-means), or a method 2 residual (dithered). */
export type WeightCode =
  | { exact: Uint8Array }
  | { residual: QuantizedStream; exceptions: Exceptions }
  | { dithered: DitheredWeight };

/** The moment streams of a chunk: exact, method 1 (jointly pruned, k-means) or method 2 (factored v, m as its step). */
export type MomentCode =
  | { exactM: Uint8Array; exactV: Uint8Array }
  | { m: QuantizedStream; mExceptions: Exceptions; v: QuantizedStream; vExceptions: Exceptions; vFill: number }
  | { factored: FactoredMoments };

/** Everything a chunk record carries. */
export interface ChunkCode {
  /** Digest of the base bytes this chunk was coded against. */
  baseDigest: string | null;
  weight: WeightCode;
  moments: MomentCode | null;
}

const FLAG_BASE = 1;
const FLAG_WEIGHT_EXACT = 2;
const FLAG_MOMENTS = 4;
const FLAG_MOMENTS_EXACT = 8;
/** Lossy streams are method 2's (payload-factored.ts); container format 3 and later. */
const FLAG_METHOD2 = 16;

/**
 * What an encoder may already know about a chunk's streams, so that
 * encodePayload need not derive it again from the full-length symbols.
 */
export interface PayloadHints {
  /** The nonzero dW symbols in order (the contexts of m): nonzeroSymbols(weight symbols). */
  mContexts?: Uint8Array;
  /** The nonzero m symbols in order (the contexts of v): nonzeroSymbols(m symbols). */
  vContexts?: Uint8Array;
  /** streamEntropyBits of the weight symbols (order 0), from counts the encoder made anyway. */
  weightEntropyBits?: number;
}

/**
 * Serialise a chunk.
 * @param code the chunk's streams
 * @param n elements in the chunk
 * @param cost optional accumulator of the symbol streams' entropy and coded size
 * @param hints what the encoder already computed (must equal what this function would derive)
 * @returns payload bytes
 */
export function encodePayload(code: ChunkCode, n: number, cost?: SymbolCost, hints?: PayloadHints): Uint8Array {
  const w = new ByteWriter(1024);
  const m = code.moments;
  let flags = 0;
  if (code.baseDigest) flags |= FLAG_BASE;
  if ('exact' in code.weight) flags |= FLAG_WEIGHT_EXACT;
  if (m) flags |= FLAG_MOMENTS;
  if (m && 'exactM' in m) flags |= FLAG_MOMENTS_EXACT;
  if ('dithered' in code.weight || (m && 'factored' in m)) flags |= FLAG_METHOD2;
  w.u8(flags);
  if (code.baseDigest) writeDigest(w, code.baseDigest);
  if (flags & FLAG_METHOD2) {
    encodeMethod2(w, code, cost);
    return w.finish();
  }
  let wFull: Uint8Array | null = null;
  if ('exact' in code.weight) {
    writeBlob(w, code.weight.exact);
  } else if ('residual' in code.weight) {
    writeStream(w, code.weight.residual, undefined, 0, cost, hints?.weightEntropyBits);
    writeExceptions(w, code.weight.exceptions);
    wFull = code.weight.residual.symbols;
  }
  if (m && 'exactM' in m) {
    writeBlob(w, m.exactM);
    writeBlob(w, m.exactV);
  } else if (m && 'm' in m) {
    const wContexts = 'residual' in code.weight ? code.weight.residual.centers.length + 1 : 0;
    // The contexts of m are the nonzero dW symbols; those of v, the nonzero
    // m symbols (the same as the full-length m symbols at selected positions).
    writeStream(w, m.m, wFull ? (hints?.mContexts ?? nonzeroSymbols(wFull)) : undefined, wContexts, cost);
    writeStream(w, m.v, hints?.vContexts ?? nonzeroSymbols(m.m.symbols), m.m.centers.length + 1, cost);
    w.f32(m.vFill);
    writeExceptions(w, m.mExceptions);
    writeExceptions(w, m.vExceptions);
  }
  return w.finish();
}

/**
 * Parse a chunk.
 * @param payload the bytes (CRC already checked by the container)
 * @param n elements in the chunk
 * @param elementBytes bytes per element of the weight and of the moments (for exceptions)
 * @param hasMoments whether the entry has moments (must agree with the flags)
 * @param legacySymbols a format 1 container (range-coded symbols)
 * @param grid the chunk's row and column counts (rank1.ts chunkGrid), for method 2's factored v; null before format 3
 * @param driftless a format 3 container (factored moments without the drift gain)
 * @returns the chunk's streams
 * @throws ExcpError ERR_CORRUPT
 */
export function decodePayload(payload: Uint8Array, n: number, elementBytes: { weight: number; moments: number }, hasMoments: boolean, legacySymbols = false,
  grid: { rows: number; cols: number } | null = null, driftless = false): ChunkCode {
  const r = new ByteReader(payload, 'payload');
  const flags = r.u8();
  const known = grid ? 31 : 15;
  if (flags & ~known) throw new ExcpError('ERR_CORRUPT', `payload: unknown flags 0x${flags.toString(16)}`);
  if (Boolean(flags & FLAG_MOMENTS) !== hasMoments) throw new ExcpError('ERR_CORRUPT', 'payload: moment flag disagrees with the header');
  const baseDigest = flags & FLAG_BASE ? readDigest(r) : null;
  if (flags & FLAG_METHOD2) return decodeMethod2(r, flags, baseDigest, n, elementBytes, grid!, driftless);
  let weight: WeightCode;
  let wFull: Uint8Array | null = null;
  if (flags & FLAG_WEIGHT_EXACT) {
    weight = { exact: readBlob(r) };
  } else {
    const residual = readStream(r, n, undefined, 0, legacySymbols);
    weight = { residual, exceptions: readExceptions(r, n, elementBytes.weight) };
    wFull = residual.symbols;
  }
  let moments: MomentCode | null = null;
  if (flags & FLAG_MOMENTS_EXACT) {
    moments = { exactM: readBlob(r), exactV: readBlob(r) };
  } else if (flags & FLAG_MOMENTS) {
    const wContexts = 'residual' in weight ? weight.residual.centers.length + 1 : 0;
    const wSelected = wFull ? nonzeroSymbols(wFull) : undefined;
    const m = readStream(r, wSelected ? wSelected.length : n, wSelected, wContexts, legacySymbols);
    const mSelected = nonzeroSymbols(m.symbols);
    const v = readStream(r, mSelected.length, mSelected, m.centers.length + 1, legacySymbols);
    const vFill = r.f32();
    moments = { m, v, vFill, mExceptions: readExceptions(r, n, elementBytes.moments), vExceptions: readExceptions(r, n, elementBytes.moments) };
  }
  if (r.remaining !== 0) throw new ExcpError('ERR_CORRUPT', `payload: ${r.remaining} unexpected bytes after the last stream`);
  return { baseDigest, weight, moments };
}

/** Method 2's streams after the flags and digest. */
function encodeMethod2(w: ByteWriter, code: ChunkCode, cost: SymbolCost | undefined): void {
  const m = code.moments;
  let contexts: Uint8Array | undefined;
  if ('exact' in code.weight) {
    writeBlob(w, code.weight.exact);
  } else if ('dithered' in code.weight) {
    writeDithered(w, code.weight.dithered, cost);
    contexts = moveContexts(code.weight.dithered.symbols);
  } else {
    throw new ExcpError('ERR_INVALID_ARG', 'payload: a method 2 chunk has an exact or a dithered weight');
  }
  if (m && 'exactM' in m) {
    writeBlob(w, m.exactM);
    writeBlob(w, m.exactV);
  } else if (m && 'factored' in m) {
    writeFactored(w, m.factored, contexts, cost);
  } else if (m) {
    throw new ExcpError('ERR_INVALID_ARG', 'payload: a method 2 chunk has exact or factored moments');
  }
}

function decodeMethod2(r: ByteReader, flags: number, baseDigest: string | null, n: number, elementBytes: { weight: number; moments: number },
  grid: { rows: number; cols: number }, driftless: boolean): ChunkCode {
  let weight: WeightCode;
  let contexts: Uint8Array | undefined;
  if (flags & FLAG_WEIGHT_EXACT) {
    weight = { exact: readBlob(r) };
  } else {
    const dithered = readDithered(r, n, elementBytes.weight);
    weight = { dithered };
    contexts = moveContexts(dithered.symbols);
  }
  let moments: MomentCode | null = null;
  if (flags & FLAG_MOMENTS_EXACT) {
    moments = { exactM: readBlob(r), exactV: readBlob(r) };
  } else if (flags & FLAG_MOMENTS) {
    moments = { factored: readFactored(r, n, grid, contexts ? contexts.length : n, contexts, elementBytes.moments, driftless) };
  }
  if (r.remaining !== 0) throw new ExcpError('ERR_CORRUPT', `payload: ${r.remaining} unexpected bytes after the last stream`);
  return { baseDigest, weight, moments };
}

function writeDigest(w: ByteWriter, hex: string): void {
  w.u32(parseInt(hex.slice(0, 8), 16));
  w.u32(parseInt(hex.slice(8, 16), 16));
}

function readDigest(r: ByteReader): string {
  return r.u32().toString(16).padStart(8, '0') + r.u32().toString(16).padStart(8, '0');
}

