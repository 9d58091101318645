import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { medianAbs, pruneJoint, selectAbs } from '../lib/prune.js';
import { fitKMeans, assignClusters } from '../lib/kmeans.js';
import { quantizeStream, dequantizeStream } from '../lib/quantize.js';
import { Prng } from '../lib/prng.js';

function heavy(rng: Prng, n: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * rng.normal() * (rng.next() < 0.05 ? 5 : 1);
  return out;
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
    const rng = new Prng(2);
    const n = 5000;
    const dW = heavy(rng, n, 1e-3);
    const m = heavy(rng, n, 1e-2);
    const v = Float32Array.from(m, (x) => x * x + 1e-6);
    const [d0, m0, v0] = [dW.slice(), m.slice(), v.slice()];
    const meanV = v0.reduce((s, x) => s + x, 0) / n;
    const rw = medianAbs(d0) * Math.min(2.5, 5e-5 / Math.sqrt(meanV));
    const ro = 2 * m0.reduce((s, x) => s + Math.abs(x), 0) / n;
    const r = pruneJoint(dW, m, v, { alpha: 5e-5, beta: 2, vFill: 'zero' });
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
    const whole = pruneJoint(dW.slice(), m.slice(), v.slice(), { alpha: 1e-2, beta: 2, vFill: 'zero' });
    let keptW = 0;
    let keptM = 0;
    const chunk = 1 << 14;
    for (let s = 0; s < n; s += chunk) {
      const r = pruneJoint(dW.slice(s, s + chunk), m.slice(s, s + chunk), v.slice(s, s + chunk), { alpha: 1e-2, beta: 2, vFill: 'zero' });
      keptW += r.keptWeights;
      keptM += r.keptMoments;
    }
    assert.ok(Math.abs(keptW - whole.keptWeights) / whole.keptWeights < 0.02, `kept dW ${keptW} vs ${whole.keptWeights}`);
    assert.ok(Math.abs(keptM - whole.keptMoments) / whole.keptMoments < 0.03, `kept m ${keptM} vs ${whole.keptMoments}`);
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
