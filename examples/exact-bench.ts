/**
 * npm run exact-bench -- [--params 1m] [--steps 60] [--gap 10] [--threads 0] [--quick] [--keep DIR]
 *
 * Exact (lossless) mode against general-purpose compressors, on the same
 * files in one run:
 *   excp compress --lossless            (keyframe: no base)
 *   excp compress --lossless --base B   (against the previous checkpoint: XOR / integer difference)
 *   zstd -19, xz -9                      (single-threaded, their defaults at these levels)
 * for:
 *   - two fp32 checkpoints of the example trainer (weights + Adam moments),
 *     `--gap` steps apart, after `--steps` steps;
 *   - the same two converted to bf16 (every tensor, round to nearest even);
 *   - the committed PyTorch fixtures (spec/fixtures/torch/, fp32 model and a
 *     bf16 shard, checkpoint-8 with checkpoint-4 as the base; tiny files).
 * Every excp output is restored and compared byte for byte with the input.
 *
 * excp runs in this process through the same library calls as the command
 * (compressTo / restoreTo, file to file), with `--threads` worker threads
 * (default 0: in the calling thread, like zstd -19 and xz -9). zstd and xz
 * run as processes on the same files (their startup, ~1 ms, is included).
 * MB/s is checkpoint bytes per second of wall time, compress / decompress;
 * files under 2 MB are coded several times and the median time is used
 * (once with --quick, a smoke run of a few seconds on a 50k-parameter model).
 */
import { spawnSync } from 'node:child_process';
import { createWriteStream, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { finished } from 'node:stream/promises';
import { cpus, tmpdir } from 'node:os';
import { basename, dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { fromFloat32, toFloat32 } from '../lib/core/dtype.js';
import { parseSafetensors, serializeSafetensors } from '../lib/formats/safetensors.js';
import { createTrainer } from './train/trainer.js';
import { compressTo } from '../lib/api/compress.js';
import { restoreTo, restoreToFolder } from '../lib/api/restore.js';

const { values } = parseArgs({ options: {
  params: { type: 'string', default: '1m' }, steps: { type: 'string', default: '60' }, gap: { type: 'string', default: '10' },
  threads: { type: 'string', default: '0' }, quick: { type: 'boolean', default: false }, keep: { type: 'string' },
} });
const params = values.quick ? '50k' : values.params!;
const steps = values.quick ? 12 : Number(values.steps);
const gap = values.quick ? 2 : Number(values.gap);
const threads = Number(values.threads);
if (!(steps > gap && gap >= 1)) throw new Error('exact-bench: need --steps > --gap >= 1');
const root = fileURLToPath(new URL('..', import.meta.url));
const dir = values.keep ?? mkdtempSync(join(tmpdir(), 'excp-exact-bench-'));
mkdirSync(dir, { recursive: true });

function has(tool: string): boolean {
  return spawnSync(tool, ['--version'], { encoding: 'utf8' }).status === 0;
}

/** The trainer's checkpoints at steps - gap and steps. */
function trainerPair(): { base: string; current: string } {
  const base = join(dir, `train-${params}-step${steps - gap}.safetensors`);
  const current = join(dir, `train-${params}-step${steps}.safetensors`);
  if (existsSync(base) && existsSync(current)) return { base, current };
  const started = Date.now();
  const trainer = createTrainer({ params, totalSteps: Math.max(steps * 2, 100) });
  for (let s = 1; s <= steps; s++) {
    trainer.step();
    if (s === steps - gap) writeFileSync(base, trainer.saveCheckpoint());
  }
  writeFileSync(current, trainer.saveCheckpoint());
  process.stderr.write(`trained ${steps} steps (${params}) in ${((Date.now() - started) / 1000).toFixed(1)} s\n`);
  return { base, current };
}

/** Every F32 tensor converted to BF16 (round to nearest even). */
function toBf16(path: string): string {
  const out = path.replace(/\.safetensors$/, '.bf16.safetensors');
  const { tensors, metadata } = parseSafetensors(readFileSync(path));
  const converted = tensors.map((t) => (t.dtype === 'F32' ? { ...t, dtype: 'BF16' as const, data: fromFloat32(toFloat32(t.data, 'F32'), 'BF16') } : t));
  writeFileSync(out, serializeSafetensors(converted, metadata));
  return out;
}

function median(xs: number[]): number {
  const s = xs.slice().sort((a, b) => a - b);
  return s[s.length >> 1]!;
}

async function timeAsync(reps: number, fn: () => Promise<void>): Promise<number> {
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const start = process.hrtime.bigint();
    await fn();
    times.push(Number(process.hrtime.bigint() - start) / 1e9);
  }
  return median(times);
}

function timeShell(reps: number, shell: string): number {
  const times: number[] = [];
  for (let r = 0; r < reps; r++) {
    const start = process.hrtime.bigint();
    const result = spawnSync('bash', ['-c', shell], { encoding: 'utf8' });
    if (result.status !== 0) throw new Error(`exact-bench: '${shell}' failed: ${result.stderr}`);
    times.push(Number(process.hrtime.bigint() - start) / 1e9);
  }
  return median(times);
}

async function toFile(path: string, produce: (out: NodeJS.WritableStream & import('node:stream').Writable) => Promise<void>): Promise<void> {
  const out = createWriteStream(path);
  await produce(out);
  out.end();
  await finished(out);
}

interface Result { bytes: number; compressSeconds: number; decompressSeconds: number }

async function runExcp(input: string, base: string | undefined, tag: string, reps: number): Promise<Result> {
  const coded = join(dir, `${tag}.excp`);
  const restored = join(dir, `${tag}.restored.safetensors`);
  const compressSeconds = await timeAsync(reps, () => toFile(coded, (out) => compressTo(input, out, { lossless: true, base, threads })));
  const decompressSeconds = await timeAsync(reps, () => toFile(restored, (out) => restoreTo(coded, out, { base, threads })));
  if (!readFileSync(restored).equals(readFileSync(input))) throw new Error(`exact-bench: ${tag} did not restore bit for bit`);
  return { bytes: statSync(coded).size, compressSeconds, decompressSeconds };
}

/** Files of a folder, recursively, relative paths in sorted order. */
function filesOf(folder: string): string[] {
  const out: string[] = [];
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else out.push(relative(folder, join(d, e.name)));
    }
  };
  walk(folder);
  return out.sort();
}

