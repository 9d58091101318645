/**
 * Coding a whole stream of small symbols (quantizer indices, mostly 0) with
 * static frequency tables and the range coder. This is the codec's hot path.
 *
 * Model, per table ("escape" structure):
 *   level 1  a static binary split at 16-bit precision: "is it the most
 *            probable symbol (MPS)?" The MPS owns the top of the range plus
 *            the truncation slack, so the common case costs close to
 *            -log2 P(MPS) bits and needs one multiply, no division, to decode.
 *   level 2  the other symbols, with their own table of 2^rareBits.
 * Why two levels: with a single 16-bit table, every rare symbol needs a
 * frequency >= 1/65536, which at 99.9% zeros steals more from the MPS than the
 * whole stream's entropy; split in two, both levels keep full precision.
 * rareBits is picked per table to minimize (table bytes + coded bits), so
 * small or sparse contexts get cheap, coarse tables.
 *
 * Output format (all produced by encodeSymbols; decoder needs count,
 * alphabetSize and the contexts):
 *   count 0        nothing (0 bytes)
 *   u8 mode        0 raw: count bytes follow (used when coding would not help)
 *                  1 constant: u8 symbol follows
 *                  2 order-0: one model, then the range-coded bytes
 *                  3 per-context: one model per context value that occurs in
 *                    `contexts` (ascending), then the range-coded bytes
 *   model          u8 mps; varint escape (level-1 frequency of "not MPS" out of
 *                  2^16, 0 = the context is constant); if escape > 0:
 *                  u8 rareBits, then the level-2 table (frequency.ts format)
 */
import { ByteReader, ByteWriter } from './bytes.js';
import { ExcpError } from './errors.js';
import {
  buildDecodeTable,
  codedBits,
  countSymbols,
  cumulative,
  empiricalEntropyBits,
  frequencyTableBytes,
  normalizeFrequencies,
  readFrequencies,
  writeFrequencies,
} from './frequency.js';

const MODE_RAW = 0;
const MODE_CONST = 1;
const MODE_ORDER0 = 2;
const MODE_CONTEXT = 3;
/** Level-1 precision: the finest the range coder allows, for extreme skews. */
const SPLIT_BITS = 16;
const SPLIT_TOTAL = 1 << SPLIT_BITS;
/** Range coder constants (see READ ME FIRST in range-coder.ts). */
const TOP = 0x800000;
const MAX_RANGE = 0x7fffffff;
const SIGN = -0x80000000;

/** One table: MPS split plus a table for the other symbols. */
interface Model {
  mps: number;
  /** Level-1 frequency of "not MPS" out of 2^16; 0 for a constant context. */
  escape: number;
  rareBits: number;
  rareFreqs: Uint32Array;
  /** Estimated cost in bits, header included. */
  bits: number;
}

function bitLength(v: number): number {
  return v <= 0 ? 0 : 32 - Math.clz32(v);
}

function varintBytes(v: number): number {
  return v < 128 ? 1 : v < 16384 ? 2 : 3;
}

/** Build the cheapest model for one histogram (n > 0 symbols). */
function buildModel(counts: Uint32Array, n: number): Model {
  let mps = 0;
  for (let s = 1; s < counts.length; s++) if (counts[s]! > counts[mps]!) mps = s;
  const rare = n - counts[mps]!;
  if (rare === 0) return { mps, escape: 0, rareBits: 0, rareFreqs: new Uint32Array(0), bits: 16 };
  const escape = Math.min(SPLIT_TOTAL - 1, Math.max(1, Math.round((rare * SPLIT_TOTAL) / n)));
  const splitBits = rare * Math.log2(SPLIT_TOTAL / escape) + counts[mps]! * Math.log2(SPLIT_TOTAL / (SPLIT_TOTAL - escape));
  const rareCounts = counts.slice();
  rareCounts[mps] = 0;
  let distinct = 0;
  for (let s = 0; s < rareCounts.length; s++) if (rareCounts[s]! > 0) distinct++;
  const headerBits = 8 * (2 + varintBytes(escape));
  // Start at a precision finer than the counts and coarsen: coding loss grows,
  // table bytes shrink (in steps: frequencies >= 3 and >= 15 cost more). Stop
  // once the loss alone, plus the smallest table possible (every used symbol at
  // frequency 1), cannot beat the best so far: coarser can only lose more.
  const minBits = bitLength(distinct - 1);
  const entropy = empiricalEntropyBits(rareCounts);
  const presence = new Uint32Array(rareCounts.length);
  for (let s = 0; s < rareCounts.length; s++) presence[s] = rareCounts[s]! > 0 ? 1 : 0;
  const smallestTableBits = 8 * frequencyTableBytes(presence);
  let best: { rareBits: number; rareFreqs: Uint32Array; bits: number } | undefined;
  for (let p = Math.max(minBits, Math.min(16, bitLength(rare) + 1)); p >= minBits; p--) {
    const freqs = normalizeFrequencies(rareCounts, p);
    const coded = codedBits(rareCounts, freqs, p);
    const bits = coded + 8 * frequencyTableBytes(freqs);
    if (best === undefined || bits < best.bits) best = { rareBits: p, rareFreqs: freqs, bits };
    if (coded - entropy + smallestTableBits >= best.bits) break;
  }
  const chosen = best!;
  return { mps, escape, rareBits: chosen.rareBits, rareFreqs: chosen.rareFreqs, bits: headerBits + splitBits + chosen.bits };
}

