/**
 * Chains (lib/chain.ts, `excp chain`): a real training run from the example
 * trainer, compressed as a chain with keyframes; every step restored through
 * the command line equals the by-hand closed-loop replay; broken links are
 * refused with ERR_CHAIN; append works, also when the kept last checkpoint is gone.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, unlinkSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { appendToChain, createChain, readManifest, restoreChainStep, CHAIN_MANIFEST, type ChainManifest } from '../lib/chain.js';
import { compressBuffer, restoreBuffer, writeAtomically } from '../lib/pipeline.js';
import { createTrainer } from '../examples/train/trainer.js';
import { readContainerIndex } from '../lib/inspect.js';
import { ExcpError } from '../lib/errors.js';
import { sameBytes } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const STEPS = 12;

/** Run lib/cli.ts through tsx (no build needed), in-process threads only. */
function cli(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(root, 'lib', 'cli.ts'), ...args, '--threads', '0', '--quiet'], { cwd: root });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** The ExcpError an async call rejects with. */
async function errorOf(fn: () => Promise<unknown>): Promise<ExcpError> {
  try {
    await fn();
  } catch (err) {
    assert.ok(err instanceof ExcpError, `expected ExcpError, got ${String(err)}`);
    return err;
  }
  return assert.fail('expected an error');
}

async function inBatches<T>(items: T[], size: number, run: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(run));
}

/** The closed-loop replay by hand: each container restored against the previous restored step. */
async function replayByHand(dir: string, manifest: ChainManifest): Promise<Uint8Array[]> {
  const restored: Uint8Array[] = [];
  for (const s of manifest.steps) {
    const base = s.keyframe ? undefined : restored[s.step - 1];
    restored.push(await restoreBuffer(readFileSync(join(dir, s.file)), base));
  }
  return restored;
}

