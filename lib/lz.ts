/**
 * A small general-purpose byte compressor for the container's header and
 * footer (format version 2): LZ77 with a hash-chain match finder, coded by
 * the adaptive binary range coder of range-coder.ts in the style of LZMA.
 *
 * ============================== READ ME FIRST ==============================
 *
 * Stream. The output is one range-coder stream; the number of bytes it
 * decodes to is NOT in it (the container stores it, so the reader can check
 * it against its limit before allocating). Per step, with `state` = the kinds
 * of the last two steps (bit 0: last was a match, bit 1: the one before):
 *   isMatch[state]            0: a literal, 1: a match
 *   literal                   8-bit bit tree, context = previous byte >> 5
 *                             (LZMA's lc = 3; 0 at the start)
 *   isRep[state]              1: the match reuses the last distance ("rep0")
 *   length (rep or normal)    choice bit: 0 -> 3-bit tree, length 2..9;
 *                             else choice2: 0 -> 3-bit tree, 10..17;
 *                             else 8-bit tree, 18..273
 *   distance (normal only)    d = distance - 1; slot = d for d < 4, else
 *                             2 * floor(log2 d) + (second highest bit of d),
 *                             a 6-bit tree with context min(length - 2, 3);
 *                             then e = slot / 2 - 1 extra bits below the top
 *                             two: for e <= 5 a bit tree per slot, else the
 *                             high e - 4 bits equiprobable and the low 4 bits
 *                             through one shared 4-bit "align" tree.
 * The first distance before any match is 1 (so a rep at byte 0 is corrupt).
 *
 * Encoder. Hash of 3 bytes -> most recent position (head), previous position
 * with the same hash (prev, a ring of WINDOW entries, so memory is bounded
 * whatever the input size). Up to MAX_CHAIN candidates are tried; the parse
 * is greedy with one step of lazy evaluation, and prefers rep0 when it is
 * nearly as long (it costs no distance). Matches reach back at most WINDOW.
 *
 * Decoder on hostile input. The output length is given and allocated by the
 * caller's limit; every step writes at least one byte, so the loop ends after
 * at most `length` steps. A distance reaching before the start or a length
 * running past the end is ERR_CORRUPT; reading more than 4 bytes past the end
 * of the stream (the range decoder reads zeros there) is ERR_TRUNCATED. A
 * valid stream is read to its last byte (the decoder reads 4 bytes ahead, the
 * flush writes at most 2 and drops trailing zeros), so bytes left unread are
 * ERR_CORRUPT (zeros the decoder reads ahead into cannot be told from the
 * dropped ones, and are accepted).
 * ===========================================================================
 */
import { ExcpError } from './errors.js';
import { RangeDecoder, RangeEncoder, createBitModels, decodeBitTree, encodeBitTree } from './range-coder.js';

/** Shortest coded match. */
const MIN_MATCH = 2;
/** Longest coded match: 2 + 8 + 8 + 256 - 1. */
const MAX_MATCH = 273;
/** Farthest a match reaches back (and the size of the hash-chain ring). */
const WINDOW = 1 << 20;
/** Candidates tried per position. */
const MAX_CHAIN = 48;
const HASH_BITS = 16;
/** Literal contexts: previous byte >> LIT_SHIFT. */
const LIT_SHIFT = 5;
/** Distance slots with a per-slot bit tree for their extra bits. */
const TREE_SLOTS = 14;
const ALIGN_BITS = 4;

/** Every adaptive model of one stream, fresh for each call. */
class Models {
  readonly isMatch = createBitModels(4);
  readonly isRep = createBitModels(4);
  readonly literal = createBitModels(256 << (8 - LIT_SHIFT));
  readonly lengths = [new LengthModels(), new LengthModels()] as const;
  readonly slot = createBitModels(4 * 63);
  /** Per slot 4..13: 2^e - 1 models at slotExtraBase[slot]. */
  readonly extra = createBitModels(1024);
  readonly align = createBitModels((1 << ALIGN_BITS) - 1);
}

class LengthModels {
  readonly choice = createBitModels(2);
  readonly low = createBitModels(7);
  readonly mid = createBitModels(7);
  readonly high = createBitModels(255);
}

/** Base index into Models.extra of each tree-coded slot's extra-bit tree. */
const EXTRA_BASE: number[] = [];
{
  let at = 0;
  for (let slot = 0; slot < TREE_SLOTS; slot++) {
    EXTRA_BASE.push(at);
    if (slot >= 4) at += (1 << ((slot >> 1) - 1)) - 1;
  }
}

function slotOf(d: number): number {
  if (d < 4) return d;
  const n = 31 - Math.clz32(d);
  return 2 * n + ((d >>> (n - 1)) & 1);
}

