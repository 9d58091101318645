import { test } from 'node:test';
import { buildSafetensorsHeader } from '../lib/formats/safetensors.js';
import { FORMAT_VERSION } from '../lib/core/constants.js';
import { FILE_KINDS } from '../lib/formats/registry.js';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { type ContainerHeader, decodeFooter, decodeHeader, encodeHead, encodeRecord, readPreambleInfo, recordCrcPrefix } from '../lib/container/format.js';
import { crc32 } from '../lib/core/crc32.js';
import { ExcpError } from '../lib/core/errors.js';
import { lzCompress, lzDecompress } from '../lib/coding/lz.js';
import { Models, afterLiteral, encodeLength } from '../lib/coding/lz-models.js';
import { Prng } from './support/prng.js';
import { RangeEncoder, createBitModels, encodeBitTree } from '../lib/coding/range-coder.js';
import { codeOf, randomCheckpointPair, sameBytes, str, varint } from './helpers.js';
import { toVersion1 } from '../examples/fuzz.js';
import { compressBuffer } from '../lib/api/compress.js';
import { restoreBuffer } from '../lib/api/restore.js';

const LIMIT = 64 * 1024 * 1024;

function roundTrip(input: Uint8Array, variant: number): Uint8Array {
  const packed = lzCompress(input, variant);
  const back = lzDecompress(packed, input.length, LIMIT, variant);
  assert.ok(sameBytes(back, input), `lz variant ${variant} round trip of ${input.length} bytes`);
  return packed;
}

for (const variant of [1, 2]) test(`lz variant ${variant}: round trips of random, empty, all-same, JSON text and 1 MB inputs`, () => {
  const roundTrip1 = (input: Uint8Array) => roundTrip(input, variant);
  const rng = new Prng(5);
  const random = Uint8Array.from({ length: 10000 }, () => rng.int(256));
  assert.ok(roundTrip1(random).length < random.length + 200, 'random bytes barely grow');
  assert.equal(roundTrip1(new Uint8Array(0)).length, 0);
  assert.ok(roundTrip1(new Uint8Array(100000).fill(7)).length < 100);
  const json = new TextEncoder().encode(JSON.stringify(Array.from({ length: 300 }, (_, i) => ({ name: `layers.${i}.fc.weight`, dtype: 'F32', shape: [12, i % 40], data_offsets: [i * 576, (i + 1) * 576] }))));
  const packedJson = roundTrip1(json);
  assert.ok(packedJson.length < json.length / 5, `JSON ${json.length} -> ${packedJson.length}`);
  const big = new Uint8Array(1 << 20);
  for (let i = 0; i < big.length; i++) big[i] = i % 1000 < 500 ? rng.int(4) : (i * 7) & 0xff;
  const packedBig = roundTrip1(big);
  assert.ok(packedBig.length < big.length / 2, `1 MB -> ${packedBig.length}`);
  // Lengths 2..273 and far distances (beyond the tree-coded slots).
  const far = new Uint8Array(300000);
  for (let i = 0; i < 100000; i++) far[i] = rng.int(256);
  far.set(far.subarray(0, 100000), 200000);
  roundTrip1(far);
});

test('lz variant 2 is smaller than variant 1 on real pickled data (a PyTorch optimizer.pt); variant 1 streams still decode', () => {
  const data = new Uint8Array(readFileSync(new URL('./fixtures/torch/bf16/checkpoint-8/optimizer.pt', import.meta.url)));
  const v1 = roundTrip(data, 1);
  const v2 = roundTrip(data, 2);
  // Measured: 14774 and 14423 bytes (matched literals, four reps, short reps).
  assert.ok(v2.length < v1.length * 0.98, `variant 2 ${v2.length} vs variant 1 ${v1.length}`);
  assert.equal(codeOf(() => lzDecompress(v1, data.length, LIMIT, 3)), 'ERR_CORRUPT', 'unknown variant');
  assert.equal(codeOf(() => lzCompress(data, 3)), 'ERR_OUT_OF_RANGE', 'no stream of an unknown variant is written');
});

