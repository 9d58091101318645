/**
 * Chains, the pure part: the manifest (`chain.json`) and its validation,
 * keyframe choice and what a step passes to compress ({@link stepCoding}),
 * the replay path, and link checks between consecutive containers. No file
 * is touched here; chain.ts does the file operations (create, append,
 * restore) on top of these, report.ts the listing.
 */
import type { ContainerFooter, ContainerHeader } from '../container/format.js';
import { ExcpError } from '../core/errors.js';
import { fileFormat } from '../formats/registry.js';
import { fingerprintTensors } from '../core/hash.js';
import { resolveOptions } from '../core/options.js';
import type { CodecOptions, LooseOptions } from '../core/options.js';

/** Manifest format tag. */
export const CHAIN_FORMAT = 'excp-chain/1';
/** Manifest file name inside a chain folder. */
export const CHAIN_MANIFEST = 'chain.json';
/** Default distance between keyframes. */
export const DEFAULT_KEYFRAME_EVERY = 20;

/**
 * Where a new chain keeps its restored last step: nowhere (null). A kept
 * step is a full uncompressed checkpoint; counted on disk, as it must be,
 * it alone holds a 20-checkpoint run under 20x. An append replays from the
 * last keyframe instead (--cache DIR keeps it, for faster appends).
 */
export const DEFAULT_CACHE: string | null = null;

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
  /**
   * {@link Hasher} digest of the checkpoint's bytes (a folder: of its files,
   * see folderFingerprint): an append of the same checkpoint again is
   * refused. Absent in manifests of older versions.
   */
  sourceFingerprint?: string;
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
  /**
   * Where the restored last step (the next append's base) is kept: '.' (the
   * chain folder; also what older manifests without the field mean), an
   * absolute folder (`--cache DIR`), or null (`--no-cache`: none is kept, an
   * append rebuilds it by replaying).
   */
  cache: string | null;
  /**
   * File (or folder) name of the restored last checkpoint in the cache
   * folder (with `cache` null: in the chain folder, only while a create or
   * append runs), or null when none is kept.
   */
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
  /**
   * Where to keep the restored last step: a folder, or null to keep none
   * (rebuilt by replay at the next append). Absent: as the chain has it
   * (a new chain: its own folder). Given to an append, it moves the kept step.
   */
  cache?: string | null | undefined;
  /** Seconds to wait for a chain another process holds (Infinity: no limit); absent: fail at once. */
  wait?: number | undefined;
  /** One-line notices of the steps' compress (compress's onNotice). */
  onNotice?: ((message: string) => void) | undefined;
}

/** What an append takes of {@link ChainOptions}: the coding is fixed at creation. */
export type AppendOptions = Pick<ChainOptions, 'threads' | 'onStep' | 'cache' | 'wait' | 'onNotice'>;

/** What the fs operations need of a container: its footer, the tensor list and (folders) the file list. */
export interface ContainerIndex {
  header: Pick<ContainerHeader, 'tensors'> & Partial<Pick<ContainerHeader, 'files' | 'info' | 'options'>>;
  footer: Pick<ContainerFooter, 'tensorHashes' | 'baseHashes' | 'baseFingerprint' | 'targetFingerprint'>;
}


/**
 * Whether step `index` is a keyframe.
 * @param index 0-based step
 * @param keyframeEvery K >= 1
 * @returns true for 0, K, 2K...
 */
export function isKeyframe(index: number, keyframeEvery: number): boolean {
  return index % keyframeEvery === 0;
}

/** How one step of a chain is coded. */
export interface StepCoding {
  /** No base: a keyframe. */
  keyframe: boolean;
  /** The codec options of its compress (the chain's, plus what a keyframe or residual adds). */
  options: CodecOptions;
}

/**
 * How step `index` is coded: whether it is a keyframe, and the codec
 * options its compress gets. The one place of the chain that decides what
 * a keyframe is and how it is coded: a keyframe mode (e.g. weights coded
 * lossily in keyframes only) is an option stored in the manifest and read
 * here; create, append and replay follow from this.
 * @param manifest the chain (its keyframe distance and codec options)
 * @param index 0-based step
 * @returns keyframe or residual, and the options for compress
 */
