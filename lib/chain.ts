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
 * listing) are separate from the file operations below them.
 */
import { mkdtemp, mkdir, readFile, readdir, rm, rmdir, stat } from 'node:fs/promises';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import type { ContainerFooter, ContainerHeader } from './container.js';
import { TOOL_VERSION } from './constants.js';
import { ExcpError } from './errors.js';
import { Hasher, fingerprintTensors } from './hash.js';
import { readContainerIndex } from './inspect.js';
import { resolveOptions } from './options.js';
import { compressTo, restoreTo, restoreToFolder, writeAtomically } from './pipeline.js';
import type { CodecOptions, LooseOptions } from './types.js';
import { withChainLock } from './chain-lock.js';

export { CHAIN_LOCK } from './chain-lock.js';

/** Manifest format tag. */
export const CHAIN_FORMAT = 'excp-chain/1';
/** Manifest file name inside a chain folder. */
export const CHAIN_MANIFEST = 'chain.json';
/** Default distance between keyframes. */
export const DEFAULT_KEYFRAME_EVERY = 10;

/** What a chain holds: safetensors files, or checkpoint folders. */
export type ChainKind = 'file' | 'folder';

/** One checkpoint of a chain. */
export interface ChainStep {
  /** Position in the chain, 0-based (what `--step` selects). */
  step: number;
  /** Container file name inside the chain folder. */
  file: string;
  /** File (or folder) name of the checkpoint it was made from (informational). */
  source: string;
  /** No base: weights coded exactly. */
  keyframe: boolean;
  /** The step it is a residual against (step - 1), or null for a keyframe. */
  base: number | null;
  /** Bytes of the original checkpoint (a folder: all its files). */
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
  /** What every step is (absent in older manifests: 'file'). */
  kind: ChainKind;
  keyframeEvery: number;
  /** Codec options used for every container (resolved, defaults filled in). */
  options: CodecOptions;
  /** Folder chains: parameter names in optimizer order (--param-map), used for every step; else null. */
  paramMap: string[] | null;
  steps: ChainStep[];
  /** File (or folder) name of the restored last checkpoint, or null for an empty chain. */
  last: string | null;
  /** Folder chains: {@link folderFingerprint} of the `last` folder when it was written; else null. */
  lastFingerprint: string | null;
}

/** Options of {@link createChain}. */
export interface ChainOptions extends LooseOptions {
  /** Every K-th step (and the first) is a keyframe. Default 10; 1 = keyframes only. */
  keyframeEvery?: number | undefined;
  /** Worker threads per container (default: all cores; 0 = in the calling thread). */
  threads?: number | undefined;
  /** Folder chains: parameter names in optimizer order, stored in chain.json and used for every step. */
  paramMap?: readonly string[] | undefined;
  /** Called after each appended step. */
  onStep?: ((step: ChainStep) => void) | undefined;
}

