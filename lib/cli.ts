#!/usr/bin/env node
/**
 * The `excp` command: argument parsing, file/stdio plumbing, progress and
 * exit codes. No codec logic lives here.
 */
import type { Writable } from 'node:stream';
import { TOOL_VERSION } from './constants.js';
import { ExcpError, toExcpError } from './errors.js';
import { compressTo, restoreTo, writeAtomically } from './pipeline.js';
import { inspectContainer, formatInspect, verifyContainer } from './inspect.js';

const HELP = `excp ${TOOL_VERSION}: extreme compression of training checkpoints (ExCP)

Usage:
  excp compress [IN] [--base BASE] [-o OUT] [--alpha A] [--beta B] [--bits N] [--lossless]
  excp restore  [IN] [--base BASE] [-o OUT]
  excp inspect  IN [--json]
  excp verify   IN [--base BASE]

IN absent or '-' reads stdin; OUT absent or '-' writes stdout.

compress options:
  --base FILE       previous (restored) checkpoint; without it the checkpoint is a keyframe
  --alpha A         weight prune factor (default 5e-5): r_w = median|dW| * min(2.5, A / sqrt(mean v))
  --beta B          moment prune factor (default 2.0): r_o = B * mean|m|
  --bits N          index bits, 1..8 (default 4): 2^N - 1 centers plus zero
  --lossless        code every tensor exactly
  --paper           the paper's exact choices (pruned v restores as 0, linear v codebook)
  --chunk N         elements per chunk (default 1048576)
common options:
  -o, --output OUT  output file ('-' = stdout); written atomically
  -f, --force       overwrite an existing output
  --threads N       worker threads (default: all cores)
  --quiet           no progress line
  --debug           print stack traces on error
  -h, --help        this help
  -V, --version     print the version
`;

interface Args {
  command: string;
  positional: string[];
  flags: Map<string, string | true>;
}

const VALUE_FLAGS = new Set(['--base', '-o', '--output', '--alpha', '--beta', '--bits', '--threads', '--chunk']);
const BOOL_FLAGS = new Set(['--lossless', '--json', '-f', '--force', '--quiet', '--debug', '-h', '--help', '-V', '--version', '--paper']);

function parseArgs(argv: string[]): Args {
  const positional: string[] = [];
  const flags = new Map<string, string | true>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    const eq = a.startsWith('--') ? a.indexOf('=') : -1;
    const name = eq > 0 ? a.slice(0, eq) : a;
    if (VALUE_FLAGS.has(name)) {
      const value = eq > 0 ? a.slice(eq + 1) : argv[++i];
      if (value === undefined) throw new ExcpError('ERR_USAGE', `${name} needs a value`);
      flags.set(name === '--output' ? '-o' : name, value);
    } else if (BOOL_FLAGS.has(a)) {
      flags.set(a === '--force' ? '-f' : a === '--help' ? '-h' : a === '--version' ? '-V' : a, true);
    } else if (a.startsWith('-') && a !== '-') {
      throw new ExcpError('ERR_USAGE', `unknown option ${a} (see excp --help)`);
    } else {
      positional.push(a);
    }
  }
  return { command: positional.shift() ?? '', positional, flags };
}

function numberFlag(args: Args, name: string): number | undefined {
  const v = args.flags.get(name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (typeof v !== 'string' || v.trim() === '' || !Number.isFinite(n)) throw new ExcpError('ERR_USAGE', `${name} needs a number, got '${String(v)}'`);
  return n;
}

function stringFlag(args: Args, name: string): string | undefined {
  const v = args.flags.get(name);
  return typeof v === 'string' ? v : undefined;
}

/** A progress line on stderr, only when stderr is a terminal. */
function progress(enabled: boolean, label: string): ((done: number, total: number) => void) | undefined {
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

async function toOutput(target: string | undefined, inputs: Array<string | undefined>, force: boolean, produce: (out: Writable) => Promise<void>): Promise<void> {
  if (target === undefined || target === '-') {
    await produce(process.stdout);
    return;
  }
  await writeAtomically(target, produce, { force, inputs });
}

function inputOf(args: Args): string | undefined {
  const input = args.positional[0];
  if (args.positional.length > 1) throw new ExcpError('ERR_USAGE', `unexpected argument '${args.positional[1]}'`);
  return input === undefined || input === '-' ? undefined : input;
}

async function main(argv: string[]): Promise<void> {
  const args = parseArgs(argv);
  if (args.flags.has('-V')) {
    process.stdout.write(`excp ${TOOL_VERSION}\n`);
    return;
  }
  if (args.flags.has('-h') || args.command === '' || args.command === 'help') {
    process.stdout.write(HELP);
    return;
  }
  const quiet = args.flags.has('--quiet');
  const base = stringFlag(args, '--base');
  const threads = numberFlag(args, '--threads');
  const force = args.flags.has('-f');
  switch (args.command) {
    case 'compress': {
      const input = inputOf(args);
      const paper = args.flags.has('--paper');
      await toOutput(stringFlag(args, '-o'), [input, base], force, async (out) => {
        await compressTo(input, out, {
          base, threads,
          alpha: numberFlag(args, '--alpha'),
          beta: numberFlag(args, '--beta'),
          bits: numberFlag(args, '--bits'),
          chunkElements: numberFlag(args, '--chunk'),
          lossless: args.flags.has('--lossless') ? true : undefined,
          vFill: paper ? 'zero' : undefined,
          vDomain: paper ? 'linear' : undefined,
          onProgress: progress(!quiet, 'compress'),
        });
      });
      return;
    }
    case 'restore': {
      const input = inputOf(args);
      await toOutput(stringFlag(args, '-o'), [input, base], force, async (out) => {
        await restoreTo(input, out, { base, threads, onProgress: progress(!quiet, 'restore') });
      });
      return;
    }
    case 'inspect': {
      const input = inputOf(args);
      if (!input) throw new ExcpError('ERR_USAGE', 'inspect needs a container file');
      const report = await inspectContainer(input);
      process.stdout.write(args.flags.has('--json') ? `${JSON.stringify(report, null, 2)}\n` : formatInspect(report));
      return;
    }
    case 'verify': {
      const input = inputOf(args);
      if (!input) throw new ExcpError('ERR_USAGE', 'verify needs a container file');
      const result = await verifyContainer(input, base, threads);
      process.stdout.write(`${input}: ok (${result.chunks} chunks checked${result.base ? ', base fingerprint matches' : ''}; restores to fingerprint ${result.target})\n`);
      return;
    }
    default:
      throw new ExcpError('ERR_USAGE', `unknown command '${args.command}' (see excp --help)`);
  }
}

const debug = process.argv.includes('--debug');
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
});
main(process.argv.slice(2)).then(
  () => undefined,
  (e: unknown) => {
    const err = toExcpError(e);
    process.stderr.write(`excp: ${err.message}\n`);
    if (debug) process.stderr.write(`${(e as Error).stack ?? ''}\n`);
    process.exitCode = err.code === 'ERR_USAGE' ? 2 : 1;
  },
);

