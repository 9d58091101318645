/**
 * Every option in one table: the method's options (what a container stores)
 * and the command line's. From it come DEFAULT_OPTIONS, the validation of
 * library options (resolveOptions, errors naming `options.<field>`), the CLI
 * parser (errors naming the flag, lib/cli/args.ts) and each command's
 * `--help` (lib/cli/help.ts). A new option is one row here.
 */
import { MAX_CHUNK_ELEMENTS, MIN_CHUNK_ELEMENTS } from './constants.js';
import { ExcpError } from './errors.js';

/** Clustering domain of a stream: `linear`, or `log` (relative precision, for v). */
export type QuantDomain = 'linear' | 'log';

/** Options of the method (all have defaults, see DEFAULT_OPTIONS). */
export interface CodecOptions {
  /** Weight prune factor numerator: r_w = median|dW| * min(2.5, alpha / sqrt(mean v)). > 0. Used by weightRule `paper`. */
  alpha: number;
  /**
   * How dW is coded: `dither` (method 2: subtractive dither on a grid set by
   * `updateError`, v factored, m as Adam's step; lib/method/encode-dithered.ts),
   * or pruned (method 1) by `paper` (the alpha formula), `magnitude` (keep
   * the `keep` share of largest |dW|) or `saliency` (keep the `keep` share
   * of largest |dW| * sqrt(v)); lib/method/encode.ts.
   */
  weightRule: 'dither' | 'paper' | 'magnitude' | 'saliency';
  /** Share of dW kept per chunk by weightRule `magnitude` / `saliency`. (0, 1]. */
  keep: number;
  /** Moment prune factor: r_o = beta * mean|m|. >= 0. */
  beta: number;
  /** Index bits: 2^bits - 1 centers plus zero. 1..8. */
  bits: number;
  /** Code everything exactly (no pruning, no quantisation). */
  lossless: boolean;
  /** Elements per chunk; statistics are per chunk. */
  chunkElements: number;
  /** What a pruned v restores as: the chunk's mean pruned v (`mean`) or 0 (`zero`, the paper). */
  vFill: 'mean' | 'zero';
  /** Clustering domain of v (`log` keeps relative precision; `linear` is the paper). */
  vDomain: QuantDomain;
  /** Rule `dither`: the relative error of the weight update, ||dW^ - dW|| / ||dW||, per chunk (the grid step is sqrt(12) times it). */
  updateError: number;
  /** A keyframe's fp32 weights: `lossy` (rounded to bf16's precision, then coded exactly) or `exact`. */
  keyframe: 'lossy' | 'exact';
}

/** Options as users pass them: any may be missing or undefined (defaults apply). */
export type LooseOptions = { [K in keyof CodecOptions]?: CodecOptions[K] | undefined };

/** The commands of the `excp` tool (a chain's sub-commands by their full name). */
export type Command = 'compress' | 'restore' | 'inspect' | 'verify' | 'compare' | 'chain' | 'chain append' | 'chain restore' | 'chain ls';

/** Every command, in the order help lists them. */
export const COMMANDS: readonly Command[] = ['compress', 'restore', 'inspect', 'verify', 'compare', 'chain', 'chain append', 'chain restore', 'chain ls'];

/** One option: its flag, its value and range, its default, where it applies, its help. */
export interface OptionSpec {
  /** The long flag without its dashes, e.g. `keep`. */
  readonly name: string;
  /** A one-letter flag, e.g. `o` for `-o`. */
  readonly short?: string;
  /** The method option it sets, when it is one (stored in every container). */
  readonly field?: keyof CodecOptions;
  /** `flag`: takes no value; `size`: a byte count written like 256M or 1G (see {@link parseSize}). */
  readonly kind: 'number' | 'integer' | 'flag' | 'string' | 'choice' | 'size';
  readonly min?: number;
  /** min is excluded (a number > min). */
  readonly above?: boolean;
  readonly max?: number;
  /** The maximum is per core: the limit is max x the cores of the machine (see {@link limitOf}). */
  readonly perCore?: boolean;
  /** Words a number option also takes, e.g. `auto`. */
  readonly words?: readonly string[];
  readonly choices?: readonly string[];
  /** The default (for a method option, DEFAULT_OPTIONS' value). */
  readonly default?: number | string | boolean;
  /** The value's name in help, e.g. `Q`. */
  readonly value?: string;
  /**
   * The value of the flag given alone: its value is then optional (`--wait`,
   * `--wait 30`, `--wait=30`), taken from the next argument only when that
   * argument is a valid value.
   */
  readonly implied?: number;
  /** The commands that take it (none: a library option only). */
  readonly commands: readonly Command[];
  /** Flags it cannot be given with (by name). */
  readonly conflicts?: readonly string[];
  /** May be given more than once (a string option: its values are collected in order). */
  readonly repeatable?: boolean;
  readonly help: string;
}

