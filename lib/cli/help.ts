/**
 * `excp --help` and each command's `--help`, made from the option table, so
 * that help lists exactly the flags a command takes, with their ranges and
 * defaults.
 */
import { TOOL_VERSION } from '../core/constants.js';
import { COMMANDS, type Command, OPTIONS, type OptionSpec, describeRange } from '../core/options.js';
import { EXIT } from './exit.js';

interface CommandDoc {
  usage: string;
  summary: string;
  details: string;
}

const DOCS: Record<Command, CommandDoc> = {
  compress: {
    usage: 'excp compress [IN] [--base BASE] [-o OUT] [options]',
    summary: 'compress a checkpoint, as a residual against BASE or as a keyframe',
    details: `IN is a safetensors file (each parameter NAME with NAME.exp_avg and
NAME.exp_avg_sq) or a PyTorch / Hugging Face checkpoint folder; absent or
'-': stdin. A pipe (stdin, a FIFO, <(...)) is read once: a tensor that comes
before its partners waits in memory (a sixteenth of --memory, at most 64
MiB), then in --tmp DIR. BASE is the previous checkpoint as restored (a
file, or the previous folder); a base that is not an earlier checkpoint of
the same run (the cosine of W and W_base below 0.2) is refused unless
--force. OUT absent or '-': stdout (not
a terminal unless -o -); on a terminal, a summary line goes to stderr. A
PyTorch distributed checkpoint folder (.metadata + __R_i.distcp) goes in
whole, or with --rank R one rank's files into the per-rank folder OUT.`,
  },
  restore: {
    usage: 'excp restore [IN] [--base BASE] [-o OUT] [--tensor NAME]... [--with-moments]',
    summary: 'restore a checkpoint from a container',
    details: `IN absent or '-': stdin (or a pipe). A container of a folder restores to
-o DIR. The restored bytes are checked against the fingerprint recorded at
compression before the output is put in place. With --tensor, only the
tensors named are restored, into a safetensors file, by reading only their
records (IN must then be a file); each is checked against its hash when
the container keeps per-tensor hashes. IN may be a per-rank folder
(compress --rank): every rank restores into -o DIR, or with --rank R that
rank's files.`,
  },
  inspect: {
    usage: 'excp inspect IN [--json | --names]',
    summary: 'what a container holds: per entry, kept shares, bits per parameter, ratio',
    details: 'Reads the header and the footer only. --names lists every tensor, one a line.',
  },
  verify: {
    usage: 'excp verify IN [--base BASE]',
    summary: 'decode a container and check every CRC, the base and the restored fingerprint; writes nothing',
    details: '',
  },
  compare: {
    usage: 'excp compare A B [--json] [--top N] [--max-error E] [--max-weight-error E] [--max-moment-error E] [--max-step-error E]',
    summary: 'per-tensor error of a restored checkpoint B against the original A (files or folders)',
    details: `Prints the relative error ||a-b|| / ||a|| of the weights, of exp_avg and of
exp_avg_sq, of Adam's first step after resuming, and the most changed tensors
(with the file of a folder that holds each).`,
  },
  chain: {
    usage: 'excp chain CHAIN_DIR CKPT... [--keyframe-every K] [--cache DIR | --no-cache] [options]',
    summary: 'compress a whole run into a chain folder: keyframes and residuals against the restored previous step',
    details: `CKPT: safetensors files, or checkpoint folders (one kind per chain); a quoted
glob ('run/checkpoint-*') is expanded in numeric step order. The coding
options are fixed when the chain is created. All or nothing: when a step
fails, nothing is left and the same command can be run again. The restored
last step (the next append's base, as large as a checkpoint) is kept in the
chain folder, in DIR with --cache, or not at all with --no-cache.`,
  },
  'chain append': {
    usage: 'excp chain append CHAIN_DIR CKPT... [--cache DIR | --no-cache] [--wait [SECONDS]]',
    summary: 'add the next checkpoints to a chain',
    details: `Each must be of the chain's model and not in the chain already. Without a
kept restored last step (--no-cache, or deleted) it is rebuilt first by
replaying from the last keyframe. --cache DIR or --no-cache moves the kept
step and is remembered for the next appends.`,
  },
  'chain restore': {
    usage: 'excp chain restore CHAIN_DIR --step N [-o OUT]',
    summary: 'restore one step of a chain (a chain of folders: -o DIR)',
    details: '',
  },
  'chain ls': {
    usage: 'excp chain ls CHAIN_DIR [--json]',
    summary: 'the steps of a chain: kind, sizes, ratios, and every byte it takes on disk',
    details: '',
  },
};

function flagText(o: OptionSpec): string {
  const value = o.value ?? 'VALUE';
  const long = `--${o.name}${o.kind === 'flag' ? '' : o.implied !== undefined ? ` [${value}]` : ` ${value}`}`;
  return o.short ? `-${o.short}, ${long}` : `    ${long}`;
}

function formatDefault(value: number | string | boolean): string {
  return typeof value === 'number' && value !== 0 && Math.abs(value) < 1e-3 ? value.toExponential() : String(value);
}

function optionLines(command: Command): string[] {
  const rows = OPTIONS.filter((o) => o.commands.includes(command));
  const width = Math.max(...rows.map((o) => flagText(o).length)) + 2;
  return rows.map((o) => {
    const extras: string[] = [];
    if (o.kind !== 'flag' && o.kind !== 'string') extras.push(describeRange(o));
    if (o.default !== undefined && o.kind !== 'flag') extras.push(`default ${formatDefault(o.default)}`);
    if (o.conflicts?.length) extras.push(`not with ${o.conflicts.map((c) => `--${c}`).join(', ')}`);
    if (o.repeatable) extras.push('repeatable');
    return `  ${flagText(o).padEnd(width)}${o.help}${extras.length ? ` (${extras.join('; ')})` : ''}`;
  });
}

const EXIT_LINES = [
  'Exit status:',
  `  ${EXIT.ok}    success`,
  `  ${EXIT.error}    failure: bad or corrupt input, a wrong base, an I/O error (one line on stderr)`,
  `  ${EXIT.usage}    bad usage: an unknown command or option, a bad option value`,
  `  ${EXIT.differs}    compare: an error is above --max-error, --max-weight-error, --max-moment-error or --max-step-error`,
  `  ${EXIT.brokenPipe}  the reader of stdout went away before the output was complete (as a program killed by SIGPIPE)`,
];

/** The help of the tool. */
export function globalHelp(): string {
  const width = Math.max(...COMMANDS.map((c) => c.length)) + 2;
  return [
    `excp ${TOOL_VERSION}: extreme compression of training checkpoints (ExCP)`,
    '',
    'Usage: excp COMMAND [ARGS] [OPTIONS]       excp COMMAND --help for its options',
    '',
    'Commands:',
    ...COMMANDS.map((c) => `  ${c.padEnd(width)}${DOCS[c].summary}`),
    '',
    '  -h, --help     this help',
    '  -V, --version  print the version',
    '',
    ...EXIT_LINES,
    '',
  ].join('\n');
}

/** The help of one command. */
export function commandHelp(command: Command): string {
  const doc = DOCS[command];
  return [
    `Usage: ${doc.usage}`,
    '',
    `${doc.summary[0]!.toUpperCase()}${doc.summary.slice(1)}.`,
    ...(doc.details ? ['', doc.details] : []),
    '',
    'Options:',
    ...optionLines(command),
    '',
    ...EXIT_LINES,
    '',
  ].join('\n');
}
