/**
 * The command line's own I/O: text to stdout that fails loudly (a full
 * disk, a closed pipe), the progress line, and an output that is stdout or
 * a file written atomically.
 */
import type { Writable } from 'node:stream';
import { ExcpError } from '../core/errors.js';
import { printable } from '../core/text.js';
import { outputError, writeAtomically } from '../io/output.js';

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
 * Binary data is not written to a terminal unless asked for (as zstd and
 * gzip do): it would fill the screen with garbage and could leave the
 * terminal in a strange state.
 * @param target -o's value: undefined (nothing given) is refused on a terminal, '-' forces
 * @throws ExcpError ERR_INVALID_ARG when stdout is a terminal and -o was not given
 */
export function refuseTerminal(target: string | undefined): void {
  if (target === undefined && process.stdout.isTTY) {
    throw new ExcpError('ERR_INVALID_ARG', 'stdout is a terminal: refusing to write binary data to it; give -o FILE, or -o - (or a redirect) to write it there anyway');
  }
}

/**
 * Write binary output to stdout: refused on a terminal unless `-o -`, and a
 * full device named as stdout (writing to /dev/full, a full disk behind a
 * redirect).
 * @param target -o's value (undefined or '-')
 * @param produce writes the output
 */
export async function toStdout(target: string | undefined, produce: (out: Writable) => Promise<void>): Promise<void> {
  refuseTerminal(target);
  try {
    await produce(process.stdout);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') throw outputError(e, 'stdout', false);
    throw e;
  }
}

/**
 * One line on stderr after a compress, when stderr is a terminal (a script's
 * log stays clean): bytes in, bytes out, ratio, time.
 * @param enabled false with --quiet
 * @param what the input's name
 * @param stats sizes
 * @param seconds time taken
 */
export function summary(enabled: boolean, what: string, stats: { inputBytes: number; outputBytes: number; spilledBytes: number }, seconds: number): void {
  if (!enabled || !process.stderr.isTTY) return;
  const ratio = stats.outputBytes > 0 ? stats.inputBytes / stats.outputBytes : 0;
  const spill = stats.spilledBytes > 0 ? `; ${stats.spilledBytes} bytes waited on disk` : '';
  process.stderr.write(`compress: ${printable(what)}: ${stats.inputBytes} -> ${stats.outputBytes} bytes (${ratio.toFixed(1)}x) in ${seconds.toFixed(2)} s${spill}\n`);
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
    await toStdout(target, produce);
    return;
  }
  await writeAtomically(target, produce, { force, inputs });
}

/**
 * A notice or warning of the library on stderr, one line as `excp: ...`,
 * control characters escaped (never silenced by --quiet: it says what was
 * not compressed as asked, and why).
 */
export function notice(message: string): void {
  process.stderr.write(`excp: ${printable(message)}\n`);
}
