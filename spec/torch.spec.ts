/**
 * torch.save files: tensor tables with byte ranges, Adam state read against
 * the values PyTorch recorded, and the carry-through writer.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { crc32 } from '../lib/core/crc32.js';
import { ExcpError } from '../lib/core/errors.js';
import { writeZip } from './support/zip-writer.js';
import { type ReadAt, readZipDirectory } from '../lib/formats/torch/zip.js';
import { type TorchTensor, readOptimizerState, readTorchCheckpoint, rewriteTorchCheckpoint, writeTorchCheckpoint } from '../lib/formats/torch/serialization.js';
import { codeOf } from './helpers.js';

const FIXTURES = new URL('./fixtures/torch/', import.meta.url);
const load = (path: string): Uint8Array => new Uint8Array(readFileSync(new URL(path, FIXTURES)));
const reference = JSON.parse(readFileSync(new URL('reference.json', FIXTURES), 'utf8'));
const reader = (bytes: Uint8Array): ReadAt => (offset, length) => {
  assert.ok(offset >= 0 && offset + length <= bytes.length, `read ${offset}+${length} outside ${bytes.length}`);
  return bytes.subarray(offset, offset + length);
};

interface Summary { dtype: string; shape: number[]; sum: number; first: number[] }

/** Decode a tensor by streaming its byte range in small chunks, as a caller with a big file would. */
function values(t: TorchTensor, readAt: ReadAt, chunk = 100): Float64Array {
  const size = t.dtype === 'F32' ? 4 : 2;
  const out = new Float64Array(t.byteLength / size);
  let n = 0;
  for (let at = 0; at < t.byteLength; at += chunk) {
    const piece = readAt(t.byteOffset + at, Math.min(chunk, t.byteLength - at));
    const view = new DataView(piece.buffer, piece.byteOffset, piece.byteLength);
    for (let i = 0; i < piece.length; i += size) {
      if (t.dtype === 'F32') out[n++] = view.getFloat32(i, true);
      else out[n++] = new Float32Array(new Uint32Array([view.getUint16(i, true) << 16]).buffer)[0]!;
    }
  }
  return out;
}

function matches(t: TorchTensor, readAt: ReadAt, ref: Summary, what: string): void {
  assert.equal(t.dtype, ref.dtype, what);
  assert.deepEqual(t.shape, ref.shape, what);
  assert.ok(t.contiguous, what);
  const v = values(t, readAt);
  assert.deepEqual([...v.subarray(0, ref.first.length)], ref.first, what);
  const sum = v.reduce((s, x) => s + x, 0);
  assert.ok(Math.abs(sum - ref.sum) <= 1e-9 * Math.max(1, Math.abs(ref.sum)) + 1e-12, `${what}: sum ${sum} vs ${ref.sum}`);
}


for (const run of ['fp32', 'bf16']) {
  for (const ck of ['checkpoint-4', 'checkpoint-8']) {
    test(`readOptimizerState: ${run}/${ck} matches what PyTorch recorded`, () => {
      const bytes = load(`${run}/${ck}/optimizer.pt`);
      const readAt = reader(bytes);
      const opt = readOptimizerState(bytes.length, readAt);
      const ref = reference.runs[run].checkpoints[ck].optimizer;
      assert.equal(opt.checkpoint.archiveName, 'optimizer');
      assert.deepEqual([...opt.state.keys()], Object.keys(ref.state).map(Number));
      for (const [id, s] of opt.state) {
        const r = ref.state[String(id)];
        matches(s.expAvg, readAt, r.exp_avg, `state/${id}/exp_avg`);
        matches(s.expAvgSq, readAt, r.exp_avg_sq, `state/${id}/exp_avg_sq`);
        assert.equal(s.step, r.step);
        assert.equal(s.stepTensor?.dtype, r.step_dtype);
        assert.equal(s.maxExpAvgSq, null);
        assert.equal(s.expAvg.path, `state/${id}/exp_avg`);
        assert.equal(s.expAvg.entryName, `optimizer/data/${s.expAvg.storageKey}`);
      }
      assert.equal(opt.paramGroups.length, ref.param_groups.length);
      opt.paramGroups.forEach((g, i) => {
        const r = ref.param_groups[i];
        assert.deepEqual(g.params, r.params);
        assert.equal(g.weightDecay, r.weight_decay);
        for (const key of ['lr', 'eps', 'amsgrad', 'maximize', 'initial_lr']) assert.deepEqual(g.options.get(key), r[key], key);
        assert.deepEqual([...(g.options.get('betas') as number[])], r.betas);
      });
      // 49 params x (step, exp_avg, exp_avg_sq).
      assert.equal(opt.checkpoint.tensors.length, 147);
      assert.equal(opt.checkpoint.storages.size, 147);
    });
  }
}