for (const variant of [1, 2]) test(`lz variant ${variant}: hostile streams end in ERR_CORRUPT, ERR_TRUNCATED or ERR_HEADER_TOO_LARGE, never a hang or crash`, () => {
  const compress = (input: Uint8Array) => lzCompress(input, variant);
  const decompress = (bytes: Uint8Array, length: number, limit: number) => lzDecompress(bytes, length, limit, variant);
  const text = new TextEncoder().encode('{"a":1,"b":[1,2,3],"c":"abcabcabcabcabc"}'.repeat(40));
  const packed = compress(text);
  // Truncated streams: an error, or (when only the flush's padding is missing) the same bytes.
  for (let cut = 0; cut < packed.length; cut += 3) {
    try {
      const out = decompress(packed.subarray(0, cut), text.length, LIMIT);
      assert.ok(packed.length - cut <= 4 && sameBytes(out, text), `cut at ${cut} of ${packed.length} decoded silently`);
    } catch (e) {
      assert.ok(e instanceof ExcpError && ['ERR_TRUNCATED', 'ERR_CORRUPT'].includes(e.code), String(e));
    }
  }
  // A declared length beyond the limit is refused before allocating.
  assert.equal(codeOf(() => decompress(packed, LIMIT + 1, LIMIT)), 'ERR_HEADER_TOO_LARGE');
  assert.equal(codeOf(() => decompress(packed, -1, LIMIT)), 'ERR_HEADER_TOO_LARGE');
  // A rep (variant 2: a short rep) at byte 0: its distance, the initial rep 1, reaches before the start.
  const enc = new RangeEncoder();
  enc.encodeBit(createBitModels(4), 0, 1);
  enc.encodeBit(createBitModels(4), 0, 1);
  assert.equal(codeOf(() => decompress(enc.finish(), 10, LIMIT)), 'ERR_CORRUPT');
  // Bytes after the end of a valid stream, beyond the decoder's 4-byte read-ahead.
  assert.equal(codeOf(() => decompress(Uint8Array.from([...packed, 0, 0, 0, 0, 0]), text.length, LIMIT)), 'ERR_CORRUPT');
  // A match running past the declared end.
  const rep = new TextEncoder().encode('abababababababababab');
  assert.equal(codeOf(() => decompress(compress(rep), 3, LIMIT)), 'ERR_CORRUPT');
  // Garbage with declared lengths: bounded work, ExcpError or some bytes.
  const rng = new Prng(9);
  for (let k = 0; k < 300; k++) {
    const garbage = Uint8Array.from({ length: rng.int(64) }, () => rng.int(256));
    try {
      decompress(garbage, rng.int(5000), LIMIT);
    } catch (e) {
      assert.ok(e instanceof ExcpError, String(e));
    }
  }
});

test('lz variant 2: hand-built rep1..rep3 and short reps before the start are ERR_CORRUPT; inside the output they decode', () => {
  // One literal 'x', then a rep (k = 1..3; all reps are 1 at the start) or a short rep (k = 0), at byte 1 or,
  // without the literal, at byte 0.
  const stream = (withLiteral: boolean, k: number): Uint8Array => {
    const enc = new RangeEncoder();
    const m = new Models(2);
    let state = 0;
    if (withLiteral) {
      enc.encodeBit(m.isMatch, state, 0);
      encodeBitTree(enc, m.literal, m.literalBase(0), 8, 0x78);
      state = afterLiteral(state);
    }
    enc.encodeBit(m.isMatch, state, 1);
    enc.encodeBit(m.isRep, state, 1);
    enc.encodeBit(m.isRepG0, state, k === 0 ? 0 : 1);
    if (k === 0) enc.encodeBit(m.isRep0Long, state, 0);
    else {
      enc.encodeBit(m.isRepG1, state, k === 1 ? 0 : 1);
      if (k > 1) enc.encodeBit(m.isRepG2, state, k === 2 ? 0 : 1);
      encodeLength(enc, m.lengths[1], 2);
    }
    return enc.finish();
  };
  for (let k = 0; k <= 3; k++) {
    const n = k === 0 ? 1 : 2;
    assert.equal(codeOf(() => lzDecompress(stream(false, k), n, LIMIT, 2)), 'ERR_CORRUPT', `rep ${k} at byte 0`);
    assert.equal(Buffer.from(lzDecompress(stream(true, k), 1 + n, LIMIT, 2)).toString('latin1'), 'x'.repeat(1 + n), `rep ${k} at byte 1`);
  }
});

