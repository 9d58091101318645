/**
 * The building blocks of the factored second moment and of the dither
 * (lib/method/rank1.ts, lib/method/dither.ts).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chunkGrid, rank1Estimate, rank1Factors, rank1Table, roundFactor } from '../lib/method/rank1.js';
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

test('rank1Table gives rank1Estimate bit for bit: as a table of factor pairs, and per element where pairs are many', () => {
  const rng = new Prng(11);
  const bits = (a: Float32Array) => [...new Uint32Array(a.buffer, a.byteOffset, a.length)];
  const cases: [rows: number, columns: number, start: number, n: number, levels: number][] = [
    [300, 64, 0, 300 * 64, 6], // few distinct factors: a table
    [300, 64, 37, 5000, 6], // partial rows at both ends
    [1, 4096, 100, 3000, 20], // within one row
    [50, 3, 0, 150, 1000], // factors nearly all different: per element
  ];
  for (const [rows, columns, start, n, levels] of cases) {
    const v = new Float32Array(rows * columns).map(() => 1e-9 * 2 ** Math.floor(rng.next() * Math.log2(levels + 1)) * (1 + rng.next()));
    const chunk = v.subarray(start, start + n);
    const { rows: r, cols: c } = rank1Factors(chunk, start, columns);
    const expected = rank1Estimate(r, c, start, columns, new Float32Array(n));
    const table = rank1Table(r, c, start, columns, new Int32Array(n), new Float32Array(n));
    const got = Float32Array.from(table.index, (k) => table.values[k]!);
    if (levels === 1000) assert.equal(table.values.length, n);
    else assert.ok(table.values.length < n / 2, `a table of ${table.values.length} for ${n} elements`);
    assert.deepEqual(bits(got), bits(expected), `rows ${rows} columns ${columns} start ${start} n ${n}`);
  }
  // Factors told apart by their bits: -0 and 0 give v^ of different signs.
  const r = Float32Array.of(-0, 0, 1);
  const c = Float32Array.of(2, 2, 2, 2);
  const expected = rank1Estimate(r, c, 0, 4, new Float32Array(12));
  const table = rank1Table(r, c, 0, 4, new Int32Array(12), new Float32Array(12));
  assert.ok(table.values.length < 12);
  assert.deepEqual(bits(Float32Array.from(table.index, (k) => table.values[k]!)), bits(expected));
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
