/**
 * Zip layer of torch checkpoints: CRC-32, the random-access reader, the
 * torch-identical writer and the carry-through rewriter.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import zlib from 'node:zlib';
import { crc32 } from '../lib/core/crc32.js';
import { ExcpError } from '../lib/core/errors.js';
import { rewriteZip } from '../lib/formats/torch/zip-rewrite.js';
import { ZipWriter, writeZip } from './support/zip-writer.js';
import { concatBytes } from '../lib/core/bytes.js';
import { type ReadAt, readZipDirectory } from '../lib/formats/torch/zip.js';
import { uniform, codeOf } from './helpers.js';

const FIXTURES = new URL('./fixtures/torch/', import.meta.url);
const load = (path: string): Uint8Array => new Uint8Array(readFileSync(new URL(path, FIXTURES)));
const reader = (bytes: Uint8Array): ReadAt => (offset, length) => bytes.subarray(offset, offset + length);

// The non-data bytes of a file torch 1.13 wrote with a 4 GiB + 1000 byte uint8
// tensor (so: a zip64 entry, then entries whose header offsets exceed 2^32),
// captured by hand; the 4 GiB file itself is not committed.
const TORCH_ZIP64 = {
  size: 4294969355,
  entries: [
    { name: 'big/data.pkl', size: 255, crc32: 3619971940,
      header: '504b0304000008080000000000000000000000000000000000000c0016006269672f646174612e706b6c464212005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a',
      descriptor: '504b07086463c4d7ff000000ff000000' },
    { name: 'big/data/0', size: 4294968296, crc32: 355010125,
      header: '504b0304000008080000000000000000000000000000000000000a0049006269672f646174612f3001001000e8030000010000000000000000000000464231005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a',
      descriptor: '504b07084d062915e803000001000000e803000001000000' },
    { name: 'big/data/1', size: 40, crc32: 3869632361,
      header: '504b0304000008080000000000000000000000000000000000000a0018006269672f646174612f3101000800c005000001000000464208005a5a5a5a5a5a5a5a',
      descriptor: '504b070869e7a5e628000000000000002800000000000000' },
    { name: 'big/version', size: 2, crc32: 1432854225,
      header: '504b0304000008080000000000000000000000000000000000000b0017006269672f76657273696f6e010008004006000001000000464207005a5a5a5a5a5a5a',
      descriptor: '504b0708d19e675502000000000000000200000000000000' },
  ],
  tail: '504b01020000000008080000000000006463c4d7ff000000ff0000000c00000000000000000000000000000000006269672f646174612e706b6c504b01020000000008080000000000004d062915ffffffffffffffff0a001400000000000000000000004f0100006269672f646174612f3001001000e803000001000000e803000001000000504b010200000000080800000000000069e7a5e628000000280000000a000c0000000000000000000000ffffffff6269672f646174612f3101000800c005000001000000504b0102000000000808000000000000d19e675502000000020000000b000c0000000000000000000000ffffffff6269672f76657273696f6e010008004006000001000000504b06062c000000000000001e032d000000000000000000040000000000000004000000000000000f010000000000009a06000001000000504b060700000000a90700000100000001000000504b050600000000040004000f010000ffffffff0000',
};

test('crc32: check value, incremental use, agreement with zlib', () => {
  assert.equal(crc32(new TextEncoder().encode('123456789')), 0xcbf43926);
  assert.equal(crc32(new Uint8Array(0)), 0);
  const rand = uniform(7);
  const data = new Uint8Array(5000).map(() => Math.floor(rand() * 256));
  for (let start = 0; start < 9; start++) {
    for (const length of [0, 1, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000]) {
      const part = data.subarray(start, start + length);
      assert.equal(crc32(part), zlib.crc32(part), `start ${start} length ${length}`);
    }
  }
  for (const cut of [0, 1, 5, 8, 13, 4999, 5000]) {
    assert.equal(crc32(data.subarray(cut), crc32(data.subarray(0, cut))), zlib.crc32(data));
  }
});

test('reader: the optimizer.pt torch wrote, every entry 64-byte aligned with a matching CRC', () => {
  const bytes = load('fp32/checkpoint-4/optimizer.pt');
  const dir = readZipDirectory(bytes.length, reader(bytes));
  assert.equal(dir.entries.length, 149);
  assert.equal(dir.entries[0]!.name, 'optimizer/data.pkl');
  assert.equal(dir.entries.at(-1)!.name, 'optimizer/version');
  assert.equal(dir.entries[1]!.name, 'optimizer/data/0');
  for (const e of dir.entries) {
    assert.equal(e.dataOffset % 64, 0, e.name);
    assert.equal(e.flags, 0x0808);
    assert.equal(e.descriptorLength, 16);
    assert.equal(crc32(bytes.subarray(e.dataOffset, e.dataOffset + e.size)), e.crc32, e.name);
  }
  const version = dir.entries.at(-1)!;
  assert.equal(new TextDecoder().decode(bytes.subarray(version.dataOffset, version.dataOffset + version.size)), '3\n');
});

test('writer: rebuilding each torch-written fixture from its entries gives the same bytes', () => {
  const files: string[] = [];
  for (const run of ['fp32', 'bf16']) {
    for (const ck of ['checkpoint-4', 'checkpoint-8']) {
      for (const f of readdirSync(new URL(`${run}/${ck}/`, FIXTURES))) {
        if (/\.(pt|pth|bin)$/.test(f)) files.push(`${run}/${ck}/${f}`);
      }
    }
  }
  files.push('malicious/optimizer.pt');
  assert.ok(files.length >= 17);
  for (const f of files) {
    const bytes = load(f);
    const dir = readZipDirectory(bytes.length, reader(bytes));
    const rebuilt = writeZip(dir.entries.map((e) => ({ name: e.name, data: bytes.subarray(e.dataOffset, e.dataOffset + e.size) })));
    assert.ok(Buffer.from(rebuilt).equals(Buffer.from(bytes)), f);
  }
});

test('writer: zip64 layout (4 GiB entry, offsets past 2^32) matches torch byte for byte', () => {
  const writer = new ZipWriter();
  // A sparse picture of the file: the non-data pieces at their offsets, zeros elsewhere.
  const pieces: [number, Uint8Array][] = [];
  for (const e of TORCH_ZIP64.entries) {
    const at = writer.offset;
    const header = writer.beginEntry(e.name, e.size);
    assert.equal(Buffer.from(header).toString('hex'), e.header, `${e.name} local header`);
    pieces.push([at, header]);
    const descriptorAt = writer.offset;
    const descriptor = writer.endEntry(e.crc32);
    assert.equal(Buffer.from(descriptor).toString('hex'), e.descriptor, `${e.name} data descriptor`);
    pieces.push([descriptorAt, descriptor]);
  }
  const tailAt = writer.offset;
  const tail = writer.finish();
  assert.equal(Buffer.from(tail).toString('hex'), TORCH_ZIP64.tail);
  assert.equal(writer.offset, TORCH_ZIP64.size);
  pieces.push([tailAt, tail]);
  const sparse: ReadAt = (offset, length) => {
    const out = new Uint8Array(length);
    for (const [at, piece] of pieces) {
      const from = Math.max(at, offset);
      const to = Math.min(at + piece.length, offset + length);
      if (from < to) out.set(piece.subarray(from - at, to - at), from - offset);
    }
    return out;
  };
  const dir = readZipDirectory(TORCH_ZIP64.size, sparse);
  assert.deepEqual(dir.entries.map((e) => [e.name, e.size, e.crc32, e.dataOffset % 64, e.descriptorLength]), [
    ['big/data.pkl', 255, 3619971940, 0, 16],
    ['big/data/0', 4294968296, 355010125, 0, 24],
    ['big/data/1', 40, 3869632361, 0, 24],
    ['big/version', 2, 1432854225, 0, 24],
  ]);
  assert.equal(dir.entries[2]!.headerOffset, 4294968768);
});

test('writer: empty entries, bad options and misuse', () => {
  const bytes = writeZip([{ name: 'a/empty', data: new Uint8Array(0) }, { name: 'a/x', data: new Uint8Array([1, 2, 3]) }]);
  const dir = readZipDirectory(bytes.length, reader(bytes));
  assert.deepEqual(dir.entries.map((e) => [e.name, e.size, e.flags, e.descriptorLength]), [['a/empty', 0, 0x0800, 0], ['a/x', 3, 0x0808, 16]]);
  assert.equal(codeOf(() => new ZipWriter({ alignment: 48 })), 'ERR_OUT_OF_RANGE');
  const w = new ZipWriter();
  w.beginEntry('a/b', 1);
  assert.equal(codeOf(() => w.beginEntry('a/c', 1)), 'ERR_INVALID_ARG');
  assert.equal(codeOf(() => w.finish()), 'ERR_INVALID_ARG');
  w.endEntry(0);
  assert.equal(codeOf(() => w.beginEntry('a/b', 1)), 'ERR_INVALID_ARG');
  assert.equal(codeOf(() => w.beginEntry('/abs', 1)), 'ERR_INVALID_ARG');
  assert.equal(codeOf(() => w.endEntry(0)), 'ERR_INVALID_ARG');
});

/** A small valid archive and a way to patch it at a field of a chosen record. */
function sample(): { bytes: Uint8Array; cd: number; view: DataView } {
  const bytes = writeZip([{ name: 'arc/data.pkl', data: new Uint8Array([0x80, 2, 0x4e, 0x2e]) }, { name: 'arc/data/0', data: new Uint8Array(8).fill(7) }]);
  const dir = readZipDirectory(bytes.length, reader(bytes));
  return { bytes, cd: dir.centralDirectoryOffset, view: new DataView(bytes.buffer) };
}

