/**
 * PyTorch / Hugging Face checkpoint folders through compress and restore
 * (issue 7), on the committed fixture folders (spec/fixtures/torch): fp32
 * (one model.safetensors, F32 moments), bf16 (two shards, BF16 moments) and
 * bin (weights in pytorch_model.bin, head tied to the embedding).
 */
import { describe, it, test } from 'node:test';
import { FILE_KINDS } from '../lib/formats/registry.js';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { validateHeader } from '../lib/container/validate.js';
import { decodeHeader, encodeHead, type ContainerHeader } from '../lib/container/format.js';
import { crc32 } from '../lib/core/crc32.js';
import { roundToBf16, toFloat32, type DType } from '../lib/core/dtype.js';
import { ExcpError } from '../lib/core/errors.js';
import { FolderCheckpoint } from '../lib/formats/folder.js';
import { resolveOptions } from '../lib/core/options.js';
import { parseSafetensors } from '../lib/formats/safetensors.js';
import { readOptimizerState, readTorchCheckpoint, type OptimizerState } from '../lib/formats/torch/serialization.js';
import { readZipDirectory } from '../lib/formats/torch/zip.js';
import { writeZip } from './support/zip-writer.js';
import { compressToPath, uniform } from './helpers.js';
import { type CompressOptions, planFor } from '../lib/api/compress.js';
import { restoreToFolder } from '../lib/api/restore.js';