function folderBytes(folder: string): number {
  return filesOf(folder).reduce((s, f) => s + statSync(join(folder, f)).size, 0);
}

async function runExcpFolder(input: string, base: string | undefined, tag: string, reps: number): Promise<Result> {
  const coded = join(dir, `${tag}.excp`);
  const restored = join(dir, `${tag}.restored`);
  const compressSeconds = await timeAsync(reps, () => toFile(coded, (out) => compressTo(input, out, { lossless: true, base, threads })));
  const decompressSeconds = await timeAsync(reps, () => restoreToFolder(coded, restored, { base, threads, force: true }));
  for (const f of filesOf(input)) {
    if (!readFileSync(join(restored, f)).equals(readFileSync(join(input, f)))) throw new Error(`exact-bench: ${tag}: ${f} did not restore bit for bit`);
  }
  return { bytes: statSync(coded).size, compressSeconds, decompressSeconds };
}

/** zstd / xz over the file, or over a tar of the folder (what one would run on a checkpoint folder). */
function runTool(input: string, tool: 'zstd' | 'xz', tag: string, reps: number, folder: boolean): Result {
  const coded = join(dir, `${tag}${folder ? '.tar' : ''}.${tool === 'zstd' ? 'zst' : 'xz'}`);
  const level = tool === 'zstd' ? '-19' : '-9';
  // A file is given by name (zstd then knows its size, which picks its parameters).
  const command = folder
    ? `tar -cf - -C '${dirname(input)}' '${basename(input)}' | ${tool} ${level} -q -c > '${coded}'`
    : `${tool} ${level} -q -c '${input}' > '${coded}'`;
  const compressSeconds = timeShell(reps, command);
  const decompressSeconds = timeShell(reps, `${tool} -d -q -c '${coded}' > /dev/null`);
  return { bytes: statSync(coded).size, compressSeconds, decompressSeconds };
}