/** The options of a body storing the difference {lossless: true, chunkElements: 1024}, read as version 4 (the reference: format 4's defaults). */
const OPTIONS = { alpha: 5e-5, weightRule: 'dither', keep: 0.3, beta: 2, bits: 2, lossless: true, chunkElements: 1024, vFill: 'mean', vDomain: 'log', updateError: 0.8, keyframe: 'lossy' } as const;
/** The same difference read as version 2 (format 2's reference: its defaults). */
const OPTIONS_V2 = { alpha: 5e-5, weightRule: 'magnitude', keep: 0.3, beta: 2, bits: 2, lossless: true, chunkElements: 1024, vFill: 'mean', vDomain: 'log' } as const;

/** A little-endian u64 as 8 bytes (values below 2^32). */
function u64le(n: number): number[] {
  return [n & 255, (n >>> 8) & 255, (n >>> 16) & 255, n >>> 24, 0, 0, 0, 0];
}

test('header v2, v3 and v4: hand-built stored body decodes to the in-memory header', () => {
  const json57 = '{"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}';
  // A safetensors header: its length as 8 little-endian bytes, then the JSON.
  const raw = String.fromCharCode(json57.length) + '\0'.repeat(7) + json57;
  const body = [
    0, // stored
    ...str('excp test'),
    1, ...str('{"lossless":true,"chunkElements":1024}'), // options: difference from the reference
    1, // one file
    0, 0, // safetensors, path null
    1, ...str(raw), // rawHeader as UTF-8 text
    1, 0, // tensors [0] (zigzag delta from previous + 1)
    1, // one tensor
    0, ...str('w'), // names: shared prefix with the previous name, then the rest
    1 | (3 << 4), // codes: F32, plain
    2, 2, 3, // shapes: [2, 3]
    1, // one entry
    2, 0, // plain, exactWeight; weight 0
    0, // no info
  ];
  const bytes = Uint8Array.from([...body, 0, 0, 0, 0]);
  new DataView(bytes.buffer).setUint32(body.length, crc32(bytes.subarray(0, body.length)), true);
  const h = decodeHeader(bytes, FILE_KINDS);
  // The same body read as version 2: only the options' reference differs.
  assert.deepEqual(decodeHeader(bytes, FILE_KINDS, 2).options, OPTIONS_V2);
  assert.deepEqual(decodeHeader(bytes, FILE_KINDS, 3).options, { ...OPTIONS, updateError: 0.72 });
  assert.deepEqual(h, {
    tool: 'excp test', options: OPTIONS,
    tensors: [{ name: 'w', dtype: 'F32', shape: [2, 3], role: 'plain', entry: 0 }],
    entries: [{ kind: 'plain', weight: 0, expAvg: null, expAvgSq: null, exactWeight: true, exactMoments: false, base: false, elements: 6 }],
    files: [{ kind: 'safetensors', path: null, tensors: [0], layout: new TextEncoder().encode(raw) }],
  });
  // The writer's own bytes decode to the same header, and the preamble says version 4.
  const head = encodeHead(h, FILE_KINDS);
  assert.deepEqual(readPreambleInfo(head.subarray(0, 16)), { version: 4, length: head.length - 20 });
  assert.deepEqual(decodeHeader(head.subarray(16), FILE_KINDS), h);
  // Unknown body encodings and trailing bytes are refused.
  const bad = bytes.slice();
  bad[0] = 7;
  new DataView(bad.buffer).setUint32(body.length, crc32(bad.subarray(0, body.length)), true);
  assert.equal(codeOf(() => decodeHeader(bad, FILE_KINDS)), 'ERR_BAD_HEADER');
  const longer = Uint8Array.from([...body, 0, 0, 0, 0, 0]);
  new DataView(longer.buffer).setUint32(body.length + 1, crc32(longer.subarray(0, body.length + 1)), true);
  assert.equal(codeOf(() => decodeHeader(longer, FILE_KINDS)), 'ERR_BAD_HEADER');
  // Raw mode 3: the safetensors header is rebuilt from the tensors (here with 5 padding spaces).
  const derivedBody = body.slice();
  const at = body.indexOf(1, 1 + str('excp test').length + 1 + str('{"lossless":true,"chunkElements":1024}').length + 3);
  derivedBody.splice(at, 1 + str(raw).length, 3, 0, 0, 5);
  const derived = Uint8Array.from([...derivedBody, 0, 0, 0, 0]);
  new DataView(derived.buffer).setUint32(derivedBody.length, crc32(derived.subarray(0, derivedBody.length)), true);
  const json5 = new TextEncoder().encode(`${json57}     `);
  const expected = Buffer.concat([Buffer.from(Uint8Array.from([json5.length, 0, 0, 0, 0, 0, 0, 0])), Buffer.from(json5)]);
  assert.deepEqual(decodeHeader(derived, FILE_KINDS).files[0]!.layout, new Uint8Array(expected));
  const h3: ContainerHeader = { ...h, files: [{ kind: 'safetensors', path: null, tensors: [0], layout: new Uint8Array(expected) }] };
  // A header the usual writers would not make (a space after a colon) is stored as text, and takes more bytes.
  const other = new TextEncoder().encode(`${json57.replace('"w":', '"w": ')}    `);
  const stored: ContainerHeader = { ...h, files: [{ kind: 'safetensors', path: null, tensors: [0], layout: Uint8Array.from([...u64le(other.length), ...other]) }] };
  assert.deepEqual(decodeHeader(encodeHead(stored, FILE_KINDS).subarray(16), FILE_KINDS), stored);
  assert.ok(encodeHead(h3, FILE_KINDS).length < encodeHead(stored, FILE_KINDS).length, 'the writer finds the derivation');
  assert.deepEqual(decodeHeader(encodeHead(h3, FILE_KINDS).subarray(16), FILE_KINDS), h3);
  // A version 1 JSON body still decodes (its files as version 1 wrote them: the raw header in base64).
  const json = new TextEncoder().encode(JSON.stringify({ ...h, files: [{ kind: 'safetensors', path: null, rawHeader: Buffer.from(raw).toString('base64'), tensors: [0] }] }));
  const v1 = Uint8Array.from([...json, 0, 0, 0, 0]);
  new DataView(v1.buffer).setUint32(json.length, crc32(json), true);
  assert.deepEqual(decodeHeader(v1, FILE_KINDS), h);
});

