/**
 * Chains: a whole training run as one folder of containers.
 *
 * Layout of a chain folder:
 *   chain.json              the manifest ({@link ChainManifest}), rewritten atomically on every append
 *   step-000000.excp ...    one container per checkpoint, in step order
 *   .last-NNNNNN.safetensors  the restored last checkpoint (the base of the next append), or
 *   .last-NNNNNN/           the same for a chain of checkpoint folders (HF `checkpoint-N/`);
 *                           elsewhere with --cache DIR, none kept with --no-cache (cache.ts)
 *   chain.lock              while a create or append runs: the PID of the process (lock.ts)
 *
 * A chain holds one kind of checkpoint (`kind` in chain.json): safetensors
 * files, or PyTorch / Hugging Face checkpoint folders (lib/folder.ts). A
 * folder step's base is the restored previous folder, and its replays go
 * through temporary folders.
 *
 * Step i (0-based, in the order the checkpoints were given) is a keyframe
 * when i % keyframeEvery === 0: no base, weights coded exactly. Every other
 * step is a residual against the RESTORED step i-1 (closed loop: the error
 * of one step is never the base of the next, so errors do not accumulate).
 * Which steps are keyframes and what each passes to compress is decided in
 * one place, stepCoding (manifest.ts). The chain keeps that restored
 * checkpoint (cache.ts), so an append reads only the new checkpoint and
 * one file, never the chain.
 *
 * What joins a chain: a checkpoint of the same model as the step before it
 * (the same model tensors), that the chain does not hold already (by
 * content fingerprint); identity.ts. A create is all or nothing: chain.json
 * is written once, when every step is in, and a failed create removes what
 * it wrote, so the same command can be run again. An append keeps the steps
 * before a failed one.
 *
 * Restoring step n replays from the nearest keyframe k <= n: steps k..n-1 go
 * to temporary files, step n to the output.
 *
 * Links. A container's footer has, per tensor, the hash of the base bytes it
 * was made against (`baseHashes`; weights only: moments are never coded
 * against the base) and the hash of the bytes it restores to
 * (`tensorHashes`). Step n is linked to step n-1 when every base hash of n
 * equals the restored hash of the same tensor of n-1, i.e. when n's
 * `baseFingerprint` equals the fingerprint of n-1's restored tensors that n
 * uses. (It cannot equal n-1's `targetFingerprint` literally: that one also
 * covers the moments.) A broken link is ERR_CHAIN, before anything is written.
 *
 * Folder containers: the base of a folder step is the previous restored
 * folder opened as a base (lib/folder.ts, moments unnamed), so its base
 * tensors are the model weights plus the carried files of equal size
 * (`__file__/PATH`) and the optimizer.pt skeleton (`__file__/optimizer.pt`,
 * the file without its moment ranges). All of them restore byte for byte as
 * decoded, except the skeleton after lossy moments: restore recomputes the
 * zip CRCs of the storages holding restored moments, so the skeleton in the
 * restored folder is not the decoded one and its hash is not in the
 * previous footer. The link check compares every other base tensor (and the
 * skeleton too when the previous step is lossless); a lossy skeleton is
 * checked when it is used, by the decoder (per-chunk base digests,
 * ERR_BASE_MISMATCH, reported as ERR_CHAIN), and the kept `.last-NNNNNN/`
 * folder is checked against a fingerprint of its files recorded in
 * chain.json before an append uses it.
 *
 * The pure parts (keyframe choice, link checks, manifest validation) are in
 * manifest.ts, the listing in report.ts, the checks of a new checkpoint in
 * identity.ts, the shared file operations in files.ts, the kept restored
 * step in cache.ts, the replay in restore.ts; this module creates, appends
 * and lists.
 */
