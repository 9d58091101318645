/**
 * The file operations on a chain folder that writing and replaying share:
 * chain.json read and written, a step's container index read and checked
 * against it, and what a checkpoint path is (file or folder, its size, a
 * fingerprint of a folder's files). The chain layout is described in
 * lib/chain.ts.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { createReadStream } from 'node:fs';
import { join } from 'node:path';
import { ExcpError } from '../core/errors.js';
import { Hasher, fingerprintTensors } from '../core/hash.js';
import { writeAtomically } from '../io/output.js';
import { CHAIN_MANIFEST, checkStep, parseManifest, type ChainKind, type ChainManifest, type ChainStep, type ContainerIndex } from './manifest.js';
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

