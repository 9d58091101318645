/**
 * Chains: a whole training run as one folder of containers.
 *
 * Layout of a chain folder:
 *   chain.json              the manifest ({@link ChainManifest}), rewritten atomically on every append
 *   step-000000.excp ...    one container per checkpoint, in step order
 *   .last-NNNNNN.safetensors  the restored last checkpoint (the base of the next append)
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
 * The pure parts (keyframe choice, link checks, manifest validation and the
 * listing) are separate from the file operations below them.
 */
import { mkdtemp, mkdir, readFile, rm, stat, unlink } from 'node:fs/promises';
import { createWriteStream, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { ContainerFooter, ContainerHeader } from './container.js';
import { TOOL_VERSION } from './constants.js';
import { ExcpError } from './errors.js';
import { fingerprintTensors } from './hash.js';
import { readContainerIndex } from './inspect.js';
import { resolveOptions } from './options.js';
import { compressTo, restoreTo, writeAtomically } from './pipeline.js';
import type { CodecOptions, LooseOptions } from './types.js';

/** Manifest format tag. */
export const CHAIN_FORMAT = 'excp-chain/1';
/** Manifest file name inside a chain folder. */
export const CHAIN_MANIFEST = 'chain.json';
/** Default distance between keyframes. */
export const DEFAULT_KEYFRAME_EVERY = 10;

/** One checkpoint of a chain. */
export interface ChainStep {
  /** Position in the chain, 0-based (what `--step` selects). */
  step: number;
  /** Container file name inside the chain folder. */
  file: string;
  /** File name of the checkpoint it was made from (informational). */
  source: string;
  /** No base: weights coded exactly. */
  keyframe: boolean;
  /** The step it is a residual against (step - 1), or null for a keyframe. */
  base: number | null;
  /** Bytes of the original checkpoint file. */
  originalBytes: number;
  /** Bytes of the container. */
  containerBytes: number;
  /** From the container footer. */
  baseFingerprint: string | null;
  targetFingerprint: string;
}

/** chain.json. */
export interface ChainManifest {
  format: typeof CHAIN_FORMAT;
  tool: string;
  keyframeEvery: number;
  /** Codec options used for every container (resolved, defaults filled in). */
  options: CodecOptions;
  steps: ChainStep[];
  /** File name of the restored last checkpoint, or null for an empty chain. */
  last: string | null;
}

/** Options of {@link createChain}. */
export interface ChainOptions extends LooseOptions {
  /** Every K-th step (and the first) is a keyframe. Default 10; 1 = keyframes only. */
  keyframeEvery?: number | undefined;
  /** Worker threads per container (default: all cores; 0 = in the calling thread). */
  threads?: number | undefined;
  /** Called after each appended step. */
  onStep?: ((step: ChainStep) => void) | undefined;
}

/** What the fs operations need of a container: its footer and the tensor list. */
export interface ContainerIndex {
  header: Pick<ContainerHeader, 'tensors'>;
  footer: Pick<ContainerFooter, 'tensorHashes' | 'baseHashes' | 'baseFingerprint' | 'targetFingerprint'>;
}

// ---------------------------------------------------------------- pure part

/**
 * Whether step `index` is a keyframe.
 * @param index 0-based step
 * @param keyframeEvery K >= 1
 * @returns true for 0, K, 2K...
 */
export function isKeyframe(index: number, keyframeEvery: number): boolean {
  return index % keyframeEvery === 0;
}

/** Container file name of a step. */
export function stepFileName(index: number): string {
  return `step-${String(index).padStart(6, '0')}.excp`;
}

/** File name of the restored checkpoint of a step kept for appends. */
export function lastFileName(index: number): string {
  return `.last-${String(index).padStart(6, '0')}.safetensors`;
}

/**
 * The steps to decode, in order, to restore `step`: from the nearest keyframe at or before it.
 * @param manifest the chain
 * @param step target step
 * @returns step numbers, keyframe first, target last
 * @throws ExcpError ERR_CHAIN when the step does not exist or no keyframe precedes it
 */
export function replayPath(manifest: ChainManifest, step: number): number[] {
  if (!Number.isInteger(step) || step < 0 || step >= manifest.steps.length) {
    throw new ExcpError('ERR_CHAIN', `chain: no step ${step} (the chain has steps 0..${manifest.steps.length - 1})`);
  }
  const path: number[] = [];
  for (let s: number | null = step; s !== null; s = manifest.steps[s]!.base) path.push(s);
  return path.reverse();
}

/**
 * Check that container `current` was made against what `previous` restores to.
 * @param previous the earlier step's container index
 * @param current the later step's container index
 * @param labels names for messages
 * @throws ExcpError ERR_CHAIN naming the first tensor that differs
 */
export function checkLink(previous: ContainerIndex, current: ContainerIndex, labels: { previous: string; current: string }): void {
  const restored = new Map(previous.header.tensors.map((t, i) => [t.name, { t, hash: previous.footer.tensorHashes[i] }]));
  const used: Array<{ name: string; dtype: string; shape: number[]; hash: string }> = [];
  current.header.tensors.forEach((t, i) => {
    const baseHash = current.footer.baseHashes[i];
    if (baseHash === null || baseHash === undefined) return;
    const p = restored.get(t.name);
    if (!p || p.t.dtype !== t.dtype || p.t.shape.join(',') !== t.shape.join(',')) {
      throw new ExcpError('ERR_CHAIN', `chain: ${labels.current} uses base tensor '${t.name}' (${t.dtype} [${t.shape.join(', ')}]), which ${labels.previous} does not restore`);
    }
    if (p.hash !== baseHash) {
      throw new ExcpError('ERR_CHAIN', `chain: ${labels.current} was made against a different base: tensor '${t.name}' has base hash ${baseHash}, but ${labels.previous} restores it with hash ${p.hash ?? '(none)'}`);
    }
    used.push({ name: t.name, dtype: t.dtype, shape: t.shape, hash: baseHash });
  });
  const expected = used.length ? fingerprintTensors(used) : null;
  if (expected !== current.footer.baseFingerprint) {
    throw new ExcpError('ERR_CHAIN', `chain: ${labels.current} has base fingerprint ${current.footer.baseFingerprint ?? '(none)'}, expected ${expected ?? '(none)'} from ${labels.previous}`);
  }
  if (expected === null) {
    throw new ExcpError('ERR_CHAIN', `chain: ${labels.current} is not a residual (no base tensors), but the chain lists it after ${labels.previous}`);
  }
}

/**
 * Check that a step's container is the one the manifest recorded, and that a keyframe has no base.
 * @throws ExcpError ERR_CHAIN
 */
export function checkStep(entry: ChainStep, index: ContainerIndex): void {
  const label = `step ${entry.step} (${entry.file})`;
  if (index.footer.targetFingerprint !== entry.targetFingerprint || index.footer.baseFingerprint !== entry.baseFingerprint) {
    throw new ExcpError('ERR_CHAIN', `chain: ${label} is not the container chain.json recorded (fingerprints ${index.footer.baseFingerprint ?? 'none'} -> ${index.footer.targetFingerprint}, recorded ${entry.baseFingerprint ?? 'none'} -> ${entry.targetFingerprint})`);
  }
  if (entry.keyframe && index.footer.baseFingerprint !== null) {
    throw new ExcpError('ERR_CHAIN', `chain: ${label} is listed as a keyframe but was made against a base`);
  }
}

/**
 * Validate a parsed chain.json.
 * @param value parsed JSON
 * @param where file name for messages
 * @returns the manifest
 * @throws ExcpError ERR_CHAIN
 */
export function parseManifest(value: unknown, where: string): ChainManifest {
  const bad = (what: string): never => {
    throw new ExcpError('ERR_CHAIN', `chain: ${where}: ${what}`);
  };
  if (typeof value !== 'object' || value === null) return bad('not a JSON object');
  const m = value as Partial<ChainManifest>;
  if (m.format !== CHAIN_FORMAT) bad(`format is ${JSON.stringify(m.format)}, expected '${CHAIN_FORMAT}'`);
  if (!Number.isInteger(m.keyframeEvery) || (m.keyframeEvery as number) < 1) bad(`keyframeEvery ${JSON.stringify(m.keyframeEvery)} is not an integer >= 1`);
  if (!Array.isArray(m.steps)) return bad('steps is not a list');
  let options: CodecOptions;
  try {
    options = resolveOptions(m.options as LooseOptions);
  } catch (e) {
    return bad(`options: ${(e as Error).message}`);
  }
  m.steps.forEach((s, i) => {
    const ok = typeof s === 'object' && s !== null && s.step === i && typeof s.file === 'string' && /^step-\d{6,}\.excp$/.test(s.file)
      && typeof s.keyframe === 'boolean' && (s.keyframe ? s.base === null : s.base === i - 1)
      && typeof s.targetFingerprint === 'string' && (s.baseFingerprint === null || typeof s.baseFingerprint === 'string');
    if (!ok) bad(`steps[${i}] is malformed`);
  });
  if (m.steps.length > 0 && !m.steps[0]!.keyframe) bad('step 0 is not a keyframe');
  if (m.last !== null && (typeof m.last !== 'string' || !/^\.last-\d{6,}\.safetensors$/.test(m.last))) bad('last is malformed');
  return { format: CHAIN_FORMAT, tool: String(m.tool), keyframeEvery: m.keyframeEvery!, options, steps: m.steps, last: m.last ?? null };
}

/**
 * The text of `excp chain ls`.
 * @param manifest the chain
 * @returns one line per step and a total
 */
export function formatChain(manifest: ChainManifest): string {
  const lines = [['step', 'kind', 'source', 'original', 'container', 'ratio'].join('\t')];
  let original = 0;
  let coded = 0;
  for (const s of manifest.steps) {
    original += s.originalBytes;
    coded += s.containerBytes;
    lines.push([s.step, s.keyframe ? 'keyframe' : `residual of ${s.base}`, s.source, s.originalBytes, s.containerBytes,
      `${(s.originalBytes / Math.max(1, s.containerBytes)).toFixed(1)}x`].join('\t'));
  }
  const o = manifest.options;
  lines.push('', `${manifest.steps.length} steps, keyframe every ${manifest.keyframeEvery}; ${o.lossless ? 'lossless' : `alpha ${o.alpha}, beta ${o.beta}, bits ${o.bits}`}`,
    `total: ${original} bytes -> ${coded} bytes, ratio ${(original / Math.max(1, coded)).toFixed(1)}x`);
  return `${lines.join('\n')}\n`;
}

// ---------------------------------------------------------------- file operations

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
 * Start a chain folder and compress checkpoints into it.
 * @param dir chain folder (created; must not hold a chain already)
 * @param checkpoints safetensors files, in step order
 * @param options codec options, keyframeEvery, threads
 * @returns the manifest
 * @throws ExcpError ERR_EXISTS when the folder already holds a chain
 */
export async function createChain(dir: string, checkpoints: readonly string[], options: ChainOptions = {}): Promise<ChainManifest> {
  const { keyframeEvery = DEFAULT_KEYFRAME_EVERY, threads: _t, onStep: _s, ...codec } = options;
  if (!Number.isInteger(keyframeEvery) || keyframeEvery < 1) {
    throw new ExcpError('ERR_OUT_OF_RANGE', `options.keyframeEvery must be an integer >= 1, got ${JSON.stringify(keyframeEvery)}`);
  }
  const resolved = resolveOptions(codec);
  if (existsSync(join(dir, CHAIN_MANIFEST))) {
    throw new ExcpError('ERR_EXISTS', `chain: ${dir} already holds a chain (use 'excp chain append')`);
  }
  await mkdir(dir, { recursive: true });
  const manifest: ChainManifest = { format: CHAIN_FORMAT, tool: `excp ${TOOL_VERSION}`, keyframeEvery, options: resolved, steps: [], last: null };
  await writeManifest(dir, manifest);
  try {
    return await appendToChain(dir, checkpoints, { threads: options.threads, onStep: options.onStep });
  } catch (e) {
    // A chain whose first checkpoint failed is no chain: leave the folder free for a retry.
    const now = await readManifest(dir).catch(() => null);
    if (now && now.steps.length === 0) await rm(join(dir, CHAIN_MANIFEST), { force: true });
    throw e;
  }
}

/**
 * Append checkpoints to a chain: each becomes a keyframe or a residual against
 * the restored previous step, which is then restored in turn for the next one.
 * @param dir chain folder
 * @param checkpoints safetensors files, in step order
 * @param options threads, onStep
 * @returns the updated manifest
 * @throws ExcpError ERR_CHAIN when the chain is broken
 */
export async function appendToChain(dir: string, checkpoints: readonly string[], options: Pick<ChainOptions, 'threads' | 'onStep'> = {}): Promise<ChainManifest> {
  const manifest = await readManifest(dir);
  for (const checkpoint of checkpoints) {
    const info = await stat(checkpoint).catch((e: NodeJS.ErrnoException) => {
      throw new ExcpError('ERR_IO', `${checkpoint}: cannot read (${e.code ?? e.message})`);
    });
    if (!info.isFile()) throw new ExcpError('ERR_INVALID_ARG', `chain: ${checkpoint} is not a file (a chain holds safetensors files; checkpoint folders are not supported yet)`);
    const index = manifest.steps.length;
    const keyframe = isKeyframe(index, manifest.keyframeEvery);
    const previous = index > 0 ? manifest.steps[index - 1]! : null;
    let base: string | undefined;
    if (!keyframe) {
      if (!previous) throw new ExcpError('ERR_CHAIN', 'chain: a residual step needs a previous step');
      base = await ensureLast(dir, manifest, options.threads);
    }
    const file = stepFileName(index);
    const containerPath = join(dir, file);
    const last = lastFileName(index);
    let current: ContainerIndex;
    try {
      await writeAtomically(containerPath, (out) => compressTo(checkpoint, out, { ...manifest.options, base, threads: options.threads }), { force: true, inputs: [checkpoint] });
      current = await readContainerIndex(containerPath);
      if (!keyframe) checkLink(await indexOf(dir, previous!), current, { previous: `step ${index - 1}`, current: `step ${index} (${file})` });
      // Restore what was just written: it is the next step's base (and proves the container decodes).
      await writeAtomically(join(dir, last), (out) => restoreTo(containerPath, out, { base, threads: options.threads }), { force: true });
    } catch (e) {
      // Nothing of a refused step stays behind; chain.json still lists the steps before it.
      await rm(containerPath, { force: true });
      if (last !== manifest.last) await rm(join(dir, last), { force: true });
      throw e;
    }
    const entry: ChainStep = {
      step: index, file, source: basename(checkpoint), keyframe, base: keyframe ? null : index - 1,
      originalBytes: info.size, containerBytes: (await stat(containerPath)).size,
      baseFingerprint: current.footer.baseFingerprint, targetFingerprint: current.footer.targetFingerprint,
    };
    const oldLast = manifest.last;
    manifest.steps.push(entry);
    manifest.last = last;
    await writeManifest(dir, manifest);
    if (oldLast && oldLast !== last) await unlink(join(dir, oldLast)).catch(() => undefined);
    options.onStep?.(entry);
  }
  return manifest;
}

/** The restored last step, rebuilt by replaying the chain when it is missing. */
async function ensureLast(dir: string, manifest: ChainManifest, threads: number | undefined): Promise<string> {
  if (manifest.last && existsSync(join(dir, manifest.last))) return join(dir, manifest.last);
  const index = manifest.steps.length - 1;
  const last = lastFileName(index);
  await writeAtomically(join(dir, last), (out) => restoreChainStep(dir, index, out, { threads }), { force: true });
  manifest.last = last;
  return join(dir, last);
}

/**
 * Restore one step of a chain into a writable (not ended): replays from the
 * nearest keyframe through temporary files, checking every link first.
 * @param dir chain folder
 * @param step 0-based step
 * @param out destination (e.g. from writeAtomically)
 * @param options threads
 * @throws ExcpError ERR_CHAIN for a missing step or a broken link
 */
export async function restoreChainStep(dir: string, step: number, out: Writable, options: { threads?: number | undefined } = {}): Promise<void> {
  const manifest = await readManifest(dir);
  const path = replayPath(manifest, step);
  let previous: ContainerIndex | null = null;
  for (const s of path) {
    const index = await indexOf(dir, manifest.steps[s]!);
    if (previous) checkLink(previous, index, { previous: `step ${s - 1}`, current: `step ${s} (${manifest.steps[s]!.file})` });
    previous = index;
  }
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