import { mkdir, rm, rmdir, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { TOOL_VERSION } from '../core/constants.js';
import { ExcpError } from '../core/errors.js';
import { resolveOptions } from '../core/options.js';
import { writeAtomically } from '../io/output.js';
import { withChainLock } from './lock.js';
import { cacheSetting, cacheSpot, ensureLast, lastPath, removeLeftovers, type CacheSpot } from './cache.js';
import { chainDiskFiles, checkKinds, checkpointOf, folderFingerprint, indexOf, readManifest, sourceFingerprint, tensorTableOf, writeManifest } from './files.js';
import { checkNotHeld, checkSameModel } from './identity.js';
import { summarizeChain, type ChainSummary } from './report.js';
import { chainError } from './restore.js';
import { CHAIN_FORMAT, CHAIN_MANIFEST, DEFAULT_CACHE, DEFAULT_KEYFRAME_EVERY, stepCoding, stepFileName, lastFileName, checkLink, type AppendOptions, type ChainStep, type ChainManifest, type ChainOptions, type ContainerIndex } from './manifest.js';
import { compressTo } from '../api/compress.js';
import { readContainerFile } from '../api/open.js';
import { restoreTo, restoreToFolder } from '../api/restore.js';
import { priorOf } from '../formats/optimizer-map.js';

export { CHAIN_LOCK } from './lock.js';
export * from './manifest.js';
export { formatChain, summarizeChain, type ChainSummary, type DiskFile } from './report.js';
export { folderFingerprint, readManifest } from './files.js';
export { restoreChainStep, restoreChainStepToFolder } from './restore.js';

/**
 * Start a chain folder and compress checkpoints into it, all or nothing:
 * when a step fails, what this call wrote is removed (and the folder, when
 * it made it), so the same call can be retried. Holds the chain's lock.
 * @param dir chain folder (created; must not hold a chain already)
 * @param checkpoints safetensors files, or checkpoint folders, in step order (one kind)
 * @param options codec options, keyframeEvery, threads, paramMap (folders), cache, wait
 * @returns the manifest
 * @throws ExcpError ERR_EXISTS when the folder already holds a chain, ERR_CHAIN for mixed kinds, the same checkpoint twice, another model or a held lock
 */
export async function createChain(dir: string, checkpoints: readonly string[], options: ChainOptions = {}): Promise<ChainManifest> {
  const { keyframeEvery = DEFAULT_KEYFRAME_EVERY, threads, onStep, onNotice, paramMap, cache, wait, ...codec } = options;
  if (!Number.isInteger(keyframeEvery) || keyframeEvery < 1) {
    throw new ExcpError('ERR_OUT_OF_RANGE', `options.keyframeEvery must be an integer >= 1, got ${JSON.stringify(keyframeEvery)}`);
  }
  const resolved = resolveOptions(codec);
  if (existsSync(join(dir, CHAIN_MANIFEST))) {
    throw new ExcpError('ERR_EXISTS', `chain: ${dir} already holds a chain (use 'excp chain append')`);
  }
  const inputs = await Promise.all(checkpoints.map(checkpointOf));
  const kind = inputs[0]?.kind ?? 'file';
  checkKinds(dir, kind, inputs);
  if (paramMap !== undefined && kind !== 'folder') throw new ExcpError('ERR_USAGE', 'chain: a param map is for checkpoint folders');
  const existed = existsSync(dir);
  await mkdir(dir, { recursive: true });
  const manifest: ChainManifest = {
    format: CHAIN_FORMAT, tool: `excp ${TOOL_VERSION}`, kind, keyframeEvery, options: resolved,
    paramMap: paramMap ? [...paramMap] : null, steps: [], cache: cacheSetting(dir, cache, DEFAULT_CACHE), last: null, lastFingerprint: null,
  };
  try {
    return await withChainLock(dir, async () => {
      if (existsSync(join(dir, CHAIN_MANIFEST))) {
        throw new ExcpError('ERR_EXISTS', `chain: ${dir} already holds a chain (use 'excp chain append')`);
      }
      try {
        await appendSteps(dir, manifest, checkpoints, { threads, onStep, onNotice }, false);
        await writeManifest(dir, manifest);
        return manifest;
      } catch (e) {
        await discardChain(dir, manifest);
        throw e;
      }
    }, { wait });
  } catch (e) {
    if (!existed) await rmdir(dir).catch(() => undefined); // only when empty: a folder this call created
    throw e;
  }
}

/** Remove what a failed create wrote: its containers and its kept step (chain.json is not written yet). */
async function discardChain(dir: string, manifest: ChainManifest): Promise<void> {
  const last = lastPath(dir, manifest);
  if (last !== null) await rm(last, { recursive: true, force: true }).catch(() => undefined);
  for (const s of manifest.steps) await rm(join(dir, s.file), { force: true }).catch(() => undefined);
}

/**
 * Append checkpoints to a chain: each becomes a keyframe or a residual against
 * the restored previous step, which is then restored in turn for the next one.
 * Holds the chain's lock (chain.lock) for the whole append, waiting for it
 * when `wait` says so. A step that fails leaves the chain as it was before it.
 * @param dir chain folder
 * @param checkpoints safetensors files, or checkpoint folders (the chain's kind), in step order
 * @param options threads, onStep, cache (moves the kept step: a folder, or null for none), wait
 * @returns the updated manifest
 * @throws ExcpError ERR_CHAIN when the chain is broken or locked, holds the other kind or another model, or holds a checkpoint already
 */
export async function appendToChain(dir: string, checkpoints: readonly string[], options: AppendOptions = {}): Promise<ChainManifest> {
  await readManifest(dir); // not a chain: say so before creating a lock file in it
  return withChainLock(dir, async () => {
    const manifest = await readManifest(dir);
    await appendSteps(dir, manifest, checkpoints, options, true);
    return manifest;
  }, { wait: options.wait });
}

/**
 * appendToChain without the lock (the caller holds it); updates `manifest`.
 * @param persist rewrite chain.json after every step (an append; a create writes it once at the end)
 */
async function appendSteps(dir: string, manifest: ChainManifest, checkpoints: readonly string[],
  options: Pick<ChainOptions, 'threads' | 'onStep' | 'cache' | 'onNotice'>, persist: boolean): Promise<void> {
  const spot = cacheSpot(dir, cacheSetting(dir, options.cache, manifest.cache));
  await removeLeftovers(dir, manifest, spot, !persist);
  const inputs = await Promise.all(checkpoints.map(checkpointOf));
  checkKinds(dir, manifest.kind, inputs);
  // One after the other: each reads a whole checkpoint, and the disk serves one read best.
  const fingerprints: string[] = [];
  for (const input of inputs) fingerprints.push(await sourceFingerprint(input));
  checkNotHeld(manifest.steps, inputs.map((input, i) => ({ path: input.path, fingerprint: fingerprints[i]! })));
  if (spot.prefix) await mkdir(spot.dir, { recursive: true });
  try {
    // The restored step this process wrote last (a kept folder it wrote needs no re-check).
    let written: string | null = null;
    for (const [n, input] of inputs.entries()) {
      const index = manifest.steps.length;
      const coding = stepCoding(manifest, index);
      const previous = index > 0 ? manifest.steps[index - 1]! : null;
      const file = stepFileName(index);
      let previousIndex: ContainerIndex | null = null;
      if (previous) {
        previousIndex = await indexOf(dir, previous);
        checkSameModel(previousIndex.header.tensors, await tensorTableOf(input.path), { previous: `step ${index - 1} (${previous.source})`, current: input.path });
      }
      const base = coding.keyframe ? undefined : await ensureLast(dir, manifest, spot, { threads: options.threads, written, persist });
      const made = await codeStep(dir, manifest, { index, path: input.path, keyframe: coding.keyframe, base, spot, previousIndex }, { ...coding.options, threads: options.threads, onNotice: options.onNotice });
      const entry: ChainStep = {
        step: index, file, source: basename(input.path), keyframe: coding.keyframe, base: coding.keyframe ? null : index - 1,
        originalBytes: input.bytes, containerBytes: made.containerBytes,
        baseFingerprint: made.index.footer.baseFingerprint, targetFingerprint: made.index.footer.targetFingerprint,
        sourceFingerprint: fingerprints[n]!,
      };
      const oldLast = lastPath(dir, manifest);
      manifest.steps.push(entry);
      manifest.cache = spot.setting;
      manifest.last = basename(made.last);
      manifest.lastFingerprint = made.lastFingerprint;
      written = made.last;
      if (persist) await writeManifest(dir, manifest);
      if (oldLast !== null && oldLast !== made.last) await rm(oldLast, { recursive: true, force: true }).catch(() => undefined);
      options.onStep?.(entry);
    }
  } finally {
    if (manifest.cache === null && manifest.last !== null) await dropLast(dir, manifest, persist);
  }
}

/** --no-cache: remove the restored step a command kept for its own next step. */
async function dropLast(dir: string, manifest: ChainManifest, persist: boolean): Promise<void> {
  const last = lastPath(dir, manifest)!;
  manifest.last = null;
  manifest.lastFingerprint = null;
  if (persist) await writeManifest(dir, manifest).catch(() => undefined);
  await rm(last, { recursive: true, force: true }).catch(() => undefined);
}

/** One step to code. */
interface StepJob {
  index: number;
  path: string;
  keyframe: boolean;
  /** The restored previous step (a residual), or undefined (a keyframe). */
  base: string | undefined;
  spot: CacheSpot;
  /** The previous step's container index, for the link check (null for step 0). */
  previousIndex: ContainerIndex | null;
}

/**
 * Compress one step into its container, check its link to the previous step,
 * and restore it into the cache spot (the next step's base; this also proves
 * that the container decodes). Nothing of a refused step stays behind.
 * @param codec the codec options of stepCoding, and threads
 */
async function codeStep(dir: string, manifest: ChainManifest, job: StepJob,
  codec: ChainManifest['options'] & { threads?: number | undefined; onNotice?: ((message: string) => void) | undefined }):
  Promise<{ index: ContainerIndex; containerBytes: number; last: string; lastFingerprint: string | null }> {
  const folders = manifest.kind === 'folder';
  const file = stepFileName(job.index);
  const containerPath = join(dir, file);
  const last = join(job.spot.dir, lastFileName(job.index, manifest.kind, job.spot.prefix));
  // The previous step's parameter map (ids are stable within a run): this step confirms it rather than guessing again.
  const paramPrior = job.previousIndex ? priorOf(job.previousIndex.header.info?.['paramMap']) : null;
  try {
    await writeAtomically(containerPath, (out) => compressTo(job.path, out, {
      ...codec, base: job.base, paramMap: folders ? manifest.paramMap ?? undefined : undefined, paramPrior,
      // Links are checked hash by hash before a replay (checkLink).
      tensorHashes: 'always',
    }), { force: true, inputs: [job.path] });
    const index = await readContainerFile(containerPath);
    if (!job.keyframe) checkLink(job.previousIndex!, index, { previous: `step ${job.index - 1}`, current: `step ${job.index} (${file})` });
    let lastFingerprint: string | null = null;
    if (folders) {
      await restoreToFolder(containerPath, last, { base: job.base, threads: codec.threads, force: true });
      lastFingerprint = await folderFingerprint(last);
    } else {
      await writeAtomically(last, (out) => restoreTo(containerPath, out, { base: job.base, threads: codec.threads }), { force: true });
    }
    return { index, containerBytes: (await stat(containerPath)).size, last, lastFingerprint };
  } catch (e) {
    await rm(containerPath, { force: true });
    if (last !== lastPath(dir, manifest)) await rm(last, { recursive: true, force: true });
    if (e instanceof ExcpError && e.code === 'ERR_PARAM_MAP' && job.keyframe && !manifest.paramMap) {
      throw new ExcpError('ERR_PARAM_MAP', `chain: step ${job.index} (a keyframe: no previous folder to tell parameters apart): ${e.message}; create the chain with --param-map FILE`, { cause: e });
    }
    throw chainError(e, `step ${job.index} (${file})`);
  }
}

/**
 * What `excp chain ls` shows: the chain, and its figures against every
 * file it takes on disk (the kept step included, wherever it is).
 * @param dir chain folder
 * @returns the manifest and its summary
 * @throws ExcpError ERR_CHAIN when dir is not a chain
 */
export async function listChain(dir: string): Promise<{ manifest: ChainManifest; summary: ChainSummary }> {
  const manifest = await readManifest(dir);
  const kept = lastPath(dir, manifest);
  const files = await chainDiskFiles(dir, manifest, kept);
  const shown = kept === null ? null : manifest.cache === '.' || manifest.cache === null ? manifest.last : kept;
  return { manifest, summary: summarizeChain(manifest, files, shown) };
}
