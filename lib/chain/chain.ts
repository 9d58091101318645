/**
 * Chains: a whole training run as one folder of containers.
 *
 * Layout of a chain folder:
 *   chain.json              the manifest ({@link ChainManifest}), rewritten atomically on every append
 *   step-000000.excp ...    one container per checkpoint, in step order
 *   .last-NNNNNN.safetensors  the restored last checkpoint (the base of the next append), or
 *   .last-NNNNNN/           the same for a chain of checkpoint folders (HF `checkpoint-N/`)
 *   chain.lock              while a create or append runs: the PID of the process (lib/chain-lock.ts)
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
 * The chain keeps that restored checkpoint, so an append reads only the new
 * checkpoint and one file, never the chain.
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
 * The pure parts (keyframe choice, link checks, manifest validation and the
 * listing) are in lib/chain-manifest.ts, the shared file operations in
 * lib/chain-files.ts, the replay in lib/chain-restore.ts; this module
 * creates and appends.
 */
import { mkdir, readdir, rm, rmdir, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { basename, join } from 'node:path';
import { TOOL_VERSION } from '../core/constants.js';
import { ExcpError } from '../core/errors.js';
import { resolveOptions } from '../core/options.js';
import { writeAtomically } from '../io/output.js';
import { withChainLock } from './lock.js';
import { checkKinds, checkpointOf, folderFingerprint, indexOf, readManifest, writeManifest } from './files.js';
import { chainError, restoreChainStep, restoreChainStepToFolder } from './restore.js';
import { CHAIN_FORMAT, CHAIN_MANIFEST, DEFAULT_KEYFRAME_EVERY, isKeyframe, stepFileName, lastFileName, checkLink, type ChainStep, type ChainManifest, type ChainOptions, type ContainerIndex } from './manifest.js';
import { readContainerFile } from '../api/open.js';
import { compressTo } from '../api/compress.js';
import { restoreTo, restoreToFolder } from '../api/restore.js';
import { priorOf } from '../formats/optimizer-map.js';

export { CHAIN_LOCK } from './lock.js';
export * from './manifest.js';
export { folderFingerprint, readManifest } from './files.js';
export { restoreChainStep, restoreChainStepToFolder } from './restore.js';

/**
 * Start a chain folder and compress checkpoints into it. Holds the chain's lock.
 * @param dir chain folder (created; must not hold a chain already)
 * @param checkpoints safetensors files, or checkpoint folders, in step order (one kind)
 * @param options codec options, keyframeEvery, threads, paramMap (folders)
 * @returns the manifest
 * @throws ExcpError ERR_EXISTS when the folder already holds a chain, ERR_CHAIN for mixed kinds or a held lock
 */
export async function createChain(dir: string, checkpoints: readonly string[], options: ChainOptions & NoticeOption = {}): Promise<ChainManifest> {
  const { keyframeEvery = DEFAULT_KEYFRAME_EVERY, threads: _t, onStep: _s, onNotice: _n, paramMap, ...codec } = options;
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
  return withChainLock(dir, async () => {
    if (existsSync(join(dir, CHAIN_MANIFEST))) {
      throw new ExcpError('ERR_EXISTS', `chain: ${dir} already holds a chain (use 'excp chain append')`);
    }
    const manifest: ChainManifest = {
      format: CHAIN_FORMAT, tool: `excp ${TOOL_VERSION}`, kind, keyframeEvery, options: resolved,
      paramMap: paramMap ? [...paramMap] : null, steps: [], last: null, lastFingerprint: null,
    };
    await writeManifest(dir, manifest);
    try {
      return await appendSteps(dir, checkpoints, { threads: options.threads, onStep: options.onStep, onNotice: options.onNotice });
    } catch (e) {
      // A chain whose first checkpoint failed is no chain: leave the folder free for a retry.
      const now = await readManifest(dir).catch(() => null);
      if (now && now.steps.length === 0) await rm(join(dir, CHAIN_MANIFEST), { force: true });
      throw e;
    }
  }).catch(async (e: unknown) => {
    if (!existed) await rmdir(dir).catch(() => undefined); // only when empty: a folder this call created
    throw e;
  });
}

/**
 * Append checkpoints to a chain: each becomes a keyframe or a residual against
 * the restored previous step, which is then restored in turn for the next one.
 * Holds the chain's lock (chain.lock) for the whole append.
 * @param dir chain folder
 * @param checkpoints safetensors files, or checkpoint folders (the chain's kind), in step order
 * @param options threads, onStep
 * @returns the updated manifest
 * @throws ExcpError ERR_CHAIN when the chain is broken, is locked, or holds the other kind
 */
export async function appendToChain(dir: string, checkpoints: readonly string[], options: Pick<ChainOptions, 'threads' | 'onStep'> & NoticeOption = {}): Promise<ChainManifest> {
  await readManifest(dir); // not a chain: say so before creating a lock file in it
  return withChainLock(dir, () => appendSteps(dir, checkpoints, options));
}

/**
 * Remove what a killed create or append left in the chain folder: temporary
 * files and folders of the chain's own outputs, and kept `.last-*` steps
 * that chain.json does not name. Only called with the lock held, so no live
 * process is writing them.
 */
async function removeLeftovers(dir: string, manifest: ChainManifest): Promise<void> {
  const temp = /^\.(step-\d+\.excp|chain\.json|\.last-\d+(\.safetensors)?)\.excp-tmp-/;
  const kept = /^\.last-\d+(\.safetensors)?$/;
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    if (temp.test(name) || (kept.test(name) && name !== manifest.last)) await rm(join(dir, name), { recursive: true, force: true }).catch(() => undefined);
  }
}

