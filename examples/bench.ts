/**
 * npm run bench -- [--params 160m] [--large] [--quick] [--threads N|auto] [--memory SIZE] [--rss] [--keep DIR]
 *
 * Generates synthetic GPT-NeoX-shaped checkpoints (fp32 weights + Adam
 * moments) as a safetensors file pair and as a pair of Hugging Face Trainer
 * folders (sharded safetensors + optimizer.pt, examples/synthetic-folder.ts),
 * then measures in the same run, on the same bytes: excp compress and
 * restore (residual against the previous checkpoint and keyframe, files and
 * folders, restore to a file and into a pipe, and compress with one thread),
 * against `zstd -3 -T1`, `zstd -3 -T<cores>` and `zstd -d`.
 *
 * Per excp command: seconds, MB/s of checkpoint bytes, peak RSS (VmHWM),
 * workers, and CPU seconds per GB by thread: the main thread (the serial
 * part), the workers, and the rest of the process (libuv's I/O threads,
 * V8's GC and compiler threads). From those the serial share (main / all)
 * and Amdahl's throughput for 4, 16 and 64 cores: T(n) = main + rest / n.
 * The CPU split comes from examples/cpu-probe.mjs (lib/pool/cpu.ts), so the
 * projection can be checked on any machine.
 *
 * --params picks the size (tiny, 1m, 10m, 160m, 410m; default 160m),
 * --large adds 410m after it, --quick runs the tiny model only (seconds).
 * --rss runs the memory matrix instead: every kind of run (keyframes and
 * residuals, files and folders, stdin, pipes with a consumer that pauses) at 1, 2
 * and 4-per-core threads under --memory (default 256M), and reports peak
 * RSS against the budget.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { PRESETS, neoxParams, writeSyntheticPair } from './synthetic.js';
import { paramMapOf, writeSyntheticFolder } from './synthetic-folder.js';

const { values } = parseArgs({ options: {
  params: { type: 'string', default: '160m' }, large: { type: 'boolean', default: false }, quick: { type: 'boolean', default: false },
  threads: { type: 'string' }, memory: { type: 'string' }, rss: { type: 'boolean', default: false }, keep: { type: 'string' },
} });
const sizes = values.quick ? ['tiny'] : [values.params!, ...(values.large && values.params !== '410m' ? ['410m'] : [])];
for (const s of sizes) if (!PRESETS[s]) throw new Error(`unknown --params ${s}; one of ${Object.keys(PRESETS).join(', ')}`);
const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'dist', 'lib', 'cli.js');
const probe = join(root, 'examples', 'cpu-probe.mjs');
if (!existsSync(cli)) throw new Error('dist/lib/cli.js missing: run npm run build first');
const work = values.keep ?? mkdtempSync(join(tmpdir(), 'excp-bench-'));
mkdirSync(work, { recursive: true });
const CORES = availableParallelism();
const GB = 1e9;

/** One measured command. */
interface Run {
  seconds: number;
  peakKb: number | null;
  /** CPU seconds: main thread, workers, whole process (excp only; zstd: process only). */
  main: number | null;
  workers: number | null;
  process: number | null;
  threads: number | null;
}

function sh(command: string): ReturnType<typeof spawnSync> {
  return spawnSync('bash', ['-c', command], { encoding: 'utf8', maxBuffer: 1 << 26 });
}

/** An excp command line (arguments after `excp`), measured with the CPU probe; `tail` is a shell suffix (a pipe). */
function excp(args: string, tail = ''): Run {
  const report = join(work, 'cpu.json');
  rmSync(report, { force: true });
  const start = process.hrtime.bigint();
  const r = sh(`EXCP_CPU_REPORT=${report} node --import ${probe} ${cli} ${args} --quiet ${tail}`);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (r.status !== 0) throw new Error(`failed: excp ${args} ${tail}\n${String(r.stderr)}`);
  const c = JSON.parse(readFileSync(report, 'utf8').trim().split('\n').pop()!) as { main: number | null; workers: number; process: number; threads: number; peakKb: number | null };
  return { seconds, peakKb: c.peakKb, main: c.main, workers: c.workers, process: c.process, threads: c.threads };
}

/** Another command, timed by /usr/bin/time (CPU and peak RSS) when it is there. */
function other(command: string): Run {
  const hasTime = existsSync('/usr/bin/time');
  const start = process.hrtime.bigint();
  const r = hasTime ? spawnSync('/usr/bin/time', ['-v', 'bash', '-c', command], { encoding: 'utf8', maxBuffer: 1 << 26 }) : sh(command);
  const seconds = Number(process.hrtime.bigint() - start) / 1e9;
  if (r.status !== 0) throw new Error(`failed: ${command}\n${String(r.stderr)}`);
  const num = (re: RegExp): number | null => {
    const m = re.exec(String(r.stderr ?? ''));
    return m ? Number(m[1]) : null;
  };
  const user = num(/User time \(seconds\): ([\d.]+)/);
  const sys = num(/System time \(seconds\): ([\d.]+)/);
  return { seconds, peakKb: num(/Maximum resident set size \(kbytes\): (\d+)/), main: null, workers: null, process: user !== null && sys !== null ? user + sys : null, threads: null };
}

