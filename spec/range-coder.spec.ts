import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { ExcpError } from '../lib/core/errors.js';
import { Prng } from './support/prng.js';
import { PROB_INIT, RangeDecoder, RangeEncoder, createBitModels, decodeBitTree, encodeBitTree } from '../lib/coding/range-coder.js';

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

/** One coding operation, replayed by the decoder. */
type Op =
  | { kind: 'static'; cum: number; freq: number; bits: number }
  | { kind: 'total'; cum: number; freq: number; total: number }
  | { kind: 'binary'; bit: number; freq0: number; bits: number }
  | { kind: 'bit'; index: number; bit: number }
  | { kind: 'direct'; value: number; bits: number }
  | { kind: 'tree'; value: number };

function randomOps(rng: Prng, count: number): Op[] {
  const ops: Op[] = [];
  for (let i = 0; i < count; i++) {
    const k = rng.int(6);
    if (k === 0) {
      const bits = rng.int(17);
      const cum = rng.int(1 << bits);
      ops.push({ kind: 'static', cum, freq: 1 + rng.int((1 << bits) - cum), bits });
    } else if (k === 1) {
      const total = 1 + rng.int(65536);
      const cum = rng.int(total);
      ops.push({ kind: 'total', cum, freq: 1 + rng.int(total - cum), total });
    } else if (k === 2) {
      const bits = 1 + rng.int(16);
      ops.push({ kind: 'binary', bit: rng.int(2), freq0: 1 + rng.int((1 << bits) - 1), bits });
    } else if (k === 3) {
      ops.push({ kind: 'bit', index: rng.int(4), bit: rng.next() < 0.85 ? 0 : 1 });
    } else if (k === 4) {
      const bits = 1 + rng.int(16);
      ops.push({ kind: 'direct', value: rng.int(1 << bits), bits });
    } else {
      ops.push({ kind: 'tree', value: rng.int(256) });
    }
  }
  return ops;
}

function encodeOps(ops: Op[]): Uint8Array {
  const enc = new RangeEncoder(8);
  const probs = createBitModels(4 + 255);
  for (const op of ops) {
    if (op.kind === 'static') enc.encode(op.cum, op.freq, op.bits);
    else if (op.kind === 'total') enc.encodeTotal(op.cum, op.freq, op.total);
    else if (op.kind === 'binary') enc.encodeBinary(op.bit, op.freq0, op.bits);
    else if (op.kind === 'bit') enc.encodeBit(probs, op.index, op.bit);
    else if (op.kind === 'direct') enc.encodeDirect(op.value, op.bits);
    else encodeBitTree(enc, probs, 4, 8, op.value);
  }
  return enc.finish().slice();
}

/** Replays ops; returns false at the first mismatch. */
function decodeOps(dec: RangeDecoder, ops: Op[]): boolean {
  const probs = createBitModels(4 + 255);
  for (const op of ops) {
    if (op.kind === 'static') {
      const t = dec.decodeTarget(op.bits);
      if (t < op.cum || t >= op.cum + op.freq) return false;
      dec.consume(op.cum, op.freq, op.bits);
    } else if (op.kind === 'total') {
      const t = dec.decodeTargetTotal(op.total);
      if (t < op.cum || t >= op.cum + op.freq) return false;
      dec.consumeTotal(op.cum, op.freq, op.total);
    } else if (op.kind === 'binary') {
      if (dec.decodeBinary(op.freq0, op.bits) !== op.bit) return false;
    } else if (op.kind === 'bit') {
      if (dec.decodeBit(probs, op.index) !== op.bit) return false;
    } else if (op.kind === 'direct') {
      if (dec.decodeDirect(op.bits) !== op.value) return false;
    } else if (decodeBitTree(dec, probs, 4, 8) !== op.value) return false;
  }
  return true;
}

describe('range-coder: hand-checked bytes', () => {
  it('codes nothing as 0 bytes', () => {
    assert.equal(new RangeEncoder().finish().length, 0);
  });

  it('codes the upper half of 2 as 0x40 (value 0.01b: the range starts at 2^31 - 1, i.e. 1/2)', () => {
    const enc = new RangeEncoder();
    enc.encode(1, 1, 1); // r = 0x3fffffff: low = 0x3fffffff, range = 0x7fffffff - low = 0x40000000
    // flush: low rounded up to a multiple of 2^24 = 0x40000000 -> bytes 40 00, trailing zero dropped
    assert.equal(hex(enc.finish()), '40');
  });

  it('codes "0 then 1" of 2 as 0x20 (value 0.001b)', () => {
    const enc = new RangeEncoder();
    enc.encode(0, 1, 1);
    enc.encode(1, 1, 1);
    assert.equal(hex(enc.finish()), '20');
  });

  it('codes ten base-4 digits 0123012301 as their bits after a leading 0: 0 00011011 00011011 0001', () => {
    const enc = new RangeEncoder();
    for (let i = 0; i < 10; i++) enc.encode(i % 4, 1, 2);
    const bytes = enc.finish().slice();
    assert.equal(hex(bytes), '0d8d88'); // 00001101 10001101 10001000
    const dec = new RangeDecoder(bytes);
    for (let i = 0; i < 10; i++) {
      assert.equal(dec.decodeDirect(2), i % 4);
    }
    assert.equal(dec.unread, 0);
    assert.ok(dec.overrun <= 4);
  });

  it('spends 0 bits on a symbol that owns the whole total (flush bytes 00 00 are implied)', () => {
    const enc = new RangeEncoder();
    for (let i = 0; i < 1000; i++) enc.encode(0, 256, 8);
    assert.equal(hex(enc.finish()), '');
  });

  it('has golden lengths for 1, 2 and 10 random-ish symbols of 2^12', () => {
    const lengths = [1, 2, 10].map((n) => {
      const enc = new RangeEncoder();
      for (let i = 0; i < n; i++) enc.encode(1000 + ((i * 977) % 3000), 96, 12); // ~5.4 bits each
      return enc.finish().length;
    });
    assert.deepEqual(lengths, [1, 2, 7]);
  });
});

