/**
 * The rANS decoding loops of the symbol coder (format in symbols.ts). The
 * hot path of restore, kept in its own module with the reusable slot tables
 * it reads, away from stream parsing and model selection.
 */
import { DIRECT, DIRECT_MAX_BITS, LOW, type Model, SPLIT_BITS, SPLIT_TOTAL } from './symbol-model.js';

/**
 * Decode `out.length` symbols from rANS bytes.
 * @param bytes the coded data
 * @param offset where the renormalization bytes start (after the two states)
 * @param out receives the symbols
 * @param contexts per-symbol model index, or null for the single model 0
 * @param models one per context value (undefined where unused)
 * @param x0 initial state of even symbols
 * @param x1 initial state of odd symbols
 * @returns 0 when the stream was valid (both states back at 2^23, every byte read)
 */
export function decodeRans(bytes: Uint8Array, offset: number, out: Uint8Array, contexts: Uint8Array | null, models: (Model | undefined)[], x0: number, x1: number): number {
  const t = decodeTables(models);
  return t.direct ? decodeDirect(bytes, offset, out, contexts, t, x0, x1) : decodeEscape(bytes, offset, out, contexts, t, x0, x1);
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
