/**
 * Byte-oriented range coder with a 32-bit range (LZMA / Subbotin family).
 *
 * ============================== READ ME FIRST ==============================
 *
 * What it does. The encoder keeps an interval [low, low + range) of a number
 * whose base-256 digits are the output bytes. Coding a symbol that owns the
 * slice [cum, cum + freq) of a total T narrows the interval to
 *     low += r * cum;  range = r * freq,   with r = floor(range / T).
 * Whenever range drops below 2^24 the top byte of low can no longer change
 * except by a carry, so it is shifted out ("normalization").
 *
 * Encoder state (all JS numbers; doubles are exact integers below 2^53):
 *   low       Invariant: 0 <= low < 2^33 and low + range <= 2^33. Bits 32 and
 *             up are a pending carry into the bytes already emitted.
 *             Why 2^33 is enough: right after a shift low < 2^32 and
 *             range < 2^32; coding only shrinks the interval.
 *   range     Invariant: 2^24 <= range <= 2^32 - 1 between calls (uint32).
 *             It starts at 2^32 - 1, not 2^32, because `range >>> bits`
 *             would wrap 2^32 to 0.
 *   cache     Invariant: 0 <= cache <= 255: the last byte that is final except
 *             for a possible carry (+1).
 *   pending   Invariant: pending >= 1 counts the byte `cache` plus the 0xFF
 *             bytes after it that a carry would turn into 0x00.
 *             LZMA calls this cacheSize.
 *   out/pos   Invariant: out[0, pos) holds the bytes that are final.
 *
 * Carry handling (shiftLow). When the top byte of low is 0xFF and there is
 * no carry yet, we cannot know whether a later carry will ripple through it,
 * so it is only counted (pending++). As soon as the byte is < 0xFF or a
 * carry has happened (low >= 2^32), `cache + carry` and `pending - 1` bytes
 * of `0xFF + carry` are written. Products r * cum are < 2^32, so low never
 * exceeds 2^33 and doubles stay exact.
 *
 * The first byte. Like LZMA the encoder starts with cache = 0, pending = 1,
 * so its first output byte is always 0 (the interval starts inside [0, 1) in
 * units of the first byte). We drop that byte in finish(); the decoder simply
 * starts one byte later.
 *
 * Flush (finish). Any value in [low, low + range) identifies the message.
 * Because range >= 2^24, the value V = low rounded up to a multiple of 2^24
 * is inside the interval, and its bytes below the top one are zero. The
 * decoder pads reads past the end with zero bytes, so one shiftLow to settle
 * carries plus one to emit V's top byte is enough: 1 byte of flush instead of
 * LZMA's 4-5. A stream in which nothing was coded flushes to 0 bytes.
 *
 * The last symbol owns the remainder. r * T can be below range; the slack
 * range - r * T is given to the symbol whose slice ends at T (cum + freq == T)
 * instead of being wasted. Callers put their most probable symbol last, so
 * truncation costs (up to 2^-8 of an interval per symbol with T = 2^16) fall
 * on rare symbols only, and a symbol with freq == T costs exactly 0 bits.
 * The decoder mirrors this by clamping its target to T - 1.
 *
 * Decoder state:
 *   code      Invariant (valid input): 0 <= code < range; it is the offset
 *             of the encoded value from low. Kept uint32 with `>>> 0`, so
 *             garbage input stays bounded (it then decodes garbage, never
 *             throws a non-ExcpError, never loops).
 *   range     Same invariant as the encoder's and computed identically, from
 *             range alone, so it stays valid whatever the input.
 *   overrun   Bytes "read" past `end` (they read as 0). A valid stream needs at
 *             most 4 (the flush is 1 byte and the decoder reads 4 ahead).
 *
 * Adaptive bits (encodeBit). probs[i] is P(bit = 0) in 12-bit fixed point,
 * initialized to 2048 (1/2). bound = (range >>> 12) * p < 2^32. The update
 * with shift 5 keeps p in [31, 4065], never 0 or 4096, so both halves of the
 * split are non-empty and range never becomes 0.
 * ===========================================================================
 */
import { ExcpError } from './errors.js';

/** 2^24: below this the top byte of the interval is settled and is shifted out. */
const TOP = 0x1000000;
/** 2^32, for carry detection on low. */
const TWO32 = 4294967296;
/** Probabilities are 12-bit fixed point. */
export const PROB_BITS = 12;
/** Initial probability of an adaptive bit: exactly 1/2. */
export const PROB_INIT = 1 << (PROB_BITS - 1);
/** Adaptation speed: p moves 1/32 of the way to the observed bit. */
const MOVE_BITS = 5;

