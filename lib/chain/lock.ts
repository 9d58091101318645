/**
 * The lock of a chain folder: one `chain create` / `chain append` at a time.
 *
 * The lock is the file `chain.lock` in the chain folder, created with an
 * exclusive create (`open(path, 'wx')`: fails with EEXIST when it exists)
 * and holding the PID of the process that holds it. It is held for the whole
 * create or append and removed at the end, also on error. Restore and ls do
 * not take it: they read chain.json, which is replaced atomically, and
 * containers, which are renamed into place complete.
 *
 * A lock whose process is gone (`process.kill(pid, 0)` throws ESRCH: killed
 * with SIGKILL, power loss) is stale and is taken over: it is renamed aside
 * (a rename is atomic: of two processes taking over the same stale lock only
 * one moves it), its content is read again, and only a lock that still names
 * the dead PID is removed; a fresh lock moved aside by mistake is linked back.
 * An empty lock file (a process between its create and its write, or one
 * that died right there) counts as held: the message says how to remove it.
 * Not covered: a PID reused by an unrelated live process keeps the lock held
 * (the message names the PID and the file), and locks on network file
 * systems without atomic exclusive create.
 *
 * Waiting (`--wait [SECONDS]`): a held lock is tried again every
 * {@link LOCK_POLL_MS} until it is free or the time is up (no limit without
 * SECONDS). Without it a held lock fails at once, as a second run started by
 * mistake should; a scheduler that appends every checkpoint as it is saved
 * waits instead.
 */
import { link, open, readFile, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { ExcpError } from '../core/errors.js';
import { processAlive } from '../io/output.js';

/** Lock file name inside a chain folder. */
export const CHAIN_LOCK = 'chain.lock';

/** The PID in a lock file: a number, null (empty or not a PID), or 'gone' (no such file). */
async function holderOf(path: string): Promise<number | null | 'gone'> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return 'gone';
    throw new ExcpError('ERR_IO', `chain: ${path}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const pid = Number(text.trim());
  return /^\d+$/.test(text.trim()) && Number.isSafeInteger(pid) && pid > 0 ? pid : null;
}

/** How often a waiting process tries a held lock again. */
export const LOCK_POLL_MS = 200;

function lockedError(dir: string, path: string, pid: number | null, waitedMs: number | null): ExcpError {
  const who = pid === null ? 'a process that has not written its PID yet' : `pid ${pid}`;
  const what = waitedMs === null
    ? 'wait for it with --wait [SECONDS]'
    : `still held after waiting ${(waitedMs / 1000).toFixed(1)} s`;
  return new ExcpError('ERR_CHAIN', `chain: chain is locked by ${who} (${path}): another 'excp chain' create or append is running on ${dir}; ${what}, or, if no such process runs, remove ${path}`);
}

/** How a lock is taken. */
export interface LockOptions {
  /**
   * Seconds to wait for a held lock (Infinity: no limit). Absent: fail at
   * once. A lock held by this very process is waited for too (another
   * create or append of it, which releases it when done).
   */
  wait?: number | undefined;
}

/**
 * Take the lock of a chain folder (which must exist), waiting for it when asked.
 * @param dir chain folder
 * @param options wait: seconds to wait for a held lock
 * @returns a release function (removes the lock if it is still ours)
 * @throws ExcpError ERR_CHAIN when a live process holds the lock (after the wait), ERR_IO, ERR_OUT_OF_RANGE for a bad wait
 */
export async function lockChain(dir: string, options: LockOptions = {}): Promise<() => Promise<void>> {
  const { wait } = options;
  if (wait !== undefined && !(typeof wait === 'number' && wait >= 0)) {
    throw new ExcpError('ERR_OUT_OF_RANGE', `options.wait must be a number of seconds >= 0, got ${JSON.stringify(wait)}`);
  }
  const started = Date.now();
  for (;;) {
    const taken = await tryLock(dir);
    if (typeof taken === 'function') return taken;
    if (wait === undefined) throw lockedError(dir, join(dir, CHAIN_LOCK), taken.holder, null);
    const waited = Date.now() - started;
    if (waited >= wait * 1000) throw lockedError(dir, join(dir, CHAIN_LOCK), taken.holder, waited);
    await new Promise((resolve) => setTimeout(resolve, Math.min(LOCK_POLL_MS, wait * 1000 - waited)));
  }
}

/** One try at the lock: the release function, or who holds it. */
async function tryLock(dir: string): Promise<(() => Promise<void>) | { holder: number | null }> {
  const path = join(dir, CHAIN_LOCK);
  const mine = `${process.pid}\n`;
  for (let attempt = 0; attempt < 4; attempt++) {
    try {
      const handle = await open(path, 'wx');
      try {
        await handle.writeFile(mine);
      } finally {
        await handle.close();
      }
      return async () => {
        const now = await readFile(path, 'utf8').catch(() => null);
        if (now === mine) await rm(path, { force: true });
      };
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST') throw new ExcpError('ERR_IO', `chain: ${path}: cannot create the lock (${code ?? (e as Error).message})`);
    }
    const holder = await holderOf(path);
    if (holder === 'gone') continue;
    if (holder === null || holder === process.pid || processAlive(holder)) return { holder };
    // Stale: move it aside, and check that what was moved is still the dead process's lock.
    const aside = `${path}.stale-${process.pid}`;
    try {
      await rename(path, aside);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw new ExcpError('ERR_IO', `chain: ${path}: cannot take over the stale lock of pid ${holder} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    const moved = await holderOf(aside);
    if (moved !== holder && moved !== 'gone') {
      // Another process took the stale lock over between our read and our rename: give it back.
      await link(aside, path).catch(() => undefined);
      await rm(aside, { force: true });
      return { holder: moved };
    }
    await rm(aside, { force: true });
  }
  return { holder: null }; // it keeps changing hands: held, as far as this try can tell
}

/**
 * Run `work` holding the chain folder's lock.
 * @param dir chain folder (must exist)
 * @param work the create or append
 * @param options wait: seconds to wait for a held lock
 */
export async function withChainLock<T>(dir: string, work: () => Promise<T>, options: LockOptions = {}): Promise<T> {
  const release = await lockChain(dir, options);
  try {
    return await work();
  } finally {
    await release();
  }
}
