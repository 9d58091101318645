/**
 * Packs (lib/pack.ts): small exact tensors coded as one stream, and footers
 * without per-tensor hashes. Planning rules, the header and footer bytes
 * (spec/FORMAT.md), refusals, and round trips over every dtype.
 */
import { test } from 'node:test';
import { buildSafetensorsHeader } from '../lib/formats/safetensors.js';
import { FILE_KINDS } from '../lib/formats/registry.js';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { type ContainerFooter, type ContainerHeader, decodeFooter, decodeHeader, encodeHead, encodeTail } from '../lib/container/format.js';
import { crc32 } from '../lib/core/crc32.js';
import { DTYPE_BYTES, type DType, roundToBf16 } from '../lib/core/dtype.js';
import { Hasher, hashBytes } from '../lib/core/hash.js';
import { PACK_TENSOR_ELEMENTS, entryTensors, packEntries } from '../lib/model/pack.js';
import { resolveOptions } from '../lib/core/options.js';
import { Prng } from './support/prng.js';
import { parseSafetensors, serializeSafetensors, type TensorData } from '../lib/formats/safetensors.js';
import { SafetensorsMemory } from '../lib/formats/safetensors-file.js';
import { ChunkEncoder } from '../lib/stream/codec.js';
import { ContainerWriter } from '../lib/stream/container.js';
import { ChunkSource } from '../lib/stream/source.js';
import { codeOf, errorOf, sameBytes, str, varint } from './helpers.js';
import type { EntrySpec, Role, TensorSpec } from '../lib/model/checkpoint.js';
import { readContainerFile } from '../lib/api/open.js';
import { compressBuffer, planFor } from '../lib/api/compress.js';
import { restoreBuffer } from '../lib/api/restore.js';

/** What the hand-built bodies' options (the difference {lossless: true, chunkElements: 1024}) read as in format 4. */
const OPTIONS = { alpha: 5e-5, weightRule: 'dither', keep: 0.3, beta: 2, bits: 2, lossless: true, chunkElements: 1024, vFill: 'mean', vDomain: 'log', updateError: 0.8, keyframe: 'lossy' } as const;

function spec(name: string, dtype: DType, elements: number, role: Role = 'plain'): TensorSpec {
  return { name, dtype, shape: [elements], role, entry: -1 };
}

function plain(weight: number, elements: number, over: Partial<EntrySpec> = {}): EntrySpec {
  return { kind: 'plain', weight, expAvg: null, expAvgSq: null, exactWeight: true, exactMoments: false, base: false, elements, ...over };
}

test('packEntries: small exact entries of one dtype join, per dtype, at the first member, within chunkElements', () => {
  const tensors = [
    spec('a', 'F32', 10, 'weight'), spec('a.exp_avg', 'F32', 10, 'exp_avg'), spec('a.exp_avg_sq', 'F32', 10, 'exp_avg_sq'),
    spec('big', 'F32', PACK_TENSOR_ELEMENTS + 1),
    spec('u', 'U8', 900), // byte data: packed up to the chunk size
    spec('b', 'F32', 20),
    spec('v', 'U8', 100),
    spec('based', 'F32', 5),
    spec('c', 'F32', 1000), // would take the F32 pack past 1024 elements: a new one
    spec('d', 'BF16', 8), // alone of its dtype: stays itself
  ];
  const entries: EntrySpec[] = [
    { kind: 'param', weight: 0, expAvg: 1, expAvgSq: 2, exactWeight: true, exactMoments: true, base: false, elements: 10 },
    plain(3, PACK_TENSOR_ELEMENTS + 1), plain(4, 900), plain(5, 20), plain(6, 100), plain(7, 5, { base: true }), plain(8, 1000), plain(9, 8),
  ];
  const out = packEntries(tensors, entries, 1024);
  assert.deepEqual(out.map((e) => [e.kind, entryTensors(e)]), [
    ['pack', [0, 5, 1, 2]], // weights and plain first, then exp_avg, then exp_avg_sq
    ['plain', [3]],
    ['pack', [4, 6]],
    ['plain', [7]],
    ['plain', [8]],
    ['plain', [9]],
  ]);
  assert.equal(out[0]!.elements, 50);
  assert.equal(out[2]!.elements, 1000);
  assert.deepEqual(tensors.map((t) => t.entry), [0, 0, 0, 1, 2, 0, 2, 3, 4, 5]);

  // Lossy moments, a base, or an empty tensor keep an entry out of packs.
  const t2 = [spec('w', 'F32', 4, 'weight'), spec('w.exp_avg', 'F32', 4, 'exp_avg'), spec('w.exp_avg_sq', 'F32', 4, 'exp_avg_sq'), spec('e', 'F32', 0), spec('f', 'F32', 3)];
  const e2: EntrySpec[] = [
    { kind: 'param', weight: 0, expAvg: 1, expAvgSq: 2, exactWeight: true, exactMoments: false, base: false, elements: 4 },
    plain(3, 0), plain(4, 3),
  ];
  assert.deepEqual(packEntries(t2, e2, 1024).map((e) => e.kind), ['param', 'plain', 'plain']);
});

