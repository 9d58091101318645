/**
 * Stage 1 (pure): the safetensors header, parsed and validated the way the
 * reference implementation does, and serialised for the restore path.
 *
 * Format (https://github.com/huggingface/safetensors, README "Format"):
 * 8 bytes little-endian u64 N, then N bytes of UTF-8 JSON (may be padded with
 * spaces), then the data. Each JSON key other than `__metadata__` maps to
 * `{dtype, shape, data_offsets: [begin, end]}`, offsets relative to the data.
 *
 * Validation mirrors safetensors' `validate`: capped header size, known
 * dtypes, overflow-safe `shape x dtype` sizes, offsets that tile the data
 * exactly (sorted, no holes, no overlap, last end = data length).
 */
import { ExcpError } from '../core/errors.js';
import { otherThanSafetensors } from './sniff.js';
import { type DType, DTYPE_BYTES, byteSize, isDType } from '../core/dtype.js';
import { MAX_TENSORS } from '../core/constants.js';
import type { TensorInfo } from '../model/checkpoint.js';

export type { TensorInfo } from '../model/checkpoint.js';

/** Largest header accepted (the reference implementation uses 100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

/** A parsed header. */
export interface SafetensorsHeader {
  /** Tensors in data-offset order (the order of the bytes in the file). */
  tensors: TensorInfo[];
  /** The `__metadata__` map, or null when absent. */
  metadata: Record<string, string> | null;
  /** Absolute offset of the data section: 8 + N. */
  dataOffset: number;
  /** Byte length of the data section. */
  dataLength: number;
  /** The exact header bytes (length prefix + JSON), kept so restore can write them back verbatim. */
  raw: Uint8Array;
}

/** A tensor with its bytes, for one-shot helpers. */
export interface TensorData {
  name: string;
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

/**
 * Read the 8-byte header length prefix.
 * @param first8 the first 8 bytes of the file
 * @param fileSize total size, when known, to check the header fits
 * @returns N, the JSON byte length
 * @throws ExcpError ERR_TRUNCATED, ERR_HEADER_TOO_LARGE, ERR_BAD_HEADER (N < 2, or
 *   the file is a zip, an .excp container or a pickle instead)
 */
export function readHeaderLength(first8: Uint8Array, fileSize?: number): number {
  if (first8.length < 8) throw new ExcpError('ERR_TRUNCATED', `safetensors: file has ${first8.length} bytes, fewer than the 8-byte header length`);
  const view = new DataView(first8.buffer, first8.byteOffset, 8);
  const lo = view.getUint32(0, true);
  const hi = view.getUint32(4, true);
  const n = hi * 0x100000000 + lo;
  const tooLong = n > MAX_HEADER_BYTES || (fileSize !== undefined && 8 + n > fileSize);
  if (tooLong || n < 2) {
    // Not safetensors: say what it is when it is a file a user would plausibly pass.
    const other = otherThanSafetensors(first8);
    if (other) throw new ExcpError('ERR_BAD_HEADER', `safetensors: not a safetensors file: ${other}`);
  }
  if (n > MAX_HEADER_BYTES) throw new ExcpError('ERR_HEADER_TOO_LARGE', `safetensors: header length ${n} exceeds limit ${MAX_HEADER_BYTES}`);
  if (n < 2) throw new ExcpError('ERR_BAD_HEADER', `safetensors: header length ${n} is too small for a JSON object`);
  if (fileSize !== undefined && 8 + n > fileSize) {
    throw new ExcpError('ERR_TRUNCATED', `safetensors: header length ${n} exceeds file size ${fileSize}`);
  }
  return n;
}

/**
 * Parse and validate the JSON header.
 * @param raw the length prefix and the JSON bytes (8 + N bytes)
 * @param dataLength byte length of the data section (file size - 8 - N), or undefined when unknown (stdin)
 * @returns the validated header
 * @throws ExcpError ERR_BAD_HEADER, ERR_DTYPE, ERR_SHAPE
 */
export function parseSafetensorsHeader(raw: Uint8Array, dataLength?: number): SafetensorsHeader {
  const n = readHeaderLength(raw);
  if (raw.length < 8 + n) throw new ExcpError('ERR_TRUNCATED', `safetensors: header needs ${8 + n} bytes, got ${raw.length}`);
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(raw.subarray(8, 8 + n));
  } catch {
    throw new ExcpError('ERR_BAD_HEADER', 'safetensors: header is not valid UTF-8');
  }
  if (!text.startsWith('{')) throw new ExcpError('ERR_BAD_HEADER', 'safetensors: header does not start with "{"');
  // Refused before JSON.parse builds them: every tensor has one "data_offsets".
  const listed = countOccurrences(raw.subarray(8, 8 + n), DATA_OFFSETS);
  if (listed > MAX_TENSORS) {
    throw new ExcpError('ERR_HEADER_TOO_LARGE', `safetensors: the header lists ${listed} tensors, more than the ${MAX_TENSORS} excp reads (its memory grows with the count, about 2 KB a tensor)`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ExcpError('ERR_BAD_HEADER', `safetensors: header is not valid JSON (${(e as Error).message})`);
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) throw new ExcpError('ERR_BAD_HEADER', 'safetensors: header is not a JSON object');
  let metadata: Record<string, string> | null = null;
  const tensors: TensorInfo[] = [];
  for (const [name, value] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      metadata = parseMetadata(value);
      continue;
    }
    tensors.push(parseTensorEntry(name, value));
  }
  tensors.sort((a, b) => a.begin - b.begin || a.end - b.end);
  let expected = 0;
  for (const t of tensors) {
    if (t.begin !== expected) {
      throw new ExcpError('ERR_SHAPE', `safetensors: tensor '${t.name}' starts at ${t.begin}, expected ${expected} (offsets must be contiguous with no holes or overlaps)`);
    }
    expected = t.end;
  }
  if (dataLength !== undefined && expected !== dataLength) {
    throw new ExcpError(expected > dataLength ? 'ERR_TRUNCATED' : 'ERR_TRAILING_DATA',
      `safetensors: tensors cover ${expected} data bytes but the file has ${dataLength}`);
  }
  return { tensors, metadata, dataOffset: 8 + n, dataLength: expected, raw: raw.subarray(0, 8 + n) };
}

