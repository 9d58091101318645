/**
 * Dither (pure): a uniform offset in [0, 1) for every element of a chunk,
 * the same in the encoder and the decoder, from a seed and the element's
 * index alone (a counter-based generator: no state, any order, any thread).
 *
 * Why: the weight residual is quantised with subtractive dither (Roberts
 * 1962; Schuchman 1964): index = round(x / step + u), restored
 * (index - u) * step. With u uniform and known to both sides the error is
 * uniform in [-step/2, step/2) and independent of x, so the restored
 * update is unbiased: small updates are not systematically lost as they are
 * under magnitude pruning, which is what training resumed from restored
 * checkpoints notices (examples/realrun/FINDINGS.md).
 *
 * Only integer operations (Math.imul, shifts) and one exact division by
 * 2^24 are used, so every platform computes the same offsets bit for bit.
 */

/**
 * The murmur3 32-bit finaliser: a bijection of u32 that mixes every input
 * bit into every output bit.
 */
function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * A chunk's dither seed from what both sides know: the base chunk's digest
 * (so consecutive checkpoints get independent offsets) and the chunk's place.
 * @param baseDigest the base chunk's digest (16 hex digits), or null (a keyframe)
 * @param entry the entry index
 * @param chunk the chunk index within the entry
 * @returns a u32 seed
 */
export function ditherSeed(baseDigest: string | null, entry: number, chunk: number): number {
  const hi = baseDigest ? parseInt(baseDigest.slice(0, 8), 16) : 0;
  const lo = baseDigest ? parseInt(baseDigest.slice(8, 16), 16) : 0;
  return mix32(mix32(hi ^ Math.imul(entry + 1, 0x9e3779b1)) ^ mix32(lo ^ Math.imul(chunk + 1, 0x7feb352d)));
}

/**
 * The stream of a chunk's offsets (ditherAt's first argument).
 * @param seed the chunk's seed (ditherSeed)
 */
export function ditherStream(seed: number): number {
  return Math.imul(seed, 0x27d4eb2f) >>> 0;
}

/**
 * The offset of element i: k / 2^24 for an integer k in [0, 2^24), exact
 * in float32 (and the same double whether kept in a Float32Array or not).
 * @param stream ditherStream of the chunk's seed
 * @param i the element's index in its chunk
 */
export function ditherAt(stream: number, i: number): number {
  return (mix32((stream + Math.imul(i, 0x9e3779b9)) >>> 0) >>> 8) * (1 / 16777216);
}

/**
 * The offsets of a chunk.
 * @param seed the chunk's seed (ditherSeed)
 * @param out receives one offset per element (ditherAt)
 * @returns `out`
 */
export function fillDither(seed: number, out: Float32Array): Float32Array {
  const stream = ditherStream(seed);
  for (let i = 0; i < out.length; i++) out[i] = ditherAt(stream, i);
  return out;
}
