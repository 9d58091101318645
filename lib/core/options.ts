/**
 * Option validation: every option is checked eagerly, with its documented
 * range, and an error that names it.
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
   * How dW is pruned: `paper` (the alpha formula), `magnitude` (keep the `keep`
   * share of largest |dW|) or `saliency` (keep the `keep` share of largest
   * |dW| * sqrt(v)). See lib/prune.ts.
   */
  weightRule: 'paper' | 'magnitude' | 'saliency';
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
}

/** Options as users pass them: any may be missing or undefined (defaults apply). */
export type LooseOptions = { [K in keyof CodecOptions]?: CodecOptions[K] | undefined };


function range(name: string, value: unknown, ok: boolean, what: string): void {
  if (!ok) throw new ExcpError('ERR_OUT_OF_RANGE', `options.${name} must be ${what}, got ${JSON.stringify(value)}`);
}

/**
 * The method's defaults. beta is the paper's; alpha is the paper's but only
 * used by weightRule 'paper'. The default weight rule keeps a fixed share of
 * dW (30%) whatever the gradient scale, and codes with 2 bits (3 centers):
 * on the fidelity experiment this is 54x at a +0.3..+0.7% loss gap, where
 * the paper's rule is 18x (alpha 5e-5) or 48x at +1.5% (alpha 1e-3). README, "Fidelity".
 */
export const DEFAULT_OPTIONS: Readonly<CodecOptions> = Object.freeze({
  alpha: 5e-5,
  weightRule: 'magnitude',
  keep: 0.3,
  beta: 2.0,
  bits: 2,
  lossless: false,
  chunkElements: 1 << 20,
  vFill: 'mean',
  vDomain: 'log',
});

/**
 * Fill defaults and validate.
 * @param partial user options
 * @returns complete options
 * @throws ExcpError ERR_OUT_OF_RANGE naming the option
 */
export function resolveOptions(partial: LooseOptions = {}): CodecOptions {
  const o: CodecOptions = { ...DEFAULT_OPTIONS };
  for (const [k, v] of Object.entries(partial)) if (v !== undefined) (o as unknown as Record<string, unknown>)[k] = v;
  // An explicit alpha asks for the paper's formula (alpha means nothing to the other rules).
  if (partial.alpha !== undefined && partial.weightRule === undefined) o.weightRule = 'paper';
  range('alpha', o.alpha, typeof o.alpha === 'number' && o.alpha > 0 && Number.isFinite(o.alpha), 'a finite number > 0');
  range('weightRule', o.weightRule, o.weightRule === 'paper' || o.weightRule === 'magnitude' || o.weightRule === 'saliency', "'paper', 'magnitude' or 'saliency'");
  range('keep', o.keep, typeof o.keep === 'number' && o.keep > 0 && o.keep <= 1, 'a number in (0, 1]');
  range('beta', o.beta, typeof o.beta === 'number' && o.beta >= 0 && Number.isFinite(o.beta), 'a finite number >= 0');
  range('bits', o.bits, Number.isInteger(o.bits) && o.bits >= 1 && o.bits <= 8, 'an integer from 1 to 8');
  range('lossless', o.lossless, typeof o.lossless === 'boolean', 'a boolean');
  range('chunkElements', o.chunkElements, Number.isInteger(o.chunkElements) && o.chunkElements >= MIN_CHUNK_ELEMENTS && o.chunkElements <= MAX_CHUNK_ELEMENTS,
    `an integer from ${MIN_CHUNK_ELEMENTS} to ${MAX_CHUNK_ELEMENTS}`);
  range('vFill', o.vFill, o.vFill === 'mean' || o.vFill === 'zero', "'mean' or 'zero'");
  range('vDomain', o.vDomain, o.vDomain === 'log' || o.vDomain === 'linear', "'log' or 'linear'");
  return o;
}

/** The paper's exact behaviour (for comparisons): the alpha formula, 4 bits, zero-filled pruned v, linear v codebook. */
export const PAPER_OPTIONS: Readonly<Partial<CodecOptions>> = Object.freeze({ weightRule: 'paper', bits: 4, vFill: 'zero', vDomain: 'linear' });
