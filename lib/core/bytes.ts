/**
 * Byte cursors: a bounds-checked reader over a DataView and a growable writer.
 *
 * Every read is checked against the end of the view *before* it happens, so a
 * corrupt length can only ever produce an ExcpError, never a RangeError or an
 * out-of-bounds typed-array view. All multi-byte values are little-endian.
 */
import { ExcpError } from './errors.js';

/** A cursor over bytes: reads advance `offset`. */
export class ByteReader {
  readonly bytes: Uint8Array;
  readonly view: DataView;
  /** Invariant: start <= offset <= end. */
  offset: number;
  /** Exclusive end of the readable region. */
  readonly end: number;
  /** Stage name used in error messages. */
  readonly stage: string;

  /**
   * @param bytes the buffer
   * @param stage stage name for error messages
   * @param offset first readable byte
   * @param end one past the last readable byte
   */
  constructor(bytes: Uint8Array, stage = 'bytes', offset = 0, end = bytes.length) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.offset = offset;
    this.end = end;
    this.stage = stage;
  }

  /** Bytes left to read. */
  get remaining(): number {
    return this.end - this.offset;
  }

  /**
   * Fail unless `n` more bytes exist.
   * @throws ExcpError ERR_TRUNCATED
   */
  need(n: number): void {
    if (!(n >= 0) || this.offset + n > this.end) {
      throw new ExcpError('ERR_TRUNCATED', `${this.stage}: needs ${n} bytes at offset ${this.offset}, only ${this.end - this.offset} left`);
    }
  }

  u8(): number {
    this.need(1);
    return this.bytes[this.offset++]!;
  }

  u16(): number {
    this.need(2);
    const v = this.view.getUint16(this.offset, true);
    this.offset += 2;
    return v;
  }

  u32(): number {
    this.need(4);
    const v = this.view.getUint32(this.offset, true);
    this.offset += 4;
    return v;
  }

  /** Unsigned 64-bit value; fails if it is not a safe integer. */
  u64(): number {
    this.need(8);
    const lo = this.view.getUint32(this.offset, true);
    const hi = this.view.getUint32(this.offset + 4, true);
    if (hi >= 0x200000) {
      throw new ExcpError('ERR_SHAPE', `${this.stage}: 64-bit value at offset ${this.offset} exceeds 2^53`);
    }
    this.offset += 8;
    return hi * 0x100000000 + lo;
  }

  f32(): number {
    this.need(4);
    const v = this.view.getFloat32(this.offset, true);
    this.offset += 4;
    return v;
  }

  /** Unsigned LEB128 varint, at most 2^53 - 1. */
  varint(): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 8; i++) {
      const b = this.u8();
      result += (b & 0x7f) * scale;
      if ((b & 0x80) === 0) return result;
      scale *= 128;
    }
    throw new ExcpError('ERR_CORRUPT', `${this.stage}: varint longer than 8 bytes at offset ${this.offset}`);
  }

  /** A view (no copy) of the next `n` bytes. */
  bytesView(n: number): Uint8Array {
    this.need(n);
    const v = this.bytes.subarray(this.offset, this.offset + n);
    this.offset += n;
    return v;
  }
}

/** A growable little-endian writer. */
export class ByteWriter {
  private buffer: Uint8Array;
  private view: DataView;
  /** Invariant: 0 <= length <= buffer.length; bytes [0, length) are written. */
  length = 0;

  constructor(initialCapacity = 1024) {
    this.buffer = new Uint8Array(Math.max(16, initialCapacity));
    this.view = new DataView(this.buffer.buffer);
  }

  /** Make room for `n` more bytes. */
  ensure(n: number): void {
    const needed = this.length + n;
    if (needed <= this.buffer.length) return;
    let size = this.buffer.length * 2;
    while (size < needed) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buffer.subarray(0, this.length));
    this.buffer = next;
    this.view = new DataView(next.buffer);
  }

  u8(v: number): void {
    this.ensure(1);
    this.buffer[this.length++] = v;
  }

  u16(v: number): void {
    this.ensure(2);
    this.view.setUint16(this.length, v, true);
    this.length += 2;
  }

  u32(v: number): void {
    this.ensure(4);
    this.view.setUint32(this.length, v >>> 0, true);
    this.length += 4;
  }

  u64(v: number): void {
    this.ensure(8);
    this.view.setUint32(this.length, v % 0x100000000, true);
    this.view.setUint32(this.length + 4, Math.floor(v / 0x100000000), true);
    this.length += 8;
  }

  f32(v: number): void {
    this.ensure(4);
    this.view.setFloat32(this.length, v, true);
    this.length += 4;
  }

  varint(v: number): void {
    if (!Number.isSafeInteger(v) || v < 0) throw new ExcpError('ERR_INVALID_ARG', `bytes: varint ${v} is not a non-negative safe integer`);
    while (v >= 128) {
      this.u8((v % 128) | 0x80);
      v = Math.floor(v / 128);
    }
    this.u8(v);
  }

  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buffer.set(b, this.length);
    this.length += b.length;
  }

  /** The written bytes (a view; copy it if the writer is reused). */
  finish(): Uint8Array {
    return this.buffer.subarray(0, this.length);
  }
}

/**
 * Bytes that {@link ByteWriter.varint} writes for a value.
 * @param v a non-negative safe integer
 * @returns 1 for v < 128, 2 below 2^14, and so on
 */
export function varintSize(v: number): number {
  let size = 1;
  while (v >= 128) {
    v = Math.floor(v / 128);
    size++;
  }
  return size;
}

/** Concatenate byte arrays. */
export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const p of parts) total += p.length;
  const out = new Uint8Array(total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
