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
 * lib/container-v2.ts (first byte 0 or 1); a record stores only its length
 * (varint): entry and chunk are implied by the record order, which readers
 * always enforced, and still covered by the CRC (as varints, see
 * recordCrcPrefix). Version 1 (still read): the bodies are JSON (first byte
 * '{') and records store entry, chunk and length as u32.
 *
 * Every length is checked against a limit before anything is allocated, and
 * every record's CRC covers its type, indices, length and payload, so a
 * flipped bit anywhere is caught before the payload is decoded.
 */
import { ByteReader, ByteWriter } from './bytes.js';
import { crc32 } from './crc32.js';
import { type DType, DTYPE_BYTES, elementCount, isDType } from './dtype.js';
import { ExcpError } from './errors.js';
import { decodeFooterBody, decodeHeaderBody, encodeFooterBody, encodeHeaderBody } from './container-v2.js';
import {
  END_MAGIC, FORMAT_VERSION, MAGIC, MAX_CHUNK_ELEMENTS, MAX_JSON_BYTES, MAX_TENSORS, MIN_CHUNK_ELEMENTS,
  RECORD_CHUNK, RECORD_FOOTER,
} from './constants.js';
import type { CodecOptions, EntrySpec, Role, TensorSpec } from './types.js';

/** How restore lays tensors out into files. */
export type FileSpec =
  | { kind: 'safetensors'; path: string | null; rawHeader: string; tensors: number[] }
  | { kind: 'blob'; path: string; tensor: number }
  | { kind: 'torch'; path: string; tensors: number[]; layout: unknown };

/** The header: everything restore needs before the first record. */
export interface ContainerHeader {
  tool: string;
  options: CodecOptions;
  tensors: TensorSpec[];
  entries: EntrySpec[];
  files: FileSpec[];
  /** Extra information (e.g. the parameter map of a PyTorch folder). */
  info?: Record<string, unknown>;
}

/** Per-entry results, written after the last record. */
export interface FooterEntry {
  /** Byte offsets of the entry's records, in chunk order. */
  offsets: number[];
  codedBytes: number;
  keptWeights: number;
  keptMoments: number;
  /** Empirical entropy of the entry's coded symbols, in bits (absent in older files). */
  entropyBits?: number;
  /** Bits of the entry's coded symbol streams, tables included (absent in older files). */
  symbolBits?: number;
}

/** The footer: index and fingerprints. */
export interface ContainerFooter {
  entries: FooterEntry[];
  /** Per tensor: hash of the restored bytes (over chunk digests). */
  tensorHashes: string[];
  /** Per tensor with a base: hash of the base bytes used (null otherwise). */
  baseHashes: (string | null)[];
  baseFingerprint: string | null;
  targetFingerprint: string;
}

/** A chunk record. */
export interface ChunkRecord {
  entry: number;
  chunk: number;
  payload: Uint8Array;
}

/** Bytes of the preamble and header. */
export function encodeHead(header: ContainerHeader): Uint8Array {
  const json = encodeHeaderBody(header);
  const w = new ByteWriter(json.length + 24);
  w.bytes(MAGIC);
  w.u16(FORMAT_VERSION);
  w.u16(0);
  w.u32(json.length);
  w.bytes(json);
  w.u32(crc32(json));
  return w.finish();
}

