import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ByteReader, ByteWriter } from '../lib/core/bytes.js';
import { ExcpError } from '../lib/core/errors.js';
import { buildDecodeTable, codedBits, countSymbols, cumulative, empiricalEntropyBits, frequencyTableBytes, normalizeFrequencies, readFrequencies, writeFrequencies } from '../lib/coding/frequency.js';
import { Prng } from './support/prng.js';

function written(freqs: number[], precisionBits: number): Uint8Array {
  const w = new ByteWriter(16);
  writeFrequencies(w, Uint32Array.from(freqs), precisionBits);
  return w.finish().slice();
}

function randomCounts(rng: Prng, size: number): Uint32Array {
  const counts = new Uint32Array(size);
  const shape = rng.int(3);
  for (let s = 0; s < size; s++) {
    if (shape === 0) counts[s] = rng.int(1000);
    else if (shape === 1) counts[s] = rng.next() < 0.3 ? Math.floor(1e6 * Math.pow(0.5, s)) : 0;
    else counts[s] = rng.next() < 0.5 ? 1 + rng.int(3) : s === 0 ? 1e6 : 0;
  }
  if (counts.every((c) => c === 0)) counts[rng.int(size)] = 1;
  return counts;
}

describe('frequency: counting and entropy', () => {
  it('counts symbols', () => {
    assert.deepEqual([...countSymbols(Uint8Array.of(0, 2, 2, 1, 2), 3)], [1, 1, 3]);
    const acc = new Uint32Array(4);
    countSymbols(Uint8Array.of(3, 3), 4, acc);
    countSymbols(Uint8Array.of(3, 0), 4, acc);
    assert.deepEqual([...acc], [1, 0, 0, 3]);
  });

  it('refuses a symbol outside the alphabet with ERR_OUT_OF_RANGE', () => {
    assert.throws(() => countSymbols(Uint8Array.of(0, 5), 5), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('computes n * H in bits', () => {
    assert.equal(empiricalEntropyBits([1, 1]), 2);
    assert.equal(empiricalEntropyBits([2, 2, 4]), 12); // 8 symbols * 1.5 bits
    assert.equal(empiricalEntropyBits([0, 7, 0]), 0);
    assert.equal(empiricalEntropyBits([]), 0);
  });
});

describe('frequency: normalization', () => {
  it('keeps the invariants on 200 seeded random histograms', () => {
    for (let seed = 1; seed <= 200; seed++) {
      const rng = new Prng(seed);
      const counts = randomCounts(rng, 1 + rng.int(256));
      let used = 0;
      for (const c of counts) if (c > 0) used++;
      const minBits = Math.ceil(Math.log2(used));
      const bits = minBits + rng.int(17 - minBits);
      const freqs = normalizeFrequencies(counts, bits);
      let sum = 0;
      for (let s = 0; s < counts.length; s++) {
        sum += freqs[s]!;
        assert.equal(freqs[s]! > 0, counts[s]! > 0, `seed ${seed} symbol ${s}`);
      }
      assert.equal(sum, 1 << bits, `seed ${seed}`);
    }
  });

  it('gets within 0.01 bits/symbol of the entropy at 16-bit precision', () => {
    const counts = Uint32Array.of(500000, 250000, 125000, 60000, 30000, 20000, 10000, 4000, 900, 100);
    const freqs = normalizeFrequencies(counts, 16);
    const n = counts.reduce((a, b) => a + b, 0);
    const excess = (codedBits(counts, freqs, 16) - empiricalEntropyBits(counts)) / n;
    assert.ok(excess >= 0 && excess < 0.01, `excess ${excess}`);
  });

  it('matches exhaustive search on a small case', () => {
    const counts = Uint32Array.of(13, 1, 1, 7, 2);
    const freqs = normalizeFrequencies(counts, 3); // 8 slots for 5 used symbols
    let best = Infinity;
    for (let a = 1; a <= 4; a++) for (let b = 1; b <= 4; b++) for (let c = 1; c <= 4; c++) for (let d = 1; d <= 4; d++) {
      const e = 8 - a - b - c - d;
      if (e >= 1) best = Math.min(best, codedBits(counts, Uint32Array.of(a, b, c, d, e), 3));
    }
    assert.ok(Math.abs(codedBits(counts, freqs, 3) - best) < 1e-9, `${[...freqs]}`);
  });

  it('refuses an empty histogram or too many symbols with ERR_OUT_OF_RANGE', () => {
    assert.throws(() => normalizeFrequencies(new Uint32Array(4), 8), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => normalizeFrequencies(Uint32Array.of(1, 1, 1), 1), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => normalizeFrequencies(Uint32Array.of(1), 17), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('handles precision 0 (a single symbol owns the total of 1)', () => {
    assert.deepEqual([...normalizeFrequencies(Uint32Array.of(0, 9, 0), 0)], [0, 1, 0]);
  });

  it('builds cumulative and decode tables that agree', () => {
    const freqs = Uint32Array.of(3, 0, 4, 1);
    assert.deepEqual([...cumulative(freqs)], [0, 3, 3, 7, 8]);
    assert.deepEqual([...buildDecodeTable(freqs, 3)], [0, 0, 0, 2, 2, 2, 2, 3]);
    assert.throws(() => buildDecodeTable(freqs, 4), { code: 'ERR_CORRUPT' });
  });
});

describe('frequency: serialisation', () => {
  it('writes [3,0,0,12,1] @4 bits as 4-bit tokens', () => {
    // head varint 0 = (0 trailing unused) * 2 + (width 4)
    // tokens 3 | 0,1 (run of 2 unused) | 12 | 1, packed low nibble first:
    //   0x03 = tokens 3, 0;  0xc1 = tokens 1, 12;  0x01 = token 1
    const bytes = written([3, 0, 0, 12, 1], 4);
    assert.equal(Buffer.from(bytes).toString('hex'), '0003c101');
    const r = new ByteReader(bytes);
    assert.deepEqual([...readFrequencies(r, 5, 4)], [3, 0, 0, 12, 1]);
    assert.equal(r.offset, 4);
  });

  it('writes [1,1,1,1,0,0] @2 bits as 2-bit tokens with implied trailing zeros', () => {
    // head varint 5 = (2 trailing unused) * 2 + (width 2); tokens 1,1,1,1 -> 0b01010101
    const bytes = written([1, 1, 1, 1, 0, 0], 2);
    assert.equal(Buffer.from(bytes).toString('hex'), '0555');
    const r = new ByteReader(bytes);
    assert.deepEqual([...readFrequencies(r, 6, 2)], [1, 1, 1, 1, 0, 0]);
    assert.equal(r.offset, 2);
  });

  it('writes large frequencies as varints after the tokens', () => {
    // 4-bit tokens: 15 (escape), 1 -> 0x1f; then varint 65535 - 15 = 65520 -> f0 ff 03
    const bytes = written([65535, 1], 16);
    assert.equal(Buffer.from(bytes).toString('hex'), '001ff0ff03');
    assert.equal(frequencyTableBytes(Uint32Array.of(65535, 1)), bytes.length);
  });

  it('round-trips 200 seeded random tables and predicts their size', () => {
    for (let seed = 1; seed <= 200; seed++) {
      const rng = new Prng(seed + 1000);
      const size = 1 + rng.int(256);
      const counts = randomCounts(rng, size);
      const bits = 16 - rng.int(6);
      const freqs = normalizeFrequencies(counts, bits);
      const w = new ByteWriter(16);
      w.u8(0xee); // the table must not depend on its offset
      writeFrequencies(w, freqs, bits);
      const bytes = w.finish().slice();
      assert.equal(bytes.length - 1, frequencyTableBytes(freqs), `seed ${seed}`);
      const r = new ByteReader(bytes, 'spec', 1);
      assert.deepEqual(readFrequencies(r, size, bits), freqs, `seed ${seed}`);
      assert.equal(r.offset, bytes.length, `seed ${seed}`);
    }
  });

  it('keeps a skewed 256-symbol table near a quarter byte per rare symbol', () => {
    const counts = new Uint32Array(256).fill(1);
    counts[0] = 0;
    const freqs = normalizeFrequencies(counts, 8);
    assert.ok(frequencyTableBytes(freqs) <= 70, `${frequencyTableBytes(freqs)} bytes`);
  });

  it('refuses writing a table with the wrong sum (ERR_INVALID_ARG)', () => {
    assert.throws(() => written([1, 2], 2), { code: 'ERR_INVALID_ARG' });
  });

  it('rejects a stored table whose sum is wrong (ERR_CORRUPT)', () => {
    const bytes = written([3, 0, 0, 12, 1], 4);
    assert.throws(() => readFrequencies(new ByteReader(bytes), 5, 5), { code: 'ERR_CORRUPT' });
    const bad = bytes.slice();
    bad[2] = 0xc2; // token 1 -> 2: sum 17
    assert.throws(() => readFrequencies(new ByteReader(bad), 5, 4), { code: 'ERR_CORRUPT' });
  });

  it('rejects a zero run past the alphabet or too many trailing symbols (ERR_CORRUPT)', () => {
    assert.throws(() => readFrequencies(new ByteReader(Uint8Array.of(0x00, 0xf0)), 5, 4), { code: 'ERR_CORRUPT' });
    assert.throws(() => readFrequencies(new ByteReader(Uint8Array.of(0x0e)), 5, 4), { code: 'ERR_CORRUPT' });
  });

  it('reports a cut table as ERR_TRUNCATED', () => {
    const bytes = written([65535, 1], 16);
    assert.throws(() => readFrequencies(new ByteReader(bytes.subarray(0, 3)), 2, 16), { code: 'ERR_TRUNCATED' });
  });

  it('never throws anything but ExcpError on random bytes', () => {
    for (let seed = 1; seed <= 300; seed++) {
      const rng = new Prng(seed);
      const bytes = new Uint8Array(rng.int(40));
      for (let i = 0; i < bytes.length; i++) bytes[i] = rng.int(256);
      try {
        const freqs = readFrequencies(new ByteReader(bytes), 1 + rng.int(256), rng.int(17));
        assert.ok(freqs.length > 0);
      } catch (err) {
        assert.ok(err instanceof ExcpError, `seed ${seed}: ${String(err)}`);
      }
    }
  });
});
