/**
 * excp against the authors' own pipeline, on the same checkpoint pairs.
 *
 *   npm run authors-bench [-- --steps 150 --gap 50 --params 1m]
 *
 * The authors' pipeline, emulated as the project's method notes describe
 * their reference code: per parameter the residual
 * dW = W - W_base and the moments m, v are pruned with the paper's rule
 * (alpha 5e-5, beta 2), each stream is quantised with 1-D k-means to 15
 * centers over its nonzeros (index 0 = pruned), the centers are stored as
 * fp16 and the indices as 4 bits, two per byte (a stream with at most 15
 * nonzeros is stored raw, fp32), other tensors raw; the whole file then goes
 * through 7-Zip (`7z a -mx=9`, LZMA2) when installed (Debian: p7zip-full),
 * and `xz -9` (LZMA) otherwise or as well. The k-means is excp's (linear
 * domain), not faiss's; that changes centers, not the storage cost.
 *
 * Rows: that pipeline; excp with the paper's settings (`--paper`: the same
 * rule, 4 bits, v pruned to zero, linear codebooks), which isolates excp's
 * container and entropy coder; and excp's defaults. Checkpoints: two of the
 * example trainer's (fp32 weights + Adam moments, `--gap` steps apart) and
 * the demo's synthetic GPT-NeoX-shaped pair.
 */
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fitKMeans, assignClusters } from '../lib/method/kmeans.js';
import { PAPER_OPTIONS } from '../lib/core/options.js';
import { parseSafetensors, type TensorData } from '../lib/formats/safetensors.js';
import { f32ToF16, toFloat32 } from '../lib/core/dtype.js';
import { createTrainer } from './train/trainer.js';
import { PRESETS, neoxParams, syntheticPairBuffers } from './synthetic.js';
import { DEFAULT_OPTIONS } from '../lib/core/options.js';
import { pruneJoint } from '../spec/reference/prune.js';
import { compressBuffer } from '../lib/api/compress.js';
import { restoreBuffer } from '../lib/api/restore.js';

const { values } = parseArgs({ options: { steps: { type: 'string', default: '150' }, gap: { type: 'string', default: '50' }, params: { type: 'string', default: '1m' } } });
const steps = Number(values.steps);
const gap = Number(values.gap);
const dir = mkdtempSync(join(tmpdir(), 'excp-authors-'));

const has = (tool: string) => spawnSync('sh', ['-c', `command -v ${tool}`]).status === 0;

/** What 7-Zip (or xz) makes of a file, in bytes. */
function archived(path: string, tool: '7z' | 'xz'): number {
  if (tool === 'xz') {
    const r = spawnSync('xz', ['-9', '-k', '-c', path], { maxBuffer: 1 << 30 });
    return r.stdout.length;
  }
  const out = `${path}.7z`;
  rmSync(out, { force: true });
  const r = spawnSync('7z', ['a', '-t7z', '-mx=9', out, path], { stdio: 'ignore' });
  if (r.status !== 0) throw new Error('7z failed');
  return statSync(out).size;
}

/** One stream (dW, m or v after pruning) as the reference stores it. */
function storeStream(values: Float32Array, parts: Uint8Array[]): void {
  const nonzero = values.filter((x) => x !== 0);
  if (nonzero.length <= 15) {
    parts.push(new Uint8Array(values.slice().buffer));
    return;
  }
  const centers = fitKMeans(nonzero, 15, 'linear');
  const symbols = assignClusters(values, centers, 'linear', new Uint8Array(values.length));
  const packed = new Uint8Array(Math.ceil(values.length / 2));
  for (let i = 0; i < values.length; i++) packed[i >> 1]! |= (values[i] === 0 ? 0 : symbols[i]!) << ((i & 1) * 4);
  const table = new Uint16Array(15);
  centers.forEach((c, j) => { table[j] = f32ToF16(c); });
  parts.push(new Uint8Array(table.buffer), packed);
}

