/**
 * Stage 4 (pure): turn a pruned stream into a codebook and symbols, and back.
 *
 * A stream is a Float32Array in which pruned entries are exact zeros. Only
 * the positions selected by `positions` (a mask stream's nonzero symbols) are
 * quantised; symbol 0 means "the value 0", symbols 1..K mean centers[s - 1].
 */
import { type QuantDomain, assignClusters, fitKMeans, refineCenters } from './kmeans.js';

/** A quantised stream. */
export interface QuantizedStream {
  domain: QuantDomain;
  /** Ascending centers; at most 2^bits - 1. */
  centers: Float32Array;
  /** One symbol per selected position. */
  symbols: Uint8Array;
}

/**
 * Quantise the values at the selected positions.
 * @param values the stream (zeros are pruned entries)
 * @param select positions to code: null for all, else a symbol array of the same length whose nonzero entries select
 * @param bits index bits (1..8)
 * @param domain clustering domain
 * @returns codebook and symbols
 */
export function quantizeStream(values: Float32Array, select: Uint8Array | null, bits: number, domain: QuantDomain): QuantizedStream {
  const n = values.length;
  let count = n;
  if (select) {
    count = 0;
    for (let i = 0; i < n; i++) if (select[i] !== 0) count++;
  }
  const picked = select ? new Float32Array(count) : values;
  if (select) {
    let j = 0;
    for (let i = 0; i < n; i++) if (select[i] !== 0) picked[j++] = values[i]!;
  }
  let nonzero = 0;
  for (let i = 0; i < count; i++) if (picked[i] !== 0) nonzero++;
  const nz = new Float32Array(nonzero);
  for (let i = 0, j = 0; i < count; i++) if (picked[i] !== 0) nz[j++] = picked[i]!;
  const k = (1 << bits) - 1;
  const centers = fitKMeans(nz, k, domain);
  const nzSymbols = assignClusters(nz, centers, domain, new Uint8Array(nonzero));
  refineCenters(nz, nzSymbols, centers, domain);
  const symbols = new Uint8Array(count);
  for (let i = 0, j = 0; i < count; i++) if (picked[i] !== 0) symbols[i] = nzSymbols[j++]!;
  return { domain, centers, symbols };
}

/**
 * Values of a quantised stream scattered back to full length.
 * @param q the stream
 * @param select the same selection used to quantise (null for all)
 * @param out full-length destination; unselected positions are set to `fill`
 * @param fill value at unselected positions
 * @returns `out`
 */
export function dequantizeStream(q: QuantizedStream, select: Uint8Array | null, out: Float32Array, fill = 0): Float32Array {
  const { centers, symbols } = q;
  if (!select) {
    for (let i = 0; i < out.length; i++) {
      const s = symbols[i]!;
      out[i] = s === 0 ? 0 : centers[s - 1]!;
    }
    return out;
  }
  for (let i = 0, j = 0; i < out.length; i++) {
    if (select[i] === 0) {
      out[i] = fill;
    } else {
      const s = symbols[j++]!;
      out[i] = s === 0 ? 0 : centers[s - 1]!;
    }
  }
  return out;
}

/**
 * Full-length symbols of a stream coded over a selection (0 where unselected),
 * which is the selection of the next stream (m is selected by dW, v by m).
 * @param symbols symbols at selected positions
 * @param select the selection (null: `symbols` is already full length)
 * @param n full length
 * @returns full-length symbols
 */
export function expandSymbols(symbols: Uint8Array, select: Uint8Array | null, n: number): Uint8Array {
  if (!select) return symbols;
  const out = new Uint8Array(n);
  for (let i = 0, j = 0; i < n; i++) if (select[i] !== 0) out[i] = symbols[j++]!;
  return out;
}

/**
 * The symbols of the selecting stream at the selected positions: the context
 * in which the next stream's symbols are coded (m given dW, v given m).
 * @param select full-length selecting symbols
 * @param count number of selected positions
 * @returns one context per selected position
 */
export function selectionContexts(select: Uint8Array, count: number): Uint8Array {
  const out = new Uint8Array(count);
  for (let i = 0, j = 0; i < select.length; i++) if (select[i] !== 0) out[j++] = select[i]!;
  return out;
}
