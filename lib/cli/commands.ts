/**
 * The commands that work on one checkpoint or container: compress, restore,
 * inspect, verify, compare. Each takes its parsed command line and returns
 * its exit status; no codec logic lives here.
 */
import { dirname, resolve } from 'node:path';
import { type Command, type LooseOptions, OPTIONS, PAPER_OPTIONS } from '../core/options.js';
import { spoolToFile } from '../io/spool.js';
import { readParamMapFile } from '../formats/folder.js';
import { compressTo } from '../api/compress.js';
import { holdsFolder } from '../api/open.js';
import { restoreTo, restoreToFile, restoreToFolder } from '../api/restore.js';
import { formatInspect, inspectContainer, verifyContainer } from '../api/inspect.js';
import { compareCheckpoints, formatCompare, worstRelativeError } from '../api/compare.js';
import { type CommandLine, usage } from './args.js';
import { EXIT } from './exit.js';
import { printOut, progress, toOutput } from './io.js';

/** A flag's string value. */
export function text(line: CommandLine, name: string): string | undefined {
  const v = line.values.get(name);
  return typeof v === 'string' ? v : undefined;
}

/** A flag's number value. */
export function num(line: CommandLine, name: string): number | undefined {
  const v = line.values.get(name);
  return typeof v === 'number' ? v : undefined;
}

/** The method's options from the flags: `--paper` first, explicit flags override it. */
export function codecOptions(line: CommandLine): LooseOptions {
  const given: Record<string, unknown> = {};
  for (const row of OPTIONS) {
    const v = line.values.get(row.name);
    if (row.field !== undefined && v !== undefined) given[row.field] = v;
  }
  return line.values.has('paper') ? { ...PAPER_OPTIONS, ...given } : given;
}

/**
 * The positional arguments, at least `min` and at most `max`.
 * @throws ExcpError ERR_USAGE naming the missing or extra argument
 */
export function positionals(line: CommandLine, min: number, max: number, what: string): string[] {
  const command = line.command as Command;
  if (line.positional.length < min) throw usage(command, `needs ${what}`);
  if (line.positional.length > max) throw usage(command, `unexpected argument '${line.positional[max]}'`);
  return line.positional;
}

/** A file argument where '-' means stdin. */
function inputOf(line: CommandLine): string | undefined {
  const [input] = positionals(line, 0, 1, 'IN');
  return input === undefined || input === '-' ? undefined : input;
}

/** The param map file of --param-map, read. */
export async function paramMapOf(line: CommandLine): Promise<string[] | undefined> {
  const file = text(line, 'param-map');
  return file === undefined ? undefined : readParamMapFile(file);
}

async function compressCommand(line: CommandLine): Promise<number> {
  const input = inputOf(line);
  const base = text(line, 'base');
  const paramMap = await paramMapOf(line);
  await toOutput(text(line, 'output'), [input, base], line.values.has('force'), async (out) => {
    await compressTo(input, out, {
      base, threads: num(line, 'threads'), memory: num(line, 'memory'),
      ...codecOptions(line),
      onProgress: progress(!line.values.has('quiet'), 'compress'),
      paramMap,
    });
  });
  return EXIT.ok;
}

async function restoreCommand(line: CommandLine): Promise<number> {
  const given = inputOf(line);
  const target = text(line, 'output');
  const base = text(line, 'base');
  const options = { base, threads: num(line, 'threads'), memory: num(line, 'memory'), onProgress: progress(!line.values.has('quiet'), 'restore') };
  if (target === undefined || target === '-') {
    await restoreTo(given, process.stdout, options);
    return EXIT.ok;
  }
  // stdin to a path: the container may hold a folder, which is restored
  // by path; spool it (it is small) and go on as for a file.
  const spooled = given === undefined ? await spoolToFile(process.stdin, dirname(resolve(target))) : null;
  const input = spooled?.path ?? given!;
  try {
    const restoreOptions = { ...options, force: line.values.has('force'), inputs: [base] };
    if (await holdsFolder(input)) await restoreToFolder(input, target, restoreOptions);
    else await restoreToFile(input, target, restoreOptions);
  } finally {
    await spooled?.remove();
  }
  return EXIT.ok;
}

async function inspectCommand(line: CommandLine): Promise<number> {
  const [input] = positionals(line, 1, 1, 'a container file: inspect IN');
  const report = await inspectContainer(input!);
  await printOut(line.values.has('json') ? `${JSON.stringify(report, null, 2)}\n` : formatInspect(report));
  return EXIT.ok;
}

async function verifyCommand(line: CommandLine): Promise<number> {
  const [input] = positionals(line, 1, 1, 'a container file: verify IN');
  const result = await verifyContainer(input!, text(line, 'base'), num(line, 'threads'), num(line, 'memory'));
  await printOut(`${input}: ok (${result.chunks} chunks checked${result.base ? ', base fingerprint matches' : ''}; restores to fingerprint ${result.target})\n`);
  return EXIT.ok;
}

async function compareCommand(line: CommandLine): Promise<number> {
  const [a, b] = positionals(line, 2, 2, 'two checkpoints: compare ORIGINAL RESTORED');
  const report = await compareCheckpoints(a!, b!, progress(!line.values.has('quiet'), 'compare'));
  await printOut(line.values.has('json') ? `${JSON.stringify(report, null, 2)}\n` : formatCompare(report, num(line, 'top') ?? 10));
  const limit = num(line, 'max-error');
  if (limit !== undefined) {
    const worst = worstRelativeError(report);
    if (worst > limit) {
      process.stderr.write(`excp: compare: a tensor's relative error is ${worst.toPrecision(3)}, above --max-error ${limit}\n`);
      return EXIT.differs;
    }
  }
  return EXIT.ok;
}

/** The commands of this file, by name. */
export const FILE_COMMANDS: Partial<Record<Command, (line: CommandLine) => Promise<number>>> = {
  compress: compressCommand,
  restore: restoreCommand,
  inspect: inspectCommand,
  verify: verifyCommand,
  compare: compareCommand,
};
