/**
 * Threads and memory: `--threads` and `--memory` refuse bad values (exit 2,
 * naming the flag) and the library's options refuse them at once; the
 * output is the same bytes at every thread count; and a run asked for many
 * workers under a small budget starts only the workers the budget feeds and
 * keeps its peak resident memory (VmHWM, read by the child itself through
 * examples/cpu-probe.mjs) under the budget. Speed is measured by
 * examples/bench.ts, never here.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { closeSync, createWriteStream, existsSync, mkdtempSync, openSync, readFileSync, readdirSync, rmSync, statSync, writeSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildSafetensorsHeader } from '../lib/formats/safetensors.js';
import { compress, compressBuffer, compressTo, restore, restoreToFile, restoreToFolder } from '../lib/index.js';
import { errorOf } from './helpers.js';
import { parseCommandLine } from '../lib/cli/args.js';
import { PRESETS, neoxParams } from '../examples/synthetic.js';
import { paramMapOf, writeSyntheticFolder } from '../examples/synthetic-folder.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'dist', 'lib', 'cli.js');
const probe = join(root, 'examples', 'cpu-probe.mjs');
const CORES = availableParallelism();
const FIXTURES = fileURLToPath(new URL('./fixtures/', import.meta.url));

/** Every file under a folder, as paths relative to it, sorted. */
function filesUnder(dir: string, at = ''): string[] {
  return readdirSync(join(dir, at)).flatMap((f) => (statSync(join(dir, at, f)).isDirectory() ? filesUnder(dir, join(at, f)) : [join(at, f)])).sort();
}

function run(args: string[]): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { maxBuffer: 1 << 28 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

/** What examples/cpu-probe.mjs reports. */
interface Probe {
  peakKb: number;
  threads: number;
}

/** Run the CLI with the probe; `pauseMs`: the reader of its stdout waits this long before reading. */
function probed(dir: string, args: string[], pauseMs = 0): Promise<Probe> {
  const report = join(dir, `probe-${process.hrtime.bigint()}.json`);
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', probe, cli, ...args, '--quiet'], { env: { ...process.env, EXCP_CPU_REPORT: report }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.stdout.pause();
    setTimeout(() => child.stdout.resume(), pauseMs);
    child.on('error', reject);
    child.on('close', (status) => {
      if (status !== 0) {
        reject(new Error(`excp ${args.join(' ')}: exit ${status}: ${stderr}`));
        return;
      }
      resolve(JSON.parse(readFileSync(report, 'utf8')) as Probe);
    });
  });
}

/**
 * A checkpoint pair of `params` float32 parameters of 2^20 elements (one
 * full chunk each) with Adam moments, written tensor by tensor: random
 * values from a seeded generator, so that every chunk costs the codec its
 * full working memory.
 */
function writePair(dir: string, params: number): { prev: string; cur: string } {
  const n = 1 << 20;
  const names = Array.from({ length: params }, (_, i) => `layers.${i}.weight`);
  const tensors = names.flatMap((name) => [name, `${name}.exp_avg`, `${name}.exp_avg_sq`].map((t) => ({ name: t, dtype: 'F32' as const, shape: [1024, 1024] })));
  const { raw } = buildSafetensorsHeader(tensors, { format: 'pt' });
  let state = 12345;
  const next = (): number => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 4294967296 - 0.5;
  };
  const values = new Float32Array(n);
  const paths = { prev: join(dir, 'prev.safetensors'), cur: join(dir, 'cur.safetensors') };
  const fds = { prev: openSync(paths.prev, 'w'), cur: openSync(paths.cur, 'w') };
  for (const fd of Object.values(fds)) writeSync(fd, raw);
  const bytes = new Uint8Array(values.buffer);
  for (let p = 0; p < params; p++) {
    for (let i = 0; i < n; i++) values[i] = 0.02 * next();
    writeSync(fds.prev, bytes);
    for (let i = 0; i < n; i++) values[i]! += 1e-4 * next();
    writeSync(fds.cur, bytes);
    for (let i = 0; i < n; i++) values[i] = 1e-3 * next();
    writeSync(fds.prev, bytes);
    writeSync(fds.cur, bytes);
    for (let i = 0; i < n; i++) values[i] = 1e-6 * Math.abs(next()) + 1e-9;
    writeSync(fds.prev, bytes);
    writeSync(fds.cur, bytes);
  }
  for (const fd of Object.values(fds)) closeSync(fd);
  return paths;
}