/** Range encoder writing into a growable byte buffer. */
export class RangeEncoder {
  private low = 0;
  private range = 0xffffffff;
  private cache = 0;
  private pending = 1;
  private out: Uint8Array;
  private pos = 0;
  private coded = false;

  /** @param initialCapacity first size of the output buffer in bytes */
  constructor(initialCapacity = 4096) {
    this.out = new Uint8Array(Math.max(16, initialCapacity));
  }

  /**
   * Code a symbol occupying [cum, cum + freq) out of 2^totalBits.
   * @param cum cumulative frequency before the symbol
   * @param freq the symbol's frequency, >= 1
   * @param totalBits log2 of the total, 0..16
   * @throws ExcpError ERR_IMPOSSIBLE_SYMBOL when freq is 0
   */
  encode(cum: number, freq: number, totalBits: number): void {
    if (freq <= 0) throw new ExcpError('ERR_IMPOSSIBLE_SYMBOL', `range-coder: symbol at cum ${cum} has frequency ${freq}`);
    const r = this.range >>> totalBits;
    const start = r * cum;
    this.low += start;
    this.range = cum + freq === 1 << totalBits ? this.range - start : r * freq;
    this.coded = true;
    while (this.range < TOP) this.shift();
  }

  /**
   * Like {@link encode} with an arbitrary total (needs a division).
   * @param total 1..2^16
   * @throws ExcpError ERR_IMPOSSIBLE_SYMBOL when freq is 0
   */
  encodeTotal(cum: number, freq: number, total: number): void {
    if (freq <= 0) throw new ExcpError('ERR_IMPOSSIBLE_SYMBOL', `range-coder: symbol at cum ${cum} has frequency ${freq}`);
    const r = Math.floor(this.range / total);
    const start = r * cum;
    this.low += start;
    this.range = cum + freq === total ? this.range - start : r * freq;
    this.coded = true;
    while (this.range < TOP) this.shift();
  }

  /**
   * Static binary split without division: bit 0 owns [0, freq0), bit 1 owns
   * [freq0, 2^totalBits) plus the remainder.
   * @param bit 0 or 1
   * @param freq0 1 .. 2^totalBits - 1
   */
  encodeBinary(bit: number, freq0: number, totalBits: number): void {
    const bound = (this.range >>> totalBits) * freq0;
    if (bit === 0) {
      this.range = bound;
    } else {
      this.low += bound;
      this.range -= bound;
    }
    this.coded = true;
    while (this.range < TOP) this.shift();
  }

  /**
   * Adaptive binary decision; probs[i] is P(bit = 0) in 12-bit fixed point.
   * @param probs model array (initialize with {@link PROB_INIT})
   * @param i model index
   * @param bit 0 or 1
   */
  encodeBit(probs: Uint16Array, i: number, bit: number): void {
    const p = probs[i]!;
    const bound = (this.range >>> PROB_BITS) * p;
    if (bit === 0) {
      this.range = bound;
      probs[i] = p + (((1 << PROB_BITS) - p) >>> MOVE_BITS);
    } else {
      this.low += bound;
      this.range -= bound;
      probs[i] = p - (p >>> MOVE_BITS);
    }
    this.coded = true;
    while (this.range < TOP) this.shift();
  }

  /**
   * Equiprobable bits.
   * @param value 0 .. 2^bits - 1
   * @param bits 1..16
   */
  encodeDirect(value: number, bits: number): void {
    const r = this.range >>> bits;
    this.low += r * value;
    this.range = value === (1 << bits) - 1 ? this.range - r * value : r;
    this.coded = true;
    while (this.range < TOP) this.shift();
  }

  /** Emit the settled top byte of low and scale the interval by 256. */
  private shift(): void {
    this.emitTopByte(this.low);
    this.low = (this.low & 0xffffff) * 256;
    this.range = (this.range << 8) >>> 0;
  }

  /**
   * The carry logic of READ ME FIRST: settle the top byte of `low` (bits
   * 24..31, bit 32 is a carry). The caller then scales low and range by 256.
   */
  private emitTopByte(low: number): void {
    if (low < 0xff000000 || low >= TWO32) {
      const carry = low >= TWO32 ? 1 : 0;
      if (this.pos + this.pending > this.out.length) this.grow(this.pending);
      const out = this.out;
      let pos = this.pos;
      out[pos++] = (this.cache + carry) & 0xff;
      for (let k = this.pending - 1; k > 0; k--) out[pos++] = (0xff + carry) & 0xff;
      this.pos = pos;
      this.pending = 0;
      this.cache = (low >>> 24) & 0xff; // >>> takes low mod 2^32: drops the carry bit
    }
    this.pending++;
  }

