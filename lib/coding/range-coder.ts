/**
 * Byte-oriented range coder (LZMA / Subbotin family) with a 31-bit range.
 *
 * ============================== READ ME FIRST ==============================
 *
 * What it does. The encoder keeps an interval [low, low + range) of a number
 * whose base-256 digits are the output bytes. Coding a symbol that owns the
 * slice [cum, cum + freq) of a total T narrows the interval to
 *     low += r * cum;  range = r * freq,   with r = floor(range / T).
 * When range drops below 2^23 the top byte of low can no longer change
 * except by a carry, so it is shifted out ("normalization"; waiting for 2^23
 * rather than LZMA's 2^24 keeps range < 2^31 after the shift by 8).
 *
 * Why 31 (not 32!) bits of range. JS numbers are doubles, but V8 runs int32
 * arithmetic much faster. Keeping range <= 2^31 - 1 and storing low's 32-bit
 * pattern in an int32 makes every hot operation int32 (measured about 2x
 * faster than LZMA's 32-bit range with a 33-bit low in a double). The price:
 * normalizing at 2^23 instead of 2^24 leaves r = range >>> 16 >= 2^7, so the
 * truncation of r can cost up to 2^-7 of an interval per symbol; see "the last
 * symbol owns the remainder" for why that lands on rare symbols only.
 *
 * Encoder state:
 *   low    Invariant: L = low >>> 0 is the interval start within the current
 *          32-bit window below the written bytes, 0 <= L < 2^32; low holds its
 *          bit pattern as an int32 (`| 0`). A carry out of L is added to `out`
 *          at once, so the interval start is always (out[0, pos), L).
 *   range  Invariant: 2^23 <= range <= 2^31 - 1 between calls (a positive int32).
 *          It starts at 2^31 - 1, so the value coded is < 1/2 in units of the
 *          first byte and a carry can never run off the front of the output.
 *   out    Invariant: out[0, pos) are the bytes shifted out, already corrected
 *   pos    for every carry seen so far.
 *
 * Carry handling. low + r * cum can pass 2^32 (r * cum < 2^31, so at most one
 * wrap). We detect the wrap on the int32 patterns with an unsigned compare
 * (xor both sides with the sign bit) and add 1 to the bytes already written,
 * turning trailing 0xFF bytes into 0x00 and incrementing the first non-0xFF
 * one. LZMA needs a cached byte and a pending-0xFF counter because it streams
 * its output; ours is in memory, so it can be fixed in place.
 *
 * Flush (finish). Any value V in [low, low + range) identifies the message,
 * and the decoder reads zeros past the end. So we pick V with as few nonzero
 * leading bytes as possible: low rounded up to a multiple of 2^24 if that
 * stays below low + range (1 byte), else to a multiple of 2^23, which always
 * does since range >= 2^23 (2 bytes); trailing zero bytes are dropped. A
 * stream in which nothing was coded is 0 bytes.
 *
 * The last symbol owns the remainder. r * T can be below range; the slack
 * range - r * T goes to the symbol whose slice ends at T (cum + freq == T)
 * instead of being wasted. Callers put their most probable symbol last, so
 * truncation costs fall on rare symbols, and a symbol with freq == T costs
 * exactly 0 bits. The decoder mirrors this by clamping its target to T - 1.
 *
 * Decoder state:
 *   code     Invariant (valid input): 0 <= code < range; the coded value minus
 *            low, in the same 32-bit window. Masked to 31 bits, so garbage input
 *            stays bounded: it decodes garbage, it never throws or loops.
 *   range    Same invariant as the encoder's and computed identically, from
 *            range alone, so it stays valid whatever the input.
 *   overrun  Bytes "read" past `end` (read as 0). A valid stream needs at most
 *            4: the decoder reads 4 bytes ahead and the flush writes 0-2.
 *
 * Adaptive bits (encodeBit). probs[i] is P(bit = 0) in 12-bit fixed point,
 * initialized to 2048 (1/2). bound = (range >>> 12) * p < 2^31. The update with
 * shift 5 keeps p in [31, 4065], never 0 or 4096, so both halves of the split
 * are non-empty and range never reaches 0.
 * ===========================================================================
 */