function have(cmd: string): boolean {
  return sh(`command -v ${cmd}`).status === 0;
}

function du(path: string): number {
  const st = statSync(path);
  if (!st.isDirectory()) return st.size;
  return readdirSync(path).reduce((s, f) => s + du(join(path, f)), 0);
}

/** The checkpoints of one size: a file pair and a folder pair (generated once per --keep folder). */
async function checkpoints(name: string): Promise<{ dir: string; params: number; fileBytes: number; folderBytes: number }> {
  const preset = PRESETS[name]!;
  const params = neoxParams(preset.d, preset.layers, preset.vocab);
  const dir = join(work, name);
  mkdirSync(dir, { recursive: true });
  const t = performance.now();
  if (!existsSync(join(dir, 'cur.safetensors'))) await writeSyntheticPair(params, join(dir, 'prev.safetensors'), join(dir, 'cur.safetensors'), { seed: 7 });
  if (!existsSync(join(dir, 'cur', 'optimizer.pt'))) {
    await writeSyntheticFolder(params, join(dir, 'prev'), 0, { seed: 7 });
    await writeSyntheticFolder(params, join(dir, 'cur'), 1, { seed: 7 });
    writeFileSync(join(dir, 'param-map.json'), JSON.stringify(paramMapOf(params)));
  }
  console.error(`${name}: checkpoints ready in ${((performance.now() - t) / 1000).toFixed(1)} s (${dir})`);
  const count = params.reduce((s, p) => s + p.shape.reduce((a, b) => a * b, 1), 0);
  return { dir, params: count, fileBytes: statSync(join(dir, 'cur.safetensors')).size, folderBytes: du(join(dir, 'cur')) };
}

const threadFlag = (t: string | undefined): string => (t ? ` --threads ${t}` : '');
const memoryFlag = values.memory ? ` --memory ${values.memory}` : '';

function mb(kb: number | null): string {
  return kb === null ? '-' : (kb / 1024).toFixed(0);
}

/** A table row of an excp run over `bytes` checkpoint bytes. */
function excpRow(label: string, r: Run, bytes: number): string {
  const perGb = (s: number | null) => (s === null ? '-' : (s / (bytes / GB)).toFixed(2));
  const main = r.main ?? 0;
  const total = r.process ?? 0;
  const rest = Math.max(0, total - main);
  const amdahl = (n: number) => (bytes / 1e6 / (main + rest / n)).toFixed(0);
  const serial = total > 0 && r.main !== null ? `${((100 * main) / total).toFixed(1)}%` : '-';
  return `| ${label} | ${r.seconds.toFixed(2)} | ${(bytes / 1e6 / r.seconds).toFixed(0)} | ${mb(r.peakKb)} | ${r.threads ?? '-'} | ${perGb(r.main)} | ${perGb(r.workers)} | ${perGb(r.process === null || r.workers === null ? null : Math.max(0, r.process - main - r.workers))} | ${serial} | ${r.main === null ? '-' : `${amdahl(4)} / ${amdahl(16)} / ${amdahl(64)}`} |`;
}

function otherRow(label: string, r: Run, bytes: number): string {
  const cpu = r.process === null ? '-' : (r.process / (bytes / GB)).toFixed(2);
  return `| ${label} | ${r.seconds.toFixed(2)} | ${(bytes / 1e6 / r.seconds).toFixed(0)} | ${mb(r.peakKb)} | - | - | - | ${cpu} (all) | - | - |`;
}

function same(a: string, b: string): void {
  if (sh(`diff -r ${a} ${b} > /dev/null`).status !== 0) throw new Error(`${a} and ${b} differ`);
}

