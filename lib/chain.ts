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
 * listing) are in lib/chain-manifest.ts; this module does the file operations.
 */
import { mkdtemp, mkdir, readFile, readdir, rm, rmdir, stat } from 'node:fs/promises';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { TOOL_VERSION } from './constants.js';
import { ExcpError } from './errors.js';
import { Hasher, fingerprintTensors } from './hash.js';
import { readContainerIndex } from './inspect.js';
import { resolveOptions } from './options.js';
import { compressTo, restoreTo, restoreToFolder } from './pipeline.js';
import { writeAtomically } from './output.js';
import { withChainLock } from './chain-lock.js';
import {
  CHAIN_FORMAT, CHAIN_MANIFEST, DEFAULT_KEYFRAME_EVERY, isKeyframe, stepFileName, lastFileName, replayPath, checkLink, checkStep, parseManifest, type ChainKind, type ChainStep, type ChainManifest, type ChainOptions, type ContainerIndex,
} from './chain-manifest.js';

export { CHAIN_LOCK } from './chain-lock.js';
export * from './chain-manifest.js';

// ---------------------------------------------------------------- file operations

/** Relative paths and sizes of the regular files under a folder, sorted by path. */
async function filesOf(dir: string): Promise<Array<{ path: string; size: number }>> {
  const out: Array<{ path: string; size: number }> = [];
  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(join(dir, rel), { withFileTypes: true }).catch((e: NodeJS.ErrnoException) => {
      throw new ExcpError('ERR_IO', `${join(dir, rel)}: cannot list (${e.code ?? e.message})`);
    });
    for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(path);
      else out.push({ path, size: (await stat(join(dir, path))).size });
    }
  };
  await walk('');
  return out;
}

/**
 * A fingerprint of a folder's files (relative paths, sizes and bytes): what
 * chain.json records for the kept `.last-NNNNNN/` folder.
 * @param dir folder
 * @returns 16 hex digits
 */
export async function folderFingerprint(dir: string): Promise<string> {
  const listed: Array<{ name: string; dtype: string; shape: number[]; hash: string }> = [];
  for (const f of await filesOf(dir)) {
    const hasher = new Hasher();
    for await (const chunk of createReadStream(join(dir, f.path))) hasher.update(chunk as Uint8Array);
    listed.push({ name: f.path, dtype: 'U8', shape: [f.size], hash: hasher.digest() });
  }
  return fingerprintTensors(listed);
}

/**
 * What a checkpoint path is: a file or a folder, and its size in bytes.
 * @throws ExcpError ERR_IO when it cannot be read, ERR_INVALID_ARG when it is neither
 */
async function checkpointOf(path: string): Promise<{ path: string; kind: ChainKind; bytes: number }> {
  const info = await stat(path).catch((e: NodeJS.ErrnoException) => {
    throw new ExcpError('ERR_IO', `${path}: cannot read (${e.code ?? e.message})`);
  });
  if (info.isFile()) return { path, kind: 'file', bytes: info.size };
  if (info.isDirectory()) return { path, kind: 'folder', bytes: (await filesOf(path)).reduce((s, f) => s + f.size, 0) };
  throw new ExcpError('ERR_INVALID_ARG', `chain: ${path} is neither a file nor a folder`);
}

const KIND_NAMES: Record<ChainKind, string> = { file: 'safetensors files', folder: 'checkpoint folders' };

/** All checkpoints must be of the chain's kind. @throws ExcpError ERR_CHAIN */
function checkKinds(dir: string, kind: ChainKind, checkpoints: ReadonlyArray<{ path: string; kind: ChainKind }>): void {
  const odd = checkpoints.find((c) => c.kind !== kind);
  if (odd) {
    throw new ExcpError('ERR_CHAIN', `chain: ${odd.path} is a ${odd.kind === 'file' ? 'file' : 'checkpoint folder'}, but the chain ${dir} holds ${KIND_NAMES[kind]} (one chain holds one kind)`);
  }
}

/**
 * Read and validate a chain folder's manifest.
 * @param dir chain folder
 * @throws ExcpError ERR_CHAIN
 */
export async function readManifest(dir: string): Promise<ChainManifest> {
  const path = join(dir, CHAIN_MANIFEST);
  const text = await readFile(path, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new ExcpError('ERR_CHAIN', `chain: ${path}: cannot read (${e.code ?? e.message}); is ${dir} a chain folder?`);
  });
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new ExcpError('ERR_CHAIN', `chain: ${path}: not JSON (${(e as Error).message})`);
  }
  return parseManifest(json, path);
}

async function writeManifest(dir: string, manifest: ChainManifest): Promise<void> {
  const bytes = `${JSON.stringify(manifest, null, 2)}\n`;
  await writeAtomically(join(dir, CHAIN_MANIFEST), async (out) => {
    out.write(bytes);
  }, { force: true });
}

async function indexOf(dir: string, entry: ChainStep): Promise<ContainerIndex> {
  const index = await readContainerIndex(join(dir, entry.file)).catch((e: unknown) => {
    if (e instanceof ExcpError && e.code === 'ERR_IO') throw new ExcpError('ERR_CHAIN', `chain: step ${entry.step}: ${e.message}`);
    throw e;
  });
  checkStep(entry, index);
  return index;
}

