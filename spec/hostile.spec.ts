/**
 * A hostile environment: the built CLI (dist/lib/cli.js) killed while
 * writing -o OUT, a full disk, and a consumer that reads slowly.
 *
 * - SIGKILL midway: OUT never appears; the only trace is the hidden
 *   `.OUT.excp-tmp-PID-TIME` file (a killed process cannot delete it), which
 *   the next write of OUT removes. SIGTERM/SIGINT: nothing at all remains.
 * - ENOSPC: ExcpError ERR_NO_SPACE with a clear message, no partial output,
 *   an existing OUT untouched.
 * - Back-pressure: restoring 1 GiB into a pipe nobody reads for seconds
 *   keeps the process's resident memory bounded.
 */
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { fileURLToPath } from 'node:url';
import { encodeChunk } from '../lib/method/codec.js';
import { layoutOf } from '../lib/container/format.js';
import { ExcpError } from '../lib/core/errors.js';
import { type DType, fromFloat32 } from '../lib/core/dtype.js';
import { Prng } from './support/prng.js';
import { resolveOptions } from '../lib/core/options.js';
import { tempPrefix, writeAtomically } from '../lib/io/output.js';
import { buildSafetensorsHeader, parseSafetensors, parseSafetensorsHeader, serializeSafetensors } from '../lib/formats/safetensors.js';
import { ContainerWriter } from '../lib/stream/container.js';
import { PRESETS, neoxParams, writeSyntheticPair } from '../examples/synthetic.js';
import { randomCheckpointPair } from './helpers.js';
import { compressBuffer, planFor } from '../lib/api/compress.js';
import { restoreBuffer } from '../lib/api/restore.js';
import type { Checkpoint } from '../lib/model/checkpoint.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'dist', 'lib', 'cli.js');
const linux = process.platform === 'linux';

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Names in `dir` other than the inputs. */
function leftovers(dir: string, inputs: string[]): string[] {
  return readdirSync(dir).filter((n) => !inputs.includes(n)).sort();
}

describe('killed while writing -o OUT', () => {
  let dir = '';
  const inputs = ['prev.safetensors', 'cur.safetensors'];
  before(async () => {
    assert.ok(existsSync(cli), `${cli} missing: run npm run build`);
    dir = mkdtempSync(join(tmpdir(), 'excp-kill-'));
    const p = PRESETS['1m']!;
    await writeSyntheticPair(neoxParams(p.d, p.layers, p.vocab), join(dir, inputs[0]!), join(dir, inputs[1]!));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** Start compress -o OUT and send `signal` once the temporary file holds data. */
  async function killMidway(out: string, signal: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null; tempSeen: string }> {
    // A keyframe on one thread: slow enough (seconds for 12 MB) to be caught midway.
    const child = spawn(process.execPath, [cli, 'compress', join(dir, inputs[1]!), '-o', join(dir, out), '--threads', '1', '--quiet'], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.on('exit', (code, sig) => resolve({ code, signal: sig })));
    let tempSeen = '';
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline && child.exitCode === null) {
      const temp = readdirSync(dir).find((n) => n.startsWith(tempPrefix(out)));
      if (temp) {
        const size = statSync(join(dir, temp), { throwIfNoEntry: false })?.size ?? 0;
        if (size > 0) {
          tempSeen = temp;
          child.kill(signal);
          break;
        }
      }
      await sleep(2);
    }
    const result = await exited;
    assert.ok(tempSeen, `compress ended (${JSON.stringify(result)}, ${stderr}) before the output was half written: input too small`);
    return { ...result, tempSeen };
  }

  it('SIGKILL: no OUT, nothing visible; the hidden temp file is removed by the next write of OUT', async () => {
    const r = await killMidway('killed.excp', 'SIGKILL');
    assert.equal(r.signal, 'SIGKILL');
    assert.ok(!existsSync(join(dir, 'killed.excp')), 'a partial output appeared under the target name');
    const left = leftovers(dir, inputs);
    assert.deepEqual(left.filter((n) => !n.startsWith('.')), [], `visible files left: ${left.join(', ')}`);
    // What may remain is the killed process's own dotfile, nothing else.
    assert.ok(left.every((n) => n === r.tempSeen), `unexpected leftovers: ${left.join(', ')}`);
    const again = spawnSync(process.execPath, [cli, 'compress', join(dir, inputs[1]!), '--base', join(dir, inputs[0]!), '-o', join(dir, 'killed.excp'), '--quiet']);
    assert.equal(again.status, 0, again.stderr.toString());
    assert.deepEqual(leftovers(dir, inputs), ['killed.excp'], 'the stale temporary file was not cleaned up');
    assert.equal(readFileSync(join(dir, 'killed.excp')).subarray(1, 5).toString(), 'EXCP');
    rmSync(join(dir, 'killed.excp'));
  });

  it('SIGTERM and SIGINT: no OUT and no temporary file at all', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const r = await killMidway('stopped.excp', signal);
      assert.equal(r.code, 128 + (signal === 'SIGTERM' ? 15 : 2), `${signal}: exit ${JSON.stringify(r)}`);
      assert.deepEqual(leftovers(dir, inputs), [], `${signal}: leftovers`);
    }
  });
});

