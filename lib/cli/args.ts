/**
 * The command line, parsed against the option table (lib/core/options.ts):
 * the command, its positional arguments and its flags, each value checked
 * against its row. A flag the command does not take, a flag given twice, a
 * missing or bad value and conflicting flags are usage errors (exit 2) that
 * name the flag, never a field of the library.
 */
import { availableParallelism } from 'node:os';
import { ExcpError } from '../core/errors.js';
import { COMMANDS, type Command, OPTIONS, type OptionSpec, describeRange, optionNamed, parseSize, valueFits } from '../core/options.js';

/** A parsed command line. */
export interface CommandLine {
  /** null: no command (`excp`, `excp --help`, `excp --version`). */
  command: Command | null;
  positional: string[];
  /** Flag values by long name: true for flags, a number or a string otherwise, the list of values for a repeatable option. */
  values: Map<string, string | number | boolean | string[]>;
}

/** The chain sub-commands (the first positional after `chain`). */
const CHAIN_SUBCOMMANDS = ['append', 'restore', 'ls'];

/** A usage error of a command, naming it. */
export function usage(command: Command | null, what: string): ExcpError {
  return new ExcpError('ERR_USAGE', command ? `${command}: ${what} (see excp ${command} --help)` : `${what} (see excp --help)`);
}

/**
 * Parse argv (without `node excp`).
 * @throws ExcpError ERR_USAGE naming the flag or argument
 */
export function parseCommandLine(argv: readonly string[]): CommandLine {
  // The command: the first argument that is not a flag (flags may come first: `excp -h`).
  const first = argv.findIndex((a) => !a.startsWith('-') || a === '-');
  let command: Command | null = null;
  const rest = [...argv];
  if (first >= 0) {
    const word = rest.splice(first, 1)[0]!;
    if (word === 'chain') {
      const next = rest.findIndex((a) => !a.startsWith('-') || a === '-');
      if (next >= 0 && CHAIN_SUBCOMMANDS.includes(rest[next]!)) command = `chain ${rest.splice(next, 1)[0]!}` as Command;
      else command = 'chain';
    } else if ((COMMANDS as readonly string[]).includes(word) && !word.includes(' ')) {
      command = word as Command;
    } else if (word === 'help') {
      const topic = rest.findIndex((a) => !a.startsWith('-'));
      const name = topic >= 0 ? rest.splice(topic, 1)[0]! : null;
      const sub = name === 'chain' && rest[topic] !== undefined && CHAIN_SUBCOMMANDS.includes(rest[topic]!) ? `chain ${rest.splice(topic, 1)[0]!}` : name;
      if (sub !== null && !(COMMANDS as readonly string[]).includes(sub)) throw usage(null, `no command '${sub}'`);
      return { command: sub as Command | null, positional: [], values: new Map([['help', true]]) };
    } else {
      throw usage(null, `unknown command '${word}'`);
    }
  }
  const values = new Map<string, string | number | boolean | string[]>();
  const positional: string[] = [];
  for (let i = 0; i < rest.length; i++) {
    const arg = rest[i]!;
    if (arg === '--') {
      positional.push(...rest.slice(i + 1));
      break;
    }
    if (!arg.startsWith('-') || arg === '-') {
      positional.push(arg);
      continue;
    }
    if (arg === '-V' || arg === '--version') {
      values.set('version', true);
      continue;
    }
    const eq = arg.startsWith('--') ? arg.indexOf('=') : -1;
    const flag = eq > 0 ? arg.slice(0, eq) : arg;
    const spec = arg.startsWith('--') ? optionNamed(flag.slice(2)) : OPTIONS.find((o) => o.short !== undefined && `-${o.short}` === flag);
    if (!spec || (spec.commands.length === 0)) throw usage(command, `unknown option ${flag}`);
    if (command === null ? spec.name !== 'help' && spec.name !== 'debug' : !spec.commands.includes(command)) {
      throw usage(command, `${flag} is not an option of ${command ?? 'excp without a command'}`);
    }
    if (values.has(spec.name) && !spec.repeatable) throw usage(command, `${flag} is given twice`);
    if (spec.kind === 'flag') {
      if (eq > 0) throw usage(command, `${flag} takes no value`);
      values.set(spec.name, true);
      continue;
    }
    if (spec.implied !== undefined && eq < 0) {
      // An optional value: the next argument only when it is one (else it is a positional or a flag).
      const next = rest[i + 1];
      const value = next === undefined || next.startsWith('-') ? undefined : valueOf(spec, next);
      if (value === undefined) values.set(spec.name, spec.implied);
      else {
        values.set(spec.name, value);
        i++;
      }
      continue;
    }
    const text = eq > 0 ? arg.slice(eq + 1) : rest[++i];
    if (text === undefined) throw usage(command, `${flag} needs a value (${describeRange(spec, availableParallelism())})`);
    const value = parseValue(spec, flag, text, command);
    if (spec.repeatable) {
      const list = values.get(spec.name);
      values.set(spec.name, [...(Array.isArray(list) ? list : []), String(value)]);
    } else {
      values.set(spec.name, value);
    }
  }
  for (const name of values.keys()) {
    for (const other of optionNamed(name)?.conflicts ?? []) {
      if (values.has(other)) throw usage(command, `--${name} and --${other} cannot be given together`);
    }
  }
  return { command, positional, values };
}

/**
 * A flag's value as its row types it (a number, a size in bytes, one of the
 * row's words such as `auto`, or the text), or undefined when it does not fit the row.
 */
function valueOf(spec: OptionSpec, text: string): string | number | undefined {
  let value: string | number = text;
  if (spec.words?.includes(text)) {
    value = text;
  } else if (spec.kind === 'number' || spec.kind === 'integer') {
    value = text.trim() === '' ? NaN : Number(text);
  } else if (spec.kind === 'size') {
    value = parseSize(text);
  }
  return valueFits(spec, value, availableParallelism()) ? value : undefined;
}

function parseValue(spec: OptionSpec, flag: string, text: string, command: Command | null): string | number {
  const value = valueOf(spec, text);
  if (value === undefined) throw usage(command, `${flag} must be ${describeRange(spec, availableParallelism())}, got '${text}'`);
  return value;
}