const FIXTURES = fileURLToPath(new URL('./fixtures/torch/', import.meta.url));
const reference = JSON.parse(readFileSync(join(FIXTURES, 'reference.json'), 'utf8'));
const work = mkdtempSync(join(tmpdir(), 'excp-folder-spec-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));
let counter = 0;

async function compressFolder(input: string, options: CompressOptions): Promise<string> {
  return compressToPath(input, join(work, `c${counter++}.excp`), options);
}

async function restoreFolder(container: string, base?: string): Promise<string> {
  const target = join(work, `r${counter++}`);
  await restoreToFolder(container, target, { base, threads: 0 });
  return target;
}

function bytesOf(dir: string, file: string): Uint8Array {
  return new Uint8Array(readFileSync(join(dir, file)));
}

function optimizer(dir: string): { bytes: Uint8Array; state: OptimizerState } {
  const bytes = bytesOf(dir, 'optimizer.pt');
  return { bytes, state: readOptimizerState(bytes.length, (o, l) => bytes.subarray(o, o + l)) };
}

function floatsAt(bytes: Uint8Array, offset: number, length: number, dtype: DType): Float32Array {
  return toFloat32(bytes.slice(offset, offset + length), dtype);
}

function maxAbs(a: Float32Array): number {
  return a.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
}

/** Every tensor of the folder's *.safetensors files, as float32. */
function modelTensors(dir: string): Map<string, Float32Array> {
  const out = new Map<string, Float32Array>();
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.safetensors'))) {
    for (const t of parseSafetensors(bytesOf(dir, f)).tensors) out.set(t.name, toFloat32(t.data, t.dtype));
  }
  return out;
}

/** Each zip entry's data matches the CRC its central directory records. */
function assertZipCrcs(bytes: Uint8Array): void {
  const dir = readZipDirectory(bytes.length, (o, l) => bytes.subarray(o, o + l));
  for (const e of dir.entries) assert.equal(crc32(bytes.subarray(e.dataOffset, e.dataOffset + e.size)), e.crc32, e.name);
}

const OPAQUE = ['rng_state.pth', 'scheduler.pt', 'trainer_state.json', 'training_args.bin'];

/**
 * A restored weight's error against the update it was coded from: the rms
 * error at most 1.5 times the rms update (the default dithered coding gives
 * about 0.72 times), plus bf16's rounding of the weight where it is bf16.
 */
function assertUpdateError(name: string, w: Float32Array, base: Float32Array, restored: Float32Array): void {
  const rms = (f: (i: number) => number): number => Math.sqrt(w.reduce((s, _, i) => s + f(i) ** 2, 0) / Math.max(1, w.length));
  const update = rms((i) => w[i]! - base[i]!);
  const error = rms((i) => restored[i]! - w[i]!);
  assert.ok(error <= 1.5 * update + 2 ** -8 * maxAbs(w) + 1e-9, `${name}: rms error ${error} against an rms update of ${update}`);
}

for (const run of ['fp32', 'bf16'] as const) {
  const prev = join(FIXTURES, run, 'checkpoint-4');
  const cur = join(FIXTURES, run, 'checkpoint-8');

  test(`${run}: lossy round trip against the previous folder`, async () => {
    const container = await compressFolder(cur, { base: prev });
    const out = await restoreFolder(container, prev);
    assert.deepEqual(readdirSync(out).sort(), readdirSync(cur).sort());
    for (const f of readdirSync(cur).filter((x) => !x.endsWith('.safetensors') && x !== 'optimizer.pt')) {
      assert.deepEqual(bytesOf(out, f), bytesOf(cur, f), `${f} is byte-identical`);
    }
    for (const f of OPAQUE) assert.ok(existsSync(join(out, f)));
    // Weights: the error is of the update's size (dithered: about 0.58 of it), headers verbatim.
    const [before, now, restored] = [modelTensors(prev), modelTensors(cur), modelTensors(out)];
    assert.deepEqual([...restored.keys()].sort(), [...now.keys()].sort());
    for (const [name, w] of now) {
      assertUpdateError(name, w, before.get(name)!, restored.get(name)!);
    }
    for (const f of readdirSync(cur).filter((x) => x.endsWith('.safetensors'))) {
      const n = 8 + Number(new DataView(bytesOf(cur, f).buffer).getBigUint64(0, true));
      assert.deepEqual(bytesOf(out, f).subarray(0, n), bytesOf(cur, f).subarray(0, n), `${f} header`);
    }
    // optimizer.pt: parseable, valid CRCs, steps and hyper-parameters unchanged, moments bounded.
    const a = optimizer(cur);
    const b = optimizer(out);
    assertZipCrcs(b.bytes);
    assert.equal(b.bytes.length, a.bytes.length);
    assert.deepEqual([...b.state.state.keys()], [...a.state.state.keys()]);
    assert.deepEqual(b.state.paramGroups, a.state.paramGroups);
    let changed = 0;
    for (const [id, s] of a.state.state) {
      const t = b.state.state.get(id)!;
      assert.equal(t.step, s.step);
      for (const key of ['expAvg', 'expAvgSq'] as const) {
        const orig = floatsAt(a.bytes, s[key].byteOffset, s[key].byteLength, s[key].dtype);
        const got = floatsAt(b.bytes, t[key].byteOffset, t[key].byteLength, t[key].dtype);
        assert.deepEqual(t[key].shape, s[key].shape);
        assert.ok(maxAbs(got.map((x, i) => x - orig[i]!)) <= 2 * maxAbs(orig) + 1e-12, `state ${id} ${key} bounded`);
        if (key === 'expAvgSq') assert.ok(got.every((x) => x >= 0), `state ${id} exp_avg_sq >= 0`);
        if (got.some((x, i) => x !== orig[i])) changed++;
      }
    }
    assert.ok(changed > 0, 'lossy coding changed some moments');
    // Everything outside the moment ranges of optimizer.pt is unchanged except the CRC fields.
    const moments = [...a.state.state.values()].flatMap((s) => [s.expAvg, s.expAvgSq]);
    const inMoment = (i: number) => moments.some((m) => i >= m.byteOffset && i < m.byteOffset + m.byteLength);
    let outside = 0;
    for (let i = 0; i < a.bytes.length; i++) if (a.bytes[i] !== b.bytes[i] && !inMoment(i)) outside++;
    assert.ok(outside <= 8 * moments.length, `${outside} bytes differ outside moments (CRC fields only)`);
  });

  test(`${run}: lossless round trip gives byte-identical files`, async () => {
    const container = await compressFolder(cur, { base: prev, lossless: true });
    const out = await restoreFolder(container, prev);
    assert.deepEqual(readdirSync(out).sort(), readdirSync(cur).sort());
    for (const f of readdirSync(cur)) assert.deepEqual(bytesOf(out, f), bytesOf(cur, f), f);
  });

  test(`${run}: the inferred param map is the truth, and is stored in the header`, async () => {
    const base = await FolderCheckpoint.open(prev, { mapMoments: false });
    const folder = await FolderCheckpoint.open(cur, { mapMoments: true, previous: base });
    try {
      const truth: string[] = reference.runs[run].param_order;
      // Named ids are the truth; the rest are small ids the data cannot tell apart, listed with their candidates.
      const map = folder.paramMap!;
      for (const [id, name] of map.ids) assert.equal(name, truth[id], `id ${id}`);
      assert.equal(map.ids.length + map.unmapped.length, truth.length);
      assert.deepEqual(map.ambiguous!.map(([id]) => id), map.unmapped);
      for (const [id, options] of map.ambiguous!) assert.ok(options.includes(truth[id]!), `id ${id}`);
      const header = planFor(folder, base, resolveOptions({}));
      assert.deepEqual(header.info?.['paramMap'], folder.paramMap);
      assert.equal(header.entries.filter((e) => e.kind === 'param').length, map.ids.length);
      validateHeader(structuredClone(header), FILE_KINDS);
    } finally {
      await folder.close();
      await base.close();
    }
  });
}

test('keyframe: ambiguous shapes are paired by shape alone (nothing kept depends on it); --param-map names them; restores without a base', async () => {
  const dir = join(FIXTURES, 'fp32', 'checkpoint-4');
  const unnamed = await compressFolder(dir, {});
  const named = await compressFolder(dir, { paramMap: reference.runs.fp32.param_order });
  // A keyframe's weights are coded alone (rounded to bf16's precision, the
  // lossy default) and the moments are pruned on their own, so the pairing
  // changes only names: both restore to the same folder.
  const a = await restoreFolder(unnamed);
  const b = await restoreFolder(named);
  for (const f of readdirSync(dir)) assert.deepEqual(bytesOf(a, f), bytesOf(b, f), f);
  const container = named;
  const out = await restoreFolder(container);
  for (const f of readdirSync(dir).filter((x) => x !== 'optimizer.pt' && x !== 'model.safetensors')) assert.deepEqual(bytesOf(out, f), bytesOf(dir, f), f);
  // The weights: each the original rounded to bf16's precision; the header verbatim.
  const original = bytesOf(dir, 'model.safetensors');
  const dataAt = 8 + Number(new DataView(original.buffer, original.byteOffset).getBigUint64(0, true));
  assert.deepEqual(bytesOf(out, 'model.safetensors'), Uint8Array.from([...original.subarray(0, dataAt), ...roundToBf16(original.subarray(dataAt))]));
  const exact = await restoreFolder(await compressFolder(dir, { paramMap: reference.runs.fp32.param_order, keyframe: 'exact' }));
  assert.deepEqual(bytesOf(exact, 'model.safetensors'), original, '--keyframe exact keeps the weights exact');
  assertZipCrcs(bytesOf(out, 'optimizer.pt'));
  const wrong = [...reference.runs.fp32.param_order];
  [wrong[0], wrong[1]] = [wrong[1], wrong[0]];
  await assert.rejects(compressFolder(dir, { paramMap: wrong }), (e: unknown) => e instanceof ExcpError && e.code === 'ERR_PARAM_MAP');
});

test('a folder container needs its base, and restore does not leave a temporary folder behind', async () => {
  const cur = join(FIXTURES, 'bf16', 'checkpoint-8');
  const container = await compressFolder(cur, { base: join(FIXTURES, 'bf16', 'checkpoint-4') });
  const target = join(work, 'no-base');
  await assert.rejects(restoreToFolder(container, target, { threads: 0 }), (e: unknown) => e instanceof ExcpError && e.code === 'ERR_BASE_MISSING');
  await assert.rejects(restoreToFolder(container, target, { threads: 0, base: join(FIXTURES, 'fp32', 'checkpoint-4') }), (e: unknown) => e instanceof ExcpError);
  assert.deepEqual(readdirSync(work).filter((f) => f.includes('no-base')), []);
});

test('a malicious optimizer.pt is refused with ERR_UNSAFE_PICKLE and never executed', async () => {
  const dir = join(work, 'malicious');
  rmSync(dir, { recursive: true, force: true });
  const src = join(FIXTURES, 'fp32', 'checkpoint-4');
  mkdirSync(dir);
  for (const f of readdirSync(src)) if (f !== 'optimizer.pt') copyFileSync(join(src, f), join(dir, f));
  copyFileSync(join(FIXTURES, 'malicious', 'optimizer.pt'), join(dir, 'optimizer.pt'));
  const marker = reference.malicious_marker as string;
  rmSync(marker, { force: true });
  await assert.rejects(compressFolder(dir, { base: src }), (e: unknown) => e instanceof ExcpError && e.code === 'ERR_UNSAFE_PICKLE');
  assert.equal(existsSync(marker), false);
});

test('validateHeader refuses folder paths that leave the output folder, and bad torch layouts', async () => {
  const base = await FolderCheckpoint.open(join(FIXTURES, 'fp32', 'checkpoint-4'), { mapMoments: false });
  try {
    const good = planFor(base, null, resolveOptions({}));
    const variants: [string, (h: ContainerHeader) => void][] = [
      ['dotdot', (h) => { h.files[h.files.length - 1]!.path = '../evil'; }],
      ['absolute', (h) => { h.files[h.files.length - 1]!.path = '/etc/evil'; }],
      ['backslash', (h) => { h.files[h.files.length - 1]!.path = 'a\\b'; }],
      ['duplicate', (h) => { h.files[h.files.length - 1]!.path = h.files[0]!.path; }],
      ['file and folder', (h) => { h.files[h.files.length - 1]!.path = `${h.files[0]!.path}/x`; }],
      ['unknown kind', (h) => { (h.files[0] as { kind: string }).kind = 'exe'; }],
      ['unreferenced tensor', (h) => { h.files.pop(); }],
      ['torch size', (h) => { const f = h.files.find((x) => x.kind === 'torch')! as { layout: { size: number } }; f.layout.size += 1; }],
      ['torch overlap', (h) => { const f = h.files.find((x) => x.kind === 'torch')! as { layout: { offsets: number[] } }; f.layout.offsets[1] = f.layout.offsets[0]!; }],
    ];
    for (const [what, mutate] of variants) {
      const h = structuredClone(good);
      mutate(h);
      const refused = (e: unknown) => e instanceof ExcpError && e.code === 'ERR_BAD_HEADER';
      assert.throws(() => validateHeader(h, FILE_KINDS), refused, what);
      // A kind the writer does not know cannot be written; every other header is, and its reader refuses it.
      if (what === 'unknown kind') continue;
      const head = encodeHead(h, FILE_KINDS);
      assert.throws(() => decodeHeader(head.subarray(16), FILE_KINDS), refused, what);
    }
    decodeHeader(encodeHead(good, FILE_KINDS).subarray(16), FILE_KINDS);
  } finally {
    await base.close();
  }
});

test('CLI: compress DIR --base PREV, inspect shows the param map, restore -o DIR, verify', () => {
  const root = fileURLToPath(new URL('..', import.meta.url));
  const run = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', join(root, 'lib', 'cli.ts'), ...args], { cwd: root, encoding: 'utf8' });
  const prev = join(FIXTURES, 'bf16', 'checkpoint-4');
  const cur = join(FIXTURES, 'bf16', 'checkpoint-8');
  const container = join(work, 'cli.excp');
  const target = join(work, 'cli-out');
  let r = run('compress', cur, '--base', prev, '-o', container, '--quiet');
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /^excp: .*optimizer\.pt: \d+ small param id\(s\) left unmapped, their moments coded exactly .*optimizer_param_names\.json/);
  assert.equal(r.stderr.split('\n').length, 2, 'one line');
  r = run('inspect', container);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /param map \(optimizer\.pt\): \d+ ids named, \d+ unmapped/);
  assert.match(r.stdout, /model-00001-of-00002\.safetensors \(safetensors\)/);
  r = run('restore', container, '--base', prev, '-o', target, '--quiet');
  assert.equal(r.status, 0, r.stderr);
  assert.deepEqual(readdirSync(target).sort(), readdirSync(cur).sort());
  r = run('restore', container, '--base', prev, '-o', target, '--quiet');
  assert.equal(r.status, 1);
  assert.match(r.stderr, /exists \(use --force/);
  r = run('verify', container, '--base', prev);
  assert.equal(r.status, 0, r.stderr);
  // From stdin: the container is spooled beside the output, restored, and the spool removed.
  const fromStdin = join(work, 'cli-stdin');
  const piped = spawnSync(process.execPath, ['--import', 'tsx', join(root, 'lib', 'cli.ts'), 'restore', '--base', prev, '-o', fromStdin, '--quiet'],
    { cwd: root, encoding: 'utf8', input: readFileSync(container) });
  assert.equal(piped.status, 0, piped.stderr);
  for (const f of readdirSync(target)) assert.deepEqual(bytesOf(fromStdin, f), bytesOf(target, f), f);
  assert.deepEqual(readdirSync(work).filter((f) => f.includes('excp-spool') || f.includes('excp-tmp')), []);
  const probe = join(work, 'probe-folder');
  mkdirSync(probe);
  assert.equal(statSync(fromStdin).mode & 0o777, statSync(probe).mode & 0o777, 'a restored folder has the permissions of any new folder (not 0700)');
  const map = join(work, 'map.json');
  writeFileSync(map, JSON.stringify(reference.runs.bf16.param_order));
  r = run('compress', prev, '--param-map', map, '-o', join(work, 'cli-key.excp'), '--quiet');
  assert.equal(r.status, 0, r.stderr);
  r = run('inspect', join(work, 'cli-key.excp'));
  assert.match(r.stdout, /param map \(optimizer\.pt\): 49 ids named, 0 unmapped \(moments coded exactly\), lowest confidence 1; by explicit 49/);
  // Without a map, a keyframe pairs ambiguous ids by shape alone; inspect says so.
  r = run('compress', prev, '-o', join(work, 'cli-key2.excp'), '--quiet');
  assert.equal(r.status, 0, r.stderr);
  r = run('inspect', join(work, 'cli-key2.excp'));
  assert.match(r.stdout, /shape-only \d+/);
});

