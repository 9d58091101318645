/**
 * The safetensors dtype table and float conversions.
 *
 * The lossy stages compute in float32; these helpers move element bytes of
 * any float dtype into a Float32Array and back, rounding to nearest-even the
 * way PyTorch does, so a bf16 weight restored by excp equals what torch
 * would get from the same float32 value.
 */
import { ExcpError } from './errors.js';

/** Element types of the safetensors format. */
export type DType =
  | 'F64' | 'F32' | 'F16' | 'BF16'
  | 'I64' | 'I32' | 'I16' | 'I8'
  | 'U64' | 'U32' | 'U16' | 'U8'
  | 'BOOL' | 'F8_E4M3' | 'F8_E5M2';

/** Bytes per element for each dtype. */
export const DTYPE_BYTES: Readonly<Record<DType, number>> = Object.freeze({
  F64: 8, F32: 4, F16: 2, BF16: 2,
  I64: 8, I32: 4, I16: 2, I8: 1,
  U64: 8, U32: 4, U16: 2, U8: 1,
  BOOL: 1, F8_E4M3: 1, F8_E5M2: 1,
});

/** The float dtypes the lossy path can code. */
export const LOSSY_DTYPES: ReadonlySet<DType> = new Set<DType>(['F32', 'F16', 'BF16']);

/**
 * @param name a dtype string from a header
 * @returns true if it is a known dtype
 */
export function isDType(name: unknown): name is DType {
  return typeof name === 'string' && Object.prototype.hasOwnProperty.call(DTYPE_BYTES, name);
}

/**
 * Element count of a shape, refusing anything that is not a safe integer.
 * @param shape dimensions
 * @param what context for the error message
 * @returns the product of the dimensions (1 for a 0-rank tensor)
 * @throws ExcpError ERR_SHAPE
 */
export function elementCount(shape: readonly number[], what: string): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) throw new ExcpError('ERR_SHAPE', `${what}: dimension ${String(d)} is not a non-negative integer`);
    n *= d;
    if (!Number.isSafeInteger(n)) throw new ExcpError('ERR_SHAPE', `${what}: shape [${shape.join(', ')}] has more than 2^53 elements`);
  }
  return n;
}

/**
 * Byte size of a tensor, overflow-safe.
 * @throws ExcpError ERR_SHAPE
 */
export function byteSize(dtype: DType, shape: readonly number[], what: string): number {
  const bytes = elementCount(shape, what) * DTYPE_BYTES[dtype];
  if (!Number.isSafeInteger(bytes)) throw new ExcpError('ERR_SHAPE', `${what}: byte size of [${shape.join(', ')}] ${dtype} exceeds 2^53`);
  return bytes;
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** bf16 bits -> float32 value. */
export function bf16ToF32(bits: number): number {
  u32Scratch[0] = bits << 16;
  return f32Scratch[0]!;
}

/** float32 value -> bf16 bits, round to nearest even; NaN stays a quiet NaN with its sign. */
export function f32ToBf16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  if ((x & 0x7fffffff) > 0x7f800000) return ((x >>> 16) | 0x40) & 0xffff;
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/** IEEE half bits -> float32 value (exact). */
export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >>> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

/** float32 value -> IEEE half bits, round to nearest even, overflow to infinity. */
export function f32ToF16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    const rest = mant & ((1 << shift) - 1);
    let h = mant >>> shift;
    if (rest > half || (rest === half && (h & 1))) h++;
    return sign | h;
  }
  const rest = mant & 0x1fff;
  let h = (e << 10) | (mant >>> 13);
  if (rest > 0x1000 || (rest === 0x1000 && (h & 1))) h++;
  return sign | h;
}

/** An aligned view of element bytes; copies only when the bytes are misaligned. */
function aligned(bytes: Uint8Array, size: number): ArrayBuffer {
  if (bytes.byteOffset % size === 0) return bytes.buffer as ArrayBuffer;
  return new Uint8Array(bytes).buffer as ArrayBuffer;
}

