/**
 * Chains (lib/chain.ts, `excp chain`): a real training run from the example
 * trainer, compressed as a chain with keyframes; every step restored through
 * the command line equals the by-hand closed-loop replay; broken links are
 * refused with ERR_CHAIN; append works, also when the kept last checkpoint is gone.
 * Chains of PyTorch / Hugging Face checkpoint folders (the committed fixture
 * folders), one kind per chain, and the chain lock (chain.lock).
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, unlinkSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { appendToChain, createChain, readManifest, restoreChainStep, restoreChainStepToFolder, CHAIN_LOCK, CHAIN_MANIFEST, type ChainManifest } from '../lib/chain/chain.js';
import { writeAtomically } from '../lib/io/output.js';
import { createTrainer } from '../examples/train/trainer.js';
import { ExcpError } from '../lib/core/errors.js';
import { runNode, sameBytes } from './helpers.js';
import { compressBuffer, compressTo } from '../lib/api/compress.js';
import { restoreBuffer, restoreToFolder } from '../lib/api/restore.js';
import { readContainerFile } from '../lib/api/open.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const STEPS = 12;

/** Run lib/cli.ts through tsx (no build needed), in-process threads only. */
function cli(args: string[]): Promise<{ status: number | null; stdout: string; stderr: string }> {
  // Every chain command but ls takes --threads and --quiet (ls takes neither: a usage error).
  const extra = args[1] === 'ls' ? [] : ['--threads', '0', '--quiet'];
  return runNode(['--import', 'tsx', join(root, 'lib', 'cli.ts'), ...args, ...extra], root);
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
    const created = await createChain(dir, checkpoints.slice(0, STEPS - 2), { keyframeEvery: 4, threads: 0, cache: dir });
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
    // Step 6 remade against restored step 4 instead of step 5, with hashes as excp chain writes them.
    const wrong = await compressBuffer(readFileSync(checkpoints[6]!), byHand[4], { ...manifest.options, tensorHashes: 'always' });
    writeFileSync(join(dir, manifest.steps[6]!.file), wrong);

    // The container is not the one chain.json recorded.
    const r1 = await cli(['chain', 'restore', dir, '--step', '7', '-o', join(work, 'x.safetensors')]);
    assert.equal(r1.status, 1);
    assert.match(r1.stderr, /^excp: chain: step 6 \(step-000006\.excp\) is not the container chain\.json recorded/);
    assert.ok(!existsSync(join(work, 'x.safetensors')), 'a failed restore leaves no output');

    // chain.json rewritten to match: the link itself is broken.
    const index = JSON.parse(readFileSync(join(dir, CHAIN_MANIFEST), 'utf8')) as ChainManifest;
    writeFileSync(join(work, 'wrong.excp'), wrong);
    const wrongFooter = (await readContainerFile(join(work, 'wrong.excp'))).footer;
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

    // The same container without per-tensor hashes (what a plain compress of this small model writes):
    // no link to check ahead, and the replay still refuses it, at the first base chunk.
    const bare = await compressBuffer(readFileSync(checkpoints[6]!), byHand[4], manifest.options);
    writeFileSync(join(work, 'bare.excp'), bare);
    const bareFooter = (await readContainerFile(join(work, 'bare.excp'))).footer;
    assert.equal(bareFooter.tensorHashes, null, 'a small container leaves its hashes out');
    writeFileSync(join(dir, manifest.steps[6]!.file), bare);
    index.steps[6]!.baseFingerprint = bareFooter.baseFingerprint;
    index.steps[6]!.targetFingerprint = bareFooter.targetFingerprint;
    writeFileSync(join(dir, CHAIN_MANIFEST), JSON.stringify(index));
    const r3 = await cli(['chain', 'restore', dir, '--step', '6', '-o', join(work, 'x.safetensors')]);
    assert.equal(r3.status, 1);
    assert.match(r3.stderr, /^excp: chain: step 6 \(step-000006\.excp\) does not restore against the previous step: restore: tensor '[^']+': the base differs from the one used at compression/);
    assert.ok(!existsSync(join(work, 'x.safetensors')), 'a failed restore leaves no output');
  });

  it('rebuilds the kept last checkpoint when it is missing, and refuses bad usage', async () => {
    const dir = join(work, 'short');
    await createChain(dir, checkpoints.slice(0, 3), { keyframeEvery: 10, threads: 0, cache: dir });
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

const FIXTURES = fileURLToPath(new URL('./fixtures/torch/', import.meta.url));
const reference = JSON.parse(readFileSync(join(FIXTURES, 'reference.json'), 'utf8')) as { runs: Record<'fp32' | 'bf16', { param_order: string[] }> };

/** Every file of a folder (flat or nested), by relative path. */
function folderFiles(dir: string): Map<string, Uint8Array> {
  const out = new Map<string, Uint8Array>();
  for (const name of readdirSync(dir, { recursive: true }) as string[]) {
    const path = join(dir, name);
    try {
      out.set(name, new Uint8Array(readFileSync(path)));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EISDIR') throw e;
    }
  }
  return out;
}

function assertSameFolder(actual: string, expected: string, what: string): void {
  const a = folderFiles(actual);
  const b = folderFiles(expected);
  assert.deepEqual([...a.keys()].sort(), [...b.keys()].sort(), `${what}: file list`);
  for (const [name, bytes] of b) assert.ok(sameBytes(a.get(name)!, bytes), `${what}: ${name} differs`);
}

/** The closed-loop replay of a folder chain by hand: restoreToFolder of each container against the previous restored folder. */
async function replayFoldersByHand(dir: string, manifest: ChainManifest, into: string): Promise<string[]> {
  const restored: string[] = [];
  mkdirSync(into, { recursive: true });
  for (const s of manifest.steps) {
    const target = join(into, `hand-${s.step}`);
    await restoreToFolder(join(dir, s.file), target, { base: s.keyframe ? undefined : restored[s.step - 1], threads: 0 });
    restored.push(target);
  }
  return restored;
}

/**
 * A copy of a checkpoint folder with other content (trainer_state.json
 * gains `tag` spaces): the same model, another checkpoint, so that a chain
 * can take it after the original (the same checkpoint twice is refused).
 */
function variant(folder: string, tag: number): string {
  const copy = `${folder}-v${tag}`;
  if (!existsSync(copy)) {
    cpSync(folder, copy, { recursive: true });
    writeFileSync(join(copy, 'trainer_state.json'), readFileSync(join(folder, 'trainer_state.json'), 'utf8') + ' '.repeat(tag));
  }
  return copy;
}

describe('excp chain over checkpoint folders, and the chain lock', { concurrency: false }, () => {
  let work = '';
  const runs: Record<string, { c4: string; c8: string; map: string[] }> = {};
  before(() => {
    work = mkdtempSync(join(tmpdir(), 'excp-chain-folder-spec-'));
    for (const run of ['fp32', 'bf16'] as const) {
      const c4 = join(work, run, 'checkpoint-4');
      const c8 = join(work, run, 'checkpoint-8');
      cpSync(join(FIXTURES, run, 'checkpoint-4'), c4, { recursive: true });
      cpSync(join(FIXTURES, run, 'checkpoint-8'), c8, { recursive: true });
      runs[run] = { c4, c8, map: reference.runs[run].param_order };
    }
  });
  after(() => rmSync(work, { recursive: true, force: true }));

  for (const run of ['fp32', 'bf16'] as const) {
    it(`${run}: a folder chain restores every step exactly as the by-hand restoreToFolder replay`, async () => {
      const { c4, c8, map } = runs[run]!;
      const dir = join(work, `${run}-chain`);
      await createChain(dir, [c4, c8], { keyframeEvery: 10, threads: 0, paramMap: map, cache: dir });
      // A third step through append: a residual against the restored step 1.
      const manifest = await appendToChain(dir, [variant(c4, 1)], { threads: 0 });
      assert.equal(manifest.kind, 'folder');
      assert.deepEqual(manifest.steps.map((s) => [s.keyframe, s.base, s.source]), [[true, null, 'checkpoint-4'], [false, 0, 'checkpoint-8'], [false, 1, 'checkpoint-4-v1']]);
      assert.equal(manifest.last, '.last-000002');
      assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('.')).sort(), ['.last-000002'], 'one kept folder, no leftovers');
      assert.ok(!existsSync(join(dir, CHAIN_LOCK)), 'the lock is released');
      for (const s of manifest.steps) assert.ok(s.containerBytes < s.originalBytes, `step ${s.step} is not smaller`);
      // The residual steps use the optimizer.pt skeleton as a base tensor: the case the link check treats apart.
      const step1 = await readContainerFile(join(dir, manifest.steps[1]!.file));
      const based = step1.header.tensors.filter((_, i) => step1.footer.baseHashes![i] !== null).map((t) => t.name);
      assert.ok(based.includes('__file__/optimizer.pt'), `base tensors: ${based.join(', ')}`);

      const byHand = await replayFoldersByHand(dir, manifest, join(work, `${run}-hand`));
      assertSameFolder(join(dir, manifest.last!), byHand[2]!, 'kept last folder');
      for (const s of manifest.steps) {
        const out = join(work, `${run}-restored-${s.step}`);
        await restoreChainStepToFolder(dir, s.step, out, { threads: 0 });
        assertSameFolder(out, byHand[s.step]!, `step ${s.step}`);
      }
      if (run === 'bf16') return;
      // The kept folder, when missing, is rebuilt by replaying; when changed, an append is refused.
      rmSync(join(dir, manifest.last!), { recursive: true });
      const longer = await appendToChain(dir, [variant(c8, 1)], { threads: 0 });
      assert.equal(longer.steps.length, 4);
      writeFileSync(join(dir, longer.last!, 'scheduler.pt'), 'changed');
      const changed = await errorOf(() => appendToChain(dir, [variant(c4, 2)], { threads: 0 }));
      assert.equal(changed.code, 'ERR_CHAIN');
      assert.match(changed.message, /kept restored folder \S*\.last-000003 was changed since it was written/);
      assert.equal((await readManifest(dir)).steps.length, 4);
    });

    it(`${run}: a lossless folder chain restores the original folders byte for byte`, async () => {
      const { c4, c8, map } = runs[run]!;
      const dir = join(work, `${run}-lossless`);
      const manifest = await createChain(dir, [c4, c8], { keyframeEvery: 10, lossless: true, threads: 0, paramMap: map });
      assert.equal(manifest.steps[1]!.keyframe, false);
      for (const [step, original] of [[0, c4], [1, c8]] as const) {
        const out = join(work, `${run}-lossless-${step}`);
        await restoreChainStepToFolder(dir, step, out, { threads: 0 });
        assertSameFolder(out, original, `lossless step ${step}`);
      }
    });
  }

  it('a folder chain keeps its restored step outside (cache) or nowhere (null), and restores the same steps', async () => {
    const { c4, c8, map } = runs['fp32']!;
    const cache = join(work, 'folder-cache');
    const outside = join(work, 'fp32-outside');
    const none = join(work, 'fp32-none');
    const a = await createChain(outside, [c4, c8], { keyframeEvery: 10, threads: 0, paramMap: map, cache });
    const b = await createChain(none, [c4, c8], { keyframeEvery: 10, threads: 0, paramMap: map, cache: null });
    assert.deepEqual(readdirSync(outside).filter((f) => f.startsWith('.')), []);
    assert.deepEqual(readdirSync(cache), [a.last!]);
    assert.match(a.last!, /^fp32-outside-[0-9a-f]{8}\.last-000001$/);
    assert.equal(b.last, null);
    assert.deepEqual(readdirSync(none).filter((f) => f.startsWith('.')), []);
    // A residual appended to each: from the kept folder (checked against its fingerprint), and rebuilt by replay.
    const a2 = await appendToChain(outside, [variant(c4, 3)], { threads: 0 });
    const b2 = await appendToChain(none, [variant(c4, 3)], { threads: 0 });
    assert.deepEqual(readdirSync(cache), [a2.last!]);
    assert.equal(b2.last, null);
    const byHand = await replayFoldersByHand(outside, a2, join(work, 'outside-hand'));
    assertSameFolder(join(cache, a2.last!), byHand[2]!, 'kept folder outside');
    const noneHand = await replayFoldersByHand(none, b2, join(work, 'none-hand'));
    assertSameFolder(noneHand[2]!, byHand[2]!, 'rebuilt by replay');
    // A changed kept folder outside the chain is refused as inside it.
    writeFileSync(join(cache, a2.last!, 'scheduler.pt'), 'changed');
    assert.match((await errorOf(() => appendToChain(outside, [variant(c8, 3)], { threads: 0 }))).message, /was changed since it was written/);
  });

  it('a folder step made against the original previous folder (not the restored one) is refused with ERR_CHAIN', async () => {
    // Restore rewrites optimizer.pt's CRCs after lossy moments, so the link pre-check cannot compare the
    // optimizer.pt skeleton; the decoder's per-chunk base digests catch it, reported as a broken chain.
    const { c4, c8, map } = runs['fp32']!;
    const dir = join(work, 'fp32-open-loop');
    cpSync(join(work, 'fp32-chain'), dir, { recursive: true });
    const wrong = join(work, 'open-loop.excp');
    await writeAtomically(wrong, (out) => compressTo(c8, out, { base: c4, threads: 0, paramMap: map }));
    cpSync(wrong, join(dir, 'step-000001.excp'));
    const index = JSON.parse(readFileSync(join(dir, CHAIN_MANIFEST), 'utf8')) as ChainManifest;
    const footer = (await readContainerFile(wrong)).footer;
    index.steps[1]!.baseFingerprint = footer.baseFingerprint;
    index.steps[1]!.targetFingerprint = footer.targetFingerprint;
    writeFileSync(join(dir, CHAIN_MANIFEST), JSON.stringify(index));
    const target = join(work, 'open-loop-out');
    const broken = await errorOf(() => restoreChainStepToFolder(dir, 1, target, { threads: 0 }));
    assert.equal(broken.code, 'ERR_CHAIN');
    // The first base chunk that differs names it: a weight (a lossy keyframe's restored weights are not
    // the original ones), or the optimizer.pt skeleton after an exact keyframe.
    assert.match(broken.message, /^chain: step 1 \(step-000001\.excp\) does not restore against the previous step: .*tensor '[^']+'/);
    assert.ok(!existsSync(target), 'a failed restore leaves no output');
    assert.deepEqual(readdirSync(work).filter((f) => f.startsWith('.open-loop-out')), []);
  });

  it('one kind per chain: mixing files and folders is refused with ERR_CHAIN', async () => {
    const { c4, c8, map } = runs['fp32']!;
    const file = join(c4, 'model.safetensors');
    const mixed = await errorOf(() => createChain(join(work, 'mixed'), [c4, file], { threads: 0, paramMap: map }));
    assert.equal(mixed.code, 'ERR_CHAIN');
    assert.match(mixed.message, /model\.safetensors is a file, but the chain .* holds checkpoint folders \(one chain holds one kind\)/);
    assert.ok(!existsSync(join(work, 'mixed', CHAIN_MANIFEST)), 'nothing is created');
    const folders = join(work, 'fp32-chain');
    const intoFolders = await errorOf(() => appendToChain(folders, [file], { threads: 0 }));
    assert.equal(intoFolders.code, 'ERR_CHAIN');
    const files = join(work, 'files');
    await createChain(files, [file], { threads: 0 });
    const intoFiles = await errorOf(() => appendToChain(files, [c8], { threads: 0 }));
    assert.equal(intoFiles.code, 'ERR_CHAIN');
    assert.match(intoFiles.message, /checkpoint-8 is a checkpoint folder, but the chain .* holds safetensors files/);
    assert.equal((await readManifest(files)).steps.length, 1);
    const sink = new Writable({ write(_c, _e, cb) { cb(); } });
    assert.equal((await errorOf(() => restoreChainStep(folders, 0, sink, { threads: 0 }))).code, 'ERR_USAGE');
    assert.equal((await errorOf(() => restoreChainStepToFolder(files, 0, join(work, 'nope'), { threads: 0 }))).code, 'ERR_USAGE');
  });

  it('the lock: a held lock is a clear ERR_CHAIN, a stale lock is taken over, concurrent appends do not race', async () => {
    const { c4, c8, map } = runs['bf16']!;
    const dir = join(work, 'locked');
    await createChain(dir, [c4], { keyframeEvery: 10, threads: 0, paramMap: map, cache: dir });
    const lock = join(dir, CHAIN_LOCK);
    // Held by a live process (a child we started and kill afterwards).
    const holder = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 60000)'], { stdio: 'ignore' });
    try {
      writeFileSync(lock, `${holder.pid}\n`);
      const held = await errorOf(() => appendToChain(dir, [c8], { threads: 0 }));
      assert.equal(held.code, 'ERR_CHAIN');
      assert.match(held.message, new RegExp(`chain is locked by pid ${holder.pid} `));
      assert.equal((await errorOf(() => createChain(dir, [c8], { threads: 0 }))).code, 'ERR_EXISTS');
      const viaCli = await cli(['chain', 'append', dir, c8]);
      assert.equal(viaCli.status, 1);
      assert.match(viaCli.stderr, new RegExp(`^excp: chain: chain is locked by pid ${holder.pid} `));
      assert.equal((await readManifest(dir)).steps.length, 1);
      assert.equal(readFileSync(lock, 'utf8'), `${holder.pid}\n`, 'a held lock is left alone');
    } finally {
      holder.kill();
    }
    // Stale: the PID of a child that has exited; what a killed append left behind goes too.
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    writeFileSync(lock, `${dead}\n`);
    mkdirSync(join(dir, '.last-000001'));
    mkdirSync(join(dir, '..last-000001.excp-tmp-AbCdEf'));
    writeFileSync(join(dir, `.step-000001.excp.excp-tmp-${dead}-abc`), 'partial');
    await appendToChain(dir, [c8], { threads: 0 });
    assert.ok(!existsSync(lock), 'the taken-over lock is released');
    assert.deepEqual(readdirSync(dir).filter((f) => f.startsWith('.')), ['.last-000001']);
    assert.equal((await readManifest(dir)).steps.length, 2);
    // Two appends at once in one process: exactly one runs, the other is refused.
    const results = await Promise.allSettled([appendToChain(dir, [variant(c4, 1)], { threads: 0 }), appendToChain(dir, [variant(c8, 1)], { threads: 0 })]);
    const refused = results.filter((r) => r.status === 'rejected');
    assert.equal(refused.length, 1);
    assert.match(String((refused[0] as PromiseRejectedResult).reason.message), /chain is locked by pid \d+/);
    assert.equal((await readManifest(dir)).steps.length, 3);
    assert.ok(!existsSync(lock));
  });

  it('CLI: chain of folders with --param-map, restore -o DIR equals the by-hand replay, ls, usage errors', async () => {
    const { c4, c8, map } = runs['fp32']!;
    const dir = join(work, 'cli-chain');
    const mapFile = join(work, 'map.json');
    writeFileSync(mapFile, JSON.stringify(map));
    const created = await cli(['chain', dir, c4, c8, '--param-map', mapFile, '--keyframe-every', '5']);
    assert.equal(created.status, 0, created.stderr);
    const manifest = await readManifest(dir);
    assert.deepEqual(manifest.paramMap, map);
    const byHand = await replayFoldersByHand(dir, manifest, join(work, 'cli-hand'));
    const out = join(work, 'cli-restored-1');
    const noMap = join(work, 'cli-no-map');
    const [restored, ls, noTarget, mapOnAppend, keyframeNoMap] = await Promise.all([
      cli(['chain', 'restore', dir, '--step', '1', '-o', out]),
      cli(['chain', 'ls', dir]),
      cli(['chain', 'restore', dir, '--step', '1']),
      cli(['chain', 'append', dir, c4, '--param-map', mapFile]),
      cli(['chain', noMap, c4]),
    ]);
    // A keyframe pairs ambiguous ids by shape alone (see the folder spec): no map needed.
    assert.equal(keyframeNoMap.status, 0, keyframeNoMap.stderr);
    assert.equal((await readManifest(noMap)).steps.length, 1);
    const missing = join(work, 'cli-missing');
    const failed = await cli(['chain', missing, join(work, 'no-such-checkpoint')]);
    assert.equal(failed.status, 1);
    assert.ok(!existsSync(missing), 'a failed create leaves no folder it made');
    assert.equal(restored.status, 0, restored.stderr);
    assertSameFolder(out, byHand[1]!, 'CLI step 1');
    assert.equal(ls.status, 0, ls.stderr);
    assert.match(ls.stdout, /^1\tresidual of 0\tcheckpoint-8\t/m);
    assert.match(ls.stdout, /2 steps, keyframe every 5; .*checkpoint folders/);
    assert.equal(noTarget.status, 2);
    assert.match(noTarget.stderr, /holds checkpoint folders; give the output folder with -o DIR/);
    assert.equal(mapOnAppend.status, 2);
  });
});
