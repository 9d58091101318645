/**
 * Static frequency tables for the range coder: histogram -> normalized
 * frequencies summing to exactly 2^precision -> cumulative table and a
 * slot -> symbol decode table, plus a compact serialisation.
 *
 * The one rule that matters (style guideline 10): a symbol that occurs gets
 * a frequency >= 1, so it can always be coded, and a symbol that does not
 * occur gets 0, so coding it is a typed error (ERR_IMPOSSIBLE_SYMBOL), never
 * silent corruption. The decoder rebuilds the very same table from the
 * stored frequencies and checks their sum.
 *
 * Normalization follows ryg_rans's "steal the range" idea, done optimally:
 * start from rounded scaled counts (at least 1 for every used symbol), then
 * fix the total one unit at a time, always taking the unit where it costs the
 * fewest coded bits (count * log2 of the frequency ratio), using a heap.
 * Greedy on marginal costs is exact for this separable convex problem.
 */
import { type ByteReader, type ByteWriter, varintSize } from '../core/bytes.js';
import { ExcpError } from '../core/errors.js';

/**
 * Histogram of a symbol stream.
 * @param symbols values in [0, alphabetSize)
 * @param alphabetSize number of possible symbols
 * @param counts optional array to add into (length >= alphabetSize)
 * @returns counts per symbol
 * @throws ExcpError ERR_OUT_OF_RANGE when a symbol is >= alphabetSize
 */
export function countSymbols(symbols: Uint8Array, alphabetSize: number, counts?: Uint32Array): Uint32Array {
  const out = counts ?? new Uint32Array(alphabetSize);
  if (out.length < alphabetSize) throw new ExcpError('ERR_OUT_OF_RANGE', `frequency: counts length ${out.length} < alphabet ${alphabetSize}`);
  // Count into a full byte histogram first so an out-of-alphabet symbol is seen, not dropped.
  // Four interleaved histograms, four symbols a load: runs of one symbol
  // (most of a pruned stream) would otherwise wait on their own increments.
  const hist = new Uint32Array(1024);
  const n = symbols.length;
  let i = 0;
  if (symbols.byteOffset % 4 === 0) {
    const words = new Uint32Array(symbols.buffer, symbols.byteOffset, n >>> 2);
    for (let k = 0; k < words.length; k++) {
      const x = words[k]!;
      hist[x & 0xff]!++;
      hist[256 + ((x >>> 8) & 0xff)]!++;
      hist[512 + ((x >>> 16) & 0xff)]!++;
      hist[768 + (x >>> 24)]!++;
    }
    i = words.length << 2;
  }
  for (; i < n; i++) hist[symbols[i]!]!++;
  for (let s = 0; s < 256; s++) {
    const c = hist[s]! + hist[256 + s]! + hist[512 + s]! + hist[768 + s]!;
    if (c === 0) continue;
    if (s >= alphabetSize) throw new ExcpError('ERR_OUT_OF_RANGE', `frequency: symbol ${s} is outside the alphabet of ${alphabetSize}`);
    out[s] = out[s]! + c;
  }
  return out;
}

/**
 * Bits it costs to move one unit: taking one from f costs c*log2(f/(f-1))
 * (Infinity at f = 1: a used symbol keeps >= 1); giving one to f "costs"
 * -c*log2((f+1)/f). Lower is better in both directions.
 */
function unitCost(count: number, freq: number, shrinking: boolean): number {
  if (shrinking) return freq > 1 ? count * Math.log2(freq / (freq - 1)) : Infinity;
  return -count * Math.log2((freq + 1) / freq);
}

/** Sift-down in a binary min-heap of slots keyed by cost. */
function siftDown(heap: Int32Array, size: number, cost: Float64Array, at: number): void {
  const item = heap[at]!;
  for (;;) {
    let child = 2 * at + 1;
    if (child >= size) break;
    if (child + 1 < size && cost[heap[child + 1]!]! < cost[heap[child]!]!) child++;
    if (cost[heap[child]!]! >= cost[item]!) break;
    heap[at] = heap[child]!;
    at = child;
  }
  heap[at] = item;
}