/** The speed table of one size. */
async function speed(name: string): Promise<void> {
  const c = await checkpoints(name);
  const { dir } = c;
  const p = (f: string) => join(dir, f);
  const t = threadFlag(values.threads) + memoryFlag;
  const map = ` --param-map ${p('param-map.json')}`;
  sh(`cat ${p('cur.safetensors')} ${p('prev.safetensors')} > /dev/null; tar -chf - -C ${dir} cur prev > /dev/null`); // warm the page cache
  for (const f of ['res.excp', 'key.excp', 'dres.excp', 'dkey.excp', 'back.safetensors', 'piped.safetensors', 'kback.safetensors', 'dback', 'dkback', 'z', 'z.tar']) rmSync(p(f), { recursive: true, force: true });
  const rows: string[] = [];
  const zstd = have('zstd');
  const ratios: string[] = [];
  // Single files.
  const fb = c.fileBytes;
  rows.push(otherRow('cat > /dev/null', other(`cat ${p('cur.safetensors')} > /dev/null`), fb));
  let z1: Run | null = null;
  let zn: Run | null = null;
  let zd: Run | null = null;
  if (zstd) {
    z1 = other(`zstd -q -f -3 -T1 ${p('cur.safetensors')} -o ${p('z')}`);
    zn = other(`zstd -q -f -3 -T${CORES} ${p('cur.safetensors')} -o ${p('z')}`);
    zd = other(`zstd -q -f -d ${p('z')} -o ${p('z.out')}`);
    rows.push(otherRow('zstd -3 -T1', z1, fb), otherRow(`zstd -3 -T${CORES}`, zn, fb), otherRow('zstd -d', zd, fb));
    rmSync(p('z.out'), { force: true });
  }
  const c1 = excp(`compress ${p('cur.safetensors')} --base ${p('prev.safetensors')} -o ${p('res1.excp')} -f --threads 1${memoryFlag}`);
  const cr = excp(`compress ${p('cur.safetensors')} --base ${p('prev.safetensors')} -o ${p('res.excp')} -f${t}`);
  if (sh(`cmp ${p('res1.excp')} ${p('res.excp')}`).status !== 0) throw new Error('the container differs between --threads 1 and the default');
  const rr = excp(`restore ${p('res.excp')} --base ${p('prev.safetensors')} -o ${p('back.safetensors')}${t}`);
  const rp = excp(`restore ${p('res.excp')} --base ${p('prev.safetensors')}${t}`, `| cat > ${p('piped.safetensors')}`);
  same(p('back.safetensors'), p('piped.safetensors'));
  const ck = excp(`compress ${p('cur.safetensors')} -o ${p('key.excp')} -f${t}`);
  const rk = excp(`restore ${p('key.excp')} -o ${p('kback.safetensors')}${t}`);
  rows.push(
    excpRow('file: compress, 1 thread', c1, fb), excpRow('file: compress', cr, fb), excpRow('file: restore -o FILE', rr, fb),
    excpRow('file: restore > pipe', rp, fb), excpRow('file: keyframe compress', ck, fb), excpRow('file: keyframe restore', rk, fb),
  );
  if (z1 && zn && zd) {
    ratios.push(`one thread: excp compress speed / zstd -3 -T1 = ${(z1.seconds / c1.seconds).toFixed(2)}`);
    ratios.push(`excp compress / zstd -3 -T${CORES} = ${(zn.seconds / cr.seconds).toFixed(2)}; excp restore -o FILE / zstd -d = ${(zd.seconds / rr.seconds).toFixed(2)}`);
  }
  // Folders.
  const db = c.folderBytes;
  if (zstd) {
    const zf = other(`tar -chf - -C ${dir} cur | zstd -q -f -3 -T${CORES} -o ${p('z.tar')}`);
    const zfd = other(`mkdir -p ${p('zx')} && zstd -q -d -c ${p('z.tar')} | tar -xf - -C ${p('zx')}`);
    rows.push(otherRow(`folder: tar | zstd -3 -T${CORES}`, zf, db), otherRow('folder: zstd -d | tar -x', zfd, db));
    rmSync(p('zx'), { recursive: true, force: true });
    rmSync(p('z.tar'), { force: true });
  }
  const dc = excp(`compress ${p('cur')} --base ${p('prev')}${map} -o ${p('dres.excp')} -f${t}`);
  const dr = excp(`restore ${p('dres.excp')} --base ${p('prev')} -o ${p('dback')}${t}`);
  const dk = excp(`compress ${p('cur')}${map} -o ${p('dkey.excp')} -f${t}`);
  const dkr = excp(`restore ${p('dkey.excp')} -o ${p('dkback')}${t}`);
  rows.push(excpRow('folder: compress', dc, db), excpRow('folder: restore', dr, db), excpRow('folder: keyframe compress', dk, db), excpRow('folder: keyframe restore', dkr, db));
  const ratio = (f: string, bytes: number) => `${(bytes / statSync(p(f)).size).toFixed(1)}x`;
  console.log(`\n### ${name}: ${(c.params / 1e6).toFixed(1)}M parameters, file ${(fb / 1e6).toFixed(0)} MB, folder ${(db / 1e6).toFixed(0)} MB`);
  console.log(`containers: file ${ratio('res.excp', fb)} (keyframe ${ratio('key.excp', fb)}), folder ${ratio('dres.excp', db)} (keyframe ${ratio('dkey.excp', db)})\n`);
  console.log('| command | seconds | MB/s | peak RSS MB | workers | main CPU s/GB | worker CPU s/GB | other CPU s/GB | serial | Amdahl MB/s at 4 / 16 / 64 cores |');
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of rows) console.log(r);
  console.log('');
  for (const r of ratios) console.log(r);
  if (!values.keep) for (const f of ['res1.excp', 'res.excp', 'key.excp', 'dres.excp', 'dkey.excp', 'back.safetensors', 'piped.safetensors', 'kback.safetensors', 'dback', 'dkback']) rmSync(p(f), { recursive: true, force: true });
}