test('reader: one refusal per kind of bad archive', () => {
  assert.equal(codeOf(() => readZipDirectory(10, reader(new Uint8Array(10)))), 'ERR_BAD_ZIP');
  assert.equal(codeOf(() => readZipDirectory(100, reader(new Uint8Array(100)))), 'ERR_BAD_ZIP');
  {
    const { bytes } = sample();
    const extended = concatBytes([bytes, new Uint8Array([1, 2, 3])]);
    assert.equal(codeOf(() => readZipDirectory(extended.length, reader(extended))), 'ERR_BAD_ZIP', 'trailing bytes');
    assert.equal(codeOf(() => readZipDirectory(bytes.length - 1, reader(bytes))), 'ERR_BAD_ZIP', 'cut end record');
  }
  const patched = (patch: (s: ReturnType<typeof sample>) => void): string => {
    const s = sample();
    patch(s);
    return codeOf(() => readZipDirectory(s.bytes.length, reader(s.bytes)));
  };
  // Deflate: method 8 in the central and local headers.
  let message = '';
  try {
    const s = sample();
    s.view.setUint16(s.cd + 10, 8, true);
    s.view.setUint16(8, 8, true);
    readZipDirectory(s.bytes.length, reader(s.bytes));
  } catch (err) {
    message = (err as Error).message;
    assert.equal((err as ExcpError).code, 'ERR_BAD_ZIP');
  }
  assert.match(message, /deflate/);
  assert.equal(patched((s) => s.view.setUint16(s.cd + 8, 0x0809, true)), 'ERR_BAD_ZIP', 'encrypted');
  assert.equal(patched((s) => s.view.setUint32(s.cd, 0x12345678, true)), 'ERR_BAD_ZIP', 'central signature');
  assert.equal(patched((s) => s.view.setUint32(0, 0x12345678, true)), 'ERR_BAD_ZIP', 'local signature');
  assert.equal(patched((s) => s.view.setUint8(30, 0x41)), 'ERR_BAD_ZIP', 'local name differs');
  assert.equal(patched((s) => s.view.setUint32(s.cd + 16, 1, true)), 'ERR_BAD_ZIP', 'descriptor CRC differs');
  assert.equal(patched((s) => s.view.setUint32(s.cd + 24, 5, true)), 'ERR_BAD_ZIP', 'uncompressed size differs');
  assert.equal(patched((s) => s.view.setUint32(s.cd + 20, 9, true)), 'ERR_BAD_ZIP', 'stored sizes differ');
  assert.equal(patched((s) => s.view.setUint32(s.cd + 42, 0xfffffff0, true)), 'ERR_TRUNCATED', 'header offset past the end');
  assert.equal(patched((s) => { s.bytes[s.cd + 46 + 12 + 46 + 9] = 0x2e; }), 'ERR_BAD_ZIP', 'name of the second entry changed');
  // Duplicate name: rename the second entry to the first one's name (same length).
  {
    const bytes = writeZip([{ name: 'arc/aa', data: new Uint8Array([1]) }, { name: 'arc/bb', data: new Uint8Array([1]) }]);
    const dir = readZipDirectory(bytes.length, reader(bytes));
    const second = dir.entries[1]!;
    bytes.set(new TextEncoder().encode('arc/aa'), second.centralOffset + 46);
    bytes.set(new TextEncoder().encode('arc/aa'), second.headerOffset + 30);
    assert.equal(codeOf(() => readZipDirectory(bytes.length, reader(bytes))), 'ERR_BAD_ZIP');
  }
  // Overlap: point the second entry's header at the first one's.
  {
    const bytes = writeZip([{ name: 'arc/aa', data: new Uint8Array([1]) }, { name: 'arc/aa2', data: new Uint8Array([1]) }]);
    const dir = readZipDirectory(bytes.length, reader(bytes));
    new DataView(bytes.buffer).setUint32(dir.entries[1]!.centralOffset + 42, 0, true);
    assert.equal(codeOf(() => readZipDirectory(bytes.length, reader(bytes))), 'ERR_BAD_ZIP');
  }
});

