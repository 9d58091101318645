/**
 * Coding a whole stream of small symbols (quantizer indices, mostly 0) with
 * static frequency tables and an interleaved rANS coder. This is the codec's
 * hot path.
 *
 * Model, per table. Each is one of:
 *   direct   one table over the whole alphabet at 2^bits (bits <= 16; the
 *            encoder uses at most 12): decoding is a lookup of the state's
 *            low bits, with no branch on the symbol. This is the common case.
 *   escape   for extreme skews: a static binary split at 16-bit precision,
 *            "is it the most probable symbol (MPS)?", then the other symbols
 *            with their own table of 2^rareBits. With a single table every
 *            rare symbol needs a frequency >= 2^-bits, which at 99.9% zeros
 *            steals more from the MPS than the whole stream's entropy; split
 *            in two, both levels keep full precision.
 *   constant the context holds one symbol; it costs nothing.
 * The encoder picks per table the kind and precision with the fewest bits
 * (table bytes + coded bits), preferring direct unless escape saves clearly.
 *
 * Output format (all produced by encodeSymbols; decoder needs count,
 * alphabetSize and the contexts):
 *   count 0        nothing (0 bytes)
 *   u8 mode        0 raw: count bytes follow (used when coding would not help)
 *                  1 constant: u8 symbol follows
 *                  2 order-0: one model, then the coded bytes
 *                  3 per-context: one model per context value that occurs in
 *                    `contexts` (ascending), then the coded bytes
 *   model          u8 mps; varint escape: 0 = constant context (every symbol
 *                  is mps), 1 .. 2^16 - 1 = escape model (level-1 frequency of
 *                  "not MPS" out of 2^16), 2^16 = direct model; if escape > 0:
 *                  u8 bits, then the table (frequency.ts format) at 2^bits
 *                  (for an escape model, of the symbols other than mps)
 *   coded bytes    rANS with two interleaved states (symbol i uses state i & 1),
 *                  31-bit states in [2^23, 2^31), byte-wise renormalization:
 *                  u32 x0, u32 x1 (little-endian, the decoder's initial states),
 *                  then the renormalization bytes in the order the decoder
 *                  reads them. Decoding symbol i from state x, per step:
 *                    table step (2^b, freq f, cum): slot = x mod 2^b, the
 *                      symbol s whose [cum, cum + f) holds slot,
 *                      x = f * (x >> b) + slot - cum
 *                    escape model: first the split step with 2^16: slot < escape
 *                      is "not MPS" (f = escape, cum = 0), else MPS (f = 2^16 -
 *                      escape, cum = escape); then, if not MPS, the table step
 *                    after each step: while x < 2^23: x = x * 256 + next byte
 *                  The encoder runs the steps backwards from x0 = x1 = 2^23, so
 *                  a valid stream ends with both states at 2^23 and every
 *                  byte read.
 */
