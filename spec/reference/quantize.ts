/**
 * Reference (spec only): quantisation of a whole pruned stream, gathering
 * its own values (lib/method/encode.ts gathers in its pruning passes and
 * calls quantizeGathered directly).
 */
import { type QuantizedStream, quantizeGathered } from '../../lib/method/quantize.js';
import { type QuantDomain } from '../../lib/core/options.js';

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
  return quantizeGathered(nzAll.subarray(0, nonzero), slot, count, bits, domain);
}

/** Per-thread scratch of quantizeStream (grown on demand, never returned). */
let nonzeroScratch = new Float32Array(0);
let slotScratch = new Int32Array(0);


/**
 * Full-length symbols of a stream coded over a selection (0 where unselected),
 * which is the selection of the next stream (m is selected by dW, v by m).
 * @param symbols symbols at selected positions
 * @param select the selection (null: `symbols` is already full length)
 * @param n full length
 * @param out optional destination of length n (every position is written); else a fresh array
 * @returns full-length symbols (`symbols` itself when select is null)
 */
export function expandSymbols(symbols: Uint8Array, select: Uint8Array | null, n: number, out: Uint8Array = new Uint8Array(n)): Uint8Array {
  if (!select) return symbols;
  // Branch-free: symbols[j] past the end reads as undefined only when the
  // position is unselected, and then the 0 from the mask wins.
  const last = symbols.length;
  for (let i = 0, j = 0; i < n; i++) {
    const selected = +(select[i] !== 0);
    out[i] = selected * symbols[j < last ? j : 0]!;
    j += selected;
  }
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

