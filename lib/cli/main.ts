/**
 * The `excp` command: the command line parsed against the option table,
 * one handler per command, one line on stderr for an error, and the exit
 * statuses of lib/cli/exit.ts. lib/cli.ts (the package's bin) calls run();
 * importing this module runs nothing.
 */
import { TOOL_VERSION } from '../core/constants.js';
import { toExcpError } from '../core/errors.js';
import { printable } from '../core/text.js';
import type { Command } from '../core/options.js';
import { removeActiveTemps } from '../io/output.js';
import { type CommandLine, parseCommandLine } from './args.js';
import { CHAIN_COMMANDS } from './chain.js';
import { FILE_COMMANDS } from './commands.js';
import { EXIT } from './exit.js';
import { commandHelp, globalHelp } from './help.js';
import { printOut } from './io.js';

const HANDLERS: Record<Command, (line: CommandLine) => Promise<number>> = { ...FILE_COMMANDS, ...CHAIN_COMMANDS } as Record<Command, (line: CommandLine) => Promise<number>>;

/**
 * Run one command line.
 * @param argv the arguments (without `node excp`)
 * @returns the exit status
 * @throws whatever a command throws (run() reports it)
 */
export async function main(argv: readonly string[]): Promise<number> {
  const line = parseCommandLine(argv);
  if (line.values.has('version')) {
    await printOut(`excp ${TOOL_VERSION}\n`);
    return EXIT.ok;
  }
  if (line.values.has('help')) {
    await printOut(line.command ? commandHelp(line.command) : globalHelp());
    return EXIT.ok;
  }
  if (line.command === null) {
    // No command: the usage, where a user looks for it, and a status that says nothing was done.
    process.stderr.write(globalHelp());
    return EXIT.usage;
  }
  return HANDLERS[line.command](line);
}

/**
 * The process around main(): signals remove temporary outputs, a closed
 * stdout ends the run with status 141, and an error is one line on stderr
 * (`excp: stage: what`), with its stack under --debug.
 * @param argv the arguments (without `node excp`)
 */
export function run(argv: readonly string[]): void {
  const debug = argv.includes('--debug');
  process.stdout.on('error', (e: NodeJS.ErrnoException) => {
    // The reader went away (`excp restore ... | head -c 100`): the output is
    // incomplete, which must not look like success.
    if (e.code === 'EPIPE') {
      removeActiveTemps();
      process.exit(EXIT.brokenPipe);
    }
  });
  // Interrupted while writing -o OUT: remove the temporary file, leave OUT as it was.
  for (const [signal, number] of [['SIGINT', 2], ['SIGTERM', 15], ['SIGHUP', 1]] as const) {
    process.once(signal, () => {
      removeActiveTemps();
      process.exit(128 + number);
    });
  }
  main(argv).then(
    (status) => {
      process.exitCode = status;
    },
    (e: unknown) => {
      const err = toExcpError(e);
      // One line, whatever a tensor or file name in the message holds.
      process.stderr.write(`excp: ${printable(err.message)}\n`);
      if (debug) process.stderr.write(`${(e as Error).stack ?? ''}\n`);
      process.exitCode = err.code === 'ERR_USAGE' ? EXIT.usage : EXIT.error;
    },
  );
}
