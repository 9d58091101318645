/**
 * torch.save files of hand-written training loops as an input format
 * (lib/formats/torch-file.ts), on files torch 2.13 wrote
 * (spec/fixtures/torch2/loop, zip): weights by key, Adam moments paired
 * with them, the rest carried as the skeleton; restored to a file whose
 * CRCs follow its data; torch 2.x zip details through a round trip.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from '../lib/core/crc32.js';
import { toFloat32 } from '../lib/core/dtype.js';
import { ExcpError } from '../lib/core/errors.js';
import type { CompressOptions } from '../lib/api/compress.js';
import { restoreBuffer, restoreToFile } from '../lib/api/restore.js';
import { inspectContainer } from '../lib/api/inspect.js';
import { TORCH_SKELETON, TorchFileCheckpoint } from '../lib/formats/torch-file.js';
import { readTorchCheckpoint } from '../lib/formats/torch/serialization.js';
import { readZipDirectory } from '../lib/formats/torch/zip.js';
import { writeZip } from './support/zip-writer.js';
import { patchZipCrcs } from '../lib/formats/torch/zip-rewrite.js';
import { compressToPath, uniform } from './helpers.js';

const TORCH2 = fileURLToPath(new URL('./fixtures/torch2/', import.meta.url));
const loopRef = JSON.parse(readFileSync(join(TORCH2, 'loop', 'reference.json'), 'utf8')).styles;
const work = mkdtempSync(join(tmpdir(), 'excp-torch-file-spec-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));
let counter = 0;

const STYLES = {
  plain: ['plain/step-4.pt', 'plain/step-8.pt'],
  nested: ['nested/step-4.pt', 'nested/step-8.pt'],
  lightning: ['lightning/epoch=0-step=4.ckpt', 'lightning/epoch=0-step=8.ckpt'],
} as const;
const loop = (p: string): string => join(TORCH2, 'loop', p);
const bytes = (path: string): Uint8Array => new Uint8Array(readFileSync(path));

async function compressFile(input: string, options: CompressOptions = {}): Promise<string> {
  return compressToPath(input, join(work, `c${counter++}.excp`), options);
}

async function restoreFile(container: string, base?: string): Promise<Uint8Array> {
  const target = join(work, `r${counter++}.pt`);
  await restoreToFile(container, target, { base, threads: 0 });
  return bytes(target);
}

/** Each zip entry's data matches its recorded CRC (0 when the file records none). */
function assertCrcs(file: Uint8Array, none = false): void {
  const dir = readZipDirectory(file.length, (o, l) => file.subarray(o, o + l));
  for (const e of dir.entries) assert.equal(e.crc32, none ? 0 : crc32(file.subarray(e.dataOffset, e.dataOffset + e.size)), e.name);
}

/** The byte ranges of every tensor the file holds (what restore may change). */
function tensorRanges(file: Uint8Array): [number, number][] {
  return readTorchCheckpoint(file.length, (o, l) => file.subarray(o, o + l)).tensors.map((t) => [t.byteOffset, t.byteOffset + t.byteLength]);
}

/** Bytes that differ between two files of one size, outside the given ranges and the zip CRC fields. */
function differencesOutside(a: Uint8Array, b: Uint8Array, ranges: [number, number][]): number[] {
  assert.equal(a.length, b.length);
  const dir = readZipDirectory(a.length, (o, l) => a.subarray(o, o + l));
  const crcFields = dir.entries.flatMap((e) => [e.centralOffset + 16, e.dataOffset + e.size + 4]);
  const inside = (i: number): boolean => ranges.some(([s, e]) => i >= s && i < e) || crcFields.some((f) => i >= f && i < f + 4);
  const out: number[] = [];
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i] && !inside(i)) out.push(i);
  return out;
}

