/**
 * The framing of a payload's streams (spec/FORMAT.md, "Chunk payload"):
 * blobs, quantised symbol streams with their codebooks, and exceptions; and
 * what coded symbols cost against their empirical entropy. Shared by the
 * payload layouts of lib/method/payload.ts and payload-factored.ts.
 */
import type { ByteReader, ByteWriter } from '../../core/bytes.js';
import { ExcpError } from '../../core/errors.js';
import type { QuantDomain } from '../../core/options.js';
import { decodeSymbols, encodeSymbols } from '../../coding/symbols.js';
import { decodeSymbolsV1 } from '../../coding/symbols-v1.js';
import type { QuantizedStream } from '../quantize.js';

/** Exact values at positions the lossy path cannot code (NaN, infinities). */
export interface Exceptions {
  positions: number[];
  /** positions.length elements of raw bytes, in order. */
  raw: Uint8Array;
}

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

const DOMAINS: QuantDomain[] = ['linear', 'log'];

/** A length-prefixed byte string. */
export function writeBlob(w: ByteWriter, bytes: Uint8Array): void {
  w.varint(bytes.length);
  w.bytes(bytes);
}

/** Read a length-prefixed byte string (a view). */
export function readBlob(r: ByteReader): Uint8Array {
  return r.bytesView(r.varint());
}

/**
 * @param selected the selecting stream's symbols at the selected positions
 *   (one per symbol of q), or undefined when nothing selects this stream
 */
export function writeStream(w: ByteWriter, q: QuantizedStream, selected: Uint8Array | undefined, numContexts: number, cost: SymbolCost | undefined, entropyBits?: number): void {
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
export function decodeCorrupt<T>(decode: () => T): T {
  try {
    return decode();
  } catch (e) {
    if (e instanceof ExcpError && (e.code === 'ERR_INVALID_ARG' || e.code === 'ERR_OUT_OF_RANGE')) {
      throw new ExcpError('ERR_CORRUPT', `payload: ${e.message}`, { cause: e });
    }
    throw e;
  }
}

export function readStream(r: ByteReader, count: number, selected: Uint8Array | undefined, numContexts: number, legacySymbols: boolean): QuantizedStream {
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

export function writeExceptions(w: ByteWriter, e: Exceptions): void {
  w.varint(e.positions.length);
  let prev = 0;
  for (const p of e.positions) {
    w.varint(p - prev);
    prev = p + 1;
  }
  w.bytes(e.raw);
}

export function readExceptions(r: ByteReader, n: number, elementBytes: number): Exceptions {
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