test('reader: lengths are checked against the file before anything is read or allocated', () => {
  const { bytes } = sample();
  const end = bytes.length - 22;
  const view = new DataView(bytes.buffer);
  // Claim a 3 GB central directory in the zip64 end record.
  const end64 = Number(view.getBigUint64(end - 20 + 8, true));
  view.setBigUint64(end64 + 40, 3_000_000_000n, true);
  let largest = 0;
  const spy: ReadAt = (offset, length) => {
    largest = Math.max(largest, length);
    return bytes.subarray(offset, offset + length);
  };
  assert.equal(codeOf(() => readZipDirectory(bytes.length, spy)), 'ERR_BAD_ZIP');
  assert.ok(largest <= bytes.length, `read ${largest} bytes from a ${bytes.length}-byte file`);
  assert.equal(codeOf(() => readZipDirectory(bytes.length, reader(bytes), { maxCentralDirectoryBytes: 10 })), 'ERR_BAD_ZIP');
});

test('rewrite: new storage bytes, CRCs patched, every other byte carried through', () => {
  const bytes = load('fp32/checkpoint-4/optimizer.pt');
  const dir = readZipDirectory(bytes.length, reader(bytes));
  const target = dir.entries.find((e) => e.name === 'optimizer/data/4')!;
  const replacement = new Uint8Array(target.size).map((_, i) => i & 0xff);
  const out = concatBytes([...rewriteZip(dir, reader(bytes), new Map([[target.name, replacement]]))].map((c) => c.slice()));
  assert.equal(out.length, bytes.length);
  const after = readZipDirectory(out.length, reader(out));
  const changed = after.entries.find((e) => e.name === target.name)!;
  assert.deepEqual(out.subarray(changed.dataOffset, changed.dataOffset + changed.size), replacement);
  assert.equal(changed.crc32, crc32(replacement));
  // Differences only in the data, the descriptor CRC and the central CRC.
  const allowed = new Set<number>();
  for (let i = 0; i < target.size; i++) allowed.add(target.dataOffset + i);
  for (let i = 0; i < 4; i++) {
    allowed.add(target.dataOffset + target.size + 4 + i);
    allowed.add(target.centralOffset + 16 + i);
  }
  for (let i = 0; i < bytes.length; i++) if (!allowed.has(i)) assert.equal(out[i], bytes[i], `byte ${i}`);
  // Chunked replacement through a function, tiny copy chunks: same result.
  const chunked = concatBytes([...rewriteZip(dir, reader(bytes), new Map([[target.name, () => [replacement.subarray(0, 5), replacement.subarray(5)]]]), { chunkBytes: 777 })].map((c) => c.slice()));
  assert.ok(Buffer.from(chunked).equals(Buffer.from(out)));
  assert.equal(codeOf(() => [...rewriteZip(dir, reader(bytes), new Map([[target.name, replacement.subarray(1)]]))]), 'ERR_SHAPE');
  assert.equal(codeOf(() => [...rewriteZip(dir, reader(bytes), new Map([[target.name, () => [replacement, replacement]]]))]), 'ERR_SHAPE');
  assert.equal(codeOf(() => [...rewriteZip(dir, reader(bytes), new Map([['optimizer/nope', replacement]]))]), 'ERR_INVALID_ARG');
});