describe('a producer that fails', () => {
  it('after writing: its error is reported, nothing is left, and the file is closed once (no stray EBADF)', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'excp-fail-'));
    const strays: unknown[] = [];
    const onStray = (e: unknown): void => { strays.push(e); };
    process.on('uncaughtException', onStray);
    try {
      for (let i = 0; i < 20; i++) {
        const target = join(dir, `out-${i}.bin`);
        await assert.rejects(writeAtomically(target, async (out) => {
          out.write(new Uint8Array(1 << 20).fill(i));
          if (i % 2) await new Promise((r) => setImmediate(r));
          throw new ExcpError('ERR_CORRUPT', `producer ${i} failed`);
        }), { code: 'ERR_CORRUPT', message: new RegExp(`producer ${i} failed`) });
        assert.equal(existsSync(target), false);
      }
      await new Promise((r) => setTimeout(r, 100));
      assert.deepEqual(readdirSync(dir), []);
      assert.deepEqual(strays, []);
    } finally {
      process.off('uncaughtException', onStray);
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('disk full (ENOSPC)', () => {
  let dir = '';
  before(() => { dir = mkdtempSync(join(tmpdir(), 'excp-nospace-')); });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** A producer whose output device fills up after `after` bytes, as fs reports it. */
  const fillsUp = (limit: number) => async (out: Writable) => {
    let written = 0;
    const disk = new Transform({
      transform(chunk: Buffer, _e, cb) {
        written += chunk.length;
        if (written > limit) cb(Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC', errno: -28, syscall: 'write' }));
        else cb(null, chunk);
      },
    });
    await pipeline(Readable.from((function* () { for (let i = 0; i < 64; i++) yield Buffer.alloc(65536, i); })()), disk, out, { end: false });
  };

  it('ERR_NO_SPACE with a clear message, and no partial output or temporary file', async () => {
    const target = join(dir, 'out.excp');
    await assert.rejects(writeAtomically(target, fillsUp(1_000_000)), (e: unknown) => {
      assert.ok(e instanceof ExcpError);
      assert.equal(e.code, 'ERR_NO_SPACE');
      assert.match(e.message, /out\.excp: no space left on the device; nothing was written \(the partial output was removed\)/);
      return true;
    });
    assert.deepEqual(readdirSync(dir), []);
  });

  it('an existing output is left untouched (with --force)', async () => {
    const target = join(dir, 'keep.excp');
    writeFileSync(target, 'previous contents');
    await assert.rejects(writeAtomically(target, fillsUp(100_000), { force: true }), (e: ExcpError) => e.code === 'ERR_NO_SPACE');
    assert.equal(readFileSync(target, 'utf8'), 'previous contents');
    assert.deepEqual(readdirSync(dir), ['keep.excp']);
    rmSync(target);
  });

  it('a device target is written directly, never replaced: /dev/full gives ERR_NO_SPACE, /dev/null takes the bytes', { skip: !linux || !existsSync('/dev/full') }, async () => {
    await assert.rejects(writeAtomically('/dev/full', fillsUp(Infinity), { force: true }), (e: ExcpError) => e.code === 'ERR_NO_SPACE' && /^\/dev\/full: no space left on the device$/.test(e.message));
    await writeAtomically('/dev/null', fillsUp(Infinity));
    assert.ok(statSync('/dev/full').isCharacterDevice() && statSync('/dev/null').isCharacterDevice());
  });

  it('the CLI writing to /dev/full reports the full device, exit 1, and leaves /dev alone', { skip: !linux || !existsSync('/dev/full') }, () => {
    const pair = randomCheckpointPair(61, { params: 2, maxElements: 2000 });
    const input = join(dir, 'in.safetensors');
    writeFileSync(input, pair.current);
    const r = spawnSync(process.execPath, [cli, 'compress', input, '-o', '/dev/full', '--quiet']);
    assert.equal(r.status, 1, r.stderr.toString());
    assert.match(r.stderr.toString(), /^excp: \/dev\/full: no space left on the device\n$/);
    assert.ok(statSync('/dev/full').isCharacterDevice(), '/dev/full was replaced');
    assert.deepEqual(readdirSync('/dev').filter((n) => n.startsWith(tempPrefix('/dev/full'))), []);
    rmSync(input);
  });
});

/**
 * A container restoring to `elements` zero F32 values (one plain tensor),
 * written without compressing (or holding) the checkpoint: every chunk codes
 * the same bytes, so one encoded chunk is repeated through ContainerWriter.
 */
async function writeZerosContainer(path: string, elements: number): Promise<number> {
  const { raw } = buildSafetensorsHeader([{ name: 'zeros', dtype: 'F32', shape: [elements] }]);
  const header = parseSafetensorsHeader(raw, elements * 4);
  const reader: Checkpoint = {
    path: '<zeros>', tensors: header.tensors, dataLength: header.dataLength, info: null,
    files: [{ kind: 'safetensors', path: null, tensors: ['zeros'], layout: raw }],
    byName: new Map(header.tensors.map((t) => [t.name, t])),
    tensorBytes: async (_info, start, end) => new Uint8Array(end - start),
    close: async () => undefined,
  };
  const options = resolveOptions({ chunkElements: 1 << 20 });
  const plan = planFor(reader, null, options);
  const chunks = Math.ceil(elements / options.chunkElements);
  assert.equal(elements % options.chunkElements, 0);
  const encoded = encodeChunk(layoutOf(plan, 0), { weight: new Uint8Array(options.chunkElements * 4), base: null, expAvg: null, expAvgSq: null }, options);
  const records = (function* () { for (let c = 0; c < chunks; c++) yield { entry: 0, chunk: c, ...encoded }; })();
  const parts: Uint8Array[] = [];
  await pipeline(Readable.from(records), new ContainerWriter(plan), new Writable({ write(c: Uint8Array, _e, cb) { parts.push(c); cb(); } }));
  writeFileSync(path, Buffer.concat(parts));
  return raw.length + elements * 4;
}

function rssBytes(pid: number): number | null {
  try {
    const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) * 1024 : null;
  } catch {
    return null;
  }
}

describe('back-pressure', () => {
  it('restore into a pipe read slowly: 1 GiB out, resident memory stays under 300 MB', { skip: !linux, timeout: 120_000 }, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'excp-slow-'));
    try {
      const container = join(dir, 'zeros.excp');
      const expected = await writeZerosContainer(container, 256 << 20);
      const child = spawn(process.execPath, [cli, 'restore', container, '--threads', '1', '--quiet'], { stdio: ['ignore', 'pipe', 'pipe'] });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
      const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
      const closed = new Promise((resolve) => child.stdout.once('close', resolve));
      let maxRss = 0;
      const sampler = setInterval(() => { maxRss = Math.max(maxRss, rssBytes(child.pid!) ?? 0); }, 50);
      // Nobody reads for 3 s: the restore must stall, not buffer.
      child.stdout.pause();
      await sleep(3000);
      const rssWhilePaused = maxRss;
      let received = 0;
      let nextPause = 64 << 20;
      child.stdout.on('data', (d: Buffer) => {
        received += d.length;
        if (received >= nextPause) {
          // A slow consumer: stop for 100 ms every 64 MiB.
          nextPause += 64 << 20;
          child.stdout.pause();
          setTimeout(() => child.stdout.resume(), 100);
        }
      });
      child.stdout.resume();
      const code = await exited;
      await closed;
      clearInterval(sampler);
      assert.equal(code, 0, stderr);
      t.diagnostic(`restored ${received} bytes; peak resident ${(maxRss / 1e6).toFixed(0)} MB (${(rssWhilePaused / 1e6).toFixed(0)} MB while nobody read for 3 s)`);
      assert.equal(received, expected);
      assert.ok(expected > 3 * 300e6, 'the output must be several times the bound');
      assert.ok(maxRss > 0, 'no RSS samples');
      assert.ok(maxRss < 300e6, `restore grew to ${(maxRss / 1e6).toFixed(0)} MB resident (paused: ${(rssWhilePaused / 1e6).toFixed(0)} MB)`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('non-finite values in lossy mode', () => {
  /** Bit patterns of NaNs (quiet, negative, signalling, with payload) and infinities, per dtype. */
  const SPECIALS: Record<'F32' | 'BF16' | 'F16', number[]> = {
    F32: [0x7fc00000, 0xffc00000, 0x7f800001, 0x7fc12345, 0x7f800000, 0xff800000],
    BF16: [0x7fc0, 0xffc0, 0x7f81, 0x7fd3, 0x7f80, 0xff80],
    F16: [0x7e00, 0xfe00, 0x7c01, 0x7e55, 0x7c00, 0xfc00],
  };

  function put(bytes: Uint8Array, dtype: 'F32' | 'BF16' | 'F16', at: number, bits: number): void {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.length);
    if (dtype === 'F32') view.setUint32(at * 4, bits >>> 0, true);
    else view.setUint16(at * 2, bits, true);
  }

  for (const dtype of ['F32', 'BF16', 'F16'] as const) {
    it(`${dtype}: NaN (any payload) and infinities in weights, moments and base come back bit-exact at their positions`, async () => {
      const rng = new Prng(71);
      const n = 3000;
      const eb = dtype === 'F32' ? 4 : 2;
      const floats = (scale: number) => Float32Array.from({ length: n }, () => rng.normal() * scale);
      const base = floats(0.02);
      const m = floats(1e-3);
      const v = Float32Array.from(m, (x) => x * x + 1e-8);
      const w = Float32Array.from(base, (x, i) => x - 1e-3 * Math.sign(m[i]!));
      const bytes = { w: fromFloat32(w, dtype as DType), m: fromFloat32(m, dtype as DType), v: fromFloat32(v, dtype as DType), base: fromFloat32(base, dtype as DType) };
      const planted = new Map<string, Map<number, number>>([['w', new Map()], ['m', new Map()], ['v', new Map()]]);
      for (const key of ['w', 'm', 'v'] as const) {
        SPECIALS[dtype].forEach((bits, k) => {
          const at = 100 * k + 7 + (key === 'm' ? 1 : key === 'v' ? 2 : 0);
          put(bytes[key], dtype, at, bits);
          planted.get(key)!.set(at, bits);
        });
      }
      // An infinite base under a finite weight: the residual is not finite, so the weight is an exception too.
      put(bytes.base, dtype, 2000, SPECIALS[dtype][4]!);
      const shape = [n];
      const current = serializeSafetensors([
        { name: 'p', dtype, shape, data: bytes.w },
        { name: 'p.exp_avg', dtype, shape, data: bytes.m },
        { name: 'p.exp_avg_sq', dtype, shape, data: bytes.v },
      ]);
      const previous = serializeSafetensors([{ name: 'p', dtype, shape, data: bytes.base }]);
      const container = await compressBuffer(current, previous, { chunkElements: 1024 });
      const restored = new Map(parseSafetensors(await restoreBuffer(container, previous)).tensors.map((t) => [t.name, t.data]));
      const got = { w: restored.get('p')!, m: restored.get('p.exp_avg')!, v: restored.get('p.exp_avg_sq')! };
      for (const key of ['w', 'm', 'v'] as const) {
        const view = new DataView(got[key].buffer, got[key].byteOffset, got[key].length);
        for (const [at, bits] of planted.get(key)!) {
          const back = eb === 4 ? view.getUint32(at * 4, true) : view.getUint16(at * 2, true);
          assert.equal(back, bits, `${dtype} ${key}[${at}]: planted 0x${bits.toString(16)}, restored 0x${back.toString(16)}`);
        }
      }
      const wView = new DataView(got.w.buffer, got.w.byteOffset, got.w.length);
      const original = new DataView(bytes.w.buffer, bytes.w.byteOffset, bytes.w.length);
      const at2000 = eb === 4 ? [wView.getUint32(8000, true), original.getUint32(8000, true)] : [wView.getUint16(4000, true), original.getUint16(4000, true)];
      assert.equal(at2000[0], at2000[1], 'weight over an infinite base element is restored exactly');
    });
  }
});
