/**
 * Opening a container file by path for random access (its header, its
 * footer) with the file kinds this version knows, and errors that name the
 * file. inspect, verify, chains and restore's "file or folder?" go through
 * here; lib/container/index.ts does the reading.
 */
import { open } from 'node:fs/promises';
import { ExcpError } from '../core/errors.js';
import { type ContainerSource, readContainerHead, readContainerIndex } from '../container/index.js';
import { readExactly } from '../io/read.js';
import type { ContainerFooter, ContainerHeader } from '../model/checkpoint.js';
import { FILE_KINDS } from '../formats/registry.js';
import { otherThanContainer } from '../formats/sniff.js';

async function withContainer<T>(path: string, use: (source: ContainerSource) => Promise<T>): Promise<T> {
  const handle = await open(path, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new ExcpError('ERR_IO', `${path}: cannot open (${e.code ?? e.message})`);
  });
  try {
    const info = await handle.stat();
    if (info.isDirectory()) throw new ExcpError('ERR_INVALID_ARG', `${path}: is a folder, not a container`);
    if (!info.isFile()) {
      throw new ExcpError('ERR_INVALID_ARG', `${path}: not a regular file (a pipe?): the container's index is at its end, so this reads it by position; save it to a file first (excp restore reads a pipe)`);
    }
    const size = info.size;
    return await use({ size, read: (offset, length) => readExactly(handle, offset, length) });
  } catch (e) {
    if (e instanceof ExcpError && !e.message.startsWith(path)) throw new ExcpError(e.code, `${path}: ${e.message}`, { cause: e });
    throw e;
  } finally {
    await handle.close();
  }
}

const OPTIONS = { kinds: FILE_KINDS, hint: otherThanContainer };

/**
 * Read header and footer of a container file (random access).
 * @param path container file
 * @throws ExcpError naming the file
 */
export function readContainerFile(path: string): Promise<{ header: ContainerHeader; footer: ContainerFooter; size: number }> {
  return withContainer(path, (source) => readContainerIndex(source, OPTIONS));
}

/**
 * Does a container file hold a checkpoint folder (rather than one file)?
 * Reads only the preamble and header.
 * @param path container file
 */
export async function holdsFolder(path: string): Promise<boolean> {
  const { header } = await withContainer(path, (source) => readContainerHead(source, OPTIONS));
  return !(header.files.length === 1 && header.files[0]!.path === null);
}

/**
 * The rank a per-rank container of a distributed checkpoint holds
 * (`header.info.dcp.rank`, lib/api/ranks.ts), or undefined. Reads only the
 * preamble and header.
 * @param path container file
 */
export async function containerRank(path: string): Promise<number | undefined> {
  const { header } = await withContainer(path, (source) => readContainerHead(source, OPTIONS));
  const rank = (header.info?.['dcp'] as { rank?: unknown } | undefined)?.rank;
  return Number.isSafeInteger(rank) ? (rank as number) : undefined;
}

/**
 * Use a container file's index (header and footer) and its bytes by random
 * access; the file is closed after.
 * @param path container file
 * @param use gets the bytes, the header and the footer
 * @throws ExcpError naming the file
 */
export function withContainerIndex<T>(path: string, use: (source: ContainerSource, header: ContainerHeader, footer: ContainerFooter) => Promise<T>): Promise<T> {
  return withContainer(path, async (source) => {
    const { header, footer } = await readContainerIndex(source, OPTIONS);
    return use(source, header, footer);
  });
}