describe('excp chain', { concurrency: false }, () => {
  let work = '';
  const checkpoints: string[] = [];
  before(() => {
    work = mkdtempSync(join(tmpdir(), 'excp-chain-spec-'));
    const trainer = createTrainer({ params: '20k', batchSize: 8, totalSteps: 2 * STEPS, evalSamples: 16, seed: 7 });
    for (let i = 0; i < STEPS; i++) {
      trainer.step();
      const path = join(work, `ckpt-${String(i).padStart(3, '0')}.safetensors`);
      writeFileSync(path, trainer.saveCheckpoint());
      checkpoints.push(path);
    }
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  it('compresses a run, appends, and restores every step exactly as the by-hand replay', async () => {
    const dir = join(work, 'run');
    const created = await createChain(dir, checkpoints.slice(0, STEPS - 2), { keyframeEvery: 4, threads: 0 });
    assert.equal(created.steps.length, STEPS - 2);
    // Append through the library, then through the command line.
    await appendToChain(dir, [checkpoints[STEPS - 2]!], { threads: 0 });
    const appended = await cli(['chain', 'append', dir, checkpoints[STEPS - 1]!]);
    assert.equal(appended.status, 0, appended.stderr);
    const manifest = await readManifest(dir);
    assert.equal(manifest.steps.length, STEPS);
    assert.deepEqual(manifest.steps.filter((s) => s.keyframe).map((s) => s.step), [0, 4, 8]);
    assert.deepEqual(manifest.steps.map((s) => s.base), manifest.steps.map((s) => (s.step % 4 === 0 ? null : s.step - 1)));
    for (const s of manifest.steps) assert.ok(s.containerBytes < s.originalBytes, `step ${s.step} is not smaller`);

    const byHand = await replayByHand(dir, manifest);
    // The kept last checkpoint is the closed-loop restore of the last step.
    assert.ok(sameBytes(readFileSync(join(dir, manifest.last!)), byHand[STEPS - 1]!));
    for (const s of manifest.steps) {
      const out = join(work, `lib-restored-${s.step}.safetensors`);
      await writeAtomically(out, (o) => restoreChainStep(dir, s.step, o, { threads: 0 }));
      assert.ok(sameBytes(readFileSync(out), byHand[s.step]!), `step ${s.step} differs from the by-hand replay`);
    }
    // The command line, on a keyframe, residuals in the middle and the last step.
    await inBatches([0, 3, 6, STEPS - 1], 2, async (step) => {
      const out = join(work, `restored-${step}.safetensors`);
      const r = await cli(['chain', 'restore', dir, '--step', String(step), '-o', out]);
      assert.equal(r.status, 0, r.stderr);
      assert.ok(sameBytes(readFileSync(out), byHand[step]!), `step ${step} differs from the by-hand replay`);
    });
    const ls = await cli(['chain', 'ls', dir]);
    assert.equal(ls.status, 0, ls.stderr);
    assert.match(ls.stdout, /^11\tresidual of 10\tckpt-011\.safetensors\t/m);
    assert.match(ls.stdout, /12 steps, keyframe every 4/);
  });

  it('refuses a swapped base with ERR_CHAIN, naming the tensor', async () => {
    const good = join(work, 'run');
    const dir = join(work, 'swapped');
    cpSync(good, dir, { recursive: true });
    const manifest = await readManifest(dir);
    const byHand = await replayByHand(dir, manifest);
    // Step 6 remade against restored step 4 instead of step 5.
    const wrong = await compressBuffer(readFileSync(checkpoints[6]!), byHand[4], manifest.options);
    writeFileSync(join(dir, manifest.steps[6]!.file), wrong);

    // The container is not the one chain.json recorded.
    const r1 = await cli(['chain', 'restore', dir, '--step', '7', '-o', join(work, 'x.safetensors')]);
    assert.equal(r1.status, 1);
    assert.match(r1.stderr, /^excp: chain: step 6 \(step-000006\.excp\) is not the container chain\.json recorded/);
    assert.ok(!existsSync(join(work, 'x.safetensors')), 'a failed restore leaves no output');

    // chain.json rewritten to match: the link itself is broken.
    const index = JSON.parse(readFileSync(join(dir, CHAIN_MANIFEST), 'utf8')) as ChainManifest;
    writeFileSync(join(work, 'wrong.excp'), wrong);
    const wrongFooter = (await readContainerIndex(join(work, 'wrong.excp'))).footer;
    index.steps[6]!.baseFingerprint = wrongFooter.baseFingerprint;
    index.steps[6]!.targetFingerprint = wrongFooter.targetFingerprint;
    writeFileSync(join(dir, CHAIN_MANIFEST), JSON.stringify(index));
    const r2 = await cli(['chain', 'restore', dir, '--step', '6', '-o', join(work, 'x.safetensors')]);
    assert.equal(r2.status, 1);
    assert.match(r2.stderr, /^excp: chain: step 6 \(step-000006\.excp\) was made against a different base: tensor '[^']+' has base hash [0-9a-f]{16}, but step 5 restores it with hash [0-9a-f]{16}/);
    const sink = new Writable({ write(_c, _e, cb) { cb(); } });
    assert.equal((await errorOf(() => restoreChainStep(dir, 7, sink, { threads: 0 }))).code, 'ERR_CHAIN');
    // Steps before the break, and after the next keyframe, still restore.
    await restoreChainStep(dir, 9, sink, { threads: 0 });
    await writeAtomically(join(work, 'five.safetensors'), (out) => restoreChainStep(dir, 5, out, { threads: 0 }));
    assert.ok(sameBytes(readFileSync(join(work, 'five.safetensors')), byHand[5]!));
    // Restoring the wrong container by hand against the real previous step: the codec's own check.
    const mismatch = await errorOf(() => restoreBuffer(wrong, byHand[5]));
    assert.match(mismatch.message, /tensor|'/);
    assert.equal(mismatch.code, 'ERR_BASE_MISMATCH');
  });

  it('rebuilds the kept last checkpoint when it is missing, and refuses bad usage', async () => {
    const dir = join(work, 'short');
    await createChain(dir, checkpoints.slice(0, 3), { keyframeEvery: 10, threads: 0 });
    const first = await readManifest(dir);
    unlinkSync(join(dir, first.last!));
    await appendToChain(dir, [checkpoints[3]!], { threads: 0 });
    const manifest = await readManifest(dir);
    const byHand = await replayByHand(dir, manifest);
    assert.ok(sameBytes(readFileSync(join(dir, manifest.last!)), byHand[3]!));
    // Appending when the kept last checkpoint was tampered with is refused, and leaves nothing behind.
    writeFileSync(join(dir, manifest.last!), byHand[2]!);
    const tampered = await errorOf(() => appendToChain(dir, [checkpoints[4]!], { threads: 0 }));
    assert.equal(tampered.code, 'ERR_CHAIN');
    assert.match(tampered.message, /step 4 \(step-000004\.excp\) was made against a different base/);
    assert.ok(!existsSync(join(dir, 'step-000004.excp')), 'a refused append leaves no container');
    assert.equal((await readManifest(dir)).steps.length, 4);
    writeFileSync(join(dir, manifest.last!), byHand[3]!);
    assert.equal((await errorOf(() => createChain(dir, checkpoints.slice(0, 1), { threads: 0 }))).code, 'ERR_EXISTS');
    assert.equal((await errorOf(() => createChain(join(work, 'k0'), checkpoints.slice(0, 1), { keyframeEvery: 0 }))).code, 'ERR_OUT_OF_RANGE');
    const missing = await cli(['chain', 'restore', dir, '--step', '4', '-o', join(work, 'y.safetensors')]);
    assert.equal(missing.status, 1);
    assert.match(missing.stderr, /no step 4 \(the chain has steps 0\.\.3\)/);
    const notChain = await cli(['chain', 'ls', work]);
    assert.equal(notChain.status, 1);
    assert.match(notChain.stderr, /is .* a chain folder\?/);
    const usage = await cli(['chain', 'append', dir, '--bits', '3', checkpoints[4]!]);
    assert.equal(usage.status, 2);
  });

  it('a lossless chain restores every checkpoint bit for bit', async () => {
    const dir = join(work, 'lossless');
    const manifest = await createChain(dir, checkpoints.slice(0, 4), { keyframeEvery: 3, lossless: true, threads: 0 });
    const byHand = await replayByHand(dir, manifest);
    byHand.forEach((bytes, i) => assert.ok(sameBytes(bytes, readFileSync(checkpoints[i]!)), `step ${i} is not exact`));
  });
});
