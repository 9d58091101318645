/**
 * PyTorch distributed checkpoints (DCP, issue 15): the `.metadata` reader
 * against the fixtures' reference, the key layouts (weights paired with their
 * moments), round trips that change nothing but tensor data and zip CRCs,
 * per-rank compression and restore, the no-silent-fallback notice, the
 * `distcp` file record, and hostile folders. No Python: the fixtures
 * (spec/fixtures/dcp) were made by torch 2.13; synthetic folders come from
 * spec/support/dcp-writer.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from '../lib/core/crc32.js';
import { DEFAULT_OPTIONS } from '../lib/core/options.js';
import { ExcpError } from '../lib/core/errors.js';
import { decodeHeader, encodeHead } from '../lib/container/format.js';
import { planHeader } from '../lib/model/plan.js';
import type { CompressOptions } from '../lib/api/compress.js';
import { restoreToFolder } from '../lib/api/restore.js';
import { compressRank, readRankSet, restoreRanks } from '../lib/api/ranks.js';
import { DcpCheckpoint } from '../lib/formats/dcp/checkpoint.js';
import { parseDcpMetadata } from '../lib/formats/dcp/metadata.js';
import { FILE_KINDS, openCheckpoint } from '../lib/formats/registry.js';
import { compressToPath, str } from './helpers.js';
import { diffRestoredDcp } from '../examples/dcp-diff.js';
import { metadataPickle, pickleNode, shardedModel, tensorItem, writeDcpFolder, distcpFiles } from './support/dcp-writer.js';

const FIXTURES = fileURLToPath(new URL('./fixtures/dcp/', import.meta.url));
const reference = JSON.parse(readFileSync(join(FIXTURES, 'reference.json'), 'utf8')) as { folders: Record<string, { layout: Record<string, unknown> }> };
const cli = join(fileURLToPath(new URL('..', import.meta.url)), 'dist', 'lib', 'cli.js');
const work = mkdtempSync(join(tmpdir(), 'excp-dcp-spec-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));
let counter = 0;
const fresh = (what: string): string => join(work, `${what}-${counter++}`);

async function compressFolder(input: string, options: CompressOptions = {}): Promise<string> {
  return compressToPath(input, `${fresh('c')}.excp`, options);
}

async function restoreFolder(container: string, base?: string): Promise<string> {
  const target = fresh('r');
  await restoreToFolder(container, target, { base, threads: 0 });
  return target;
}

async function codeOf(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'none';
  } catch (e) {
    assert.ok(e instanceof ExcpError, `expected ExcpError, got ${e instanceof Error ? e.stack : String(e)}`);
    assert.ok(!e.message.includes('\n'), `one line: ${e.message}`);
    return e.code;
  }
}

/**
 * The restored tree has the same files; every non-.distcp file is
 * byte-identical; a .distcp file differs only inside the data records of its
 * tensor items and in their CRC fields, and every zip CRC of every item
 * matches its data (examples/dcp-diff.ts). Lossless: everything byte-identical.
 * @returns the bytes changed
 */
async function assertRestored(original: string, restored: string, lossless: boolean): Promise<number> {
  const { problems, folders } = await diffRestoredDcp(original, restored);
  assert.deepEqual(problems, []);
  const changed = [...folders.values()].reduce((n, f) => n + f.changed, 0);
  if (lossless) assert.equal(changed, 0, 'every byte as it was');
  return changed;
}

const KINDS = [
  { kind: 'single', prev: 'single/step-4', cur: 'single/step-8', pairs: 8 },
  { kind: 'fsdp2', prev: 'fsdp2/step-4', cur: 'fsdp2/step-8', pairs: 16 },
  { kind: 'torchtitan', prev: 'torchtitan/step-4', cur: 'torchtitan/step-8', pairs: 8 },
  { kind: 'accelerate', prev: 'accelerate/checkpoint-4', cur: 'accelerate/checkpoint-8', pairs: 16 },
] as const;

