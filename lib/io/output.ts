/**
 * Output files: written atomically (a temporary file beside the target,
 * renamed at the end), never over an input, never inside an input folder,
 * with a full disk reported as such and nothing half-written left behind;
 * and stdin spooled to a file when restore needs random access. The CLI and
 * chains write through these; lib/pipeline.ts does the coding.
 */
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { type FileHandle, open, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { basename, dirname, join, sep } from 'node:path';
import { type Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ExcpError, toExcpError } from '../core/errors.js';

/** How an output file is produced. */
export interface OutputOptions {
  /** Overwrite an existing output. */
  force?: boolean | undefined;
  /** Paths that must not be overwritten (the inputs). */
  inputs?: Array<string | undefined>;
}

/**
 * Write a file atomically: into a temporary file beside the target, renamed
 * over it only when the producer finished without error. On failure nothing
 * is left behind and an existing target is untouched.
 *
 * The temporary file is a dotfile, `.NAME.excp-tmp-PID-TIME`, in the target's
 * folder (a rename is only atomic within one file system). A process killed
 * with SIGKILL (or a power loss) cannot remove it; the next writeAtomically
 * to the same target removes such leftovers whose process is gone, and the
 * CLI removes its own on SIGINT, SIGTERM and SIGHUP ({@link removeActiveTemps}).
 * A target that is a character device or a FIFO (`/dev/null`, a named pipe)
 * is written directly: there is nothing to rename over.
 * @param target output path
 * @param produce writes everything into the given stream and resolves when
 *   done; for a regular file it also gets the temporary file's descriptor,
 *   for positional writes instead of the stream
 * @param options force, inputs
 * @throws ExcpError ERR_EXISTS, ERR_SAME_FILE, ERR_NO_SPACE (disk full: the partial output is removed), ERR_IO
 */
export async function writeAtomically(target: string, produce: (out: Writable, fd?: number) => Promise<void>, options: OutputOptions = {}): Promise<void> {
  const kind = await checkOutput(target, options);
  if (kind === 'device') {
    const out = createWriteStream(target);
    try {
      await produce(out);
      if (!out.writableEnded) out.end();
      if (!out.writableFinished) await once(out, 'finish');
    } catch (e) {
      out.destroy();
      throw outputError(e, target, false);
    }
    return;
  }
  await removeStaleTemps(target);
  const temp = join(dirname(target), `${tempPrefix(target)}${process.pid}-${Date.now().toString(36)}`);
  const handle = await open(temp, 'wx').catch((e: unknown) => {
    throw outputError(e, target, false);
  });
  activeTemps.add(temp);
  const out = new HandleWriter(handle);
  try {
    await produce(out, handle.fd);
    if (!out.writableEnded) out.end();
    if (!out.writableFinished) await once(out, 'finish');
    await handle.sync();
    await handle.close();
    await rename(temp, target);
  } catch (e) {
    out.on('error', () => undefined); // the first error is the one reported
    if (!out.destroyed) out.destroy();
    if (!out.closed) await once(out, 'close').catch(() => undefined);
    await handle.close().catch(() => undefined);
    await rm(temp, { force: true });
    throw outputError(e, target, true);
  } finally {
    activeTemps.delete(temp);
  }
}

/**
 * A Writable over an open FileHandle that never closes it. Not
 * fs.createWriteStream({ fd }): its destroy() closes the descriptor whatever
 * autoClose says, so a failed write and the owner's close closed one number
 * twice (EBADF, an unhandled stream error; or worse, closing a descriptor
 * opened meanwhile elsewhere). A FileHandle refuses use after close instead.
 */
class HandleWriter extends Writable {
  private readonly handle: FileHandle;

  constructor(handle: FileHandle) {
    super({ highWaterMark: 1 << 20 });
    this.handle = handle;
  }

  override _write(chunk: Uint8Array, _enc: BufferEncoding, callback: (error?: Error | null) => void): void {
    writeAll(this.handle, chunk).then(() => callback(), callback);
  }
}

async function writeAll(handle: FileHandle, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += (await handle.write(bytes, done, bytes.length - done)).bytesWritten;
}

/**
 * Copy a stream (stdin) into a temporary file beside `near`, for a restore
 * that needs random access: a folder container is restored by path. The
 * container is small (a fiftieth of the checkpoint), so this costs little.
 * The file is removed by `remove()`, and by {@link removeActiveTemps} on a
 * signal.
 * @param source the stream
 * @param near a path whose folder receives the file (the output)
 * @returns the file's path and its remover
 */
export async function spoolToFile(source: Readable, near: string): Promise<{ path: string; remove: () => Promise<void> }> {
  // Named like writeAtomically's temp files, so a spool left by a killed run
  // is removed by the next write of the same output.
  const path = join(dirname(near), `${tempPrefix(near)}${process.pid}-${Date.now().toString(36)}-stdin`);
  activeTemps.add(path);
  const remove = async (): Promise<void> => {
    await rm(path, { force: true });
    activeTemps.delete(path);
  };
  try {
    await pipeline(source, createWriteStream(path, { flags: 'wx' }));
  } catch (e) {
    await remove();
    throw outputError(e, near, false);
  }
  return { path, remove };
}

/** Temporary files of writeAtomically calls in progress in this process. */
const activeTemps = new Set<string>();

/**
 * Remove the temporary files of writes in progress, synchronously: for a
 * signal handler, just before the process exits.
 */
export function removeActiveTemps(): void {
  for (const temp of activeTemps) {
    try {
      rmSync(temp, { force: true });
    } catch {
      // best effort: the process is exiting
    }
  }
  activeTemps.clear();
}

/** Name prefix of writeAtomically's temporary files for `target`. */
export function tempPrefix(target: string): string {
  return `.${basename(target)}.excp-tmp-`;
}

/**
 * Whether a process may exist: only a definite "no such process" (ESRCH)
 * says it is gone (EPERM: it exists, owned by another user; anything else,
 * e.g. a PID out of range, is not proof). Stale temp files and chain locks
 * are taken over only when their process is certainly gone.
 */
export function processAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/** Remove temporary files a killed run left beside `target` (only those whose process is gone). */
async function removeStaleTemps(target: string): Promise<void> {
  const prefix = tempPrefix(target);
  const names = await readdir(dirname(target)).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const pid = Number(/^(\d+)-/.exec(name.slice(prefix.length))?.[1]);
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || processAlive(pid)) continue;
    await rm(join(dirname(target), name), { force: true }).catch(() => undefined);
  }
}

