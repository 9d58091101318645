/**
 * Reusable working arrays, one set per thread (each module holds its own
 * Scratch). A chunk's float copies and gathers are megabytes; allocating
 * them per chunk left V8 with tens of MB of dead ArrayBuffers per worker
 * before it collected them, so the codec keeps one buffer per slot and
 * grows it when a larger chunk comes.
 */
import { type DType, toFloat32 } from './dtype.js';

export class Scratch {
  private readonly buffers: ArrayBuffer[] = [];

  /** A buffer of at least `bytes` for `slot` (its previous contents are garbage). */
  buffer(slot: number, bytes: number): ArrayBuffer {
    let b = this.buffers[slot];
    if (!b || b.byteLength < bytes) {
      b = new ArrayBuffer(Math.max(bytes, 64));
      this.buffers[slot] = b;
    }
    return b;
  }

  f32(slot: number, n: number): Float32Array {
    return new Float32Array(this.buffer(slot, 4 * n), 0, n);
  }

  i32(slot: number, n: number): Int32Array {
    return new Int32Array(this.buffer(slot, 4 * n), 0, n);
  }

  u8(slot: number, n: number): Uint8Array {
    return new Uint8Array(this.buffer(slot, n), 0, n);
  }

  /**
   * Element bytes as float32, for reading only: for F32 a view when aligned,
   * else a bit-exact copy into `slot`; other dtypes converted into `slot`.
   * @param bytes little-endian element bytes (at least n elements)
   * @param dtype F32, F16 or BF16
   * @param slot scratch slot used when a copy is needed
   * @param n element count
   * @returns n float32 values
   */
  readFloat32(bytes: Uint8Array, dtype: DType, slot: number, n: number): Float32Array {
    if (dtype !== 'F32') return toFloat32(bytes, dtype, this.f32(slot, n));
    if (bytes.byteOffset % 4 === 0) return new Float32Array(bytes.buffer, bytes.byteOffset, n);
    const out = this.f32(slot, n);
    new Uint8Array(out.buffer, 0, 4 * n).set(bytes.subarray(0, 4 * n));
    return out;
  }
}