  /**
   * Bulk {@link encodeBitTree} over bytes, 8 bits each, same arithmetic as
   * {@link encodeBit} but with low/range in locals (about 2x faster).
   * Tree of context c uses probs[c * 256 + node], node = 1..255.
   * @param values the bytes to code
   * @param probs models, length >= 256 * (number of contexts)
   * @param contexts per-byte context, or null to use `previous value & prevMask`
   * @param prevMask mask on the previous byte (0: a single tree; starts from previous = 0)
   */
  encodeByteTrees(values: Uint8Array, probs: Uint16Array, contexts: Uint8Array | null, prevMask: number): void {
    let low = this.low;
    let range = this.range;
    let previous = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!;
      const base = (contexts === null ? previous & prevMask : contexts[i]!) << 8;
      let node = 1;
      for (let k = 7; k >= 0; k--) {
        const bit = (v >>> k) & 1;
        const p = probs[base + node]!;
        const bound = (range >>> PROB_BITS) * p;
        if (bit === 0) {
          range = bound;
          probs[base + node] = p + (((1 << PROB_BITS) - p) >>> MOVE_BITS);
        } else {
          low += bound;
          range -= bound;
          probs[base + node] = p - (p >>> MOVE_BITS);
        }
        node = (node << 1) | bit;
        while (range < TOP) {
          this.emitTopByte(low);
          low = (low & 0xffffff) * 256;
          range = (range << 8) >>> 0;
        }
      }
      previous = v;
    }
    this.low = low;
    this.range = range;
    if (values.length > 0) this.coded = true;
  }

  private grow(extra: number): void {
    let size = this.out.length * 2;
    while (size < this.pos + extra) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.out.subarray(0, this.pos));
    this.out = next;
  }

  /**
   * Flush and return the coded bytes (a view of the internal buffer). The
   * encoder must not be used afterwards.
   * @returns the coded bytes; empty when nothing was coded
   */
  finish(): Uint8Array {
    if (!this.coded) return new Uint8Array(0);
    // Round low up to a multiple of 2^24: still inside [low, low + range) as range >= 2^24.
    this.low = Math.ceil(this.low / TOP) * TOP;
    const saved = this.range;
    this.range = 0; // shift() also scales range; its value no longer matters
    this.shift(); // settles carries, cache := top byte of the rounded low
    this.shift(); // writes that byte (low is now 0, so no 0xFF ambiguity)
    this.range = saved;
    return this.out.subarray(1, this.pos); // drop LZMA's always-zero first byte
  }
}

/** Range decoder over a byte range; reads past `end` yield 0 and count as overrun. */
export class RangeDecoder {
  private readonly bytes: Uint8Array;
  private pos: number;
  private readonly end: number;
  private code = 0;
  private range = 0xffffffff;
  /** Bytes read past `end`; more than 4 means the input was truncated or corrupt. */
  overrun = 0;

  /** Bytes before `end` not read yet; a fully decoded valid stream leaves 0. */
  get unread(): number {
    return this.end - this.pos;
  }

  /**
   * @param bytes the buffer
   * @param offset first coded byte
   * @param end one past the last coded byte
   * @throws ExcpError ERR_OUT_OF_RANGE when offset/end are outside the buffer
   */
  constructor(bytes: Uint8Array, offset = 0, end = bytes.length) {
    if (!(Number.isInteger(offset) && Number.isInteger(end) && offset >= 0 && offset <= end && end <= bytes.length)) {
      throw new ExcpError('ERR_OUT_OF_RANGE', `range-coder: window [${offset}, ${end}) is outside a buffer of ${bytes.length} bytes`);
    }
    this.bytes = bytes;
    this.pos = offset;
    this.end = end;
    for (let k = 0; k < 4; k++) this.code = ((this.code << 8) | this.nextByte()) >>> 0;
  }

  private nextByte(): number {
    if (this.pos < this.end) return this.bytes[this.pos++]!;
    this.overrun++;
    return 0;
  }

  private normalize(): void {
    while (this.range < TOP) {
      this.code = ((this.code << 8) | this.nextByte()) >>> 0;
      this.range = (this.range << 8) >>> 0;
    }
  }

  /**
   * @param totalBits log2 of the total, 0..16
   * @returns the target in [0, 2^totalBits); find the symbol whose slice holds it, then call {@link consume}
   */
  decodeTarget(totalBits: number): number {
    const t = Math.floor(this.code / (this.range >>> totalBits));
    const max = (1 << totalBits) - 1;
    return t > max ? max : t; // slack above r * T belongs to the last symbol
  }

  /** Remove the symbol [cum, cum + freq) of 2^totalBits found via {@link decodeTarget}. */
  consume(cum: number, freq: number, totalBits: number): void {
    const r = this.range >>> totalBits;
    const start = r * cum;
    this.code = (this.code - start) >>> 0;
    this.range = cum + freq === 1 << totalBits ? this.range - start : r * freq;
    this.normalize();
  }

