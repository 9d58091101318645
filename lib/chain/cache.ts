/**
 * The restored last step of a chain, the base of its next append (the
 * closed loop: step n is coded against step n-1 as restored, never against
 * the original). Where it is kept is chain.json's `cache`:
 *
 * - `'.'`, the default: in the chain folder, `.last-NNNNNN.safetensors` (a
 *   folder chain: `.last-NNNNNN/`). An append reads only the new checkpoint
 *   and this file. It is as large as one checkpoint, and `chain ls` counts it.
 * - an absolute folder (`--cache DIR`): the same file outside the chain
 *   (another disk, scratch space), named after the chain
 *   (`NAME-HASH8.last-NNNNNN.safetensors`, HASH8 from the chain folder's
 *   absolute path) so that chains can share DIR. `chain ls` counts it too.
 * - null (`--no-cache`): none is kept. A create or append restores each step
 *   it writes into the chain folder for the next one, and removes the last
 *   when it ends; an append that needs a base rebuilds it first by replaying
 *   from the nearest keyframe (up to K-1 decodes).
 *
 * A missing kept step (deleted, or lost with a scratch disk) is rebuilt the
 * same way. A kept folder is checked against the fingerprint chain.json
 * recorded for it; a kept file is checked by the link check after the new
 * step is coded (its base hashes must be the previous step's restored ones).
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { basename, join, resolve } from 'node:path';
import { ExcpError } from '../core/errors.js';
import { hashBytes } from '../core/hash.js';
import { writeAtomically } from '../io/output.js';
import { folderFingerprint, writeManifest } from './files.js';
import { lastFileName, type ChainManifest } from './manifest.js';
import { restoreChainStep, restoreChainStepToFolder } from './restore.js';

/** Where a command writes the restored steps it makes. */
export interface CacheSpot {
  /** chain.json's `cache` after the command: '.', an absolute folder, or null. */
  setting: string | null;
  /** The folder they go to (the chain folder for '.' and null). */
  dir: string;
  /** Their name prefix in `dir` ('' in the chain folder). */
  prefix: string;
}

/**
 * The cache setting a command leaves: the one given, else the chain's.
 * @param chainDir chain folder
 * @param given a folder, null (none), or undefined (keep the chain's)
 * @param current the chain's setting
 */
export function cacheSetting(chainDir: string, given: string | null | undefined, current: string | null): string | null {
  if (given === undefined) return current;
  if (given === null) return null;
  const folder = resolve(given);
  return folder === resolve(chainDir) ? '.' : folder;
}

/**
 * Where restored steps go for a setting.
 * @param chainDir chain folder
 * @param setting '.', an absolute folder, or null
 */
export function cacheSpot(chainDir: string, setting: string | null): CacheSpot {
  if (setting === null || setting === '.') return { setting, dir: chainDir, prefix: '' };
  const chain = resolve(chainDir);
  const name = basename(chain).replace(/[^A-Za-z0-9._-]/g, '_').replace(/^\.+/, '') || 'chain';
  return { setting, dir: setting, prefix: `${name}-${hashBytes(new TextEncoder().encode(chain)).slice(0, 8)}` };
}

/**
 * The path of the kept restored last step, or null when none is recorded.
 * @param chainDir chain folder
 * @param manifest the chain
 */
export function lastPath(chainDir: string, manifest: Pick<ChainManifest, 'cache' | 'last'>): string | null {
  if (manifest.last === null) return null;
  return join(manifest.cache === null || manifest.cache === '.' ? chainDir : manifest.cache, manifest.last);
}

/**
 * Remove what a killed create or append left: temporary files and folders
 * of the chain's own outputs, kept steps chain.json does not name (in the
 * chain folder, and this chain's in the cache folder), and, for a create
 * (no chain.json yet), step containers. Only called with the lock held, so
 * no live process is writing them.
 * @param chainDir chain folder
 * @param manifest the chain (a create: the new manifest, with no step)
 * @param spot where this command writes restored steps
 * @param creating a create: the chain's containers are leftovers too
 */
export async function removeLeftovers(chainDir: string, manifest: ChainManifest, spot: CacheSpot, creating: boolean): Promise<void> {
  const named = lastPath(chainDir, manifest);
  const sweep = async (dir: string, prefix: string, more: RegExp | null): Promise<void> => {
    const p = prefix.replace(/[.]/g, '\\.');
    const temp = new RegExp(`^\\.${p}\\.last-\\d+(\\.safetensors)?\\.excp-tmp-`);
    const kept = new RegExp(`^${p}\\.last-\\d+(\\.safetensors)?$`);
    for (const name of await readdir(dir).catch(() => [] as string[])) {
      const path = join(dir, name);
      const stale = temp.test(name) || (kept.test(name) && path !== named) || (more?.test(name) ?? false);
      if (stale) await rm(path, { recursive: true, force: true }).catch(() => undefined);
    }
  };
  await sweep(chainDir, '', creating ? /^(\.(step-\d+\.excp|chain\.json)\.excp-tmp-|step-\d{6,}\.excp$)/ : /^\.(step-\d+\.excp|chain\.json)\.excp-tmp-/);
  if (spot.prefix) await sweep(spot.dir, spot.prefix, null);
}

/**
 * The restored last step, rebuilt by replaying the chain into `spot` when
 * it is not kept (or gone). A kept folder is checked against the
 * fingerprint chain.json recorded for it, unless this process wrote it
 * (`written`) in the same command.
 * @param chainDir chain folder
 * @param manifest the chain (updated when the step is rebuilt)
 * @param spot where a rebuilt step goes
 * @param options threads; written: the path this command wrote last; persist: rewrite chain.json after a rebuild
 * @returns its path
 * @throws ExcpError ERR_CHAIN when a kept folder was changed
 */
export async function ensureLast(chainDir: string, manifest: ChainManifest, spot: CacheSpot,
  options: { threads?: number | undefined; written: string | null; persist: boolean }): Promise<string> {
  const kept = lastPath(chainDir, manifest);
  if (kept !== null && existsSync(kept)) {
    if (manifest.kind === 'folder' && manifest.lastFingerprint !== null && kept !== options.written) {
      const now = await folderFingerprint(kept);
      if (now !== manifest.lastFingerprint) {
        throw new ExcpError('ERR_CHAIN', `chain: the kept restored folder ${kept} was changed since it was written (fingerprint ${now}, chain.json recorded ${manifest.lastFingerprint}); remove it and append again: it is rebuilt by replaying the chain`);
      }
    }
    return kept;
  }
  const index = manifest.steps.length - 1;
  const name = lastFileName(index, manifest.kind, spot.prefix);
  const target = join(spot.dir, name);
  await mkdir(spot.dir, { recursive: true });
  if (manifest.kind === 'folder') {
    await restoreChainStepToFolder(chainDir, index, target, { threads: options.threads, force: true });
    manifest.lastFingerprint = await folderFingerprint(target);
  } else {
    await writeAtomically(target, (out) => restoreChainStep(chainDir, index, out, { threads: options.threads }), { force: true });
  }
  manifest.cache = spot.setting;
  manifest.last = name;
  if (options.persist) await writeManifest(chainDir, manifest);
  if (kept !== null && kept !== target) await rm(kept, { recursive: true, force: true }).catch(() => undefined);
  return target;
}
