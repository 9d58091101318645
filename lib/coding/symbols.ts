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
 *
 * This module holds the stream format (modes, argument checks, histograms);
 * the models live in symbol-model.ts and the hot loops in rans-encoder.ts and
 * rans-decoder.ts, so each can be read on its own.
 */
import { ByteReader, ByteWriter } from '../core/bytes.js';
import { ExcpError } from '../core/errors.js';
import { countSymbols } from './frequency.js';
import { decodeRans } from './rans-decoder.js';
import { encodeRans } from './rans-encoder.js';
import { buildModel, LOW, type Model, readModel, STATE_BITS, writeModel } from './symbol-model.js';

const MODE_RAW = 0;
const MODE_CONST = 1;
const MODE_ORDER0 = 2;
const MODE_CONTEXT = 3;

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
  const coded = encodeRans(symbols, mode === MODE_CONTEXT ? contexts! : null, alphabetSize, models, Math.ceil(estimatedBits / 8) + 64);
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
  const head = readStreamHead(bytes, count, alphabetSize, contexts, numContexts, readModel);
  if ('symbols' in head) return head.symbols;
  const { r, out, models, ctx } = head;
  if (r.remaining < 8) throw new ExcpError('ERR_CORRUPT', `symbols: coded data of ${r.remaining} bytes holds no rANS states`);
  const x0 = r.u32();
  const x1 = r.u32();
  if (x0 < LOW || x1 < LOW || x0 >= 2 ** STATE_BITS || x1 >= 2 ** STATE_BITS) throw new ExcpError('ERR_CORRUPT', 'symbols: rANS state out of range');
  const status = decodeRans(bytes, r.offset, out, ctx, models, x0, x1);
  if (status !== 0) throw new ExcpError('ERR_CORRUPT', `symbols: coded data does not match ${count} symbols`);
  return out;
}

/**
 * What every symbol stream starts with, in both container formats (1:
 * lib/symbols-v1.ts, 2: here): the mode byte, a raw or constant stream in
 * full, or the models, one per context value that occurs.
 * @param readModel the format's model reader
 * @returns the symbols (raw, constant, empty), or the reader at the coded
 *   bytes with the output array, the models and the contexts to decode with
 */
export function readStreamHead<M>(bytes: Uint8Array, count: number, alphabetSize: number, contexts: Uint8Array | undefined, numContexts: number,
  readModel: (r: ByteReader, alphabetSize: number) => M): { symbols: Uint8Array } | { r: ByteReader; out: Uint8Array; models: (M | undefined)[]; ctx: Uint8Array | null } {
  checkArgs(count, alphabetSize, contexts, numContexts);
  const out = new Uint8Array(count);
  if (count === 0) return { symbols: out };
  const r = new ByteReader(bytes, 'symbols');
  const mode = r.u8();
  if (mode === MODE_RAW) {
    if (r.remaining !== count) throw new ExcpError('ERR_CORRUPT', `symbols: raw stream holds ${r.remaining} bytes for ${count} symbols`);
    out.set(r.bytesView(count));
    for (let i = 0; i < count; i++) {
      if (out[i]! >= alphabetSize) throw new ExcpError('ERR_CORRUPT', `symbols: raw symbol ${out[i]} >= alphabet ${alphabetSize}`);
    }
    return { symbols: out };
  }
  if (mode === MODE_CONST) {
    const s = r.u8();
    if (s >= alphabetSize) throw new ExcpError('ERR_CORRUPT', `symbols: constant symbol ${s} >= alphabet ${alphabetSize}`);
    return { symbols: out.fill(s) };
  }
  const models: (M | undefined)[] = [];
  let ctx: Uint8Array | null = null;
  if (mode === MODE_ORDER0) {
    models.push(readModel(r, alphabetSize));
  } else if (mode === MODE_CONTEXT) {
    if (contexts === undefined) throw new ExcpError('ERR_INVALID_ARG', 'symbols: stream was coded with contexts; none given');
    const seen = countSymbols(contexts, 256); // nonzero where a context value occurs
    for (let c = 0; c < numContexts; c++) models.push(seen[c] ? readModel(r, alphabetSize) : undefined);
    for (let c = numContexts; c < 256; c++) {
      if (seen[c]) throw new ExcpError('ERR_OUT_OF_RANGE', `symbols: context ${c} >= numContexts ${numContexts}`);
    }
    ctx = contexts;
  } else {
    throw new ExcpError('ERR_CORRUPT', `symbols: unknown mode ${mode}`);
  }
  return { r, out, models, ctx };
}

