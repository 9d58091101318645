/**
 * Stage 6 (pure): the .excp container, byte by byte as in spec/FORMAT.md.
 *
 *   preamble  MAGIC(8) version u16 reserved u16
 *   header    length u32, body, crc32(body) u32
 *   records   type=1 u8, [entry, chunk,] length, payload, crc32 u32
 *   footer    type=2 u8, length u32, body, crc32 u32
 *   trailer   footer offset u64, crc32(offset bytes) u32, END_MAGIC(4)
 *
 * Version 2 (written): header and footer bodies are the compact encodings of
 * lib/container-v2-header.ts and lib/container-v2-footer.ts (first byte 0 or 1); a record stores only its length
 * (varint): entry and chunk are implied by the record order, which readers
 * always enforced, and still covered by the CRC (as varints, see
 * recordCrcPrefix). Version 1 (still read): the bodies are JSON (first byte
 * '{') and records store entry, chunk and length as u32.
 *
 * Every length is checked against a limit before anything is allocated, and
 * every record's CRC covers its type, indices, length and payload, so a
 * flipped bit anywhere is caught before the payload is decoded.
 *
 * The header's structural checks are in validate.ts; the file table's
 * records belong to the file kinds the caller passes (kinds.ts).
 */
import { ByteReader, ByteWriter } from '../core/bytes.js';
import { crc32 } from '../core/crc32.js';
import { DTYPE_BYTES, byteSize } from '../core/dtype.js';
import { digestTensors } from '../model/pack.js';
import { ExcpError } from '../core/errors.js';
import { decodeFooterBody, encodeFooterBody } from './footer.js';
import { decodeHeaderBody, encodeHeaderBody } from './header.js';
import type { FileKinds } from './kinds.js';
import { validateHeader } from './validate.js';
import { END_MAGIC, FORMAT_VERSION, MAGIC, MAX_BODY_BYTES, RECORD_CHUNK, RECORD_FOOTER } from '../core/constants.js';
import type { ChunkRecord, ContainerFooter, ContainerHeader, EntrySpec, FileSpec } from '../model/checkpoint.js';
import type { ChunkLayout } from '../method/codec.js';

export type { ChunkRecord, ContainerFooter, ContainerHeader, FileSpec, FooterEntry } from '../model/checkpoint.js';

/**
 * Bytes of the preamble and header.
 * @param header the header
 * @param kinds the file kinds of its files
 */
export function encodeHead(header: ContainerHeader, kinds: FileKinds): Uint8Array {
  const body = encodeHeaderBody(header, kinds, FORMAT_VERSION);
  const w = new ByteWriter(body.length + 24);
  w.bytes(MAGIC);
  w.u16(FORMAT_VERSION);
  w.u16(0);
  w.u32(body.length);
  w.bytes(body);
  w.u32(crc32(body));
  return w.finish();
}

/** A CRC-32 implementation: `crc(b, crc(a))` is the CRC of a then b (lib/core/crc32.ts, or a native one with the same result). */
export type Crc32 = (bytes: Uint8Array, seed?: number) => number;

/**
 * Bytes of one chunk record.
 * @param record the chunk and its payload
 * @param crc the CRC-32 to use (a worker passes a native one; the bytes are the same)
 */
export function encodeRecord(record: ChunkRecord, crc: Crc32 = crc32): Uint8Array {
  const w = new ByteWriter(record.payload.length + 14);
  w.u8(RECORD_CHUNK);
  w.varint(record.payload.length);
  w.bytes(record.payload);
  w.u32(recordCrc(recordCrcPrefix(record.entry, record.chunk, record.payload.length), record.payload, crc));
  return w.finish();
}

/**
 * Where a chunk record's payload sits in its bytes (after the type and the length varint).
 * @param record the bytes of {@link encodeRecord}
 * @returns the payload, a view of record
 */
export function recordPayload(record: Uint8Array): Uint8Array {
  let at = 1;
  while (record[at]! & 0x80) at++;
  return record.subarray(at + 1, record.length - 4);
}

/**
 * What a version 2 record's CRC covers before the payload: type, then entry,
 * chunk and payload length as varints. Entry and chunk are not stored (the
 * reader knows which record comes next), so a record moved to another place
 * fails its CRC.
 */
