/**
 * End to end: the streaming pipeline restores exactly what an in-memory,
 * array-at-a-time reference implementation of the method restores.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseSafetensors, type TensorData } from '../lib/formats/safetensors.js';
import { DTYPE_BYTES, fromFloat32, toFloat32, LOSSY_DTYPES } from '../lib/core/dtype.js';
import { dequantizeStream } from '../lib/method/quantize.js';
import { resolveOptions } from '../lib/core/options.js';
import { ExcpError } from '../lib/core/errors.js';
import { chunkify, randomCheckpointPair, runThrough, sameBytes } from './helpers.js';
import { Prng } from './support/prng.js';
import type { CodecOptions } from '../lib/core/options.js';
import { computeResidual, extractNonFinite } from './reference/residual.js';
import { pruneJoint } from './reference/prune.js';
import { expandSymbols, quantizeStream } from './reference/quantize.js';
import { compressBuffer, compress } from '../lib/api/compress.js';
import { restoreBuffer, restore } from '../lib/api/restore.js';

/** The method on whole arrays, chunk by chunk, no container, no coder, no streams. */
function referenceRestore(current: Uint8Array, previous: Uint8Array | null, options: CodecOptions): Map<string, Uint8Array> {
  const cur = parseSafetensors(current).tensors;
  const base = new Map((previous ? parseSafetensors(previous).tensors : []).map((t) => [t.name, t]));
  const byName = new Map(cur.map((t) => [t.name, t]));
  const out = new Map<string, Uint8Array>();
  const isMoment = (t: TensorData) => {
    for (const suffix of ['.exp_avg', '.exp_avg_sq']) {
      if (t.name.endsWith(suffix)) {
        const owner = byName.get(t.name.slice(0, -suffix.length));
        if (owner && byName.has(`${owner.name}.exp_avg`) && byName.has(`${owner.name}.exp_avg_sq`) && LOSSY_DTYPES.has(owner.dtype)) return true;
      }
    }
    return false;
  };
  for (const w of cur) {
    if (isMoment(w)) continue;
    const m = byName.get(`${w.name}.exp_avg`);
    const v = byName.get(`${w.name}.exp_avg_sq`);
    const b = base.get(w.name);
    const hasBase = b !== undefined && b.dtype === w.dtype && b.shape.join() === w.shape.join();
    const isParam = m && v && LOSSY_DTYPES.has(w.dtype) && LOSSY_DTYPES.has(m.dtype) && m.dtype === v.dtype;
    if (!isParam || options.lossless) {
      for (const t of [w, m, v]) if (t && (isParam || t === w)) out.set(t.name, t.data);
      continue;
    }
    const eb = DTYPE_BYTES[w.dtype];
    const mb = DTYPE_BYTES[m.dtype];
    const n = w.data.length / eb;
    const rw = new Uint8Array(w.data.length);
    const rm = new Uint8Array(m.data.length);
    const rv = new Uint8Array(v.data.length);
    for (let s = 0; s < n; s += options.chunkElements) {
      const e = Math.min(n, s + options.chunkElements);
      const wBytes = w.data.subarray(s * eb, e * eb);
      const m32 = toFloat32(m.data.subarray(s * mb, e * mb), m.dtype);
      const v32 = toFloat32(v.data.subarray(s * mb, e * mb), m.dtype);
      const mExc = extractNonFinite(m32);
      const vExc = extractNonFinite(v32);
      let residual: Float32Array | null = null;
      let wExc: number[] = [];
      if (hasBase) {
        residual = new Float32Array(e - s);
        wExc = computeResidual(toFloat32(wBytes, w.dtype), toFloat32(b.data.subarray(s * eb, e * eb), w.dtype), residual);
      }
      const pr = pruneJoint(residual, m32, v32, options);
      let wSel: Uint8Array | null = null;
      if (residual) {
        const q = quantizeStream(residual, null, options.bits, 'linear');
        wSel = q.symbols;
        const restored = toFloat32(b!.data.subarray(s * eb, e * eb), w.dtype);
        for (let i = 0; i < restored.length; i++) if (q.symbols[i]) restored[i] = restored[i]! + q.centers[q.symbols[i]! - 1]!;
        const bytes = fromFloat32(restored, w.dtype);
        for (const p of wExc) bytes.set(wBytes.subarray(p * eb, p * eb + eb), p * eb);
        rw.set(bytes, s * eb);
      } else {
        rw.set(wBytes, s * eb);
      }
      const mq = quantizeStream(m32, wSel, options.bits, 'linear');
      const mFull = expandSymbols(mq.symbols, wSel, e - s);
      const vq = quantizeStream(v32, mFull, options.bits, options.vDomain);
      const mOut = fromFloat32(dequantizeStream(mq, wSel, new Float32Array(e - s)), m.dtype);
      const vOut = fromFloat32(dequantizeStream(vq, mFull, new Float32Array(e - s), pr.vFill), m.dtype);
      const mRaw = m.data.subarray(s * mb, e * mb);
      const vRaw = v.data.subarray(s * mb, e * mb);
      for (const p of mExc) mOut.set(mRaw.subarray(p * mb, p * mb + mb), p * mb);
      for (const p of vExc) vOut.set(vRaw.subarray(p * mb, p * mb + mb), p * mb);
      rm.set(mOut, s * mb);
      rv.set(vOut, s * mb);
    }
    out.set(w.name, rw);
    out.set(m.name, rm);
    out.set(v.name, rv);
  }
  return out;
}

