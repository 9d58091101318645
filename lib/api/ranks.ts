/**
 * Per-rank compression of a distributed checkpoint (DCP): each rank
 * compresses its own `.distcp` files where they were written, into one
 * folder per step:
 *
 *   OUT/rank-R.excp   one container per rank R (its `__R_*.distcp` files and
 *                     every `.metadata`; rank 0's also holds the folder's
 *                     other files), `header.info.dcp` = {rank, ranks, metadata}
 *   OUT/ranks.json    the manifest: {"excp": "dcp-ranks", "version": 1,
 *                     "ranks": [...], "metadata": fingerprint}, written by
 *                     rank 0 (it knows every rank from `.metadata`)
 *
 * A step restores whole (every rank's container into one folder, atomically)
 * or one rank at a time (its files moved into the target folder, so ranks can
 * restore side by side). Without `ranks.json` the containers' headers are
 * merged instead: each records every rank of its step and the fingerprint of
 * the step's `.metadata`, so a missing or foreign container is found either
 * way.
 */
import { existsSync } from 'node:fs';
import { mkdir, readFile, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { ExcpError } from '../core/errors.js';
import { writeAtomically, writeFolderAtomically } from '../io/output.js';
import type { ContainerHeader } from '../model/checkpoint.js';
import { type DcpRankInfo, isMetadataPath } from '../formats/dcp/checkpoint.js';
import { type CompressOptions, compressTo } from './compress.js';
import { readContainerFile } from './open.js';
import { type RestoreOptions, decodeFolderInto } from './restore.js';

/** The manifest of a per-rank folder. */
export const RANKS_FILE = 'ranks.json';

/** The container of rank R in a per-rank folder. */
export function rankContainer(rank: number): string {
  return `rank-${rank}.excp`;
}

/** The manifest's content. */
export interface RankManifest {
  excp: 'dcp-ranks';
  version: 1;
  /** Every rank with a container, ascending (0 always: it holds the shared files). */
  ranks: number[];
  /** Fingerprint of the step's `.metadata` files, as each container's `info.dcp.metadata`. */
  metadata: string;
}

/** A per-rank folder, checked: every rank's container and the files it restores. */
export interface RankSet {
  dir: string;
  ranks: number[];
  metadata: string;
  /** Container path and the file paths it restores, by rank. */
  containers: Map<number, { path: string; files: string[] }>;
  /** Whether `ranks.json` was there (else the set was merged from the containers' headers). */
  manifest: boolean;
}

/** `info.dcp` of a container header, checked, or null. */
export function dcpInfoOf(header: Pick<ContainerHeader, 'info'>): DcpRankInfo | null {
  const v = header.info?.['dcp'] as Partial<DcpRankInfo> | undefined;
  if (!v || typeof v !== 'object') return null;
  const { rank, ranks, metadata } = v;
  const isRank = (r: unknown): r is number => Number.isSafeInteger(r) && (r as number) >= 0;
  if (!isRank(rank) || !Array.isArray(ranks) || !ranks.every(isRank) || typeof metadata !== 'string') return null;
  return { rank, ranks, metadata };
}

/**
 * Compress one rank of a DCP folder into `outDir/rank-R.excp`; rank 0 also
 * writes `outDir/ranks.json`. The folder is created if needed (every rank may
 * run this at once).
 * @param input the step's DCP folder
 * @param outDir the step's per-rank folder
 * @param options method options, the base (the previous step's restored folder, whole or this rank's), rank, force
 * @returns the container's path and the manifest's (null for ranks other than 0)
 * @throws ExcpError ERR_EXISTS (an output exists; --force), and compress's errors
 */
export async function compressRank(input: string, outDir: string, options: CompressOptions & { rank: number; force?: boolean | undefined }): Promise<{ container: string; manifest: string | null }> {
  await mkdir(outDir, { recursive: true });
  const container = join(outDir, rankContainer(options.rank));
  await writeAtomically(container, (out) => compressTo(input, out, options), { force: options.force, inputs: [input, options.base as string | undefined] });
  if (options.rank !== 0) return { container, manifest: null };
  const info = dcpInfoOf((await readContainerFile(container)).header);
  if (!info) throw new ExcpError('ERR_BAD_HEADER', `${container}: no rank information in the header`);
  const manifest: RankManifest = { excp: 'dcp-ranks', version: 1, ranks: [...new Set([0, ...info.ranks])].sort((a, b) => a - b), metadata: info.metadata };
  const path = join(outDir, RANKS_FILE);
  const text = `${JSON.stringify(manifest)}\n`;
  // Writing the same manifest again (a rerun of rank 0) is not an overwrite.
  const old = await readFile(path, 'utf8').catch(() => null);
  if (old !== text) {
    await writeAtomically(path, async (out) => {
      await new Promise<void>((resolve, reject) => out.write(text, (e) => (e ? reject(e) : resolve())));
    }, { force: options.force });
  }
  return { container, manifest: path };
}

/** Whether a folder is a per-rank folder (holds ranks.json or rank-R.excp files). */
export async function holdsRanks(dir: string): Promise<boolean> {
  const names = await readdir(dir).catch(() => [] as string[]);
  return names.some((n) => n === RANKS_FILE || /^rank-\d+\.excp$/.test(n));
}

/**
 * Read a per-rank folder: the manifest, or the containers' headers merged,
 * and check that every rank's container (or only rank `only`'s) is there and
 * belongs to the step.
 * @param dir the per-rank folder
 * @param only check and return this rank's container only (the others may still be on their way)
 * @throws ExcpError ERR_IO (a container missing), ERR_BAD_HEADER (a malformed
 *   manifest, a container of another step or rank, a file in two ranks' containers)
 */
export async function readRankSet(dir: string, only?: number): Promise<RankSet> {
  const manifestPath = join(dir, RANKS_FILE);
  const bad = (what: string): never => {
    throw new ExcpError('ERR_BAD_HEADER', `${dir}: ${what}`);
  };
  let ranks: number[];
  let metadata: string;
  const headers = new Map<number, ContainerHeader>();
  const manifest = existsSync(manifestPath);
  if (manifest) {
    let m: Partial<RankManifest>;
    try {
      m = JSON.parse(await readFile(manifestPath, 'utf8')) as Partial<RankManifest>;
    } catch {
      return bad(`${RANKS_FILE} is not JSON`);
    }
    if (m.excp !== 'dcp-ranks' || m.version !== 1 || !Array.isArray(m.ranks) || m.ranks.length === 0 || typeof m.metadata !== 'string'
      || !m.ranks.every((r) => Number.isSafeInteger(r) && r >= 0) || new Set(m.ranks).size !== m.ranks.length) {
      return bad(`${RANKS_FILE} is not an excp rank manifest`);
    }
    ranks = [...m.ranks].sort((a, b) => a - b);
    metadata = m.metadata;
  } else {
    const names = (await readdir(dir).catch((e: NodeJS.ErrnoException) => bad(`cannot list (${e.code ?? e.message})`)))
      .filter((n) => /^rank-\d+\.excp$/.test(n) && (only === undefined || n === rankContainer(only)));
    if (names.length === 0) bad(`no ${RANKS_FILE} and no rank-R.excp containers`);
    const infos: DcpRankInfo[] = [];
    for (const name of names) {
      const { header } = await readContainerFile(join(dir, name));
      const info = dcpInfoOf(header) ?? bad(`${name} is not a per-rank container (excp compress --rank)`);
      headers.set(info.rank, header);
      infos.push(info);
    }
    metadata = infos[0]!.metadata;
    if (infos.some((i) => i.metadata !== metadata)) bad('its containers come from different steps (their .metadata fingerprints differ)');
    ranks = [...new Set([0, ...infos.flatMap((i) => i.ranks)])].sort((a, b) => a - b);
  }
  const containers = new Map<number, { path: string; files: string[] }>();
  const owner = new Map<string, number>();
  if (only !== undefined && !ranks.includes(only)) throw new ExcpError('ERR_INVALID_ARG', `${dir}: no rank ${only} (ranks ${ranks.join(', ')})`);
  for (const rank of only === undefined ? ranks : [only]) {
    const path = join(dir, rankContainer(rank));
    if (!existsSync(path)) throw new ExcpError('ERR_IO', `${dir}: the container of rank ${rank} (${rankContainer(rank)}) is missing; ranks ${ranks.join(', ')} are needed`);
    const header = headers.get(rank) ?? (await readContainerFile(path)).header;
    const info = dcpInfoOf(header);
    if (!info || info.rank !== rank) bad(`${rankContainer(rank)} holds rank ${info?.rank ?? 'none'}, not rank ${rank}`);
    if (info!.metadata !== metadata) bad(`${rankContainer(rank)} belongs to another step (its .metadata fingerprint ${info!.metadata} is not ${metadata})`);
    const files = header.files.map((f) => f.path ?? '');
    for (const f of files) {
      const other = owner.get(f);
      if (other !== undefined && !isMetadataPath(f)) bad(`${f} is in the containers of ranks ${other} and ${rank}`);
      owner.set(f, rank);
    }
    containers.set(rank, { path, files });
  }
  return { dir, ranks, metadata, containers, manifest };
}

/**
 * Restore a per-rank folder: every rank into `target` (atomically, as one
 * folder), or with `options.rank` one rank's files moved into `target`
 * (created if needed; ranks may restore into one folder side by side).
 * @param dir the per-rank folder
 * @param target the restored step folder
 * @param options base (the previous restored step, read for each rank's files), rank, force, threads, progress
 * @throws ExcpError ERR_EXISTS (a file of the rank exists in target; --force), and readRankSet's and restore's errors
 */
export async function restoreRanks(dir: string, target: string, options: RestoreOptions & { force?: boolean | undefined }): Promise<void> {
  const set = await readRankSet(dir, options.rank);
  const inputs = [dir, typeof options.base === 'string' ? options.base : undefined];
  if (options.rank === undefined) {
    await writeFolderAtomically(target, async (temp) => {
      const written = new Set<string>();
      for (const [rank, c] of set.containers) {
        await decodeFolderInto(c.path, temp, { ...options, rank }, new Set(c.files.filter((f) => written.has(f))));
        for (const f of c.files) written.add(f);
      }
    }, { force: options.force, inputs });
    return;
  }
  const c = set.containers.get(options.rank)!;
  for (const input of inputs) {
    if (input && existsSync(target) && (await realpath(input)) === (await realpath(target))) throw new ExcpError('ERR_SAME_FILE', `${target}: output is also an input; refusing to write into it`);
  }
  const temp = join(dirname(target), `.${basename(target)}.excp-tmp-${process.pid}-${Date.now().toString(36)}-rank-${options.rank}`);
  await mkdir(dirname(target), { recursive: true, mode: 0o777 });
  await mkdir(temp, { mode: 0o777 });
  try {
    await decodeFolderInto(c.path, temp, options);
    await moveInto(temp, target, c.files, options.force ?? false);
  } finally {
    await rm(temp, { recursive: true, force: true });
  }
}

/**
 * Move restored files into a folder that may hold other ranks' files: all
 * checked first (an existing file is an error without force, except a
 * byte-identical `.metadata`, which every rank restores), then renamed.
 */
async function moveInto(from: string, to: string, files: readonly string[], force: boolean): Promise<void> {
  const moves: string[] = [];
  for (const f of files) {
    const dest = join(to, f);
    const existing = await stat(dest).catch(() => null);
    if (existing) {
      if (isMetadataPath(f) && existing.isFile() && (await readFile(dest)).equals(await readFile(join(from, f)))) continue;
      if (!force) throw new ExcpError('ERR_EXISTS', `${dest}: exists (use --force to overwrite)`);
    }
    moves.push(f);
  }
  for (const f of moves) {
    await mkdir(dirname(join(to, f)), { recursive: true, mode: 0o777 });
    await rename(join(from, f), join(to, f));
  }
}
