/**
 * npm run bench -- --params 10m|160m|410m [--threads N] [--keep DIR] [--quick]
 *
 * Generates a realistic checkpoint pair (GPT-NeoX/Pythia shapes, fp32
 * weights + Adam moments), then measures in the same run, on the same file:
 * excp compress / restore (wall time, MB/s of checkpoint bytes, peak RSS,
 * ratio; restore both with -o FILE and into a pipe), `cat > /dev/null` (the read limit), `zstd -3 -T0` and `zstd -d`.
 * Peak RSS comes from /usr/bin/time -v. Speed is reported as a ratio to the
 * baselines measured here, because the machine is shared and noisy. The
 * last line compares the coded symbol streams with the empirical entropy of
 * the symbols they code (recorded per entry in the footer; `excp inspect`
 * shows the same numbers).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { PRESETS, neoxParams, writeSyntheticPair } from './synthetic.js';

const { values } = parseArgs({ options: {
  params: { type: 'string', default: '10m' }, threads: { type: 'string' }, keep: { type: 'string' }, quick: { type: 'boolean', default: false },
} });
const presetName = values.quick ? 'tiny' : values.params!;
const preset = PRESETS[presetName];
if (!preset) throw new Error(`unknown --params ${presetName}; one of ${Object.keys(PRESETS).join(', ')}`);
const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'dist', 'lib', 'cli.js');
if (!existsSync(cli)) throw new Error('dist/lib/cli.js missing: run npm run build first');
const dir = values.keep ?? mkdtempSync(join(tmpdir(), 'excp-bench-'));
mkdirSync(dir, { recursive: true });
const prev = join(dir, 'prev.safetensors');
const cur = join(dir, 'cur.safetensors');

interface Run { seconds: number; peakKb: number | null }

function timed(shell: string): Run {
  const hasTime = existsSync('/usr/bin/time');
  const start = process.hrtime.bigint();
  const r = hasTime
    ? spawnSync('/usr/bin/time', ['-v', 'bash', '-c', shell], { encoding: 'utf8', maxBuffer: 1 << 26 })
    : spawnSync('bash', ['-c', shell], { encoding: 'utf8' });
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (r.status !== 0) throw new Error(`failed: ${shell}\n${r.stderr}`);
  const m = /Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr ?? '');
  return { seconds, peakKb: m ? Number(m[1]) : null };
}

function have(cmd: string): boolean {
  return spawnSync('bash', ['-c', `command -v ${cmd}`]).status === 0;
}

try {
  const params = neoxParams(preset.d, preset.layers, preset.vocab);
  const count = params.reduce((s, p) => s + p.shape.reduce((a, b) => a * b, 1), 0);
  if (!existsSync(cur) || !existsSync(prev)) {
    const t = performance.now();
    await writeSyntheticPair(params, prev, cur, { seed: 7 });
    console.error(`generated ${presetName} pair in ${((performance.now() - t) / 1000).toFixed(1)} s in ${dir}`);
  }
  const bytes = statSync(cur).size;
  const threads = values.threads ? ` --threads ${values.threads}` : '';
  const out = join(dir, 'cur.excp');
  const back = join(dir, 'cur.restored.safetensors');
  rmSync(out, { force: true });
  rmSync(back, { force: true });
  timed(`cat ${cur} ${prev} > /dev/null`); // warm the page cache for everyone
  const rows: Array<[string, Run, number | null]> = [];
  rows.push(['cat > /dev/null', timed(`cat ${cur} > /dev/null`), null]);
  if (have('zstd')) {
    const z = join(dir, 'cur.zst');
    rows.push(['zstd -3 -T0', timed(`zstd -q -f -3 -T0 ${cur} -o ${z}`), statSync(z).size]);
    rows.push(['zstd -d', timed(`zstd -q -f -d ${z} -o ${join(dir, 'cur.unzst')}`), null]);
    rmSync(z, { force: true });
    rmSync(join(dir, 'cur.unzst'), { force: true });
  }
  rows.push(['excp compress', timed(`node ${cli} compress ${cur} --base ${prev} -o ${out} --quiet${threads}`), null]);
  const excpBytes = statSync(out).size;
  rows[rows.length - 1]![2] = excpBytes;
  rows.push(['excp restore', timed(`node ${cli} restore ${out} --base ${prev} -o ${back} --quiet${threads}`), null]);
  if (statSync(back).size !== bytes) throw new Error('restored size differs');
  // The same restore into a pipe: the stream path (moments wait in a spill store until their turn).
  const piped = join(dir, 'cur.piped.safetensors');
  rows.push(['excp restore > pipe', timed(`node ${cli} restore ${out} --base ${prev} --quiet${threads} | cat > ${piped}`), null]);
  if (spawnSync('cmp', [back, piped]).status !== 0) throw new Error('restore through a pipe differs from restore -o');
  rmSync(piped, { force: true });
  const inspect = spawnSync('node', [cli, 'inspect', out, '--json'], { encoding: 'utf8', maxBuffer: 1 << 26 });
  const report = JSON.parse(inspect.stdout) as { ratio: number; entropyBits: number | null; symbolBits: number | null };

  const mbps = (r: Run) => bytes / 1e6 / r.seconds;
  const base = (name: string) => rows.find((r) => r[0] === name)?.[1];
  console.log(`excp bench: ${presetName} (${(count / 1e6).toFixed(1)}M parameters), checkpoint ${(bytes / 1e6).toFixed(1)} MB fp32 weights + Adam moments`);
  console.log(`machine: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, Node ${process.version}`);
  console.log('');
  console.log('| command | seconds | MB/s | peak RSS MB | output MB | ratio |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const [name, r, size] of rows) {
    console.log(`| ${name} | ${r.seconds.toFixed(2)} | ${mbps(r).toFixed(0)} | ${r.peakKb ? (r.peakKb / 1024).toFixed(0) : '-'} | ${size ? (size / 1e6).toFixed(2) : '-'} | ${size ? (bytes / size).toFixed(1) + 'x' : '-'} |`);
  }
  const c = base('excp compress')!;
  const d = base('excp restore')!;
  const z = base('zstd -3 -T0');
  const zd = base('zstd -d');
  const cat = base('cat > /dev/null')!;
  console.log('');
  if (z && zd) console.log(`excp compress speed / zstd -3 -T0: ${(z.seconds / c.seconds).toFixed(2)}; excp restore speed / zstd -d: ${(zd.seconds / d.seconds).toFixed(2)}`);
  console.log(`excp compress speed / cat: ${(cat.seconds / c.seconds).toFixed(3)}; container ratio ${report.ratio.toFixed(1)}x, ${(8 * excpBytes / count).toFixed(3)} bits per parameter`);
  if (report.entropyBits !== null && report.symbolBits !== null && report.entropyBits > 0) {
    // Per parameter of the model (weight + m + v together count as one parameter).
    const overhead = 100 * (report.symbolBits / report.entropyBits - 1);
    console.log(`coded symbols: ${(report.symbolBits / count).toFixed(4)} bits per parameter against an empirical entropy of ${(report.entropyBits / count).toFixed(4)} (+${overhead.toFixed(2)}%); the rest of the container (centers, exceptions, framing, header, footer) is ${(8 * excpBytes / count - report.symbolBits / count).toFixed(4)} bits per parameter`);
  }
} finally {
  if (!values.keep) rmSync(dir, { recursive: true, force: true });
}