test('an optimizer.pt that is not an Adam state_dict is carried byte for byte, with one notice', async () => {
  const dir = join(work, 'not-adam');
  mkdirSync(dir);
  const src = join(FIXTURES, 'fp32', 'checkpoint-4');
  for (const f of readdirSync(src)) copyFileSync(join(src, f), join(dir, f));
  copyFileSync(join(src, 'scheduler.pt'), join(dir, 'optimizer.pt'));
  const notices: string[] = [];
  const out = await restoreFolder(await compressFolder(dir, { onNotice: (m) => notices.push(m) }));
  assert.equal(notices.length, 1);
  assert.match(notices[0]!, /^notice: \S*not-adam: the method was not applied, every tensor is coded exactly: found an optimizer\.pt that is not an Adam\/AdamW state_dict \(.*optimizer state_dict: needs "state" \(dict\) and "param_groups" \(list\)\)$/);
  for (const f of readdirSync(dir)) assert.deepEqual(bytesOf(out, f), bytesOf(dir, f), f);
});

describe('pytorch_model.bin (Trainer with save_safetensors=False; head tied to the embedding)', () => {
  const prev = join(FIXTURES, 'bin', 'checkpoint-4');
  const cur = join(FIXTURES, 'bin', 'checkpoint-8');
  /** The state_dict tensors of a pytorch_model.bin: key -> float32 values and byte offset. */
  const weightsOf = (dir: string): Map<string, { values: Float32Array; offset: number }> => {
    const bytes = bytesOf(dir, 'pytorch_model.bin');
    const checkpoint = readTorchCheckpoint(bytes.length, (o, l) => bytes.subarray(o, o + l));
    return new Map(checkpoint.tensors.map((t) => [t.path, { values: floatsAt(bytes, t.byteOffset, t.byteLength, t.dtype), offset: t.byteOffset }]));
  };

  it('its tensors are model tensors (the tied head once), the rest of the file a skeleton; the param map is the truth', async () => {
    const base = await FolderCheckpoint.open(prev, { mapMoments: false });
    const folder = await FolderCheckpoint.open(cur, { mapMoments: true, previous: base });
    try {
      const names = folder.tensors.map((t) => t.name);
      assert.ok(names.includes('embed.weight') && names.includes('layers.10.fc.weight'));
      assert.ok(!names.includes('head.weight'), 'the tied head shares the embedding\'s bytes: left in the skeleton');
      assert.ok(names.includes('__file__/pytorch_model.bin'));
      for (const [id, name] of folder.paramMap!.ids) assert.equal(name, reference.runs.bin.param_order[id]);
      const header = planFor(folder, base, resolveOptions({}));
      assert.equal(header.entries.filter((e) => e.kind === 'param').length, folder.paramMap!.ids.length);
    } finally {
      await folder.close();
      await base.close();
    }
  });

  it('lossy round trip: the restored file is a valid torch zip, same keys, tie kept, weights within the residual\'s reach', async () => {
    const out = await restoreFolder(await compressFolder(cur, { base: prev }), prev);
    assert.deepEqual(readdirSync(out).sort(), readdirSync(cur).sort());
    for (const f of OPAQUE) assert.deepEqual(bytesOf(out, f), bytesOf(cur, f), f);
    assertZipCrcs(bytesOf(out, 'pytorch_model.bin'));
    assertZipCrcs(bytesOf(out, 'optimizer.pt'));
    const [before, now, restored] = [weightsOf(prev), weightsOf(cur), weightsOf(out)];
    assert.deepEqual([...restored.keys()], [...now.keys()]);
    assert.equal(restored.get('head.weight')!.offset, restored.get('embed.weight')!.offset, 'head and embedding share one storage');
    let changed = 0;
    for (const [name, w] of now) {
      const r = restored.get(name)!.values;
      assertUpdateError(name, w.values, before.get(name)!.values, r);
      if (maxAbs(r.map((x, i) => x - w.values[i]!)) > 0) changed++;
    }
    assert.ok(changed > 0, 'lossy coding changed some weights');
  });

  it('lossless round trip and keyframe restore give byte-identical files', async () => {
    const out = await restoreFolder(await compressFolder(cur, { base: prev, lossless: true }), prev);
    for (const f of readdirSync(cur)) assert.deepEqual(bytesOf(out, f), bytesOf(cur, f), f);
    const key = await restoreFolder(await compressFolder(prev, { lossless: true }));
    for (const f of readdirSync(prev)) assert.deepEqual(bytesOf(key, f), bytesOf(prev, f), f);
  });

  it('a state_dict nested in a dict (keys joined by /): views of one storage cut apart, an overlapping view left in the skeleton, an int buffer a model tensor', async () => {
    // {'model': {'q': s0[0:n], 'k': s0[n:2n], 'ov': s0[n/2:3n/2], 'pos': s1 (int64)}, 'epoch': 3}, as torch.save writes it.
    const n = 4096;
    const ascii = (text: string): number[] => [...Buffer.from(text, 'latin1')];
    const u32 = (v: number): number[] => [v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, v >>> 24];
    const text = (t: string): number[] => [0x58, ...u32(t.length), ...ascii(t)];
    const view = (key: string, kind: string, numel: number, offset: number, size: number): number[] => [
      0x63, ...ascii('torch._utils\n_rebuild_tensor_v2\n'), 0x28,
      0x28, ...text('storage'), 0x63, ...ascii(`torch\n${kind}\n`), ...text(key), ...text('cpu'), 0x4a, ...u32(numel), 0x74, 0x51,
      0x4a, ...u32(offset), 0x4a, ...u32(size), 0x85, 0x4b, 1, 0x85,
      0x89, 0x63, ...ascii('collections\nOrderedDict\n'), 0x29, 0x52, 0x74, 0x52,
    ];
    const pkl = new Uint8Array([
      0x80, 2, 0x7d, 0x28, ...text('model'), 0x7d, 0x28,
      ...text('q'), ...view('0', 'FloatStorage', 2 * n, 0, n), ...text('k'), ...view('0', 'FloatStorage', 2 * n, n, n),
      ...text('ov'), ...view('0', 'FloatStorage', 2 * n, n / 2, n), ...text('pos'), ...view('1', 'LongStorage', 4, 0, 4),
      0x75, ...text('epoch'), 0x4b, 3, 0x75, 0x2e,
    ]);
    const write = (dir: string, seed: number): void => {
      mkdirSync(dir, { recursive: true });
      const rng = uniform(seed);
      const weights = new Float32Array(2 * n).map((_, i) => Math.sin(i) + (rng() - 0.5) * 0.01);
      const pos = new BigInt64Array([1n, 2n, 3n, BigInt(seed)]);
      writeFileSync(join(dir, 'pytorch_model.bin'), writeZip([
        { name: 'archive/data.pkl', data: pkl },
        { name: 'archive/data/0', data: new Uint8Array(weights.buffer) },
        { name: 'archive/data/1', data: new Uint8Array(pos.buffer) },
        { name: 'archive/version', data: new TextEncoder().encode('3\n') },
      ]));
    };
    const [p, c] = [join(work, 'nested-prev'), join(work, 'nested-cur')];
    write(p, 1);
    write(c, 2);
    const folder = await FolderCheckpoint.open(c, { mapMoments: false });
    try {
      assert.deepEqual(folder.tensors.map((t) => [t.name, t.dtype]), [['model/q', 'F32'], ['model/k', 'F32'], ['model/pos', 'I64'], ['__file__/pytorch_model.bin', 'U8']]);
    } finally {
      await folder.close();
    }
    // No optimizer.pt, so no moments: the weights are coded exactly, against the base or not.
    const delta = await restoreFolder(await compressFolder(c, { base: p }), p);
    const key = await restoreFolder(await compressFolder(c, {}));
    for (const out of [delta, key]) assert.deepEqual(bytesOf(out, 'pytorch_model.bin'), bytesOf(c, 'pytorch_model.bin'));
  });

  it('a pytorch_model.bin that is not a torch zip is carried as a file; a malicious one is refused', async () => {
    const dir = join(work, 'bin-odd');
    rmSync(dir, { recursive: true, force: true });
    mkdirSync(dir);
    for (const f of readdirSync(prev)) copyFileSync(join(prev, f), join(dir, f));
    // Not a zip: carried byte for byte, like any file excp does not parse.
    writeFileSync(join(dir, 'pytorch_model.bin'), 'not a zip');
    const folder = await FolderCheckpoint.open(dir, { mapMoments: false });
    try {
      assert.ok(folder.files.some((f) => f.kind === 'blob' && f.path === 'pytorch_model.bin'));
    } finally {
      await folder.close();
    }
    copyFileSync(join(FIXTURES, 'malicious', 'optimizer.pt'), join(dir, 'pytorch_model.bin'));
    const marker = reference.malicious_marker as string;
    rmSync(marker, { force: true });
    await assert.rejects(FolderCheckpoint.open(dir, { mapMoments: false }), (e: unknown) => e instanceof ExcpError && e.code === 'ERR_UNSAFE_PICKLE');
    assert.equal(existsSync(marker), false);
  });
});