export function recordCrcPrefix(entry: number, chunk: number, length: number): Uint8Array {
  const w = new ByteWriter(24);
  w.u8(RECORD_CHUNK);
  w.varint(entry);
  w.varint(chunk);
  w.varint(length);
  return w.finish();
}

/** Bytes of the footer record and the trailer. */
export function encodeTail(footer: ContainerFooter, footerOffset: number, header: ContainerHeader): Uint8Array {
  const body = encodeFooterBody(footer, header);
  const w = new ByteWriter(body.length + 32);
  w.u8(RECORD_FOOTER);
  w.u32(body.length);
  w.bytes(body);
  w.u32(crc32(w.finish()));
  const t = new ByteWriter(16);
  t.u64(footerOffset);
  w.bytes(t.finish());
  w.u32(crc32(t.finish()));
  w.bytes(END_MAGIC);
  return w.finish();
}

/** Size of the preamble plus the header length field. */
export const HEAD_FIXED_BYTES = 16;
/** Size of the trailer. */
export const TRAILER_BYTES = 16;

/** Oldest container format version this code reads. */
export const MIN_FORMAT_VERSION = 1;

/**
 * Check the preamble and read the format version (1 or 2) and the header body length.
 * @param first16 the first 16 bytes
 * @param hint what a file that is not a container is instead (a suffix for the bad-magic message)
 * @throws ExcpError ERR_BAD_MAGIC, ERR_VERSION, ERR_HEADER_TOO_LARGE
 */
export function readPreambleInfo(first16: Uint8Array, hint?: (head: Uint8Array) => string): { version: number; length: number } {
  const r = new ByteReader(first16, 'container');
  for (let i = 0; i < MAGIC.length; i++) {
    if (r.u8() !== MAGIC[i]) throw new ExcpError('ERR_BAD_MAGIC', `container: not an .excp file (bad magic)${hint?.(first16) ?? ''}`);
  }
  const version = r.u16();
  if (version < MIN_FORMAT_VERSION || version > FORMAT_VERSION) throw new ExcpError('ERR_VERSION', `container: format version ${version} is not supported (this reads versions ${MIN_FORMAT_VERSION} to ${FORMAT_VERSION})`);
  r.u16();
  const length = r.u32();
  if (length > MAX_BODY_BYTES) throw new ExcpError('ERR_HEADER_TOO_LARGE', `container: header length ${length} exceeds limit ${MAX_BODY_BYTES}`);
  return { version, length };
}

/** A version 1 body is JSON and starts with '{'; a version 2 body starts with its encoding byte (0 or 1). */
function isJsonBody(body: Uint8Array): boolean {
  return body[0] === 0x7b;
}

/**
 * Parse and validate the header body (followed by its CRC): JSON (version 1)
 * or compact (version 2), told apart by the first byte.
 * @param bytes body bytes then 4 CRC bytes
 * @param kinds the file kinds a file may be of
 * @param version the format version of the preamble (a binary body's options reference)
 * @returns the validated header
 * @throws ExcpError ERR_CRC, ERR_BAD_HEADER, ERR_SHAPE, ERR_DTYPE
 */
export function decodeHeader(bytes: Uint8Array, kinds: FileKinds, version = FORMAT_VERSION): ContainerHeader {
  const body = bytes.subarray(0, bytes.length - 4);
  const stored = new DataView(bytes.buffer, bytes.byteOffset + bytes.length - 4, 4).getUint32(0, true);
  if (crc32(body) !== stored) throw new ExcpError('ERR_CRC', 'container: header checksum mismatch: the file is corrupt');
  if (body.length === 0) throw new ExcpError('ERR_BAD_HEADER', 'container: header is empty');
  const header = isJsonBody(body) ? fromJsonHeader(parseJson(body, 'header'), kinds) : decodeHeaderBody(body, kinds, version);
  validateHeader(header, kinds);
  return header;
}

/**
 * Parse and check the footer record body (JSON in version 1, compact in
 * version 2), after its CRC over type, length and body.
 * @param body the body bytes
 * @param crc the stored CRC
 * @param header the container header (sizes must agree)
 * @returns the footer
 */
