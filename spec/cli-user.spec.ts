/**
 * What a new user hit (issue 18), against the built command
 * (dist/lib/cli.js): exit statuses that do not hide failures, binary output
 * kept off a terminal, pipes as inputs, messages that name the user's paths,
 * escaped names, per-role compare limits, notices, random access.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseSafetensors, serializeSafetensors } from '../lib/formats/safetensors.js';
import { MAX_TENSORS } from '../lib/core/constants.js';
import { restoreTensors } from '../lib/api/extract.js';
import { restoreBuffer, restoreToFolder } from '../lib/api/restore.js';
import { verifyContainer } from '../lib/api/inspect.js';
import { compressTo } from '../lib/api/compress.js';
import { writeAtomically } from '../lib/io/output.js';
import { randomCheckpointPair, sameBytes } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'dist', 'lib', 'cli.js');
const fixtures = join(root, 'spec', 'fixtures');

function run(args: string[], input?: Uint8Array): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { input, maxBuffer: 1 << 28 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

/** A command line in bash (pipes, process substitution, /dev/full), without blocking: independent ones run together. */
function shell(line: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn('bash', ['-c', line]);
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

const excp = `'${process.execPath}' '${cli}'`;
const hasBash = spawnSync('bash', ['-c', 'true']).status === 0;
const hasFull = existsSync('/dev/full');
/** util-linux script(1) runs a command on a pseudo-terminal. */
const hasScript = spawnSync('script', ['-qec', 'true', '/dev/null']).status === 0;

/** Run a command line with stdout and stderr on a terminal; returns what the terminal showed. */
function onTerminal(line: string): { status: number | null; output: string } {
  const r = spawnSync('script', ['-qec', line, '/dev/null'], { encoding: 'utf8' });
  return { status: r.status, output: r.stdout };
}

describe('issue 18: the command line as a new user meets it', () => {
  let dir = '';
  let prev = '';
  let cur = '';
  let container = '';
  let pair: { previous: Uint8Array; current: Uint8Array };
  before(() => {
    assert.ok(existsSync(cli), `${cli} missing: run npm run build`);
    dir = mkdtempSync(join(tmpdir(), 'excp-user-'));
    pair = randomCheckpointPair(18, { params: 4, maxElements: 12000, extras: true });
    prev = join(dir, 'prev.safetensors');
    cur = join(dir, 'cur.safetensors');
    container = join(dir, 'cur.excp');
    writeFileSync(prev, pair.previous);
    writeFileSync(cur, pair.current);
    assert.equal(run(['compress', cur, '--base', prev, '-o', container, '--chunk', '4096']).status, 0);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('text to a full device fails (exit 1): inspect, compare, chain ls, --help, --version, restore, compress', { skip: !hasBash || !hasFull }, async () => {
    const chain = join(dir, 'chain');
    assert.equal(run(['chain', chain, prev, '--quiet', '--lossless']).status, 0);
    const lines = [`inspect '${container}'`, `compare '${cur}' '${prev}' --json`, `chain ls '${chain}'`, 'compress --help', '--version',
      `restore '${container}' --base '${prev}'`, `compress '${cur}' --base '${prev}' -o -`];
    const results = await Promise.all(lines.map((args) => shell(`${excp} ${args} > /dev/full`)));
    results.forEach((r, i) => {
      assert.equal(r.status, 1, `${lines[i]}: ${r.stderr}`);
      assert.equal(r.stderr, 'excp: stdout: no space left on the device\n', lines[i]);
    });
  });

  it('a reader that goes away early: exit 141, not 0', async () => {
    const child = spawn(process.execPath, [cli, 'restore', container, '--base', prev], { stdio: ['ignore', 'pipe', 'pipe'] });
    const status = await new Promise<number | null>((resolve) => {
      child.stdout.once('data', () => child.stdout.destroy());
      child.on('close', (code) => resolve(code));
    });
    assert.equal(status, 141);
    if (hasBash) assert.equal((await shell(`set -o pipefail; ${excp} restore '${container}' --base '${prev}' | head -c 100 > /dev/null`)).status, 141);
  });

  it('binary output is refused on a terminal unless -o - says so; compress then prints a summary line', { skip: !hasScript }, () => {
    const refused = onTerminal(`${excp} compress '${cur}' --base '${prev}'`);
    assert.equal(refused.status, 1);
    assert.match(refused.output, /excp: stdout is a terminal: refusing to write binary data to it; give -o FILE, or -o - \(or a redirect\)/);
    assert.equal(onTerminal(`${excp} compress '${cur}' --base '${prev}' -o - --quiet | wc -c`).status, 0);
    const out = join(dir, 'tty.excp');
    const summary = onTerminal(`${excp} compress '${cur}' --base '${prev}' -o '${out}' --force`);
    assert.equal(summary.status, 0);
    assert.match(summary.output, new RegExp(`compress: \\S*cur\\.safetensors: ${pair.current.length} -> ${readFileSync(out).length} bytes \\(\\d+\\.\\dx\\) in \\d+\\.\\d\\d s`));
  });

  it('stdin and pipes (a FIFO, a process substitution) as input or base: read once, the same container as by path', { skip: !hasBash }, async () => {
    const expected = readFileSync(container);
    const piped = run(['compress', '--base', prev, '--chunk', '4096', '--tmp', dir], pair.current);
    assert.equal(piped.status, 0, piped.stderr);
    assert.ok(sameBytes(piped.stdout, expected));
    const sub = join(dir, 'sub.excp');
    const restored = join(dir, 'sub.safetensors');
    const [r, back, inspect] = await Promise.all([
      shell(`${excp} compress <(cat '${cur}') --base <(cat '${prev}') --chunk 4096 -o '${sub}'`),
      shell(`${excp} restore <(cat '${container}') --base <(cat '${prev}') -o '${restored}'`),
      // inspect needs the index at the end of the file: a pipe is refused, with why.
      shell(`${excp} inspect <(cat '${container}')`),
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(sameBytes(readFileSync(sub), expected));
    assert.equal(back.status, 0, back.stderr);
    assert.ok(sameBytes(readFileSync(restored), await restoreBuffer(new Uint8Array(expected), pair.previous)));
    assert.equal(inspect.status, 1);
    assert.match(inspect.stderr, /^excp: \/dev\/fd\/\d+: not a regular file \(a pipe\?\): the container's index is at its end.*save it to a file first/);
    // An empty pipe and a cut one say so.
    assert.match(run(['compress', '--base', prev], new Uint8Array(0)).stderr, /^excp: stdin: no input \(0 bytes\)\n$/);
    assert.match(run(['compress', '--base', prev, '-o', join(dir, 'cut.excp')], pair.current.subarray(0, 5000)).stderr, /^excp: stdin: the stream ended at byte 5000, inside tensor '[^']+'; its header says the file has \d+\n$/);
    assert.equal(existsSync(join(dir, 'cut.excp')), false);
  });

  it('an output that cannot be written: one line naming the path given, never a temporary file', () => {
    for (const [target, why] of [[join(dir, 'missing', 'out.excp'), /the folder \S*missing does not exist/], [join(cur, 'out.excp'), /cur\.safetensors is not a folder/]] as const) {
      const r = run(['compress', cur, '--base', prev, '-o', target]);
      assert.equal(r.status, 1);
      assert.match(r.stderr, new RegExp(`^excp: ${target.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}: cannot write: `));
      assert.match(r.stderr, why);
      assert.doesNotMatch(r.stderr, /excp-tmp|ENOENT|ENOTDIR/);
      assert.equal(r.stderr.split('\n').length, 2);
    }
    const empty = run(['restore', '--base', prev, '-o', join(dir, 'never.safetensors')], new Uint8Array(0));
    assert.equal(empty.stderr, 'excp: stdin: no input (0 bytes)\n');
  });

  it('a truncated container: inspect, verify and restore say where the data stops, with byte counts', () => {
    const full = readFileSync(container);
    const cut = join(dir, 'cut.excp');
    writeFileSync(cut, full.subarray(0, 3000));
    for (const args of [['inspect', cut], ['verify', cut, '--base', prev]]) {
      const r = run(args);
      assert.equal(r.status, 1);
      assert.match(r.stderr, /container: truncated: the data stops at byte 3000, \d+ bytes short of the end of the record of tensor '[^']+' chunk \d+ \(\d+ bytes\), and the rest of the records, the footer and the trailer are missing\n$/);
    }
    writeFileSync(cut, full.subarray(0, full.length - 5));
    assert.match(run(['inspect', cut]).stderr, /truncated: the data stops at byte \d+, 5 bytes short of the end of the trailer/);
    assert.match(run(['restore', '--base', prev], full.subarray(0, 3000)).stderr, /^excp: container: truncated: the data stops at byte 3000/);
  });

  it('tensor names with control characters are escaped in inspect, compare and errors', () => {
    const evil = 'evil\r\u001b[31mname\u202e';
    const tensors = parseSafetensors(pair.current).tensors.map((t) => (t.name === 'layers.0.weight' ? { ...t, name: `${evil}` } : t.name.startsWith('layers.0.weight.') ? { ...t, name: `${evil}${t.name.slice('layers.0.weight'.length)}` } : t));
    const base = parseSafetensors(pair.previous).tensors.map((t) => (t.name === 'layers.0.weight' ? { ...t, name: evil } : t));
    const a = join(dir, 'evil.safetensors');
    const b = join(dir, 'evil-prev.safetensors');
    writeFileSync(a, serializeSafetensors(tensors));
    writeFileSync(b, serializeSafetensors(base));
    const x = join(dir, 'evil.excp');
    assert.equal(run(['compress', a, '--base', b, '-o', x]).status, 0);
    const outputs = [run(['inspect', x]).stdout.toString(), run(['inspect', x, '--names']).stdout.toString(), run(['compare', a, b, '--top', '50']).stdout.toString(),
      run(['restore', x, '--tensor', `${evil}x`, '-o', join(dir, 'n.st')]).stderr];
    for (const text of outputs) {
      assert.doesNotMatch(text, /[\r\u001b\u202e]/);
      assert.match(text, /evil\\r\\x1b\[31mname\\u\{202e\}/);
    }
    assert.equal(outputs[3]!.split('\n').length, 2);
  });

  it('notices: an empty folder, no optimizer.pt, an old pickle optimizer.pt, DeepSpeed and FSDP layouts, a file without moments', { skip: !hasBash }, async () => {
    const empty = join(dir, 'empty');
    mkdirSync(empty);
    const noOptimizer = join(dir, 'no-optimizer');
    cpSync(join(fixtures, 'torch', 'fp32', 'checkpoint-8'), noOptimizer, { recursive: true });
    rmSync(join(noOptimizer, 'optimizer.pt'));
    const oldPickle = join(dir, 'old-pickle');
    cpSync(noOptimizer, oldPickle, { recursive: true });
    // torch.save(..., _use_new_zipfile_serialization=False): a bare pickle stream (protocol 2), no zip.
    writeFileSync(join(oldPickle, 'optimizer.pt'), Buffer.from([0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e]));
    const deepspeed = join(dir, 'deepspeed');
    mkdirSync(join(deepspeed, 'global_step8'), { recursive: true });
    copyFileSync(join(noOptimizer, 'model.safetensors'), join(deepspeed, 'model.safetensors'));
    writeFileSync(join(deepspeed, 'latest'), 'global_step8');
    writeFileSync(join(deepspeed, 'global_step8', 'bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt'), 'x');
    writeFileSync(join(deepspeed, 'global_step8', 'mp_rank_00_model_states.pt'), 'x');
    const cases: [string, RegExp][] = [
      [empty, /^excp: notice: \S*empty is an empty folder: the container holds no files/],
      [noOptimizer, /^excp: notice: \S*no-optimizer: the method was not applied, every tensor is coded exactly: found no optimizer state \(weights only/],
      [oldPickle, /^excp: notice: \S*old-pickle: the method was not applied, every tensor is coded exactly: found an optimizer\.pt in torch's old \(non-zip\) pickle format/],
      [deepspeed, /^excp: notice: \S*deepspeed: the method was not applied, every tensor is coded exactly: found a DeepSpeed ZeRO checkpoint \(global_step8\/: 1 optimizer partition/],
      [join(fixtures, 'base-check', 'run1-step100.safetensors'), /^excp: notice: \S*run1-step100\.safetensors: no tensor has its Adam moments/],
    ];
    // A distributed checkpoint folder gets the method (lib/formats/dcp/): no notice.
    const quiet = [join(fixtures, 'torch', 'fp32', 'checkpoint-8'), join(fixtures, 'dcp', 'accelerate', 'checkpoint-8')];
    const results = await Promise.all([...cases.map(([input]) => input), ...quiet].map((input) => shell(`${excp} compress '${input}' -o /dev/null`)));
    cases.forEach(([input, notice], i) => {
      const r = results[i]!;
      assert.equal(r.status, 0, `${input}: ${r.stderr}`);
      assert.match(r.stderr, notice);
      assert.equal(r.stderr.split('\n').length, 2, r.stderr);
    });
    // A checkpoint the method applies to says nothing.
    quiet.forEach((input, i) => assert.equal(results[cases.length + i]!.stderr, '', input));
  });

  it('a folder against a base of another dtype, or against itself: one line saying the base looks wrong', () => {
    const fp32 = join(fixtures, 'torch', 'fp32', 'checkpoint-8');
    const dtype = run(['compress', fp32, '--base', join(fixtures, 'torch', 'bf16', 'checkpoint-4'), '-o', '-']);
    assert.equal(dtype.status, 1);
    assert.match(dtype.stderr, /^excp: compress: \S+bf16\/checkpoint-4 does not look like an earlier checkpoint of this run: none of the checkpoint's \d+ weights is in it with the same name, dtype and shape \('embed\.weight' is F32 \[40, 12\], the base has BF16 \[40, 12\]\)/);
    const itself = run(['compress', fp32, '--base', fp32, '-o', '-']);
    assert.equal(itself.status, 1);
    assert.match(itself.stderr, /^excp: compress: \S+ holds the same weights as \S+ \(the same checkpoint\?\)/);
    for (const r of [dtype, itself]) assert.ok(r.stderr.length < 600 && r.stderr.split('\n').length === 2, r.stderr);
  });

  it('restore --tensor: only the tensors asked for, from their records; inspect --names lists them', async () => {
    const names = run(['inspect', container, '--names']).stdout.toString().trim().split('\n');
    assert.deepEqual(names, parseSafetensors(pair.current).tensors.map((t) => t.name).sort((x, y) => parseSafetensors(pair.current).tensors.findIndex((t) => t.name === x) - parseSafetensors(pair.current).tensors.findIndex((t) => t.name === y)));
    const full = parseSafetensors(await restoreBuffer(new Uint8Array(readFileSync(container)), pair.previous)).tensors;
    const big = full.filter((t) => !t.name.includes('.exp_avg') && t.dtype === 'F32').sort((x, y) => y.data.length - x.data.length)[0]!;
    const out = join(dir, 'some.safetensors');
    const r = run(['restore', container, '--base', prev, '--tensor', big.name, '--tensor', 'buffers.running_mean', '--with-moments', '-o', out]);
    assert.equal(r.status, 0, r.stderr);
    const got = parseSafetensors(new Uint8Array(readFileSync(out)));
    assert.deepEqual(got.tensors.map((t) => t.name).sort(), ['buffers.running_mean', big.name, `${big.name}.exp_avg`, `${big.name}.exp_avg_sq`].sort());
    for (const t of got.tensors) assert.ok(sameBytes(t.data, full.find((f) => f.name === t.name)!.data), t.name);
    assert.deepEqual(got.metadata, parseSafetensors(pair.current).metadata);
    // To stdout too, and only the records of that entry are read.
    const piped = run(['restore', container, '--base', prev, '--tensor', big.name, '-o', '-']);
    assert.ok(sameBytes(parseSafetensors(new Uint8Array(piped.stdout)).tensors[0]!.data, big.data));
    // This container is small, so it keeps no per-tensor hashes (they would
    // take over 1% of it): the other entries are decoded too, into nothing,
    // and the whole fingerprint is checked.
    const result = await restoreTensors(container, [big.name], join(dir, 'one.safetensors'), { base: prev });
    assert.equal(result.records, (await verifyContainer(container, prev)).chunks);
    assert.equal(result.hashed, true);
    // One with per-tensor hashes reads only the records of the entry asked for.
    const large = randomCheckpointPair(5, { params: 3, maxElements: 60000 });
    const largePrev = join(dir, 'large-prev.safetensors');
    const largeContainer = join(dir, 'large.excp');
    writeFileSync(largePrev, large.previous);
    writeFileSync(join(dir, 'large.safetensors'), large.current);
    assert.equal(run(['compress', join(dir, 'large.safetensors'), '--base', largePrev, '-o', largeContainer, '--chunk', '4096']).status, 0);
    const first = parseSafetensors(large.current).tensors[0]!;
    const one = await restoreTensors(largeContainer, [first.name], join(dir, 'large-one.safetensors'), { base: largePrev });
    assert.equal(one.records, Math.ceil(first.data.length / 4 / 4096));
    assert.ok(one.records < (await verifyContainer(largeContainer, largePrev)).chunks);
    // Mistakes: an unknown name, a pipe as input, --with-moments alone.
    const unknown = run(['restore', container, '--base', prev, '--tensor', 'nope', '-o', join(dir, 'nope.st')]);
    assert.equal(unknown.status, 1);
    assert.equal(unknown.stderr, `excp: ${container}: restore: the container holds no tensor 'nope' (excp inspect --names lists them)\n`);
    assert.equal(run(['restore', '--tensor', big.name, '-o', join(dir, 'x.st')], readFileSync(container)).status, 2);
    assert.equal(run(['restore', container, '--with-moments', '-o', join(dir, 'x.st')]).status, 2);
    assert.equal(run(['restore', container, '--tensor', big.name, '-o', join(dir, 'x.st')]).status, 1, 'a residual needs its base');
  });

  it(`a checkpoint of more than ${MAX_TENSORS} tensors is refused at once, with the count`, () => {
    const entries: string[] = [];
    for (let i = 0; i <= MAX_TENSORS; i++) entries.push(`"t${i}":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`);
    const json = Buffer.from(`{${entries.join(',')}}`);
    const head = Buffer.alloc(8);
    head.writeBigUInt64LE(BigInt(json.length));
    const path = join(dir, 'many.safetensors');
    writeFileSync(path, Buffer.concat([head, json]));
    const r = run(['compress', path, '-o', join(dir, 'many.excp')]);
    assert.equal(r.status, 1);
    assert.equal(r.stderr, `excp: ${path}: safetensors: the header lists ${MAX_TENSORS + 1} tensors, more than the ${MAX_TENSORS} excp reads (its memory grows with the count, about 2 KB a tensor)\n`);
  });

  it('compare names the file of a folder that holds each tensor that differs, in its report and its limit message', async () => {
    const fp32 = join(fixtures, 'torch', 'fp32');
    const x = join(dir, 'folder.excp');
    const back = join(dir, 'folder-restored');
    await writeAtomically(x, (out) => compressTo(join(fp32, 'checkpoint-8'), out, { base: join(fp32, 'checkpoint-4'), threads: 0 }));
    await restoreToFolder(x, back, { base: join(fp32, 'checkpoint-4'), threads: 0 });
    const r = run(['compare', join(fp32, 'checkpoint-8'), back, '--top', '3', '--max-moment-error', '0.5']);
    assert.equal(r.status, 3);
    assert.match(r.stdout.toString(), /other tensors and files \(compared bit for bit\): 1 of \d+ differ: optimizer\.pt\n/);
    assert.match(r.stdout.toString(), /^ +[\d.]+%  __optimizer__\/\d+\/exp_avg(_sq)? in optimizer\.pt \(F32, /m);
    assert.match(r.stderr, /^excp: compare: exp_avg(_sq)? '__optimizer__\/\d+\/exp_avg(_sq)?' in optimizer\.pt has a relative error of [\d.]+, above --max-moment-error 0\.5\n$/);
    // --top 0: the count alone, no empty list of names.
    assert.match(run(['compare', join(fp32, 'checkpoint-8'), back, '--top', '0']).stdout.toString(), /other tensors and files \(compared bit for bit\): 1 of \d+ differ\n/);
    // A weight's error is of its update's size (a bias near 0 is mostly update): within 1 of the weight.
    assert.equal(run(['compare', join(fp32, 'checkpoint-8'), back, '--max-weight-error', '1', '--quiet']).status, 0);
  });

  it('--help lists the exit statuses, the new options and their repeatability', () => {
    const help = run(['--help']).stdout.toString();
    for (const line of [/^ {2}0 +success/m, /^ {2}1 +failure/m, /^ {2}2 +bad usage/m, /^ {2}3 +compare/m, /^ {2}141 +the reader of stdout went away/m]) assert.match(help, line);
    const restore = run(['restore', '--help']).stdout.toString();
    assert.match(restore, /--tensor NAME +restore only this tensor.*\(repeatable\)/);
    assert.match(restore, /--tmp DIR/);
    assert.match(run(['compare', '--help']).stdout.toString(), /--max-moment-error E/);
    assert.equal(run(['restore', container, '--tensor', 'a', '--tensor', 'b', '--json']).status, 2);
  });
});