const MIB = 1024 * 1024;
const CODING: readonly Command[] = ['compress', 'chain'];
const PROGRESS: readonly Command[] = ['compress', 'restore', 'verify', 'compare', 'chain', 'chain append', 'chain restore'];
const THREADED: readonly Command[] = ['compress', 'restore', 'verify', 'chain', 'chain append', 'chain restore'];

/**
 * The table. Method options come first, in the order a container stores
 * them (the JSON of DEFAULT_OPTIONS: part of what makes outputs byte-identical).
 */
export const OPTIONS: readonly OptionSpec[] = Object.freeze([
  { name: 'alpha', field: 'alpha', kind: 'number', min: 0, above: true, default: 5e-5, value: 'A', commands: CODING, conflicts: ['keep', 'rule'],
    help: "the paper's weight rule instead: keep |dW| > median|dW| * min(2.5, A / sqrt(mean v))" },
  { name: 'rule', field: 'weightRule', kind: 'choice', choices: ['dither', 'paper', 'magnitude', 'saliency'], default: 'dither', value: 'RULE', commands: CODING,
    conflicts: ['alpha', 'keep', 'paper'],
    help: 'how dW is coded: dithered on a grid (unbiased), or pruned by the paper\'s formula, by |dW|, or by |dW| sqrt(v)' },
  { name: 'keep', field: 'keep', kind: 'number', min: 0, above: true, max: 1, default: 0.3, value: 'Q', commands: CODING, conflicts: ['alpha', 'paper', 'rule'],
    help: 'prune instead: keep this share of the weight residual per chunk, largest |dW| first' },
  { name: 'beta', field: 'beta', kind: 'number', min: 0, default: 2, value: 'B', commands: CODING,
    help: 'moment prune factor: keep m where its step |m / sqrt(v)| > B times the mean (and the weight moved)' },
  { name: 'bits', field: 'bits', kind: 'integer', min: 1, max: 8, default: 2, value: 'N', commands: CODING,
    help: 'index bits of m\'s codebook (and of every codebook when pruning): 2^N - 1 centers plus zero' },
  { name: 'lossless', field: 'lossless', kind: 'flag', default: false, commands: CODING, help: 'code every tensor exactly' },
  { name: 'chunk', field: 'chunkElements', kind: 'integer', min: MIN_CHUNK_ELEMENTS, max: MAX_CHUNK_ELEMENTS, default: 1 << 20, value: 'N', commands: CODING,
    help: 'elements per chunk (statistics and thresholds are per chunk)' },
  { name: 'v-fill', field: 'vFill', kind: 'choice', choices: ['mean', 'zero'], default: 'mean', commands: [],
    help: "what a pruned v restores as: the chunk's mean pruned v, or 0 (the paper)" },
  { name: 'v-domain', field: 'vDomain', kind: 'choice', choices: ['log', 'linear'], default: 'log', commands: [],
    help: 'clustering domain of v (log keeps relative precision; linear is the paper)' },
  { name: 'update-error', field: 'updateError', kind: 'number', min: 0, above: true, max: 4, default: 0.8, value: 'E', commands: CODING,
    conflicts: ['alpha', 'keep', 'paper'],
    help: 'the fidelity knob: relative error of each weight update, ||dW^ - dW|| / ||dW||, that sets the step of its quantiser (finer where v is large: the measured error, shown by excp inspect, is 1-1.3x E); smaller: larger files, closer to the original; training washes the error out, so for a checkpoint that will not be trained further (evaluated, shipped) or far from its base, 0.577 or less' },
  { name: 'keyframe', field: 'keyframe', kind: 'choice', choices: ['lossy', 'exact'], default: 'lossy', value: 'MODE', commands: CODING,
    help: "a keyframe's fp32 weights: rounded to bf16's precision, or exact" },
  { name: 'paper', kind: 'flag', commands: CODING, conflicts: ['keep', 'rule', 'update-error'],
    help: "the paper's choices (method 1): its weight rule (alpha 5e-5), 4 bits, pruned v restores as 0, linear v codebook, exact keyframes" },
  { name: 'base', kind: 'string', value: 'BASE', commands: ['compress', 'restore', 'verify'],
    help: 'the previous (restored) checkpoint, file or folder; compress without it makes a keyframe' },
  { name: 'rank', kind: 'integer', min: 0, max: 1_000_000, value: 'R', commands: ['compress', 'restore'],
    help: "distributed checkpoints (DCP): only rank R's __R_*.distcp files; compress writes OUT/rank-R.excp (rank 0 also OUT/ranks.json), restore takes such a folder" },
  { name: 'tmp', kind: 'string', value: 'DIR', commands: ['compress', 'restore', 'verify'],
    help: 'folder for what must wait when an input is a pipe (default: $TMPDIR or /tmp)' },
  { name: 'param-map', kind: 'string', value: 'FILE', commands: CODING,
    help: 'checkpoint folders: a JSON list of parameter names in optimizer order' },
  { name: 'keyframe-every', kind: 'integer', min: 1, max: 1_000_000, default: 20, value: 'K', commands: ['chain'],
    help: 'step 0 and every K-th step are keyframes; the others are residuals against the restored previous step' },
  { name: 'cache', kind: 'string', value: 'DIR', commands: ['chain', 'chain append'], conflicts: ['no-cache'],
    help: "keep the restored last step (the next append's base, one full checkpoint) in DIR (the chain folder too); appends then skip the replay; chain ls counts it (default: none kept)" },
  { name: 'no-cache', kind: 'flag', commands: ['chain', 'chain append'], conflicts: ['cache'],
    help: 'keep no restored step (the default): the next append rebuilds it by replaying from the last keyframe; given to an append, drops a kept one' },
  { name: 'wait', kind: 'number', min: 0, value: 'SECONDS', implied: Infinity, commands: ['chain', 'chain append'],
    help: 'when another create or append holds the chain, wait for it (up to SECONDS; alone: no limit) instead of failing at once' },
  { name: 'step', kind: 'integer', min: 0, max: Number.MAX_SAFE_INTEGER, value: 'N', commands: ['chain restore'],
    help: 'the step to restore, 0-based in the order the checkpoints were given' },
  { name: 'output', short: 'o', kind: 'string', value: 'OUT', commands: ['compress', 'restore', 'chain restore'],
    help: "output file or folder ('-' = stdout); written atomically" },
  { name: 'force', short: 'f', kind: 'flag', commands: ['compress', 'restore', 'chain restore'],
    help: 'overwrite an existing output; compress: also go on (with a warning) against a base that does not look like an earlier checkpoint of the run' },
  { name: 'tensor', kind: 'string', value: 'NAME', repeatable: true, commands: ['restore'],
    help: 'restore only this tensor (repeat for more; excp inspect --names lists them) into a safetensors file, reading only its records' },
  { name: 'with-moments', kind: 'flag', commands: ['restore'],
    help: "with --tensor: also restore each weight's exp_avg and exp_avg_sq" },
  { name: 'json', kind: 'flag', commands: ['inspect', 'compare', 'chain ls'], help: 'print JSON' },
  { name: 'names', kind: 'flag', commands: ['inspect'], help: 'print the tensor names, one a line (what restore --tensor takes)', conflicts: ['json'] },
  { name: 'top', kind: 'integer', min: 0, max: 1_000_000, default: 10, value: 'N', commands: ['compare'], help: 'list the N most changed tensors' },
  { name: 'max-error', kind: 'number', min: 0, value: 'E', commands: ['compare'],
    help: "exit 3 when any tensor's relative error ||a-b|| / ||a|| exceeds E (a tensor that is not float: when it differs)" },
  { name: 'max-weight-error', kind: 'number', min: 0, value: 'E', commands: ['compare'],
    help: "exit 3 when a weight's relative error exceeds E" },
  { name: 'max-moment-error', kind: 'number', min: 0, value: 'E', commands: ['compare'],
    help: "exit 3 when an exp_avg's or exp_avg_sq's relative error exceeds E (by design 65-95% after a lossy compress)" },
  { name: 'max-step-error', kind: 'number', min: 0, value: 'E', commands: ['compare'],
    help: "exit 3 when the relative error of a parameter's first Adam step m/(sqrt(v)+eps) exceeds E" },
  { name: 'threads', kind: 'integer', min: 0, max: 4, perCore: true, words: ['auto'], default: 'auto', value: 'N', commands: THREADED,
    help: "worker threads: 'auto' (all cores that --memory feeds; none for a small checkpoint), or a count (0: none, all in the main thread)" },
  { name: 'memory', kind: 'size', min: 64 * MIB, max: 2 ** 50, default: '256M', value: 'SIZE', commands: ['compress', 'restore', 'verify'],
    help: 'memory budget for everything in flight (chunks in workers, buffers, spill); workers it cannot feed are not started (none fits: the main thread codes)' },
  { name: 'quiet', kind: 'flag', commands: PROGRESS, help: 'no progress line (and no summary line after compress)' },
  { name: 'debug', kind: 'flag', commands: COMMANDS, help: 'print the stack trace of an error' },
  { name: 'help', short: 'h', kind: 'flag', commands: COMMANDS, help: 'this help' },
] satisfies OptionSpec[]);

