/**
 * The payload of a chunk coded by method 2 (spec/FORMAT.md, "Chunk payload,
 * method 2"): a weight residual quantised with subtractive dither, Adam's v
 * as row and column factors, and Adam's m as its step m / sqrt(v^),
 * quantised where the weight moved. Payload flag 16 says a chunk is coded
 * so; the streams and exceptions are framed as in method 1 (streams.ts).
 */
import type { ByteReader, ByteWriter } from '../../core/bytes.js';
import { ExcpError } from '../../core/errors.js';
import { decodeExact, encodeExact } from '../../coding/exact.js';
import { decodeSymbols, encodeSymbols } from '../../coding/symbols.js';
import type { QuantizedStream } from '../quantize.js';
import {
  type Exceptions, type SymbolCost, decodeCorrupt, readBlob, readExceptions, readStream, streamEntropyBits,
  writeBlob, writeExceptions, writeStream,
} from './streams.js';

/** A weight residual coded with subtractive dither. */
export interface DitheredWeight {
  /** The grid step, in units of the scaled residual (0: the weight is its base). */
  step: number;
  /** The per-element scale's clip (0: no scale; else clamp((v^ / mean v^)^(1/4), 1/clip, clip)). */
  clip: number;
  /** One per element: the index k as a zigzag symbol (0, +1 -> 1, -1 -> 2, +2 -> 3, ...), |k| <= MAX_INDEX. */
  symbols: Uint8Array;
  exceptions: Exceptions;
}

/** Adam's moments as a factored v and m as its step. */
export interface FactoredMoments {
  /** v's row factors (lib/method/rank1.ts), one per row of the chunk's grid. */
  rows: Float32Array;
  /** v's column factors, one per column of the chunk's grid. */
  cols: Float32Array;
  /**
   * m / sqrt(v^) quantised (symbol 0: m restores as 0), at the positions
   * whose weight index is not 0 (every position for an exact weight).
   */
  step: QuantizedStream;
  /**
   * m where the step stream leaves it 0: drift * (dW^ * sqrt(v^)), the
   * restored residual in Adam's units times one least-squares gain per
   * chunk (0 for an exact weight). Format 3 and later.
   */
  drift: number;
  mExceptions: Exceptions;
  vExceptions: Exceptions;
}

/** The largest |index| a dithered weight stores; a larger one becomes an exception (the exact weight). */
export const MAX_INDEX = 127;

/** The zigzag symbol of an index (|k| <= MAX_INDEX), without a branch: 2k - 1 for k > 0, -2k otherwise. */
export function indexSymbol(k: number): number {
  return (-k << 1) ^ (-k >> 31);
}

/** The index of each zigzag symbol (a table: the symbols of a chunk come in no order a branch could predict). */
const INDEX = Int16Array.from({ length: 256 }, (_, s) => (s & 1 ? (s + 1) >> 1 : -(s >> 1)));

/** The index of a zigzag symbol. */
export function symbolIndex(s: number): number {
  return INDEX[s]!;
}

/**
 * The context of m at a position where the weight moved: the size class
 * of its index (1, 2, 3 or more) and its sign, 1..6.
 */
export function moveClass(s: number): number {
  const k = (s + 1) >> 1;
  return (k > 3 ? 3 : k) + (s & 1 ? 0 : 3);
}

/** Contexts of m: one per position where the weight index is not 0. */
export const MOVE_CLASSES = 7;

/** moveClass of each symbol (0 for symbol 0). */
const CLASS = Uint8Array.from({ length: 256 }, (_, s) => (s === 0 ? 0 : moveClass(s)));

/**
 * 1 for a nonzero symbol (0..255), 0 for 0, without a branch: about a
 * quarter of a chunk's weights move, in no order a branch could predict,
 * and the loops over the moved positions ran at the speed of mispredictions.
 */
export function movedBit(s: number): number {
  return (s + 255) >> 8;
}

/** The m contexts of a dithered weight's symbols: the class of each nonzero symbol, in order. */
export function moveContexts(symbols: Uint8Array): Uint8Array {
  const n = symbols.length;
  // Room for every position and one more: every position writes, only the moved ones advance.
  const out = new Uint8Array(n + 1);
  let t = 0;
  for (let i = 0; i < n; i++) {
    const s = symbols[i]!;
    out[t] = CLASS[s]!;
    t += movedBit(s);
  }
  return out.subarray(0, t);
}

