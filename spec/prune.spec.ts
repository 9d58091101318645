import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { fitKMeans, assignClusters } from '../lib/method/kmeans.js';
import { dequantizeStream } from '../lib/method/quantize.js';
import { Prng } from './support/prng.js';
import { PAPER_OPTIONS, resolveOptions } from '../lib/core/options.js';
import { medianAbs, pruneJoint, saliencyScores } from './reference/prune.js';
import { selectAbs } from '../lib/method/select.js';
import { quantizeStream } from './reference/quantize.js';

function heavy(rng: Prng, n: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * rng.normal() * (rng.next() < 0.05 ? 5 : 1);
  return out;
}

/** A seeded chunk: dW, m, and v = m^2 + 1e-6. */
function sampleChunk(seed: number, n: number): { dW: Float32Array; m: Float32Array; v: Float32Array } {
  const rng = new Prng(seed);
  const dW = heavy(rng, n, 1e-3);
  const m = heavy(rng, n, 1e-2);
  return { dW, m, v: Float32Array.from(m, (x) => x * x + 1e-6) };
}

describe('joint prune', () => {
  it('selectAbs finds the exact k-th smallest |x|, including ties and zeros', () => {
    const rng = new Prng(1);
    for (const n of [1, 2, 3, 10, 1000, 4097]) {
      const x = heavy(rng, n, 1e-3);
      for (let i = 0; i < n; i += 3) x[i] = 0;
      const sorted = Array.from(x, Math.abs).sort((a, b) => a - b);
      for (const k of [0, n >> 1, n - 1]) assert.equal(selectAbs(x, k), Math.fround(sorted[k]!), `n=${n} k=${k}`);
    }
  });

  it('keeps exactly the method\'s positions', () => {
    const n = 5000;
    const { dW, m, v } = sampleChunk(2, n);
    const [d0, m0, v0] = [dW.slice(), m.slice(), v.slice()];
    const meanV = v0.reduce((s, x) => s + x, 0) / n;
    const rw = medianAbs(d0) * Math.min(2.5, 5e-5 / Math.sqrt(meanV));
    const ro = 2 * m0.reduce((s, x) => s + Math.abs(x), 0) / n;
    const r = pruneJoint(dW, m, v, { alpha: 5e-5, beta: 2, vFill: 'zero', weightRule: 'paper', keep: 0.3 });
    for (let i = 0; i < n; i++) {
      const keepW = Math.abs(d0[i]!) > rw;
      assert.equal(dW[i] !== 0, keepW);
      const keepM = keepW && Math.abs(m0[i]!) > ro;
      assert.equal(m[i] !== 0, keepM);
      assert.equal(v[i], keepM ? v0[i] : 0);
    }
    assert.ok(r.keptMoments <= r.keptWeights);
  });

  it('per-chunk statistics stay close to per-tensor statistics on a large tensor', () => {
    const rng = new Prng(3);
    const n = 1 << 18;
    const dW = heavy(rng, n, 1e-3);
    const m = heavy(rng, n, 1e-2);
    const v = Float32Array.from(m, (x) => x * x + 1e-4 * rng.next());
    const whole = pruneJoint(dW.slice(), m.slice(), v.slice(), { alpha: 1e-2, beta: 2, vFill: 'zero', weightRule: 'paper', keep: 0.3 });
    let keptW = 0;
    let keptM = 0;
    const chunk = 1 << 14;
    for (let s = 0; s < n; s += chunk) {
      const r = pruneJoint(dW.slice(s, s + chunk), m.slice(s, s + chunk), v.slice(s, s + chunk), { alpha: 1e-2, beta: 2, vFill: 'zero', weightRule: 'paper', keep: 0.3 });
      keptW += r.keptWeights;
      keptM += r.keptMoments;
    }
    assert.ok(Math.abs(keptW - whole.keptWeights) / whole.keptWeights < 0.02, `kept dW ${keptW} vs ${whole.keptWeights}`);
    assert.ok(Math.abs(keptM - whole.keptMoments) / whole.keptMoments < 0.03, `kept m ${keptM} vs ${whole.keptMoments}`);
  });
});