/** The authors' pipeline over a pair: the file it archives, before 7-Zip. */
function authorsFile(previous: Uint8Array, current: Uint8Array): Uint8Array {
  const base = new Map(parseSafetensors(previous).tensors.map((t) => [t.name, t]));
  const tensors = new Map(parseSafetensors(current).tensors.map((t) => [t.name, t]));
  const parts: Uint8Array[] = [];
  const done = new Set<string>();
  const floats = (t: TensorData) => toFloat32(t.data, t.dtype);
  for (const [name, t] of tensors) {
    const m = tensors.get(`${name}.exp_avg`);
    const v = tensors.get(`${name}.exp_avg_sq`);
    const b = base.get(name);
    if (!m || !v || !b || done.has(name)) continue;
    const w = floats(t);
    const wb = floats(b);
    const dW = w.map((x, i) => x - wb[i]!);
    const mm = floats(m);
    const vv = floats(v);
    pruneJoint(dW, mm, vv, { ...DEFAULT_OPTIONS, ...PAPER_OPTIONS, weightRule: 'paper' });
    parts.push(new TextEncoder().encode(`${name}:${t.shape.join('x')};`));
    for (const s of [dW, mm, vv]) storeStream(s, parts);
    done.add(name).add(`${name}.exp_avg`).add(`${name}.exp_avg_sq`);
  }
  for (const [name, t] of tensors) {
    if (done.has(name)) continue;
    parts.push(new TextEncoder().encode(`${name}:${t.shape.join('x')};`), t.data);
  }
  return Buffer.concat(parts);
}

function trainerPair(): { previous: Uint8Array; current: Uint8Array } {
  const trainer = createTrainer({ params: values.params as '1m', totalSteps: Math.max(steps * 2, 100) });
  let previous: Uint8Array | null = null;
  for (let s = 1; s <= steps; s++) {
    trainer.step();
    if (s === steps - gap) previous = trainer.saveCheckpoint();
  }
  return { previous: previous!, current: trainer.saveCheckpoint() };
}

const sevenZip = has('7z');
const rows: string[] = [];
try {
  const pairs: [string, () => { previous: Uint8Array; current: Uint8Array }][] = [
    [`trainer ${values.params}, step ${steps} against ${steps - gap}`, trainerPair],
    ['demo synthetic GPT-NeoX 1.06M', () => syntheticPairBuffers(neoxParams(PRESETS['1m']!.d, PRESETS['1m']!.layers, PRESETS['1m']!.vocab))],
  ];
  for (const [label, make] of pairs) {
    const { previous, current } = make();
    const raw = current.length;
    const file = join(dir, 'authors.bin');
    writeFileSync(file, authorsFile(previous, current));
    const authors7z = sevenZip ? archived(file, '7z') : null;
    const authorsXz = archived(file, 'xz');
    const paper = await compressBuffer(current, previous, { ...PAPER_OPTIONS, threads: 0 });
    const defaults = await compressBuffer(current, previous, { threads: 0 });
    await restoreBuffer(defaults, previous, { threads: 0 }); // the defaults' container restores (fingerprint checked)
    const ratio = (n: number) => `${(raw / n).toFixed(1)}x`;
    const reference = authors7z ?? authorsXz;
    rows.push(`| ${label} | ${raw} | ${authors7z === null ? '-' : `${ratio(authors7z)} (${authors7z})`} | ${ratio(authorsXz)} (${authorsXz}) | ${ratio(paper.length)} (${paper.length}) | **${ratio(defaults.length)}** (${defaults.length}) | ${(reference / defaults.length).toFixed(2)}x |`);
    process.stderr.write(`measured ${label}\n`);
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
console.log(`authors' pipeline (emulated, method.md) against excp, residual of one checkpoint against the previous; cell = ratio (bytes)${sevenZip ? '' : '; 7z not installed'}\n`);
console.log('| checkpoint pair | raw bytes | authors + 7z -mx=9 | authors + xz -9 | excp --paper | excp defaults | defaults vs authors |');
console.log('| --- | ---: | --- | --- | --- | --- | ---: |');
for (const r of rows) console.log(r);