function encodeLength(enc: RangeEncoder, m: LengthModels, length: number): void {
  const l = length - MIN_MATCH;
  if (l < 8) {
    enc.encodeBit(m.choice, 0, 0);
    encodeBitTree(enc, m.low, 0, 3, l);
  } else if (l < 16) {
    enc.encodeBit(m.choice, 0, 1);
    enc.encodeBit(m.choice, 1, 0);
    encodeBitTree(enc, m.mid, 0, 3, l - 8);
  } else {
    enc.encodeBit(m.choice, 0, 1);
    enc.encodeBit(m.choice, 1, 1);
    encodeBitTree(enc, m.high, 0, 8, l - 16);
  }
}

function decodeLength(dec: RangeDecoder, m: LengthModels): number {
  if (dec.decodeBit(m.choice, 0) === 0) return MIN_MATCH + decodeBitTree(dec, m.low, 0, 3);
  if (dec.decodeBit(m.choice, 1) === 0) return MIN_MATCH + 8 + decodeBitTree(dec, m.mid, 0, 3);
  return MIN_MATCH + 16 + decodeBitTree(dec, m.high, 0, 8);
}

function encodeDistance(enc: RangeEncoder, m: Models, distance: number, length: number): void {
  const d = distance - 1;
  const slot = slotOf(d);
  encodeBitTree(enc, m.slot, Math.min(length - MIN_MATCH, 3) * 63, 6, slot);
  if (slot < 4) return;
  const e = (slot >> 1) - 1;
  const rest = d - ((2 | (slot & 1)) << e);
  if (slot < TREE_SLOTS) {
    encodeBitTree(enc, m.extra, EXTRA_BASE[slot]!, e, rest);
    return;
  }
  let high = Math.floor(rest / (1 << ALIGN_BITS));
  let bits = e - ALIGN_BITS;
  if (bits > 16) {
    enc.encodeDirect(Math.floor(high / 65536), bits - 16);
    high %= 65536;
    bits = 16;
  }
  enc.encodeDirect(high, bits);
  encodeBitTree(enc, m.align, 0, ALIGN_BITS, rest & ((1 << ALIGN_BITS) - 1));
}

function decodeDistance(dec: RangeDecoder, m: Models, length: number): number {
  const slot = decodeBitTree(dec, m.slot, Math.min(length - MIN_MATCH, 3) * 63, 6);
  if (slot < 4) return slot + 1;
  const e = (slot >> 1) - 1;
  const base = (2 | (slot & 1)) * 2 ** e;
  if (slot < TREE_SLOTS) return base + decodeBitTree(dec, m.extra, EXTRA_BASE[slot]!, e) + 1;
  let bits = e - ALIGN_BITS;
  let high = 0;
  if (bits > 16) {
    high = dec.decodeDirect(bits - 16) * 65536;
    bits = 16;
  }
  high += dec.decodeDirect(bits);
  return base + high * (1 << ALIGN_BITS) + decodeBitTree(dec, m.align, 0, ALIGN_BITS) + 1;
}

function hash3(input: Uint8Array, i: number): number {
  return (Math.imul((input[i]! << 16) | (input[i + 1]! << 8) | input[i + 2]!, 0x9e3779b1) >>> (32 - HASH_BITS));
}

/** Length of the common run of input[a..] and input[b..] (a < b), at most `limit`. */
function matchLength(input: Uint8Array, a: number, b: number, limit: number): number {
  let n = 0;
  while (n < limit && input[a + n] === input[b + n]) n++;
  return n;
}

/** Hash-chain match finder. */
class MatchFinder {
  private readonly head = new Int32Array(1 << HASH_BITS).fill(-1);
  private readonly prev: Int32Array;
  /** Positions below this are in the chains. */
  private inserted = 0;
  length = 0;
  distance = 0;

  constructor(private readonly input: Uint8Array) {
    this.prev = new Int32Array(Math.min(WINDOW, Math.max(1, input.length)));
  }

  /** Put every position below `end` into the chains. */
  insertUpTo(end: number): void {
    const input = this.input;
    const stop = Math.min(end, input.length - 2);
    for (let i = this.inserted; i < stop; i++) {
      const h = hash3(input, i);
      this.prev[i % WINDOW] = this.head[h]!;
      this.head[h] = i;
    }
    if (end > this.inserted) this.inserted = end;
  }

  /** Longest match at i (positions below i must be inserted); sets length and distance. */
  find(i: number): void {
    const input = this.input;
    const limit = Math.min(MAX_MATCH, input.length - i);
    this.length = 0;
    this.distance = 0;
    if (limit < 3) return;
    let candidate = this.head[hash3(input, i)]!;
    for (let tries = 0; candidate >= 0 && i - candidate <= WINDOW && tries < MAX_CHAIN; tries++) {
      if (input[candidate + this.length] === input[i + this.length]) {
        const n = matchLength(input, candidate, i, limit);
        if (n > this.length) {
          this.length = n;
          this.distance = i - candidate;
          if (n === limit) break;
        }
      }
      const next = this.prev[candidate % WINDOW]!;
      if (next >= candidate) break; // the ring slot was reused by a newer position
      candidate = next;
    }
    if (this.length < 3) this.length = 0;
  }
}

