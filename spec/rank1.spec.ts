/**
 * The building blocks of the factored second moment and of the dither
 * (lib/method/rank1.ts, lib/method/dither.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chunkGrid, rank1Estimate, rank1Factors, roundFactor } from '../lib/method/rank1.js';
import { ditherSeed, fillDither } from '../lib/method/dither.js';
import { Prng } from './support/prng.js';

test('chunkGrid: whole rows, a run within one row, partial rows at both ends', () => {
  assert.deepEqual(chunkGrid(0, 12, 4), { row0: 0, rows: 3, col0: 0, cols: 4 });
  assert.deepEqual(chunkGrid(5, 2, 4), { row0: 1, rows: 1, col0: 1, cols: 2 });
  assert.deepEqual(chunkGrid(3, 6, 4), { row0: 0, rows: 3, col0: 0, cols: 4 });
  assert.deepEqual(chunkGrid(0, 7, 100), { row0: 0, rows: 1, col0: 0, cols: 7 });
});

test('roundFactor keeps 4 significant bits, rounding to nearest', () => {
  assert.equal(roundFactor(1), 1);
  assert.equal(roundFactor(1.0625), 1.125); // halfway rounds up
  assert.equal(roundFactor(1.05), 1);
  assert.equal(roundFactor(0), 0);
  assert.equal(roundFactor(15.5), 16);
  for (const x of [3e-9, 0.37, 1234.5]) assert.ok(Math.abs(roundFactor(x) / x - 1) <= 1 / 16, String(x));
});

test('an exactly rank-1 v is restored within the factors\' rounding, whatever the chunk boundaries', () => {
  const rng = new Prng(5);
  const rows = 40;
  const columns = 23;
  const a = Array.from({ length: rows }, () => 1e-8 * (1 + 9 * rng.next()));
  const b = Array.from({ length: columns }, () => 1 + 99 * rng.next());
  const v = new Float32Array(rows * columns).map((_, i) => a[Math.floor(i / columns)]! * b[i % columns]!);
  for (const [start, n] of [[0, rows * columns], [7, 300], [23, 23], [30, 10], [100, 1]] as const) {
    const chunk = v.subarray(start, start + n);
    const { rows: r, cols: c } = rank1Factors(chunk, start, columns);
    const est = rank1Estimate(r, c, start, columns, new Float32Array(n));
    for (let i = 0; i < n; i++) assert.ok(Math.abs(est[i]! / chunk[i]! - 1) < 0.2, `chunk ${start}+${n} element ${i}: ${est[i]} vs ${chunk[i]}`);
  }
});

test('v that is 0, negative or not finite counts as 0; an all-zero chunk estimates 0', () => {
  const v = Float32Array.of(0, -1, NaN, Infinity, 4, 4);
  const { rows, cols } = rank1Factors(v, 0, 3);
  assert.deepEqual([...rows], [0, roundFactor(8 / 3)]);
  const est = rank1Estimate(rows, cols, 0, 3, new Float32Array(6));
  assert.ok(est.every((x) => Number.isFinite(x) && x >= 0));
  assert.deepEqual([...rank1Estimate(new Float32Array(1), new Float32Array(4), 0, 4, new Float32Array(4))], [0, 0, 0, 0]);
});

test('dither: uniform in [0, 1), the same for the same seed, different across chunks and bases', () => {
  const a = fillDither(ditherSeed('0123456789abcdef', 0, 0), new Float32Array(100000));
  const again = fillDither(ditherSeed('0123456789abcdef', 0, 0), new Float32Array(100000));
  assert.deepEqual(a, again);
  let mean = 0;
  for (const x of a) {
    assert.ok(x >= 0 && x < 1);
    mean += x;
  }
  assert.ok(Math.abs(mean / a.length - 0.5) < 0.01);
  for (const seed of [ditherSeed('0123456789abcdef', 0, 1), ditherSeed('0123456789abcdef', 1, 0), ditherSeed('0123456789abcdee', 0, 0), ditherSeed(null, 0, 0)]) {
    const b = fillDither(seed, new Float32Array(1000));
    let same = 0;
    for (let i = 0; i < 1000; i++) same += +(b[i] === a[i]);
    assert.ok(same < 5, `${same} equal offsets`);
  }
});