describe('joint prune: scale-free weight rules', () => {
  const rules = ['magnitude', 'saliency'] as const;

  it('keeps the top `keep` share of |dW| or |dW| * sqrt(v), and the moment rule is unchanged', () => {
    const rng = new Prng(5);
    const n = 20000;
    for (const weightRule of rules) {
      for (const keep of [0.02, 0.1, 0.5]) {
        const dW = heavy(rng, n, 1e-3);
        const m = heavy(rng, n, 1e-2);
        const v = Float32Array.from(m, (x) => x * x + 1e-5 * rng.next());
        const [d0, m0, v0] = [dW.slice(), m.slice(), v.slice()];
        const score = weightRule === 'saliency' ? saliencyScores(d0, v0) : d0.map(Math.abs);
        const sorted = Array.from(score).sort((a, b) => a - b);
        const t = sorted[Math.floor((1 - keep) * n)]!;
        const ro = 2 * m0.reduce((s, x) => s + Math.abs(x), 0) / n;
        const r = pruneJoint(dW, m, v, { alpha: 5e-5, beta: 2, vFill: 'zero', weightRule, keep });
        assert.equal(r.weightThreshold, t);
        for (let i = 0; i < n; i++) {
          const keepW = Math.abs(score[i]!) > t;
          assert.equal(dW[i] !== 0, keepW, `${weightRule} keep=${keep} i=${i}`);
          if (keepW) assert.equal(dW[i], d0[i]);
          assert.equal(m[i] !== 0, keepW && Math.abs(m0[i]!) > ro);
        }
        assert.ok(Math.abs(r.keptWeights / n - keep) < 0.002, `${weightRule}: kept ${r.keptWeights / n}, asked ${keep}`);
      }
    }
  });

  it('does not depend on the scale of dW or v (unlike the paper\'s alpha)', () => {
    const { dW, m, v } = sampleChunk(6, 4096);
    for (const weightRule of rules) {
      const kept = (ds: number, vs: number): number[] => {
        const d = dW.map((x) => x * ds);
        pruneJoint(d, m.slice(), v.map((x) => x * vs), { alpha: 5e-5, beta: 2, vFill: 'mean', weightRule, keep: 0.1 });
        return Array.from(d, (x, i) => (x !== 0 ? i : -1)).filter((i) => i >= 0);
      };
      const ref = kept(1, 1);
      assert.deepEqual(kept(4, 1), ref, `${weightRule}: dW x4`);
      assert.deepEqual(kept(1, 16), ref, `${weightRule}: v x16`);
    }
    // The paper's rule keeps a different share when v is scaled (its factor is alpha / sqrt(mean v)).
    const paper = (vs: number): number => pruneJoint(dW.slice(), m.slice(), v.map((x) => x * vs), { alpha: 1e-3, beta: 2, vFill: 'zero', weightRule: 'paper', keep: 0.3 }).keptWeights;
    assert.notEqual(paper(1), paper(1e4));
  });

  it('never keeps a zero residual and keeps everything nonzero at keep = 1', () => {
    const dW = Float32Array.from([0, 1e-3, 0, -2e-3, 0, 0, 5e-4, 0]);
    const v = new Float32Array(8).fill(1e-4);
    for (const weightRule of rules) {
      const d = dW.slice();
      const r = pruneJoint(d, new Float32Array(8).fill(1e-3), v.slice(), { alpha: 5e-5, beta: 0, vFill: 'zero', weightRule, keep: 1 });
      assert.deepEqual(d, dW);
      assert.equal(r.keptWeights, 3);
      const d2 = dW.slice();
      assert.equal(pruneJoint(d2, null, null, { alpha: 5e-5, beta: 0, vFill: 'zero', weightRule, keep: 0.5 }).keptWeights > 0, true);
    }
  });
});

describe('weight rule options', () => {
  it('defaults to the dithered residual (method 2); an explicit keep selects pruning by |dW|, an explicit alpha or PAPER_OPTIONS the paper\'s rule', () => {
    const d = resolveOptions();
    assert.equal(d.weightRule, 'dither');
    assert.equal(d.updateError, 0.8);
    assert.equal(d.keyframe, 'lossy');
    assert.equal(d.bits, 2);
    assert.equal(resolveOptions({ keep: 0.4 }).weightRule, 'magnitude');
    assert.equal(resolveOptions({ keep: 0.4, weightRule: 'saliency' }).weightRule, 'saliency');
    assert.equal(resolveOptions({ alpha: 1e-3 }).weightRule, 'paper');
    assert.equal(resolveOptions({ alpha: 1e-3, weightRule: 'saliency' }).weightRule, 'saliency');
    const paper = resolveOptions({ ...PAPER_OPTIONS });
    assert.deepEqual([paper.weightRule, paper.bits, paper.vFill, paper.vDomain, paper.alpha, paper.keyframe], ['paper', 4, 'zero', 'linear', 5e-5, 'exact']);
  });

  it('rejects a bad rule or share, naming the option', () => {
    for (const keep of [0, -0.1, 1.5, Number.NaN]) {
      assert.throws(() => resolveOptions({ keep }), (e: Error & { code?: string }) => e.code === 'ERR_OUT_OF_RANGE' && /options\.keep/.test(e.message));
    }
    assert.throws(() => resolveOptions({ weightRule: 'median' as 'paper' }), /options\.weightRule/);
  });
});

describe('k-means quantisation', () => {
  it('is exact when there are at most k distinct values', () => {
    const values = Float32Array.from([0.5, -1, 0.5, 3, -1, 7]);
    const c = fitKMeans(values, 15);
    const s = assignClusters(values, c, 'linear', new Uint8Array(values.length));
    values.forEach((x, i) => assert.equal(c[s[i]! - 1], x));
  });

  it('is deterministic and its error is small relative to the spread', () => {
    const rng = new Prng(4);
    for (const domain of ['linear', 'log'] as const) {
      const x = heavy(rng, 100000, 1e-3).map((y) => (domain === 'log' ? Math.abs(y) + 1e-9 : y));
      const a = quantizeStream(x, null, 4, domain);
      const b = quantizeStream(x, null, 4, domain);
      assert.deepEqual([...a.centers], [...b.centers]);
      assert.ok(a.centers.length <= 15);
      const back = dequantizeStream(a, null, new Float32Array(x.length));
      let err = 0;
      let energy = 0;
      for (let i = 0; i < x.length; i++) {
        err += (x[i]! - back[i]!) ** 2;
        energy += x[i]! ** 2;
      }
      assert.ok(err / energy < 0.04, `${domain}: relative squared error ${err / energy}`);
    }
  });
});
