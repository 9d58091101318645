/**
 * Reading exactly: a short read is the end of the file, and an error that
 * names where it happened (ERR_TRUNCATED), never a silently short buffer.
 */
import { readSync } from 'node:fs';
import type { FileHandle } from 'node:fs/promises';
import { ExcpError } from '../core/errors.js';

/** Read exactly `length` bytes at `position` into `into` (when its length fits) or a fresh (aligned) buffer. */
export async function readExactly(handle: FileHandle, position: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
  const out = into && into.length === length ? into : new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(out, done, length - done, position + done);
    if (bytesRead === 0) throw new ExcpError('ERR_TRUNCATED', `unexpected end of file at byte ${position + done}`);
    done += bytesRead;
  }
  return out;
}

/**
 * Synchronous {@link readExactly} on a descriptor, for the parsers that take
 * a synchronous `read(offset, length)` (zip, torch).
 * @param what prefix of the error message (the file)
 * @throws ExcpError ERR_TRUNCATED when the file ends first
 */
export function readExactlySync(fd: number, position: number, length: number, what: string): Uint8Array {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, out, done, length - done, position + done);
    if (n === 0) throw new ExcpError('ERR_TRUNCATED', `${what}: unexpected end of file at byte ${position + done}`);
    done += n;
  }
  return out;
}
