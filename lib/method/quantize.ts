/**
 * Stage 4 (pure): turn a pruned stream into a codebook and symbols, and back.
 *
 * A stream is a Float32Array in which pruned entries are exact zeros. Only
 * the positions selected by `positions` (a mask stream's nonzero symbols) are
 * quantised; symbol 0 means "the value 0", symbols 1..K mean centers[s - 1].
 */
import { clusterBoundaries, fitKMeans } from './kmeans.js';
import { type QuantDomain } from '../core/options.js';

/** A quantised stream. */
export interface QuantizedStream {
  domain: QuantDomain;
  /** Ascending centers; at most 2^bits - 1. */
  centers: Float32Array;
  /** One symbol per selected position. */
  symbols: Uint8Array;
}

/**
 * The second half of quantizeStream, for an encoder that gathered the values
 * itself (in the same pass that pruned them): fit the codebook to the
 * gathered values and place each symbol.
 * @param nz the nonzero selected values, in stream order
 * @param slot for each of them, its index among the selected positions
 * @param count number of selected positions (the length of the symbols)
 * @param bits index bits (1..8)
 * @param domain clustering domain
 * @param ordered if given (length >= nz.length), receives the symbol of each gathered value in order: the nonzero symbols of the stream, which are the contexts of the stream it selects
 * @param members if given (linear domain only, length >= 2^bits - 1), receives how many values each center got (symbol s: members[s - 1])
 * @returns codebook and symbols (0 at the selected positions not gathered)
 */
export function quantizeGathered(
  nz: Float32Array, slot: Int32Array, count: number, bits: number, domain: QuantDomain, ordered: Uint8Array | null = null, members: Float64Array | null = null,
): QuantizedStream {
  const nonzero = nz.length;
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
  if (size === 1) {
    // One center (or none): every gathered value is symbol 1.
    for (let t = 0; t < nonzero; t++) symbols[slot[t]!] = 1;
    if (ordered) ordered.fill(1, 0, nonzero);
    if (refine && nonzero > 0 && centers.length > 0) {
      let sum = 0;
      for (let t = 0; t < nonzero; t++) sum += nz[t]!;
      counts[0] = nonzero;
      sums[0] = sum;
    }
  } else if (size === 2 || size === 4) {
    // Up to 3 boundaries (1- and 2-bit codebooks): unrolled search, p = 2 *
    // (x > b1) + (x > the bound below), with b1 = +Infinity for size 2.
    const b0 = padded[0]!;
    const b1 = size === 4 ? padded[1]! : Infinity;
    const below = Float64Array.of(b0, size === 4 ? padded[2]! : Infinity);
    // Per-center sums and counts in locals, not arrays (an array element
    // updated over and over was the slow part). Adding x * 0, a signed zero,
    // changes no sum, so each sum is the same additions in the same order.
    let s0 = 0, s1 = 0, s2 = 0, s3 = 0, c0 = 0, c1 = 0, c2 = 0, c3 = 0;
    for (let t = 0; t < nonzero; t++) {
      const x = nz[t]!;
      const hi = +(x > b1);
      const p = 2 * hi + +(x > below[hi]!);
      symbols[slot[t]!] = p + 1;
      if (ordered) ordered[t] = p + 1;
      const e0 = +(p === 0), e1 = +(p === 1), e2 = +(p === 2), e3 = +(p === 3);
      s0 += x * e0;
      s1 += x * e1;
      s2 += x * e2;
      s3 += x * e3;
      c0 += e0;
      c1 += e1;
      c2 += e2;
      c3 += e3;
    }
    if (refine) {
      const s4 = [s0, s1, s2, s3];
      const c4 = [c0, c1, c2, c3];
      for (let j = 0; j < centers.length; j++) {
        sums[j] = s4[j]!;
        counts[j] = c4[j]!;
      }
    }
  } else {
    for (let t = 0; t < nonzero; t++) {
      const x = nz[t]!;
      let p = 0;
      for (let step = size >> 1; step >= 1; step >>= 1) p += +(x > padded[p + step - 1]!) * step;
      symbols[slot[t]!] = p + 1;
      if (ordered) ordered[t] = p + 1;
      if (refine) {
        sums[p]! += x;
        counts[p]!++;
      }
    }
  }
  if (refine) for (let j = 0; j < centers.length; j++) if (counts[j]! > 0) centers[j] = sums[j]! / counts[j]!;
  if (members && refine) members.set(counts);
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
  let i = 0;
  if (LITTLE_ENDIAN && select.byteOffset % 4 === 0) {
    // Four symbols at a time, skipping all-zero words (most of a pruned
    // stream); within a word, branch-free.
    const words = new Uint32Array(select.buffer, select.byteOffset, n >>> 2);
    for (let k = 0; k < words.length; k++) {
      const x = words[k]!;
      if (x === 0) continue;
      let s = x & 0xff;
      out[j] = s;
      j += +(s !== 0);
      s = (x >>> 8) & 0xff;
      out[j] = s;
      j += +(s !== 0);
      s = (x >>> 16) & 0xff;
      out[j] = s;
      j += +(s !== 0);
      s = x >>> 24;
      out[j] = s;
      j += +(s !== 0);
    }
    i = words.length << 2;
  }
  for (; i < n; i++) {
    const s = select[i]!;
    out[j] = s;
    j += +(s !== 0);
  }
  return out.slice(0, j);
}

let selectScratch = new Uint8Array(0);
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;