function writeModel(w: ByteWriter, m: Model): void {
  w.u8(m.mps);
  w.varint(m.escape);
  if (m.escape === 0) return;
  w.u8(m.rareBits);
  writeFrequencies(w, m.rareFreqs, m.rareBits);
}

function readModel(r: ByteReader, alphabetSize: number): Model {
  const mps = r.u8();
  if (mps >= alphabetSize) throw new ExcpError('ERR_CORRUPT', `symbols: most probable symbol ${mps} >= alphabet ${alphabetSize}`);
  const escape = r.varint();
  if (escape === 0) return { mps, escape, rareBits: 0, rareFreqs: new Uint32Array(0), bits: 0 };
  if (escape >= SPLIT_TOTAL) throw new ExcpError('ERR_CORRUPT', `symbols: escape frequency ${escape} >= ${SPLIT_TOTAL}`);
  const rareBits = r.u8();
  if (rareBits > 16) throw new ExcpError('ERR_CORRUPT', `symbols: table precision ${rareBits} > 16 bits`);
  return { mps, escape, rareBits, rareFreqs: readFrequencies(r, alphabetSize, rareBits), bits: 0 };
}

/** Flattened per-context tables for the coding loops. */
interface Tables {
  mps: Uint8Array;
  escape: Uint32Array;
  rareBits: Uint8Array;
  /** [context * alphabetSize + symbol] */
  cum: Uint32Array;
  freq: Uint32Array;
  /** Decode tables, concatenated; decodeAt[context] is the start of one. */
  decode: Uint8Array;
  decodeAt: Uint32Array;
}

function flatten(models: (Model | undefined)[], alphabetSize: number, forDecode: boolean): Tables {
  const k = models.length;
  const t: Tables = {
    mps: new Uint8Array(k),
    escape: new Uint32Array(k),
    rareBits: new Uint8Array(k),
    cum: new Uint32Array(k * alphabetSize),
    freq: new Uint32Array(k * alphabetSize),
    decode: new Uint8Array(0),
    decodeAt: new Uint32Array(k),
  };
  let decodeSize = 0;
  for (let c = 0; c < k; c++) {
    const m = models[c];
    if (m === undefined) continue;
    t.mps[c] = m.mps;
    t.escape[c] = m.escape;
    t.rareBits[c] = m.rareBits;
    if (m.escape === 0) continue;
    t.freq.set(m.rareFreqs, c * alphabetSize);
    t.cum.set(cumulative(m.rareFreqs).subarray(0, alphabetSize), c * alphabetSize);
    t.decodeAt[c] = decodeSize;
    decodeSize += 1 << m.rareBits;
  }
  if (forDecode) {
    t.decode = new Uint8Array(decodeSize);
    for (let c = 0; c < k; c++) {
      const m = models[c];
      if (m !== undefined && m.escape > 0) buildDecodeTable(m.rareFreqs, m.rareBits, t.decode.subarray(t.decodeAt[c]!));
    }
  }
  return t;
}