/**
 * Scale counts to frequencies summing to exactly 2^precisionBits.
 * @param counts per-symbol counts (at least one > 0)
 * @param precisionBits 0..16
 * @returns freqs: freq > 0 exactly where count > 0, sum === 1 << precisionBits
 * @throws ExcpError ERR_OUT_OF_RANGE when all counts are 0, or more symbols are used than 2^precisionBits
 */
export function normalizeFrequencies(counts: Uint32Array, precisionBits: number): Uint32Array {
  if (!(Number.isInteger(precisionBits) && precisionBits >= 0 && precisionBits <= 16)) {
    throw new ExcpError('ERR_OUT_OF_RANGE', `frequency: precision ${precisionBits} bits is outside 0..16`);
  }
  const total = 1 << precisionBits;
  // Work on the used symbols only ("slots"): sparse tables stay cheap.
  const used: number[] = [];
  let n = 0;
  for (let s = 0; s < counts.length; s++) {
    if (counts[s]! > 0) {
      used.push(s);
      n += counts[s]!;
    }
  }
  if (used.length === 0) throw new ExcpError('ERR_OUT_OF_RANGE', 'frequency: cannot normalize an empty histogram');
  if (used.length > total) throw new ExcpError('ERR_OUT_OF_RANGE', `frequency: ${used.length} used symbols do not fit a total of ${total}`);
  const slots = used.length;
  const slotCount = new Float64Array(slots);
  const slotFreq = new Float64Array(slots);
  let sum = 0;
  for (let k = 0; k < slots; k++) {
    const c = counts[used[k]!]!;
    const f = Math.max(1, Math.round((c * total) / n));
    slotCount[k] = c;
    slotFreq[k] = f;
    sum += f;
  }
  if (sum !== total) {
    // Fix the total one unit at a time, always where it costs the fewest bits.
    const shrinking = sum > total;
    const step = shrinking ? -1 : 1;
    const cost = new Float64Array(slots);
    const heap = new Int32Array(slots);
    let size = 0;
    for (let k = 0; k < slots; k++) {
      cost[k] = unitCost(slotCount[k]!, slotFreq[k]!, shrinking);
      if (cost[k] !== Infinity) heap[size++] = k;
    }
    for (let at = (size >> 1) - 1; at >= 0; at--) siftDown(heap, size, cost, at);
    while (sum !== total) {
      const k = heap[0]!;
      slotFreq[k] = slotFreq[k]! + step;
      sum += step;
      cost[k] = unitCost(slotCount[k]!, slotFreq[k]!, shrinking);
      if (cost[k] === Infinity) heap[0] = heap[--size]!; // cannot shrink below 1
      siftDown(heap, size, cost, 0);
    }
  }
  const freqs = new Uint32Array(counts.length);
  for (let k = 0; k < slots; k++) freqs[used[k]!] = slotFreq[k]!;
  assertTable(counts, freqs, total);
  return freqs;
}

function assertTable(counts: Uint32Array, freqs: Uint32Array, total: number): void {
  let sum = 0;
  for (let s = 0; s < freqs.length; s++) {
    if ((counts[s]! > 0) !== (freqs[s]! > 0)) {
      throw new ExcpError('ERR_IMPOSSIBLE_SYMBOL', `frequency: symbol ${s} has count ${counts[s]} but frequency ${freqs[s]}`);
    }
    sum += freqs[s]!;
  }
  if (sum !== total) throw new ExcpError('ERR_CORRUPT', `frequency: normalized sum ${sum} !== ${total}`);
}

/**
 * @param freqs frequencies
 * @returns cum with cum[s] = sum of freqs[0..s), length freqs.length + 1
 */
export function cumulative(freqs: Uint32Array): Uint32Array {
  const cum = new Uint32Array(freqs.length + 1);
  for (let s = 0; s < freqs.length; s++) cum[s + 1] = cum[s]! + freqs[s]!;
  return cum;
}

/**
 * Slot -> symbol lookup for decoding: table[t] is the symbol whose slice holds t.
 * @param freqs frequencies summing to 2^precisionBits (alphabet <= 256)
 * @param out optional destination of length >= 2^precisionBits
 * @returns the table
 */