/**
 * Write a dithered weight.
 * @param cost accumulates the symbols' entropy and coded size
 */
export function writeDithered(w: ByteWriter, d: DitheredWeight, cost: SymbolCost | undefined): void {
  w.f32(d.step);
  w.f32(d.clip);
  let alphabet = 2;
  for (let i = 0; i < d.symbols.length; i++) if (d.symbols[i]! + 1 > alphabet) alphabet = d.symbols[i]! + 1;
  w.u8(alphabet - 1);
  const coded = encodeSymbols(d.symbols, alphabet);
  if (cost) {
    cost.entropyBits += streamEntropyBits(d.symbols, undefined);
    cost.symbolBits += 8 * coded.length;
  }
  writeBlob(w, coded);
  writeExceptions(w, d.exceptions);
}

/** Read a dithered weight of n elements. */
export function readDithered(r: ByteReader, n: number, elementBytes: number): DitheredWeight {
  const step = r.f32();
  const clip = r.f32();
  if (!(step >= 0 && Number.isFinite(step)) || !(clip === 0 || (clip >= 1 && Number.isFinite(clip)))) {
    throw new ExcpError('ERR_CORRUPT', `payload: dithered weight step ${step}, clip ${clip}`);
  }
  const alphabet = r.u8() + 1;
  if (alphabet < 2 || alphabet > 2 * MAX_INDEX + 1) throw new ExcpError('ERR_CORRUPT', `payload: dithered weight alphabet ${alphabet}`);
  const symbols = decodeCorrupt(() => decodeSymbols(readBlob(r), n, alphabet));
  return { step, clip, symbols, exceptions: readExceptions(r, n, elementBytes) };
}

/**
 * Write factored moments.
 * @param contexts the m stream's contexts (moveContexts of the weight symbols), or undefined for an exact weight
 */
export function writeFactored(w: ByteWriter, f: FactoredMoments, contexts: Uint8Array | undefined, cost: SymbolCost | undefined): void {
  writeBlob(w, encodeExact(new Uint8Array(f.rows.buffer, f.rows.byteOffset, f.rows.byteLength), 'F32'));
  writeBlob(w, encodeExact(new Uint8Array(f.cols.buffer, f.cols.byteOffset, f.cols.byteLength), 'F32'));
  writeStream(w, f.step, contexts, contexts ? MOVE_CLASSES : 0, cost);
  w.f32(f.drift);
  writeExceptions(w, f.mExceptions);
  writeExceptions(w, f.vExceptions);
}

/**
 * Read factored moments.
 * @param grid rows and columns of the chunk's grid (lib/method/rank1.ts chunkGrid)
 * @param count positions the m stream codes
 * @param contexts its contexts (moveContexts), or undefined for an exact weight
 */
export function readFactored(r: ByteReader, n: number, grid: { rows: number; cols: number }, count: number, contexts: Uint8Array | undefined, elementBytes: number, driftless = false): FactoredMoments {
  const factors = (k: number, what: string): Float32Array => {
    const bytes = decodeCorrupt(() => decodeExact(readBlob(r), 'F32', 4 * k));
    const out = new Float32Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + 4 * k));
    for (const x of out) if (!(x >= 0 && Number.isFinite(x))) throw new ExcpError('ERR_CORRUPT', `payload: ${what} factor ${x}`);
    return out;
  };
  const rows = factors(grid.rows, 'v row');
  const cols = factors(grid.cols, 'v column');
  const step = readStream(r, count, contexts, contexts ? MOVE_CLASSES : 0, false);
  // Format 3 wrote no drift gain: m is then 0 wherever the step stream leaves it.
  const drift = driftless ? 0 : r.f32();
  if (!Number.isFinite(drift)) throw new ExcpError('ERR_CORRUPT', `payload: m drift ${drift}`);
  return { rows, cols, step, drift, mExceptions: readExceptions(r, n, elementBytes), vExceptions: readExceptions(r, n, elementBytes) };
}