function checkArgs(count: number, alphabetSize: number, contexts: Uint8Array | undefined, numContexts: number): void {
  if (!(Number.isInteger(alphabetSize) && alphabetSize >= 1 && alphabetSize <= 256)) {
    throw new ExcpError('ERR_OUT_OF_RANGE', `symbols: alphabetSize ${alphabetSize} is outside 1..256`);
  }
  if (!(Number.isInteger(numContexts) && numContexts >= 1 && numContexts <= 256)) {
    throw new ExcpError('ERR_OUT_OF_RANGE', `symbols: numContexts ${numContexts} is outside 1..256`);
  }
  if (!(Number.isSafeInteger(count) && count >= 0)) throw new ExcpError('ERR_OUT_OF_RANGE', `symbols: count ${count} is not a non-negative integer`);
  if (contexts !== undefined && contexts.length !== count) {
    throw new ExcpError('ERR_INVALID_ARG', `symbols: ${contexts.length} contexts for ${count} symbols`);
  }
}

/**
 * One pass over (context, symbol) pairs: per-context histograms
 * [context * alphabetSize + symbol], their totals, and the order-0 histogram.
 * @throws ExcpError ERR_OUT_OF_RANGE for a symbol or context outside its range
 */
function countByContext(symbols: Uint8Array, alphabetSize: number, contexts: Uint8Array, numContexts: number): { counts: Uint32Array; totals: Uint32Array; global: Uint32Array } {
  const joint = new Uint32Array(65536);
  for (let i = 0; i < symbols.length; i++) joint[(contexts[i]! << 8) | symbols[i]!]!++;
  const counts = new Uint32Array(numContexts * alphabetSize);
  const totals = new Uint32Array(numContexts);
  const global = new Uint32Array(alphabetSize);
  for (let c = 0; c < 256; c++) {
    for (let s = 0; s < 256; s++) {
      const k = joint[(c << 8) | s]!;
      if (k === 0) continue;
      if (s >= alphabetSize) throw new ExcpError('ERR_OUT_OF_RANGE', `symbols: symbol ${s} is outside the alphabet of ${alphabetSize}`);
      if (c >= numContexts) throw new ExcpError('ERR_OUT_OF_RANGE', `symbols: context ${c} >= numContexts ${numContexts}`);
      counts[c * alphabetSize + s] = k;
      totals[c] = totals[c]! + k;
      global[s] = global[s]! + k;
    }
  }
  return { counts, totals, global };
}

/**
 * Code a symbol stream.
 * @param symbols values < alphabetSize
 * @param alphabetSize 1..256
 * @param contexts optional, same length, values < numContexts; each context may get its own model
 * @param numContexts 1..256 (default 256)
 * @returns self-describing bytes (the decoder needs count, alphabetSize, contexts)
 * @throws ExcpError ERR_OUT_OF_RANGE for a symbol or context outside its range
 */
export function encodeSymbols(symbols: Uint8Array, alphabetSize: number, contexts?: Uint8Array, numContexts = 256): Uint8Array {
  const n = symbols.length;
  checkArgs(n, alphabetSize, contexts, numContexts);
  if (n === 0) return new Uint8Array(0);
  const byContext = contexts === undefined ? undefined : countByContext(symbols, alphabetSize, contexts, numContexts);
  const global = buildModel(byContext?.global ?? countSymbols(symbols, alphabetSize), n);
  if (global.escape === 0) return Uint8Array.of(MODE_CONST, global.mps);

  let models: (Model | undefined)[] = [global];
  let mode = MODE_ORDER0;
  if (byContext !== undefined) {
    const perContext: (Model | undefined)[] = [];
    let bits = 0;
    for (let c = 0; c < numContexts; c++) {
      const nc = byContext.totals[c]!;
      const m = nc > 0 ? buildModel(byContext.counts.subarray(c * alphabetSize, (c + 1) * alphabetSize), nc) : undefined;
      perContext.push(m);
      bits += m?.bits ?? 0;
    }
    if (bits < global.bits) {
      models = perContext;
      mode = MODE_CONTEXT;
    }
  }
  let estimatedBits = 0;
  for (const m of models) estimatedBits += m?.bits ?? 0;
  if (estimatedBits >= 8 * n) return rawOutput(symbols);

  const w = new ByteWriter(64 + 4 * models.length);
  w.u8(mode);
  for (const m of models) if (m !== undefined) writeModel(w, m);
  const t = flatten(models, alphabetSize, false);
  const coded = encodeLoop(symbols, mode === MODE_CONTEXT ? contexts : undefined, alphabetSize, t, Math.ceil(estimatedBits / 8) + 64);
  if (w.length + coded.length >= n + 1) return rawOutput(symbols);
  w.bytes(coded);
  return w.finish().slice();
}