test('rewrite: an entry without data descriptor gets its local header CRC patched', () => {
  // Hand-build a one-entry archive in the classic layout (CRC in the local header, flags 0).
  const data = new Uint8Array([9, 8, 7, 6]);
  const name = new TextEncoder().encode('a/b');
  const local = new Uint8Array(30 + name.length);
  const lv = new DataView(local.buffer);
  lv.setUint32(0, 0x04034b50, true);
  lv.setUint32(14, crc32(data), true);
  lv.setUint32(18, 4, true);
  lv.setUint32(22, 4, true);
  lv.setUint16(26, name.length, true);
  local.set(name, 30);
  const central = new Uint8Array(46 + name.length);
  const cv = new DataView(central.buffer);
  cv.setUint32(0, 0x02014b50, true);
  cv.setUint32(16, crc32(data), true);
  cv.setUint32(20, 4, true);
  cv.setUint32(24, 4, true);
  cv.setUint16(28, name.length, true);
  central.set(name, 46);
  const end = new Uint8Array(22);
  const ev = new DataView(end.buffer);
  ev.setUint32(0, 0x06054b50, true);
  ev.setUint16(8, 1, true);
  ev.setUint16(10, 1, true);
  ev.setUint32(12, central.length, true);
  ev.setUint32(16, local.length + data.length, true);
  const bytes = concatBytes([local, data, central, end]);
  const dir = readZipDirectory(bytes.length, reader(bytes));
  const fresh = new Uint8Array([1, 2, 3, 4]);
  const out = concatBytes([...rewriteZip(dir, reader(bytes), new Map([['a/b', () => [fresh.subarray(0, 1), fresh.subarray(1)]]]))].map((c) => c.slice()));
  const after = readZipDirectory(out.length, reader(out));
  assert.equal(after.entries[0]!.crc32, crc32(fresh));
  assert.equal(new DataView(out.buffer).getUint32(14, true), crc32(fresh));
});

