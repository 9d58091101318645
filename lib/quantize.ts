/**
 * Stage 4 (pure): turn a pruned stream into a codebook and symbols, and back.
 *
 * A stream is a Float32Array in which pruned entries are exact zeros. Only
 * the positions selected by `positions` (a mask stream's nonzero symbols) are
 * quantised; symbol 0 means "the value 0", symbols 1..K mean centers[s - 1].
 */
import { type QuantDomain, clusterBoundaries, fitKMeans } from './kmeans.js';

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
  // One pass: count the selected positions and gather the nonzero selected
  // values with their index among the selected (where their symbol goes).
  if (nonzeroScratch.length < n) {
    nonzeroScratch = new Float32Array(n);
    slotScratch = new Int32Array(n);
  }
  const nzAll = nonzeroScratch;
  const slot = slotScratch;
  // Branch-free: the writes past the current end are overwritten or ignored
  // (nonzero <= count <= i), and the counters move by 0 or 1. Kept and
  // pruned values mix at random, so a branch here mispredicts constantly.
  let count = 0;
  let nonzero = 0;
  if (select) {
    for (let i = 0; i < n; i++) {
      const selected = +(select[i] !== 0);
      const x = values[i]!;
      nzAll[nonzero] = x;
      slot[nonzero] = count;
      nonzero += selected & +(x !== 0);
      count += selected;
    }
  } else {
    count = n;
    for (let i = 0; i < n; i++) {
      const x = values[i]!;
      nzAll[nonzero] = x;
      slot[nonzero] = i;
      nonzero += +(x !== 0);
    }
  }
  const nz = nzAll.subarray(0, nonzero);
  const k = (1 << bits) - 1;
  const centers = fitKMeans(nz, k, domain);
  // assignClusters + refineCenters + scatter, fused (same arithmetic, same order).
  const symbols = new Uint8Array(count);
  // Branch-free search: the boundaries padded with +Infinity to a power of
  // two; p counts the boundaries below x, exactly as the binary search of
  // assignClusters (`x > bound`), so the symbol is p + 1.
  const bounds = clusterBoundaries(centers, domain);
  let size = 1;
  while (size < bounds.length + 1) size <<= 1;
  const padded = new Float64Array(size).fill(Infinity);
  padded.set(bounds);
  const refine = domain !== 'log';
  const sums = new Float64Array(centers.length);
  const counts = new Float64Array(centers.length);
  for (let t = 0; t < nonzero; t++) {
    const x = nz[t]!;
    let p = 0;
    for (let step = size >> 1; step >= 1; step >>= 1) p += +(x > padded[p + step - 1]!) * step;
    symbols[slot[t]!] = p + 1;
    if (refine) {
      sums[p]! += x;
      counts[p]!++;
    }
  }
  if (refine) for (let j = 0; j < centers.length; j++) if (counts[j]! > 0) centers[j] = sums[j]! / counts[j]!;
  return { domain, centers, symbols };
}

/** Per-thread scratch of quantizeStream (grown on demand, never returned). */
let nonzeroScratch = new Float32Array(0);
let slotScratch = new Int32Array(0);

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
 * Values of a stream selected by a stream that is itself selected (v by m,
 * m by dW): the same as `dequantizeStream(q, expandSymbols(mid, outer, n),
 * out, fill)` without building the full-length middle selection.
 * @param q the stream (v)
 * @param outer the outer selection, full length (dW symbols), or null for all
 * @param mid the middle stream's symbols at the outer selection (m symbols)
 * @param out full-length destination; positions the middle stream does not select get `fill`
 * @param fill value at unselected positions
 * @returns `out`
 */
export function dequantizeNested(q: QuantizedStream, outer: Uint8Array | null, mid: Uint8Array, out: Float32Array, fill = 0): Float32Array {
  const { centers, symbols } = q;
  const n = out.length;
  let j = 0;
  let k = 0;
  for (let i = 0; i < n; i++) {
    let selected: number;
    if (outer) {
      if (outer[i] === 0) {
        out[i] = fill;
        continue;
      }
      selected = mid[j++]!;
    } else {
      selected = mid[i]!;
    }
    if (selected === 0) {
      out[i] = fill;
    } else {
      const s = symbols[k++]!;
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

/**
 * The nonzero entries of a symbol array, in order: for a selecting stream,
 * the contexts of the next stream (equal to `selectionContexts(select,
 * count)`, and its length is the count of selected positions).
 * @param select symbols (full-length, or the selecting stream's own symbols)
 * @returns the nonzero symbols in order
 */
export function nonzeroSymbols(select: Uint8Array): Uint8Array {
  const n = select.length;
  if (selectScratch.length < n) selectScratch = new Uint8Array(n);
  const out = selectScratch;
  let j = 0;
  for (let i = 0; i < n; i++) {
    const s = select[i]!;
    out[j] = s;
    j += +(s !== 0);
  }
  return out.slice(0, j);
}

let selectScratch = new Uint8Array(0);