describe('torch.save files of training loops: {model, optimizer}, nested, Lightning', () => {
  for (const [style, [prevPath, curPath]] of Object.entries(STYLES)) {
    it(`${style}: weights by key, moments paired by the param map, the rest one skeleton; the map never wrong`, async () => {
      const base = await TorchFileCheckpoint.open(loop(prevPath), { mapMoments: false });
      const cur = await TorchFileCheckpoint.open(loop(curPath), { mapMoments: true, previous: base });
      try {
        const truth: string[] = loopRef[style].param_order.flat();
        const names = cur.tensors.map((t) => t.name);
        assert.equal(names[0], TORCH_SKELETON);
        assert.deepEqual(cur.files.map((f) => [f.kind, f.path]), [['torch', null]]);
        for (const n of truth) assert.ok(names.includes(n), n);
        const map = cur.info!['paramMap'] as { ids: [number, string, number, string][]; unmapped: number[] };
        assert.ok(map.ids.length >= 5);
        for (const [id, name] of map.ids) {
          assert.equal(name, truth[id], `id ${id}`);
          assert.ok(names.includes(`${name}.exp_avg`) && names.includes(`${name}.exp_avg_sq`));
        }
        for (const id of map.unmapped) assert.ok(names.includes(`__optimizer__/${id}/exp_avg`));
        // The nested file's EMA copy has the model's names and shapes: it stays in the skeleton.
        assert.ok(!names.some((n) => n.includes('ema')));
      } finally {
        await cur.close();
        await base.close();
      }
    });

    it(`${style}: lossy round trip to a file: a valid zip with fresh CRCs, every other byte as written; lossless byte for byte`, async () => {
      const original = bytes(loop(curPath));
      const lossy = await restoreFile(await compressFile(loop(curPath), { base: loop(prevPath) }), loop(prevPath));
      assertCrcs(lossy);
      assert.deepEqual(differencesOutside(lossy, original, tensorRanges(original)), []);
      // The weights moved by less than their residual; the step counters and everything else are exact.
      const o = readTorchCheckpoint(original.length, (p, l) => original.subarray(p, p + l));
      const r = readTorchCheckpoint(lossy.length, (p, l) => lossy.subarray(p, p + l));
      assert.deepEqual(r.tensors.map((t) => t.path), o.tensors.map((t) => t.path));
      for (const t of o.tensors.filter((x) => x.path.endsWith('/step'))) {
        assert.deepEqual(lossy.subarray(t.byteOffset, t.byteOffset + t.byteLength), original.subarray(t.byteOffset, t.byteOffset + t.byteLength));
      }
      const lossless = await restoreFile(await compressFile(loop(curPath), { base: loop(prevPath), lossless: true }), loop(prevPath));
      assert.deepEqual(lossless, original);
      const keyframe = await restoreFile(await compressFile(loop(prevPath), { lossless: true }));
      assert.deepEqual(keyframe, bytes(loop(prevPath)));
    });
  }

  it('a weight restored within reach of its residual', async () => {
    const [prev, cur] = STYLES.plain.map(loop);
    const restored = await restoreFile(await compressFile(cur!, { base: prev }), prev);
    const at = (file: Uint8Array, path: string): Float32Array => {
      const t = readTorchCheckpoint(file.length, (o, l) => file.subarray(o, o + l)).tensors.find((x) => x.path === path)!;
      return toFloat32(file.slice(t.byteOffset, t.byteOffset + t.byteLength), t.dtype);
    };
    const w = at(bytes(cur!), 'model/embed.weight');
    const b = at(bytes(prev!), 'model/embed.weight');
    const r = at(restored, 'model/embed.weight');
    let residual = 0;
    let error = 0;
    for (let i = 0; i < w.length; i++) {
      residual += (w[i]! - b[i]!) ** 2;
      error += (w[i]! - r[i]!) ** 2;
    }
    assert.ok(error < residual, `error ${error} vs residual ${residual}`);
  });
});

describe('torch 2.x zip details through a round trip (spec/fixtures/torch2/zip)', () => {
  it('CRC 0 stays 0; alignment 256 and protocol 4 files restore byte for byte and lossy with fresh CRCs', async () => {
    for (const name of ['crc0.pt', 'align-256.pt', 'protocol4.pt']) {
      const path = join(TORCH2, 'zip', name);
      const original = bytes(path);
      assert.deepEqual(await restoreFile(await compressFile(path, { lossless: true })), original, name);
      // A keyframe: exact weights, lossy moments.
      const restored = await restoreFile(await compressFile(path));
      assertCrcs(restored, name === 'crc0.pt');
      assert.deepEqual(differencesOutside(restored, original, tensorRanges(original)), [], name);
      assert.notDeepEqual(restored, original, `${name}: the moments were pruned`);
    }
  });

  it('float8 and uint16-64 tensors (_rebuild_tensor_v3) are carried exactly', async () => {
    const path = join(TORCH2, 'zip', 'dtypes.pt');
    const file = await TorchFileCheckpoint.open(path, { mapMoments: true });
    try {
      const dtypes = new Map(file.tensors.map((t) => [t.name, t.dtype]));
      assert.equal(dtypes.get('f8_e4m3fn'), 'F8_E4M3');
      assert.equal(dtypes.get('f8_e5m2'), 'F8_E5M2');
      assert.equal(dtypes.get('u64'), 'U64');
      assert.ok(!dtypes.has('u16_view'), 'a view into another tensor\'s bytes stays in the skeleton');
    } finally {
      await file.close();
    }
    assert.deepEqual(await restoreFile(await compressFile(path)), bytes(path));
  });

  it('an optimizer state_dict alone (fused, on cuda:0): moments coded exactly, nothing to pair', async () => {
    const path = join(TORCH2, 'zip', 'cuda-fused.pt');
    const report = await inspectContainer(await compressFile(path));
    assert.equal(report.paramMap, undefined);
    assert.ok(report.entries.some((e) => e.name.startsWith('__optimizer__/0/exp_avg') || e.name.includes('__optimizer__/0/exp_avg')));
    assert.deepEqual(await restoreFile(await compressFile(path)), bytes(path));
  });
});

