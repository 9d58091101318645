import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ByteReader } from '../lib/core/bytes.js';
import { ExcpError } from '../lib/core/errors.js';
import { countSymbols, cumulative, empiricalEntropyBits, readFrequencies } from '../lib/coding/frequency.js';
import { Prng } from './support/prng.js';
import { decodeSymbols, encodeSymbols } from '../lib/coding/symbols.js';

type Skew = 'uniform' | 'geometric' | 'zeros99' | 'zeros90' | 'single';

function makeStream(rng: Prng, n: number, size: number, skew: Skew): Uint8Array {
  const out = new Uint8Array(n);
  const logRatio = Math.log(0.7);
  for (let i = 0; i < n; i++) {
    let s = 0;
    if (skew === 'uniform') s = rng.int(size);
    else if (skew === 'geometric') s = Math.min(size - 1, Math.floor(Math.log(1 - rng.next()) / logRatio));
    else if (skew === 'zeros99') s = rng.next() < 0.99 ? 0 : 1 + rng.int(size - 1);
    else if (skew === 'zeros90') s = rng.next() < 0.9 ? 0 : 1 + rng.int(size - 1);
    else s = size - 1;
    out[i] = s;
  }
  return out;
}

function roundTrip(symbols: Uint8Array, size: number, contexts?: Uint8Array, numContexts?: number): Uint8Array {
  const coded = encodeSymbols(symbols, size, contexts, numContexts);
  assert.deepEqual(decodeSymbols(coded, symbols.length, size, contexts, numContexts), symbols);
  return coded;
}

/**
 * Reference encoder built only from the documented format (spec/FORMAT.md,
 * lib/symbols.ts header): plain rANS steps in decoding order, then run
 * backwards. The optimized loops in symbols.ts must produce exactly these bytes.
 */
function referenceEncode(coded: Uint8Array, symbols: Uint8Array, size: number, contexts?: Uint8Array): Uint8Array {
  const r = new ByteReader(coded);
  const mode = r.u8();
  assert.ok(mode === 2 || mode === 3, `mode ${mode}`);
  const used = new Set<number>(mode === 3 ? contexts : [0]);
  const models = new Map<number, { mps: number; escape: number; bits: number; freqs: Uint32Array; cum: Uint32Array }>();
  for (let c = 0; c < 256; c++) {
    if (!used.has(c)) continue;
    const mps = r.u8();
    const escape = r.varint();
    const bits = escape === 0 ? 0 : r.u8();
    const freqs = escape === 0 ? new Uint32Array(size) : readFrequencies(r, size, bits);
    models.set(c, { mps, escape, bits, freqs, cum: cumulative(freqs) });
  }
  // Steps in decoding order: [state, freq, cum, total bits].
  const steps: [number, number, number, number][] = [];
  for (let i = 0; i < symbols.length; i++) {
    const m = models.get(mode === 3 ? contexts![i]! : 0)!;
    const s = symbols[i]!;
    if (m.escape === 0) continue; // constant: no step
    if (m.escape < 65536) {
      if (s === m.mps) {
        steps.push([i % 2, 65536 - m.escape, m.escape, 16]);
        continue;
      }
      steps.push([i % 2, m.escape, 0, 16]);
    }
    steps.push([i % 2, m.freqs[s]!, m.cum[s]!, m.bits]);
  }
  const state = [2 ** 23, 2 ** 23];
  const reversed: number[] = [];
  for (let k = steps.length - 1; k >= 0; k--) {
    const [j, f, cum, b] = steps[k]!;
    let x = state[j]!;
    while (x >= f * 2 ** (31 - b)) {
      reversed.push(x % 256);
      x = Math.floor(x / 256);
    }
    state[j] = Math.floor(x / f) * 2 ** b + (x % f) + cum;
  }
  const all = new Uint8Array(r.offset + 8 + reversed.length);
  all.set(coded.subarray(0, r.offset));
  new DataView(all.buffer).setUint32(r.offset, state[0]!, true);
  new DataView(all.buffer).setUint32(r.offset + 4, state[1]!, true);
  all.set(reversed.reverse(), r.offset + 8);
  return all;
}

