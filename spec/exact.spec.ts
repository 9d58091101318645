import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { f32ToBf16, f32ToF16 } from '../lib/core/dtype.js';
import { ExcpError } from '../lib/core/errors.js';
import { type ExactDtype, decodeExact, encodeExact } from '../lib/coding/exact.js';
import { Prng } from './support/prng.js';
import { lzCompress } from '../lib/coding/lz.js';

const DTYPES: ExactDtype[] = ['F32', 'F16', 'BF16', 'F64', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL'];
const WIDTH: Record<ExactDtype, number> = { F32: 4, F16: 2, BF16: 2, F64: 8, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };

/** Plausible tensor bytes of a dtype: small normal weights for floats, small ints, sparse bools. */
function realistic(rng: Prng, dtype: ExactDtype, n: number, scale = 0.02): Uint8Array {
  const bytes = new Uint8Array(n * WIDTH[dtype]);
  const view = new DataView(bytes.buffer);
  for (let i = 0; i < n; i++) {
    const x = rng.normal() * scale;
    const k = Math.round(rng.normal() * 40);
    switch (dtype) {
      case 'F32': view.setFloat32(4 * i, x, true); break;
      case 'F64': view.setFloat64(8 * i, x, true); break;
      case 'F16': view.setUint16(2 * i, f32ToF16(x), true); break;
      case 'BF16': view.setUint16(2 * i, f32ToBf16(x), true); break;
      case 'I64': view.setBigInt64(8 * i, BigInt(k) * 1000003n, true); break;
      case 'I32': view.setInt32(4 * i, k, true); break;
      case 'I16': view.setInt16(2 * i, k, true); break;
      case 'I8': view.setInt8(i, Math.max(-128, Math.min(127, k))); break;
      case 'U8': view.setUint8(i, Math.abs(k) & 0xff); break;
      case 'BOOL': view.setUint8(i, rng.next() < 0.1 ? 1 : 0); break;
    }
  }
  return bytes;
}

/** The next checkpoint: each element nudged a little (floats) or sometimes changed (ints). */
function nudged(rng: Prng, dtype: ExactDtype, base: Uint8Array): Uint8Array {
  const out = base.slice();
  const view = new DataView(out.buffer);
  const n = base.length / WIDTH[dtype];
  for (let i = 0; i < n; i++) {
    const d = rng.normal() * 1e-4;
    switch (dtype) {
      case 'F32': view.setFloat32(4 * i, view.getFloat32(4 * i, true) + d, true); break;
      case 'F64': view.setFloat64(8 * i, view.getFloat64(8 * i, true) + d, true); break;
      default: if (rng.next() < 0.05) out[i * WIDTH[dtype]] = rng.int(256);
    }
  }
  return out;
}

function randomBytes(rng: Prng, length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = rng.int(256);
  return out;
}

function roundTrip(data: Uint8Array, dtype: string, base?: Uint8Array): Uint8Array {
  const coded = encodeExact(data, dtype, base);
  const back = decodeExact(coded, dtype, data.length, base);
  assert.ok(Buffer.from(back).equals(Buffer.from(data)), `${dtype} ${data.length} bytes${base ? ' with base' : ''}: not bit-exact`);
  return coded;
}

describe('exact: tiny inputs (golden bytes)', () => {
  it('stores an empty array as the single byte 3 (stored)', () => {
    assert.deepEqual([...roundTrip(new Uint8Array(0), 'F32')], [3]);
  });

  it('stores 1 element as [3, its 4 bytes]', () => {
    const one = Uint8Array.of(0x00, 0x00, 0xc0, 0x7f); // a quiet NaN
    assert.deepEqual([...roundTrip(one, 'F32')], [3, 0x00, 0x00, 0xc0, 0x7f]);
  });

  it('keeps a byte length that is not a multiple of the width (tail stored raw)', () => {
    const rng = new Prng(1);
    roundTrip(realistic(rng, 'F32', 1000).subarray(0, 3999), 'F32');
    roundTrip(realistic(rng, 'BF16', 1000).subarray(0, 1999), 'BF16');
  });
});

describe('exact: special values', () => {
  const specialF32 = [
    0x7fc00000, 0x7fc00001, 0xffffffff, 0x7f800001, 0xffa5a5a5, // NaNs with payloads, signalling and quiet
    0x7f800000, 0xff800000, // +-Inf
    0x00000001, 0x807fffff, 0x00400000, // subnormals
    0x80000000, 0x00000000, // -0, +0
    0x7f7fffff, 0xff7fffff, 0x00800000, // max, -max, smallest normal
  ];
  const special16 = [0x7e00, 0x7e01, 0xffff, 0x7c01, 0x7c00, 0xfc00, 0x0001, 0x83ff, 0x8000, 0x0000, 0x7bff, 0x7f80, 0xff80, 0x7f81, 0x0080];

  for (const dtype of ['F32', 'F16', 'BF16', 'F64'] as const) {
    it(`round-trips ${dtype} NaN payloads, infinities, subnormals and -0 inside modelled data`, () => {
      const rng = new Prng(7);
      for (const bias of [0.02, 1e3, 1e-30]) {
        const data = realistic(rng, dtype, 5000, bias);
        const view = new DataView(data.buffer);
        for (let k = 0; k < 300; k++) {
          const at = rng.int(5000);
          if (dtype === 'F32') view.setUint32(4 * at, specialF32[k % specialF32.length]!, true);
          else if (dtype === 'F64') {
            view.setUint32(8 * at + 4, specialF32[k % specialF32.length]!, true);
            view.setUint32(8 * at, rng.nextU32(), true);
          } else view.setUint16(2 * at, special16[k % special16.length]!, true);
        }
        const coded = roundTrip(data, dtype);
        if (bias === 0.02) assert.notEqual(coded[0], 3, `${dtype}: modelled, not stored`);
      }
    });
  }
});

describe('exact: seeded round trips', () => {
  it('round-trips every dtype over 60 seeds: lengths, data shapes, with and without a base', () => {
    for (let seed = 1; seed <= 60; seed++) {
      const rng = new Prng(seed);
      const dtype = DTYPES[seed % DTYPES.length]!;
      const n = [0, 1, 2, 63, 64, 65, 1000][seed % 7]! + (seed % 3 === 0 ? rng.int(20000) : 0);
      const shape = rng.int(3);
      let data = shape === 0 ? randomBytes(rng, n * WIDTH[dtype]) : realistic(rng, dtype, n, shape === 1 ? 0.02 : 300);
      if (seed % 4 === 0 && data.length > 0) data = data.subarray(0, data.length - 1); // odd byte length
      try {
        roundTrip(data, dtype);
        const base = rng.next() < 0.5 ? randomBytes(rng, data.length) : data.slice();
        if (base.length > 0 && rng.next() < 0.7) {
          const at = rng.int(base.length);
          base[at] = base[at]! ^ 0x5a;
        }
        roundTrip(data, dtype, base);
        roundTrip(data.length % WIDTH[dtype] === 0 ? nudged(rng, dtype, data) : data, dtype, data);
      } catch (err) {
        assert.fail(`seed ${seed} (${dtype}, ${data.length} bytes): ${String(err)}`);
      }
    }
  });

  it('is deterministic', () => {
    const data = realistic(new Prng(3), 'F32', 20000);
    assert.deepEqual(encodeExact(data, 'F32'), encodeExact(data.slice(), 'F32'));
  });
});

describe('exact: size', () => {
  const rng = new Prng(2024);
  const weights = realistic(rng, 'F32', 200_000);
  const weightsBf16 = realistic(rng, 'BF16', 200_000);

  it('codes fp32 normal(0, 0.02) weights below 0.85x raw (sign + ~3-bit exponent + 23 raw mantissa bits = 0.84)', () => {
    const coded = roundTrip(weights, 'F32');
    assert.ok(coded.length < 0.85 * weights.length, `${(coded.length / weights.length).toFixed(4)}`);
  });

  it('codes bf16 normal(0, 0.02) weights below 0.7x raw', () => {
    const coded = roundTrip(weightsBf16, 'BF16');
    assert.ok(coded.length < 0.7 * weightsBf16.length, `${(coded.length / weightsBf16.length).toFixed(4)}`);
  });

  it('codes against a close base far smaller than without it', () => {
    const next = nudged(rng, 'F32', weights);
    const alone = encodeExact(next, 'F32');
    const withBase = roundTrip(next, 'F32', weights);
    assert.ok(withBase[0] === 1 || withBase[0] === 2, `transform ${withBase[0]}: xor or difference`);
    assert.ok(withBase.length < 0.8 * alone.length, `${withBase.length} vs ${alone.length}`);
  });

  it('never grows noise by more than 1 byte', () => {
    const noise = randomBytes(rng, 40_000);
    for (const dtype of DTYPES) assert.ok(roundTrip(noise, dtype).length <= noise.length + 1, dtype);
  });

  it('codes an all-zero tensor to a few bytes', () => {
    assert.ok(roundTrip(new Uint8Array(400_000), 'F32').length < 100);
  });
});

describe('exact: errors', () => {
  const data = realistic(new Prng(5), 'F32', 3000);
  const coded = encodeExact(data, 'F32');
  const base = data.slice();
  base[0] = base[0]! ^ 1;
  const againstBase = encodeExact(data, 'F32', base);

  it('refuses an unknown dtype (ERR_DTYPE)', () => {
    assert.throws(() => encodeExact(data, 'F12'), { code: 'ERR_DTYPE' });
    assert.throws(() => decodeExact(coded, 'F12', data.length), { code: 'ERR_DTYPE' });
  });

  it('refuses a base of another length (ERR_BASE_MISMATCH) and a missing base (ERR_BASE_MISSING)', () => {
    assert.throws(() => encodeExact(data, 'F32', base.subarray(4)), { code: 'ERR_BASE_MISMATCH' });
    assert.notEqual(againstBase[0], 0);
    assert.throws(() => decodeExact(againstBase, 'F32', data.length), { code: 'ERR_BASE_MISSING' });
    assert.throws(() => decodeExact(againstBase, 'F32', data.length, base.subarray(4)), { code: 'ERR_BASE_MISMATCH' });
  });

  it('rejects an unknown transform, a bad plane descriptor or a wrong length (ERR_CORRUPT)', () => {
    const badTransform = coded.slice();
    badTransform[0] = 9;
    assert.throws(() => decodeExact(badTransform, 'F32', data.length), { code: 'ERR_CORRUPT' });
    const badDescriptor = coded.slice();
    badDescriptor[1] = 0xff;
    assert.throws(() => decodeExact(badDescriptor, 'F32', data.length), { code: 'ERR_CORRUPT' });
    assert.throws(() => decodeExact(coded, 'F32', data.length + 4), ExcpError);
    assert.throws(() => decodeExact(Uint8Array.of(3, 1, 2), 'F32', 4), { code: 'ERR_CORRUPT' });
  });

  it('reports cut input as ExcpError', () => {
    for (const cut of [0, 1, 2, 5, coded.length >> 1, coded.length - 1]) {
      assert.throws(() => decodeExact(coded.subarray(0, cut), 'F32', data.length), ExcpError, `cut at ${cut}`);
    }
  });

  it('raises only ExcpError on mutated input, never hangs, then still works', () => {
    for (let seed = 1; seed <= 150; seed++) {
      const rng = new Prng(seed);
      const bad = (seed % 2 ? coded : againstBase).slice();
      for (let k = 0; k < 1 + rng.int(4); k++) bad[rng.int(Math.min(bad.length, seed % 3 ? 16 : bad.length))] = rng.int(256);
      try {
        const out = decodeExact(bad, 'F32', data.length, seed % 2 ? undefined : base);
        assert.equal(out.length, data.length);
      } catch (err) {
        assert.ok(err instanceof ExcpError, `seed ${seed}: ${String(err)}`);
      }
    }
    assert.ok(Buffer.from(decodeExact(coded, 'F32', data.length)).equals(Buffer.from(data)));
  });
});

describe('exact: byte data (files, skeletons) through lz', () => {
  const text = new TextEncoder().encode(JSON.stringify({ log_history: Array.from({ length: 60 }, (_, i) => ({ step: i, loss: 2 - i / 100, learning_rate: 1e-4 })) }));
  const edited = text.slice();
  for (let i = 0; i < edited.length; i += 97) edited[i] = 0x30 + (i % 10);

  it('codes structured bytes with lz (transform 6: variant 2), far below the byte planes; transform 4 (variant 1) still decodes', () => {
    const coded = encodeExact(text, 'U8');
    assert.equal(coded[0], 6);
    const v1 = Uint8Array.from([4, ...lzCompress(text, 1)]);
    assert.ok(Buffer.from(decodeExact(v1, 'U8', text.length)).equals(Buffer.from(text)));
    assert.ok(coded.length < text.length / 4, `${coded.length} of ${text.length}`);
    assert.ok(Buffer.from(decodeExact(coded, 'U8', text.length)).equals(Buffer.from(text)));
  });

  it('codes against a base of the same length: XOR planes or lz over the XOR (transforms 7 and 5), whichever is smaller', () => {
    const coded = encodeExact(edited, 'U8', text);
    assert.ok(coded.length < encodeExact(edited, 'U8').length / 2);
    assert.ok(coded.length <= 1 + lzCompress(edited).length && coded.length <= 1 + lzCompress(edited.map((b, i) => b ^ text[i]!)).length);
    // Transforms 7 and 5 by hand: lz (variants 2 and 1) over data XOR base.
    for (const [transform, variant] of [[7, 2], [5, 1]] as const) {
      const viaLz = Uint8Array.from([transform, ...lzCompress(edited.map((b, i) => b ^ text[i]!), variant)]);
      assert.ok(Buffer.from(decodeExact(viaLz, 'U8', edited.length, text)).equals(Buffer.from(edited)));
      assert.throws(() => decodeExact(viaLz, 'U8', edited.length), { code: 'ERR_BASE_MISSING' });
    }
    assert.ok(Buffer.from(decodeExact(coded, 'U8', edited.length, text)).equals(Buffer.from(edited)));
    assert.throws(() => decodeExact(coded, 'U8', edited.length), { code: 'ERR_BASE_MISSING' });
  });

  it('keeps the plane coder (or stored) for noise, and lz output never decodes past its length', () => {
    const rng = new Prng(3);
    const noise = Uint8Array.from({ length: 5000 }, () => rng.int(256));
    const coded = encodeExact(noise, 'U8');
    assert.ok(coded.length <= noise.length + 1);
    assert.ok(Buffer.from(decodeExact(coded, 'U8', noise.length)).equals(Buffer.from(noise)));
    const lz = encodeExact(text, 'U8');
    for (let seed = 1; seed <= 100; seed++) {
      const r = new Prng(seed);
      const bad = lz.slice(0, seed % 3 ? lz.length : 1 + r.int(lz.length - 1));
      for (let k = 0; k < 1 + r.int(3); k++) bad[1 + r.int(bad.length - 1)] = r.int(256);
      try {
        assert.equal(decodeExact(bad, 'U8', text.length).length, text.length);
      } catch (err) {
        assert.ok(err instanceof ExcpError, `seed ${seed}: ${String(err)}`);
      }
    }
  });
});