function alignedOffset(bytes: Uint8Array, size: number): number {
  return bytes.byteOffset % size === 0 ? bytes.byteOffset : 0;
}

/**
 * Decode float elements into float32.
 * @param bytes little-endian element bytes
 * @param dtype F32, F16 or BF16
 * @param out destination, length >= element count
 * @returns `out`
 * @throws ExcpError ERR_DTYPE for a non-float dtype
 */
export function toFloat32(bytes: Uint8Array, dtype: DType, out?: Float32Array): Float32Array {
  const n = bytes.length / DTYPE_BYTES[dtype];
  const dst = out ?? new Float32Array(n);
  if (dtype === 'F32') {
    dst.set(new Float32Array(aligned(bytes, 4), alignedOffset(bytes, 4), n));
  } else if (dtype === 'BF16' || dtype === 'F16') {
    const src = new Uint16Array(aligned(bytes, 2), alignedOffset(bytes, 2), n);
    if (dtype === 'BF16') {
      const bits = new Uint32Array(dst.buffer, dst.byteOffset, n);
      for (let i = 0; i < n; i++) bits[i] = src[i]! << 16;
    } else {
      for (let i = 0; i < n; i++) dst[i] = f16ToF32(src[i]!);
    }
  } else {
    throw new ExcpError('ERR_DTYPE', `dtype: cannot decode ${dtype} as float`);
  }
  return dst;
}

/**
 * Encode float32 values as elements of `dtype` (round to nearest even).
 * @param values float32 values
 * @param dtype F32, F16 or BF16
 * @param out optional destination (aligned to the element size), length >= values.length * element bytes
 * @returns little-endian element bytes (a fresh array, or `out` cut to length)
 * @throws ExcpError ERR_DTYPE for a non-float dtype
 */
export function fromFloat32(values: Float32Array, dtype: DType, out?: Uint8Array): Uint8Array {
  const n = values.length;
  if (dtype === 'F32') {
    if (!out) return new Uint8Array(values.buffer.slice(values.byteOffset, values.byteOffset + n * 4));
    out.set(new Uint8Array(values.buffer, values.byteOffset, n * 4));
    return out.subarray(0, n * 4);
  }
  if (dtype !== 'BF16' && dtype !== 'F16') throw new ExcpError('ERR_DTYPE', `dtype: cannot encode float as ${dtype}`);
  const bytes = out ? out.subarray(0, n * 2) : new Uint8Array(n * 2);
  const dst = new Uint16Array(bytes.buffer, bytes.byteOffset, n);
  if (dtype === 'BF16') {
    const bits = new Uint32Array(values.buffer, values.byteOffset, n);
    for (let i = 0; i < n; i++) {
      const x = bits[i]!;
      dst[i] = (x & 0x7fffffff) > 0x7f800000 ? ((x >>> 16) | 0x40) & 0xffff : ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
    }
  } else {
    for (let i = 0; i < n; i++) dst[i] = f32ToF16(values[i]!);
  }
  return bytes;
}

/**
 * F32 words rounded to bf16's precision (8 significant bits, round to
 * nearest even), kept as F32 words whose low 16 bits are 0. NaN and
 * infinities are kept; a finite value that would round to infinity is
 * truncated instead.
 */
export function roundToBf16(bytes: Uint8Array): Uint8Array {
  const n = bytes.length >> 2;
  const out = new Uint8Array(bytes.length);
  const src = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
  const dst = new DataView(out.buffer);
  for (let i = 0; i < n; i++) {
    const w = src.getUint32(4 * i, true);
    let r = w;
    if ((w & 0x7f800000) !== 0x7f800000) {
      r = ((w + 0x7fff + ((w >>> 16) & 1)) & 0xffff0000) >>> 0;
      if ((r & 0x7f800000) === 0x7f800000) r = (w & 0xffff0000) >>> 0;
    }
    dst.setUint32(4 * i, r, true);
  }
  return out;
}