function rawOutput(symbols: Uint8Array): Uint8Array {
  const out = new Uint8Array(symbols.length + 1);
  out[0] = MODE_RAW;
  out.set(symbols, 1);
  return out;
}

/*
 * The two coding loops below inline RangeEncoder.encodeBinary/encode and the
 * RangeDecoder counterparts (same arithmetic, same byte format; see READ ME
 * FIRST in range-coder.ts for the state invariants and the carry logic).
 * Why: with coder state in locals instead of object fields they run about 2x
 * faster, and this is the codec's hot loop. spec/symbols.spec.ts checks that
 * they produce exactly the bytes of the class-based coder.
 */

function encodeLoop(symbols: Uint8Array, contexts: Uint8Array | undefined, alphabetSize: number, t: Tables, capacity: number): Uint8Array {
  const { mps, escape, rareBits, cum, freq } = t;
  let out: Uint8Array = new Uint8Array(Math.max(16, capacity));
  let pos = 0;
  let low = 0; // int32 pattern of the 32-bit interval start
  let range = MAX_RANGE;
  for (let i = 0; i < symbols.length; i++) {
    const s = symbols[i]!;
    const c = contexts === undefined ? 0 : contexts[i]!;
    const e = escape[c]!;
    const bound = (range >>> SPLIT_BITS) * e;
    let add = bound;
    if (s === mps[c]) {
      range -= bound; // MPS: upper part of the split plus the slack
    } else {
      if (e === 0) throw new ExcpError('ERR_IMPOSSIBLE_SYMBOL', `symbols: symbol ${s} in constant context ${c}`);
      range = bound;
      const k = c * alphabetSize + s;
      const f = freq[k]!;
      if (f === 0) throw new ExcpError('ERR_IMPOSSIBLE_SYMBOL', `symbols: symbol ${s} has frequency 0 in context ${c}`);
      // Normalize before the level-2 split so that r = range >>> b keeps >= 7 bits.
      while (range < TOP) {
        if (pos === out.length) out = grow(out);
        out[pos++] = low >>> 24;
        low <<= 8;
        range <<= 8;
      }
      const b = rareBits[c]!;
      const r = range >>> b;
      const cm = cum[k]!;
      add = r * cm;
      range = cm + f === 1 << b ? range - add : r * f;
    }
    const before = low;
    low = (low + add) | 0;
    if ((low ^ SIGN) < (before ^ SIGN)) carry(out, pos);
    while (range < TOP) {
      if (pos === out.length) out = grow(out);
      out[pos++] = low >>> 24;
      low <<= 8;
      range <<= 8;
    }
  }
  // Flush exactly like RangeEncoder.finish.
  const unsignedLow = low >>> 0;
  let value = Math.ceil(unsignedLow / 0x1000000) * 0x1000000;
  if (value - unsignedLow >= range) value = Math.ceil(unsignedLow / TOP) * TOP;
  if (value >= 0x100000000) {
    carry(out, pos);
    value -= 0x100000000;
  }
  if (pos + 2 > out.length) out = grow(out);
  out[pos++] = value >>> 24;
  out[pos++] = (value >>> 16) & 0xff;
  for (let k = 0; k < 2 && out[pos - 1] === 0; k++) pos--;
  return out.subarray(0, pos);
}

/** Add 1 to the bytes written so far (a carry out of low). */
function carry(out: Uint8Array, pos: number): void {
  let k = pos - 1;
  while (k >= 0 && out[k] === 0xff) out[k--] = 0;
  if (k >= 0) out[k]!++;
}

function grow(out: Uint8Array): Uint8Array {
  const next = new Uint8Array(out.length * 2);
  next.set(out);
  return next;
}

/**
 * Decode a stream written by {@link encodeSymbols}.
 * @param bytes the coded bytes
 * @param count number of symbols
 * @param alphabetSize as given to the encoder
 * @param contexts as given to the encoder (needed if it was given)
 * @param numContexts as given to the encoder
 * @returns the symbols
 * @throws ExcpError ERR_CORRUPT / ERR_TRUNCATED on inconsistent input (garbage may also decode to wrong symbols)
 */
