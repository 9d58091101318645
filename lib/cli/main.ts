/**
 * The `excp` command: argument parsing, file/stdio plumbing, progress and
 * exit codes. No codec logic lives here.
 */
import { dirname, resolve } from 'node:path';
import type { Writable } from 'node:stream';
import { TOOL_VERSION } from '../core/constants.js';
import { PAPER_OPTIONS } from '../core/options.js';
import { ExcpError, toExcpError } from '../core/errors.js';
import { removeActiveTemps, writeAtomically } from '../io/output.js';
import { readParamMapFile } from '../formats/folder.js';
import { inspectContainer, formatInspect, verifyContainer } from '../api/inspect.js';
import { compareCheckpoints, formatCompare, worstRelativeError } from '../api/compare.js';
import { checkpointList } from './glob.js';
import { appendToChain, createChain, formatChain, readManifest, restoreChainStep, restoreChainStepToFolder } from '../chain/chain.js';
import type { LooseOptions } from '../core/options.js';
import { compressTo } from '../api/compress.js';
import { holdsFolder } from '../api/open.js';
import { restoreTo, restoreToFile, restoreToFolder } from '../api/restore.js';
import { spoolToFile } from '../io/spool.js';

const HELP = `excp ${TOOL_VERSION}: extreme compression of training checkpoints (ExCP)

Usage:
  excp compress [IN] [--base BASE] [-o OUT] [--alpha A] [--beta B] [--bits N] [--lossless]
  excp restore  [IN] [--base BASE] [-o OUT]
  excp inspect  IN [--json]
  excp verify   IN [--base BASE]
  excp compare  A B [--json] [--top N] [--max-error E]
  excp chain    CHAIN_DIR CKPT... [--keyframe-every K] [compress options]
  excp chain append  CHAIN_DIR CKPT...
  excp chain restore CHAIN_DIR --step N [-o OUT]
  excp chain ls      CHAIN_DIR [--json]
  (CKPT: safetensors files, or checkpoint folders (then -o DIR); one kind per chain)

IN absent or '-' reads stdin; OUT absent or '-' writes stdout.
IN may be a PyTorch / Hugging Face checkpoint folder (safetensors weights or
shards, optimizer.pt, other files carried byte-exactly; --base is then the
previous folder); such a container restores to a folder: -o DIR.

compress options:
  --base FILE       previous (restored) checkpoint; without it the checkpoint is a keyframe
  --keep Q          share of the weight residual kept per chunk, largest |dW| first (default 0.3)
  --alpha A         use the paper's weight rule instead: r_w = median|dW| * min(2.5, A / sqrt(mean v)) (paper: 5e-5)
  --beta B          moment prune factor (default 2.0): r_o = B * mean|m|
  --bits N          index bits, 1..8 (default 2): 2^N - 1 centers plus zero
  --lossless        code every tensor exactly
  --paper           the paper's exact choices (alpha rule, 4 bits, pruned v restores as 0, linear v codebook)
  --chunk N         elements per chunk (default 1048576)
  --param-map FILE  folder input: JSON list of parameter names in optimizer order
compare options (A: the original, B: e.g. the restored checkpoint; files or folders):
  --top N           list the N most changed tensors (default 10)
  --max-error E     exit 1 when a tensor's relative error ||a-b||/||a|| exceeds E
chain options:
  --keyframe-every K  step 0 and every K-th step are keyframes (default 10); the
                      others are residuals against the restored previous step
  --step N          the step to restore, 0-based in the order the checkpoints were given
  --param-map FILE  a chain of folders: parameter names in optimizer order, for every step
  CKPT may be a quoted glob ('run/checkpoint-*'): excp expands it in numeric order
common options:
  -o, --output OUT  output file ('-' = stdout); written atomically
  -f, --force       overwrite an existing output
  --threads N       worker threads (default: all cores, fewer or none for a checkpoint
                    under 16M elements per core, where starting workers costs more than it saves)
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

const VALUE_FLAGS = new Set(['--base', '-o', '--output', '--alpha', '--keep', '--beta', '--bits', '--threads', '--chunk', '--keyframe-every', '--step', '--param-map', '--top', '--max-error']);
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

/** The method's options from flags: `--paper` first, explicit flags override it. */
function codecOptions(args: Args): LooseOptions {
  const explicit: LooseOptions = {
    alpha: numberFlag(args, '--alpha'),
    beta: numberFlag(args, '--beta'),
    bits: numberFlag(args, '--bits'),
    keep: numberFlag(args, '--keep'),
    chunkElements: numberFlag(args, '--chunk'),
    lossless: args.flags.has('--lossless') ? true : undefined,
  };
  const given = Object.fromEntries(Object.entries(explicit).filter(([, v]) => v !== undefined)) as LooseOptions;
  return args.flags.has('--paper') ? { ...PAPER_OPTIONS, ...given } : given;
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
      const mapFile = stringFlag(args, '--param-map');
      const paramMap = mapFile === undefined ? undefined : await readParamMapFile(mapFile);
      await toOutput(stringFlag(args, '-o'), [input, base], force, async (out) => {
        await compressTo(input, out, {
          base, threads,
          ...codecOptions(args),
          onProgress: progress(!quiet, 'compress'),
          paramMap,
        });
      });
      return;
    }
    case 'restore': {
      const given = inputOf(args);
      const target = stringFlag(args, '-o');
      if (target === undefined || target === '-') {
        await restoreTo(given, process.stdout, { base, threads, onProgress: progress(!quiet, 'restore') });
        return;
      }
      // stdin to a path: the container may hold a folder, which is restored
      // by path; spool it (it is small) and go on as for a file.
      const spooled = given === undefined ? await spoolToFile(process.stdin, dirname(resolve(target))) : null;
      const input = spooled?.path ?? given!;
      try {
        if (await holdsFolder(input)) {
          await restoreToFolder(input, target, { base, threads, force, inputs: [base], onProgress: progress(!quiet, 'restore') });
        } else {
          await restoreToFile(input, target, { base, threads, force, inputs: [base], onProgress: progress(!quiet, 'restore') });
        }
      } finally {
        await spooled?.remove();
      }
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
    case 'compare': {
      const [a, b, extra] = args.positional;
      if (a === undefined || b === undefined) throw new ExcpError('ERR_USAGE', 'compare needs two checkpoints: compare ORIGINAL RESTORED');
      if (extra !== undefined) throw new ExcpError('ERR_USAGE', `unexpected argument '${extra}'`);
      const report = await compareCheckpoints(a, b, progress(!quiet, 'compare'));
      const top = numberFlag(args, '--top') ?? 10;
      process.stdout.write(args.flags.has('--json') ? `${JSON.stringify(report, null, 2)}\n` : formatCompare(report, top));
      const limit = numberFlag(args, '--max-error');
      if (limit !== undefined) {
        const worst = worstRelativeError(report);
        if (worst > limit) throw new ExcpError('ERR_TOO_DIFFERENT', `compare: a tensor's relative error is ${worst.toPrecision(3)}, above --max-error ${limit}`);
      }
      return;
    }
    case 'chain': {
      await chainCommand(args, threads, force, quiet);
      return;
    }
    default:
      throw new ExcpError('ERR_USAGE', `unknown command '${args.command}' (see excp --help)`);
  }
}