/** A table row by long name. */
export function optionNamed(name: string): OptionSpec | undefined {
  return OPTIONS.find((o) => o.name === name);
}

/**
 * An option's largest value on a machine.
 * @param spec the option
 * @param cores the machine's cores (for a per-core maximum; absent: the maximum per core)
 * @returns the maximum, or undefined when there is none
 */
export function limitOf(spec: OptionSpec, cores?: number): number | undefined {
  if (spec.max === undefined || !spec.perCore || cores === undefined) return spec.max;
  return spec.max * Math.max(1, Math.floor(cores));
}

/**
 * What a value of an option must be, in words (for error messages and help).
 * @param spec the option
 * @param cores the machine's cores, for a per-core maximum (absent: it is given per core)
 */
export function describeRange(spec: OptionSpec, cores?: number): string {
  if (spec.kind === 'flag') return 'true or false';
  if (spec.kind === 'string') return 'a string';
  if (spec.kind === 'choice') return (spec.choices ?? []).map((c) => `'${c}'`).join(', ').replace(/, ([^,]*)$/, ' or $1');
  const words = (spec.words ?? []).map((w) => ` or '${w}'`).join('');
  if (spec.kind === 'size') return `a size from ${formatSize(spec.min ?? 0)} to ${formatSize(spec.max ?? Number.MAX_SAFE_INTEGER)} (bytes, or with K, M, G, T or P)`;
  const what = spec.kind === 'integer' ? 'an integer' : 'a number';
  const { min, above } = spec;
  const max = limitOf(spec, cores);
  const perCore = spec.perCore && cores === undefined ? ' per core' : '';
  if (min !== undefined && max !== undefined) {
    if (spec.kind === 'integer') return `${what} from ${min} to ${max}${perCore}${words}`;
    return `${what} in ${above ? '(' : '['}${min}, ${max}]${perCore}${words}`;
  }
  if (min !== undefined) return `a finite ${spec.kind === 'integer' ? 'integer' : 'number'} ${above ? '>' : '>='} ${min}${words}`;
  return `${what}${words}`;
}