describe('range-coder: errors', () => {
  it('refuses a zero-frequency symbol with ERR_IMPOSSIBLE_SYMBOL', () => {
    const enc = new RangeEncoder();
    assert.throws(() => enc.encode(3, 0, 4), { code: 'ERR_IMPOSSIBLE_SYMBOL' });
    assert.throws(() => enc.encodeTotal(3, 0, 10), { code: 'ERR_IMPOSSIBLE_SYMBOL' });
  });

  it('refuses a window outside the buffer with ERR_OUT_OF_RANGE', () => {
    assert.throws(() => new RangeDecoder(new Uint8Array(4), 2, 5), { code: 'ERR_OUT_OF_RANGE' });
    assert.throws(() => new RangeDecoder(new Uint8Array(4), 3, 2), { code: 'ERR_OUT_OF_RANGE' });
  });
});

describe('range-coder: round trips', () => {
  it('replays 60 seeded random mixes of every operation', () => {
    for (let seed = 1; seed <= 60; seed++) {
      const rng = new Prng(seed);
      const ops = randomOps(rng, [0, 1, 2, 10][seed % 4]! + rng.int(3000));
      const bytes = encodeOps(ops);
      const dec = new RangeDecoder(bytes);
      assert.ok(decodeOps(dec, ops), `seed ${seed}`);
      assert.equal(dec.unread, 0, `seed ${seed}: all bytes consumed`);
      assert.ok(dec.overrun <= 4, `seed ${seed}: overrun ${dec.overrun}`);
    }
  });

  it('decodes from a window inside a larger buffer', () => {
    const ops = randomOps(new Prng(99), 500);
    const bytes = encodeOps(ops);
    const framed = new Uint8Array(bytes.length + 20).fill(0xaa);
    framed.set(bytes, 7);
    assert.ok(decodeOps(new RangeDecoder(framed, 7, 7 + bytes.length), ops));
  });

  it('propagates carries through long runs of 0xFF', () => {
    // Symbols at the very top of the range drive low towards 0xFF.. bytes; a
    // low symbol then has to carry into them.
    const rng = new Prng(5);
    const ops: Op[] = [];
    for (let i = 0; i < 20000; i++) {
      ops.push(rng.next() < 0.97 ? { kind: 'static', cum: 65535, freq: 1, bits: 16 } : { kind: 'static', cum: rng.int(65535), freq: 1, bits: 16 });
    }
    const bytes = encodeOps(ops);
    let longestFF = 0;
    for (let i = 0, run = 0; i < bytes.length; i++) {
      run = bytes[i] === 0xff ? run + 1 : 0;
      longestFF = Math.max(longestFF, run);
    }
    assert.ok(longestFF >= 3, `longest 0xFF run ${longestFF}`);
    assert.ok(decodeOps(new RangeDecoder(bytes), ops));
  });

  it('signals an exhausted decoder through overrun', () => {
    const ops = randomOps(new Prng(11), 200);
    const bytes = encodeOps(ops);
    const dec = new RangeDecoder(bytes);
    assert.ok(decodeOps(dec, ops));
    assert.ok(dec.overrun <= 4);
    for (let i = 0; i < 10; i++) dec.decodeDirect(16);
    assert.ok(dec.overrun > 4, `overrun ${dec.overrun} after reading past the end`);
  });

  it('keeps bit-tree models at indices base .. base + 2^bits - 2', () => {
    const probs = createBitModels(1 + 7 + 1);
    const enc = new RangeEncoder();
    encodeBitTree(enc, probs, 1, 3, 5);
    assert.equal(probs[0], PROB_INIT);
    assert.equal(probs[8], PROB_INIT);
    assert.equal(probs.slice(1, 8).filter((p) => p !== PROB_INIT).length, 3); // one model per level touched
  });
});