/** The memory matrix: peak RSS of every kind of run at several thread counts, against the budget. */
async function memory(name: string): Promise<void> {
  const c = await checkpoints(name);
  const p = (f: string) => join(c.dir, f);
  const budget = values.memory ?? '256M';
  const map = ` --param-map ${p('param-map.json')}`;
  const pause = '| (sleep 2; cat > /dev/null)';
  excp(`compress ${p('cur.safetensors')} --base ${p('prev.safetensors')} -o ${p('res.excp')} -f`);
  excp(`compress ${p('cur.safetensors')} -o ${p('key.excp')} -f`);
  excp(`compress ${p('cur')} --base ${p('prev')}${map} -o ${p('dres.excp')} -f`);
  excp(`compress ${p('cur')}${map} -o ${p('dkey.excp')} -f`);
  const cases: Array<[string, (t: string) => Run]> = [
    ['file residual compress', (t) => excp(`compress ${p('cur.safetensors')} --base ${p('prev.safetensors')} -o ${p('x.excp')} -f${t}`)],
    ['stdin residual compress', (t) => excp(`compress --base ${p('prev.safetensors')} -o ${p('x.excp')} -f${t}`, `< ${p('cur.safetensors')}`)],
    ['file residual compress > paused pipe', (t) => excp(`compress ${p('cur.safetensors')} --base ${p('prev.safetensors')} -o -${t}`, pause)],
    ['file keyframe compress', (t) => excp(`compress ${p('cur.safetensors')} -o ${p('x.excp')} -f${t}`)],
    ['file residual restore -o FILE', (t) => excp(`restore ${p('res.excp')} --base ${p('prev.safetensors')} -o ${p('x.safetensors')} -f${t}`)],
    ['file residual restore > paused pipe', (t) => excp(`restore ${p('res.excp')} --base ${p('prev.safetensors')}${t}`, pause)],
    ['file keyframe restore > paused pipe', (t) => excp(`restore ${p('key.excp')}${t}`, pause)],
    ['folder residual compress', (t) => excp(`compress ${p('cur')} --base ${p('prev')}${map} -o ${p('x.excp')} -f${t}`)],
    ['folder keyframe compress', (t) => excp(`compress ${p('cur')}${map} -o ${p('x.excp')} -f${t}`)],
    ['folder residual restore', (t) => excp(`restore ${p('dres.excp')} --base ${p('prev')} -o ${p('xdir')} -f${t}`)],
    ['folder keyframe restore', (t) => excp(`restore ${p('dkey.excp')} -o ${p('xdir')} -f${t}`)],
  ];
  const threads = [...new Set([1, 2, 4 * CORES])];
  console.log(`\n### peak RSS (MB) at --memory ${budget}, ${name} (${(c.fileBytes / 1e6).toFixed(0)} MB file, ${(c.folderBytes / 1e6).toFixed(0)} MB folder)\n`);
  console.log(`| run | ${threads.map((t) => `--threads ${t}`).join(' | ')} |`);
  console.log(`| --- | ${threads.map(() => '---').join(' | ')} |`);
  for (const [label, run] of cases) {
    const cells = threads.map((t) => {
      const r = run(` --threads ${t} --memory ${budget}`);
      return `${mb(r.peakKb)} (${r.threads} workers)`;
    });
    console.log(`| ${label} | ${cells.join(' | ')} |`);
  }
  for (const f of ['x.excp', 'x.safetensors', 'xdir', 'res.excp', 'key.excp', 'dres.excp', 'dkey.excp']) rmSync(p(f), { recursive: true, force: true });
}

try {
  console.log(`excp bench: ${cpus().length} x ${cpus()[0]?.model ?? '?'}, Node ${process.version}${values.threads ? `, --threads ${values.threads}` : ''}${values.memory ? `, --memory ${values.memory}` : ''}`);
  for (const name of sizes) await (values.rss ? memory(name) : speed(name));
  console.log('\nCPU columns: seconds of CPU per GB of checkpoint, by thread (examples/cpu-probe.mjs); serial = main / all;');
  console.log('Amdahl: bytes / (main + (all - main) / n), the throughput n cores would give if everything but the main thread spread over them.');
} finally {
  if (!values.keep) rmSync(work, { recursive: true, force: true });
}
