/**
 * The one stdin spooler: a byte stream copied into a temporary file for a
 * reader that needs random access (compress from a pipe: a parameter and
 * its moments are read together wherever they sit; restore from a pipe to
 * a path: a folder container is restored by path).
 *
 * The file is a dotfile `.excp-spool-PID-TIME` in the folder given (the
 * system temporary folder, or the output's folder). It is removed by
 * `remove()`, on SIGINT, SIGTERM and SIGHUP (lib/io/output.ts
 * removeActiveTemps), and, after a SIGKILL or a power loss, by the next
 * spool into the same folder.
 */
import { createWriteStream } from 'node:fs';
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ExcpError } from '../core/errors.js';
import { outputError, removeStale, trackTemp } from './output.js';

/** Name prefix of spool files. */
export const SPOOL_PREFIX = '.excp-spool-';

/** A spooled stream: its file, and its remover. */
export interface Spool {
  path: string;
  /** Bytes spooled. */
  size: number;
  remove: () => Promise<void>;
}

/**
 * Copy a stream into a fresh temporary file in `dir`.
 * @param source the stream (stdin)
 * @param dir the folder of the file
 * @param what the input's name for messages (e.g. `stdin`)
 * @throws ExcpError ERR_NO_SPACE naming `dir` when it fills up (the partial spool is removed), ERR_TRUNCATED for an empty stream
 */
export async function spoolToFile(source: AsyncIterable<Uint8Array> | Readable, dir: string, what = 'stdin'): Promise<Spool> {
  await removeStale(dir, SPOOL_PREFIX);
  const path = join(dir, `${SPOOL_PREFIX}${process.pid}-${Date.now().toString(36)}`);
  const untrack = trackTemp(path);
  const remove = async (): Promise<void> => {
    await rm(path, { force: true });
    untrack();
  };
  let size = 0;
  try {
    const counted = (source instanceof Readable ? source : Readable.from(source)).on('data', (c: Uint8Array) => {
      size += c.length;
    });
    await pipeline(counted, createWriteStream(path, { flags: 'wx' }));
  } catch (e) {
    await remove();
    const err = outputError(e, dir, false);
    if (err.code === 'ERR_NO_SPACE') throw new ExcpError('ERR_NO_SPACE', `${what}: the copy of ${what} in ${dir} ran out of space (${err.message.replace(`${dir}: `, '')}); give --tmp DIR a folder with room`, { cause: e });
    throw err;
  }
  if (size === 0) {
    await remove();
    throw new ExcpError('ERR_TRUNCATED', `${what}: no input (0 bytes)`);
  }
  return { path, size, remove };
}
