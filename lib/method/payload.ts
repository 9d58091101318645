/**
 * Stage 5 (pure): the bytes of one chunk record's payload.
 *
 * What the method gives for free is used here: m and v share one mask, and
 * that mask is a subset of the dW mask, so m is coded only where dW was kept
 * (with the dW symbol as context) and v only where m was kept (with the m
 * symbol as context). The symbol coder decides per stream whether the
 * context pays for its tables. Layout: spec/FORMAT.md, "Chunk payload".
 */
import { ByteReader, ByteWriter } from '../core/bytes.js';
import { ExcpError } from '../core/errors.js';
import { decodeSymbols, encodeSymbols } from '../coding/symbols.js';
import { decodeSymbolsV1 } from '../coding/symbols-v1.js';
import { type QuantizedStream, nonzeroSymbols } from './quantize.js';
import type { QuantDomain } from '../core/options.js';

/** Exact values at positions the lossy path cannot code (NaN, infinities). */
export interface Exceptions {
  positions: number[];
  /** positions.length elements of raw bytes, in order. */
  raw: Uint8Array;
}

/** The weight stream of a chunk. */
export type WeightCode =
  | { exact: Uint8Array }
  | { residual: QuantizedStream; exceptions: Exceptions };

/** The moment streams of a chunk. */
export type MomentCode =
  | { exactM: Uint8Array; exactV: Uint8Array }
  | { m: QuantizedStream; mExceptions: Exceptions; v: QuantizedStream; vExceptions: Exceptions; vFill: number };

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
const DOMAINS: QuantDomain[] = ['linear', 'log'];

