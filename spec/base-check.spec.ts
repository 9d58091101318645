/**
 * The base check of compress (lib/method/base-check.ts): a base that is not
 * an earlier checkpoint of the same run is refused (or, with --force,
 * warned about), on real checkpoints of two short training runs
 * (spec/fixtures/base-check, made by examples/python/base_check_runs.py).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BaseCheck, MIN_BASE_COSINE } from '../lib/method/base-check.js';
import { compressBuffer } from '../lib/api/compress.js';
import { ExcpError } from '../lib/core/errors.js';
import { Prng } from './support/prng.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'dist', 'lib', 'cli.js');
const fixtures = join(root, 'spec', 'fixtures', 'base-check');
const expected = JSON.parse(readFileSync(join(fixtures, 'expected.json'), 'utf8')) as { bases: Record<string, { tcos: number }> };
const current = join(fixtures, 'run1-step150.safetensors');

function run(args: string[], input?: Uint8Array): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { input, maxBuffer: 1 << 26 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

function normal(rng: Prng, n: number, scale: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * rng.normal();
  return out;
}

describe('base check', () => {
  it('the cosine of a tensor and its earlier self is high, of independent tensors near 0', () => {
    const rng = new Prng(3);
    const w0 = normal(rng, 50_000, 0.02);
    const moved = w0.map((x) => x + 0.01 * rng.normal());
    const same = new BaseCheck();
    same.add('w', w0.length, moved, w0);
    assert.ok(same.verdict().plausible && same.verdict().cosine! > 0.8);
    const other = new BaseCheck();
    other.add('w', w0.length, moved, normal(rng, 50_000, 0.02));
    const v = other.verdict();
    assert.equal(v.plausible, false);
    assert.ok(Math.abs(v.cosine!) < 0.05 && v.tensors === 1 && v.elements === 50_000);
  });

  it('skips non-finite values and tensors too small to say anything; nothing measured is plausible', () => {
    const check = new BaseCheck();
    check.add('tiny', 8, Float32Array.of(1, 2, 3, 4, 5, 6, 7, 8), Float32Array.of(-1, -2, -3, -4, -5, -6, -7, -8));
    assert.deepEqual(check.verdict(), { cosine: null, tensors: 0, elements: 0, plausible: true, identical: false });
    const w = new Float32Array(100).fill(1);
    const b = new Float32Array(100).fill(1);
    w[3] = NaN;
    b[7] = Infinity;
    check.add('big', 100, w, b);
    assert.equal(check.verdict().cosine, 1);
  });

  it('accepts a consecutive checkpoint and the initialisation of the same run (real runs)', () => {
    for (const base of ['run1-step100', 'run1-step0']) {
      const r = run(['compress', current, '--base', join(fixtures, `${base}.safetensors`), '-o', '-', '--quiet']);
      assert.equal(r.status, 0, `${base}: ${r.stderr}`);
      assert.equal(r.stderr, '');
      assert.ok(expected.bases[base]!.tcos > MIN_BASE_COSINE);
    }
  });

  it('refuses a checkpoint of another run with the same shapes: one line with the evidence; --force warns and goes on', () => {
    const dir = mkdtempSync(join(tmpdir(), 'excp-base-'));
    try {
      const other = join(fixtures, 'run2-step100.safetensors');
      const out = join(dir, 'cur.excp');
      const r = run(['compress', current, '--base', other, '-o', out]);
      assert.equal(r.status, 1);
      assert.match(r.stderr, /^excp: compress: \S+run2-step100\.safetensors does not look like an earlier checkpoint of this run: .*mean cosine of W and W_base (-?\d\.\d+) over (\d+) tensors.*--force.*\n$/);
      assert.equal(r.stderr.split('\n').length, 2);
      // What excp measured is what the script measured (the check samples runs of each tensor; this model is small enough to be read whole).
      const cos = Number(/W_base (-?\d\.\d+)/.exec(r.stderr)![1]);
      assert.ok(Math.abs(cos - expected.bases['run2-step100']!.tcos) < 0.01, `cosine ${cos}`);
      assert.equal(existsSync(out), false);
      // From a pipe: the same verdict, over every element, and nothing left at -o.
      const piped = run(['compress', '--base', other, '-o', out], readFileSync(current));
      assert.equal(piped.status, 1);
      assert.match(piped.stderr, /does not look like an earlier checkpoint/);
      assert.equal(existsSync(out), false);
      const forced = run(['compress', current, '--base', other, '-o', out, '--force']);
      assert.equal(forced.status, 0, forced.stderr);
      assert.match(forced.stderr, /^excp: warning: compress: .* does not look like an earlier checkpoint .*compressing anyway \(--force\)\n$/);
      assert.ok(existsSync(out));
      // Exactly coded tensors restore bit for bit whatever the base: --lossless is not checked.
      assert.equal(run(['compress', current, '--base', other, '--lossless', '-o', '-', '--quiet']).status, 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('the library refuses too (ERR_BASE_IMPLAUSIBLE), unless baseCheck says otherwise', async () => {
    const cur = new Uint8Array(readFileSync(current));
    const other = new Uint8Array(readFileSync(join(fixtures, 'run2-step100.safetensors')));
    await assert.rejects(compressBuffer(cur, other), (e: unknown) => e instanceof ExcpError && e.code === 'ERR_BASE_IMPLAUSIBLE');
    const notices: string[] = [];
    const container = await compressBuffer(cur, other, { baseCheck: 'warn', onNotice: (m) => notices.push(m) });
    assert.ok(container.length > 0);
    assert.equal(notices.length, 1);
    assert.ok((await compressBuffer(cur, other, { baseCheck: 'off' })).length > 0);
  });
});