test('fuzz: 3000 seeded mutations of a torch zip end in success or an ExcpError', () => {
  const original = load('bf16/checkpoint-4/scheduler.pt');
  const optimizer = load('fp32/checkpoint-4/optimizer.pt');
  const rand = uniform(20240611);
  for (let round = 0; round < 3000; round++) {
    const base = round % 10 === 0 ? optimizer : original;
    const bytes = base.slice();
    const kind = round % 4;
    // Aim most mutations at the structure: the end records and the headers.
    const flips = 1 + Math.floor(rand() * 4);
    for (let k = 0; k < flips; k++) {
      const region = rand() < 0.6 ? bytes.length - 1 - Math.floor(rand() * Math.min(bytes.length, 200)) : Math.floor(rand() * bytes.length);
      bytes[region] = kind === 0 ? bytes[region]! ^ (1 << Math.floor(rand() * 8)) : Math.floor(rand() * 256);
    }
    const length = kind === 3 ? Math.floor(rand() * bytes.length) : bytes.length;
    try {
      const dir = readZipDirectory(length, reader(bytes.subarray(0, length)));
      for (const e of dir.entries) assert.ok(e.dataOffset + e.size <= length);
    } catch (err) {
      if (!(err instanceof ExcpError)) throw new Error(`round ${round}: ${String(err)}`);
    }
  }
});