describe('range-coder: bulk byte trees', () => {
  /** encodeByteTrees spelled out with encodeBit, per its documentation. */
  function reference(values: Uint8Array, contexts: Uint8Array | null, prevMask: number, bits: number, zeroFlag: boolean): Uint8Array {
    const enc = new RangeEncoder();
    const probs = createBitModels(65536);
    let previous = 0;
    for (let i = 0; i < values.length; i++) {
      const v = values[i]!;
      const base = (contexts === null ? previous & prevMask : contexts[i]!) * 256;
      previous = v;
      if (zeroFlag) {
        const nonzero = v >>> (8 - bits) !== 0 ? 1 : 0;
        enc.encodeBit(probs, base, nonzero);
        if (!nonzero) continue;
      }
      let node = 1;
      for (let k = 7; k >= 8 - bits; k--) {
        const bit = (v >>> k) & 1;
        enc.encodeBit(probs, base + node, bit);
        node = node * 2 + bit;
      }
    }
    return enc.finish().slice();
  }

  it('matches encodeBit bit for bit and round-trips, over contexts, masks, bit counts and the zero flag', () => {
    for (let seed = 1; seed <= 40; seed++) {
      const rng = new Prng(seed);
      const n = rng.int(3000);
      const values = new Uint8Array(n);
      for (let i = 0; i < n; i++) values[i] = rng.next() < 0.6 ? rng.int(4) : rng.int(256);
      const contexts = seed % 3 === 0 ? null : Uint8Array.from(values, (v) => (v * 7 + 3) & 0xff);
      const prevMask = [0, 0xff, 0xfe][seed % 3]!;
      const bits = 1 + (seed % 8);
      const zeroFlag = seed % 2 === 0;
      const enc = new RangeEncoder(8);
      enc.encodeByteTrees(values, createBitModels(65536), contexts, prevMask, bits, zeroFlag);
      const bytes = enc.finish().slice();
      assert.deepEqual(bytes, reference(values, contexts, prevMask, bits, zeroFlag), `seed ${seed}`);
      const lowMask = (1 << (8 - bits)) - 1;
      const out = Uint8Array.from(values, (v) => v & lowMask); // the uncoded low bits
      const dec = new RangeDecoder(bytes);
      dec.decodeByteTrees(out, createBitModels(65536), contexts, prevMask, bits, zeroFlag);
      assert.deepEqual(out, values, `seed ${seed}`);
      assert.equal(dec.unread, 0);
      assert.ok(dec.overrun <= 4);
    }
  });
});

describe('range-coder: efficiency', () => {
  it('codes a static 16-bit table within 0.1% + 8 bytes of the ideal length', () => {
    const freqs = [40000, 20000, 4000, 1000, 400, 100, 30, 6];
    const cum = [0];
    for (const f of freqs) cum.push(cum[cum.length - 1]! + f);
    assert.equal(cum[freqs.length], 65536);
    const rng = new Prng(21);
    const enc = new RangeEncoder();
    let idealBits = 0;
    for (let i = 0; i < 200000; i++) {
      const t = rng.int(65536);
      let s = 0;
      while (cum[s + 1]! <= t) s++;
      enc.encode(cum[s]!, freqs[s]!, 16);
      idealBits += 16 - Math.log2(freqs[s]!);
    }
    const bytes = enc.finish().length;
    assert.ok(bytes <= (idealBits / 8) * 1.001 + 8, `${bytes} bytes vs ideal ${(idealBits / 8).toFixed(0)}`);
  });

  it('codes a Bernoulli(0.03) stream of adaptive bits within 8% of its entropy (the price of adapting at rate 1/32)', () => {
    const rng = new Prng(8);
    const enc = new RangeEncoder();
    const probs = createBitModels(1);
    let ones = 0;
    const n = 200000;
    for (let i = 0; i < n; i++) {
      const bit = rng.next() < 0.03 ? 1 : 0;
      ones += bit;
      enc.encodeBit(probs, 0, bit);
    }
    const p = ones / n;
    const entropyBytes = (n * -(p * Math.log2(p) + (1 - p) * Math.log2(1 - p))) / 8;
    const bytes = enc.finish().length;
    assert.ok(bytes <= entropyBytes * 1.08 + 8, `${bytes} bytes vs entropy ${entropyBytes.toFixed(0)}`);
  });
});

describe('range-coder: garbage input', () => {
  it('decodes random bytes without throwing, hanging or reading outside the window', () => {
    for (let seed = 1; seed <= 200; seed++) {
      const rng = new Prng(seed * 7919);
      const garbage = new Uint8Array(rng.int(64));
      for (let i = 0; i < garbage.length; i++) garbage[i] = rng.int(256);
      const ops = randomOps(rng, 300);
      const dec = new RangeDecoder(garbage);
      try {
        decodeOps(dec, ops); // mismatches are expected; only the decoder's robustness is tested
      } catch (err) {
        assert.ok(err instanceof ExcpError, `seed ${seed}: ${String(err)}`);
      }
      assert.ok(dec.unread >= 0);
    }
  });
});