test('.metadata: every fixture parses into the items, chunks and places that torch reported (reference.json)', () => {
  type RefItem = { kind: string; dtype?: string; size?: number[]; chunks?: [number[], number[], string, number, number][]; at?: [string, number, number] };
  const folders: [string, Record<string, unknown>][] = [];
  for (const k of KINDS) {
    const layout = reference.folders[k.prev]!.layout;
    if ('items' in layout) folders.push([k.prev, layout]);
    else for (const [sub, l] of Object.entries(layout)) folders.push([`${k.prev}/${sub}`, l as Record<string, unknown>]);
  }
  for (const [folder, layout] of folders) {
    const md = parseDcpMetadata(new Uint8Array(readFileSync(join(FIXTURES, folder, '.metadata'))));
    const items = layout['items'] as Record<string, RefItem>;
    assert.deepEqual([...md.items.keys()].sort(), Object.keys(items).sort(), folder);
    for (const [key, ref] of Object.entries(items)) {
      const item = md.items.get(key)!;
      const places = md.storage.filter((s) => s.key === key);
      if (ref.kind === 'bytes') {
        assert.equal(item.kind, 'bytes', key);
        assert.deepEqual(places.map((s) => [s.path, s.offset, s.length]), [ref.at], key);
        continue;
      }
      assert.ok(item.kind === 'tensor', key);
      assert.deepEqual([item.dtype, item.size], [ref.dtype, ref.size], key);
      const got = places.map((s) => [s.chunk!.offsets, s.chunk!.sizes, s.path, s.offset, s.length]).sort((x, y) => JSON.stringify(x) < JSON.stringify(y) ? -1 : 1);
      assert.deepEqual(got, [...ref.chunks!].sort((x, y) => JSON.stringify(x) < JSON.stringify(y) ? -1 : 1), key);
    }
  }
});

test('key layouts: every weight chunk is paired with its Adam moments (get_state_dict, FSDP2 shards, torchtitan, accelerate)', async () => {
  for (const k of KINDS) {
    const cp = await openCheckpoint(join(FIXTURES, k.cur), { role: 'current' });
    const header = planHeader(cp, null, DEFAULT_OPTIONS);
    await cp.close();
    const params = header.entries.filter((e) => e.kind === 'param');
    assert.equal(params.length, k.pairs, k.kind);
    for (const e of params) {
      const w = header.tensors[e.weight]!.name;
      assert.equal(header.tensors[e.expAvg!]!.name, `${w}.exp_avg`);
      assert.ok(!w.includes('.state.'), `${k.kind}: weight ${w}`);
    }
    assert.ok(header.files.some((f) => f.kind === 'distcp') && header.files.some((f) => f.kind === 'blob' && f.path!.endsWith('.metadata')));
  }
  // Current torchtitan: bare model FQNs, flattened optimizer keys; and a folder without planner_data.
  for (const variant of ['torchtitan-now', 'no-planner-data'] as const) {
    const m = shardedModel(2, 3, 6, 4, 2);
    for (const t of m.tensors) {
      if (variant === 'no-planner-data') delete t.path;
      else if (t.key.startsWith('model.')) [t.key, t.path] = [t.key.slice(6), [t.key.slice(6)]];
      else [t.key, t.path] = [t.key.replace('optim.', 'optimizer.'), ['optimizer', t.key.slice('optim.'.length)]];
    }
    const dir = fresh(variant);
    writeDcpFolder(dir, m);
    const cp = await openCheckpoint(dir, { role: 'current' });
    const header = planHeader(cp, null, DEFAULT_OPTIONS);
    await cp.close();
    assert.equal(header.entries.filter((e) => e.kind === 'param').length, 6, variant);
  }
  const fsdp = await DcpCheckpoint.open(join(FIXTURES, 'fsdp2/step-8'));
  const names = fsdp.tensors.map((t) => t.name);
  await fsdp.close();
  // Uneven FSDP2 shards of the 33-row embedding: rows 0-16 on rank 0, 17-32 on rank 1.
  for (const n of ['model.tok_embeddings.weight@0,0', 'model.tok_embeddings.weight@17,0.exp_avg_sq', 'optim.state.output.weight.step', '__file__/__1_0.distcp']) assert.ok(names.includes(n), n);
});

for (const k of KINDS) {
  test(`${k.kind}: a residual restores every byte but tensor data and CRCs${k.kind === 'fsdp2' || k.kind === 'torchtitan' ? '; --lossless restores every byte' : ''}`, async () => {
    const prev = join(FIXTURES, k.prev);
    const cur = join(FIXTURES, k.cur);
    const lossy = await restoreFolder(await compressFolder(cur, { base: prev }), prev);
    assert.ok(await assertRestored(cur, lossy, false) > 0, 'the moments were coded lossily');
    if (k.kind === 'single' || k.kind === 'accelerate') return; // lossless is the same code path for every layout
    const exact = await restoreFolder(await compressFolder(cur, { base: prev, lossless: true }), prev);
    await assertRestored(cur, exact, true);
  });
}