/**
 * Whether a value fits an option.
 * @param spec the option
 * @param value the value, already of the option's type (a number for numbers and sizes, or one of its words)
 * @param cores the machine's cores, for a per-core maximum (absent: the maximum per core is the limit)
 */
export function valueFits(spec: OptionSpec, value: unknown, cores?: number): boolean {
  switch (spec.kind) {
    case 'flag': return typeof value === 'boolean';
    case 'string': return typeof value === 'string';
    case 'choice': return typeof value === 'string' && (spec.choices ?? []).includes(value);
    default: {
      if (typeof value === 'string' && (spec.words ?? []).includes(value)) return true;
      if (typeof value !== 'number' || !Number.isFinite(value)) return false;
      if ((spec.kind === 'integer' || spec.kind === 'size') && !Number.isInteger(value)) return false;
      if (spec.min !== undefined && (spec.above ? value <= spec.min : value < spec.min)) return false;
      const max = limitOf(spec, cores);
      return max === undefined || value <= max;
    }
  }
}

const SIZE_UNITS: Readonly<Record<string, number>> = { '': 1, k: 2 ** 10, m: 2 ** 20, g: 2 ** 30, t: 2 ** 40, p: 2 ** 50 };

/**
 * A size as a user writes it: bytes (`268435456`), or a number with a binary
 * unit K, M, G, T or P, optionally followed by B or iB (`256M`, `1.5G`, `512KiB`).
 * @param text the size
 * @returns whole bytes (rounded down), or NaN when the text is not a size
 */
