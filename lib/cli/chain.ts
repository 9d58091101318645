/**
 * `excp chain ...`: create, append, restore, ls (lib/chain/).
 */
import { ExcpError } from '../core/errors.js';
import { appendToChain, createChain, formatChain, listChain, readManifest, restoreChainStep, restoreChainStepToFolder } from '../chain/chain.js';
import { type CommandLine, usage } from './args.js';
import { codecOptions, num, paramMapOf, positionals, text } from './commands.js';
import { EXIT } from './exit.js';
import { checkpointList } from './glob.js';
import { notice, printOut, toOutput } from './io.js';

/** Chain checkpoints: globs expanded in step order; a warning when the order given is not numeric. */
function checkpoints(paths: string[], quiet: boolean): string[] {
  const { paths: expanded, warning } = checkpointList(paths);
  if (warning && !quiet) process.stderr.write(`excp: warning: ${warning}\n`);
  return expanded;
}

function onStep(line: CommandLine): ((s: { step: number; keyframe: boolean; originalBytes: number; containerBytes: number; file: string }) => void) | undefined {
  if (line.values.has('quiet')) return undefined;
  return (s) => {
    process.stderr.write(`chain: step ${s.step} ${s.keyframe ? 'keyframe' : 'residual'} ${s.originalBytes} -> ${s.containerBytes} bytes (${(s.originalBytes / s.containerBytes).toFixed(1)}x) ${s.file}\n`);
  };
}

/** --cache DIR, --no-cache (null), or neither (undefined: the chain's setting). */
function cacheOf(line: CommandLine): string | null | undefined {
  return line.values.has('no-cache') ? null : text(line, 'cache');
}

async function createCommand(line: CommandLine): Promise<number> {
  const [dir, ...ckpts] = positionals(line, 2, Infinity, 'a chain folder and at least one checkpoint: chain CHAIN_DIR CKPT...');
  await createChain(dir!, checkpoints(ckpts, line.values.has('quiet')), {
    keyframeEvery: num(line, 'keyframe-every'), threads: num(line, 'threads'), onStep: onStep(line), onNotice: notice,
    paramMap: await paramMapOf(line), cache: cacheOf(line), wait: num(line, 'wait'),
    ...codecOptions(line),
  });
  return EXIT.ok;
}

async function appendCommand(line: CommandLine): Promise<number> {
  const [dir, ...ckpts] = positionals(line, 2, Infinity, 'a chain folder and at least one checkpoint: chain append CHAIN_DIR CKPT...');
  await appendToChain(dir!, checkpoints(ckpts, line.values.has('quiet')), {
    threads: num(line, 'threads'), onStep: onStep(line), onNotice: notice, cache: cacheOf(line), wait: num(line, 'wait'),
  });
  return EXIT.ok;
}

async function restoreCommand(line: CommandLine): Promise<number> {
  const [dir] = positionals(line, 1, 1, 'a chain folder: chain restore CHAIN_DIR --step N');
  const step = num(line, 'step');
  if (step === undefined) throw usage('chain restore', 'needs --step N');
  const target = text(line, 'output');
  const threads = num(line, 'threads');
  const force = line.values.has('force');
  if ((await readManifest(dir!)).kind === 'folder') {
    if (target === undefined || target === '-') throw new ExcpError('ERR_USAGE', `chain restore: ${dir} holds checkpoint folders; give the output folder with -o DIR`);
    await restoreChainStepToFolder(dir!, step, target, { threads, force });
    return EXIT.ok;
  }
  await toOutput(target, [], force, (out) => restoreChainStep(dir!, step, out, { threads }));
  return EXIT.ok;
}

async function lsCommand(line: CommandLine): Promise<number> {
  const [dir] = positionals(line, 1, 1, 'a chain folder: chain ls CHAIN_DIR');
  const { manifest, summary } = await listChain(dir!);
  // JSON: chain.json's fields, and the figures of the text under `summary`.
  await printOut(line.values.has('json') ? `${JSON.stringify({ ...manifest, summary }, null, 2)}\n` : formatChain(manifest, summary));
  return EXIT.ok;
}

/** The chain commands, by name. */
export const CHAIN_COMMANDS = {
  chain: createCommand,
  'chain append': appendCommand,
  'chain restore': restoreCommand,
  'chain ls': lsCommand,
} as const;
