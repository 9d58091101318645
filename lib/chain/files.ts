/**
 * The file operations on a chain folder that writing and replaying share:
 * chain.json read and written, a step's container index read and checked
 * against it, what a checkpoint path is (file or folder, its size, a
 * fingerprint of its content, its tensor table), and every file a chain
 * takes on disk. The chain layout is described in chain.ts.
 */
import { lstat, readFile, readdir, stat } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { join, relative, resolve, sep } from 'node:path';
import { ExcpError } from '../core/errors.js';
import { Hasher, fingerprintTensors } from '../core/hash.js';
import { writeAtomically } from '../io/output.js';
import { openCheckpoint } from '../formats/registry.js';
import { CHAIN_MANIFEST, checkStep, parseManifest, type ChainKind, type ChainManifest, type ChainStep, type ContainerIndex } from './manifest.js';
import type { ModelTensor } from './identity.js';
import type { DiskFile } from './report.js';
import { readContainerFile } from '../api/open.js';

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

/** {@link Hasher} digest of a file's bytes. */
async function fileFingerprint(path: string): Promise<string> {
  const hasher = new Hasher();
  for await (const chunk of createReadStream(path, { highWaterMark: 1 << 20 })) hasher.update(chunk as Uint8Array);
  return hasher.digest();
}

/**
 * A fingerprint of a folder's files (relative paths, sizes and bytes): what
 * chain.json records for the kept `.last-NNNNNN/` folder.
 * @param dir folder
 * @returns 16 hex digits
 */
export async function folderFingerprint(dir: string): Promise<string> {
  const listed: Array<{ name: string; dtype: string; shape: number[]; hash: string }> = [];
  for (const f of await filesOf(dir)) listed.push({ name: f.path, dtype: 'U8', shape: [f.size], hash: await fileFingerprint(join(dir, f.path)) });
  return fingerprintTensors(listed);
}

/**
 * A fingerprint of a checkpoint's content (a file's bytes; a folder's
 * files, see {@link folderFingerprint}): what chain.json records per step
 * to refuse the same checkpoint twice. Reads it once (the hash runs at
 * several GB/s: the disk sets the time).
 * @param checkpoint a path and its kind
 * @returns 16 hex digits
 */
export async function sourceFingerprint(checkpoint: { path: string; kind: ChainKind }): Promise<string> {
  return checkpoint.kind === 'folder' ? folderFingerprint(checkpoint.path) : fileFingerprint(checkpoint.path);
}

/**
 * A checkpoint's tensor table (names, dtypes, shapes), read from its
 * headers only; a folder is opened as a base (its moments unnamed: no
 * parameter map needed).
 * @param path checkpoint file or folder
 */
export async function tensorTableOf(path: string): Promise<ModelTensor[]> {
  const checkpoint = await openCheckpoint(path, { role: 'base' });
  try {
    return checkpoint.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape }));
  } finally {
    await checkpoint.close();
  }
}

/**
 * What a checkpoint path is: a file or a folder, and its size in bytes.
 * @throws ExcpError ERR_IO when it cannot be read, ERR_INVALID_ARG when it is neither
 */
export async function checkpointOf(path: string): Promise<{ path: string; kind: ChainKind; bytes: number }> {
  const info = await stat(path).catch((e: NodeJS.ErrnoException) => {
    throw new ExcpError('ERR_IO', `${path}: cannot read (${e.code ?? e.message})`);
  });
  if (info.isFile()) return { path, kind: 'file', bytes: info.size };
  if (info.isDirectory()) return { path, kind: 'folder', bytes: (await filesOf(path)).reduce((s, f) => s + f.size, 0) };
  throw new ExcpError('ERR_INVALID_ARG', `chain: ${path} is neither a file nor a folder`);
}

export const KIND_NAMES: Record<ChainKind, string> = { file: 'safetensors files', folder: 'checkpoint folders' };

/** All checkpoints must be of the chain's kind. @throws ExcpError ERR_CHAIN */
export function checkKinds(dir: string, kind: ChainKind, checkpoints: ReadonlyArray<{ path: string; kind: ChainKind }>): void {
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

export async function writeManifest(dir: string, manifest: ChainManifest): Promise<void> {
  const bytes = `${JSON.stringify(manifest, null, 2)}\n`;
  await writeAtomically(join(dir, CHAIN_MANIFEST), async (out) => {
    out.write(bytes);
  }, { force: true });
}

export async function indexOf(dir: string, entry: ChainStep): Promise<ContainerIndex> {
  const index = await readContainerFile(join(dir, entry.file)).catch((e: unknown) => {
    if (e instanceof ExcpError && e.code === 'ERR_IO') throw new ExcpError('ERR_CHAIN', `chain: step ${entry.step}: ${e.message}`);
    throw e;
  });
  checkStep(entry, index);
  return index;
}


/** Every file under a path (the path itself when it is a file), with its size; symbolic links are not followed. */
async function diskFilesOf(root: string): Promise<Array<{ path: string; bytes: number }>> {
  const info = await lstat(root).catch(() => null);
  if (!info) return [];
  if (!info.isDirectory()) return [{ path: root, bytes: info.size }];
  const out: Array<{ path: string; bytes: number }> = [];
  const names = (await readdir(root).catch(() => [] as string[])).sort();
  for (const name of names) out.push(...await diskFilesOf(join(root, name)));
  return out;
}

/**
 * Every file a chain takes on disk: each file under the chain folder, and
 * the kept restored step where chain.json says it is (outside the folder
 * with --cache DIR), each with what it is for.
 * @param dir chain folder
 * @param manifest the chain
 * @param cache path of the kept restored step, or null
 * @returns files with sizes (apparent sizes, as `ls -l` or `du -b` count them)
 */
export async function chainDiskFiles(dir: string, manifest: ChainManifest, kept: string | null): Promise<DiskFile[]> {
  const root = resolve(dir);
  const cache = kept === null ? null : resolve(kept);
  const containers = new Set(manifest.steps.map((s) => s.file));
  const under = (path: string, folder: string): boolean => path === folder || path.startsWith(folder + sep);
  const files: DiskFile[] = [];
  for (const f of await diskFilesOf(root)) {
    const name = relative(root, f.path);
    const role = cache !== null && under(f.path, cache) ? 'cache' : name === CHAIN_MANIFEST ? 'manifest' : containers.has(name) ? 'container' : 'other';
    files.push({ path: name, bytes: f.bytes, role });
  }
  if (cache !== null && !under(cache, root)) {
    for (const f of await diskFilesOf(cache)) files.push({ path: f.path, bytes: f.bytes, role: 'cache' });
  }
  return files;
}