test('record v2: type and length varint stored; the CRC also covers the implied entry and chunk', () => {
  const payload = Uint8Array.from({ length: 200 }, (_, i) => i);
  const rec = encodeRecord({ entry: 3, chunk: 130, payload });
  assert.deepEqual([...rec.subarray(0, 3)], [1, ...varint(200)]);
  assert.equal(rec.length, 3 + 200 + 4);
  const covered = Uint8Array.from([1, 3, ...varint(130), ...varint(200), ...payload]);
  assert.equal(new DataView(rec.buffer, rec.byteOffset).getUint32(rec.length - 4, true), crc32(covered));
  assert.deepEqual([...recordCrcPrefix(3, 130, 200)], [1, 3, ...varint(130), ...varint(200)]);
});

test('record v2: a record moved to another place fails its CRC', async () => {
  const pair = randomCheckpointPair(44, { params: 2, maxElements: 300 });
  const c = await compressBuffer(pair.current, pair.previous, { chunkElements: 64, lossless: true, threads: 0 });
  const view = new DataView(c.buffer, c.byteOffset, c.length);
  let o = 16 + view.getUint32(12, true) + 4;
  const spans: [number, number][] = [];
  while (c[o] === 1) {
    let n = 0;
    let scale = 1;
    let k = o + 1;
    for (;;) {
      const b = c[k++]!;
      n += (b & 0x7f) * scale;
      scale *= 128;
      if (!(b & 0x80)) break;
    }
    spans.push([o, k + n + 4]);
    o = k + n + 4;
  }
  assert.ok(spans.length >= 3);
  const [a, b] = [spans[0]!, spans[1]!];
  const swapped = Buffer.concat([c.subarray(0, a[0]), c.subarray(b[0], b[1]), c.subarray(a[0], a[1]), c.subarray(b[1])]);
  await assert.rejects(restoreBuffer(swapped, pair.previous), (e: unknown) => e instanceof ExcpError && e.code === 'ERR_CRC');
});