/** What the symbol streams of a payload cost, against what they could cost. */
export interface SymbolCost {
  /**
   * Empirical entropy of the coded symbols, in bits: sum over streams of
   * count * H(symbol | context) with the stream's own counts (the context
   * is the selecting stream's symbol where one is used, else none).
   */
  entropyBits: number;
  /** Bits of the coded symbol streams (their tables included). */
  symbolBits: number;
}

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
  w.u8(flags);
  if (code.baseDigest) writeDigest(w, code.baseDigest);
  let wFull: Uint8Array | null = null;
  if ('exact' in code.weight) {
    writeBlob(w, code.weight.exact);
  } else {
    writeStream(w, code.weight.residual, undefined, 0, cost, hints?.weightEntropyBits);
    writeExceptions(w, code.weight.exceptions);
    wFull = code.weight.residual.symbols;
  }
  if (m && 'exactM' in m) {
    writeBlob(w, m.exactM);
    writeBlob(w, m.exactV);
  } else if (m) {
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
 * @returns the chunk's streams
 * @throws ExcpError ERR_CORRUPT
 */
export function decodePayload(payload: Uint8Array, n: number, elementBytes: { weight: number; moments: number }, hasMoments: boolean, legacySymbols = false): ChunkCode {
  const r = new ByteReader(payload, 'payload');
  const flags = r.u8();
  if (flags & ~15) throw new ExcpError('ERR_CORRUPT', `payload: unknown flags 0x${flags.toString(16)}`);
  if (Boolean(flags & FLAG_MOMENTS) !== hasMoments) throw new ExcpError('ERR_CORRUPT', 'payload: moment flag disagrees with the header');
  const baseDigest = flags & FLAG_BASE ? readDigest(r) : null;
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

function writeDigest(w: ByteWriter, hex: string): void {
  w.u32(parseInt(hex.slice(0, 8), 16));
  w.u32(parseInt(hex.slice(8, 16), 16));
}

function readDigest(r: ByteReader): string {
  return r.u32().toString(16).padStart(8, '0') + r.u32().toString(16).padStart(8, '0');
}

function writeBlob(w: ByteWriter, bytes: Uint8Array): void {
  w.varint(bytes.length);
  w.bytes(bytes);
}

function readBlob(r: ByteReader): Uint8Array {
  return r.bytesView(r.varint());
}

/**
 * @param selected the selecting stream's symbols at the selected positions
 *   (one per symbol of q), or undefined when nothing selects this stream
 */
function writeStream(w: ByteWriter, q: QuantizedStream, selected: Uint8Array | undefined, numContexts: number, cost: SymbolCost | undefined, entropyBits?: number): void {
  w.u8(DOMAINS.indexOf(q.domain));
  w.u8(q.centers.length);
  for (let i = 0; i < q.centers.length; i++) w.f32(q.centers[i]!);
  const contexts = selected && numContexts > 1 ? selected : undefined;
  const coded = encodeSymbols(q.symbols, Math.max(2, q.centers.length + 1), contexts, contexts ? numContexts : undefined);
  if (cost) {
    cost.entropyBits += entropyBits ?? streamEntropyBits(q.symbols, contexts);
    cost.symbolBits += 8 * coded.length;
  }
  writeBlob(w, coded);
}

/**
 * count * H(S | C) in bits from the stream's own joint counts (order 0 when
 * there are no contexts).
 * @param symbols the symbols
 * @param contexts one per symbol, or undefined
 * @returns the empirical entropy in bits
 */
export function streamEntropyBits(symbols: Uint8Array, contexts: Uint8Array | undefined): number {
  // The table is all zeros between calls: each call clears what it used.
  const joint = jointScratch;
  const contextEnd = contexts ? countJoint(symbols, contexts, joint) : countPlain(symbols, joint);
  const bits = entropyOfJoint(joint, contextEnd);
  joint.fill(0, 0, contextEnd);
  return bits;
}

/** Joint counts at (context << 8) | symbol; returns 256 * (a bound on the largest context + 1). */
function countJoint(symbols: Uint8Array, contexts: Uint8Array, joint: Uint32Array): number {
  let maxContext = 0;
  for (let i = 0; i < symbols.length; i++) {
    const c = contexts[i]!;
    joint[(c << 8) | symbols[i]!]!++;
    maxContext |= c;
  }
  return (maxContext + 1) << 8;
}

function countPlain(symbols: Uint8Array, joint: Uint32Array): number {
  for (let i = 0; i < symbols.length; i++) joint[symbols[i]!]!++;
  return 256;
}

/**
 * count * H(S | C) in bits of a joint count table (context c, symbol s at
 * c * 256 + s), summed in the order streamEntropyBits sums.
 * @param joint the counts
 * @param contextEnd 256 * (number of contexts to visit)
 * @returns the entropy in bits
 */
export function entropyOfJoint(joint: ArrayLike<number>, contextEnd: number): number {
  let bits = 0;
  for (let c = 0; c < contextEnd; c += 256) {
    let total = 0;
    for (let s = 0; s < 256; s++) total += joint[c + s]!;
    if (total === 0) continue;
    for (let s = 0; s < 256; s++) {
      const k = joint[c + s]!;
      if (k > 0) bits += k * Math.log2(total / k);
    }
  }
  return bits;
}

const jointScratch = new Uint32Array(65536);
// Run every path once on tiny input before any real chunk: a function whose
// hot loop is compiled on-stack before the code after it ever ran otherwise
// bails out there on every call ("insufficient type feedback").
streamEntropyBits(Uint8Array.of(0, 1, 2), Uint8Array.of(1, 2, 3));
streamEntropyBits(Uint8Array.of(0, 1, 2), undefined);

/**
 * Run a decoder on payload bytes: its argument errors (a context stream
 * without contexts, a context above the count) can only come from corrupt
 * bytes here, so they are reported as ERR_CORRUPT.
 */
function decodeCorrupt<T>(decode: () => T): T {
  try {
    return decode();
  } catch (e) {
    if (e instanceof ExcpError && (e.code === 'ERR_INVALID_ARG' || e.code === 'ERR_OUT_OF_RANGE')) {
      throw new ExcpError('ERR_CORRUPT', `payload: ${e.message}`, { cause: e });
    }
    throw e;
  }
}

function readStream(r: ByteReader, count: number, selected: Uint8Array | undefined, numContexts: number, legacySymbols: boolean): QuantizedStream {
  const domain = DOMAINS[r.u8()];
  if (!domain) throw new ExcpError('ERR_CORRUPT', 'payload: unknown quantisation domain');
  const k = r.u8();
  const centers = new Float32Array(k);
  for (let i = 0; i < k; i++) centers[i] = r.f32();
  const contexts = selected && numContexts > 1 ? selected : undefined;
  // Format 1 containers coded symbols with the range coder (lib/symbols-v1.ts).
  const decode = legacySymbols ? decodeSymbolsV1 : decodeSymbols;
  const symbols = decodeCorrupt(() => decode(readBlob(r), count, Math.max(2, k + 1), contexts, contexts ? numContexts : undefined));
  // decodeSymbols returns symbols below the alphabet, max(2, k + 1): only a
  // codebook of 0 centers leaves a symbol (1) that no center backs.
  if (k === 0) {
    for (let i = 0; i < count; i++) {
      if (symbols[i]! > k) throw new ExcpError('ERR_CORRUPT', `payload: symbol ${symbols[i]} exceeds codebook size ${k}`);
    }
  }
  return { domain, centers, symbols };
}

function writeExceptions(w: ByteWriter, e: Exceptions): void {
  w.varint(e.positions.length);
  let prev = 0;
  for (const p of e.positions) {
    w.varint(p - prev);
    prev = p + 1;
  }
  w.bytes(e.raw);
}

function readExceptions(r: ByteReader, n: number, elementBytes: number): Exceptions {
  const count = r.varint();
  if (count > n) throw new ExcpError('ERR_CORRUPT', `payload: ${count} exceptions in a chunk of ${n} elements`);
  const positions: number[] = [];
  let prev = 0;
  for (let i = 0; i < count; i++) {
    const p = prev + r.varint();
    if (p >= n) throw new ExcpError('ERR_CORRUPT', `payload: exception position ${p} outside chunk of ${n}`);
    positions.push(p);
    prev = p + 1;
  }
  return { positions, raw: r.bytesView(count * elementBytes) };
}
