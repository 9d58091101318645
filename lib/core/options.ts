/**
 * Option validation: every option is checked eagerly, with its documented
 * range, and an error that names it.
 */
import { DEFAULT_OPTIONS, MAX_CHUNK_ELEMENTS, MIN_CHUNK_ELEMENTS } from './constants.js';
import { ExcpError } from './errors.js';
import type { CodecOptions, LooseOptions } from './types.js';

function range(name: string, value: unknown, ok: boolean, what: string): void {
  if (!ok) throw new ExcpError('ERR_OUT_OF_RANGE', `options.${name} must be ${what}, got ${JSON.stringify(value)}`);
}

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