/** A v1 (JSON) header body with its CRC, for validation tests. */
/** A version 1 (JSON) header body and its CRC; its safetensors file as version 1 stored it (the raw header in base64). */
function jsonHeader(h: ContainerHeader): Uint8Array {
  const files = h.files.map((f) => ({ kind: f.kind, path: f.path, rawHeader: Buffer.from(f.layout as Uint8Array).toString('base64'), tensors: f.tensors }));
  const json = new TextEncoder().encode(JSON.stringify({ ...h, files }));
  const out = new Uint8Array(json.length + 4);
  out.set(json);
  new DataView(out.buffer).setUint32(json.length, crc32(json), true);
  return out;
}

/** The safetensors header of packHeader()'s file. */
const PACK_RAW = buildSafetensorsHeader([{ name: 'x', dtype: 'F32', shape: [3] }, { name: 'y', dtype: 'F32', shape: [5] }, { name: 'z', dtype: 'F32', shape: [2] }]).raw;

function packHeader(): ContainerHeader {
  return {
    tool: 't', options: { ...OPTIONS },
    tensors: [spec('x', 'F32', 3), spec('y', 'F32', 5), spec('z', 'F32', 2)].map((t, i) => ({ ...t, entry: i === 2 ? 1 : 0 })),
    entries: [
      { kind: 'pack', weight: 1, expAvg: null, expAvgSq: null, exactWeight: true, exactMoments: false, base: false, elements: 8, members: [1, 0] },
      plain(2, 2),
    ],
    files: [{ kind: 'safetensors', path: null, tensors: [0, 1, 2], layout: PACK_RAW }],
  };
}

/** A stored v2 header body with packHeader()'s three tensors and the given entry bytes, then its CRC. */
function packHeaderBytes(entries: number[]): Uint8Array {
  const body = [
    0, // stored
    ...str('t'),
    1, ...str('{"lossless":true,"chunkElements":1024}'),
    1, 0, 0, 2, ...varint(PACK_RAW.length), ...PACK_RAW, // one safetensors file, path null, raw header as bytes
    3, 0, 0, 0, // its tensors [0, 1, 2]
    3, 0, ...str('x'), 0, ...str('y'), 0, ...str('z'), // three tensors: names
    49, 49, 49, // F32, plain
    1, 3, 1, 5, 1, 2, // shapes [3], [5], [2]
    ...entries,
    0, // no info
  ];
  const bytes = Uint8Array.from([...body, 0, 0, 0, 0]);
  new DataView(bytes.buffer).setUint32(body.length, crc32(bytes.subarray(0, body.length)), true);
  return bytes;
}

test('header v2: a pack entry is flags 66, member count - 2, members as index deltas', () => {
  const entries = [
    2, // two entries
    66, 0, 2, 3, // pack (64 | exactWeight 2), 0 = 2 members - 2, member 1 (zigzag(1 - -1 - 1) = 2), member 0 (zigzag(0 - 1 - 1) = 3)
    2, 2, // plain, exactWeight: tensor 2 (zigzag(2 - 0 - 1) = 2)
  ];
  const bytes = packHeaderBytes(entries);
  const body = { length: bytes.length - 4 };
  const h = packHeader();
  assert.deepEqual(decodeHeader(bytes, FILE_KINDS), h);
  assert.deepEqual(decodeHeader(encodeHead(h, FILE_KINDS).subarray(16), FILE_KINDS), h, 'the writer\'s own bytes');
  // Flag 64 only with exactWeight and nothing else.
  const bad = Uint8Array.from(bytes);
  bad[body.length - 8] = 66 | 8;
  new DataView(bad.buffer).setUint32(body.length, crc32(bad.subarray(0, body.length)), true);
  assert.equal(codeOf(() => decodeHeader(bad, FILE_KINDS)), 'ERR_BAD_HEADER');
});