/**
 * Start a chain folder and compress checkpoints into it. Holds the chain's lock.
 * @param dir chain folder (created; must not hold a chain already)
 * @param checkpoints safetensors files, or checkpoint folders, in step order (one kind)
 * @param options codec options, keyframeEvery, threads, paramMap (folders)
 * @returns the manifest
 * @throws ExcpError ERR_EXISTS when the folder already holds a chain, ERR_CHAIN for mixed kinds or a held lock
 */
export async function createChain(dir: string, checkpoints: readonly string[], options: ChainOptions = {}): Promise<ChainManifest> {
  const { keyframeEvery = DEFAULT_KEYFRAME_EVERY, threads: _t, onStep: _s, paramMap, ...codec } = options;
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
      return await appendSteps(dir, checkpoints, { threads: options.threads, onStep: options.onStep });
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
export async function appendToChain(dir: string, checkpoints: readonly string[], options: Pick<ChainOptions, 'threads' | 'onStep'> = {}): Promise<ChainManifest> {
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

/** appendToChain without the lock (the caller holds it). */
async function appendSteps(dir: string, checkpoints: readonly string[], options: Pick<ChainOptions, 'threads' | 'onStep'>): Promise<ChainManifest> {
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
    try {
      await writeAtomically(containerPath, (out) => compressTo(checkpoint, out, {
        ...manifest.options, base, threads: options.threads, paramMap: folders ? manifest.paramMap ?? undefined : undefined,
        // Links are checked hash by hash before a replay (checkLink).
        tensorHashes: 'always',
      }), { force: true, inputs: [checkpoint] });
      current = await readContainerIndex(containerPath);
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

/** A base that differs from the one a container was made against, inside a chain, is a broken chain. */
function chainError(e: unknown, label: string): unknown {
  if (e instanceof ExcpError && e.code === 'ERR_BASE_MISMATCH') return new ExcpError('ERR_CHAIN', `chain: ${label} does not restore against the previous step: ${e.message}`, { cause: e });
  return e;
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

/** Read the manifest and check every link on the replay path of `step`. */
async function checkedPath(dir: string, step: number, kind: ChainKind): Promise<{ manifest: ChainManifest; path: number[] }> {
  const manifest = await readManifest(dir);
  if (manifest.kind !== kind) {
    const how = manifest.kind === 'folder' ? 'to a folder (-o DIR)' : 'to a file';
    throw new ExcpError('ERR_USAGE', `chain: ${dir} holds ${KIND_NAMES[manifest.kind]}: restore a step ${how}`);
  }
  const path = replayPath(manifest, step);
  let previous: ContainerIndex | null = null;
  for (const s of path) {
    const index = await indexOf(dir, manifest.steps[s]!);
    if (previous) checkLink(previous, index, { previous: `step ${s - 1}`, current: `step ${s} (${manifest.steps[s]!.file})` });
    previous = index;
  }
  return { manifest, path };
}

/**
 * Restore one step of a chain of safetensors files into a writable (not
 * ended): replays from the nearest keyframe through temporary files,
 * checking every link first.
 * @param dir chain folder
 * @param step 0-based step
 * @param out destination (e.g. from writeAtomically)
 * @param options threads
 * @throws ExcpError ERR_CHAIN for a missing step or a broken link, ERR_USAGE for a chain of folders
 */
export async function restoreChainStep(dir: string, step: number, out: Writable, options: { threads?: number | undefined } = {}): Promise<void> {
  const { manifest, path } = await checkedPath(dir, step, 'file');
  const temp = await mkdtemp(join(tmpdir(), 'excp-chain-'));
  try {
    let base: string | undefined;
    for (const s of path.slice(0, -1)) {
      const next = join(temp, `step-${s}.safetensors`);
      const file = createWriteStream(next);
      await restoreTo(join(dir, manifest.steps[s]!.file), file, { base, threads: options.threads });
      file.end();
      await finished(file);
      if (base) await rm(base, { force: true });
      base = next;
    }
    await restoreTo(join(dir, manifest.steps[step]!.file), out, { base, threads: options.threads });
  } finally {
    await rm(temp, { recursive: true, force: true });
  }
}

/**
 * Restore one step of a chain of checkpoint folders into the folder `target`
 * (atomically: a temporary folder beside it, renamed at the end): replays
 * from the nearest keyframe through temporary folders, checking every link first.
 * @param dir chain folder
 * @param step 0-based step
 * @param target output folder
 * @param options threads, force (replace an existing target)
 * @throws ExcpError ERR_CHAIN for a missing step or a broken link, ERR_USAGE for a chain of files, ERR_EXISTS
 */
export async function restoreChainStepToFolder(dir: string, step: number, target: string,
  options: { threads?: number | undefined; force?: boolean | undefined } = {}): Promise<void> {
  const { manifest, path } = await checkedPath(dir, step, 'folder');
  if (!options.force && existsSync(target)) throw new ExcpError('ERR_EXISTS', `${target}: exists (use --force to overwrite)`);
  const temp = await mkdtemp(join(tmpdir(), 'excp-chain-'));
  try {
    let base: string | undefined;
    for (const s of path) {
      const container = join(dir, manifest.steps[s]!.file);
      const next = s === step ? target : join(temp, `step-${s}`);
      try {
        await restoreToFolder(container, next, { base, threads: options.threads, force: s === step && options.force === true });
      } catch (e) {
        throw chainError(e, `step ${s} (${manifest.steps[s]!.file})`);
      }
      if (base) await rm(base, { recursive: true, force: true });
      base = next;
    }
  } finally {
    await rm(temp, { recursive: true, force: true });
  }
}