export function decodeSymbols(bytes: Uint8Array, count: number, alphabetSize: number, contexts?: Uint8Array, numContexts = 256): Uint8Array {
  checkArgs(count, alphabetSize, contexts, numContexts);
  const out = new Uint8Array(count);
  if (count === 0) return out;
  const r = new ByteReader(bytes, 'symbols');
  const mode = r.u8();
  if (mode === MODE_RAW) {
    if (r.remaining !== count) throw new ExcpError('ERR_CORRUPT', `symbols: raw stream holds ${r.remaining} bytes for ${count} symbols`);
    out.set(r.bytesView(count));
    for (let i = 0; i < count; i++) {
      if (out[i]! >= alphabetSize) throw new ExcpError('ERR_CORRUPT', `symbols: raw symbol ${out[i]} >= alphabet ${alphabetSize}`);
    }
    return out;
  }
  if (mode === MODE_CONST) {
    const s = r.u8();
    if (s >= alphabetSize) throw new ExcpError('ERR_CORRUPT', `symbols: constant symbol ${s} >= alphabet ${alphabetSize}`);
    return out.fill(s);
  }
  const models: (Model | undefined)[] = [];
  let ctx: Uint8Array | undefined;
  if (mode === MODE_ORDER0) {
    models.push(readModel(r, alphabetSize));
  } else if (mode === MODE_CONTEXT) {
    if (contexts === undefined) throw new ExcpError('ERR_INVALID_ARG', 'symbols: stream was coded with contexts; none given');
    const seen = new Uint8Array(256);
    for (let i = 0; i < count; i++) seen[contexts[i]!] = 1;
    for (let c = 0; c < numContexts; c++) models.push(seen[c] ? readModel(r, alphabetSize) : undefined);
    for (let c = numContexts; c < 256; c++) {
      if (seen[c]) throw new ExcpError('ERR_OUT_OF_RANGE', `symbols: context ${c} >= numContexts ${numContexts}`);
    }
    ctx = contexts;
  } else {
    throw new ExcpError('ERR_CORRUPT', `symbols: unknown mode ${mode}`);
  }
  const t = flatten(models, alphabetSize, true);
  const { overrun, unread } = decodeLoop(bytes, r.offset, out, ctx, alphabetSize, t);
  if (overrun > 4 || unread > 0) {
    throw new ExcpError('ERR_CORRUPT', `symbols: coded data does not match ${count} symbols (overrun ${overrun}, unread ${unread})`);
  }
  return out;
}

function decodeLoop(bytes: Uint8Array, offset: number, out: Uint8Array, contexts: Uint8Array | undefined, alphabetSize: number, t: Tables): { overrun: number; unread: number } {
  const { mps, escape, rareBits, cum, freq, decode, decodeAt } = t;
  const end = bytes.length;
  let pos = offset;
  let overrun = 0;
  let code = 0;
  let range = MAX_RANGE;
  // Reads past the end yield 0 and are counted; a valid stream needs at most 4.
  for (let k = 0; k < 4; k++) {
    code = ((code << 8) | (pos < end ? bytes[pos++]! : (overrun++, 0))) & MAX_RANGE;
  }
  for (let i = 0; i < out.length; i++) {
    const c = contexts === undefined ? 0 : contexts[i]!;
    const bound = (range >>> SPLIT_BITS) * escape[c]!;
    if (code >= bound) {
      code -= bound; // MPS (always taken in a constant context, where bound is 0)
      range -= bound;
      out[i] = mps[c]!;
    } else {
      range = bound;
      while (range < TOP) {
        code = ((code << 8) | (pos < end ? bytes[pos++]! : (overrun++, 0))) & MAX_RANGE;
        range <<= 8;
      }
      const b = rareBits[c]!;
      const r = range >>> b;
      const max = (1 << b) - 1;
      let target = Math.floor(code / r);
      if (target > max) target = max; // the slack above r * 2^b belongs to the last symbol
      const s = decode[decodeAt[c]! + target]!;
      const k = c * alphabetSize + s;
      const cm = cum[k]!;
      const start = r * cm;
      code = (code - start) & MAX_RANGE;
      range = cm + freq[k]! === max + 1 ? range - start : r * freq[k]!;
      out[i] = s;
    }
    while (range < TOP) {
      code = ((code << 8) | (pos < end ? bytes[pos++]! : (overrun++, 0))) & MAX_RANGE;
      range <<= 8;
    }
  }
  return { overrun, unread: end - pos };
}