test('header v2: hostile pack bytes are ERR_BAD_HEADER', () => {
  const cases: Array<[string, number[]]> = [
    ['more members than tensors', [1, 66, 2, 0, 0, 0, 0]],
    ['a huge member count', [1, 66, 0xff, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0]],
    ['a member out of range', [1, 66, 1, 0, 0, 2]],
    ['a member before the first tensor', [1, 66, 1, 1, 0, 0]],
    ['a member twice', [1, 66, 1, 0, 0, 1]], // tensors 0, 1, then zigzag 1 = -1: 1 again
    ['a tensor in a pack and in a plain entry', [2, 66, 0, 0, 0, 2, 1]],
    ['a tensor in no entry', [1, 66, 0, 0, 0]],
  ];
  assert.doesNotThrow(() => decodeHeader(packHeaderBytes([1, 66, 1, 0, 0, 0]), FILE_KINDS), 'one pack of all three');
  for (const [what, entries] of cases) assert.equal(codeOf(() => decodeHeader(packHeaderBytes(entries), FILE_KINDS)), 'ERR_BAD_HEADER', what);
  // Over chunkElements: not one chunk.
  const big = packHeader();
  big.options.chunkElements = 64;
  big.tensors[1]!.shape = [62];
  big.entries[0]!.elements = 65;
  assert.equal(codeOf(() => decodeHeader(encodeHead(big, FILE_KINDS).subarray(16), FILE_KINDS)), 'ERR_BAD_HEADER');
  big.tensors[1]!.shape = [61];
  big.entries[0]!.elements = 64;
  big.files[0]!.layout = buildSafetensorsHeader(big.tensors).raw;
  assert.doesNotThrow(() => decodeHeader(encodeHead(big, FILE_KINDS).subarray(16), FILE_KINDS), 'exactly chunkElements');
});

test('header: malformed packs are ERR_BAD_HEADER', () => {
  const edits: Array<(h: ContainerHeader) => void> = [
    (h) => { h.entries[0]!.members = [1]; h.entries[0]!.elements = 5; h.tensors[0]!.entry = 1; }, // fewer than 2 members (x owned by no one)
    (h) => { h.tensors[0]!.dtype = 'F16'; }, // mixed dtypes
    (h) => { h.entries[0]!.elements = 9; }, // element count not the members' sum
    (h) => { h.entries[0]!.base = true; }, // a base
    (h) => { h.entries[0]!.weight = 0; }, // weight is not the first member
    (h) => { h.entries[0]!.expAvg = 2; }, // moments
    (h) => { delete h.entries[0]!.members; }, // a pack without members
    (h) => { h.entries[1]!.members = [2]; }, // members on a plain entry
    (h) => { h.options.chunkElements = 64; h.tensors[1]!.shape = [70]; h.entries[0]!.elements = 73; }, // more than one chunk
  ];
  assert.doesNotThrow(() => decodeHeader(jsonHeader(packHeader()), FILE_KINDS));
  for (const [i, edit] of edits.entries()) {
    const h = packHeader();
    edit(h);
    assert.equal(codeOf(() => decodeHeader(jsonHeader(h), FILE_KINDS)), 'ERR_BAD_HEADER', `edit ${i}`);
  }
});