export function parseSize(text: string): number {
  const m = /^\s*(\d+(?:\.\d+)?|\.\d+)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) return NaN;
  return Math.floor(Number(m[1]) * SIZE_UNITS[m[2]!.toLowerCase()]!);
}

/**
 * A byte count in the largest binary unit that divides it (`256M`), else in bytes.
 * @param bytes the size
 */
export function formatSize(bytes: number): string {
  for (const unit of ['P', 'T', 'G', 'M', 'K']) {
    const scale = SIZE_UNITS[unit.toLowerCase()]!;
    if (bytes >= scale && bytes % scale === 0) return `${bytes / scale}${unit}`;
  }
  return String(bytes);
}

/** The method options' rows, in the order a container stores them. */
const METHOD_ROWS = OPTIONS.filter((o): o is OptionSpec & { field: keyof CodecOptions } => o.field !== undefined);

/**
 * The method's defaults, from the table: method 2 (weightRule 'dither'),
 * the weight update restored without bias at a relative error of
 * updateError, m kept as Adam's step where it is above beta times its mean
 * with 2 bits (3 centers), lossy keyframes. keep, alpha, vFill and vDomain
 * are method 1's, used only when it is asked for. README, "Fidelity on
 * real PyTorch runs".
 */
export const DEFAULT_OPTIONS: Readonly<CodecOptions> = Object.freeze(
  Object.fromEntries(METHOD_ROWS.map((o) => [o.field, o.default])) as unknown as CodecOptions,
);

/**
 * Fill defaults and validate.
 * @param partial user options
 * @returns complete options
 * @throws ExcpError ERR_OUT_OF_RANGE naming the option
 */
export function resolveOptions(partial: LooseOptions = {}): CodecOptions {
  const o: CodecOptions = { ...DEFAULT_OPTIONS };
  for (const [k, v] of Object.entries(partial)) if (v !== undefined) (o as unknown as Record<string, unknown>)[k] = v;
  // An explicit alpha asks for the paper's formula, an explicit keep for
  // pruning by |dW| (each means nothing to the other rules).
  if (partial.alpha !== undefined && partial.weightRule === undefined) o.weightRule = 'paper';
  else if (partial.keep !== undefined && partial.weightRule === undefined) o.weightRule = 'magnitude';
  for (const row of METHOD_ROWS) {
    const value = o[row.field];
    if (!valueFits(row, value)) throw new ExcpError('ERR_OUT_OF_RANGE', `options.${row.field} must be ${describeRange(row)}, got ${JSON.stringify(value)}`);
  }
  return o;
}

/** The paper's exact behaviour (for comparisons): the alpha formula, 4 bits, zero-filled pruned v, linear v codebook. */
export const PAPER_OPTIONS: Readonly<Partial<CodecOptions>> = Object.freeze({ weightRule: 'paper', bits: 4, vFill: 'zero', vDomain: 'linear', keyframe: 'exact' });

/**
 * The method and its settings in one phrase, as inspect and chain ls say them.
 * @param o resolved options
 */
export function describeMethod(o: CodecOptions): string {
  if (o.lossless) return 'lossless';
  if (o.weightRule === 'dither') return `update-error ${o.updateError}, keyframe ${o.keyframe}, m: beta ${o.beta}, bits ${o.bits}`;
  const rule = o.weightRule === 'paper' || o.weightRule === undefined ? `alpha ${o.alpha}` : `${o.weightRule} rule, keep ${o.keep}`;
  return `${rule}, beta ${o.beta}, bits ${o.bits}`;
}
