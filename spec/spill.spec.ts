import { describe, it } from 'node:test';
import { readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import assert from 'node:assert/strict';
import { Prng } from './support/prng.js';
import { SpillStore } from '../lib/io/spill.js';
import { serializeSafetensors } from '../lib/formats/safetensors.js';
import { randomFloats } from './helpers.js';
import { compressBuffer } from '../lib/api/compress.js';
import { restoreBuffer } from '../lib/api/restore.js';

/** Float32 bytes of a restored-moment-like tensor: few distinct values, some exceptions. */
function moments(rng: Prng, n: number, distinct: number, exceptions: number): Uint8Array {
  const values = new Float32Array(n);
  const table = [0, -0, 1e-8, -3.5, Number.NaN].concat(Array.from({ length: distinct }, () => rng.next() - 0.5));
  for (let i = 0; i < n; i++) values[i] = table[rng.int(Math.min(table.length, distinct))]!;
  for (let k = 0; k < exceptions; k++) values[rng.int(n)] = rng.next() * 1e6;
  const bytes = new Uint8Array(values.buffer);
  // A signalling NaN pattern must come back bit for bit.
  if (n > 8) new DataView(bytes.buffer).setUint32(4, 0x7fa00001, true);
  return bytes;
}

describe('spill store', () => {
  it('gives back exactly the bytes put, in memory and on disk, packed or not', () => {
    const rng = new Prng(11);
    for (const limit of [0, 64 * 1024 * 1024]) {
      const store = new SpillStore(limit);
      const put = new Map<string, Uint8Array>();
      const cases: Uint8Array[] = [
        moments(rng, 100_000, 4, 0),
        moments(rng, 100_000, 5, 50),
        moments(rng, 100_000, 16, 10),
        moments(rng, 50_000, 3, 5000), // too many escapes: stored as is
        new Uint8Array(new Float32Array(20_000).map(() => rng.next())), // all distinct
        moments(rng, 1000, 2, 0), // small: stored as is
        new Uint8Array(10_001).fill(7), // not whole words
        moments(rng, 30_001, 4, 3).subarray(4), // aligned view into a larger buffer
        moments(rng, 30_001, 4, 3).subarray(1, 80_001), // unaligned view
      ];
      cases.forEach((bytes, i) => {
        const copy = bytes.slice();
        store.put(`k${i}`, bytes);
        put.set(`k${i}`, copy);
      });
      const raw = cases.reduce((sum, b) => sum + b.length, 0);
      // The moment-like tensors are packed to 4 bits an element.
      if (limit === 0) assert.ok(store.spilledBytes > 0 && store.spilledBytes < 0.5 * raw, `${store.spilledBytes} of ${raw} bytes`);
      for (const [key, bytes] of put) assert.deepEqual(store.take(key), bytes, `${key} (limit ${limit})`);
      assert.equal(store.size, 0);
      store.dispose();
    }
  });
});

describe('spill file', () => {
  it('leaves no temporary folder behind even while open (the file is unlinked at once)', () => {
    const before = new Set(readdirSync(tmpdir()).filter((f) => f.startsWith('excp-spill-')));
    const store = new SpillStore(16);
    const data = Uint8Array.from({ length: 4096 }, (_, i) => (i * 7) & 255);
    store.put('a', data);
    const during = readdirSync(tmpdir()).filter((f) => f.startsWith('excp-spill-') && !before.has(f));
    assert.deepEqual(during, [], 'no folder while the store is in use');
    assert.deepEqual(store.take('a'), data);
    store.dispose();
  });
});

describe('restore writer', () => {
  it('finishes when a spilled piece is as large as what the writer lets wait on the reader (4 MiB)', async () => {
    // One parameter of 2^21 + 5 float32 elements in chunks of 2^20: the
    // moments of every chunk are spilled, and each piece is exactly 4 MiB.
    const rng = new Prng(21);
    const n = (1 << 21) + 5;
    const base = randomFloats(rng, n, 0.02);
    const m = randomFloats(rng, n, 1e-3);
    const v = new Float32Array(n);
    const w = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      v[i] = m[i]! * m[i]! + 1e-7;
      w[i] = base[i]! - 1e-3 * Math.sign(m[i]!) + 1e-5 * (rng.next() - 0.5);
    }
    const f32 = (a: Float32Array) => new Uint8Array(a.buffer);
    const previous = serializeSafetensors([{ name: 'w', dtype: 'F32', shape: [n], data: f32(base) }]);
    const current = serializeSafetensors([
      { name: 'w', dtype: 'F32', shape: [n], data: f32(w) },
      { name: 'w.exp_avg', dtype: 'F32', shape: [n], data: f32(m) },
      { name: 'w.exp_avg_sq', dtype: 'F32', shape: [n], data: f32(v) },
    ]);
    const container = await compressBuffer(current, previous, { chunkElements: 1 << 20, threads: 0 });
    const restored = await restoreBuffer(container, previous, { threads: 0 });
    assert.equal(restored.length, current.length);
  });
});