test('footer v2: flag 8 stores no hashes, only the fingerprints', () => {
  const header = packHeader();
  const hash = (k: number) => Array.from({ length: 8 }, (_, i) => k * 16 + i);
  const hex = (k: number) => hash(k).map((b) => b.toString(16).padStart(2, '0')).join('');
  // Per entry: no entropy fields, one offset (zigzag from the expected one), codedBytes, kept counts as differences.
  const entries = [0, 1, 0, 30, 0, 0, 0, 1, 0, 20, 0, 0];
  const make = (flags: number, tail: number[]) => {
    const body = Uint8Array.from([0, flags, ...entries, ...tail]);
    const prefix = Uint8Array.from([2, body.length, 0, 0, 0]);
    return () => decodeFooter(body, crc32(body, crc32(prefix)), header);
  };
  assert.deepEqual(make(8 | 2, hash(5))(), {
    entries: [{ offsets: [0], codedBytes: 30, keptWeights: 8, keptMoments: 0 }, { offsets: [30], codedBytes: 20, keptWeights: 2, keptMoments: 0 }],
    tensorHashes: null, baseHashes: null, baseFingerprint: null, targetFingerprint: hex(5),
  });
  assert.equal(make(8 | 2 | 1, [...hash(4), ...hash(5)])().baseFingerprint, hex(4));
  assert.equal(codeOf(make(8, [])), 'ERR_BAD_HEADER', 'no target fingerprint');
  assert.equal(codeOf(make(8 | 4 | 2, hash(5))), 'ERR_BAD_HEADER', 'a derived fingerprint needs hashes');
  assert.equal(codeOf(make(16 | 2, hash(5))), 'ERR_BAD_HEADER', 'unknown flag');
});

