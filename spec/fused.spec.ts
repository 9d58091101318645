/**
 * The encoder (lib/method/encode.ts, through encodeChunk) against the
 * stage-by-stage definition of the method in spec/reference/codec.ts: the
 * same payload, digests and statistics on every kind of chunk: residuals
 * under each weight rule, keyframes, exact and lossless entries.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { type ChunkLayout, encodeChunk } from '../lib/method/codec.js';
import { encodeLossy } from '../lib/method/encode.js';
import { resolveOptions } from '../lib/core/options.js';
import { Prng } from './support/prng.js';
import { type DType, fromFloat32 } from '../lib/core/dtype.js';
import { randomFloats, sameBytes } from './helpers.js';
import { encodeChunkStaged } from './reference/codec.js';

const layout: ChunkLayout = { weightDtype: 'F32', momentDtype: 'F32', exactWeight: false, exactMoments: false, base: true };
const DTYPES = [['F32', 'F32'], ['F32', 'F32'], ['BF16', 'F32'], ['F16', 'F32'], ['BF16', 'BF16'], ['F32', 'F16']] as const;

/** Element bytes of `dtype`, at an odd offset inside a larger buffer when `misalign`. */
function bytesOf(values: Float32Array, misalign: boolean, dtype: DType = 'F32'): Uint8Array {
  const raw = fromFloat32(values, dtype);
  if (!misalign) return raw;
  const out = new Uint8Array(raw.length + 3);
  out.set(raw, 1);
  return out.subarray(1, 1 + raw.length);
}