/** Rough cost in bits of a distance, to compare a match with rep0. */
function distanceCost(distance: number): number {
  return 32 - Math.clz32(distance);
}

/**
 * Compress bytes.
 * @param input any bytes
 * @returns the coded stream (decode with {@link lzDecompress} and input.length)
 */
export function lzCompress(input: Uint8Array): Uint8Array {
  const enc = new RangeEncoder(Math.max(64, input.length >>> 1));
  const m = new Models();
  const finder = new MatchFinder(input);
  let state = 0;
  let rep = 1;
  let i = 0;
  while (i < input.length) {
    finder.insertUpTo(i);
    finder.find(i);
    let length = finder.length;
    let distance = finder.distance;
    const repLength = i >= rep ? matchLength(input, i - rep, i, Math.min(MAX_MATCH, input.length - i)) : 0;
    let useRep = repLength >= MIN_MATCH && (repLength >= length || (repLength + 1 >= length && distanceCost(distance) > 4) || repLength + 2 >= length && distanceCost(distance) > 12);
    if (useRep) length = repLength;
    if (!useRep && length === 3 && distance > 4096) length = 0;
    if (!useRep && length > 0 && length < 32 && i + 1 < input.length) {
      // one step of lazy evaluation: a literal now may buy a longer match next
      finder.insertUpTo(i + 1);
      finder.find(i + 1);
      if (finder.length > length + 1 || (finder.length === length + 1 && distanceCost(finder.distance) <= distanceCost(distance))) length = 0;
    }
    const context = state & 3;
    if (length === 0) {
      enc.encodeBit(m.isMatch, context, 0);
      const previous = i > 0 ? input[i - 1]! : 0;
      encodeBitTree(enc, m.literal, (previous >> LIT_SHIFT) * 255, 8, input[i]!);
      state = (state << 1) & 3;
      i++;
      continue;
    }
    enc.encodeBit(m.isMatch, context, 1);
    if (useRep) {
      enc.encodeBit(m.isRep, context, 1);
      encodeLength(enc, m.lengths[1], length);
    } else {
      enc.encodeBit(m.isRep, context, 0);
      encodeLength(enc, m.lengths[0], length);
      encodeDistance(enc, m, distance, length);
      rep = distance;
    }
    state = ((state << 1) | 1) & 3;
    i += length;
  }
  return enc.finish();
}

/**
 * Decompress a stream of {@link lzCompress}.
 * @param bytes the coded stream
 * @param length the number of bytes it decodes to
 * @param limit the largest length accepted (checked before allocating)
 * @throws ExcpError ERR_HEADER_TOO_LARGE when length > limit; ERR_CORRUPT on an
 *   impossible match or bytes left after the end; ERR_TRUNCATED when the stream ends early
 */
export function lzDecompress(bytes: Uint8Array, length: number, limit: number): Uint8Array {
  if (!Number.isSafeInteger(length) || length < 0 || length > limit) {
    throw new ExcpError('ERR_HEADER_TOO_LARGE', `lz: decoded length ${length} exceeds limit ${limit}`);
  }
  const out = new Uint8Array(length);
  const dec = new RangeDecoder(bytes);
  const m = new Models();
  let state = 0;
  let rep = 1;
  let i = 0;
  while (i < length) {
    if (dec.overrun > 4) throw new ExcpError('ERR_TRUNCATED', `lz: stream of ${bytes.length} bytes ended after ${i} of ${length} bytes`);
    const context = state & 3;
    if (dec.decodeBit(m.isMatch, context) === 0) {
      const previous = i > 0 ? out[i - 1]! : 0;
      out[i++] = decodeBitTree(dec, m.literal, (previous >> LIT_SHIFT) * 255, 8);
      state = (state << 1) & 3;
      continue;
    }
    let n: number;
    if (dec.decodeBit(m.isRep, context) === 1) {
      n = decodeLength(dec, m.lengths[1]);
    } else {
      n = decodeLength(dec, m.lengths[0]);
      rep = decodeDistance(dec, m, n);
    }
    if (rep > i) throw new ExcpError('ERR_CORRUPT', `lz: match distance ${rep} at byte ${i} reaches before the start`);
    if (n > length - i) throw new ExcpError('ERR_CORRUPT', `lz: match of ${n} bytes at byte ${i} runs past the end (${length})`);
    for (let k = 0; k < n; k++, i++) out[i] = out[i - rep]!;
    state = ((state << 1) | 1) & 3;
  }
  if (dec.overrun > 4) throw new ExcpError('ERR_TRUNCATED', `lz: stream of ${bytes.length} bytes is truncated`);
  if (dec.unread > 0) throw new ExcpError('ERR_CORRUPT', `lz: ${dec.unread} of ${bytes.length} bytes left unread after ${length} decoded bytes`);
  return out;
}