export function decodeFooter(body: Uint8Array, crc: number, header: ContainerHeader): ContainerFooter {
  const prefix = new ByteWriter(5);
  prefix.u8(RECORD_FOOTER);
  prefix.u32(body.length);
  if (crc32(body, crc32(prefix.finish())) !== crc) throw new ExcpError('ERR_CRC', 'container: footer checksum mismatch: the file is corrupt');
  if (body.length === 0) throw new ExcpError('ERR_BAD_HEADER', 'container: footer is empty');
  const footer = isJsonBody(body) ? parseJson(body, 'footer') as ContainerFooter : decodeFooterBody(body, header);
  const ok = footer && Array.isArray(footer.entries) && footer.entries.length === header.entries.length
    && ((Array.isArray(footer.tensorHashes) && footer.tensorHashes.length === header.tensors.length && Array.isArray(footer.baseHashes))
      || (footer.tensorHashes === null && footer.baseHashes === null))
    && typeof footer.targetFingerprint === 'string';
  if (!ok) throw new ExcpError('ERR_BAD_HEADER', 'container: footer does not match the header');
  validateFooter(footer, header);
  return footer;
}

const DIGEST = /^[0-9a-f]{16}$/;

/** Field-level checks on a footer, so inspect, verify and chains can use it without further checks. */
function validateFooter(f: ContainerFooter, header: ContainerHeader): void {
  const fail = (what: string): never => {
    throw new ExcpError('ERR_BAD_HEADER', `container: invalid footer: ${what}`);
  };
  const count = (x: unknown): boolean => Number.isSafeInteger(x) && (x as number) >= 0;
  f.entries.forEach((e, i) => {
    if (!e || typeof e !== 'object' || !Array.isArray(e.offsets)) fail(`entry ${i}`);
    if (!count(e.codedBytes) || !count(e.keptWeights) || !count(e.keptMoments)) fail(`entry ${i} counts`);
    // The optional statistics too: a JSON footer may hold anything there.
    if ((e.entropyBits !== undefined && !count(e.entropyBits)) || (e.symbolBits !== undefined && !count(e.symbolBits))) fail(`entry ${i} bit counts`);
    if (e.errors !== undefined) {
      const x = e.errors as unknown as Record<string, unknown> | null;
      if (!x || typeof x !== 'object' || !['weight', 'm', 'v'].every((k) => typeof x[k] === 'number' && Number.isFinite(x[k]) && (x[k] as number) >= 0)) fail(`entry ${i} errors`);
    }
    const spec = header.entries[i]!;
    if (e.offsets.length !== chunkCount(spec, header.options.chunkElements)) fail(`entry ${i} has ${e.offsets.length} record offsets`);
    let previous = -1;
    for (const o of e.offsets) {
      if (!count(o) || o <= previous) fail(`entry ${i} record offset ${String(o)}`);
      previous = o;
    }
  });
  f.tensorHashes?.forEach((h, i) => {
    if (typeof h !== 'string' || !DIGEST.test(h)) fail(`tensor hash ${i}`);
  });
  if (f.baseHashes && f.baseHashes.length !== header.tensors.length) fail('base hash count');
  f.baseHashes?.forEach((h, i) => {
    if (h !== null && (typeof h !== 'string' || !DIGEST.test(h))) fail(`base hash ${i}`);
  });
  if (f.baseFingerprint !== null && (typeof f.baseFingerprint !== 'string' || !DIGEST.test(f.baseFingerprint))) fail('base fingerprint');
  if (!DIGEST.test(f.targetFingerprint)) fail('target fingerprint');
}

/**
 * Read the trailer.
 * @param trailer the last 16 bytes
 * @returns the footer offset
 */