test('a tensor item whose data does not match its zip CRC is refused as corrupt (not restored with a repaired CRC)', async () => {
  const dir = fresh('corrupt');
  const model = shardedModel(2, 2, 5, 3, 4);
  writeDcpFolder(dir, model, (_storage, files) => {
    const data = model.tensors[0]!.chunks[1]!.data;
    const file = files.get('__1_0.distcp')!;
    const at = Buffer.from(file).indexOf(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
    assert.ok(at > 0);
    file[at + 5] = file[at + 5]! ^ 1; // one bit of the tensor's data record
  });
  assert.equal(await codeOf(compressFolder(dir)), 'ERR_CRC');
});

test('per rank: each rank compresses its files; restore of all ranks or of one rank, with and without ranks.json', async () => {
  const out = fresh('ranks');
  const step4 = join(FIXTURES, 'fsdp2/step-4');
  const step8 = join(FIXTURES, 'fsdp2/step-8');
  for (const rank of [1, 0]) await compressRank(step4, join(out, 'step-4'), { rank, threads: 0 });
  assert.deepEqual(readdirSync(join(out, 'step-4')).sort(), ['rank-0.excp', 'rank-1.excp', 'ranks.json']);
  const manifest = JSON.parse(readFileSync(join(out, 'step-4', 'ranks.json'), 'utf8'));
  assert.deepEqual([manifest.excp, manifest.version, manifest.ranks], ['dcp-ranks', 1, [0, 1]]);
  // Restore each rank into one folder (as ranks do side by side), then compress step 8 per rank against it.
  const restored4 = join(out, 'restored-4');
  for (const rank of [1, 0]) await restoreRanks(join(out, 'step-4'), restored4, { rank, threads: 0 });
  assert.deepEqual(readdirSync(restored4).sort(), ['.metadata', '__0_0.distcp', '__1_0.distcp']);
  await assertRestored(step4, restored4, false);
  for (const rank of [0, 1]) await compressRank(step8, join(out, 'step-8'), { rank, base: restored4, threads: 0 });
  const all = join(out, 'restored-8');
  await restoreRanks(join(out, 'step-8'), all, { base: restored4, threads: 0 });
  await assertRestored(step8, all, false);
  // Rank 1 alone, against a base folder that holds only rank 1's files: the same bytes.
  const only1 = join(out, 'base-rank-1');
  await restoreRanks(join(out, 'step-4'), only1, { rank: 1, threads: 0 });
  assert.deepEqual(readdirSync(only1).sort(), ['.metadata', '__1_0.distcp']);
  const one = join(out, 'restored-8-rank-1');
  await restoreRanks(join(out, 'step-8'), one, { rank: 1, base: only1, threads: 0 });
  assert.ok(readFileSync(join(one, '__1_0.distcp')).equals(readFileSync(join(all, '__1_0.distcp'))));
  // Restoring rank 1 again into the same folder: its file exists.
  assert.equal(await codeOf(restoreRanks(join(out, 'step-8'), one, { rank: 1, base: only1, threads: 0 })), 'ERR_EXISTS');
  // Without ranks.json the containers' headers are merged; a missing rank or another step's container is refused.
  rmSync(join(out, 'step-8', 'ranks.json'));
  assert.deepEqual((await readRankSet(join(out, 'step-8'))).ranks, [0, 1]);
  cpSync(join(out, 'step-4', 'rank-1.excp'), join(out, 'step-8', 'rank-1.excp'));
  assert.equal(await codeOf(readRankSet(join(out, 'step-8'))), 'ERR_BAD_HEADER');
  rmSync(join(out, 'step-8', 'rank-1.excp'));
  assert.equal(await codeOf(readRankSet(join(out, 'step-8'))), 'ERR_IO');
  // A rank container restores on its own (its rank read from its header); --rank must agree with the container.
  const alone = fresh('alone');
  await restoreToFolder(join(out, 'step-4', 'rank-1.excp'), alone, { threads: 0 });
  assert.deepEqual(readdirSync(alone).sort(), ['.metadata', '__1_0.distcp']);
  assert.equal(await codeOf(restoreToFolder(join(out, 'step-4', 'rank-1.excp'), fresh('x'), { rank: 0, threads: 0 })), 'ERR_USAGE');
  // --rank of a rank that wrote nothing, and of a folder that is not DCP.
  assert.equal(await codeOf(compressRank(step8, fresh('x'), { rank: 5, threads: 0 })), 'ERR_INVALID_ARG');
  assert.equal(await codeOf(openCheckpoint(fileURLToPath(new URL('./fixtures/torch/fp32/checkpoint-8', import.meta.url)), { role: 'current', rank: 0 })), 'ERR_USAGE');
});

test('a chain of DCP folders: links checked across the rewritten CRCs, any step restores', () => {
  const chain = fresh('chain');
  const run = (...args: string[]) => spawnSync(process.execPath, [cli, ...args]);
  const made = run('chain', chain, join(FIXTURES, 'fsdp2/step-4'), join(FIXTURES, 'fsdp2/step-8'));
  assert.equal(made.status, 0, made.stderr.toString());
  const out = fresh('chain-out');
  const restored = run('chain', 'restore', chain, '--step', '1', '-o', out);
  assert.equal(restored.status, 0, restored.stderr.toString());
  assert.deepEqual(readdirSync(out).sort(), ['.metadata', '__0_0.distcp', '__1_0.distcp']);
});

test('no silent fallback: a folder without usable Adam state is coded exactly, with one notice saying what was found', async () => {
  const notices = async (input: string, options: CompressOptions = {}): Promise<string[]> => {
    const got: string[] = [];
    await compressFolder(input, { ...options, onNotice: (m) => got.push(m) });
    return got;
  };
  const acc = join(FIXTURES, 'accelerate/checkpoint-8');
  assert.deepEqual(await notices(acc), []);
  assert.deepEqual(await notices(join(FIXTURES, 'fsdp2/step-8')), []);
  const [optim] = await notices(join(acc, 'optimizer_0'));
  assert.match(optim!, /optimizer_0: the method was not applied, every tensor is coded exactly: found 32 Adam moment tensor\(s\).*pytorch_model_fsdp_0/);
  assert.match((await notices(join(acc, 'pytorch_model_fsdp_0')))[0]!, /no optimizer state \(weights only/);
  assert.deepEqual(await notices(join(acc, 'optimizer_0'), { lossless: true }), [], '--lossless asked for exact coding');
  // DeepSpeed ZeRO: flat fp32 partitions beside the Trainer's weights.
  const ds = fresh('deepspeed');
  mkdirSync(join(ds, 'global_step10'), { recursive: true });
  cpSync(fileURLToPath(new URL('./fixtures/torch/fp32/checkpoint-8/model.safetensors', import.meta.url)), join(ds, 'model.safetensors'));
  for (const r of [0, 1]) writeFileSync(join(ds, 'global_step10', `bf16_zero_pp_rank_${r}_mp_rank_00_optim_states.pt`), new Uint8Array(4096).fill(r));
  writeFileSync(join(ds, 'global_step10', 'mp_rank_00_model_states.pt'), new Uint8Array(100));
  writeFileSync(join(ds, 'latest'), 'global_step10');
  const [zero, ...rest] = await notices(ds);
  assert.equal(rest.length, 0);
  assert.match(zero!, /found a DeepSpeed ZeRO checkpoint \(global_step10\/: 2 optimizer partition file\(s\)/);
  // A training loop's own torch.save files are carried as bytes, and the notice says so.
  const loop = fresh('loop');
  mkdirSync(loop);
  cpSync(join(ds, 'model.safetensors'), join(loop, 'model.safetensors'));
  writeFileSync(join(loop, 'step-8.pt'), new Uint8Array(64));
  assert.match((await notices(loop))[0]!, /found 1 torch\.save file\(s\) \(step-8\.pt\) carried as bytes/);
  // The command line prints it as one line on stderr and still writes the container.
  const r = spawnSync(process.execPath, [cli, 'compress', ds, '-o', join(ds, '..', 'ds.excp')]);
  assert.equal(r.status, 0, r.stderr.toString());
  assert.equal(r.stderr.toString().split('\n').filter((l) => l.startsWith('excp: notice: ')).length, 1);
  assert.ok(existsSync(join(ds, '..', 'ds.excp')));
});

test('file kind distcp: the record byte by byte (spec/FORMAT.md, "Header body")', () => {
  const header = (layout: string): Uint8Array => {
    const body = [
      0, ...str('excp test'), 1, ...str('{"lossless":true}'),
      1, // one file
      3, ...str('__0_0.distcp'), 2, 0, 0, ...str(layout), // kind 3: path, tensors [0, 1] (count, zigzag deltas), layout JSON
      2, // two tensors
      0, ...str('__file__/__0_0.distcp'), 0, ...str('w'), // names
      11 | (3 << 4), 1 | (3 << 4), // U8 plain, F32 plain
      1, 84, 1, 4, // shapes [84], [4]
      2, 2, 0, 2, 0, // two plain exact entries
      0, // no info
    ];
    const bytes = Uint8Array.from([...body, 0, 0, 0, 0]);
    new DataView(bytes.buffer).setUint32(body.length, crc32(bytes.subarray(0, body.length)), true);
    return bytes;
  };
  const h = decodeHeader(header('{"size":100,"items":[[10,50]],"offsets":[20]}'), FILE_KINDS);
  assert.deepEqual(h.files, [{ kind: 'distcp', path: '__0_0.distcp', tensors: [0, 1], layout: { size: 100, items: [[10, 50]], offsets: [20] } }]);
  assert.deepEqual(decodeHeader(encodeHead(h, FILE_KINDS).subarray(16), FILE_KINDS), h);
  // A cut tensor outside every item, a skeleton of the wrong size, items out of order are refused.
  for (const bad of ['{"size":100,"items":[[30,50]],"offsets":[20]}', '{"size":101,"items":[[10,50]],"offsets":[20]}', '{"size":100,"items":[[10,12]],"offsets":[20]}',
    '{"size":100,"items":[[10,50],[0,5]],"offsets":[20]}', '{"size":100,"items":[[10,95]],"offsets":[20]}', '{"size":100,"offsets":[20]}']) {
    assert.throws(() => decodeHeader(header(bad), FILE_KINDS), (e: ExcpError) => e.code === 'ERR_BAD_HEADER', bad);
  }
});

test('synthetic DCP folders: a 3-rank sharded model round trips, and the base pairs chunk by chunk', async () => {
  const a = fresh('syn');
  const b = fresh('syn');
  writeDcpFolder(a, shardedModel(3, 4, 10, 6, 1));
  writeDcpFolder(b, shardedModel(3, 4, 10, 6, 1, 0.01));
  const c = await compressFolder(b, { base: a });
  const r = await restoreFolder(c, a);
  await assertRestored(b, r, false);
  const cp = await DcpCheckpoint.open(b, { rank: 2 });
  assert.deepEqual(cp.files.map((f) => f.path), ['.metadata', '__2_0.distcp']);
  assert.deepEqual(cp.info, { dcp: { rank: 2, ranks: [0, 1, 2], metadata: (cp.info!['dcp'] as { metadata: string }).metadata } });
  await cp.close();
});

test('hostile folders: one-line errors, nothing written', async () => {
  const model = (): ReturnType<typeof shardedModel> => shardedModel(2, 2, 5, 3, 3);
  const cases: [string, string, (dir: string) => void][] = [
    ['a global outside the allow-list', 'ERR_UNSAFE_PICKLE', (dir) => {
      writeDcpFolder(dir, model());
      writeFileSync(join(dir, '.metadata'), pickleNode({ object: 'torch.distributed.checkpoint.metadata.Metadata', state: { dict: [['storage_meta', { reduce: 'os.system', args: ['touch pwned'] }]] } }));
    }],
    ['os.system as the whole pickle', 'ERR_UNSAFE_PICKLE', (dir) => {
      writeDcpFolder(dir, model());
      writeFileSync(join(dir, '.metadata'), Uint8Array.from([0x80, 4, 0x8c, 2, ...Buffer.from('os'), 0x8c, 6, ...Buffer.from('system'), 0x93, 0x2e]));
    }],
    ['an item past the end of its file', 'ERR_TRUNCATED', (dir) => writeDcpFolder(dir, model(), (storage) => { storage[storage.length - 1]!.length += 10; })],
    ['an offset past the end of the file', 'ERR_TRUNCATED', (dir) => writeDcpFolder(dir, model(), (storage) => { storage[0]!.offset = 2 ** 40; })],
    ['overlapping items', 'ERR_SHAPE', (dir) => writeDcpFolder(dir, model(), (storage) => { storage[2]!.offset -= 8; })],
    ['chunks that leave a gap', 'ERR_SHAPE', (dir) => {
      const m = model();
      m.tensors[0]!.chunks[1]!.offsets = [4, 0]; // rows 3..4 and 4..5: row 3 twice, no row... sizes no longer tile
      writeDcpFolder(dir, m);
    }],
    ['chunks past the tensor', 'ERR_SHAPE', (dir) => {
      const m = model();
      m.tensors[0]!.size = [4, 3];
      writeDcpFolder(dir, m);
    }],
    ['overlapping chunks of the right total', 'ERR_SHAPE', (dir) => {
      const m = model();
      const [c0, c1] = m.tensors[0]!.chunks;
      m.tensors[0]!.size = [5, 6];
      c0!.sizes = [3, 3];
      c1!.offsets = [1, 0];
      c1!.sizes = [2, 6];
      c1!.data = new Float32Array(12);
      writeDcpFolder(dir, m);
    }],
    ['a storage record for a key not listed', 'ERR_BAD_HEADER', (dir) => writeDcpFolder(dir, model(), (storage) => { storage[0]!.key = 'model.nope'; })],
    ['a storage transform (a zstd extension)', 'ERR_INVALID_ARG', (dir) => {
      const m = model();
      const { files, storage } = distcpFiles(m);
      mkdirSync(dir, { recursive: true });
      for (const [n, bytes] of files) writeFileSync(join(dir, n), bytes);
      writeFileSync(join(dir, '.metadata'), metadataPickle(m, storage, [['transform_descriptors', ['zstd']]]));
    }],
    ['a tensor item of another dtype than .metadata says', 'ERR_DTYPE', (dir) => {
      const m = model();
      m.tensors[0]!.dtype = 'bfloat16';
      writeDcpFolder(dir, m);
    }],
    ['a tensor item of another shape', 'ERR_SHAPE', (dir) => writeDcpFolder(dir, model(), (storage, files) => {
      const s = storage.find((x) => x.offsets !== null)!;
      const item = tensorItem(new Float32Array(3), [1, 3]);
      const file = files.get(s.file)!;
      const out = new Uint8Array(file.length - s.length + item.length);
      out.set(file.subarray(0, s.offset));
      out.set(item, s.offset);
      out.set(file.subarray(s.offset + s.length), s.offset + item.length);
      files.set(s.file, out);
      for (const x of storage) if (x.file === s.file && x.offset > s.offset) x.offset += item.length - s.length;
      s.length = item.length;
    })],
    ['an item that is not a zip', 'ERR_BAD_ZIP', (dir) => writeDcpFolder(dir, model(), (storage, files) => {
      const s = storage.find((x) => x.offsets !== null)!;
      files.get(s.file)!.fill(0x41, s.offset, s.offset + s.length);
    })],
    ['a truncated .metadata', 'ERR_TRUNCATED', (dir) => {
      writeDcpFolder(dir, model());
      const md = readFileSync(join(dir, '.metadata'));
      writeFileSync(join(dir, '.metadata'), md.subarray(0, md.length >> 1));
    }],
    ['a .distcp file listed but missing', 'ERR_IO', (dir) => {
      writeDcpFolder(dir, model());
      rmSync(join(dir, '__1_0.distcp'));
    }],
  ];
  for (const [what, code, make] of cases) {
    const dir = fresh('hostile');
    make(dir);
    assert.equal(await codeOf(DcpCheckpoint.open(dir)), code, what);
  }
  // The command line: one line on stderr, exit 1, no container and no temporary file left.
  const dir = fresh('hostile-cli');
  cases[0]![2](dir);
  const out = fresh('out');
  mkdirSync(out);
  const r = spawnSync(process.execPath, [cli, 'compress', dir, '-o', join(out, 'x.excp')]);
  assert.equal(r.status, 1);
  assert.match(r.stderr.toString(), /^excp: .*global "os\.system" .* is not on the allow-list; refusing to load \(nothing was executed\)\n$/);
  assert.deepEqual(readdirSync(out), []);
  const ranked = spawnSync(process.execPath, [cli, 'compress', dir, '--rank', '1', '-o', join(out, 'step')]);
  assert.equal(ranked.status, 1);
  assert.deepEqual(readdirSync(join(out, 'step')), []);
});
