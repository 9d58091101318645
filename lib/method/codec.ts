/**
 * The chunk codec, both ways: the one function each direction that the
 * stream stages and the worker pool call, so that every path produces the
 * same bytes.
 *
 *   encode: exact streams (lib/coding/exact.ts) for what is coded exactly,
 *           and lib/method/encode.ts (residual -> joint prune -> quantise)
 *           for lossy moments and lossy weights; then the payload
 *           (lib/method/payload.ts)
 *   decode: payload -> reconstruct (lib/method/reconstruct.ts)
 *
 * The stage-by-stage composition of the method (residual, pruneJoint,
 * quantizeStream, reconstruct) lives in spec/reference/ as the definition
 * the encoder is tested against; it is not shipped.
 */
import { DTYPE_BYTES } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { hashBytes } from '../core/hash.js';
import type { CodecOptions } from '../core/options.js';
import { encodeExact } from '../coding/exact.js';
import { type ChunkCode, type SymbolCost, decodePayload, encodePayload } from './payload/payload.js';
import { encodeLossy } from './encode.js';
import { encodeDithered } from './encode-dithered.js';
import { chunkGrid } from './rank1.js';
import {
  type ChunkInput, type ChunkLayout, type ChunkPosition, type DecodedChunk, type EncodedChunk,
  reconstructInto, restoredDigests,
} from './reconstruct.js';

export type { ChunkInput, ChunkLayout, ChunkPosition, ChunkStats, DecodedChunk, EncodedChunk, ErrorSums, RestoredChunk } from './reconstruct.js';
export { relativeError } from './reconstruct.js';

/**
 * Code one chunk.
 * @param layout the entry's dtypes and modes
 * @param input raw element bytes of the chunk
 * @param options method options
 * @param position where the chunk is (entry, chunk, first element): method 2 (weightRule `dither`) needs it
 * @returns the payload, digests of what restore will produce, and counts
 * @throws ExcpError ERR_BASE_MISSING (the layout uses a base and none was given), ERR_INVALID_ARG (inconsistent layout or buffers)
 */
export function encodeChunk(layout: ChunkLayout, input: ChunkInput, options: CodecOptions, position?: ChunkPosition): EncodedChunk {
  if (layout.base && !input.base) throw new ExcpError('ERR_BASE_MISSING', 'codec: entry needs base bytes');
  const hasMoments = layout.momentDtype !== null && input.expAvg !== null && input.expAvgSq !== null;
  if (hasMoments && !layout.exactMoments) {
    if (options.weightRule !== 'dither') return encodeLossy(layout, input, options);
    if (!position) throw new ExcpError('ERR_INVALID_ARG', 'codec: method 2 needs the chunk\'s position');
    return encodeDithered(layout, input, options, position);
  }
  // A lossy weight is only planned for a param entry: its threshold needs v.
  if (!layout.exactWeight) throw new ExcpError('ERR_INVALID_ARG', 'codec: a lossy weight needs lossy moments in the same entry');
  return encodeAllExact(layout, input, hasMoments);
}

/** A chunk whose every stream is exact: a plain tensor, a pack, or a lossless parameter. */
function encodeAllExact(layout: ChunkLayout, input: ChunkInput, hasMoments: boolean): EncodedChunk {
  const n = input.weight.length / DTYPE_BYTES[layout.weightDtype];
  const base = layout.base ? input.base : null;
  const md = layout.momentDtype!;
  const code: ChunkCode = {
    baseDigest: base ? hashBytes(base) : null,
    weight: { exact: encodeExact(input.weight, layout.weightDtype, base ?? undefined) },
    moments: hasMoments ? { exactM: encodeExact(input.expAvg!, md), exactV: encodeExact(input.expAvgSq!, md) } : null,
  };
  // Exact means equal: the digests are of the input bytes.
  const restored = reconstructInto(layout, code, n, base, input.weight, input.expAvg, input.expAvgSq, true);
  const cost: SymbolCost = { entropyBits: 0, symbolBits: 0 };
  const payload = encodePayload(code, n, cost);
  return {
    payload, digests: restoredDigests(restored, layout.pieces), baseDigest: code.baseDigest,
    stats: { elements: n, keptWeights: n, keptMoments: hasMoments ? n : 0, entropyBits: cost.entropyBits, symbolBits: cost.symbolBits },
  };
}

/**
 * Decode one chunk's payload into tensor bytes.
 * @param layout the entry's dtypes and modes
 * @param payload the record payload
 * @param n elements in the chunk
 * @param base base bytes of the chunk's weight (when layout.base)
 * @param what tensor name for error messages
 * @param position where the chunk is (a format 3 container's method 2 chunks need it)
 * @param scratch whether the restored bytes may be views of this thread's scratch, valid until its next decode (a caller that writes them out at once): no fresh megabytes per chunk
 * @returns restored bytes and their digests
 * @throws ExcpError ERR_BASE_MISSING, ERR_BASE_MISMATCH, ERR_CORRUPT
 */
export function decodeChunk(layout: ChunkLayout, payload: Uint8Array, n: number, base: Uint8Array | null, what: string, position?: ChunkPosition, scratch = false): DecodedChunk {
  const mb = layout.momentDtype ? DTYPE_BYTES[layout.momentDtype] : 1;
  // Method 2 streams are read only where the header places the chunk (format 3 on).
  const grid = layout.columns && position && n > 0 ? chunkGrid(position.start, n, layout.columns) : null;
  const code = decodePayload(payload, n, { weight: DTYPE_BYTES[layout.weightDtype], moments: mb }, layout.momentDtype !== null, layout.legacySymbols === true, grid, layout.driftless === true);
  if (Boolean(code.baseDigest) !== layout.base) throw new ExcpError('ERR_CORRUPT', `restore: tensor '${what}': base flag disagrees with the header`);
  if (layout.base) {
    if (!base) throw new ExcpError('ERR_BASE_MISSING', `restore: tensor '${what}' was compressed against a base; pass --base`);
    const digest = hashBytes(base);
    if (digest !== code.baseDigest) {
      throw new ExcpError('ERR_BASE_MISMATCH', `restore: tensor '${what}': the base differs from the one used at compression (digest ${digest}, expected ${code.baseDigest})`);
    }
  }
  const restored = reconstructInto(layout, code, n, base, null, null, null, scratch, position);
  return { ...restored, digests: restoredDigests(restored, layout.pieces) };
}

