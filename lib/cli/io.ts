/**
 * The command line's own I/O: text to stdout that fails loudly (a full
 * disk, a closed pipe), the progress line, and an output that is stdout or
 * a file written atomically.
 */
import type { Writable } from 'node:stream';
import { ExcpError } from '../core/errors.js';
import { writeAtomically } from '../io/output.js';

/**
 * Write text to stdout and wait until it is written.
 * @throws ExcpError ERR_NO_SPACE / ERR_IO when stdout cannot take it (writing to /dev/full, say)
 */
export function printOut(text: string): Promise<void> {
  return new Promise((resolve, reject) => {
    process.stdout.write(text, (err) => {
      if (!err) resolve();
      else if ((err as NodeJS.ErrnoException).code === 'ENOSPC') reject(new ExcpError('ERR_NO_SPACE', 'stdout: no space left on the device', { cause: err }));
      else reject(new ExcpError('ERR_IO', `stdout: ${(err as NodeJS.ErrnoException).code ?? err.message}`, { cause: err }));
    });
  });
}

/**
 * A progress line on stderr, only when stderr is a terminal.
 * @param enabled false with --quiet
 * @param label what is in progress
 */
export function progress(enabled: boolean, label: string): ((done: number, total: number) => void) | undefined {
  if (!enabled || !process.stderr.isTTY) return undefined;
  const started = Date.now();
  let last = 0;
  return (done, total) => {
    const now = Date.now();
    if (now - last < 200 && done < total) return;
    last = now;
    const secs = (now - started) / 1000;
    const rate = done / Math.max(secs, 1e-3);
    const eta = rate > 0 ? (total - done) / rate : 0;
    const pct = total > 0 ? (100 * done) / total : 100;
    process.stderr.write(`\r${label} ${pct.toFixed(1)}%  ${(rate / 1e6).toFixed(1)} MB/s  ETA ${eta.toFixed(0)}s   `);
    if (done >= total) process.stderr.write('\n');
  };
}

/**
 * Produce an output: stdout for an absent target or '-', else a file written atomically.
 * @param target -o's value
 * @param inputs paths the output must not overwrite
 * @param force --force
 * @param produce writes the output
 */
export async function toOutput(target: string | undefined, inputs: Array<string | undefined>, force: boolean, produce: (out: Writable) => Promise<void>): Promise<void> {
  if (target === undefined || target === '-') {
    await produce(process.stdout);
    return;
  }
  await writeAtomically(target, produce, { force, inputs });
}

/** One-line notices on stderr, as `excp: ...` (never silenced: they say what was not compressed and why). */
export function notice(message: string): void {
  process.stderr.write(`excp: ${message}\n`);
}
