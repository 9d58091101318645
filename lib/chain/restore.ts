/**
 * Replaying a chain (lib/chain.ts): restore step n from the nearest keyframe
 * through temporary files or folders, every link on the way checked first.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createWriteStream, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Writable } from 'node:stream';
import { finished } from 'node:stream/promises';
import { ExcpError } from '../core/errors.js';
import { KIND_NAMES, indexOf, readManifest } from './files.js';
import { checkLink, replayPath, type ChainKind, type ChainManifest, type ContainerIndex } from './manifest.js';
import { restoreTo, restoreToFolder } from '../api/restore.js';

/** A base that differs from the one a container was made against, inside a chain, is a broken chain. */
export function chainError(e: unknown, label: string): unknown {
  if (e instanceof ExcpError && e.code === 'ERR_BASE_MISMATCH') return new ExcpError('ERR_CHAIN', `chain: ${label} does not restore against the previous step: ${e.message}`, { cause: e });
  return e;
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
    const replay = async (s: number, to: Writable): Promise<void> => {
      try {
        await restoreTo(join(dir, manifest.steps[s]!.file), to, { base, threads: options.threads });
      } catch (e) {
        throw chainError(e, `step ${s} (${manifest.steps[s]!.file})`);
      }
    };
    for (const s of path.slice(0, -1)) {
      const next = join(temp, `step-${s}.safetensors`);
      const file = createWriteStream(next);
      await replay(s, file);
      file.end();
      await finished(file);
      if (base) await rm(base, { force: true });
      base = next;
    }
    await replay(step, out);
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