export function decodeTrailer(trailer: Uint8Array): number {
  // The end marker first: a truncated file ends in arbitrary record bytes,
  // which say nothing about an offset.
  for (let i = 0; i < END_MAGIC.length; i++) {
    if (trailer[TRAILER_BYTES - END_MAGIC.length + i] !== END_MAGIC[i]) throw new ExcpError('ERR_TRUNCATED', 'container: missing end marker: the file is truncated');
  }
  const offsetBytes = trailer.subarray(0, 8);
  if (new DataView(trailer.buffer, trailer.byteOffset + 8, 4).getUint32(0, true) !== crc32(offsetBytes)) throw new ExcpError('ERR_CRC', 'container: trailer checksum mismatch: the file is corrupt or truncated');
  return new ByteReader(offsetBytes, 'container: trailer').u64();
}

/**
 * CRC of a chunk record as encodeRecord computes it.
 * @param prefix the 13 bytes before the payload (version 1), or {@link recordCrcPrefix} (version 2)
 * @param payload the payload
 * @param crc the CRC-32 to use
 */
export function recordCrc(prefix: Uint8Array, payload: Uint8Array, crc: Crc32 = crc32): number {
  return crc(payload, crc(prefix));
}

/**
 * Largest payload a valid chunk of this container can have: generous (raw
 * size of all tensors of the chunk, twice, plus slack) but finite, so a
 * corrupt length cannot make a reader allocate gigabytes.
 */
export function maxPayloadBytes(header: ContainerHeader, entry: EntrySpec): number {
  const n = Math.min(entry.elements, header.options.chunkElements);
  const t = header.tensors;
  let bytes = DTYPE_BYTES[t[entry.weight]!.dtype] * n;
  if (entry.expAvg !== null) bytes += 2 * DTYPE_BYTES[t[entry.expAvg]!.dtype] * n;
  return 2 * bytes + 65536;
}

/** Number of chunks of an entry. */
export function chunkCount(entry: EntrySpec, chunkElements: number): number {
  return Math.ceil(entry.elements / chunkElements);
}

/**
 * A version 1 (JSON) header in the current form: its files through their
 * kinds' fromJson. Everything else is checked by validateHeader.
 */
function fromJsonHeader(value: unknown, kinds: FileKinds): ContainerHeader {
  const header = value as ContainerHeader;
  if (!header || typeof header !== 'object' || !Array.isArray(header.files)) return header;
  const files = (header.files as unknown[]).map((f, i): FileSpec => {
    const object = f && typeof f === 'object' ? f as Record<string, unknown> : null;
    const kind = typeof object?.['kind'] === 'string' ? kinds.named(object['kind']) : undefined;
    const file = kind ? kind.fromJson(object!) : null;
    if (!file) throw new ExcpError('ERR_BAD_HEADER', `container: invalid header: file ${i}`);
    return file;
  });
  return { ...header, files };
}

function parseJson(bytes: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw new ExcpError('ERR_BAD_HEADER', `container: ${what} is not valid UTF-8 JSON`);
  }
}

/**
 * Columns of a tensor seen as a matrix: the product of its dimensions after
 * the first (a vector or a scalar is one row).
 */
export function columnsOf(shape: readonly number[]): number {
  if (shape.length <= 1) return Math.max(1, shape[0] ?? 1);
  let c = 1;
  for (let k = 1; k < shape.length; k++) c *= shape[k]!;
  return Math.max(1, c);
}

/**
 * What the chunk codec needs to know about an entry.
 * @param header the container header
 * @param entry entry index
 */
export function layoutOf(header: ContainerHeader, entry: number): ChunkLayout {
  const e = header.entries[entry]!;
  const t = header.tensors;
  return {
    weightDtype: t[e.weight]!.dtype,
    momentDtype: e.expAvg !== null ? t[e.expAvg]!.dtype : null,
    exactWeight: e.exactWeight,
    exactMoments: e.exactMoments,
    base: e.base,
    ...(header.format === 1 ? { legacySymbols: true } : {}),
    // Method 2 places chunks in the weight's matrix: from format 3 on.
    ...(header.format === undefined || header.format >= 3 ? { columns: columnsOf(t[e.weight]!.shape) } : {}),
    // Format 4 added m's drift gain to method 2's factored moments.
    ...(header.format === 3 ? { driftless: true } : {}),
    ...(e.kind === 'pack' ? { pieces: digestTensors(t, e).map((m) => byteSize(t[m]!.dtype, t[m]!.shape, 'pack')) } : {}),
  };
}