import { ByteReader, ByteWriter } from './bytes.js';
import { ExcpError } from './errors.js';
import {
  codedBits,
  countSymbols,
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
/** Level-1 precision of an escape model: the finest the coder allows, for extreme skews. */
const SPLIT_BITS = 16;
const SPLIT_TOTAL = 1 << SPLIT_BITS;
/** The escape value that marks a direct model. */
const DIRECT = SPLIT_TOTAL;
/** Finest direct table the encoder builds (decode tables stay small: 2^12 slots). */
const DIRECT_MAX_BITS = 12;
/** rANS: states live in [LOW, 2^31), renormalized a byte at a time. */
const LOW = 1 << 23;
const STATE_BITS = 31;

/** One table. */
interface Model {
  mps: number;
  /** 0 constant, 1 .. 2^16 - 1 escape model, 2^16 direct model. */
  escape: number;
  /** Precision of the table (direct: all symbols; escape: the symbols other than mps). */
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

/**
 * The cheapest table for a histogram at precisions from `start` down to
 * minBits. Coarser precision loses coding bits and saves table bytes (in
 * steps: frequencies >= 3 and >= 15 cost more); stop once the loss alone plus
 * the smallest table possible (every used symbol at frequency 1) cannot beat
 * the best so far: coarser can only lose more.
 */
function bestTable(counts: Uint32Array, start: number): { rareBits: number; rareFreqs: Uint32Array; bits: number } {
  let distinct = 0;
  for (let s = 0; s < counts.length; s++) if (counts[s]! > 0) distinct++;
  const minBits = bitLength(distinct - 1);
  const entropy = empiricalEntropyBits(counts);
  const presence = new Uint32Array(counts.length);
  for (let s = 0; s < counts.length; s++) presence[s] = counts[s]! > 0 ? 1 : 0;
  const smallestTableBits = 8 * frequencyTableBytes(presence);
  let best: { rareBits: number; rareFreqs: Uint32Array; bits: number } | undefined;
  for (let p = Math.max(minBits, start); p >= minBits; p--) {
    const freqs = normalizeFrequencies(counts, p);
    const coded = codedBits(counts, freqs, p);
    const bits = coded + 8 * frequencyTableBytes(freqs);
    if (best === undefined || bits < best.bits) best = { rareBits: p, rareFreqs: freqs, bits };
    if (coded - entropy + smallestTableBits >= best.bits) break;
  }
  return best!;
}

/** Build the cheapest model for one histogram (n > 0 symbols). */
function buildModel(counts: Uint32Array, n: number): Model {
  let mps = 0;
  for (let s = 1; s < counts.length; s++) if (counts[s]! > counts[mps]!) mps = s;
  const rare = n - counts[mps]!;
  if (rare === 0) return { mps, escape: 0, rareBits: 0, rareFreqs: new Uint32Array(0), bits: 16 };
  const direct = bestTable(counts, Math.min(DIRECT_MAX_BITS, bitLength(n) + 1));
  const directBits = 8 * (2 + varintBytes(DIRECT)) + direct.bits;
  const escape = Math.min(SPLIT_TOTAL - 1, Math.max(1, Math.round((rare * SPLIT_TOTAL) / n)));
  const splitBits = rare * Math.log2(SPLIT_TOTAL / escape) + counts[mps]! * Math.log2(SPLIT_TOTAL / (SPLIT_TOTAL - escape));
  const rareCounts = counts.slice();
  rareCounts[mps] = 0;
  const split = bestTable(rareCounts, Math.min(16, bitLength(rare) + 1));
  const escapeBits = 8 * (2 + varintBytes(escape)) + splitBits + split.bits;
  // The escape model decodes with a data-dependent branch: take it only when it clearly pays.
  if (escapeBits < directBits - Math.max(64, directBits / 1000)) return { mps, escape, rareBits: split.rareBits, rareFreqs: split.rareFreqs, bits: escapeBits };
  return { mps, escape: DIRECT, rareBits: direct.rareBits, rareFreqs: direct.rareFreqs, bits: directBits };
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
  if (escape > DIRECT) throw new ExcpError('ERR_CORRUPT', `symbols: escape frequency ${escape} > ${DIRECT}`);
  const rareBits = r.u8();
  if (rareBits > 16) throw new ExcpError('ERR_CORRUPT', `symbols: table precision ${rareBits} > 16 bits`);
  return { mps, escape, rareBits, rareFreqs: readFrequencies(r, alphabetSize, rareBits), bits: 0 };
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
  let estimatedBits = 64; // the two states
  for (const m of models) estimatedBits += m?.bits ?? 0;
  if (estimatedBits >= 8 * n) return rawOutput(symbols);

  const w = new ByteWriter(64 + 4 * models.length);
  w.u8(mode);
  for (const m of models) if (m !== undefined) writeModel(w, m);
  const t = encodeTables(models, alphabetSize);
  const coded = encodeLoop(symbols, mode === MODE_CONTEXT ? contexts! : null, alphabetSize, t, Math.ceil(estimatedBits / 8) + 64);
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

/** Per-context and per-(context, symbol) arrays for the encoder. */
interface EncodeTables {
  mps: Uint8Array;
  /** 0 constant, 1 .. 2^16 - 1 escape, 2^16 direct. */
  escape: Int32Array;
  bits: Uint8Array;
  /** [context * alphabetSize + symbol]: table frequency, cumulative frequency, and f * 2^(31 - bits), the state bound before the step. */
  freq: Int32Array;
  cum: Int32Array;
  bound: Float64Array;
  /** 1 / freq (0 where freq is 0): x div f is floor((x + 0.5) / f), exact for x < 2^31, f <= 2^16. */
  inv: Float64Array;
  /** Every model is direct or constant: the loop without the split applies. */
  direct: boolean;
}

function encodeTables(models: (Model | undefined)[], alphabetSize: number): EncodeTables {
  const k = models.length;
  const t: EncodeTables = {
    mps: new Uint8Array(k),
    escape: new Int32Array(k),
    bits: new Uint8Array(k),
    freq: new Int32Array(k * alphabetSize),
    cum: new Int32Array(k * alphabetSize),
    bound: new Float64Array(k * alphabetSize),
    inv: new Float64Array(k * alphabetSize),
    direct: true,
  };
  for (let c = 0; c < k; c++) {
    const m = models[c];
    if (m === undefined) continue;
    t.mps[c] = m.mps;
    t.escape[c] = m.escape;
    t.bits[c] = m.rareBits;
    if (m.escape !== 0 && m.escape !== DIRECT) t.direct = false;
    if (m.escape === 0) {
      // Constant: for the direct loop, a table of one symbol at 2^0 (the identity step).
      t.bits[c] = 0;
      t.freq[c * alphabetSize + m.mps] = 1;
      t.bound[c * alphabetSize + m.mps] = 2 ** STATE_BITS;
      t.inv[c * alphabetSize + m.mps] = 1;
      continue;
    }
    let cum = 0;
    for (let s = 0; s < alphabetSize; s++) {
      const f = m.rareFreqs[s]!;
      t.freq[c * alphabetSize + s] = f;
      t.cum[c * alphabetSize + s] = cum;
      t.bound[c * alphabetSize + s] = f * 2 ** (STATE_BITS - m.rareBits);
      t.inv[c * alphabetSize + s] = f === 0 ? 0 : 1 / f;
      cum += f;
    }
  }
  return t;
}

/*
 * The encoder runs backwards over the symbols (rANS is last in, first out)
 * and writes its bytes backwards from the end of `out`, so that the decoder
 * reads them forwards. One step with frequency f, cumulative frequency cum
 * and total 2^b: first emit low bytes while x >= f * 2^(31 - b) (then the
 * step keeps x < 2^31), then x = (x div f) * 2^b + x mod f + cum. All state
 * arithmetic stays in int32 (the states are < 2^31).
 */

function encodeLoop(symbols: Uint8Array, contexts: Uint8Array | null, alphabetSize: number, t: EncodeTables, capacity: number): Uint8Array {
  if (t.direct) return encodeDirect(symbols, contexts, alphabetSize, t, capacity);
  const { mps, escape, bits, freq, cum, bound } = t;
  let out: Uint8Array = new Uint8Array(Math.max(64, capacity));
  let pos = out.length;
  let x0 = LOW;
  let x1 = LOW;
  for (let i = symbols.length - 1; i >= 0; i--) {
    const s = symbols[i]!;
    const c = contexts === null ? 0 : contexts[i]!;
    const e = escape[c]!;
    let x = (i & 1) === 0 ? x0 : x1;
    if (pos < 8) {
      out = growFront(out);
      pos += out.length >>> 1;
    }
    if (e === DIRECT || s !== mps[c]) {
      const k = c * alphabetSize + s;
      const f = freq[k]!;
      if (f === 0) {
        throw new ExcpError('ERR_IMPOSSIBLE_SYMBOL', e === 0 ? `symbols: symbol ${s} in constant context ${c}` : `symbols: symbol ${s} has frequency 0 in context ${c}`);
      }
      const max = bound[k]!;
      while (x >= max) {
        out[--pos] = x & 0xff;
        x >>>= 8;
      }
      const q = Math.floor(x / f);
      x = (q << bits[c]!) + (x - q * f) + cum[k]!;
      if (e !== DIRECT) {
        // The split step: "not MPS" owns [0, e) of 2^16.
        const maxSplit = e * 2 ** (STATE_BITS - SPLIT_BITS);
        while (x >= maxSplit) {
          out[--pos] = x & 0xff;
          x >>>= 8;
        }
        const qs = Math.floor(x / e);
        x = (qs << SPLIT_BITS) + (x - qs * e);
      }
    } else if (e !== 0) {
      // MPS: [e, 2^16) of the split.
      const f = SPLIT_TOTAL - e;
      const max = f * 2 ** (STATE_BITS - SPLIT_BITS);
      while (x >= max) {
        out[--pos] = x & 0xff;
        x >>>= 8;
      }
      const q = Math.floor(x / f);
      x = (q << SPLIT_BITS) + (x - q * f) + e;
    } // a constant context's step is the identity
    if ((i & 1) === 0) x0 = x;
    else x1 = x;
  }
  return finishStates(out, pos, x0, x1);
}

/** encodeLoop when every model is direct or constant: no split, no division (see EncodeTables.inv). */
function encodeDirect(symbols: Uint8Array, contexts: Uint8Array | null, alphabetSize: number, t: EncodeTables, capacity: number): Uint8Array {
  const { bits, freq, cum, bound, inv } = t;
  let out: Uint8Array = new Uint8Array(Math.max(64, capacity));
  let pos = out.length;
  let x0 = LOW;
  let x1 = LOW;
  for (let i = symbols.length - 1; i >= 0; i--) {
    const c = contexts === null ? 0 : contexts[i]!;
    const k = c * alphabetSize + symbols[i]!;
    const f = freq[k]!;
    if (f === 0) throw new ExcpError('ERR_IMPOSSIBLE_SYMBOL', `symbols: symbol ${symbols[i]} has frequency 0 in context ${c}`);
    if (pos < 8) {
      out = growFront(out);
      pos += out.length >>> 1;
    }
    let x = (i & 1) === 0 ? x0 : x1;
    const max = bound[k]!;
    while (x >= max) {
      out[--pos] = x & 0xff;
      x >>>= 8;
    }
    const q = Math.floor((x + 0.5) * inv[k]!);
    x = (q << bits[c]!) + (x - q * f) + cum[k]!;
    if ((i & 1) === 0) x0 = x;
    else x1 = x;
  }
  return finishStates(out, pos, x0, x1);
}

/** Put the two final states in front of the bytes (the decoder's initial states). */
function finishStates(out: Uint8Array, pos: number, x0: number, x1: number): Uint8Array {
  if (pos < 8) {
    out = growFront(out);
    pos += out.length >>> 1;
  }
  for (const x of [x1, x0]) {
    out[--pos] = x >>> 24; // little-endian, written backwards
    out[--pos] = (x >>> 16) & 0xff;
    out[--pos] = (x >>> 8) & 0xff;
    out[--pos] = x & 0xff;
  }
  return out.subarray(pos);
}

/** Double the buffer, keeping the written bytes at its end. */
function growFront(out: Uint8Array): Uint8Array {
  const next = new Uint8Array(out.length * 2);
  next.set(out, out.length);
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
  let ctx: Uint8Array | null = null;
  if (mode === MODE_ORDER0) {
    models.push(readModel(r, alphabetSize));
  } else if (mode === MODE_CONTEXT) {
    if (contexts === undefined) throw new ExcpError('ERR_INVALID_ARG', 'symbols: stream was coded with contexts; none given');
    const seen = contextsUsed(contexts);
    for (let c = 0; c < numContexts; c++) models.push(seen[c] ? readModel(r, alphabetSize) : undefined);
    for (let c = numContexts; c < 256; c++) {
      if (seen[c]) throw new ExcpError('ERR_OUT_OF_RANGE', `symbols: context ${c} >= numContexts ${numContexts}`);
    }
    ctx = contexts;
  } else {
    throw new ExcpError('ERR_CORRUPT', `symbols: unknown mode ${mode}`);
  }
  if (r.remaining < 8) throw new ExcpError('ERR_CORRUPT', `symbols: coded data of ${r.remaining} bytes holds no rANS states`);
  const t = decodeTables(models);
  const x0 = r.u32();
  const x1 = r.u32();
  if (x0 < LOW || x1 < LOW || x0 >= 2 ** STATE_BITS || x1 >= 2 ** STATE_BITS) throw new ExcpError('ERR_CORRUPT', 'symbols: rANS state out of range');
  const status = t.direct ? decodeDirect(bytes, r.offset, out, ctx, t, x0, x1) : decodeEscape(bytes, r.offset, out, ctx, t, x0, x1);
  if (status !== 0) throw new ExcpError('ERR_CORRUPT', `symbols: coded data does not match ${count} symbols`);
  return out;
}

/** Which context values occur. */
function contextsUsed(contexts: Uint8Array): Uint8Array {
  const seen = new Uint8Array(256);
  const n = contexts.length;
  let i = 0;
  if (contexts.byteOffset % 4 === 0) {
    // Four at a time (the byte order does not matter here).
    const words = new Uint32Array(contexts.buffer, contexts.byteOffset, n >>> 2);
    for (let k = 0; k < words.length; k++) {
      const x = words[k]!;
      seen[x & 0xff] = 1;
      seen[(x >>> 8) & 0xff] = 1;
      seen[(x >>> 16) & 0xff] = 1;
      seen[x >>> 24] = 1;
    }
    i = words.length << 2;
  }
  for (; i < n; i++) seen[contexts[i]!] = 1;
  return seen;
}

/** Per-context decode parameters and the concatenated slot tables. */
interface DecodeTables {
  /** Every used context is direct or constant: the branch-free loop applies. */
  direct: boolean;
  mps: Uint8Array;
  escape: Int32Array;
  bits: Uint8Array;
  mask: Int32Array;
  /** Start of the context's slot table. */
  at: Int32Array;
  /** at << 5 | bits, one load per symbol in the direct loop. */
  packed: Int32Array;
  /** Per slot: the symbol, its frequency, and slot - cum. */
  sym: Uint8Array;
  freq: Int32Array;
  bias: Int32Array;
}

/*
 * Decode tables are reused from call to call (a worker decodes one chunk at
 * a time; nothing returned points into them): no allocation per stream.
 */
let slotSym = new Uint8Array(1 << DIRECT_MAX_BITS);
let slotFreq = new Int32Array(1 << DIRECT_MAX_BITS);
let slotBias = new Int32Array(1 << DIRECT_MAX_BITS);
const ctxMps = new Uint8Array(256);
const ctxEscape = new Int32Array(256);
const ctxBits = new Uint8Array(256);
const ctxMask = new Int32Array(256);
const ctxAt = new Int32Array(256);
const ctxPacked = new Int32Array(256);

function decodeTables(models: (Model | undefined)[]): DecodeTables {
  let size = 0;
  let direct = true;
  for (const m of models) {
    if (m === undefined) continue;
    if (m.escape !== 0) size += 1 << m.rareBits;
    else size += 1;
    if (m.escape !== 0 && m.escape !== DIRECT) direct = false;
  }
  if (slotSym.length < size) {
    slotSym = new Uint8Array(size);
    slotFreq = new Int32Array(size);
    slotBias = new Int32Array(size);
  }
  let at = 0;
  for (let c = 0; c < models.length; c++) {
    const m = models[c];
    if (m === undefined) continue;
    ctxMps[c] = m.mps;
    ctxEscape[c] = m.escape;
    ctxAt[c] = at;
    if (m.escape === 0) {
      // Constant: a one-slot table of frequency 1 at 2^0, whose step is the identity.
      ctxBits[c] = 0;
      ctxMask[c] = 0;
      slotSym[at] = m.mps;
      slotFreq[at] = 1;
      slotBias[at] = 0;
      ctxPacked[c] = at << 5;
      at += 1;
      continue;
    }
    const b = m.rareBits;
    ctxBits[c] = b;
    ctxMask[c] = (1 << b) - 1;
    let slot = 0;
    for (let s = 0; s < m.rareFreqs.length; s++) {
      const f = m.rareFreqs[s]!;
      for (let k = 0; k < f; k++) {
        slotSym[at + slot + k] = s;
        slotFreq[at + slot + k] = f;
        slotBias[at + slot + k] = k;
      }
      slot += f;
    }
    ctxPacked[c] = (at << 5) | b;
    at += 1 << b;
  }
  return { direct, mps: ctxMps, escape: ctxEscape, bits: ctxBits, mask: ctxMask, at: ctxAt, packed: ctxPacked, sym: slotSym, freq: slotFreq, bias: slotBias };
}

/*
 * The decoding loops. Two symbols per iteration, one per state, so that the
 * two dependency chains (state -> slot -> table -> state) overlap. Reads past
 * the end yield 0 and make the stream invalid; a state entering a step is
 * always >= 2^23 (checked at the start, kept by renormalization), so every
 * step leaves it >= 2^7 and < 2^31 and renormalization reads at most 2
 * bytes: garbage decodes to garbage, never loops.
 * @returns 0 when the stream was valid (both states back at 2^23, every byte read)
 */

function decodeDirect(bytes: Uint8Array, offset: number, out: Uint8Array, contexts: Uint8Array | null, t: DecodeTables, x0: number, x1: number): number {
  const { packed, sym, freq, bias } = t;
  const end = bytes.length;
  const n = out.length;
  let pos = offset;
  let overrun = 0;
  let i = 0;
  for (; i + 1 < n; i += 2) {
    // packed[c] = table start << 5 | bits
    const p0 = packed[contexts === null ? 0 : contexts[i]!]!;
    const b0 = p0 & 31;
    const k0 = (p0 >>> 5) + (x0 & ((1 << b0) - 1));
    out[i] = sym[k0]!;
    x0 = freq[k0]! * (x0 >>> b0) + bias[k0]!;
    while (x0 < LOW) {
      x0 = (x0 << 8) | (pos < end ? bytes[pos++]! : (overrun++, 0));
    }
    const p1 = packed[contexts === null ? 0 : contexts[i + 1]!]!;
    const b1 = p1 & 31;
    const k1 = (p1 >>> 5) + (x1 & ((1 << b1) - 1));
    out[i + 1] = sym[k1]!;
    x1 = freq[k1]! * (x1 >>> b1) + bias[k1]!;
    while (x1 < LOW) {
      x1 = (x1 << 8) | (pos < end ? bytes[pos++]! : (overrun++, 0));
    }
  }
  if (i < n) {
    const p0 = packed[contexts === null ? 0 : contexts[i]!]!;
    const b0 = p0 & 31;
    const k0 = (p0 >>> 5) + (x0 & ((1 << b0) - 1));
    out[i] = sym[k0]!;
    x0 = freq[k0]! * (x0 >>> b0) + bias[k0]!;
    while (x0 < LOW) {
      x0 = (x0 << 8) | (pos < end ? bytes[pos++]! : (overrun++, 0));
    }
  }
  return overrun === 0 && pos === end && x0 === LOW && x1 === LOW ? 0 : 1;
}

function decodeEscape(bytes: Uint8Array, offset: number, out: Uint8Array, contexts: Uint8Array | null, t: DecodeTables, x0: number, x1: number): number {
  const { mps, escape, bits, mask, at, sym, freq, bias } = t;
  const end = bytes.length;
  let pos = offset;
  let overrun = 0;
  for (let i = 0; i < out.length; i++) {
    const c = contexts === null ? 0 : contexts[i]!;
    const e = escape[c]!;
    let x = (i & 1) === 0 ? x0 : x1;
    let table = true;
    if (e !== DIRECT) {
      const slot = x & (SPLIT_TOTAL - 1);
      if (slot >= e) {
        x = (SPLIT_TOTAL - e) * (x >>> SPLIT_BITS) + slot - e; // MPS (always in a constant context, e = 0)
        out[i] = mps[c]!;
        table = false;
      } else {
        x = e * (x >>> SPLIT_BITS) + slot;
      }
      while (x < LOW) {
        x = (x << 8) | (pos < end ? bytes[pos++]! : (overrun++, 0));
      }
    }
    if (table) {
      const k = at[c]! + (x & mask[c]!);
      out[i] = sym[k]!;
      x = freq[k]! * (x >>> bits[c]!) + bias[k]!;
      while (x < LOW) {
        x = (x << 8) | (pos < end ? bytes[pos++]! : (overrun++, 0));
      }
    }
    if ((i & 1) === 0) x0 = x;
    else x1 = x;
  }
  return overrun === 0 && pos === end && x0 === LOW && x1 === LOW ? 0 : 1;
}