test('readTorchCheckpoint: rng_state.pth lists its one tensor; the RNG tuple stays plain data', () => {
  const bytes = load('fp32/checkpoint-4/rng_state.pth');
  const cp = readTorchCheckpoint(bytes.length, reader(bytes));
  assert.equal(cp.archiveName, 'rng_state');
  assert.deepEqual(cp.tensors.map((t) => [t.path, t.dtype, t.shape, t.byteLength]), [['cpu', 'U8', [5056], 5056]]);
});

test('refusals: malicious pickle, training_args.bin, not Adam, bad CRC, missing or short storages', () => {
  for (const f of ['malicious/optimizer.pt', 'fp32/checkpoint-4/training_args.bin']) {
    const bytes = load(f);
    assert.equal(codeOf(() => readTorchCheckpoint(bytes.length, reader(bytes))), 'ERR_UNSAFE_PICKLE', f);
  }
  const sched = load('fp32/checkpoint-4/scheduler.pt');
  assert.equal(codeOf(() => readOptimizerState(sched.length, reader(sched))), 'ERR_BAD_PICKLE');
  const broken = load('fp32/checkpoint-4/optimizer.pt').slice();
  broken[100] = broken[100]! ^ 1; // inside data.pkl
  assert.equal(codeOf(() => readTorchCheckpoint(broken.length, reader(broken))), 'ERR_CRC');
});

const ascii = (text: string): number[] => [...Buffer.from(text, 'latin1')];

/** data.pkl of a lone float32 tensor `_rebuild_tensor_v2(storage '0' of numel, offset, shape, stride)`. */
function tensorPickle(numel: number, offset: number, shape: [number, number], stride: [number, number]): Uint8Array {
  return new Uint8Array([
    0x80, 2, 0x63, ...ascii('torch._utils\n_rebuild_tensor_v2\n'), 0x28, // GLOBAL, MARK (args)
    0x28, 0x58, 7, 0, 0, 0, ...ascii('storage'), 0x63, ...ascii('torch\nFloatStorage\n'), // MARK (pid) 'storage' FloatStorage
    0x58, 1, 0, 0, 0, ...ascii('0'), 0x58, 3, 0, 0, 0, ...ascii('cpu'), 0x4b, numel, 0x74, 0x51, // '0' 'cpu' numel TUPLE BINPERSID
    0x4b, offset, 0x4b, shape[0], 0x4b, shape[1], 0x86, 0x4b, stride[0], 0x4b, stride[1], 0x86, // offset, shape, stride
    0x89, 0x63, ...ascii('collections\nOrderedDict\n'), 0x29, 0x52, 0x74, 0x52, 0x2e, // False, OrderedDict(), TUPLE, REDUCE, STOP
  ]);
}

function archive(pkl: Uint8Array, storageBytes: number | null, extra: { name: string; data: Uint8Array }[] = []): Uint8Array {
  const entries = [{ name: 'arc/data.pkl', data: pkl }, ...extra];
  if (storageBytes !== null) entries.push({ name: 'arc/data/0', data: new Uint8Array(storageBytes) });
  entries.push({ name: 'arc/version', data: new TextEncoder().encode('3\n') });
  return writeZip(entries);
}