describe('symbols: tiny inputs (golden lengths)', () => {
  it('codes 0 symbols as 0 bytes and decodes them from anything', () => {
    assert.equal(encodeSymbols(new Uint8Array(0), 16).length, 0);
    assert.equal(decodeSymbols(new Uint8Array(0), 0, 16).length, 0);
  });

  it('codes 1 symbol as [mode 1 = constant, symbol]', () => {
    assert.deepEqual([...roundTrip(Uint8Array.of(7), 16)], [1, 7]);
  });

  it('codes 2 different symbols raw: [mode 0, 3, 5]', () => {
    assert.deepEqual([...roundTrip(Uint8Array.of(3, 5), 16)], [0, 3, 5]);
  });

  it('codes 10 symbols raw and 1000 zeros as 2 bytes', () => {
    assert.equal(roundTrip(Uint8Array.of(0, 1, 0, 0, 2, 0, 0, 0, 3, 0), 4).length, 11);
    assert.equal(roundTrip(new Uint8Array(1000), 4).length, 2);
  });

  it('codes 100 mostly-zero symbols below raw size', () => {
    const s = new Uint8Array(100);
    s[10] = 1;
    s[50] = 2;
    assert.ok(roundTrip(s, 16).length < 20);
  });
});

describe('symbols: round trips', () => {
  it('round-trips 80 seeded streams over sizes, skews, lengths and contexts', () => {
    const skews: Skew[] = ['uniform', 'geometric', 'zeros99', 'zeros90', 'single'];
    for (let seed = 1; seed <= 80; seed++) {
      const rng = new Prng(seed);
      const size = 1 + rng.int(256);
      const n = [0, 1, 2, 10, 100][seed % 5]! + rng.int(5000);
      const symbols = makeStream(rng, n, size, skews[seed % skews.length]!);
      const numContexts = 1 + rng.int(256);
      const contexts = new Uint8Array(n);
      for (let i = 0; i < n; i++) contexts[i] = rng.next() < 0.5 ? symbols[i]! % numContexts : rng.int(numContexts);
      try {
        roundTrip(symbols, size);
        roundTrip(symbols, size, contexts, numContexts);
      } catch (err) {
        assert.fail(`seed ${seed} (size ${size}, n ${n}): ${String(err)}`);
      }
    }
  });

  it('writes exactly the bytes of a reference rANS encoder (order-0 and per-context)', () => {
    for (let seed = 1; seed <= 12; seed++) {
      const rng = new Prng(seed + 500);
      const size = 4 + rng.int(40);
      const symbols = makeStream(rng, seed % 3 === 0 ? 100000 : 20000, size, seed % 3 === 0 ? 'zeros99' : seed % 2 ? 'zeros90' : 'geometric');
      const contexts = new Uint8Array(symbols.length);
      for (let i = 0; i < symbols.length; i++) {
        contexts[i] = rng.int(4);
        // Make the context informative so that per-context mode gets picked.
        if (contexts[i]! > 0 && rng.next() < 0.9) symbols[i] = contexts[i]!;
      }
      const plain = encodeSymbols(symbols, size);
      assert.deepEqual(plain, referenceEncode(plain, symbols, size), `seed ${seed} order-0`);
      const withContexts = encodeSymbols(symbols, size, contexts, 4);
      assert.equal(withContexts[0], 3, `seed ${seed}: per-context mode`);
      assert.deepEqual(withContexts, referenceEncode(withContexts, symbols, size, contexts), `seed ${seed} contexts`);
    }
  });
});

describe('symbols: size against the empirical entropy', () => {
  it('stays within 1% + 64 bytes of n*H/8 on 1M-symbol streams', () => {
    const sizes = [2, 3, 4, 7, 16, 17, 31, 64, 100, 128, 200, 255, 256];
    const skews: Skew[] = ['uniform', 'geometric', 'zeros99', 'zeros90', 'single'];
    const rng = new Prng(2024);
    for (const size of sizes) {
      for (const skew of skews) {
        const symbols = makeStream(rng, 1_000_000, size, skew);
        const entropyBytes = empiricalEntropyBits(countSymbols(symbols, size)) / 8;
        const coded = encodeSymbols(symbols, size);
        const bound = entropyBytes * 1.01 + 64;
        assert.ok(coded.length <= bound, `size ${size} ${skew}: ${coded.length} bytes > bound ${bound.toFixed(0)}`);
        if (size % 2 === 1) assert.deepEqual(decodeSymbols(coded, symbols.length, size), symbols);
      }
    }
  });

  it('uses informative contexts to go well below order-0 entropy', () => {
    const rng = new Prng(77);
    const n = 200_000;
    const contexts = new Uint8Array(n);
    const symbols = new Uint8Array(n);
    for (let i = 0; i < n; i++) {
      contexts[i] = rng.int(16);
      symbols[i] = rng.next() < 0.95 ? contexts[i]! : rng.int(16); // mostly determined by the context
    }
    const order0Bytes = empiricalEntropyBits(countSymbols(symbols, 16)) / 8;
    const coded = roundTrip(symbols, 16, contexts, 16);
    assert.ok(coded.length < order0Bytes * 0.2, `${coded.length} bytes vs order-0 ${order0Bytes.toFixed(0)}`);
  });

  it('does not get notably worse with uninformative contexts', () => {
    const rng = new Prng(78);
    const n = 200_000;
    const symbols = makeStream(rng, n, 16, 'zeros90');
    const contexts = new Uint8Array(n);
    for (let i = 0; i < n; i++) contexts[i] = rng.int(256);
    const plain = roundTrip(symbols, 16);
    const withContexts = roundTrip(symbols, 16, contexts, 256);
    assert.ok(withContexts.length <= plain.length + 2, `${withContexts.length} vs ${plain.length}`);
  });
});