/** What the fs operations need of a container: its footer, the tensor list and (folders) the file list. */
export interface ContainerIndex {
  header: Pick<ContainerHeader, 'tensors'> & Partial<Pick<ContainerHeader, 'files' | 'info' | 'options'>>;
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

/** File (or, for a folder chain, folder) name of the restored checkpoint of a step kept for appends. */
export function lastFileName(index: number, kind: ChainKind = 'file'): string {
  return `.last-${String(index).padStart(6, '0')}${kind === 'file' ? '.safetensors' : ''}`;
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
 * Folder containers: the optimizer.pt skeletons (first tensor of each torch file).
 * Restore rewrites CRC fields in them when the moments were lossy, so the
 * restored folder's skeleton is not the decoded one.
 */
function skeletonTensors(header: ContainerIndex['header']): Set<number> {
  return new Set((header.files ?? []).flatMap((f) => (f.kind === 'torch' && f.tensors[0] !== undefined ? [f.tensors[0]] : [])));
}

/**
 * Folder containers: a base folder's moments are named `__optimizer__/ID/exp_avg`
 * (opened without a param map); the container that restored it may name them
 * `NAME.exp_avg`. Returns base name -> restored name from its param map.
 */
function momentAliases(header: ContainerIndex['header']): Map<string, string> {
  const map = (header.info?.['paramMap'] as { ids?: unknown } | undefined)?.ids;
  const out = new Map<string, string>();
  if (!Array.isArray(map)) return out;
  for (const row of map as unknown[]) {
    if (!Array.isArray(row) || typeof row[0] !== 'number' || typeof row[1] !== 'string') continue;
    for (const key of ['exp_avg', 'exp_avg_sq']) out.set(`__optimizer__/${row[0]}/${key}`, `${row[1]}.${key}`);
  }
  return out;
}

/**
 * Check that container `current` was made against what `previous` restores to.
 * Folder containers: a torch skeleton base tensor is compared only when the
 * previous step is lossless (see the file comment); otherwise the decoder
 * checks it when the step is restored.
 * @param previous the earlier step's container index
 * @param current the later step's container index
 * @param labels names for messages
 * @throws ExcpError ERR_CHAIN naming the first tensor that differs
 */
export function checkLink(previous: ContainerIndex, current: ContainerIndex, labels: { previous: string; current: string }): void {
  const restored = new Map(previous.header.tensors.map((t, i) => [t.name, { t, hash: previous.footer.tensorHashes[i] }]));
  const aliases = momentAliases(previous.header);
  const skeletons = previous.header.options?.lossless === true ? new Set<number>() : skeletonTensors(current.header);
  const used: Array<{ name: string; dtype: string; shape: number[]; hash: string }> = [];
  current.header.tensors.forEach((t, i) => {
    const baseHash = current.footer.baseHashes[i];
    if (baseHash === null || baseHash === undefined) return;
    const alias = aliases.get(t.name);
    const p = restored.get(t.name) ?? (alias === undefined ? undefined : restored.get(alias));
    if (!p || p.t.dtype !== t.dtype || p.t.shape.join(',') !== t.shape.join(',')) {
      throw new ExcpError('ERR_CHAIN', `chain: ${labels.current} uses base tensor '${t.name}' (${t.dtype} [${t.shape.join(', ')}]), which ${labels.previous} does not restore`);
    }
    if (!skeletons.has(i) && p.hash !== baseHash) {
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
  const kind = m.kind ?? 'file';
  if (kind !== 'file' && kind !== 'folder') bad(`kind is ${JSON.stringify(m.kind)}, expected 'file' or 'folder'`);
  if (!Number.isInteger(m.keyframeEvery) || (m.keyframeEvery as number) < 1) bad(`keyframeEvery ${JSON.stringify(m.keyframeEvery)} is not an integer >= 1`);
  if (!Array.isArray(m.steps)) return bad('steps is not a list');
  let options: CodecOptions;
  try {
    options = resolveOptions(m.options as LooseOptions);
  } catch (e) {
    return bad(`options: ${(e as Error).message}`);
  }
  const paramMap = m.paramMap ?? null;
  if (paramMap !== null && (!Array.isArray(paramMap) || !paramMap.every((x) => typeof x === 'string'))) bad('paramMap is not a list of names');
  m.steps.forEach((s, i) => {
    const ok = typeof s === 'object' && s !== null && s.step === i && typeof s.file === 'string' && /^step-\d{6,}\.excp$/.test(s.file)
      && typeof s.keyframe === 'boolean' && (s.keyframe ? s.base === null : s.base === i - 1)
      && typeof s.targetFingerprint === 'string' && (s.baseFingerprint === null || typeof s.baseFingerprint === 'string');
    if (!ok) bad(`steps[${i}] is malformed`);
  });
  if (m.steps.length > 0 && !m.steps[0]!.keyframe) bad('step 0 is not a keyframe');
  const lastPattern = kind === 'file' ? /^\.last-\d{6,}\.safetensors$/ : /^\.last-\d{6,}$/;
  if (m.last !== null && m.last !== undefined && (typeof m.last !== 'string' || !lastPattern.test(m.last))) bad('last is malformed');
  const lastFingerprint = m.lastFingerprint ?? null;
  if (lastFingerprint !== null && typeof lastFingerprint !== 'string') bad('lastFingerprint is malformed');
  return {
    format: CHAIN_FORMAT, tool: String(m.tool), kind, keyframeEvery: m.keyframeEvery!, options, paramMap,
    steps: m.steps, last: m.last ?? null, lastFingerprint,
  };
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
  const what = manifest.kind === 'folder' ? '; checkpoint folders' : '';
  lines.push('', `${manifest.steps.length} steps, keyframe every ${manifest.keyframeEvery}; ${o.lossless ? 'lossless' : `alpha ${o.alpha}, beta ${o.beta}, bits ${o.bits}`}${what}`,
    `total: ${original} bytes -> ${coded} bytes, ratio ${(original / Math.max(1, coded)).toFixed(1)}x`);
  return `${lines.join('\n')}\n`;
}

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
  for (const input of inputs) {
    const checkpoint = input.path;
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
    const last = lastFileName(index, manifest.kind);
    let current: ContainerIndex;
    let lastFingerprint: string | null = null;
    try {
      await writeAtomically(containerPath, (out) => compressTo(checkpoint, out, {
        ...manifest.options, base, threads: options.threads, paramMap: folders ? manifest.paramMap ?? undefined : undefined,
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
 * A kept folder is checked against the fingerprint chain.json recorded for it.
 */
async function ensureLast(dir: string, manifest: ChainManifest, threads: number | undefined): Promise<string> {
  if (manifest.last && existsSync(join(dir, manifest.last))) {
    const path = join(dir, manifest.last);
    if (manifest.kind === 'folder' && manifest.lastFingerprint !== null) {
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
