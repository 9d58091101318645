/**
 * Field encodings shared by the compact header and footer bodies of
 * container format version 2 (spec/FORMAT.md, "Header body" and "Footer
 * body"): varints, zigzag deltas, strings, and the optional lz wrapping of a
 * whole body. The bodies themselves are in container-v2-header.ts and
 * container-v2-footer.ts; both must read and write these fields the same
 * way, which is why they live here once.
 *
 * The in-memory types stay those of lib/container.ts; the caller validates
 * the result (validateHeader, decodeFooter's checks) exactly as for a
 * version 1 JSON body.
 */
import { ByteReader, ByteWriter } from '../core/bytes.js';
import { ExcpError } from '../core/errors.js';
import { MAX_BODY_BYTES, MAX_TENSORS } from '../core/constants.js';
import { lzCompress, lzDecompress } from '../coding/lz.js';

/** Body encodings (first byte of a v2 header or footer body). A v1 JSON body starts with '{' (0x7b). */
export const BODY_STORED = 0;
/** Compressed with lz variant 1 (what format 2 wrote first) or 2 (lib/lz.ts). */
export const BODY_LZ = 1;
export const BODY_LZ2 = 2;

/** UTF-8 encoder for every string field. */
export const utf8 = new TextEncoder();
/** UTF-8 decoder that throws on invalid bytes (turned into ERR_BAD_HEADER by the readers). */
export const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Reject a v2 body.
 * @param what the offending field and value
 * @throws ExcpError ERR_BAD_HEADER always
 */
export function corrupt(what: string): never {
  throw new ExcpError('ERR_BAD_HEADER', `container: invalid v2 ${what}`);
}

/** Signed to unsigned for varints: 0, -1, 1, -2 ... become 0, 1, 2, 3 ... */
export const zigzag = (v: number): number => (v >= 0 ? 2 * v : -2 * v - 1);
/** The inverse of {@link zigzag}. */
export const unzigzag = (v: number): number => (v % 2 === 0 ? v / 2 : -(v + 1) / 2);

/**
 * String field: varint byte length, then the UTF-8 bytes.
 * @param w destination
 * @param s the string
 */
export function writeString(w: ByteWriter, s: string): void {
  const b = utf8.encode(s);
  w.varint(b.length);
  w.bytes(b);
}

/**
 * Byte field: varint length, then the bytes (a view, not a copy).
 * @param r source, advanced past the field
 * @returns the bytes
 * @throws ExcpError ERR_TRUNCATED when the bytes run out
 */
export function readBytes(r: ByteReader): Uint8Array {
  return r.bytesView(r.varint());
}

/**
 * Read a field written by {@link writeString}.
 * @param r source, advanced past the field
 * @param what the field's name for messages
 * @returns the string
 * @throws ExcpError ERR_BAD_HEADER when not UTF-8
 */
export function readString(r: ByteReader, what: string): string {
  try {
    return strictUtf8.decode(readBytes(r));
  } catch (e) {
    if (e instanceof ExcpError) throw e;
    return corrupt(`${what}: not UTF-8`);
  }
}

/**
 * A string field holding JSON text.
 * @param r source, advanced past the field
 * @param what the field's name for messages
 * @returns the parsed value
 * @throws ExcpError ERR_BAD_HEADER when not UTF-8 or not JSON
 */
export function readJson(r: ByteReader, what: string): unknown {
  const text = readString(r, what);
  try {
    return JSON.parse(text);
  } catch {
    return corrupt(`${what}: not JSON`);
  }
}

/** A count that must fit in the remaining bytes (each item takes at least `min` bytes). */
export function readCount(r: ByteReader, min: number, max: number, what: string): number {
  const n = r.varint();
  if (n > max) corrupt(`${what} count ${n} (at most ${max})`);
  if (n * min > r.remaining) corrupt(`${what} count ${n}`);
  return n;
}

/** Index list as zigzag deltas from previous + 1 (so 0, 1, 2, ... codes as zeros). */
export function writeIndices(w: ByteWriter, xs: readonly number[]): void {
  w.varint(xs.length);
  let previous = -1;
  for (const x of xs) {
    w.varint(zigzag(x - previous - 1));
    previous = x;
  }
}

