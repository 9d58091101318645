/**
 * The rANS encoding loops of the symbol coder (format in symbols.ts). The
 * hot path of compression, kept in its own module so that the loops and the
 * tables they read sit together, away from model selection.
 */
import { ExcpError } from '../core/errors.js';
import { DIRECT, LOW, type Model, SPLIT_BITS, SPLIT_TOTAL, STATE_BITS } from './symbol-model.js';

/**
 * Code symbols with the given models into rANS bytes (the two states, then
 * the renormalization bytes).
 * @param symbols values < alphabetSize
 * @param contexts per-symbol model index, or null for the single model 0
 * @param alphabetSize 1..256
 * @param models one per context value (undefined where unused)
 * @param capacity first guess of the output size in bytes
 * @returns the coded bytes
 * @throws ExcpError ERR_IMPOSSIBLE_SYMBOL for a symbol its model cannot code
 */
export function encodeRans(symbols: Uint8Array, contexts: Uint8Array | null, alphabetSize: number, models: (Model | undefined)[], capacity: number): Uint8Array {
  return encodeLoop(symbols, contexts, alphabetSize, encodeTables(models, alphabetSize), capacity);
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
