/**
 * Chains through the built command (dist/lib/cli.js): every byte a chain
 * takes on disk is what `chain ls` reports, the restored last step kept in
 * the chain folder, in a folder of its own (--cache DIR) or not at all
 * (--no-cache, rebuilt by replay); a failed create leaves nothing; the same
 * checkpoint twice and another model are refused in one line; a held lock
 * is waited for with --wait [SECONDS].
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createTrainer } from '../examples/train/trainer.js';
import { CHAIN_LOCK, readManifest, stepCoding, type ChainManifest } from '../lib/chain/chain.js';
import { checkSameModel } from '../lib/chain/identity.js';
import { restoreBuffer } from '../lib/api/restore.js';
import { runNode, sameBytes } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const bin = join(root, 'dist', 'lib', 'cli.js');

/** Run the built CLI. */
function excp(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return runNode([bin, ...args], root);
}

/** Every file under a path with its size (what `du -b` counts, less folders). */
function bytesUnder(path: string): number {
  if (!existsSync(path)) return 0;
  const info = lstatSync(path);
  if (!info.isDirectory()) return info.size;
  return readdirSync(path).reduce((n, name) => n + bytesUnder(join(path, name)), 0);
}

/** The closed-loop replay by hand: each container restored against the previous restored step. */
async function replayByHand(dir: string, manifest: ChainManifest): Promise<Uint8Array[]> {
  const restored: Uint8Array[] = [];
  for (const s of manifest.steps) restored.push(await restoreBuffer(readFileSync(join(dir, s.file)), s.keyframe ? undefined : restored[s.step - 1]));
  return restored;
}

interface LsJson extends ChainManifest {
  summary: { originalBytes: number; ratio: number; disk: { total: number; cache: number; containers: number; manifest: number; other: number; cachePath: string | null };
    keyframes: { ratio: number }; residuals: { ratio: number; lowest: number; highest: number } };
}

async function ls(dir: string): Promise<{ text: string; json: LsJson }> {
  const [text, json] = await Promise.all([excp(['chain', 'ls', dir]), excp(['chain', 'ls', dir, '--json'])]);
  assert.equal(text.status, 0, text.stderr);
  assert.equal(json.status, 0, json.stderr);
  return { text: text.stdout, json: JSON.parse(json.stdout) as LsJson };
}