interface Row { name: string; raw: number; cells: Map<string, Result> }

/** One file, or a whole checkpoint folder (excp's folder container against zstd / xz over its tar). */
async function measure(name: string, input: string, base: string, folder = false): Promise<Row> {
  const raw = folder ? folderBytes(input) : statSync(input).size;
  const reps = values.quick ? 1 : folder ? 5 : raw >= 2e6 ? 1 : Math.min(25, Math.max(3, Math.ceil(4e6 / raw / 50)));
  const excp = folder ? runExcpFolder : runExcp;
  const tag = name.replace(/[^a-z0-9]+/gi, '-');
  const cells = new Map<string, Result>();
  await excp(input, undefined, `${tag}-warmup`, 1); // JIT warm-up, not reported
  cells.set('excp', await excp(input, undefined, `${tag}-key`, reps));
  cells.set('excp --base', await excp(input, base, `${tag}-base`, reps));
  if (has('zstd')) cells.set('zstd -19', runTool(input, 'zstd', tag, reps, folder));
  if (has('xz')) cells.set('xz -9', runTool(input, 'xz', tag, reps, folder));
  process.stderr.write(`measured ${name}\n`);
  return { name, raw, cells };
}

const { base, current } = trainerPair();
const rows: Row[] = [];
rows.push(await measure(`trainer ${params} fp32, step ${steps} (base: step ${steps - gap})`, current, base));
rows.push(await measure(`trainer ${params} bf16, step ${steps} (base: step ${steps - gap})`, toBf16(current), toBf16(base)));
const fixtures = join(root, 'spec', 'fixtures', 'torch');
rows.push(await measure('torch fixture fp32 model.safetensors, ckpt 8 (base: 4)',
  join(fixtures, 'fp32', 'checkpoint-8', 'model.safetensors'), join(fixtures, 'fp32', 'checkpoint-4', 'model.safetensors')));
rows.push(await measure('torch fixture bf16 model-00001-of-00002, ckpt 8 (base: 4)',
  join(fixtures, 'bf16', 'checkpoint-8', 'model-00001-of-00002.safetensors'), join(fixtures, 'bf16', 'checkpoint-4', 'model-00001-of-00002.safetensors')));
for (const kind of ['fp32', 'bf16']) {
  rows.push(await measure(`torch fixture ${kind} folder checkpoint-8 (base: 4; zstd/xz: its tar)`,
    join(fixtures, kind, 'checkpoint-8'), join(fixtures, kind, 'checkpoint-4'), true));
}

const methods = ['excp', 'excp --base', 'zstd -19', 'xz -9'].filter((m) => rows[0]!.cells.has(m));
const cpu = cpus()[0]?.model ?? 'unknown CPU';
const lines = [
  `exact mode, ${cpus().length} x ${cpu}, Node ${process.version}, excp threads ${threads}; cell = ratio (compress MB/s / decompress MB/s)`,
  '',
  `| file | raw bytes | ${methods.map((m) => `\`${m}\``).join(' | ')} |`,
  `| --- | ---: | ${methods.map(() => '---').join(' | ')} |`,
];
for (const row of rows) {
  const cell = (m: string) => {
    const r = row.cells.get(m)!;
    const mbps = (s: number) => (row.raw / 1e6 / s).toFixed(s > 0 && row.raw / 1e6 / s < 10 ? 1 : 0);
    return `${(row.raw / r.bytes).toFixed(3)}x (${mbps(r.compressSeconds)} / ${mbps(r.decompressSeconds)})`;
  };
  const best = methods.reduce((b, m) => (row.cells.get(m)!.bytes < row.cells.get(b)!.bytes ? m : b), methods[0]!);
  lines.push(`| ${row.name} | ${row.raw} | ${methods.map((m) => (m === best ? `**${cell(m)}**` : cell(m))).join(' | ')} |`);
}
process.stdout.write(`${lines.join('\n')}\n`);
if (!values.keep) rmSync(dir, { recursive: true, force: true });