describe('symbols: errors', () => {
  it('refuses a symbol outside the alphabet (ERR_OUT_OF_RANGE)', () => {
    assert.throws(() => encodeSymbols(Uint8Array.of(0, 4), 4), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('refuses a context outside numContexts (ERR_OUT_OF_RANGE)', () => {
    assert.throws(() => encodeSymbols(Uint8Array.of(0, 1), 4, Uint8Array.of(0, 2), 2), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('refuses contexts of the wrong length (ERR_INVALID_ARG) and bad sizes (ERR_OUT_OF_RANGE)', () => {
    assert.throws(() => encodeSymbols(Uint8Array.of(0, 1), 4, Uint8Array.of(0), 2), { code: 'ERR_INVALID_ARG' });
    assert.throws(() => encodeSymbols(Uint8Array.of(0), 257), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => encodeSymbols(Uint8Array.of(0), 4, undefined, 0), { code: 'ERR_OUT_OF_RANGE' });
  });

  it('rejects an unknown mode and a raw stream of the wrong length (ERR_CORRUPT)', () => {
    assert.throws(() => decodeSymbols(Uint8Array.of(9, 0, 0), 2, 4), { code: 'ERR_CORRUPT' });
    assert.throws(() => decodeSymbols(Uint8Array.of(0, 1, 2), 3, 4), { code: 'ERR_CORRUPT' });
    assert.throws(() => decodeSymbols(Uint8Array.of(0, 1, 7), 2, 4), { code: 'ERR_CORRUPT' });
  });

  it('asks for contexts when the stream was coded with them (ERR_INVALID_ARG)', () => {
    const symbols = new Uint8Array(1000);
    const contexts = new Uint8Array(1000);
    for (let i = 0; i < 1000; i++) {
      contexts[i] = i % 2;
      symbols[i] = i % 2 ? 3 : 0;
    }
    const coded = roundTrip(symbols, 4, contexts, 2);
    assert.equal(coded[0], 3);
    assert.throws(() => decodeSymbols(coded, 1000, 4), { code: 'ERR_INVALID_ARG' });
  });

  it('detects a truncated stream or a wrong count', () => {
    const symbols = makeStream(new Prng(3), 50000, 16, 'zeros90');
    const coded = encodeSymbols(symbols, 16);
    assert.throws(() => decodeSymbols(coded.subarray(0, coded.length - 20), symbols.length, 16), ExcpError);
    assert.throws(() => decodeSymbols(coded, symbols.length - 100, 16), { code: 'ERR_CORRUPT' });
    assert.throws(() => decodeSymbols(coded, symbols.length + 100, 16), { code: 'ERR_CORRUPT' });
  });
});

describe('symbols: garbage input', () => {
  it('raises only ExcpError on random and mutated bytes, never hangs, then still works', () => {
    const valid = makeStream(new Prng(4), 3000, 16, 'zeros90');
    const coded = encodeSymbols(valid, 16);
    for (let seed = 1; seed <= 300; seed++) {
      const rng = new Prng(seed);
      let bytes: Uint8Array;
      if (seed % 2) {
        bytes = new Uint8Array(rng.int(100));
        for (let i = 0; i < bytes.length; i++) bytes[i] = rng.int(256);
        if (bytes.length > 0) bytes[0] = rng.int(4);
      } else {
        bytes = coded.slice();
        for (let k = 0; k < 3; k++) bytes[rng.int(bytes.length)] = rng.int(256);
      }
      const size = seed % 3 ? 16 : 1 + rng.int(256);
      const count = seed % 5 ? valid.length : rng.int(10000);
      const contexts = new Uint8Array(count);
      for (let i = 0; i < count; i++) contexts[i] = rng.int(8);
      try {
        const out = decodeSymbols(bytes, count, size, contexts, 8);
        assert.equal(out.length, count);
      } catch (err) {
        assert.ok(err instanceof ExcpError, `seed ${seed}: ${String(err)}`);
      }
    }
    assert.deepEqual(decodeSymbols(coded, valid.length, 16), valid);
  });
});
