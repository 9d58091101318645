/**
 * Reusable working arrays, one set per thread (each module holds its own
 * Scratch). A chunk's float copies and gathers are megabytes; allocating
 * them per chunk left V8 with tens of MB of dead ArrayBuffers per worker
 * before it collected them, so the codec keeps one buffer per slot and
 * grows it when a larger chunk comes.
 */
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
}
