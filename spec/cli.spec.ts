/**
 * The built `excp` command (dist/lib/cli.js, built by `npm ci` via prepare
 * and by `npm test`): pipes, files, errors, atomic output.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomCheckpointPair, sameBytes } from './helpers.js';
import { writeZip } from './support/zip-writer.js';
import { restoreBuffer } from '../lib/api/restore.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'dist', 'lib', 'cli.js');

function run(args: string[], input?: Uint8Array, cwd?: string): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { input, cwd, maxBuffer: 1 << 28 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

describe('excp command line', () => {
  let dir = '';
  let prev = '';
  let cur = '';
  let pair: { previous: Uint8Array; current: Uint8Array };
  before(() => {
    assert.ok(existsSync(cli), `${cli} missing: run npm run build`);
    dir = mkdtempSync(join(tmpdir(), 'excp-cli-'));
    pair = randomCheckpointPair(21, { params: 4, maxElements: 5000, extras: true });
    prev = join(dir, 'prev.safetensors');
    cur = join(dir, 'cur.safetensors');
    writeFileSync(prev, pair.previous);
    writeFileSync(cur, pair.current);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('pipes: compress --base a < b | restore --base a', () => {
    const c = run(['compress', '--base', prev], pair.current);
    assert.equal(c.status, 0, c.stderr);
    const r = run(['restore', '--base', prev], c.stdout);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(parseFloat('1'), 1);
    return restoreBuffer(new Uint8Array(c.stdout), pair.previous).then((expected) => assert.ok(sameBytes(new Uint8Array(r.stdout), expected)));
  });

  it('files: -o writes atomically, inspect and verify read it', () => {
    const out = join(dir, 'cur.excp');
    const c = run(['compress', cur, '--base', prev, '-o', out]);
    assert.equal(c.status, 0, c.stderr);
    const i = run(['inspect', out, '--json']);
    assert.equal(i.status, 0, i.stderr);
    const report = JSON.parse(i.stdout.toString()) as { ratio: number; entries: unknown[] };
    assert.ok(report.ratio > 1 && report.entries.length > 0);
    const v = run(['verify', out, '--base', prev]);
    assert.equal(v.status, 0, v.stderr);
    assert.match(v.stdout.toString(), /ok/);
    const again = run(['compress', cur, '--base', prev, '-o', out]);
    assert.notEqual(again.status, 0);
    assert.match(again.stderr, /exists/);
    assert.equal(run(['compress', cur, '--base', prev, '-o', out, '--force']).status, 0);
    const restored = join(dir, 'restored.safetensors');
    assert.equal(run(['restore', out, '--base', prev, '-o', restored]).status, 0);
    assert.ok(readFileSync(restored).length === pair.current.length);
  });

  it('restore -o FILE (each chunk at its offset) equals the stream to stdout, over many chunks and every dtype', () => {
    for (const seed of [31, 32, 33]) {
      const p = randomCheckpointPair(seed, { params: 6, maxElements: 9000, extras: true, special: true, momentDtype: seed === 32 ? 'BF16' : 'F32' });
      const a = join(dir, `p${seed}.safetensors`);
      const b = join(dir, `c${seed}.safetensors`);
      const x = join(dir, `c${seed}.excp`);
      writeFileSync(a, p.previous);
      writeFileSync(b, p.current);
      assert.equal(run(['compress', b, '--base', a, '--chunk', '1000', '-o', x, '--quiet']).status, 0);
      const streamed = run(['restore', x, '--base', a, '--quiet', '--threads', '2']);
      assert.equal(streamed.status, 0, streamed.stderr);
      const file = join(dir, `c${seed}.restored.safetensors`);
      const r = run(['restore', x, '--base', a, '-o', file, '--quiet', '--threads', String(seed % 3)]);
      assert.equal(r.status, 0, r.stderr);
      assert.ok(sameBytes(new Uint8Array(readFileSync(file)), new Uint8Array(streamed.stdout)), `seed ${seed}`);
    }
  });

  it('bad input: one line on stderr, exit 1, no stack, no output left behind', () => {
    const garbage = join(dir, 'garbage.excp');
    writeFileSync(garbage, Buffer.from('this is not a container at all, not even close'));
    const target = join(dir, 'never.safetensors');
    const r = run(['restore', garbage, '-o', target]);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /^excp: /);
    assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    assert.doesNotMatch(r.stderr, /\n\s+at /);
    assert.equal(existsSync(target), false);
    assert.deepEqual(readdirSync(dir).filter((f) => f.includes('excp-tmp')), []);
    // Shorter than a preamble: still the magic that is reported, and an empty file says so.
    const short = join(dir, 'short.excp');
    writeFileSync(short, Buffer.from('garbage'));
    assert.match(run(['restore', short, '-o', target]).stderr, /^excp: \S*short\.excp: container: not an \.excp file \(bad magic\)\n$/);
    writeFileSync(short, new Uint8Array(0));
    assert.match(run(['restore', short, '-o', target]).stderr, /empty file, not an \.excp container/);
    assert.equal(existsSync(target), false);
  });

  it('the wrong kind of file: says what it is and what to do instead', () => {
    const torch = join(root, 'spec', 'fixtures', 'torch');
    const target = join(dir, 'never.excp');
    // A zip that is not a torch.save file (torch.save files are an input format of their own).
    const notTorch = join(dir, 'plain.zip');
    writeFileSync(notTorch, writeZip([{ name: 'docs/readme.txt', data: new TextEncoder().encode('hello') }]));
    const zip = run(['compress', notTorch, '-o', target]);
    assert.equal(zip.status, 1);
    assert.match(zip.stderr, /^excp: \S*plain\.zip: torch: no docs\/data\.pkl entry \(not a torch\.save file, or the legacy pre-1\.6 format\)\n$/);
    const pickle = run(['compress', join(torch, 'malicious', 'os_system.pkl'), '-o', target]);
    assert.match(pickle.stderr, /not a safetensors file: it is a Python pickle .*never loads\n$/);
    const model = join(torch, 'fp32', 'checkpoint-8', 'model.safetensors');
    const container = join(dir, 'model.excp');
    assert.equal(run(['compress', model, '-o', container]).status, 0);
    assert.match(run(['compress', container, '-o', target]).stderr, /not a safetensors file: it is an \.excp container: restore it with excp restore\n$/);
    assert.match(run(['restore', model, '-o', target]).stderr, /bad magic\): it looks like a safetensors checkpoint; compress it with excp compress\n$/);
    assert.match(run(['restore', join(torch, 'bin', 'checkpoint-8', 'pytorch_model.bin'), '-o', target]).stderr, /bad magic\): it is a zip file \(torch\.save\?\)\n$/);
    assert.equal(existsSync(target), false);
  });

  it('wrong base is refused with a clear message', () => {
    const c = run(['compress', '--base', prev], pair.current);
    const r = run(['restore', '--base', cur], c.stdout);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /base/);
  });

  it('refuses to overwrite an input', () => {
    const r = run(['compress', cur, '--base', prev, '-o', prev, '--force']);
    assert.equal(r.status, 1);
    assert.match(r.stderr, /input/);
  });

  it('usage errors exit 2; --help and --version exit 0', () => {
    assert.equal(run(['frobnicate']).status, 2);
    assert.equal(run(['compress', '--bits']).status, 2);
    const bits = run(['compress', cur, '--bits', '9']);
    assert.equal(bits.status, 2);
    assert.match(bits.stderr.toString(), /^excp: compress: --bits must be an integer from 1 to 8, got '9'/);
    const h = run(['--help']);
    assert.equal(h.status, 0);
    assert.match(h.stdout.toString(), /^ {2}compress +compress a checkpoint/m);
    assert.match(h.stdout.toString(), /^Exit status:/m);
    assert.match(run(['--version']).stdout.toString(), /^excp \d/);
    // No command: the usage on stderr, and a status that says nothing was done.
    const none = run([]);
    assert.equal(none.status, 2);
    assert.equal(none.stdout.length, 0);
    assert.match(none.stderr, /^excp \d.*\n\nUsage: excp COMMAND/);
    // Each command's own help lists its own options only, with ranges and defaults.
    for (const [args, has, lacks] of [
      [['compress', '--help'], /--keep Q .*default 0\.3/, /--top/],
      [['help', 'compare'], /--max-error E/, /--keep/],
      [['chain', 'restore', '-h'], /Usage: excp chain restore CHAIN_DIR --step N/, /--keyframe-every/],
    ] as const) {
      const r = run([...args]);
      assert.equal(r.status, 0, args.join(' '));
      assert.match(r.stdout.toString(), has, args.join(' '));
      assert.doesNotMatch(r.stdout.toString(), lacks, args.join(' '));
    }
    // A flag the command does not take, a repeated flag, conflicting flags: exit 2, naming the flags.
    for (const [args, message] of [
      [['compress', cur, '--top', '3'], /--top is not an option of compress/],
      [['inspect', cur, '--threads', '2'], /--threads is not an option of inspect/],
      [['compress', cur, '--bits', '2', '--bits', '3'], /--bits is given twice/],
      [['compress', cur, '--keep', '0.5', '--paper'], /--keep and --paper cannot be given together/],
      [['compress', cur, '--alpha', '1e-4', '--keep', '0.5'], /--(alpha|keep) and --(keep|alpha) cannot be given together/],
      [['compress', cur, '--keep=abc'], /--keep must be a number in \(0, 1\], got 'abc'/],
      [['compress', cur, '--lossless=1'], /--lossless takes no value/],
      [['chain', 'ls', cur, '--step', '1'], /--step is not an option of chain ls/],
    ] as const) {
      const r = run([...args]);
      assert.equal(r.status, 2, args.join(' '));
      assert.match(r.stderr, message, args.join(' '));
      assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
    }
  });
});