const NO_SPACE = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

/** An output failure as an ExcpError; a full disk gets ERR_NO_SPACE and a message that says what was done. */
function outputError(e: unknown, target: string, removed: boolean): ExcpError {
  const code = e instanceof ExcpError ? e.code : (e as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ERR_NO_SPACE' || (typeof code === 'string' && NO_SPACE.has(code))) {
    const why = code === 'EDQUOT' ? 'disk quota exceeded' : code === 'EFBIG' ? 'file too large for the device' : 'no space left on the device';
    const what = removed ? '; nothing was written (the partial output was removed)' : '';
    return new ExcpError('ERR_NO_SPACE', `${target}: ${why}${what}`, { cause: e });
  }
  return toExcpError(e, target);
}

/**
 * Check the target before writing.
 * @returns 'new' (absent), 'file' (an existing file that --force lets us replace) or 'device' (a character device or FIFO, written directly)
 */
async function checkOutput(target: string, options: OutputOptions): Promise<'new' | 'file' | 'device'> {
  // An output (or its temporary file) inside a checkpoint folder being read would become part of that input.
  const targetDir = await realpath(dirname(target)).catch(() => null);
  for (const input of options.inputs ?? []) {
    if (!input || !targetDir) continue;
    const info = await stat(input).catch(() => null);
    const dir = info?.isDirectory() ? await realpath(input).catch(() => null) : null;
    if (dir && (targetDir === dir || targetDir.startsWith(dir + sep))) {
      throw new ExcpError('ERR_SAME_FILE', `${target}: output would be written inside the input folder ${input}`);
    }
  }
  const existing = await stat(target).catch(() => null);
  if (!existing) return 'new';
  const real = await realpath(target);
  for (const input of options.inputs ?? []) {
    if (!input) continue;
    const other = await realpath(input).catch(() => null);
    if (other === real) throw new ExcpError('ERR_SAME_FILE', `${target}: output is also an input; refusing to overwrite it`);
  }
  if (existing.isDirectory()) throw new ExcpError('ERR_EXISTS', `${target}: is a directory`);
  if (existing.isCharacterDevice() || existing.isFIFO()) return 'device';
  if (!existing.isFile()) throw new ExcpError('ERR_EXISTS', `${target}: is not a regular file`);
  if (!options.force) throw new ExcpError('ERR_EXISTS', `${target}: exists (use --force to overwrite)`);
  return 'file';
}