export function buildDecodeTable(freqs: Uint32Array, precisionBits: number, out?: Uint8Array): Uint8Array {
  const total = 1 << precisionBits;
  const table = out ?? new Uint8Array(total);
  let slot = 0;
  for (let s = 0; s < freqs.length; s++) {
    const f = freqs[s]!;
    if (slot + f > total) throw new ExcpError('ERR_CORRUPT', `frequency: table overflows ${total} at symbol ${s}`);
    table.fill(s, slot, slot + f);
    slot += f;
  }
  if (slot !== total) throw new ExcpError('ERR_CORRUPT', `frequency: table sums to ${slot}, expected ${total}`);
  return table;
}

/*
 * Serialised table (symbols up to the last used one; trailing zeros implied):
 *   varint  2 * (number of trailing unused symbols) + (token width is 2 bits ? 1 : 0)
 *   tokens  of width W = 4 or 2 bits, packed LSB first, scanning symbols in order
 *           (M = 2^W - 1, i.e. 15 or 3):
 *             1 .. M-1  frequency 1 .. M-1
 *             M         frequency >= M; the value - M follows in the varint section
 *             0, r      a run of r + 1 unused symbols (r = 0 .. M)
 *   varints the large frequencies, in order
 * The writer picks the narrower width when it is smaller: the rare symbols of
 * a very skewed stream then cost a quarter of a byte each.
 */

/** Collected tokens of one table (see the format above). */
interface Tokens {
  tokens: number[];
  bigs: number[];
}

/**
 * Walk the table's tokens at one width; collect them into `out` if given.
 * @returns the bytes of the token and varint sections
 */
function scanTokens(freqs: Uint32Array, count: number, width: number, out: Tokens | null): number {
  const max = (1 << width) - 1;
  let tokens = 0;
  let bigBytes = 0;
  let s = 0;
  while (s < count) {
    const f = freqs[s]!;
    if (f === 0) {
      let run = 1;
      while (s + run < count && freqs[s + run] === 0 && run <= max) run++;
      out?.tokens.push(0, run - 1);
      tokens += 2;
      s += run;
      continue;
    }
    tokens++;
    if (f < max) out?.tokens.push(f);
    else {
      out?.tokens.push(max);
      out?.bigs.push(f - max);
      bigBytes += varintSize(f - max);
    }
    s++;
  }
  return Math.ceil((tokens * width) / 8) + bigBytes;
}

function usedLength(freqs: Uint32Array): number {
  let count = freqs.length;
  while (count > 0 && freqs[count - 1] === 0) count--;
  return count;
}

function bestWidth(freqs: Uint32Array, count: number): { width: number; bytes: number } {
  const head = varintSize(2 * (freqs.length - count) + 1);
  const wide = head + scanTokens(freqs, count, 4, null);
  const narrow = head + scanTokens(freqs, count, 2, null);
  return narrow < wide ? { width: 2, bytes: narrow } : { width: 4, bytes: wide };
}

/**
 * Bytes that {@link writeFrequencies} would write, without writing.
 * @param freqs the table
 * @returns serialized size in bytes
 */
export function frequencyTableBytes(freqs: Uint32Array): number {
  return bestWidth(freqs, usedLength(freqs)).bytes;
}

/**
 * Serialise a normalized table compactly (format above).
 * @param w destination
 * @param freqs frequencies summing to 2^precisionBits
 * @param precisionBits 0..16 (not stored: the caller knows it)
 * @throws ExcpError ERR_INVALID_ARG when the table does not sum to 2^precisionBits
 */