import { ExcpError } from '../core/errors.js';

/** 2^23: below this the top byte of low is settled (but for a carry) and is shifted out. */
const TOP = 0x800000;
/** Largest range: 2^31 - 1, the largest positive int32. */
const MAX_RANGE = 0x7fffffff;
/** Sign bit as an int32, for unsigned compares of int32 patterns. */
const SIGN = -0x80000000;
/** Probabilities are 12-bit fixed point. */
export const PROB_BITS = 12;
/** Initial probability of an adaptive bit: exactly 1/2. */
export const PROB_INIT = 1 << (PROB_BITS - 1);
/** Adaptation speed: p moves 1/32 of the way towards each observed bit. */
const MOVE_BITS = 5;

/** Range encoder writing into a growable byte buffer. */
export class RangeEncoder {
  private low = 0;
  private range = MAX_RANGE;
  private out: Uint8Array;
  private pos = 0;
  private coded = false;

  /** @param initialCapacity first size of the output buffer in bytes */
  constructor(initialCapacity = 4096) {
    this.out = new Uint8Array(Math.max(16, initialCapacity));
  }

  /** low += delta (0 <= delta < 2^31), propagating a carry into the written bytes. */
  private add(delta: number): void {
    const before = this.low;
    this.low = (before + delta) | 0;
    if ((this.low ^ SIGN) < (before ^ SIGN)) this.carry();
  }

  private carry(): void {
    let k = this.pos - 1;
    while (k >= 0 && this.out[k] === 0xff) this.out[k--] = 0;
    if (k >= 0) this.out[k]!++;
  }

  /** Shift out settled top bytes until range >= 2^23. */
  private normalize(): void {
    while (this.range < TOP) {
      if (this.pos === this.out.length) this.grow();
      this.out[this.pos++] = this.low >>> 24;
      this.low <<= 8;
      this.range <<= 8;
    }
  }

  private grow(): void {
    const next = new Uint8Array(this.out.length * 2);
    next.set(this.out);
    this.out = next;
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
    this.add(start);
    this.range = cum + freq === 1 << totalBits ? this.range - start : r * freq;
    this.coded = true;
    this.normalize();
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
    this.add(start);
    this.range = cum + freq === total ? this.range - start : r * freq;
    this.coded = true;
    this.normalize();
  }

  /**
   * Static binary split without division: bit 0 owns [0, freq0), bit 1 owns
   * [freq0, 2^totalBits) plus the remainder.
   * @param bit 0 or 1
   * @param freq0 0 .. 2^totalBits - 1 (0: bit 1 is certain and costs nothing)
   * @param totalBits 1..16
   */
  encodeBinary(bit: number, freq0: number, totalBits: number): void {
    this.split(bit, (this.range >>> totalBits) * freq0);
  }

  /**
   * Adaptive binary decision; probs[i] is P(bit = 0) in 12-bit fixed point.
   * @param probs model array (initialize with {@link PROB_INIT})
   * @param i model index
   * @param bit 0 or 1
   */
  encodeBit(probs: Uint16Array, i: number, bit: number): void {
    const p = probs[i]!;
    this.split(bit, (this.range >>> PROB_BITS) * p);
    probs[i] = bit === 0 ? p + (((1 << PROB_BITS) - p) >> MOVE_BITS) : p - (p >> MOVE_BITS);
  }

  /** Bit 0 keeps [0, bound) of the range, bit 1 the rest. */
  private split(bit: number, bound: number): void {
    if (bit === 0) {
      this.range = bound;
    } else {
      this.add(bound);
      this.range -= bound;
    }
    this.coded = true;
    this.normalize();
  }

  /**
   * Equiprobable bits.
   * @param value 0 .. 2^bits - 1
   * @param bits 1..16
   */
  encodeDirect(value: number, bits: number): void {
    this.encode(value, 1, bits);
  }