test('tensor table: offsets, contiguity and the checks against storage sizes', () => {
  const ok = archive(tensorPickle(6, 2, [2, 2], [2, 1]), 24);
  const cp = readTorchCheckpoint(ok.length, reader(ok));
  const t = cp.tensors[0]!;
  const entry = readZipDirectory(ok.length, reader(ok)).entries.find((e) => e.name === 'arc/data/0')!;
  assert.deepEqual([t.path, t.shape, t.stride, t.storageOffset, t.contiguous, t.byteLength], ['', [2, 2], [2, 1], 2, true, 16]);
  assert.equal(t.byteOffset, entry.dataOffset + 8);
  const transposed = archive(tensorPickle(4, 0, [2, 2], [1, 2]), 16);
  assert.equal(readTorchCheckpoint(transposed.length, reader(transposed)).tensors[0]!.contiguous, false);
  const cases: [Uint8Array, string][] = [
    [archive(tensorPickle(4, 0, [2, 2], [2, 1]), null), 'ERR_BAD_ZIP'], // no storage entry
    [archive(tensorPickle(4, 0, [2, 2], [2, 1]), 12), 'ERR_SHAPE'], // entry shorter than numel x 4
    [archive(tensorPickle(3, 0, [2, 2], [2, 1]), 12), 'ERR_SHAPE'], // view overruns the storage
    [archive(tensorPickle(4, 1, [2, 2], [2, 1]), 16), 'ERR_SHAPE'], // offset pushes it past the end
    [archive(tensorPickle(4, 0, [2, 2], [2, 1]), 16, [{ name: 'arc/byteorder', data: new TextEncoder().encode('big') }]), 'ERR_DTYPE'],
    [writeZip([{ name: 'flat.pkl', data: tensorPickle(4, 0, [2, 2], [2, 1]) }]), 'ERR_BAD_ZIP'], // no archive folder
  ];
  for (const [bytes, expected] of cases) assert.equal(codeOf(() => readTorchCheckpoint(bytes.length, reader(bytes))), expected);
  // One tensor object under two keys (as tied weights pickle): listed at both paths.
  const body = tensorPickle(4, 0, [2, 2], [2, 1]).subarray(2, -1);
  const shared = archive(new Uint8Array([0x80, 2, 0x7d, 0x28, 0x58, 1, 0, 0, 0, 0x61, ...body, 0x71, 99, 0x58, 1, 0, 0, 0, 0x62, 0x68, 99, 0x75, 0x2e]), 16);
  assert.deepEqual(readTorchCheckpoint(shared.length, reader(shared)).tensors.map((x) => [x.path, x.storageKey]), [['a', '0'], ['b', '0']]);
  // 100 nested lists: the tensor walk stops at maxDepth instead of recursing.
  const deep = new Uint8Array([0x80, 2, ...new Array(100).fill(0x5d), ...new Array(99).fill(0x61), 0x2e]);
  const deepZip = archive(deep, null);
  assert.equal(codeOf(() => readTorchCheckpoint(deepZip.length, reader(deepZip))), 'ERR_BAD_PICKLE');
  assert.equal(readTorchCheckpoint(deepZip.length, reader(deepZip), { maxDepth: 200 }).tensors.length, 0);
});

