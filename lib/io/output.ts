/**
 * Output files: written atomically (a temporary file beside the target,
 * renamed at the end), never over an input, never inside an input folder,
 * with a full disk reported as such and nothing half-written left behind.
 * The CLI and chains write through these; lib/api/ does the coding.
 */
import { once } from 'node:events';
import { createWriteStream } from 'node:fs';
import { type FileHandle, mkdir, open, readdir, realpath, rename, rm, stat } from 'node:fs/promises';
import { rmSync } from 'node:fs';
import { basename, dirname, join, sep } from 'node:path';
import { Writable } from 'node:stream';
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
  // Read and write: a producer may fix what it wrote in place (a torch.save file's CRCs).
  const handle = await open(temp, 'wx+').catch((e: unknown) => {
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

/** Temporary files of writeAtomically calls (and spools) in progress in this process. */
const activeTemps = new Set<string>();

/**
 * Track a temporary file so that a signal removes it ({@link removeActiveTemps}).
 * @returns a function that stops tracking it
 */
export function trackTemp(path: string): () => void {
  activeTemps.add(path);
  return () => activeTemps.delete(path);
}

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
  await removeStale(dirname(target), tempPrefix(target));
}

/**
 * Remove the files in `dir` named `PREFIX<pid>-...` whose process is gone:
 * what a killed run (SIGKILL, a power loss) left behind.
 */
export async function removeStale(dir: string, prefix: string): Promise<void> {
  const names = await readdir(dir).catch(() => [] as string[]);
  for (const name of names) {
    if (!name.startsWith(prefix)) continue;
    const pid = Number(/^(\d+)-/.exec(name.slice(prefix.length))?.[1]);
    if (!Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid || processAlive(pid)) continue;
    await rm(join(dir, name), { force: true, recursive: true }).catch(() => undefined);
  }
}

const NO_SPACE = new Set(['ENOSPC', 'EDQUOT', 'EFBIG']);

/** An output failure as an ExcpError; a full disk gets ERR_NO_SPACE and a message that says what was done. */
export function outputError(e: unknown, target: string, removed: boolean): ExcpError {
  const code = e instanceof ExcpError ? e.code : (e as NodeJS.ErrnoException | undefined)?.code;
  if (code === 'ERR_NO_SPACE' || (typeof code === 'string' && NO_SPACE.has(code))) {
    const why = code === 'EDQUOT' ? 'disk quota exceeded' : code === 'EFBIG' ? 'file too large for the device' : 'no space left on the device';
    const what = removed ? '; nothing was written (the partial output was removed)' : '';
    return new ExcpError('ERR_NO_SPACE', `${target}: ${why}${what}`, { cause: e });
  }
  if (typeof code === 'string' && !(e instanceof ExcpError)) return new ExcpError('ERR_IO', `${target}: ${fsProblem(code, target, e)}`, { cause: e });
  return toExcpError(e, target);
}

/**
 * What a file system error means for an output, in words that name the
 * user's path, never a temporary file's.
 * @param code the error's code (ENOENT, ...)
 * @param target the output the user named
 * @param e the error (its message, when the code is not one of ours)
 */
export function fsProblem(code: string, target: string, e: unknown): string {
  const folder = dirname(target);
  switch (code) {
    case 'ENOENT': return `cannot write: the folder ${folder} does not exist (create it first)`;
    case 'ENOTDIR': return `cannot write: ${folder} is not a folder`;
    case 'EACCES':
    case 'EPERM': return `cannot write: permission denied in ${folder} (choose another output)`;
    case 'EROFS': return `cannot write: ${folder} is on a read-only file system`;
    case 'EISDIR': return 'is a folder';
    case 'EMFILE':
    case 'ENFILE': return 'cannot write: too many open files';
    default: {
      // Node's own message names the path it failed on (a temporary file): keep only what happened.
      const message = e instanceof Error ? e.message.replace(/,\s*\w+\s+'[^']*'(\s*->\s*'[^']*')?$/, '') : String(e);
      return `cannot write (${message})`;
    }
  }
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

/** What a folder restore writes to. */
export interface FolderTargetOptions {
  /** Replace an existing folder. */
  force?: boolean | undefined;
  /** Paths that must not be overwritten (the inputs). */
  inputs?: Array<string | undefined>;
}

/**
 * Produce a folder atomically: into a temporary folder beside the target,
 * renamed over it only when the producer finished without error.
 * @param target the output folder
 * @param produce fills the given (empty) temporary folder
 */
export async function writeFolderAtomically(target: string, produce: (temp: string) => Promise<void>, options: FolderTargetOptions = {}): Promise<void> {
  const existing = await stat(target).catch(() => null);
  if (existing) {
    const real = await realpath(target);
    for (const input of options.inputs ?? []) {
      if (input && (await realpath(input).catch(() => null)) === real) throw new ExcpError('ERR_SAME_FILE', `${target}: output is also an input; refusing to overwrite it`);
    }
    if (!options.force) throw new ExcpError('ERR_EXISTS', `${target}: exists (use --force to overwrite)`);
    if (!existing.isDirectory()) throw new ExcpError('ERR_EXISTS', `${target}: is not a folder`);
  }
  // Not mkdtemp: it makes the folder 0700, and the restored folder should
  // have the permissions any new folder gets (0777 less the umask).
  const temp = join(dirname(target), `.${basename(target)}.excp-tmp-${process.pid}-${Date.now().toString(36)}`);
  await mkdir(temp, { mode: 0o777 }).catch((e: unknown) => {
    throw outputError(e, target, false);
  });
  try {
    await produce(temp);
    if (existing) {
      const old = `${temp}.old`;
      await rename(target, old);
      await rename(temp, target);
      await rm(old, { recursive: true, force: true });
    } else {
      await rename(temp, target);
    }
  } catch (e) {
    await rm(temp, { recursive: true, force: true });
    throw e instanceof ExcpError ? e : outputError(e, target, true);
  }
}
