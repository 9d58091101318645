/**
 * The commands that work on one checkpoint or container: compress, restore,
 * inspect, verify, compare. Each takes its parsed command line and returns
 * its exit status; no codec logic lives here.
 */
import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { ExcpError } from '../core/errors.js';
import { type Command, type LooseOptions, OPTIONS, PAPER_OPTIONS } from '../core/options.js';
import { printable } from '../core/text.js';
import { spoolToFile } from '../io/spool.js';
import { readParamMapFile } from '../formats/folder.js';
import { type CompressStats, compressTo } from '../api/compress.js';
import { holdsFolder, readContainerFile } from '../api/open.js';
import { restoreTensors } from '../api/extract.js';
import { restoreTo, restoreToFile, restoreToFolder } from '../api/restore.js';
import { compressRank, holdsRanks, restoreRanks } from '../api/ranks.js';
import { isDirectory } from '../formats/registry.js';
import { formatInspect, inspectContainer, verifyContainer } from '../api/inspect.js';
import { compareCheckpoints, exceededLimit, formatCompare } from '../api/compare.js';
import { type CommandLine, usage } from './args.js';
import { EXIT } from './exit.js';
import { notice, printOut, progress, summary, toOutput, toStdout } from './io.js';

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
  const rank = num(line, 'rank');
  const options = {
    base, threads: num(line, 'threads'), memory: num(line, 'memory'),
    ...codecOptions(line),
    onProgress: progress(!line.values.has('quiet'), 'compress'),
    paramMap, rank,
    tmp: text(line, 'tmp'),
    baseCheck: line.values.has('force') ? 'warn' as const : 'refuse' as const,
    onNotice: notice,
  };
  if (rank !== undefined) {
    // One rank of a distributed checkpoint: OUT is the step's per-rank folder.
    const target = text(line, 'output');
    if (input === undefined || target === undefined || target === '-') throw usage('compress', '--rank needs a DCP folder and -o OUT_DIR (the per-rank folder of the step)');
    await compressRank(input, target, { ...options, rank, force: line.values.has('force') });
    return EXIT.ok;
  }
  const started = Date.now();
  let stats: CompressStats | null = null;
  await toOutput(text(line, 'output'), [input, base], line.values.has('force'), async (out) => {
    await compressTo(input, out, {
      ...options,
      onStats: (s) => {
        stats = s;
      },
    });
  });
  if (stats) summary(!line.values.has('quiet'), input ?? 'stdin', stats, (Date.now() - started) / 1000);
  return EXIT.ok;
}

/** Whether a path is a stream (a FIFO, `<(...)`, a character device): readable once, front to back. */
async function isStream(path: string): Promise<boolean> {
  const info = await stat(path).catch(() => null);
  return info !== null && (info.isFIFO() || info.isCharacterDevice() || info.isSocket());
}

async function restoreCommand(line: CommandLine): Promise<number> {
  const given = inputOf(line);
  const target = text(line, 'output');
  const base = text(line, 'base');
  const rank = num(line, 'rank');
  const tmp = text(line, 'tmp');
  const options = { base, threads: num(line, 'threads'), memory: num(line, 'memory'), onProgress: progress(!line.values.has('quiet'), 'restore'), rank, tmp };
  const names = line.values.get('tensor');
  if (line.values.has('with-moments') && !Array.isArray(names)) throw usage('restore', '--with-moments goes with --tensor NAME');
  if (Array.isArray(names)) {
    if (given === undefined || (await isStream(given))) throw usage('restore', '--tensor reads the records it needs by position: give IN as a file, not a pipe');
    const selected = { base, tmp, withMoments: line.values.has('with-moments'), force: line.values.has('force'), inputs: [base] };
    if (target === undefined || target === '-') await toStdout(target, (out) => restoreTensors(given, names, out, selected).then(() => undefined));
    else await restoreTensors(given, names, target, selected);
    return EXIT.ok;
  }
  if (given !== undefined && await isDirectory(given)) {
    // A per-rank folder (excp compress --rank): every rank, or --rank R.
    if (target === undefined || target === '-') throw usage('restore', 'a per-rank folder restores to a folder: -o DIR');
    if (!await holdsRanks(given)) throw usage('restore', `${given} is a folder without ranks.json or rank-R.excp containers; restore a container file`);
    await restoreRanks(given, target, { ...options, force: line.values.has('force') });
    return EXIT.ok;
  }
  if (target === undefined || target === '-') {
    await toStdout(target, (out) => restoreTo(given, out, options));
    return EXIT.ok;
  }
  // From stdin or a pipe to a path: the container may hold a folder, which
  // is restored by path; copy it (it is small) and go on as for a file.
  const streamed = given === undefined || (await isStream(given));
  const spooled = streamed ? await spoolToFile(given === undefined ? process.stdin : createReadStream(given), tmp ?? dirname(resolve(target)), given ?? 'stdin') : null;
  const input = spooled?.path ?? given!;
  try {
    const restoreOptions = { ...options, force: line.values.has('force'), inputs: [base] };
    if (await holdsFolder(input)) await restoreToFolder(input, target, restoreOptions);
    else await restoreToFile(input, target, restoreOptions);
  } catch (e) {
    // Name what the user gave, not the copy.
    if (spooled && e instanceof ExcpError) throw new ExcpError(e.code, e.message.split(spooled.path).join(given ?? 'stdin'), { cause: e });
    throw e;
  } finally {
    await spooled?.remove();
  }
  return EXIT.ok;
}

async function inspectCommand(line: CommandLine): Promise<number> {
  const [input] = positionals(line, 1, 1, 'a container file: inspect IN');
  if (line.values.has('names')) {
    const { header } = await readContainerFile(input!);
    await printOut(header.tensors.map((t) => `${printable(t.name)}\n`).join(''));
    return EXIT.ok;
  }
  const report = await inspectContainer(input!);
  await printOut(line.values.has('json') ? `${JSON.stringify(report, null, 2)}\n` : formatInspect(report));
  return EXIT.ok;
}

async function verifyCommand(line: CommandLine): Promise<number> {
  const [input] = positionals(line, 1, 1, 'a container file: verify IN');
  const result = await verifyContainer(input!, text(line, 'base'), num(line, 'threads'), text(line, 'tmp'), num(line, 'memory'));
  await printOut(`${input}: ok (${result.chunks} chunks checked${result.base ? ', base fingerprint matches' : ''}; restores to fingerprint ${result.target})\n`);
  return EXIT.ok;
}

async function compareCommand(line: CommandLine): Promise<number> {
  const [a, b] = positionals(line, 2, 2, 'two checkpoints: compare ORIGINAL RESTORED');
  const report = await compareCheckpoints(a!, b!, progress(!line.values.has('quiet'), 'compare'));
  await printOut(line.values.has('json') ? `${JSON.stringify(report, null, 2)}\n` : formatCompare(report, num(line, 'top') ?? 10));
  const limits = { all: num(line, 'max-error'), weight: num(line, 'max-weight-error'), moment: num(line, 'max-moment-error'), step: num(line, 'max-step-error') };
  if (Object.values(limits).some((v) => v !== undefined)) {
    const exceeded = exceededLimit(report, limits);
    if (exceeded) {
      process.stderr.write(`excp: compare: ${printable(exceeded)}\n`);
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