/** Chain checkpoints: globs expanded in step order; a warning when the order given is not numeric. */
function checkpoints(positional: string[], quiet: boolean): string[] {
  const { paths, warning } = checkpointList(positional);
  if (warning && !quiet) process.stderr.write(`excp: warning: ${warning}\n`);
  return paths;
}

/** `excp chain ...`: create, append, restore, ls (lib/chain.ts). */
async function chainCommand(args: Args, threads: number | undefined, force: boolean, quiet: boolean): Promise<void> {
  const sub = ['append', 'restore', 'ls'].includes(args.positional[0] ?? '') ? args.positional.shift()! : 'create';
  const dir = args.positional.shift();
  if (dir === undefined) throw new ExcpError('ERR_USAGE', `chain ${sub === 'create' ? '' : `${sub} `}needs a chain folder`);
  const codecFlags = ['--alpha', '--keep', '--beta', '--bits', '--chunk', '--lossless', '--paper', '--keyframe-every', '--base', '--param-map'].filter((f) => args.flags.has(f));
  if (sub !== 'create' && codecFlags.length) throw new ExcpError('ERR_USAGE', `chain ${sub}: ${codecFlags.join(', ')} can only be given when the chain is created`);
  if (sub !== 'restore' && args.flags.has('--step')) throw new ExcpError('ERR_USAGE', '--step is for chain restore');
  const onStep = quiet ? undefined : (s: { step: number; keyframe: boolean; originalBytes: number; containerBytes: number; file: string }) => {
    process.stderr.write(`chain: step ${s.step} ${s.keyframe ? 'keyframe' : 'residual'} ${s.originalBytes} -> ${s.containerBytes} bytes (${(s.originalBytes / s.containerBytes).toFixed(1)}x) ${s.file}\n`);
  };
  switch (sub) {
    case 'create': {
      if (!args.positional.length) throw new ExcpError('ERR_USAGE', 'chain needs at least one checkpoint');
      const mapFile = stringFlag(args, '--param-map');
      await createChain(dir, checkpoints(args.positional, quiet), {
        keyframeEvery: numberFlag(args, '--keyframe-every'), threads, onStep,
        paramMap: mapFile === undefined ? undefined : await readParamMapFile(mapFile),
        ...codecOptions(args),
      });
      return;
    }
    case 'append': {
      if (!args.positional.length) throw new ExcpError('ERR_USAGE', 'chain append needs a checkpoint');
      await appendToChain(dir, checkpoints(args.positional, quiet), { threads, onStep });
      return;
    }
    case 'restore': {
      if (args.positional.length) throw new ExcpError('ERR_USAGE', `unexpected argument '${args.positional[0]}'`);
      const step = numberFlag(args, '--step');
      if (step === undefined) throw new ExcpError('ERR_USAGE', 'chain restore needs --step N');
      const target = stringFlag(args, '-o');
      if ((await readManifest(dir)).kind === 'folder') {
        if (target === undefined || target === '-') throw new ExcpError('ERR_USAGE', `chain restore: ${dir} holds checkpoint folders; give the output folder with -o DIR`);
        await restoreChainStepToFolder(dir, step, target, { threads, force });
        return;
      }
      await toOutput(target, [], force, (out) => restoreChainStep(dir, step, out, { threads }));
      return;
    }
    default: {
      if (args.positional.length) throw new ExcpError('ERR_USAGE', `unexpected argument '${args.positional[0]}'`);
      const manifest = await readManifest(dir);
      process.stdout.write(args.flags.has('--json') ? `${JSON.stringify(manifest, null, 2)}\n` : formatChain(manifest));
    }
  }
}

const debug = process.argv.includes('--debug');
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
});
// Interrupted while writing -o OUT: remove the temporary file, leave OUT as it was.
for (const [signal, number] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]] as const) {
  process.once(signal, () => {
    removeActiveTemps();
    process.exit(128 + number);
  });
}
main(process.argv.slice(2)).then(
  () => undefined,
  (e: unknown) => {
    const err = toExcpError(e);
    process.stderr.write(`excp: ${err.message}\n`);
    if (debug) process.stderr.write(`${(e as Error).stack ?? ''}\n`);
    process.exitCode = err.code === 'ERR_USAGE' ? 2 : 1;
  },
);