export function stepCoding(manifest: Pick<ChainManifest, 'keyframeEvery' | 'options'>, index: number): StepCoding {
  return { keyframe: isKeyframe(index, manifest.keyframeEvery), options: { ...manifest.options } };
}

/** Container file name of a step. */
export function stepFileName(index: number): string {
  return `step-${String(index).padStart(6, '0')}.excp`;
}

/**
 * File (or, for a folder chain, folder) name of the restored checkpoint of a
 * step kept for appends.
 * @param index 0-based step
 * @param kind the chain's kind
 * @param prefix '' in the chain folder; in a cache folder outside it, a name
 *   of the chain (several chains may share one cache folder)
 */
export function lastFileName(index: number, kind: ChainKind = 'file', prefix = ''): string {
  return `${prefix}.last-${String(index).padStart(6, '0')}${kind === 'file' ? '.safetensors' : ''}`;
}

/** What {@link lastFileName} makes: a plain name (no path), so chain.json cannot point a removal elsewhere. */
const LAST_NAMES: Record<ChainKind, RegExp> = {
  file: /^([A-Za-z0-9_-][A-Za-z0-9._-]*-[0-9a-f]{8})?\.last-\d{6,}\.safetensors$/,
  folder: /^([A-Za-z0-9_-][A-Za-z0-9._-]*-[0-9a-f]{8})?\.last-\d{6,}$/,
};

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
 * Folder containers: the skeletons of torch.save and .distcp files (the
 * tensors their file kind's `rewritten` names). Restore rewrites CRC fields
 * in them when the moments were lossy, so the restored folder's skeleton is
 * not the decoded one.
 */
function skeletonTensors(header: ContainerIndex['header']): Set<number> {
  return new Set((header.files ?? []).flatMap((f) => fileFormat(f.kind).rewritten?.(f) ?? []));
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
  const previousHashes = previous.footer.tensorHashes;
  const baseHashes = current.footer.baseHashes;
  // Containers written without hashes (not by excp chain): nothing to compare
  // ahead; restore still checks every base chunk's digest.
  if (!previousHashes || !baseHashes) return;
  const restored = new Map(previous.header.tensors.map((t, i) => [t.name, { t, hash: previousHashes[i] }]));
  const aliases = momentAliases(previous.header);
  const skeletons = previous.header.options?.lossless === true ? new Set<number>() : skeletonTensors(current.header);
  const used: Array<{ name: string; dtype: string; shape: number[]; hash: string }> = [];
  current.header.tensors.forEach((t, i) => {
    const baseHash = baseHashes[i];
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
      && typeof s.targetFingerprint === 'string' && (s.baseFingerprint === null || typeof s.baseFingerprint === 'string')
      && (s.sourceFingerprint === undefined || typeof s.sourceFingerprint === 'string');
    if (!ok) bad(`steps[${i}] is malformed`);
  });
  if (m.steps.length > 0 && !m.steps[0]!.keyframe) bad('step 0 is not a keyframe');
  if (m.last !== null && m.last !== undefined && (typeof m.last !== 'string' || !LAST_NAMES[kind].test(m.last))) bad('last is malformed');
  const cache = m.cache === undefined ? '.' : m.cache;
  if (cache !== null && cache !== '.' && (typeof cache !== 'string' || !/^([A-Za-z]:)?[\\/]/.test(cache))) bad('cache is not an absolute folder, \'.\' or null');
  const lastFingerprint = m.lastFingerprint ?? null;
  if (lastFingerprint !== null && typeof lastFingerprint !== 'string') bad('lastFingerprint is malformed');
  return {
    format: CHAIN_FORMAT, tool: String(m.tool), kind, keyframeEvery: m.keyframeEvery!, options, paramMap,
    steps: m.steps, cache, last: m.last ?? null, lastFingerprint,
  };
}