  /**
   * Bulk {@link encodeBitTree} of the top `bits` bits of each byte: the same
   * arithmetic as {@link encodeBit} with low/range in locals (about 2x faster).
   * The tree of context c uses probs[c * 256 + node], node = 1 .. 2^bits - 1.
   * @param values the bytes; only their top `bits` bits are coded
   * @param probs models, length >= 256 * (number of contexts)
   * @param contexts per-byte context, or null to use `previous byte & prevMask`
   * @param prevMask mask on the previous (whole) byte; 0 gives a single tree
   * @param bits 1..8 (default 8)
   * @param zeroFlag if true, first code "top bits are 0" with model probs[c * 256]
   *   and skip the tree for zeros: same size, far fewer decisions on mostly-zero planes
   */
  encodeByteTrees(values: Uint8Array, probs: Uint16Array, contexts: Uint8Array | null, prevMask: number, bits = 8, zeroFlag = false): void {
    let low = this.low;
    let range = this.range;
    let previous = 0;
    const lowest = 8 - bits;
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!;
      const base = (contexts === null ? previous & prevMask : contexts[i]!) << 8;
      previous = v;
      // Node 0 is free in the tree layout: with zeroFlag it holds P(top bits == 0), one level above the root.
      let node = zeroFlag ? 0 : 1;
      for (let k = zeroFlag ? 8 : 7; k >= lowest; k--) {
        const bit = k === 8 ? (v >>> lowest === 0 ? 0 : 1) : (v >>> k) & 1;
        const p = probs[base + node]!;
        const bound = (range >>> PROB_BITS) * p;
        if (bit === 0) {
          range = bound;
          probs[base + node] = p + (((1 << PROB_BITS) - p) >> MOVE_BITS);
        } else {
          const before = low;
          low = (low + bound) | 0;
          if ((low ^ SIGN) < (before ^ SIGN)) this.carry();
          range -= bound;
          probs[base + node] = p - (p >> MOVE_BITS);
        }
        while (range < TOP) {
          if (this.pos === this.out.length) this.grow();
          this.out[this.pos++] = low >>> 24;
          low <<= 8;
          range <<= 8;
        }
        if (k === 8 && bit === 0) break; // top bits are 0: no tree
        node = k === 8 ? 1 : (node << 1) | bit;
      }
    }
    this.low = low;
    this.range = range;
    if (values.length > 0) this.coded = true;
  }


  /**
   * Flush and return the coded bytes (a view of the internal buffer). The
   * encoder must not be used afterwards.
   * @returns the coded bytes; empty when nothing was coded
   */
  finish(): Uint8Array {
    if (!this.coded) return new Uint8Array(0);
    const low = this.low >>> 0;
    let value = Math.ceil(low / 0x1000000) * 0x1000000; // 1 byte, if it stays inside the interval
    if (value - low >= this.range) value = Math.ceil(low / TOP) * TOP; // 2 bytes; range >= 2^23 makes it fit
    if (value >= 0x100000000) {
      this.carry();
      value -= 0x100000000;
    }
    if (this.pos + 2 > this.out.length) this.grow();
    this.out[this.pos++] = value >>> 24;
    this.out[this.pos++] = (value >>> 16) & 0xff;
    // The decoder reads zeros past the end, so trailing zero bytes of the flush are implied.
    for (let k = 0; k < 2 && this.out[this.pos - 1] === 0; k++) this.pos--;
    return this.out.subarray(0, this.pos);
  }
}