describe('threads and memory', () => {
  let dir = '';
  before(() => {
    assert.ok(existsSync(cli), `${cli} missing: run npm run build`);
    dir = mkdtempSync(join(tmpdir(), 'excp-threads-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('--threads and --memory refuse bad values with exit 2, naming the flag', () => {
    const file = join(dir, 'x.safetensors');
    writeFileSync(file, new Uint8Array(0));
    const max = 4 * CORES;
    // The exit status and the one line, through the built command.
    const threads = run(['compress', file, '--threads', String(max + 1)]);
    assert.equal(threads.status, 2);
    assert.match(threads.stderr, new RegExp(`^excp: compress: --threads must be an integer from 0 to ${max} or 'auto', got '${max + 1}' \\(see excp compress --help\\)\n$`));
    const memory = run(['restore', file, '--memory', '1X']);
    assert.equal(memory.status, 2);
    assert.match(memory.stderr, /^excp: restore: --memory must be a size from 64M to 1P \(bytes, or with K, M, G, T or P\), got '1X'/);
    // Every other bad value: the same usage error from the parser (what the command turns into exit 2).
    const refused = (args: string[], flag: string, value: string): void => {
      const e = errorOf(() => parseCommandLine(args));
      assert.equal(e.code, 'ERR_USAGE', args.join(' '));
      assert.match(e.message, new RegExp(`${flag} must be .*, got '${value.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}'`), args.join(' '));
    };
    for (const value of ['-1', '0.5', 'abc', '', '1e9', '1000', 'Auto', String(max + 1)]) refused(['compress', file, '--threads', value], '--threads', value);
    for (const value of ['abc', '0', '-1G', '63M', '12.5.3M', '2P', '', '1.5', '1E']) refused(['restore', file, '--memory', value], '--memory', value);
    refused(['verify', file, '--threads=-2'], '--threads', '-2');
    // Accepted values, typed: 'auto' stays a word, sizes become bytes.
    const ok = parseCommandLine(['compress', file, '--threads', 'auto', '--memory', '1.5G']);
    assert.equal(ok.values.get('threads'), 'auto');
    assert.equal(ok.values.get('memory'), 1.5 * 2 ** 30);
    assert.equal(parseCommandLine(['restore', file, '--threads', String(max), '--memory=300m']).values.get('memory'), 300 * 2 ** 20);
    assert.equal(parseCommandLine(['restore', file, '--threads', '0', '--memory', '268435456']).values.get('threads'), 0);
    assert.match(errorOf(() => parseCommandLine(['inspect', file, '--memory', '1G'])).message, /--memory is not an option of inspect/);
    const help = run(['compress', '--help']).stdout.toString();
    assert.match(help, /--threads N .*'auto'.*default auto/);
    assert.match(help, /--memory SIZE .*default 256M/);
  });

  it('the library checks threads and memory at once, naming the option', async () => {
    for (const threads of [-1, 0.5, 4 * CORES + 1, 'all']) {
      const e = errorOf(() => compress({ threads: threads as number }));
      assert.equal(e.code, 'ERR_OUT_OF_RANGE');
      assert.match(e.message, /^options\.threads must be an integer from 0 to \d+ or 'auto'/);
    }
    for (const memory of [0, 1e6, 'lots', '1Q', -1]) {
      const e = errorOf(() => restore({ memory: memory as number }));
      assert.equal(e.code, 'ERR_OUT_OF_RANGE');
      assert.match(e.message, /^options\.memory must be a size/);
    }
    await assert.rejects(compressTo(join(dir, 'missing.safetensors'), process.stdout, { threads: -2 }), /options\.threads/);
    await assert.rejects(compressBuffer(new Uint8Array(0), undefined, { memory: '10K' }), /options\.memory/);
    // Accepted: 'auto', 0, the limit, sizes as numbers or text.
    compress({ threads: 'auto', memory: '1G' }).destroy();
    compress({ threads: 4 * CORES, memory: 64 * 1024 * 1024 }).destroy();
    restore({ threads: 0, memory: '512MiB' }).destroy();
  });

  it('threads never change the output: containers and restored folders at 0, 1, 2 and 8 threads', () => {
    const p = PRESETS['tiny']!;
    const params = neoxParams(p.d, p.layers, p.vocab);
    return (async () => {
      await writeSyntheticFolder(params, join(dir, 'prev'), 0, { seed: 3 });
      await writeSyntheticFolder(params, join(dir, 'cur'), 1, { seed: 3 });
      writeFileSync(join(dir, 'map.json'), JSON.stringify(paramMapOf(params)));
      const outputs: string[] = [];
      for (const t of ['0', '1', '2', '8']) {
        const container = join(dir, `t${t}.excp`);
        const c = run(['compress', join(dir, 'cur'), '--base', join(dir, 'prev'), '--param-map', join(dir, 'map.json'), '-o', container, '--threads', t]);
        assert.equal(c.status, 0, c.stderr);
        const r = run(['restore', container, '--base', join(dir, 'prev'), '-o', join(dir, `back${t}`), '--threads', t]);
        assert.equal(r.status, 0, r.stderr);
        outputs.push(t);
      }
      const first = readFileSync(join(dir, 't0.excp'));
      for (const t of outputs.slice(1)) {
        assert.ok(first.equals(readFileSync(join(dir, `t${t}.excp`))), `container at --threads ${t}`);
        for (const f of readdirSync(join(dir, 'back0'))) {
          assert.ok(readFileSync(join(dir, 'back0', f)).equals(readFileSync(join(dir, `back${t}`, f))), `${f} restored at --threads ${t}`);
        }
      }
    })();
  });

  it('a DCP folder, a Trainer keyframe and a torch.save file: the same bytes in the calling thread and on workers', async () => {
    // The other input formats through the pool (0 and 2 threads here; 1 and 8 cost seconds of worker start-up each).
    // Accelerate's DCP folder has subfolders: chunks must wait until they are made and every file is open.
    const cases = [
      { name: 'dcp', current: join(FIXTURES, 'dcp/accelerate/checkpoint-8'), base: join(FIXTURES, 'dcp/accelerate/checkpoint-4'), folder: true },
      { name: 'trainer-keyframe', current: join(FIXTURES, 'torch2/trainer/gpt2-tied/checkpoint-8'), base: undefined, folder: true },
      { name: 'torch-file', current: join(FIXTURES, 'torch2/loop/plain/step-8.pt'), base: join(FIXTURES, 'torch2/loop/plain/step-4.pt'), folder: false },
    ];
    for (const c of cases) {
      const at = (threads: number, what: string): string => join(dir, `${c.name}-${threads}.${what}`);
      for (const threads of [0, 2]) {
        const out = createWriteStream(at(threads, 'excp'));
        await compressTo(c.current, out, { base: c.base, threads, onNotice: () => undefined });
        await new Promise<void>((resolve) => out.end(resolve));
        const options = { base: c.base, threads };
        if (c.folder) await restoreToFolder(at(threads, 'excp'), at(threads, 'back'), options);
        else await restoreToFile(at(threads, 'excp'), at(threads, 'back'), options);
      }
      assert.ok(readFileSync(at(0, 'excp')).equals(readFileSync(at(2, 'excp'))), `${c.name}: container`);
      const restored = c.folder ? filesUnder(at(0, 'back')) : [''];
      assert.ok(restored.length > 0);
      for (const f of restored) assert.ok(readFileSync(join(at(0, 'back'), f)).equals(readFileSync(join(at(2, 'back'), f))), `${c.name}: ${f || 'file'} restored`);
    }
  });

  it('many workers under a small budget: only what the budget feeds starts, and peak RSS stays under it', async () => {
    // Uncapped, eight workers take 300-490 MB here; 200M feeds one or none.
    const { prev, cur } = writePair(dir, 4);
    const budget = 200;
    const memory = ['--threads', '8', '--memory', `${budget}M`];
    const container = join(dir, 'big.excp');
    const runs: Array<[string, Probe]> = [
      ['compress', await probed(dir, ['compress', cur, '--base', prev, '-o', container, ...memory])],
      ['keyframe compress', await probed(dir, ['compress', cur, '-o', join(dir, 'key.excp'), ...memory])],
      ['restore -o FILE', await probed(dir, ['restore', container, '--base', prev, '-o', join(dir, 'back.safetensors'), ...memory])],
      ['restore > paused pipe', await probed(dir, ['restore', container, '--base', prev, ...memory], 1000)],
    ];
    for (const [what, p] of runs) {
      // Where not even one worker fits, the calling thread codes the chunks (0 workers).
      assert.ok(p.threads < 8, `${what}: ${p.threads} workers started (8 asked, the budget feeds fewer)`);
      assert.ok(p.peakKb <= budget * 1024, `${what}: peak RSS ${(p.peakKb / 1024).toFixed(0)} MB over --memory ${budget}M`);
    }
    assert.ok(runs.some(([, p]) => p.threads >= 1), `no run started a worker: ${runs.map(([w, p]) => `${w} ${p.threads}`).join(', ')}`);
  });
});
