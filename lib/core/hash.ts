/**
 * Fingerprints: a fast, streaming, non-cryptographic 64-bit hash.
 *
 * Why not CRC32: fingerprints identify a base checkpoint among many similar
 * ones (consecutive steps of one run), so 32 bits is too few; and they cover
 * gigabytes of tensor bytes, so the hash must run at memory speed. The core
 * is xxHash32's round (4 lanes of `acc = rotl(acc + w * P2, 13) * P1` over
 * 16-byte stripes); the 128-bit lane state is folded into two independent
 * 32-bit finals. It detects accidental differences; it is not a defence
 * against an adversary (the container's CRCs and this hash both are not).
 */

const P1 = 0x9e3779b1;
const P2 = 0x85ebca77;
const P3 = 0xc2b2ae3d;
const P4 = 0x27d4eb2f;
const P5 = 0x165667b1;

function rotl(x: number, r: number): number {
  return (x << r) | (x >>> (32 - r));
}

function avalanche(h: number): number {
  h ^= h >>> 15;
  h = Math.imul(h, P2);
  h ^= h >>> 13;
  h = Math.imul(h, P3);
  h ^= h >>> 16;
  return h >>> 0;
}

/** Streaming hasher: `update` any number of times, then `digest`. */
export class Hasher {
  private v1: number;
  private v2: number;
  private v3: number;
  private v4: number;
  /** Invariant: 0 <= pendingLength < 16; bytes not yet folded into the lanes. */
  private readonly pending = new Uint8Array(16);
  private pendingLength = 0;
  /** Total bytes seen (a double: exact up to 2^53). */
  private total = 0;

  constructor(seed = 0) {
    this.v1 = (seed + P1 + P2) | 0;
    this.v2 = (seed + P2) | 0;
    this.v3 = seed | 0;
    this.v4 = (seed - P1) | 0;
  }

  /**
   * Fold bytes into the state.
   * @param bytes any length
   * @returns this, for chaining
   */
  update(bytes: Uint8Array): this {
    this.total += bytes.length;
    let offset = 0;
    if (this.pendingLength > 0) {
      const take = Math.min(16 - this.pendingLength, bytes.length);
      this.pending.set(bytes.subarray(0, take), this.pendingLength);
      this.pendingLength += take;
      offset = take;
      if (this.pendingLength < 16) return this;
      this.stripes(new Int32Array(this.pending.buffer, 0, 4), 0, 4);
      this.pendingLength = 0;
    }
    const whole = (bytes.length - offset) & ~15;
    if (whole > 0) {
      const start = bytes.byteOffset + offset;
      const words = start % 4 === 0
        ? new Int32Array(bytes.buffer, start, whole / 4)
        : new Int32Array(new Uint8Array(bytes.subarray(offset, offset + whole)).buffer);
      this.stripes(words, 0, whole / 4);
      offset += whole;
    }
    if (offset < bytes.length) {
      this.pending.set(bytes.subarray(offset), 0);
      this.pendingLength = bytes.length - offset;
    }
    return this;
  }

  private stripes(words: Int32Array, from: number, to: number): void {
    let v1 = this.v1, v2 = this.v2, v3 = this.v3, v4 = this.v4;
    for (let i = from; i < to; i += 4) {
      v1 = Math.imul(rotl((v1 + Math.imul(words[i]!, P2)) | 0, 13), P1);
      v2 = Math.imul(rotl((v2 + Math.imul(words[i + 1]!, P2)) | 0, 13), P1);
      v3 = Math.imul(rotl((v3 + Math.imul(words[i + 2]!, P2)) | 0, 13), P1);
      v4 = Math.imul(rotl((v4 + Math.imul(words[i + 3]!, P2)) | 0, 13), P1);
    }
    this.v1 = v1; this.v2 = v2; this.v3 = v3; this.v4 = v4;
  }

  /** @returns the 64-bit digest as 16 lowercase hex digits (the state is not changed). */
  digest(): string {
    let a = (rotl(this.v1, 1) + rotl(this.v2, 7) + rotl(this.v3, 12) + rotl(this.v4, 18)) | 0;
    let b = (rotl(this.v1, 18) ^ rotl(this.v2, 12) ^ rotl(this.v3, 7) ^ rotl(this.v4, 1) ^ P5) | 0;
    const lengthLow = this.total % 0x100000000;
    const lengthHigh = Math.floor(this.total / 0x100000000);
    a = (a + lengthLow) | 0;
    b = (b + lengthHigh + P4) | 0;
    for (let i = 0; i < this.pendingLength; i++) {
      const byte = this.pending[i]!;
      a = Math.imul(rotl((a + Math.imul(byte, P5)) | 0, 11), P1);
      b = Math.imul(rotl((b ^ Math.imul(byte, P3)) | 0, 17), P4);
    }
    a = avalanche(a ^ Math.imul(b, P3));
    b = avalanche(b ^ a);
    return a.toString(16).padStart(8, '0') + b.toString(16).padStart(8, '0');
  }
}

/**
 * Hash of one buffer.
 * @param bytes the data
 * @param seed optional seed
 * @returns 16 hex digits
 */
export function hashBytes(bytes: Uint8Array, seed = 0): string {
  return new Hasher(seed).update(bytes).digest();
}

/**
 * Fingerprint of a list of tensors: hashes each tensor's name, dtype, shape
 * and data digest, in order. Used for a base checkpoint and for the
 * checkpoint a container restores to.
 * @param tensors tensor descriptions with their data digest
 * @returns 16 hex digits
 */
export function fingerprintTensors(tensors: ReadonlyArray<{ name: string; dtype: string; shape: readonly number[]; hash: string }>): string {
  const h = new Hasher(0x45584350);
  const enc = new TextEncoder();
  for (const t of tensors) h.update(enc.encode(`${t.name}\u0000${t.dtype}\u0000${t.shape.join(',')}\u0000${t.hash}\u0000`));
  return h.digest();
}

/**
 * One hasher per tensor, made when its first bytes come: a tensor that gets
 * none (an empty tensor) costs a slot, not a Hasher, and digests as an empty
 * Hasher does. Keeps a header of many empty tensors small in memory.
 */
export class HasherList {
  private readonly hashers: (Hasher | undefined)[];
  private static empty: string | null = null;

  /** @param length the number of tensors */
  constructor(length: number) {
    this.hashers = new Array<Hasher | undefined>(length);
  }

  get length(): number {
    return this.hashers.length;
  }

  /** Fold bytes into hasher i. */
  update(i: number, bytes: Uint8Array): void {
    let h = this.hashers[i];
    if (!h) this.hashers[i] = h = new Hasher();
    h.update(bytes);
  }

  /** Take hasher i of another list (its state, not a copy). */
  adopt(from: HasherList, i: number): void {
    this.hashers[i] = from.hashers[i];
  }

  /** Every digest, in order. */
  digests(): string[] {
    HasherList.empty ??= new Hasher().digest();
    const out = new Array<string>(this.hashers.length);
    for (let i = 0; i < out.length; i++) out[i] = this.hashers[i]?.digest() ?? HasherList.empty;
    return out;
  }
}