test('footer v2: a hand-built stored body decodes to the in-memory footer', () => {
  const header: ContainerHeader = {
    tool: 't', options: { ...OPTIONS },
    tensors: [{ name: 'w', dtype: 'F32', shape: [2, 3], role: 'plain', entry: 0 }, { name: 'b', dtype: 'F32', shape: [70], role: 'plain', entry: 1 }],
    entries: [
      { kind: 'plain', weight: 0, expAvg: null, expAvgSq: null, exactWeight: true, exactMoments: false, base: true, elements: 6 },
      { kind: 'plain', weight: 1, expAvg: null, expAvgSq: null, exactWeight: true, exactMoments: false, base: false, elements: 70 },
    ],
    files: [{ kind: 'safetensors', path: null, tensors: [0, 1], layout: buildSafetensorsHeader([{ name: 'w', dtype: 'F32', shape: [2, 3] }, { name: 'b', dtype: 'F32', shape: [70] }]).raw }],
  };
  const hash = (k: number) => Array.from({ length: 8 }, (_, i) => k * 16 + i);
  const hex = (k: number) => hash(k).map((b) => b.toString(16).padStart(2, '0')).join('');
  const body = Uint8Array.from([
    0, // stored
    3, // base (1) and target (2) fingerprints stored, not derived
    1, 1, ...varint(2 * 50), 30, 0, 0, 5, // entry 0: entropy only; offsets [50] (zigzag); codedBytes 30; kept 6 of 6; no moments
    3, 1, 0, 40, 2, 0, 7, 9, // entry 1: both; offsets [80] (predicted 50 + 30); codedBytes 40; kept 69 of 70 (zigzag 1)
    ...hash(1), ...hash(2), // tensor hashes
    0b01, ...hash(3), // base hash of tensor 0 only
    ...hash(4), ...hash(5), // base and target fingerprints
  ]);
  const prefix = Uint8Array.from([2, body.length, 0, 0, 0]);
  const footer = decodeFooter(body, crc32(body, crc32(prefix)), header);
  assert.deepEqual(footer, {
    entries: [
      { offsets: [50], codedBytes: 30, keptWeights: 6, keptMoments: 0, entropyBits: 5 },
      { offsets: [80], codedBytes: 40, keptWeights: 69, keptMoments: 0, entropyBits: 7, symbolBits: 9 },
    ],
    tensorHashes: [hex(1), hex(2)], baseHashes: [hex(3), null], baseFingerprint: hex(4), targetFingerprint: hex(5),
  });
});


test('containers: written as the current version, a version 1 rewrite of the same content still restores (lossless: the same exact streams in both)', async () => {
  // Lossy version 1 containers have range-coded symbols: spec/compat.spec.ts restores real ones.
  for (const [seed, lossless] of [[41, true], [43, true]] as const) {
    const pair = randomCheckpointPair(seed, { params: 2, maxElements: 400, extras: true });
    const c = await compressBuffer(pair.current, pair.previous, { chunkElements: 128, lossless, threads: 0 });
    assert.equal(readPreambleInfo(c.subarray(0, 16)).version, FORMAT_VERSION);
    const restored = await restoreBuffer(c, pair.previous);
    const v1 = toVersion1(c);
    assert.ok(v1.length > c.length, `v1 ${v1.length} vs v2 ${c.length}`);
    assert.ok(sameBytes(await restoreBuffer(v1, pair.previous), restored));
  }
});

test('header and footer sizes on the fp32 PyTorch fixture (lossless)', async () => {
  const model = readFileSync(new URL('./fixtures/torch/fp32/checkpoint-8/model.safetensors', import.meta.url));
  const c = await compressBuffer(model, undefined, { lossless: true, threads: 0 });
  const view = new DataView(c.buffer, c.byteOffset, c.length);
  const headerBody = view.getUint32(12, true);
  const footerAt = Number(view.getBigUint64(c.length - 16, true));
  const footerBody = view.getUint32(footerAt + 1, true);
  // Version 1 wrote 15782 + 6212 bytes of JSON here (version 2: 178 + 450 when measured).
  assert.ok(headerBody < 300, `header body ${headerBody} bytes`);
  assert.ok(footerBody < 600, `footer body ${footerBody} bytes`);
  assert.ok(sameBytes(await restoreBuffer(c), model));
});