for (const run of ['fp32', 'bf16']) {
  test(`writeTorchCheckpoint: ${run} new moments round-trip, data.pkl and the rest carried byte-exactly`, () => {
    const bytes = load(`${run}/checkpoint-8/optimizer.pt`);
    const readAt = reader(bytes);
    const opt = readOptimizerState(bytes.length, readAt);
    const s3 = opt.state.get(3)!;
    // Negate every element of exp_avg of id 3: flip the sign bit of each element.
    const size = s3.expAvg.dtype === 'F32' ? 4 : 2;
    const fresh = bytes.slice(s3.expAvg.byteOffset, s3.expAvg.byteOffset + s3.expAvg.byteLength);
    for (let i = size - 1; i < fresh.length; i += size) fresh[i] = fresh[i]! ^ 0x80;
    const out = writeTorchCheckpoint(opt.checkpoint, readAt, new Map([[s3.expAvg.storageKey, fresh]]));
    assert.equal(out.length, bytes.length);
    const again = readOptimizerState(out.length, reader(out));
    const before = values(s3.expAvg, readAt);
    const after = values(again.state.get(3)!.expAvg, reader(out));
    assert.deepEqual([...after], [...before].map((x) => -x));
    for (const [id, s] of again.state) {
      if (id === 3) continue;
      assert.deepEqual([...values(s.expAvg, reader(out))], [...values(opt.state.get(id)!.expAvg, readAt)]);
    }
    // Each entry other than the replaced storage is byte-identical, and every CRC is right.
    const dirBefore = opt.checkpoint.directory;
    const dirAfter = again.checkpoint.directory;
    dirAfter.entries.forEach((e, i) => {
      const o = dirBefore.entries[i]!;
      assert.equal(e.name, o.name);
      assert.equal(e.dataOffset, o.dataOffset);
      const data = out.subarray(e.dataOffset, e.dataOffset + e.size);
      assert.equal(crc32(data), e.crc32, e.name);
      if (e.name !== s3.expAvg.entryName) assert.deepEqual(data, bytes.subarray(o.dataOffset, o.dataOffset + o.size), e.name);
    });
    // Streaming with chunk sources and small copy chunks gives the same file.
    const chunks = [...rewriteTorchCheckpoint(opt.checkpoint, readAt, new Map([[s3.expAvg.storageKey, () => [fresh.subarray(0, 7), fresh.subarray(7)]]]), { chunkBytes: 1000 })];
    assert.ok(Buffer.concat(chunks.map((c) => Buffer.from(c))).equals(Buffer.from(out)));
    assert.equal(codeOf(() => writeTorchCheckpoint(opt.checkpoint, readAt, new Map([['nope', fresh]]))), 'ERR_INVALID_ARG');
    assert.equal(codeOf(() => writeTorchCheckpoint(opt.checkpoint, readAt, new Map([[s3.expAvg.storageKey, fresh.subarray(2)]]))), 'ERR_SHAPE');
  });
}

test('fuzz: 1500 seeded mutations of optimizer.pt end in success or an ExcpError', () => {
  const original = load('bf16/checkpoint-4/optimizer.pt');
  let a = 4242;
  const rand = (): number => {
    a = (a * 1103515245 + 12345) % 2147483648;
    return a / 2147483648;
  };
  const dir = readZipDirectory(original.length, reader(original));
  const pkl = dir.entries[0]!;
  for (let round = 0; round < 1500; round++) {
    const bytes = original.slice();
    const edits = 1 + Math.floor(rand() * 3);
    for (let k = 0; k < edits; k++) {
      // Half the edits hit data.pkl with its CRC fixed up, so the unpickler and the tree checks see them.
      const inPickle = round % 2 === 0;
      const at = inPickle ? pkl.dataOffset + Math.floor(rand() * pkl.size) : Math.floor(rand() * bytes.length);
      bytes[at] = Math.floor(rand() * 256);
    }
    if (round % 2 === 0) {
      const crc = crc32(bytes.subarray(pkl.dataOffset, pkl.dataOffset + pkl.size));
      const view = new DataView(bytes.buffer);
      view.setUint32(pkl.dataOffset + pkl.size + 4, crc, true);
      view.setUint32(pkl.centralOffset + 16, crc, true);
    }
    try {
      readOptimizerState(bytes.length, (o, l) => bytes.subarray(o, o + l));
    } catch (err) {
      if (!(err instanceof ExcpError)) throw new Error(`round ${round}: ${String(err)}`);
    }
  }
});