/**
 * Read a list written by {@link writeIndices}.
 * @param r source, advanced past the list
 * @param what the list's name for messages
 * @returns the indices
 * @throws ExcpError ERR_BAD_HEADER for an impossible count
 */
export function readIndices(r: ByteReader, what: string): number[] {
  const n = readCount(r, 1, MAX_TENSORS, what);
  const out: number[] = [];
  let previous = -1;
  for (let k = 0; k < n; k++) {
    previous = previous + 1 + unzigzag(r.varint());
    out.push(previous);
  }
  return out;
}

/** The bytes of base64 text, or null when it is not base64. */
export function base64ToBytes(text: string): Uint8Array | null {
  try {
    const binary = atob(text);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out;
  } catch {
    return null;
  }
}

/** Base64 text of bytes (in slices: String.fromCharCode takes a bounded number of arguments). */
export function bytesToBase64(bytes: Uint8Array): string {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

/** Optional string: 0 for absent, else byte length + 1 then the bytes. */
export function writeOptional(w: ByteWriter, s: string | null | undefined): void {
  if (s === null || s === undefined) {
    w.varint(0);
    return;
  }
  const b = utf8.encode(s);
  w.varint(b.length + 1);
  w.bytes(b);
}

/**
 * Read a field written by {@link writeOptional}.
 * @param r source, advanced past the field
 * @param what the field's name for messages
 * @returns the string, or null when absent
 * @throws ExcpError ERR_BAD_HEADER when not UTF-8
 */
export function readOptional(r: ByteReader, what: string): string | null {
  const n = r.varint();
  if (n === 0) return null;
  try {
    return strictUtf8.decode(r.bytesView(n - 1));
  } catch (e) {
    if (e instanceof ExcpError) throw e;
    return corrupt(`${what}: not UTF-8`);
  }
}

/**
 * Wrap a plain body: mode byte, then stored bytes, or the decoded length and
 * an lz stream of either variant, whichever is smallest (variant 1's fewer
 * models can win on a short body; bodies are small, so both are tried).
 */
export function pack(plain: Uint8Array): Uint8Array {
  const v1 = lzCompress(plain, 1);
  const v2 = lzCompress(plain, 2);
  const packed = v2.length < v1.length ? v2 : v1;
  const w = new ByteWriter(Math.min(plain.length, packed.length) + 16);
  if (packed.length + 8 < plain.length) {
    w.u8(packed === v2 ? BODY_LZ2 : BODY_LZ);
    w.varint(plain.length);
    w.bytes(packed);
  } else {
    w.u8(BODY_STORED);
    w.bytes(plain);
  }
  return w.finish();
}

/**
 * Undo {@link pack}.
 * @param body the body, mode byte first
 * @param what 'header' or 'footer', for messages
 * @returns the plain body
 * @throws ExcpError ERR_BAD_HEADER, ERR_HEADER_TOO_LARGE, ERR_CORRUPT
 */
export function unpack(body: Uint8Array, what: string): Uint8Array {
  const r = new ByteReader(body, `container: ${what}`);
  const mode = r.u8();
  if (mode === BODY_STORED) return body.subarray(1);
  if (mode !== BODY_LZ && mode !== BODY_LZ2) throw new ExcpError('ERR_BAD_HEADER', `container: ${what} body encoding ${mode} is unknown`);
  const length = r.varint();
  if (length > MAX_BODY_BYTES) throw new ExcpError('ERR_HEADER_TOO_LARGE', `container: ${what} length ${length} exceeds limit ${MAX_BODY_BYTES}`);
  try {
    return lzDecompress(body.subarray(r.offset), length, MAX_BODY_BYTES, mode === BODY_LZ ? 1 : 2);
  } catch (e) {
    if (e instanceof ExcpError && e.code === 'ERR_TRUNCATED') throw new ExcpError('ERR_CORRUPT', `container: ${what}: ${e.message}`);
    throw e;
  }
}