/** One-line notices of the steps' compress (compress's onNotice). */
export interface NoticeOption {
  onNotice?: ((message: string) => void) | undefined;
}

/** appendToChain without the lock (the caller holds it). */
async function appendSteps(dir: string, checkpoints: readonly string[], options: Pick<ChainOptions, 'threads' | 'onStep'> & NoticeOption): Promise<ChainManifest> {
  const manifest = await readManifest(dir);
  await removeLeftovers(dir, manifest);
  const inputs = await Promise.all(checkpoints.map(checkpointOf));
  checkKinds(dir, manifest.kind, inputs);
  const folders = manifest.kind === 'folder';
  // The kept folder this process wrote and fingerprinted itself needs no re-check.
  let written: string | null = null;
  for (const input of inputs) {
    const checkpoint = input.path;
    const index = manifest.steps.length;
    const keyframe = isKeyframe(index, manifest.keyframeEvery);
    const previous = index > 0 ? manifest.steps[index - 1]! : null;
    let base: string | undefined;
    if (!keyframe) {
      if (!previous) throw new ExcpError('ERR_CHAIN', 'chain: a residual step needs a previous step');
      base = await ensureLast(dir, manifest, options.threads, written);
    }
    const file = stepFileName(index);
    const containerPath = join(dir, file);
    const last = lastFileName(index, manifest.kind);
    let current: ContainerIndex;
    let lastFingerprint: string | null = null;
    // The previous step's parameter map (ids are stable within a run): this step confirms it rather than guessing again.
    const paramPrior = previous ? priorOf((await indexOf(dir, previous)).header.info?.['paramMap']) : null;
    try {
      await writeAtomically(containerPath, (out) => compressTo(checkpoint, out, {
        ...manifest.options, base, threads: options.threads, paramMap: folders ? manifest.paramMap ?? undefined : undefined,
        paramPrior, onNotice: options.onNotice,
        // Links are checked hash by hash before a replay (checkLink).
        tensorHashes: 'always',
      }), { force: true, inputs: [checkpoint] });
      current = await readContainerFile(containerPath);
      if (!keyframe) checkLink(await indexOf(dir, previous!), current, { previous: `step ${index - 1}`, current: `step ${index} (${file})` });
      // Restore what was just written: it is the next step's base (and proves the container decodes).
      if (folders) {
        await restoreToFolder(containerPath, join(dir, last), { base, threads: options.threads, force: true });
        lastFingerprint = await folderFingerprint(join(dir, last));
      } else {
        await writeAtomically(join(dir, last), (out) => restoreTo(containerPath, out, { base, threads: options.threads }), { force: true });
      }
    } catch (e) {
      // Nothing of a refused step stays behind; chain.json still lists the steps before it.
      await rm(containerPath, { force: true });
      if (last !== manifest.last) await rm(join(dir, last), { recursive: true, force: true });
      if (e instanceof ExcpError && e.code === 'ERR_PARAM_MAP' && keyframe && !manifest.paramMap) {
        throw new ExcpError('ERR_PARAM_MAP', `chain: step ${index} (a keyframe: no previous folder to tell parameters apart): ${e.message}; create the chain with --param-map FILE`, { cause: e });
      }
      throw chainError(e, `step ${index} (${file})`);
    }
    const entry: ChainStep = {
      step: index, file, source: basename(checkpoint), keyframe, base: keyframe ? null : index - 1,
      originalBytes: input.bytes, containerBytes: (await stat(containerPath)).size,
      baseFingerprint: current.footer.baseFingerprint, targetFingerprint: current.footer.targetFingerprint,
    };
    const oldLast = manifest.last;
    manifest.steps.push(entry);
    manifest.last = last;
    manifest.lastFingerprint = lastFingerprint;
    written = last;
    await writeManifest(dir, manifest);
    if (oldLast && oldLast !== last) await rm(join(dir, oldLast), { recursive: true, force: true }).catch(() => undefined);
    options.onStep?.(entry);
  }
  return manifest;
}

/**
 * The restored last step, rebuilt by replaying the chain when it is missing.
 * A kept folder is checked against the fingerprint chain.json recorded for it,
 * unless this process wrote it (`written`) in the same append.
 */
async function ensureLast(dir: string, manifest: ChainManifest, threads: number | undefined, written: string | null = null): Promise<string> {
  if (manifest.last && existsSync(join(dir, manifest.last))) {
    const path = join(dir, manifest.last);
    if (manifest.kind === 'folder' && manifest.lastFingerprint !== null && manifest.last !== written) {
      const now = await folderFingerprint(path);
      if (now !== manifest.lastFingerprint) {
        throw new ExcpError('ERR_CHAIN', `chain: the kept restored folder ${manifest.last} was changed since it was written (fingerprint ${now}, chain.json recorded ${manifest.lastFingerprint}); remove it and append again: it is rebuilt by replaying the chain`);
      }
    }
    return path;
  }
  const index = manifest.steps.length - 1;
  const last = lastFileName(index, manifest.kind);
  if (manifest.kind === 'folder') {
    await restoreChainStepToFolder(dir, index, join(dir, last), { threads, force: true });
    manifest.lastFingerprint = await folderFingerprint(join(dir, last));
  } else {
    await writeAtomically(join(dir, last), (out) => restoreChainStep(dir, index, out, { threads }), { force: true });
  }
  manifest.last = last;
  await writeManifest(dir, manifest);
  return join(dir, last);
}