/** Range decoder over a byte range; reads past `end` yield 0 and count as overrun. */
export class RangeDecoder {
  private readonly bytes: Uint8Array;
  private pos: number;
  private readonly end: number;
  private code = 0;
  private range = MAX_RANGE;
  /** Bytes read past `end`; more than 4 means the input was truncated or corrupt. */
  overrun = 0;

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
    for (let k = 0; k < 4; k++) this.code = ((this.code << 8) | this.nextByte()) & MAX_RANGE;
  }

  /** Bytes before `end` not read yet; a fully decoded valid stream leaves 0. */
  get unread(): number {
    return this.end - this.pos;
  }

  private nextByte(): number {
    if (this.pos < this.end) return this.bytes[this.pos++]!;
    this.overrun++;
    return 0;
  }

  private normalize(): void {
    while (this.range < TOP) {
      this.code = ((this.code << 8) | this.nextByte()) & MAX_RANGE;
      this.range <<= 8;
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
    this.code = (this.code - start) & MAX_RANGE;
    this.range = cum + freq === 1 << totalBits ? this.range - start : r * freq;
    this.normalize();
  }

  /** @returns the target in [0, total) for an arbitrary total 1..2^16 */
  decodeTargetTotal(total: number): number {
    const t = Math.floor(this.code / Math.floor(this.range / total));
    return t >= total ? total - 1 : t;
  }

  /** Counterpart of {@link RangeEncoder.encodeTotal}. */
  consumeTotal(cum: number, freq: number, total: number): void {
    const r = Math.floor(this.range / total);
    const start = r * cum;
    this.code = (this.code - start) & MAX_RANGE;
    this.range = cum + freq === total ? this.range - start : r * freq;
    this.normalize();
  }

  /** Counterpart of {@link RangeEncoder.encodeBinary}. @returns the bit */
  decodeBinary(freq0: number, totalBits: number): number {
    return this.split((this.range >>> totalBits) * freq0);
  }

  /** Counterpart of {@link RangeEncoder.encodeBit}. @returns the bit */
  decodeBit(probs: Uint16Array, i: number): number {
    const p = probs[i]!;
    const bit = this.split((this.range >>> PROB_BITS) * p);
    probs[i] = bit === 0 ? p + (((1 << PROB_BITS) - p) >> MOVE_BITS) : p - (p >> MOVE_BITS);
    return bit;
  }

  /** @returns 0 if code is in [0, bound), else 1; the range shrinks to that part. */
  private split(bound: number): number {
    let bit = 0;
    if (this.code < bound) {
      this.range = bound;
    } else {
      this.code -= bound;
      this.range -= bound;
      bit = 1;
    }
    this.normalize();
    return bit;
  }

  /** Counterpart of {@link RangeEncoder.encodeDirect}. @returns the value */
  decodeDirect(bits: number): number {
    const value = this.decodeTarget(bits);
    this.consume(value, 1, bits);
    return value;
  }

  /**
   * Counterpart of {@link RangeEncoder.encodeByteTrees}.
   * @param out destination; on entry its bits below the top `bits` hold the
   *   uncoded low bits (or 0); the decoded top bits are ORed in
   */
  decodeByteTrees(out: Uint8Array, probs: Uint16Array, contexts: Uint8Array | null, prevMask: number, bits = 8, zeroFlag = false): void {
    const bytes = this.bytes;
    const end = this.end;
    let pos = this.pos;
    let code = this.code;
    let range = this.range;
    let previous = 0;
    const top = 1 << bits;
    const lowest = 8 - bits;
    for (let i = 0; i < out.length; i++) {
      const base = (contexts === null ? previous & prevMask : contexts[i]!) << 8;
      let node = zeroFlag ? 0 : 1;
      while (node < top) {
        const p = probs[base + node]!;
        const bound = (range >>> PROB_BITS) * p;
        let bit = 0;
        if (code < bound) {
          range = bound;
          probs[base + node] = p + (((1 << PROB_BITS) - p) >> MOVE_BITS);
        } else {
          code -= bound;
          range -= bound;
          probs[base + node] = p - (p >> MOVE_BITS);
          bit = 1;
        }
        while (range < TOP) {
          let byte = 0;
          if (pos < end) byte = bytes[pos++]!;
          else this.overrun++;
          code = ((code << 8) | byte) & MAX_RANGE;
          range <<= 8;
        }
        node = node === 0 ? (bit === 0 ? top : 1) : (node << 1) | bit; // node 0: the zero flag
      }
      previous = (((node - top) << lowest) | out[i]!) & 0xff;
      out[i] = previous;
    }
    this.pos = pos;
    this.code = code;
    this.range = range;
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