function assertMatchesReference(restored: Uint8Array, current: Uint8Array, expected: Map<string, Uint8Array>, what: string): void {
  const got = parseSafetensors(restored);
  const orig = parseSafetensors(current);
  assert.ok(sameBytes(got.header.raw, orig.header.raw), `${what}: header differs`);
  assert.equal(got.tensors.length, expected.size, what);
  for (const t of got.tensors) {
    const e = expected.get(t.name);
    assert.ok(e, `${what}: unexpected tensor ${t.name}`);
    assert.ok(sameBytes(t.data, e), `${what}: tensor ${t.name} differs from the reference`);
  }
}

describe('pipeline vs reference implementation', () => {
  const dtypes = [['F32', 'F32'], ['BF16', 'F32'], ['F16', 'F32'], ['BF16', 'BF16'], ['F32', 'F16']] as const;
  for (let seed = 1; seed <= 30; seed++) {
    const [wd, md] = dtypes[seed % dtypes.length]!;
    const chunkElements = [64, 100, 777, 4096][seed % 4]!;
    it(`seed ${seed}: ${wd} weights, ${md} moments, chunks of ${chunkElements}`, async () => {
      const pair = randomCheckpointPair(seed, { weightDtype: wd, momentDtype: md, special: seed % 3 === 0, extras: seed % 2 === 0, missingBase: seed % 5 === 0 ? 0.5 : 0 });
      // Method 1 (the paper's rule) against the reference; keyframes exact as the reference codes them.
      const options = resolveOptions({ chunkElements, bits: 1 + (seed % 8), alpha: seed % 4 === 0 ? 1e-2 : 5e-5, vFill: seed % 2 ? 'mean' : 'zero', vDomain: seed % 3 ? 'log' : 'linear', keyframe: 'exact' });
      const useBase = seed % 7 !== 0;
      const container = await compressBuffer(pair.current, useBase ? pair.previous : undefined, { ...options, threads: seed % 6 === 1 ? 2 : 0 });
      const restored = await restoreBuffer(container, useBase ? pair.previous : undefined, { threads: seed % 6 === 2 ? 2 : 0 });
      assertMatchesReference(restored, pair.current, referenceRestore(pair.current, useBase ? pair.previous : null, options), `seed ${seed} (reproduce: randomCheckpointPair(${seed}))`);
    });
  }
});

describe('lossless mode', () => {
  for (let seed = 100; seed < 112; seed++) {
    it(`restores every bit (seed ${seed}, NaN, infinities, subnormals, -0)`, async () => {
      const wd = (['F32', 'BF16', 'F16'] as const)[seed % 3]!;
      const pair = randomCheckpointPair(seed, { weightDtype: wd, special: true, extras: true });
      const container = await compressBuffer(pair.current, seed % 2 ? pair.previous : undefined, { lossless: true, chunkElements: 128 });
      const restored = await restoreBuffer(container, seed % 2 ? pair.previous : undefined);
      assert.ok(sameBytes(restored, pair.current), `seed ${seed}: lossless restore differs`);
    });
  }
});

