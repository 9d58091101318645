/**
 * The symbol decoder of container format 1: static tables and the binary
 * range coder (format 2 codes symbols with rANS, lib/symbols.ts). Kept, decode
 * only, so containers written by excp before format 2 still restore; the
 * layout is the "stream" paragraph of FORMAT.md's "Version 1" section.
 *
 * Per context: a split "most probable symbol (MPS) or not" at 16-bit
 * precision, then a table of 2^rareBits for the other symbols. The stream:
 * u8 mode (0 raw, 1 constant, 2 one model, 3 one model per context value that
 * occurs, ascending), the models (u8 mps; varint escape, the level-1
 * frequency of "not MPS" out of 2^16, 0 for a constant context; then u8
 * rareBits and the frequency table), then the range-coded bytes.
 */
import { ByteReader } from '../core/bytes.js';
import { ExcpError } from '../core/errors.js';
import { buildDecodeTable, cumulative, readFrequencies } from './frequency.js';
import { readStreamHead } from './symbols.js';

const SPLIT_BITS = 16;
const SPLIT_TOTAL = 1 << SPLIT_BITS;
/** Range coder constants (see READ ME FIRST in range-coder.ts). */
const TOP = 0x800000;
const MAX_RANGE = 0x7fffffff;

/** One context's model. */
interface Model {
  mps: number;
  escape: number;
  rareBits: number;
  rareFreqs: Uint32Array;
}

function readModel(r: ByteReader, alphabetSize: number): Model {
  const mps = r.u8();
  if (mps >= alphabetSize) throw new ExcpError('ERR_CORRUPT', `symbols: most probable symbol ${mps} >= alphabet ${alphabetSize}`);
  const escape = r.varint();
  if (escape === 0) return { mps, escape, rareBits: 0, rareFreqs: new Uint32Array(0) };
  if (escape >= SPLIT_TOTAL) throw new ExcpError('ERR_CORRUPT', `symbols: escape frequency ${escape} >= ${SPLIT_TOTAL}`);
  const rareBits = r.u8();
  if (rareBits > 16) throw new ExcpError('ERR_CORRUPT', `symbols: table precision ${rareBits} > 16 bits`);
  return { mps, escape, rareBits, rareFreqs: readFrequencies(r, alphabetSize, rareBits) };
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

function flatten(models: (Model | undefined)[], alphabetSize: number): Tables {
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
  t.decode = new Uint8Array(decodeSize);
  for (let c = 0; c < k; c++) {
    const m = models[c];
    if (m !== undefined && m.escape > 0) buildDecodeTable(m.rareFreqs, m.rareBits, t.decode.subarray(t.decodeAt[c]!));
  }
  return t;
}

/**
 * Decode a format-1 symbol stream (arguments as lib/symbols.ts decodeSymbols).
 * @throws ExcpError ERR_CORRUPT / ERR_TRUNCATED on inconsistent input
 */
export function decodeSymbolsV1(bytes: Uint8Array, count: number, alphabetSize: number, contexts?: Uint8Array, numContexts = 256): Uint8Array {
  const head = readStreamHead(bytes, count, alphabetSize, contexts, numContexts, readModel);
  if ('symbols' in head) return head.symbols;
  const { r, out, models, ctx } = head;
  const t = flatten(models, alphabetSize);
  const { overrun, unread } = decodeLoop(bytes, r.offset, out, ctx, alphabetSize, t);
  if (overrun > 4 || unread > 0) {
    throw new ExcpError('ERR_CORRUPT', `symbols: coded data does not match ${count} symbols (overrun ${overrun}, unread ${unread})`);
  }
  return out;
}

function decodeLoop(bytes: Uint8Array, offset: number, out: Uint8Array, contexts: Uint8Array | null, alphabetSize: number, t: Tables): { overrun: number; unread: number } {
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
    const c = contexts === null ? 0 : contexts[i]!;
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
