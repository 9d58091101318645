/**
 * The per-table models of the symbol coder (symbols.ts holds the format):
 * how the encoder picks the cheapest model for a histogram, and how a model
 * is written and read back. Kept apart from the rANS loops so that the cost
 * model can be read and tuned without wading through the hot path, and so
 * that the encoder and decoder loops share one definition of the constants.
 */
import { ByteReader, ByteWriter, varintSize } from '../core/bytes.js';
import { ExcpError } from '../core/errors.js';
import { codedBits, empiricalEntropyBits, frequencyTableBytes, normalizeFrequencies, readFrequencies, writeFrequencies } from './frequency.js';

/** Level-1 precision of an escape model: the finest the coder allows, for extreme skews. */
export const SPLIT_BITS = 16;
export const SPLIT_TOTAL = 1 << SPLIT_BITS;
/** The escape value that marks a direct model. */
export const DIRECT = SPLIT_TOTAL;
/** Finest direct table the encoder builds (decode tables stay small: 2^12 slots). */
export const DIRECT_MAX_BITS = 12;
/** rANS: states live in [LOW, 2^31), renormalized a byte at a time. */
export const LOW = 1 << 23;
export const STATE_BITS = 31;

/** One table. */
export interface Model {
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

/**
 * Build the cheapest model for one histogram (n > 0 symbols).
 * @param counts the histogram over the alphabet
 * @param n the sum of counts
 * @returns the model, with its estimated cost in bits
 */
export function buildModel(counts: Uint32Array, n: number): Model {
  let mps = 0;
  for (let s = 1; s < counts.length; s++) if (counts[s]! > counts[mps]!) mps = s;
  const rare = n - counts[mps]!;
  if (rare === 0) return { mps, escape: 0, rareBits: 0, rareFreqs: new Uint32Array(0), bits: 16 };
  const direct = bestTable(counts, Math.min(DIRECT_MAX_BITS, bitLength(n) + 1));
  const directBits = 8 * (2 + varintSize(DIRECT)) + direct.bits;
  const escape = Math.min(SPLIT_TOTAL - 1, Math.max(1, Math.round((rare * SPLIT_TOTAL) / n)));
  const splitBits = rare * Math.log2(SPLIT_TOTAL / escape) + counts[mps]! * Math.log2(SPLIT_TOTAL / (SPLIT_TOTAL - escape));
  const rareCounts = counts.slice();
  rareCounts[mps] = 0;
  const split = bestTable(rareCounts, Math.min(16, bitLength(rare) + 1));
  const escapeBits = 8 * (2 + varintSize(escape)) + splitBits + split.bits;
  // The escape model decodes with a data-dependent branch: take it only when it clearly pays.
  if (escapeBits < directBits - Math.max(64, directBits / 1000)) return { mps, escape, rareBits: split.rareBits, rareFreqs: split.rareFreqs, bits: escapeBits };
  return { mps, escape: DIRECT, rareBits: direct.rareBits, rareFreqs: direct.rareFreqs, bits: directBits };
}

/**
 * Write a model in the stream format (see symbols.ts).
 * @param w destination
 * @param m the model
 */
export function writeModel(w: ByteWriter, m: Model): void {
  w.u8(m.mps);
  w.varint(m.escape);
  if (m.escape === 0) return;
  w.u8(m.rareBits);
  writeFrequencies(w, m.rareFreqs, m.rareBits);
}

/**
 * Read a model written by {@link writeModel}.
 * @param r source, advanced past the model
 * @param alphabetSize as given to the encoder
 * @returns the model (its `bits` estimate is 0)
 * @throws ExcpError ERR_CORRUPT for an impossible model
 */
export function readModel(r: ByteReader, alphabetSize: number): Model {
  const mps = r.u8();
  if (mps >= alphabetSize) throw new ExcpError('ERR_CORRUPT', `symbols: most probable symbol ${mps} >= alphabet ${alphabetSize}`);
  const escape = r.varint();
  if (escape === 0) return { mps, escape, rareBits: 0, rareFreqs: new Uint32Array(0), bits: 0 };
  if (escape > DIRECT) throw new ExcpError('ERR_CORRUPT', `symbols: escape frequency ${escape} > ${DIRECT}`);
  const rareBits = r.u8();
  if (rareBits > 16) throw new ExcpError('ERR_CORRUPT', `symbols: table precision ${rareBits} > 16 bits`);
  return { mps, escape, rareBits, rareFreqs: readFrequencies(r, alphabetSize, rareBits), bits: 0 };
}
