/**
 * Stage 5 (pure): the bytes of one chunk record's payload.
 *
 * What the method gives for free is used here: m and v share one mask, and
 * that mask is a subset of the dW mask, so m is coded only where dW was kept
 * (with the dW symbol as context) and v only where m was kept (with the m
 * symbol as context). The symbol coder decides per stream whether the
 * context pays for its tables. Layout: spec/FORMAT.md, "Chunk payload".
 */
import { ByteReader, ByteWriter } from './bytes.js';
import { ExcpError } from './errors.js';
import { decodeSymbols, encodeSymbols } from './symbols.js';
import { type QuantizedStream, expandSymbols, selectionContexts } from './quantize.js';
import type { QuantDomain } from './kmeans.js';

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

/**
 * Serialise a chunk.
 * @param code the chunk's streams
 * @param n elements in the chunk
 * @returns payload bytes
 */
export function encodePayload(code: ChunkCode, n: number): Uint8Array {
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
    writeStream(w, code.weight.residual, null, 0);
    writeExceptions(w, code.weight.exceptions);
    wFull = code.weight.residual.symbols;
  }
  if (m && 'exactM' in m) {
    writeBlob(w, m.exactM);
    writeBlob(w, m.exactV);
  } else if (m) {
    const wContexts = 'residual' in code.weight ? code.weight.residual.centers.length + 1 : 0;
    writeStream(w, m.m, wFull, wContexts);
    const mFull = expandSymbols(m.m.symbols, wFull, n);
    writeStream(w, m.v, mFull, m.m.centers.length + 1);
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
export function decodePayload(payload: Uint8Array, n: number, elementBytes: { weight: number; moments: number }, hasMoments: boolean): ChunkCode {
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
    const residual = readStream(r, n, null, 0);
    weight = { residual, exceptions: readExceptions(r, n, elementBytes.weight) };
    wFull = residual.symbols;
  }
  let moments: MomentCode | null = null;
  if (flags & FLAG_MOMENTS_EXACT) {
    moments = { exactM: readBlob(r), exactV: readBlob(r) };
  } else if (flags & FLAG_MOMENTS) {
    const wContexts = 'residual' in weight ? weight.residual.centers.length + 1 : 0;
    const m = readStream(r, countSelected(wFull, n), wFull, wContexts);
    const mFull = expandSymbols(m.symbols, wFull, n);
    const v = readStream(r, countSelected(mFull, n), mFull, m.centers.length + 1);
    const vFill = r.f32();
    moments = { m, v, vFill, mExceptions: readExceptions(r, n, elementBytes.moments), vExceptions: readExceptions(r, n, elementBytes.moments) };
  }
  if (r.remaining !== 0) throw new ExcpError('ERR_CORRUPT', `payload: ${r.remaining} unexpected bytes after the last stream`);
  return { baseDigest, weight, moments };
}

function countSelected(select: Uint8Array | null, n: number): number {
  if (!select) return n;
  let c = 0;
  for (let i = 0; i < select.length; i++) if (select[i] !== 0) c++;
  return c;
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

function writeStream(w: ByteWriter, q: QuantizedStream, select: Uint8Array | null, numContexts: number): void {
  w.u8(DOMAINS.indexOf(q.domain));
  w.u8(q.centers.length);
  for (let i = 0; i < q.centers.length; i++) w.f32(q.centers[i]!);
  const contexts = select && numContexts > 1 ? selectionContexts(select, q.symbols.length) : undefined;
  writeBlob(w, encodeSymbols(q.symbols, Math.max(2, q.centers.length + 1), contexts, contexts ? numContexts : undefined));
}

function readStream(r: ByteReader, count: number, select: Uint8Array | null, numContexts: number): QuantizedStream {
  const domain = DOMAINS[r.u8()];
  if (!domain) throw new ExcpError('ERR_CORRUPT', 'payload: unknown quantisation domain');
  const k = r.u8();
  const centers = new Float32Array(k);
  for (let i = 0; i < k; i++) centers[i] = r.f32();
  const contexts = select && numContexts > 1 ? selectionContexts(select, count) : undefined;
  const symbols = decodeSymbols(readBlob(r), count, Math.max(2, k + 1), contexts, contexts ? numContexts : undefined);
  for (let i = 0; i < count; i++) {
    if (symbols[i]! > k) throw new ExcpError('ERR_CORRUPT', `payload: symbol ${symbols[i]} exceeds codebook size ${k}`);
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