describe('excp chain: disk, cache, all-or-nothing create, refusals, --wait', { concurrency: false }, () => {
  let work = '';
  const ckpts: string[] = [];
  const Q = ['--threads', '0', '--quiet'];
  before(() => {
    assert.ok(existsSync(bin), `${bin} missing: run npm run build`);
    work = mkdtempSync(join(tmpdir(), 'excp-chain-disk-'));
    const trainer = createTrainer({ params: '20k', batchSize: 8, totalSteps: 16, evalSamples: 16, seed: 11 });
    for (let i = 0; i < 6; i++) {
      trainer.step();
      ckpts.push(join(work, `ckpt-${i}.safetensors`));
      writeFileSync(ckpts[i]!, trainer.saveCheckpoint());
    }
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  it('the kept last step in the chain folder (--cache on the chain folder) is counted: chain ls reports every byte on disk and the run ratio', async () => {
    const dir = join(work, 'default.chain');
    const made = await excp(['chain', dir, ...ckpts.slice(0, 4), '--keyframe-every', '3', '--cache', dir, ...Q]);
    assert.equal(made.status, 0, made.stderr);
    const manifest = await readManifest(dir);
    assert.equal(manifest.cache, '.');
    assert.ok(existsSync(join(dir, manifest.last!)));
    const { text, json } = await ls(dir);
    const onDisk = bytesUnder(dir);
    const raw = ckpts.slice(0, 4).reduce((n, p) => n + lstatSync(p).size, 0);
    assert.equal(json.summary.disk.total, onDisk, 'every file of the folder is counted');
    assert.equal(json.summary.disk.cache, lstatSync(join(dir, manifest.last!)).size);
    assert.equal(json.summary.originalBytes, raw);
    assert.ok(Math.abs(json.summary.ratio - raw / onDisk) < 1e-9);
    assert.equal(json.steps.length, 4, 'the JSON keeps chain.json fields');
    assert.match(text, new RegExp(`^on disk: ${onDisk} bytes = containers \\d+ \\+ chain\\.json \\d+ \\+ kept last step ${json.summary.disk.cache} \\(\\.last-000003\\.safetensors in the chain folder\\) \\+ other 0$`, 'm'));
    assert.match(text, new RegExp(`^run: ${raw} bytes of checkpoints -> ${onDisk} bytes on disk, ratio ${(raw / onDisk).toFixed(1)}x \\(containers alone \\d+\\.\\dx\\)$`, 'm'));
    assert.match(text, /^keyframes: 2 steps, \d+ -> \d+ bytes, \d+\.\dx \(/m);
    assert.match(text, /^residuals: 2 steps, \d+ -> \d+ bytes, \d+\.\dx \(\d+\.\dx to \d+\.\dx per step\)$/m);
    // A file put there by hand is counted too, as other.
    writeFileSync(join(dir, 'notes.txt'), 'hello');
    assert.equal((await ls(dir)).json.summary.disk.other, 5);
    assert.match((await ls(dir)).text, /\+ other 5 \(notes\.txt\)$/m);
  });

  it('--cache DIR keeps the restored step outside the chain, counted; --no-cache keeps none and an append rebuilds it by replay', async () => {
    const cache = join(work, 'scratch');
    const outside = join(work, 'outside.chain');
    const none = join(work, 'none.chain');
    const [a, b] = await Promise.all([
      excp(['chain', outside, ...ckpts.slice(0, 3), '--keyframe-every', '3', '--cache', cache, ...Q]),
      excp(['chain', none, ...ckpts.slice(0, 3), '--keyframe-every', '3', '--no-cache', ...Q]),
    ]);
    assert.equal(a.status, 0, a.stderr);
    assert.equal(b.status, 0, b.stderr);
    // --cache: nothing hidden in the chain folder; the kept step is in DIR under the chain's name.
    assert.deepEqual(readdirSync(outside).filter((f) => f.startsWith('.')), []);
    const kept = readdirSync(cache);
    assert.equal(kept.length, 1);
    assert.match(kept[0]!, /^outside\.chain-[0-9a-f]{8}\.last-000002\.safetensors$/);
    const out = await ls(outside);
    assert.equal(out.json.summary.disk.total, bytesUnder(outside) + bytesUnder(cache));
    assert.equal(out.json.summary.disk.cachePath, join(cache, kept[0]!));
    // --no-cache: no restored step anywhere after the command.
    assert.deepEqual(readdirSync(none).filter((f) => f.startsWith('.')), []);
    const noneManifest = await readManifest(none);
    assert.equal(noneManifest.cache, null);
    assert.equal(noneManifest.last, null);
    const noneLs = await ls(none);
    assert.equal(noneLs.json.summary.disk.total, bytesUnder(none));
    assert.equal(noneLs.json.summary.disk.cache, 0);
    assert.match(noneLs.text, /\+ kept last step 0 \(none kept: an append replays from the last keyframe; --cache DIR keeps one\) \+/);

    // Appends: step 3 is a keyframe, step 4 a residual (--no-cache rebuilds step 3 by replay first).
    for (const dir of [outside, none]) {
      const r = await excp(['chain', 'append', dir, ckpts[3]!, ckpts[4]!, ...Q]);
      assert.equal(r.status, 0, r.stderr);
    }
    const r = await excp(['chain', 'append', none, ckpts[5]!, ...Q]);
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(readdirSync(none).filter((f) => f.startsWith('.')), [], '--no-cache is remembered');
    assert.deepEqual(readdirSync(cache), [kept[0]!.replace('000002', '000004')], 'the old kept step is replaced');
    // Both chains restore as the by-hand closed loop, and as each other (same containers).
    const outsideManifest = await readManifest(outside);
    const byHand = await replayByHand(outside, outsideManifest);
    assert.ok(sameBytes(readFileSync(join(cache, outsideManifest.last!)), byHand[4]!));
    const noneHand = await replayByHand(none, await readManifest(none));
    for (let s = 0; s < 5; s++) assert.ok(sameBytes(noneHand[s]!, byHand[s]!), `step ${s}: --no-cache codes the same as a kept step`);

    // --cache on an append moves the kept step there and is remembered.
    const moved = join(work, 'moved');
    const m = await excp(['chain', 'append', outside, ckpts[5]!, '--cache', moved, ...Q]);
    assert.equal(m.status, 0, m.stderr);
    assert.deepEqual(readdirSync(cache), []);
    assert.equal(readdirSync(moved).length, 1);
    assert.equal((await readManifest(outside)).cache, moved);
    const conflict = await excp(['chain', 'append', outside, ckpts[5]!, '--cache', moved, '--no-cache']);
    assert.equal(conflict.status, 2);
  });

  it('a create that fails at step 1 leaves nothing, and the same command then works', async () => {
    const dir = join(work, 'retry.chain');
    const broken = join(work, 'broken.safetensors');
    writeFileSync(broken, readFileSync(ckpts[1]!).subarray(0, 1000)); // truncated
    const args = ['chain', dir, ckpts[0]!, broken, ckpts[2]!, ...Q];
    const failed = await excp(args);
    assert.equal(failed.status, 1);
    assert.equal(failed.stderr.trim().split('\n').length, 1, failed.stderr);
    assert.ok(!existsSync(dir), 'nothing left: not even the folder it made');
    // A folder that existed keeps only what was there before.
    mkdirSync(dir);
    writeFileSync(join(dir, 'README'), 'mine');
    assert.equal((await excp(args)).status, 1);
    assert.deepEqual(readdirSync(dir), ['README']);
    writeFileSync(broken, readFileSync(ckpts[1]!));
    const retried = await excp(args);
    assert.equal(retried.status, 0, retried.stderr);
    assert.equal((await readManifest(dir)).steps.length, 3);
  });

  it('the same checkpoint twice is refused by fingerprint, another model naming a tensor, each in one line', async () => {
    const dir = join(work, 'refuse.chain');
    assert.equal((await excp(['chain', dir, ckpts[0]!, ckpts[1]!, ...Q])).status, 0);
    const copy = join(work, 'copy-of-1.safetensors');
    writeFileSync(copy, readFileSync(ckpts[1]!));
    const again = await excp(['chain', 'append', dir, copy, ...Q]);
    assert.equal(again.status, 1);
    assert.match(again.stderr, /^excp: chain: \S+copy-of-1\.safetensors is already in the chain as step 1 \(ckpt-1\.safetensors, same content: fingerprint [0-9a-f]{16}\); a chain holds each checkpoint once\n$/);
    const twice = await excp(['chain', join(work, 'twice.chain'), ckpts[0]!, ckpts[2]!, copy, ckpts[1]!, ...Q]);
    assert.equal(twice.status, 1);
    assert.match(twice.stderr, /^excp: chain: \S+ckpt-1\.safetensors has the same content as \S+copy-of-1\.safetensors, given before it/);
    assert.ok(!existsSync(join(work, 'twice.chain')));

    const other = join(work, 'other-model.safetensors');
    const trainer = createTrainer({ params: '40k', batchSize: 8, totalSteps: 4, evalSamples: 16, seed: 11 });
    trainer.step();
    writeFileSync(other, trainer.saveCheckpoint());
    const model = await excp(['chain', 'append', dir, other, ...Q]);
    assert.equal(model.status, 1);
    assert.match(model.stderr, /^excp: chain: \S+other-model\.safetensors is another model than step 1 \(ckpt-1\.safetensors\): tensor '[^']+' is F32 \[[\d, ]+\] in it, F32 \[[\d, ]+\] in the chain \(a chain holds one model; start a new chain for another\)\n$/);
    assert.equal((await readManifest(dir)).steps.length, 2, 'nothing appended');
    assert.deepEqual(readdirSync(dir).sort(), ['chain.json', 'step-000000.excp', 'step-000001.excp'], 'no restored step kept by default');
  });

  it('a held lock fails at once naming --wait; --wait SECONDS gives up after them; --wait alone waits until it is free', async () => {
    const dir = join(work, 'wait.chain');
    assert.equal((await excp(['chain', dir, ckpts[0]!, ...Q])).status, 0);
    const lock = join(dir, CHAIN_LOCK);
    const holder = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
    try {
      writeFileSync(lock, `${holder.pid}\n`);
      const now = await excp(['chain', 'append', dir, ckpts[1]!, ...Q]);
      assert.equal(now.status, 1);
      assert.match(now.stderr, new RegExp(`^excp: chain: chain is locked by pid ${holder.pid} \\(\\S+\\): another 'excp chain' create or append is running on \\S+; wait for it with --wait \\[SECONDS\\], or, if no such process runs, remove \\S+\\n$`));
      const started = Date.now();
      const timed = await excp(['chain', 'append', dir, ckpts[1]!, '--wait', '0.5', ...Q]);
      assert.equal(timed.status, 1);
      assert.ok(Date.now() - started >= 500);
      assert.match(timed.stderr, /still held after waiting 0\.\d s/);
      // --wait alone (a checkpoint path after it is not its value): released while it waits.
      const waiting = excp(['chain', 'append', dir, '--wait', ckpts[1]!, ...Q]);
      setTimeout(() => unlinkSync(lock), 600);
      const waited = await waiting;
      assert.equal(waited.status, 0, waited.stderr);
      assert.equal((await readManifest(dir)).steps.length, 2);
    } finally {
      holder.kill();
    }
    const bad = await excp(['chain', 'append', dir, ckpts[2]!, '--wait=-1']);
    assert.equal(bad.status, 2);
  });

  it('checkSameModel names a tensor the chain lacks, one the checkpoint lacks, and ignores moments and folder entries', () => {
    const t = (name: string, shape = [2, 3], dtype = 'F32') => ({ name, dtype, shape });
    const chain = [t('a'), t('a.exp_avg'), t('a.exp_avg_sq'), t('b', [4]), t('__file__/optimizer.pt', [99], 'U8')];
    const labels = { previous: 'step 3 (x)', current: 'new' };
    checkSameModel(chain, [t('a'), t('b', [4]), t('__optimizer__/0/exp_avg'), t('__file__/optimizer.pt', [7], 'U8')], labels);
    assert.throws(() => checkSameModel(chain, [t('a'), t('b', [4]), t('c')], labels), /^ExcpError: chain: new is another model than step 3 \(x\): tensor 'c' \(F32 \[2, 3\]\) is not in the chain's model/);
    assert.throws(() => checkSameModel(chain, [t('a')], labels), /: it has no tensor 'b' \(F32 \[4\] in the chain\)/);
    assert.throws(() => checkSameModel(chain, [t('a', [2, 3], 'BF16'), t('b', [4])], labels), /tensor 'a' is BF16 \[2, 3\] in it, F32 \[2, 3\] in the chain/);
  });

  it('stepCoding is the one place that says which steps are keyframes and what they pass to compress', async () => {
    const manifest = await readManifest(join(work, 'default.chain'));
    assert.deepEqual([0, 1, 2, 3, 4, 6].map((i) => stepCoding(manifest, i).keyframe), [true, false, false, true, false, true]);
    assert.deepEqual(stepCoding(manifest, 1).options, manifest.options);
  });
});
