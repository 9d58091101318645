/**
 * The fused fast paths of quantize.ts and entropy.ts against the plain
 * multi-pass definitions they replace (same symbols, centers and values,
 * bit for bit), and the symbol-cost accounting of the payload.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { assignClusters, fitKMeans, refineCenters } from '../lib/method/kmeans.js';
import { dequantizeNested, dequantizeStream, nonzeroSymbols, quantizeGathered } from '../lib/method/quantize.js';
import { streamEntropyBits, encodePayload, type SymbolCost } from '../lib/method/payload/payload.js';
import { Prng } from './support/prng.js';
import { type QuantDomain } from '../lib/core/options.js';
import { expandSymbols, quantizeStream, selectionContexts } from './reference/quantize.js';

/** The multi-pass quantizeStream this module had before it was fused. */
function referenceQuantize(values: Float32Array, select: Uint8Array | null, bits: number, domain: QuantDomain): { centers: Float32Array; symbols: Uint8Array } {
  const n = values.length;
  const picked: number[] = [];
  for (let i = 0; i < n; i++) if (!select || select[i] !== 0) picked.push(values[i]!);
  const nz = Float32Array.from(picked.filter((x) => x !== 0));
  const centers = fitKMeans(nz, (1 << bits) - 1, domain);
  const nzSymbols = assignClusters(nz, centers, domain, new Uint8Array(nz.length));
  refineCenters(nz, nzSymbols, centers, domain);
  const symbols = new Uint8Array(picked.length);
  for (let i = 0, j = 0; i < picked.length; i++) if (picked[i] !== 0) symbols[i] = nzSymbols[j++]!;
  return { centers, symbols };
}

function stream(rng: Prng, n: number, zeroFraction: number, positive: boolean): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    if (rng.next() < zeroFraction) out[i] = rng.next() < 0.5 ? 0 : -0;
    else out[i] = positive ? Math.exp(3 * rng.normal()) * 1e-8 : rng.normal() * 1e-3;
  }
  return out;
}

describe('quantize fast paths', () => {
  it('quantizeStream equals the multi-pass definition, with and without a selection', () => {
    const rng = new Prng(11);
    for (const n of [0, 1, 7, 100, 20000]) {
      for (const domain of ['linear', 'log'] as const) {
        const values = stream(rng, n, 0.4, domain === 'log');
        const select = Uint8Array.from({ length: n }, () => (rng.next() < 0.6 ? 1 + Math.floor(rng.next() * 15) : 0));
        for (const sel of [null, select]) {
          // 1 and 2 bits take the unrolled boundary search, 4 the general one.
          for (const bits of [1, 2, 4]) {
            const got = quantizeStream(values, sel, bits, domain);
            const want = referenceQuantize(values, sel, bits, domain);
            assert.deepEqual(got.symbols, want.symbols, `n=${n} ${domain} bits=${bits} select=${sel !== null}`);
            assert.deepEqual(got.centers, want.centers, `n=${n} ${domain} bits=${bits} select=${sel !== null}`);
          }
        }
      }
    }
  });

  it('quantizeGathered reports the nonzero symbols in order and the members of each center', () => {
    const rng = new Prng(13);
    const n = 3000;
    const values = stream(rng, n, 0.5, false);
    const nz = Float32Array.from(values.filter((x) => x !== 0));
    const slot = Int32Array.from([...values.keys()].filter((i) => values[i] !== 0));
    for (const bits of [1, 2, 3]) {
      const ordered = new Uint8Array(nz.length);
      const members = new Float64Array(256);
      const q = quantizeGathered(nz, slot, n, bits, 'linear', ordered, members);
      assert.deepEqual(q, quantizeStream(values, null, bits, 'linear'));
      assert.deepEqual(ordered, nonzeroSymbols(q.symbols));
      for (let s = 1; s <= q.centers.length; s++) assert.equal(members[s - 1], q.symbols.filter((x) => x === s).length);
    }
  });

  it('nonzeroSymbols and dequantizeNested equal selectionContexts and dequantize over expandSymbols', () => {
    const rng = new Prng(12);
    const n = 5000;
    const outer = Uint8Array.from({ length: n }, () => (rng.next() < 0.7 ? 1 + Math.floor(rng.next() * 15) : 0));
    const inner = stream(rng, n, 0.5, false);
    const m = quantizeStream(inner, outer, 4, 'linear');
    const mFull = expandSymbols(m.symbols, outer, n);
    // Into a given array, every position is written.
    assert.deepEqual(expandSymbols(m.symbols, outer, n, new Uint8Array(n).fill(9)), mFull);
    assert.deepEqual(nonzeroSymbols(outer), selectionContexts(outer, m.symbols.length));
    assert.deepEqual(nonzeroSymbols(m.symbols), selectionContexts(mFull, nonzeroSymbols(mFull).length));
    const v = quantizeStream(stream(rng, n, 0.2, true), mFull, 4, 'log');
    assert.deepEqual(
      dequantizeNested(v, outer, m.symbols, new Float32Array(n), 3e-9),
      dequantizeStream(v, mFull, new Float32Array(n), 3e-9),
    );
    // Without an outer selection the middle symbols are already full length.
    const m0 = quantizeStream(inner, null, 4, 'linear');
    const v0 = quantizeStream(stream(rng, n, 0.2, true), m0.symbols, 4, 'log');
    assert.deepEqual(
      dequantizeNested(v0, null, m0.symbols, new Float32Array(n), 3e-9),
      dequantizeStream(v0, m0.symbols, new Float32Array(n), 3e-9),
    );
  });
});

describe('symbol cost', () => {
  it('streamEntropyBits is count * H, order 0 and conditional', () => {
    assert.equal(streamEntropyBits(Uint8Array.of(0, 1, 2, 3), undefined), 8);
    assert.equal(streamEntropyBits(Uint8Array.of(5, 5, 5), undefined), 0);
    // Each context alone is constant: H(S | C) = 0 while H(S) = 1 bit.
    assert.equal(streamEntropyBits(Uint8Array.of(1, 2, 1, 2), Uint8Array.of(3, 4, 3, 4)), 0);
    assert.equal(streamEntropyBits(Uint8Array.of(1, 2, 1, 2), undefined), 4);
  });

  it('the coded symbols of a large chunk are within 1% of their empirical entropy', () => {
    const rng = new Prng(13);
    const n = 1 << 18;
    const residual = stream(rng, n, 0.3, false);
    const w = quantizeStream(residual, null, 4, 'linear');
    const m = quantizeStream(stream(rng, n, 0.5, false), w.symbols, 4, 'linear');
    const v = quantizeStream(stream(rng, n, 0, true), expandSymbols(m.symbols, w.symbols, n), 4, 'log');
    const cost: SymbolCost = { entropyBits: 0, symbolBits: 0 };
    const none = { positions: [], raw: new Uint8Array(0) };
    const payload = encodePayload({
      baseDigest: '0123456789abcdef',
      weight: { residual: w, exceptions: none },
      moments: { m, v, vFill: 0, mExceptions: none, vExceptions: none },
    }, n, cost);
    assert.ok(cost.entropyBits > 0);
    assert.ok(cost.symbolBits >= cost.entropyBits * 0.999, `${cost.symbolBits} < ${cost.entropyBits}`);
    assert.ok(cost.symbolBits <= cost.entropyBits * 1.01, `${cost.symbolBits} vs ${cost.entropyBits}`);
    assert.ok(8 * payload.length >= cost.symbolBits);
  });
});