const DTYPES: DType[] = ['F32', 'BF16', 'F16', 'F64', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL'];

/** A checkpoint of many tiny tensors of every dtype, plus a few params with moments. */
function tinyCheckpoint(seed: number): Uint8Array {
  const rng = new Prng(seed);
  const tensors: TensorData[] = [];
  for (let i = 0; i < 40; i++) {
    const dtype = DTYPES[rng.int(DTYPES.length)]!;
    const n = rng.int(3) === 0 ? 0 : 1 + rng.int(i < 30 ? 20 : 3000);
    const data = new Uint8Array(n * DTYPE_BYTES[dtype]);
    for (let k = 0; k < data.length; k++) data[k] = dtype === 'BOOL' ? rng.int(2) : rng.int(k % 4 === 3 ? 4 : 256);
    tensors.push({ name: `t${i}`, dtype, shape: [n], data });
  }
  for (let p = 0; p < 6; p++) {
    const n = 1 + rng.int(50);
    for (const suffix of ['', '.exp_avg', '.exp_avg_sq']) {
      const f = new Float32Array(n).map(() => (suffix === '.exp_avg_sq' ? 1e-6 * rng.next() : rng.next() - 0.5));
      tensors.push({ name: `p${p}${suffix}`, dtype: 'F32', shape: [n], data: new Uint8Array(f.buffer) });
    }
  }
  return serializeSafetensors(tensors);
}

test('round trips: tiny tensors of every dtype, packed, restore bit for bit; member hashes are those of unpacked tensors', async () => {
  for (const seed of [1, 2, 3]) {
    const file = tinyCheckpoint(seed);
    for (const lossless of [true, false]) {
      const c = await compressBuffer(file, undefined, { lossless, threads: 0, tensorHashes: 'always' });
      const restored = await restoreBuffer(c);
      // Lossy: the moments of the params are lossy and their weights (a
      // keyframe's) rounded to bf16's precision; everything else is exact.
      if (lossless) assert.ok(sameBytes(restored, file), `seed ${seed}`);
      const back = new Map(parseSafetensors(restored).tensors.map((t) => [t.name, t.data]));
      for (const t of parseSafetensors(file).tensors) {
        if (!lossless && t.name.includes('.exp_avg')) continue;
        const want = !lossless && /^p\d+$/.test(t.name) ? roundToBf16(t.data) : t.data;
        assert.ok(sameBytes(back.get(t.name)!, want), `seed ${seed} lossless ${lossless}: ${t.name}`);
      }
      const dir = mkdtempSync(join(tmpdir(), 'excp-pack-'));
      try {
        writeFileSync(join(dir, 'c.excp'), c);
        const { header, footer } = await readContainerFile(join(dir, 'c.excp'));
        const packs = header.entries.filter((e) => e.kind === 'pack');
        assert.ok(packs.length >= 3, `seed ${seed}: ${packs.length} packs`);
        if (!lossless) assert.ok(header.entries.some((e) => e.kind === 'param'), 'lossy moments stay in param entries');
        // A member's hash is the hash of its one chunk digest, as for an unpacked tensor.
        const tensors = new Map(parseSafetensors(file).tensors.map((t) => [t.name, t.data]));
        for (const e of packs) {
          for (const t of entryTensors(e)) {
            const h = new Hasher();
            h.update(new TextEncoder().encode(hashBytes(tensors.get(header.tensors[t]!.name)!)));
            assert.equal(footer.tensorHashes![t], h.digest(), header.tensors[t]!.name);
          }
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }
  }
});

/** A container's header and footer, read from its bytes (footerAt: where the footer record starts). */
function indexOf(c: Uint8Array): { header: ContainerHeader; footer: ContainerFooter; footerAt: number } {
  const view = new DataView(c.buffer, c.byteOffset, c.length);
  const footerAt = Number(view.getBigUint64(c.length - 16, true));
  const header = decodeHeader(c.subarray(16, 16 + view.getUint32(12, true) + 4), FILE_KINDS);
  const length = view.getUint32(footerAt + 1, true);
  const footer = decodeFooter(c.subarray(footerAt + 5, footerAt + 5 + length), view.getUint32(footerAt + 5 + length, true), header);
  return { header, footer, footerAt };
}

test('hashes left out of a small container; a wrong restore is still caught by the fingerprint', async () => {
  const file = tinyCheckpoint(4);
  const auto = await compressBuffer(file, undefined, { lossless: true, threads: 0 });
  const always = await compressBuffer(file, undefined, { lossless: true, threads: 0, tensorHashes: 'always' });
  assert.ok(auto.length < always.length, `${auto.length} vs ${always.length}`);
  assert.ok(sameBytes(await restoreBuffer(auto), file));
  // Change the stored target fingerprint and reseal the footer: restore must refuse.
  const { header, footer, footerAt } = indexOf(auto);
  assert.equal(footer.tensorHashes, null);
  const bad = Buffer.concat([auto.subarray(0, footerAt), encodeTail({ ...footer, targetFingerprint: '0123456789abcdef' }, footerAt, header)]);
  const e = await restoreBuffer(bad).then(() => null, (x: unknown) => x);
  assert.equal((e as { code?: string } | null)?.code, 'ERR_FINGERPRINT');
  assert.match(errorOf(() => { throw e; }).message, /fingerprint/);
});

test('a pack with an empty member (valid per the format) restores: its hash is that of an empty tensor on both sides', async () => {
  const file = serializeSafetensors([
    { name: 'a', dtype: 'F32', shape: [3], data: new Uint8Array(12).fill(7) },
    { name: 'e', dtype: 'F32', shape: [0], data: new Uint8Array(0) },
    { name: 'b', dtype: 'F32', shape: [2], data: new Uint8Array(8).fill(9) },
  ]);
  const reader = new SafetensorsMemory(file);
  const header = planFor(reader, null, resolveOptions({ lossless: true, chunkElements: 1024 }));
  // The planner keeps empty tensors out of packs; a writer may put them in one.
  header.entries = [{ kind: 'pack', weight: 0, expAvg: null, expAvgSq: null, exactWeight: true, exactMoments: false, base: false, elements: 5, members: [0, 1, 2] }];
  for (const t of header.tensors) t.entry = 0;
  const parts: Uint8Array[] = [];
  const encoder = new ChunkEncoder(header, { threads: 0 });
  await pipeline(new ChunkSource(header, reader, null), encoder, new ContainerWriter(header, 'always'), new Writable({ write(c: Uint8Array, _e, cb) { parts.push(c); cb(); } }));
  await encoder.close();
  const packed = Buffer.concat(parts);
  assert.ok(sameBytes(await restoreBuffer(packed), file));
  const unpacked = await compressBuffer(file, undefined, { lossless: true, chunkElements: 1024, threads: 0, tensorHashes: 'always' });
  assert.deepEqual(indexOf(packed).footer.tensorHashes, indexOf(unpacked).footer.tensorHashes);
  assert.equal(indexOf(packed).footer.targetFingerprint, indexOf(unpacked).footer.targetFingerprint);
});