const DATA_OFFSETS = new TextEncoder().encode('"data_offsets"');

/** How many times `needle` occurs in `bytes`. */
function countOccurrences(bytes: Uint8Array, needle: Uint8Array): number {
  let count = 0;
  const first = needle[0]!;
  for (let i = bytes.indexOf(first); i >= 0 && i <= bytes.length - needle.length; i = bytes.indexOf(first, i + 1)) {
    let k = 1;
    while (k < needle.length && bytes[i + k] === needle[k]) k++;
    if (k === needle.length) count++;
  }
  return count;
}

function parseMetadata(value: unknown): Record<string, string> {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new ExcpError('ERR_BAD_HEADER', 'safetensors: __metadata__ is not an object');
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    if (typeof v !== 'string') throw new ExcpError('ERR_BAD_HEADER', `safetensors: __metadata__ value of '${k}' is not a string`);
    out[k] = v;
  }
  return out;
}

function parseTensorEntry(name: string, value: unknown): TensorInfo {
  if (value === null || typeof value !== 'object') throw new ExcpError('ERR_BAD_HEADER', `safetensors: entry '${name}' is not an object`);
  const entry = value as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
  if (!isDType(entry.dtype)) throw new ExcpError('ERR_DTYPE', `safetensors: tensor '${name}' has unknown dtype ${JSON.stringify(entry.dtype)}`);
  if (!Array.isArray(entry.shape) || entry.shape.length > 64) throw new ExcpError('ERR_SHAPE', `safetensors: tensor '${name}' has an invalid shape`);
  const offsets = entry.data_offsets;
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    throw new ExcpError('ERR_SHAPE', `safetensors: tensor '${name}' has invalid data_offsets`);
  }
  const shape = entry.shape as number[];
  const size = byteSize(entry.dtype, shape, `safetensors: tensor '${name}'`);
  const [begin, end] = offsets as [number, number];
  if (end < begin || end - begin !== size) {
    throw new ExcpError('ERR_SHAPE', `safetensors: tensor '${name}' spans ${end - begin} bytes but [${shape.join(', ')}] ${entry.dtype} needs ${size}`);
  }
  return { name, dtype: entry.dtype, shape: shape.slice(), begin, end };
}

