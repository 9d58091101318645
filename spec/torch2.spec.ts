/**
 * torch 2.x zip and pickle details, each on a file torch 2.13 wrote
 * (spec/fixtures/torch2/zip, zip64, trainer): storage alignment, zip64
 * extras and 24-byte descriptors, CRC 0, the 2.x records, protocol 4,
 * `_rebuild_tensor_v3` over untyped storages (float8, uint16-64), cuda:0
 * locations, FQN-keyed state and `param_names`, `nn.Parameter`, views,
 * numpy 2's `numpy._core` in rng_state.pth.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { crc32 } from '../lib/core/crc32.js';
import { type ReadAt, readZipDirectory } from '../lib/formats/torch/zip.js';
import { crcFields, patchZipCrcs } from '../lib/formats/torch/zip-rewrite.js';
import { unpickle } from '../lib/formats/torch/pickle.js';
import { type TorchTensor, readOptimizerState, readTorchCheckpoint } from '../lib/formats/torch/serialization.js';

const ZIP = new URL('./fixtures/torch2/zip/', import.meta.url);
const load = (url: URL): Uint8Array => new Uint8Array(readFileSync(url));
const reader = (bytes: Uint8Array): ReadAt => (offset, length) => bytes.subarray(offset, offset + length);
const reference = JSON.parse(readFileSync(new URL('reference.json', ZIP), 'utf8'));
const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');

function open(name: string): { bytes: Uint8Array; readAt: ReadAt; tensors: Map<string, TorchTensor> } {
  const bytes = load(new URL(name, ZIP));
  const readAt = reader(bytes);
  const checkpoint = readTorchCheckpoint(bytes.length, readAt);
  return { bytes, readAt, tensors: new Map(checkpoint.tensors.map((t) => [t.keys.join('.'), t])) };
}

test('records: data.pkl, .format_version, .storage_alignment, byteorder, data/N, version, .data/serialization_id; data at the configured alignment', () => {
  for (const [file, alignment] of [['align-256.pt', 256], ['crc0.pt', 64], ['protocol4.pt', 64]] as const) {
    const bytes = load(new URL(file, ZIP));
    const dir = readZipDirectory(bytes.length, reader(bytes));
    const archive = file.replace('.pt', '');
    assert.deepEqual(dir.entries.map((e) => e.name), reference.files[file].records, file);
    const text = (name: string): string => {
      const e = dir.entries.find((x) => x.name === `${archive}/${name}`)!;
      return new TextDecoder().decode(bytes.subarray(e.dataOffset, e.dataOffset + e.size));
    };
    assert.equal(text('.storage_alignment'), String(alignment));
    assert.equal(text('.format_version'), '1');
    assert.equal(text('byteorder'), 'little');
    assert.match(text('.data/serialization_id'), /^\d{40}$/);
    for (const e of dir.entries) assert.equal(e.dataOffset % alignment, 0, `${file} ${e.name}`);
    assert.ok(dir.entries.every((e) => e.descriptorLength === 16));
  }
  // Same state in all three: the tensors read the same.
  const a = open('align-256.pt');
  const b = open('protocol4.pt');
  assert.equal(a.tensors.size, 20);
  for (const [path, t] of a.tensors) {
    const u = b.tensors.get(path)!;
    assert.deepEqual(a.readAt(t.byteOffset, t.byteLength), b.readAt(u.byteOffset, u.byteLength), path);
  }
  const first = new Float32Array(a.readAt(a.tensors.get('model.embed.weight')!.byteOffset, 16).slice().buffer);
  assert.deepEqual([...first], reference.small['model.embed.weight'].first.map(Math.fround));
});

test('CRC 0 (set_crc32_options(False)): read without a CRC check; patching writes only the CRC fields', () => {
  const { bytes, readAt, tensors } = open('crc0.pt');
  const dir = readZipDirectory(bytes.length, readAt);
  assert.ok(dir.entries.every((e) => e.crc32 === 0));
  assert.equal(tensors.size, 20);
  // A CRC patch touches the central header and the descriptor, 4 bytes each.
  const copy = bytes.slice();
  const entry = dir.entries.find((e) => e.name === 'crc0/data/0')!;
  const crc = crc32(bytes.subarray(entry.dataOffset, entry.dataOffset + entry.size));
  patchZipCrcs(new Map([[entry, crc]]), (offset, b) => copy.set(b, offset));
  const changed = [...copy.keys()].filter((i) => copy[i] !== bytes[i]);
  const { descriptor, central } = crcFields(entry);
  assert.ok(changed.every((i) => (i >= descriptor! && i < descriptor! + 4) || (i >= central && i < central + 4)));
  assert.equal(readZipDirectory(copy.length, reader(copy)).entries.find((e) => e.name === 'crc0/data/0')!.crc32, crc);
});

test('zip64: the 4 GiB file from head and tail; the 8-byte local zip64 field of later records is an offset, not a size', () => {
  const info = JSON.parse(readFileSync(new URL('./fixtures/torch2/zip64/info.json', import.meta.url), 'utf8'));
  const head = load(new URL('./fixtures/torch2/zip64/head.bin', import.meta.url));
  const tail = load(new URL('./fixtures/torch2/zip64/tail.bin', import.meta.url));
  const size: number = info.file_bytes;
  assert.equal(head.length + info.zero_bytes + tail.length, size);
  const readAt: ReadAt = (offset, length) => {
    const out = new Uint8Array(length);
    const put = (piece: Uint8Array, at: number): void => {
      const from = Math.max(at, offset);
      const to = Math.min(at + piece.length, offset + length);
      if (from < to) out.set(piece.subarray(from - at, to - at), from - offset);
    };
    put(head, 0);
    put(tail, size - tail.length);
    return out;
  };
  const dir = readZipDirectory(size, readAt);
  assert.deepEqual(dir.entries.map((e) => [e.name.slice(6), e.headerOffset, e.size, e.descriptorLength]), [
    ['data.pkl', 0, 232, 16], ['.format_version', 312, 1, 16], ['.storage_alignment', 401, 2, 16], ['byteorder', 530, 6, 16],
    ['data/0', 662, 4294967360, 24], ['data/1', 4294968152, 16, 24], ['version', 4294968296, 2, 24], ['.data/serialization_id', 4294968410, 40, 24],
  ]);
  const checkpoint = readTorchCheckpoint(size, readAt);
  const small = checkpoint.tensors.find((t) => t.path === 'small')!;
  assert.equal(small.byteOffset, 4294968256);
  assert.deepEqual([...new Float32Array(readAt(small.byteOffset, 16).slice().buffer)], info.tensors.small.first);
  assert.deepEqual(checkpoint.tensors.find((t) => t.path === 'big')!.shape, info.tensors.big.shape);
});

test('_rebuild_tensor_v3 over UntypedStorage (numel in bytes): float8 and uint16-64 read with their dtypes, bytes exact', () => {
  const { readAt, tensors } = open('dtypes.pt');
  const ref = reference.files['dtypes.pt'];
  assert.deepEqual([...tensors.keys()].sort(), Object.keys(ref.tensors).sort());
  for (const [name, t] of tensors) {
    assert.equal(t.dtype, ref.tensors[name].dtype, name);
    assert.deepEqual(t.shape, ref.tensors[name].shape, name);
    if (ref.raw_bytes_hex[name]) assert.equal(hex(readAt(t.byteOffset, t.byteLength)), ref.raw_bytes_hex[name], name);
  }
  const view = tensors.get('u16_view')!;
  assert.equal(view.storageOffset, 2);
  assert.equal(view.storageKey, tensors.get('u16')!.storageKey);
  assert.equal(view.byteOffset, tensors.get('u16')!.byteOffset + 4);
});

test('optimizer states: fused and foreach on cuda:0 (0-dim step), FQN-keyed state, param_names', () => {
  for (const file of ['cuda-fused.pt', 'cuda-foreach.pt', 'fqn-state.pt', 'param-names.pt']) {
    const bytes = load(new URL(file, ZIP));
    const opt = readOptimizerState(bytes.length, reader(bytes));
    assert.deepEqual([...opt.state.keys()], [0, 1, 2, 3, 4], file);
    for (const s of opt.state.values()) {
      assert.equal(s.step, 2, file);
      assert.deepEqual(s.stepTensor!.shape, [], file);
    }
    assert.deepEqual(opt.state.get(0)!.expAvg.shape, [32, 4]);
    const locations = new Set([...opt.checkpoint.storages.values()].map((s) => s.location));
    assert.deepEqual([...locations].sort(), file === 'cuda-fused.pt' ? ['cuda:0'] : file === 'cuda-foreach.pt' ? ['cpu', 'cuda:0'] : ['cpu'], file);
    const names = ['embed.weight', 'norm.weight', 'norm.bias', 'head.weight', 'head.bias'];
    if (file === 'fqn-state.pt') assert.deepEqual(opt.names, { byId: new Map(names.map((n, i) => [i, n])), source: 'fqn' });
    else if (file === 'param-names.pt') assert.deepEqual(opt.names, { byId: new Map(names.map((n, i) => [i, n])), source: 'param-names' });
    else assert.equal(opt.names, null);
  }
});

test('nn.Parameter (_rebuild_parameter) and five views of one storage', () => {
  const p = open('parameter.pt');
  assert.deepEqual([...p.tensors.keys()].sort(), Object.keys(reference.files['parameter.pt'].tensors).sort());
  assert.ok([...p.tensors.values()].every((t) => t.contiguous));
  const v = open('views.pt');
  const views = reference.files['views.pt'].views as Record<string, { storage_offset: number; stride: number[] }>;
  for (const [name, want] of Object.entries(views)) {
    const t = v.tensors.get(name)!;
    assert.equal(t.storageOffset, want.storage_offset, name);
    assert.deepEqual(t.stride, want.stride, name);
    assert.equal(t.contiguous, name !== 'tail_t' && name !== 'strided', name);
  }
  assert.equal(new Set([...v.tensors.values()].map((t) => t.storageKey)).size, 1);
});

test("rng_state.pth of a Trainer checkpoint: numpy 2's numpy._core.multiarray._reconstruct, read as inert data", () => {
  const bytes = load(new URL('./fixtures/torch2/trainer/llama-bf16/checkpoint-4/rng_state.pth', import.meta.url));
  const dir = readZipDirectory(bytes.length, reader(bytes));
  const pkl = dir.entries.find((e) => e.name.endsWith('/data.pkl'))!;
  assert.match(new TextDecoder('latin1').decode(bytes.subarray(pkl.dataOffset, pkl.dataOffset + pkl.size)), /numpy\._core\.multiarray/);
  const tree = unpickle(bytes.subarray(pkl.dataOffset, pkl.dataOffset + pkl.size)) as Map<string, unknown>;
  const np = tree.get('numpy') as unknown[];
  assert.equal(np[0], 'MT19937');
  assert.deepEqual({ ...(np[1] as object), data: null }, { kind: 'ndarray', dtype: '<u4', shape: [624], data: null });
  assert.equal((np[1] as { data: Uint8Array }).data.length, 624 * 4);
});