describe('bad input keeps its guarantees', () => {
  it('an optimizer state that is not Adam is carried exactly, with one notice', async () => {
    // {'model': {'w': tensor(64)}, 'optimizer': {'state': {0: {'momentum_buffer': tensor(64)}}, 'param_groups': [{'params': [0], 'lr': 0.5}]}}
    const ascii = (text: string): number[] => [...Buffer.from(text, 'latin1')];
    const u32 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
    const text = (t: string): number[] => [0x58, ...u32(t.length), ...ascii(t)];
    const tensor = (key: string): number[] => [
      0x63, ...ascii('torch._utils\n_rebuild_tensor_v2\n'), 0x28,
      0x28, ...text('storage'), 0x63, ...ascii('torch\nFloatStorage\n'), ...text(key), ...text('cpu'), 0x4b, 64, 0x74, 0x51,
      0x4b, 0, 0x4b, 64, 0x85, 0x4b, 1, 0x85, 0x89, 0x63, ...ascii('collections\nOrderedDict\n'), 0x29, 0x52, 0x74, 0x52,
    ];
    const pkl = new Uint8Array([
      0x80, 2, 0x7d, 0x28,
      ...text('model'), 0x7d, 0x28, ...text('w'), ...tensor('0'), 0x75,
      ...text('optimizer'), 0x7d, 0x28,
      ...text('state'), 0x7d, 0x28, 0x4b, 0, 0x7d, 0x28, ...text('momentum_buffer'), ...tensor('1'), 0x75, 0x75,
      ...text('param_groups'), 0x5d, 0x28, 0x7d, 0x28, ...text('params'), 0x5d, 0x28, 0x4b, 0, 0x65, ...text('lr'), 0x47, 0x3f, 0xe0, 0, 0, 0, 0, 0, 0, 0x75, 0x65,
      0x75, 0x75, 0x2e,
    ]);
    const data = (seed: number): Uint8Array => new Uint8Array(new Float32Array(64).map((_, i) => Math.sin(i * seed)).buffer);
    const path = join(work, 'sgd.pt');
    writeFileSync(path, writeZip([
      { name: 'sgd/data.pkl', data: pkl }, { name: 'sgd/data/0', data: data(1) }, { name: 'sgd/data/1', data: data(2) },
      { name: 'sgd/version', data: new TextEncoder().encode('3\n') },
    ]));
    const notices: string[] = [];
    const container = await compressFile(path, { onNotice: (m) => notices.push(m) });
    assert.equal(notices.length, 1);
    assert.match(notices[0]!, /sgd\.pt: torch: optimizer state_dict at optimizer: state 0 holds momentum_buffer, no exp_avg\/exp_avg_sq tensors \(not Adam\/AdamW\): carried byte for byte/);
    assert.doesNotMatch(notices[0]!, /\n/);
    const report = await inspectContainer(container);
    assert.deepEqual(report.entries.map((e) => e.name).sort(), [TORCH_SKELETON, 'w'].sort());
    assert.deepEqual(await restoreFile(container), bytes(path));
  });

  it('a pickle outside the allow-list is refused before anything runs', async () => {
    const malicious = fileURLToPath(new URL('./fixtures/torch/malicious/optimizer.pt', import.meta.url));
    const marker = JSON.parse(readFileSync(fileURLToPath(new URL('./fixtures/torch/reference.json', import.meta.url)), 'utf8')).malicious_marker as string;
    rmSync(marker, { force: true });
    await assert.rejects(compressFile(malicious), (e: unknown) => e instanceof ExcpError && e.code === 'ERR_UNSAFE_PICKLE' && /not on the allow-list/.test(e.message));
    assert.equal(existsSync(marker), false);
  });

  it('fuzz: 400 seeded mutations of a nested loop file (pickle CRC fixed up, so the unpickler sees them) end in success or an ExcpError', async () => {
    const original = bytes(loop(STYLES.nested[0]));
    const dir = readZipDirectory(original.length, (o, l) => original.subarray(o, o + l));
    const pkl = dir.entries.find((e) => e.name.endsWith('/data.pkl'))!;
    const rand = uniform(77);
    const path = join(work, 'fuzz.pt');
    for (let round = 0; round < 400; round++) {
      const b = original.slice();
      const inPickle = round % 4 !== 0;
      for (let k = 0; k < 1 + Math.floor(rand() * 4); k++) {
        const at = inPickle ? pkl.dataOffset + Math.floor(rand() * pkl.size) : Math.floor(rand() * b.length);
        b[at] = Math.floor(rand() * 256);
      }
      if (inPickle) patchZipCrcs(new Map([[pkl, crc32(b.subarray(pkl.dataOffset, pkl.dataOffset + pkl.size))]]), (o, x) => b.set(x, o));
      writeFileSync(path, b);
      try {
        const file = await TorchFileCheckpoint.open(path, { mapMoments: true });
        await file.close();
      } catch (e) {
        assert.ok(e instanceof ExcpError, `round ${round}: ${(e as Error).stack}`);
      }
    }
  });

  it('a pipe cannot take a torch.save file (its CRCs are fixed after the data): a clear refusal', async () => {
    const container = readFileSync(await compressFile(loop(STYLES.plain[0])));
    await assert.rejects(restoreBuffer(new Uint8Array(container)), (e: unknown) => e instanceof ExcpError && e.code === 'ERR_USAGE' && /cannot be written to a pipe.*-o FILE/.test(e.message));
  });
});