describe('stream interface', () => {
  it('compress() and restore() Duplexes give the buffer helpers\' bytes, for any input chunking', async () => {
    const pair = randomCheckpointPair(7, { extras: true });
    const expected = await compressBuffer(pair.current, pair.previous, { chunkElements: 256 });
    for (const pattern of ['whole', 1, 321, { seed: 5 }] as const) {
      const container = await runThrough(chunkify(pair.current, pattern), compress({ base: pair.previous, chunkElements: 256, threads: 0 }));
      assert.ok(sameBytes(container, expected), `compress with ${JSON.stringify(pattern)} chunking differs`);
      const restored = await runThrough(chunkify(container, pattern), restore({ base: pair.previous, threads: 0 }));
      assert.ok(sameBytes(restored, await restoreBuffer(expected, pair.previous)), `restore with ${JSON.stringify(pattern)} chunking differs`);
    }
  });

  it('is deterministic: same input and options, same bytes', async () => {
    const pair = randomCheckpointPair(8);
    const a = await compressBuffer(pair.current, pair.previous, { chunkElements: 512 });
    const b = await compressBuffer(pair.current, pair.previous, { chunkElements: 512, threads: 2 });
    assert.ok(sameBytes(a, b));
  });
});

describe('base checks', () => {
  it('refuses a wrong base with ERR_BASE_MISMATCH naming the tensor', async () => {
    const pair = randomCheckpointPair(9, { params: 3 });
    const other = randomCheckpointPair(10, { params: 3 });
    const container = await compressBuffer(pair.current, pair.previous);
    await assert.rejects(restoreBuffer(container, pair.current), (e: ExcpError) => e.code === 'ERR_BASE_MISMATCH' && /tensor '/.test(e.message));
    await assert.rejects(restoreBuffer(container, other.previous), (e: ExcpError) => e.code === 'ERR_BASE_MISMATCH');
  });

  it('asks for a base when none is given', async () => {
    const pair = randomCheckpointPair(11, { params: 2, maxElements: 500 });
    const container = await compressBuffer(pair.current, pair.previous);
    await assert.rejects(restoreBuffer(container), (e: ExcpError) => e.code === 'ERR_BASE_MISSING');
  });
});

describe('corruption', () => {
  it('a flipped byte anywhere gives an ExcpError or the correct result, never a wrong one', async () => {
    const pair = randomCheckpointPair(12, { params: 3, maxElements: 2000, extras: true });
    const container = await compressBuffer(pair.current, pair.previous, { chunkElements: 512 });
    const good = await restoreBuffer(container, pair.previous);
    const rng = new Prng(12);
    let errors = 0;
    for (let k = 0; k < 300; k++) {
      const bad = container.slice();
      const at = k < 40 ? k : rng.int(bad.length);
      bad[at] = bad[at]! ^ (1 << rng.int(8));
      try {
        const out = await restoreBuffer(bad, pair.previous);
        assert.ok(sameBytes(out, good), `flip at byte ${at} produced a different checkpoint without an error`);
      } catch (e) {
        assert.ok(e instanceof ExcpError, `flip at byte ${at}: ${String(e)}`);
        errors++;
      }
    }
    assert.ok(errors > 250, `only ${errors} of 300 flips were detected`);
  });

  it('names the tensor when a chunk record is corrupt', async () => {
    const pair = randomCheckpointPair(13, { params: 1, maxElements: 3000 });
    const container = await compressBuffer(pair.current, pair.previous);
    const bad = container.slice();
    // The first record starts after the 16-byte preamble, the header JSON and its CRC;
    // byte 20 of the record is inside its payload.
    const headerLength = new DataView(bad.buffer, bad.byteOffset).getUint32(12, true);
    const inPayload = 16 + headerLength + 4 + 20;
    bad[inPayload] = bad[inPayload]! ^ 0x10;
    await assert.rejects(restoreBuffer(bad, pair.previous), (e: ExcpError) => e.code === 'ERR_CRC' && /tensor 'layers\.0\.weight'/.test(e.message));
  });

  it('truncation and trailing bytes are errors', async () => {
    const pair = randomCheckpointPair(14, { params: 2 });
    const container = await compressBuffer(pair.current, pair.previous);
    for (const cut of [0, 5, 20, container.length >> 1, container.length - 1]) {
      await assert.rejects(restoreBuffer(container.subarray(0, cut), pair.previous), (e: ExcpError) => e instanceof ExcpError, `cut at ${cut}`);
    }
    const longer = new Uint8Array(container.length + 3);
    longer.set(container);
    await assert.rejects(restoreBuffer(longer, pair.previous), (e: ExcpError) => e.code === 'ERR_TRAILING_DATA');
  });
});