export function writeFrequencies(w: ByteWriter, freqs: Uint32Array, precisionBits: number): void {
  let sum = 0;
  for (let s = 0; s < freqs.length; s++) sum += freqs[s]!;
  if (sum !== 1 << precisionBits) throw new ExcpError('ERR_INVALID_ARG', `frequency: table sums to ${sum}, expected ${1 << precisionBits}`);
  const count = usedLength(freqs);
  const { width } = bestWidth(freqs, count);
  w.varint(2 * (freqs.length - count) + (width === 2 ? 1 : 0));
  const out: Tokens = { tokens: [], bigs: [] };
  scanTokens(freqs, count, width, out);
  let acc = 0;
  let accBits = 0;
  for (const token of out.tokens) {
    acc |= token << accBits;
    accBits += width;
    if (accBits === 8) {
      w.u8(acc);
      acc = 0;
      accBits = 0;
    }
  }
  if (accBits > 0) w.u8(acc);
  for (const v of out.bigs) w.varint(v);
}

/** Token reader state for {@link readFrequencies}. */
interface TokenReader {
  r: ByteReader;
  acc: number;
  accBits: number;
  width: number;
}

function nextToken(t: TokenReader): number {
  if (t.accBits === 0) {
    t.acc = t.r.u8();
    t.accBits = 8;
  }
  const v = t.acc & ((1 << t.width) - 1);
  t.acc >>>= t.width;
  t.accBits -= t.width;
  return v;
}

/**
 * Read a table written by {@link writeFrequencies}.
 * @param r cursor, advanced past the table
 * @param alphabetSize number of symbols
 * @param precisionBits 0..16
 * @returns frequencies summing to exactly 2^precisionBits, with a used last symbol
 * @throws ExcpError ERR_CORRUPT on an inconsistent table, ERR_TRUNCATED when bytes run out
 */
export function readFrequencies(r: ByteReader, alphabetSize: number, precisionBits: number): Uint32Array {
  const total = 1 << precisionBits;
  const head = r.varint();
  const trailing = Math.floor(head / 2);
  const width = head % 2 === 1 ? 2 : 4;
  const max = (1 << width) - 1;
  if (trailing > alphabetSize) throw new ExcpError('ERR_CORRUPT', `frequency: ${trailing} trailing symbols exceed alphabet ${alphabetSize}`);
  const count = alphabetSize - trailing;
  const freqs = new Uint32Array(alphabetSize);
  const bigAt: number[] = [];
  const reader = { r, acc: 0, accBits: 0, width };
  let s = 0;
  while (s < count) {
    const v = nextToken(reader);
    if (v === 0) {
      const run = nextToken(reader) + 1;
      if (s + run > count) throw new ExcpError('ERR_CORRUPT', `frequency: zero run of ${run} at symbol ${s} passes ${count}`);
      s += run;
    } else {
      if (v === max) bigAt.push(s);
      freqs[s++] = v;
    }
  }
  for (const at of bigAt) {
    freqs[at] = max + r.varint();
    if (freqs[at]! > total) throw new ExcpError('ERR_CORRUPT', `frequency: symbol ${at} has frequency ${freqs[at]} > total ${total}`);
  }
  let sum = 0;
  for (let k = 0; k < alphabetSize; k++) sum += freqs[k]!;
  if (sum !== total || (count > 0 && freqs[count - 1] === 0)) {
    throw new ExcpError('ERR_CORRUPT', `frequency: stored table sums to ${sum}, expected ${total}`);
  }
  return freqs;
}

/**
 * Empirical order-0 information content: n * H(counts / n), in bits.
 * @param counts histogram
 * @returns bits (0 for an empty or single-symbol histogram)
 */
export function empiricalEntropyBits(counts: ArrayLike<number>): number {
  let n = 0;
  for (let s = 0; s < counts.length; s++) n += counts[s]!;
  if (n === 0) return 0;
  let bits = 0;
  for (let s = 0; s < counts.length; s++) {
    const c = counts[s]!;
    if (c > 0) bits += c * Math.log2(n / c);
  }
  return bits;
}

/**
 * Bits a static table spends on a histogram: sum of count * log2(total / freq).
 * @returns Infinity when a used symbol has frequency 0
 */
export function codedBits(counts: Uint32Array, freqs: Uint32Array, precisionBits: number): number {
  let bits = 0;
  for (let s = 0; s < counts.length; s++) {
    const c = counts[s]!;
    if (c === 0) continue;
    const f = freqs[s]!;
    if (f === 0) return Infinity;
    bits += c * (precisionBits - Math.log2(f));
  }
  return bits;
}