  /** @returns the target in [0, total) for an arbitrary total 1..2^16 */
  decodeTargetTotal(total: number): number {
    const t = Math.floor(this.code / Math.floor(this.range / total));
    return t >= total ? total - 1 : t;
  }

  /** Counterpart of {@link decodeTargetTotal}. */
  consumeTotal(cum: number, freq: number, total: number): void {
    const r = Math.floor(this.range / total);
    const start = r * cum;
    this.code = (this.code - start) >>> 0;
    this.range = cum + freq === total ? this.range - start : r * freq;
    this.normalize();
  }

  /** Counterpart of {@link RangeEncoder.encodeBinary}. @returns the bit */
  decodeBinary(freq0: number, totalBits: number): number {
    const bound = (this.range >>> totalBits) * freq0;
    let bit: number;
    if (this.code < bound) {
      this.range = bound;
      bit = 0;
    } else {
      this.code = (this.code - bound) >>> 0;
      this.range -= bound;
      bit = 1;
    }
    this.normalize();
    return bit;
  }

  /** Counterpart of {@link RangeEncoder.encodeBit}. @returns the bit */
  decodeBit(probs: Uint16Array, i: number): number {
    const p = probs[i]!;
    const bound = (this.range >>> PROB_BITS) * p;
    let bit: number;
    if (this.code < bound) {
      this.range = bound;
      probs[i] = p + (((1 << PROB_BITS) - p) >>> MOVE_BITS);
      bit = 0;
    } else {
      this.code = (this.code - bound) >>> 0;
      this.range -= bound;
      probs[i] = p - (p >>> MOVE_BITS);
      bit = 1;
    }
    while (this.range < TOP) {
      this.code = ((this.code << 8) | this.nextByte()) >>> 0;
      this.range = (this.range << 8) >>> 0;
    }
    return bit;
  }

  /**
   * Counterpart of {@link RangeEncoder.encodeByteTrees}.
   * @param out destination; out.length bytes are decoded
   */
  decodeByteTrees(out: Uint8Array, probs: Uint16Array, contexts: Uint8Array | null, prevMask: number): void {
    const bytes = this.bytes;
    const end = this.end;
    let pos = this.pos;
    let code = this.code;
    let range = this.range;
    let previous = 0;
    for (let i = 0; i < out.length; i++) {
      const base = (contexts === null ? previous & prevMask : contexts[i]!) << 8;
      let node = 1;
      while (node < 256) {
        const p = probs[base + node]!;
        const bound = (range >>> PROB_BITS) * p;
        if (code < bound) {
          range = bound;
          probs[base + node] = p + (((1 << PROB_BITS) - p) >>> MOVE_BITS);
          node <<= 1;
        } else {
          code = (code - bound) >>> 0;
          range -= bound;
          probs[base + node] = p - (p >>> MOVE_BITS);
          node = (node << 1) | 1;
        }
        while (range < TOP) {
          let byte = 0;
          if (pos < end) byte = bytes[pos++]!;
          else this.overrun++;
          code = ((code << 8) | byte) >>> 0;
          range = (range << 8) >>> 0;
        }
      }
      previous = node & 0xff;
      out[i] = previous;
    }
    this.pos = pos;
    this.code = code;
    this.range = range;
  }

  /** Counterpart of {@link RangeEncoder.encodeDirect}. @returns the value */
  decodeDirect(bits: number): number {
    const value = this.decodeTarget(bits);
    this.consume(value, 1, bits);
    return value;
  }
}

/**
 * Code `value` MSB first through a bit-tree of 2^bits - 1 adaptive models at
 * probs[base .. base + 2^bits - 2]; each node's context is the bits above it.
 * @param bits 1..16
 */
export function encodeBitTree(enc: RangeEncoder, probs: Uint16Array, base: number, bits: number, value: number): void {
  let node = 1;
  for (let k = bits - 1; k >= 0; k--) {
    const bit = (value >>> k) & 1;
    enc.encodeBit(probs, base + node - 1, bit);
    node = (node << 1) | bit;
  }
}

/**
 * Counterpart of {@link encodeBitTree}.
 * @returns the value in [0, 2^bits)
 */
export function decodeBitTree(dec: RangeDecoder, probs: Uint16Array, base: number, bits: number): number {
  let node = 1;
  for (let k = 0; k < bits; k++) node = (node << 1) | dec.decodeBit(probs, base + node - 1);
  return node - (1 << bits);
}

/**
 * A fresh array of adaptive bit models, all at probability 1/2.
 * @param count number of models
 */
export function createBitModels(count: number): Uint16Array {
  return new Uint16Array(count).fill(PROB_INIT);
}