describe('encoder against the reference', () => {
  for (let seed = 1; seed <= 24; seed++) {
    it(`equals the reference on a residual chunk (seed ${seed})`, () => {
      const rng = new Prng(seed);
      const n = [64, 65, 1000, 4097, 9000, 20000][seed % 6]!;
      const base = randomFloats(rng, n, 0.05, seed % 3 === 0);
      const cur = new Float32Array(n);
      // seed % 5 == 0: no change at all (every |dW| in the histogram's bin 0);
      // seed % 6 == 3: a few distinct steps (ties across the threshold).
      for (let i = 0; i < n; i++) {
        const step = seed % 6 === 3 ? Math.round(rng.normal() * 2) * 1e-3 : rng.normal() * 1e-3;
        cur[i] = seed % 5 === 0 ? base[i]! : base[i]! + step;
      }
      if (seed % 4 === 0) for (let k = 0; k < 5; k++) cur[rng.int(n)] = [NaN, Infinity, -0, 0][rng.int(4)]!;
      const m = randomFloats(rng, n, 1e-3, seed % 2 === 0);
      const v = new Float32Array(n);
      for (let i = 0; i < n; i++) v[i] = m[i]! * m[i]! * (1 + rng.next());
      if (seed % 3 === 1) for (let k = 0; k < 5; k++) v[rng.int(n)] = [NaN, -Infinity, 0, -1e-9][rng.int(4)]!;
      const options = resolveOptions({
        chunkElements: n,
        bits: 1 + (seed % 8),
        vFill: seed % 2 ? 'mean' : 'zero',
        vDomain: seed % 3 ? 'log' : 'linear',
        ...(seed % 4 === 1 ? { weightRule: 'paper' as const, alpha: seed % 8 === 1 ? 1e-2 : 5e-5 } : { keep: [0.3, 0.05, 1, 0.7][seed % 4]!, ...(seed % 7 === 2 || seed % 7 === 5 ? { weightRule: 'saliency' as const } : {}) }),
      });
      const misalign = seed % 5 === 2;
      // Every dtype pair on the odd seeds; F32 (the fast restore) on the even ones.
      const [wd, md] = seed % 2 ? DTYPES[(seed >> 1) % DTYPES.length]! : DTYPES[0];
      const layout: ChunkLayout = { weightDtype: wd, momentDtype: md, exactWeight: false, exactMoments: false, base: true };
      const input = { weight: bytesOf(cur, misalign, wd), base: bytesOf(base, misalign, wd), expAvg: bytesOf(m, false, md), expAvgSq: bytesOf(v, misalign, md) };
      const fused = encodeLossy(layout, input, options);
      assert.ok(fused, 'the fused path takes this chunk');
      const staged = encodeChunkStaged(layout, input, options);
      assert.ok(sameBytes(fused.payload, staged.payload), 'payload');
      assert.deepEqual(fused.digests, staged.digests);
      assert.equal(fused.baseDigest, staged.baseDigest);
      assert.deepEqual(fused.stats, staged.stats);
      assert.deepEqual(encodeChunk(layout, input, options), fused);
    });
  }

  for (let seed = 1; seed <= 12; seed++) {
    it(`equals the reference on a keyframe, an exact and a lossless chunk (seed ${seed})`, () => {
      const rng = new Prng(100 + seed);
      const n = [64, 1000, 4097, 9000][seed % 4]!;
      const w = randomFloats(rng, n, 0.05, seed % 3 === 0);
      const m = randomFloats(rng, n, 1e-3, seed % 2 === 0);
      const v = new Float32Array(n);
      for (let i = 0; i < n; i++) v[i] = m[i]! * m[i]! * (1 + rng.next());
      if (seed % 3 === 1) for (let k = 0; k < 5; k++) m[rng.int(n)] = [NaN, -Infinity, 0, -1e-9][rng.int(4)]!;
      if (seed % 4 === 2) for (let k = 0; k < 5; k++) v[rng.int(n)] = [NaN, Infinity, 0][rng.int(3)]!;
      const options = resolveOptions({
        weightRule: 'magnitude', chunkElements: n, bits: 1 + (seed % 8), vFill: seed % 2 ? 'mean' : 'zero', vDomain: seed % 3 ? 'log' : 'linear',
        beta: [2, 0, 0.5][seed % 3]!, keyframe: seed % 2 ? 'lossy' : 'exact',
      });
      const [wd, md] = DTYPES[seed % DTYPES.length]!;
      const input = { weight: bytesOf(w, seed % 5 === 2, wd), base: null, expAvg: bytesOf(m, false, md), expAvgSq: bytesOf(v, false, md) };
      const layouts: ChunkLayout[] = [
        { weightDtype: wd, momentDtype: md, exactWeight: true, exactMoments: false, base: false },
        { weightDtype: wd, momentDtype: md, exactWeight: true, exactMoments: true, base: false },
        { weightDtype: wd, momentDtype: null, exactWeight: true, exactMoments: false, base: false },
      ];
      for (const l of layouts) {
        const chunk = l.momentDtype === null ? { ...input, expAvg: null, expAvgSq: null } : input;
        const got = encodeChunk(l, chunk, options);
        const want = encodeChunkStaged(l, chunk, options);
        assert.ok(sameBytes(got.payload, want.payload), `payload (${JSON.stringify(l)})`);
        assert.deepEqual(got.digests, want.digests);
        assert.equal(got.baseDigest, want.baseDigest);
        assert.deepEqual(got.stats, want.stats);
      }
    });
  }

  it('refuses chunks that are not of the method', () => {
    const rng = new Prng(99);
    const f = randomFloats(rng, 256, 1);
    const b = new Uint8Array(f.buffer);
    const options = resolveOptions({ weightRule: 'magnitude' });
    assert.throws(() => encodeLossy({ ...layout, exactMoments: true }, { weight: b, base: b, expAvg: b, expAvgSq: b }, options), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => encodeLossy({ ...layout, base: false }, { weight: b, base: null, expAvg: b, expAvgSq: b }, options), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => encodeLossy(layout, { weight: b, base: b.subarray(4), expAvg: b, expAvgSq: b }, options), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => encodeChunk({ ...layout, momentDtype: null }, { weight: b, base: b, expAvg: null, expAvgSq: null }, options), { code: 'ERR_INVALID_ARG' });
  });
});
