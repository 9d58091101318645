/**
 * Reference (spec only): the chunk encoder stage by stage, the definition of
 * the method that lib/method/encode.ts implements in fused passes:
 *
 *   residual -> extractNonFinite -> pruneJoint -> quantizeStream x 3 ->
 *   reconstruct (for the fingerprint) -> payload
 *
 * spec/fused.spec.ts checks encodeChunk against it on every kind of chunk.
 */
import { DTYPE_BYTES, roundToBf16, toFloat32 } from '../../lib/core/dtype.js';
import { ExcpError } from '../../lib/core/errors.js';
import { hashBytes } from '../../lib/core/hash.js';
import type { CodecOptions } from '../../lib/core/options.js';
import { Scratch } from '../../lib/core/scratch.js';
import { encodeExact } from '../../lib/coding/exact.js';
import { type ChunkCode, type Exceptions, type MomentCode, type SymbolCost, type WeightCode, encodePayload } from '../../lib/method/payload/payload.js';
import { type ChunkInput, type ChunkLayout, type EncodedChunk, pickExceptions, reconstructInto, restoredDigests } from '../../lib/method/reconstruct.js';
import { computeResidual, extractNonFinite } from './residual.js';
import { pruneJoint } from './prune.js';
import { expandSymbols, quantizeStream } from './quantize.js';

/**
 * encodeChunk stage by stage.
 * @param layout the entry's dtypes and modes
 * @param input raw element bytes of the chunk
 * @param options method options
 * @returns what encodeChunk must return
 */
export function encodeChunkStaged(layout: ChunkLayout, input: ChunkInput, options: CodecOptions): EncodedChunk {
  const eb = DTYPE_BYTES[layout.weightDtype];
  const n = input.weight.length / eb;
  const base = layout.base ? input.base : null;
  if (layout.base && !base) throw new ExcpError('ERR_BASE_MISSING', 'codec: entry needs base bytes');
  const baseDigest = base ? hashBytes(base) : null;

  const md = layout.momentDtype;
  const hasMoments = md !== null && input.expAvg !== null && input.expAvgSq !== null;
  // A lossy weight is only planned for a param entry: its threshold needs v.
  if (!layout.exactWeight && !(hasMoments && !layout.exactMoments)) {
    throw new ExcpError('ERR_INVALID_ARG', 'codec: a lossy weight needs lossy moments in the same entry');
  }
  // A lossy keyframe (exact weight, lossy moments, no base): fp32 weights rounded to bf16's precision first.
  const lossyKeyframe = options.keyframe === 'lossy' && layout.weightDtype === 'F32' && !base && !layout.exactMoments && hasMoments;
  const weightBytes = lossyKeyframe ? roundToBf16(input.weight) : input.weight;
  let weight: WeightCode | null = layout.exactWeight ? { exact: encodeExact(weightBytes, layout.weightDtype, base ?? undefined) } : null;
  let moments: MomentCode | null = null;
  let keptMoments = 0;
  let keptWeights = n;
  if (hasMoments && layout.exactMoments) {
    moments = { exactM: encodeExact(input.expAvg!, md), exactV: encodeExact(input.expAvgSq!, md) };
    keptMoments = n;
  } else if (hasMoments) {
    const mb = DTYPE_BYTES[md];
    const m = toFloat32(input.expAvg!, md, work.f32(SCRATCH_M, n));
    const v = toFloat32(input.expAvgSq!, md, work.f32(SCRATCH_V, n));
    const mExceptions = pickExceptions(input.expAvg!, extractNonFinite(m), mb);
    const vExceptions = pickExceptions(input.expAvgSq!, extractNonFinite(v), mb);
    let residual: Float32Array | null = null;
    let weightExceptions: Exceptions | null = null;
    if (!weight) {
      residual = work.f32(SCRATCH_RESIDUAL, n);
      const current = work.readFloat32(input.weight, layout.weightDtype, SCRATCH_WEIGHT, n);
      const positions = computeResidual(current, work.readFloat32(base!, layout.weightDtype, SCRATCH_BASE, n), residual);
      weightExceptions = pickExceptions(input.weight, positions, eb);
    }
    const pruned = pruneJoint(residual, m, v, options);
    keptMoments = pruned.keptMoments;
    let wFull: Uint8Array | null = null;
    if (residual && weightExceptions) {
      keptWeights = pruned.keptWeights;
      const q = quantizeStream(residual, null, options.bits, 'linear');
      weight = { residual: q, exceptions: weightExceptions };
      wFull = q.symbols;
    }
    const mq = quantizeStream(m, wFull, options.bits, 'linear');
    // v is selected by the full-length m symbols: nonzero m inside the dW selection.
    const vq = quantizeStream(v, expandSymbols(mq.symbols, wFull, n, work.u8(SCRATCH_SELECT, n)), options.bits, options.vDomain);
    moments = { m: mq, v: vq, vFill: pruned.vFill, mExceptions, vExceptions };
  }
  if (!weight) throw new ExcpError('ERR_INVALID_ARG', 'codec: no weight stream');

  const code: ChunkCode = { baseDigest, weight, moments };
  // The restored bytes are only hashed here, so they may live in scratch.
  const restored = reconstructInto(layout, code, n, base, weightBytes, input.expAvg, input.expAvgSq, true);
  const digests = restoredDigests(restored, layout.pieces);
  const cost: SymbolCost = { entropyBits: 0, symbolBits: 0 };
  const payload = encodePayload(code, n, cost);
  return { payload, digests, baseDigest, stats: { elements: n, keptWeights, keptMoments, entropyBits: cost.entropyBits, symbolBits: cost.symbolBits } };
}

const SCRATCH_M = 0;
const SCRATCH_V = 1;
const SCRATCH_RESIDUAL = 2;
const SCRATCH_WEIGHT = 3;
const SCRATCH_BASE = 4;
const SCRATCH_SELECT = 5;
const work = new Scratch();