/** Bytes of one chunk record. */
export function encodeRecord(record: ChunkRecord): Uint8Array {
  const w = new ByteWriter(record.payload.length + 14);
  w.u8(RECORD_CHUNK);
  w.varint(record.payload.length);
  w.bytes(record.payload);
  w.u32(recordCrc(recordCrcPrefix(record.entry, record.chunk, record.payload.length), record.payload));
  return w.finish();
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
  const json = encodeFooterBody(footer, header);
  const w = new ByteWriter(json.length + 32);
  w.u8(RECORD_FOOTER);
  w.u32(json.length);
  w.bytes(json);
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

/**
 * Check the preamble and read the header JSON length.
 * @param first16 the first 16 bytes
 * @returns the JSON length
 * @throws ExcpError ERR_BAD_MAGIC, ERR_VERSION, ERR_HEADER_TOO_LARGE
 */
export function readPreamble(first16: Uint8Array): number {
  return readPreambleInfo(first16).length;
}

/** Oldest container format version this code reads. */
export const MIN_FORMAT_VERSION = 1;

/**
 * {@link readPreamble}, also returning the format version (1 or 2).
 * @throws ExcpError ERR_BAD_MAGIC, ERR_VERSION, ERR_HEADER_TOO_LARGE
 */
export function readPreambleInfo(first16: Uint8Array): { version: number; length: number } {
  const r = new ByteReader(first16, 'container');
  for (let i = 0; i < MAGIC.length; i++) {
    if (r.u8() !== MAGIC[i]) throw new ExcpError('ERR_BAD_MAGIC', 'container: not an .excp file (bad magic)');
  }
  const version = r.u16();
  if (version < MIN_FORMAT_VERSION || version > FORMAT_VERSION) throw new ExcpError('ERR_VERSION', `container: format version ${version} is not supported (this reads versions ${MIN_FORMAT_VERSION} to ${FORMAT_VERSION})`);
  r.u16();
  const length = r.u32();
  if (length > MAX_JSON_BYTES) throw new ExcpError('ERR_HEADER_TOO_LARGE', `container: header length ${length} exceeds limit ${MAX_JSON_BYTES}`);
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
 * @returns the validated header
 * @throws ExcpError ERR_CRC, ERR_BAD_HEADER, ERR_SHAPE, ERR_DTYPE
 */
export function decodeHeader(bytes: Uint8Array): ContainerHeader {
  const json = bytes.subarray(0, bytes.length - 4);
  const stored = new DataView(bytes.buffer, bytes.byteOffset + bytes.length - 4, 4).getUint32(0, true);
  if (crc32(json) !== stored) throw new ExcpError('ERR_CRC', 'container: header checksum mismatch: the file is corrupt');
  if (json.length === 0) throw new ExcpError('ERR_BAD_HEADER', 'container: header is empty');
  const header = isJsonBody(json) ? parseJson(json, 'header') as ContainerHeader : decodeHeaderBody(json);
  validateHeader(header);
  return header;
}

/**
 * Parse and check the footer record body (JSON then CRC over type, length and JSON).
 * @param body the JSON bytes
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
    && Array.isArray(footer.tensorHashes) && footer.tensorHashes.length === header.tensors.length
    && Array.isArray(footer.baseHashes) && typeof footer.targetFingerprint === 'string';
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
    const spec = header.entries[i]!;
    if (e.offsets.length !== chunkCount(spec, header.options.chunkElements)) fail(`entry ${i} has ${e.offsets.length} record offsets`);
    let previous = -1;
    for (const o of e.offsets) {
      if (!count(o) || o <= previous) fail(`entry ${i} record offset ${String(o)}`);
      previous = o;
    }
  });
  f.tensorHashes.forEach((h, i) => {
    if (typeof h !== 'string' || !DIGEST.test(h)) fail(`tensor hash ${i}`);
  });
  if (f.baseHashes.length !== header.tensors.length) fail('base hash count');
  f.baseHashes.forEach((h, i) => {
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
  const r = new ByteReader(trailer, 'container');
  const offsetBytes = trailer.subarray(0, 8);
  const offset = r.u64();
  if (r.u32() !== crc32(offsetBytes)) throw new ExcpError('ERR_CRC', 'container: trailer checksum mismatch: the file is corrupt or truncated');
  for (let i = 0; i < END_MAGIC.length; i++) {
    if (r.u8() !== END_MAGIC[i]) throw new ExcpError('ERR_TRUNCATED', 'container: missing end marker: the file is truncated');
  }
  return offset;
}

/**
 * CRC of a chunk record as encodeRecord computes it.
 * @param prefix the 13 bytes before the payload (version 1), or {@link recordCrcPrefix} (version 2)
 * @param payload the payload
 */
export function recordCrc(prefix: Uint8Array, payload: Uint8Array): number {
  return crc32(payload, crc32(prefix));
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

function parseJson(bytes: Uint8Array, what: string): unknown {
  try {
    return JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes));
  } catch {
    throw new ExcpError('ERR_BAD_HEADER', `container: ${what} is not valid UTF-8 JSON`);
  }
}

const ROLES: ReadonlySet<Role> = new Set<Role>(['weight', 'exp_avg', 'exp_avg_sq', 'plain']);

function bad(what: string): never {
  throw new ExcpError('ERR_BAD_HEADER', `container: invalid header: ${what}`);
}

/** Structural checks on a header read from an untrusted file. */
export function validateHeader(h: ContainerHeader): void {
  if (!h || typeof h !== 'object') bad('not an object');
  const o = h.options;
  if (!o || typeof o !== 'object') bad('options missing');
  if (!Number.isSafeInteger(o.chunkElements) || o.chunkElements < MIN_CHUNK_ELEMENTS || o.chunkElements > MAX_CHUNK_ELEMENTS) bad(`chunkElements ${String(o.chunkElements)}`);
  if (!Number.isInteger(o.bits) || o.bits < 1 || o.bits > 8) bad(`bits ${String(o.bits)}`);
  if (!Array.isArray(h.tensors) || h.tensors.length > MAX_TENSORS) bad('tensors');
  if (!Array.isArray(h.entries) || h.entries.length > h.tensors.length) bad('entries');
  if (!Array.isArray(h.files)) bad('files');
  const owner = new Int32Array(h.tensors.length).fill(-1);
  h.tensors.forEach((t, i) => {
    if (!t || typeof t.name !== 'string' || !isDType(t.dtype as unknown) || !Array.isArray(t.shape) || !ROLES.has(t.role)) bad(`tensor ${i}`);
    elementCount(t.shape, `container: tensor '${t.name}'`);
    if (!Number.isInteger(t.entry) || t.entry < 0 || t.entry >= h.entries.length) bad(`tensor ${i} entry`);
  });
  h.entries.forEach((e, i) => {
    if (!e || (e.kind !== 'param' && e.kind !== 'plain')) bad(`entry ${i} kind`);
    const members = [e.weight, e.expAvg, e.expAvgSq].filter((x) => x !== null);
    if (e.kind === 'param' && members.length !== 3) bad(`entry ${i} members`);
    if (e.kind === 'plain' && members.length !== 1) bad(`entry ${i} members`);
    for (const t of members) {
      if (!Number.isInteger(t) || t! < 0 || t! >= h.tensors.length || owner[t!] !== -1) bad(`entry ${i} tensor ${String(t)}`);
      owner[t!] = i;
      const spec = h.tensors[t!]!;
      if (spec.entry !== i) bad(`entry ${i} tensor ${String(t)} owner`);
      if (elementCount(spec.shape, 'container') !== e.elements) bad(`entry ${i} element count`);
    }
    if (e.kind === 'param') {
      const m = h.tensors[e.expAvg!]!;
      const v = h.tensors[e.expAvgSq!]!;
      if (m.dtype !== v.dtype) bad(`entry ${i} moment dtypes`);
      if (!e.exactWeight && !isLossyDtype(h.tensors[e.weight]!.dtype)) bad(`entry ${i} lossy weight dtype`);
      if (!e.exactMoments && !isLossyDtype(m.dtype)) bad(`entry ${i} lossy moment dtype`);
    } else if (!e.exactWeight) {
      bad(`entry ${i}: plain entries are exact`);
    }
    if (typeof e.base !== 'boolean' || typeof e.exactWeight !== 'boolean' || typeof e.exactMoments !== 'boolean') bad(`entry ${i} flags`);
  });
  if (owner.some((x) => x === -1)) bad('a tensor belongs to no entry');
  validateFiles(h);
  if (h.info !== undefined && (h.info === null || typeof h.info !== 'object' || Array.isArray(h.info))) bad('info');
}

/**
 * A file path of a folder container: relative, '/'-separated, no empty, `.`
 * or `..` component, no backslash, NUL or drive letter, so restore can never
 * write outside the output folder.
 */
export function isSafeRelativePath(path: unknown): path is string {
  if (typeof path !== 'string' || path.length === 0 || path.length > 4096) return false;
  if (/[\\\0]/.test(path)) return false;
  return path.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}

/** Checks on `files`: kinds, paths, tensor references (each tensor in at most one file; all of them in a folder). */
function validateFiles(h: ContainerHeader): void {
  const used = new Uint8Array(h.tensors.length);
  const tensorIndex = (t: unknown, what: string): number => {
    if (!Number.isInteger(t) || (t as number) < 0 || (t as number) >= h.tensors.length || used[t as number]) bad(`${what} tensor ${String(t)}`);
    used[t as number] = 1;
    return t as number;
  };
  const bytesOf = (t: number): number => elementCount(h.tensors[t]!.shape, 'container') * DTYPE_BYTES[h.tensors[t]!.dtype];
  const isBytes = (t: number): boolean => h.tensors[t]!.dtype === 'U8' && h.tensors[t]!.shape.length === 1 && h.tensors[t]!.role === 'plain';
  const single = h.files.length === 1 && h.files[0]?.kind === 'safetensors' && h.files[0].path === null;
  const paths = new Set<string>();
  h.files.forEach((f, i) => {
    const what = `file ${i}`;
    if (!f || typeof f !== 'object') bad(what);
    if (!(single && f.kind === 'safetensors' && f.path === null)) {
      if (!isSafeRelativePath(f.path)) bad(`${what} path ${JSON.stringify(f.path)}`);
      if (paths.has(f.path)) bad(`${what} path ${JSON.stringify(f.path)} repeats`);
      paths.add(f.path);
    }
    if (f.kind === 'safetensors') {
      if (typeof f.rawHeader !== 'string' || !Array.isArray(f.tensors)) bad(what);
      f.tensors.forEach((t) => tensorIndex(t, what));
    } else if (f.kind === 'blob') {
      if (!isBytes(tensorIndex(f.tensor, what))) bad(`${what}: a blob is one U8 vector`);
    } else if (f.kind === 'torch') {
      const layout = f.layout as { size?: unknown; offsets?: unknown } | null;
      if (!Array.isArray(f.tensors) || f.tensors.length < 1 || !layout || typeof layout !== 'object') bad(what);
      const size = layout.size;
      const offsets = layout.offsets;
      if (!Number.isSafeInteger(size) || (size as number) < 0 || !Array.isArray(offsets) || offsets.length !== f.tensors.length - 1) bad(`${what} layout`);
      const members = f.tensors.map((t) => tensorIndex(t, what));
      if (!isBytes(members[0]!)) bad(`${what}: the skeleton is one U8 vector`);
      let end = 0;
      let cut = 0;
      members.slice(1).forEach((t, k) => {
        const at = (offsets as unknown[])[k];
        if (!Number.isSafeInteger(at) || (at as number) < end) bad(`${what} layout offset ${String(at)}`);
        end = (at as number) + bytesOf(t);
        cut += bytesOf(t);
      });
      if (end > (size as number) || bytesOf(members[0]!) !== (size as number) - cut) bad(`${what} layout size`);
    } else {
      bad(`${what} kind ${JSON.stringify((f as { kind?: unknown }).kind)}`);
    }
  });
  if (!single) {
    for (const p of paths) {
      const parts = p.split('/');
      for (let k = 1; k < parts.length; k++) {
        if (paths.has(parts.slice(0, k).join('/'))) bad(`path ${JSON.stringify(parts.slice(0, k).join('/'))} is both a file and a folder`);
      }
    }
    if (used.some((u) => u === 0)) bad('a tensor belongs to no file');
  }
}

function isLossyDtype(d: DType): boolean {
  return d === 'F32' || d === 'F16' || d === 'BF16';
}

/**
 * What the chunk codec needs to know about an entry.
 * @param header the container header
 * @param entry entry index
 */
export function layoutOf(header: ContainerHeader, entry: number): import('./codec.js').ChunkLayout {
  const e = header.entries[entry]!;
  const t = header.tensors;
  return {
    weightDtype: t[e.weight]!.dtype,
    momentDtype: e.expAvg !== null ? t[e.expAvg]!.dtype : null,
    exactWeight: e.exactWeight,
    exactMoments: e.exactMoments,
    base: e.base,
  };
}