/**
 * Build a header for tensors laid out in the given order.
 * The JSON is padded with spaces so the data starts 8-byte aligned, as the
 * reference writer does.
 * @param tensors names, dtypes and shapes, in data order
 * @param metadata optional `__metadata__`
 * @returns the header bytes (prefix + JSON) and the tensors with offsets
 */
export function buildSafetensorsHeader(
  tensors: ReadonlyArray<{ name: string; dtype: DType; shape: readonly number[] }>,
  metadata?: Record<string, string> | null,
): { raw: Uint8Array; tensors: TensorInfo[] } {
  const json: Record<string, unknown> = {};
  if (metadata) json['__metadata__'] = metadata;
  const infos: TensorInfo[] = [];
  let offset = 0;
  for (const t of tensors) {
    const size = byteSize(t.dtype, t.shape, `safetensors: tensor '${t.name}'`);
    if (t.name === '__metadata__' || Object.prototype.hasOwnProperty.call(json, t.name)) {
      throw new ExcpError('ERR_BAD_HEADER', `safetensors: duplicate or reserved tensor name '${t.name}'`);
    }
    json[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + size] };
    infos.push({ name: t.name, dtype: t.dtype, shape: t.shape.slice(), begin: offset, end: offset + size });
    offset += size;
  }
  let text = JSON.stringify(json);
  const body = new TextEncoder().encode(text);
  const padded = Math.ceil(body.length / 8) * 8;
  const raw = new Uint8Array(8 + padded).fill(0x20, 8);
  new DataView(raw.buffer).setUint32(0, padded, true);
  raw.set(body, 8);
  text = '';
  return { raw, tensors: infos };
}

/**
 * Serialise a whole (small) checkpoint in one go.
 * @param tensors tensors with data, in the order to write them
 * @param metadata optional `__metadata__`
 * @returns the file bytes
 * @throws ExcpError ERR_SHAPE when a tensor's data length does not match its shape
 */
export function serializeSafetensors(tensors: readonly TensorData[], metadata?: Record<string, string> | null): Uint8Array {
  const { raw, tensors: infos } = buildSafetensorsHeader(tensors, metadata);
  const total = raw.length + (infos.length ? infos[infos.length - 1]!.end : 0);
  const out = new Uint8Array(total);
  out.set(raw, 0);
  tensors.forEach((t, i) => {
    const info = infos[i]!;
    if (t.data.length !== info.end - info.begin) {
      throw new ExcpError('ERR_SHAPE', `safetensors: tensor '${t.name}' has ${t.data.length} bytes, shape needs ${info.end - info.begin}`);
    }
    out.set(t.data, raw.length + info.begin);
  });
  return out;
}

/**
 * Parse a whole file held in memory (tensor data are views, not copies).
 * @param bytes the file
 * @returns tensors in file order and metadata ({} when absent)
 */
export function parseSafetensors(bytes: Uint8Array): { tensors: TensorData[]; metadata: Record<string, string>; header: SafetensorsHeader } {
  const n = readHeaderLength(bytes.subarray(0, 8), bytes.length);
  const header = parseSafetensorsHeader(bytes.subarray(0, 8 + n), bytes.length - 8 - n);
  const tensors = header.tensors.map((t) => ({
    name: t.name, dtype: t.dtype, shape: t.shape,
    data: bytes.subarray(header.dataOffset + t.begin, header.dataOffset + t.end),
  }));
  return { tensors, metadata: header.metadata ?? {}, header };
}

/** Bytes per element, re-exported for callers that only import this stage. */
export { DTYPE_BYTES };
