/**
 * What may join a chain, the pure part: a checkpoint of the same model as
 * the step before it, that the chain does not hold already. chain.ts reads
 * the tensor tables and fingerprints; these functions compare them and say
 * what is wrong in one line.
 *
 * Same model: the same model tensors (weights and buffers: every tensor but
 * Adam's moments `NAME.exp_avg` / `NAME.exp_avg_sq` and a checkpoint
 * folder's own entries `__file__/...`, `__optimizer__/...`), with the same
 * dtypes and shapes. Another model coded against the previous step would
 * find no base tensor and end up as an exact copy listed as a residual; a
 * model that gained or lost a tensor is another model too (start a new chain).
 *
 * Not held already: the checkpoint's content fingerprint (chain.json
 * `sourceFingerprint`, see files.ts) differs from every step's and from the
 * other checkpoints of the same command.
 */
import { ExcpError } from '../core/errors.js';
import type { ChainStep } from './manifest.js';

/** What the comparison needs of a tensor. */
export interface ModelTensor {
  readonly name: string;
  readonly dtype: string;
  readonly shape: readonly number[];
}

/** Whether a tensor is part of the model (not an optimizer moment, not a folder's file or optimizer entry). */
export function isModelTensor(name: string): boolean {
  return !name.startsWith('__file__/') && !name.startsWith('__optimizer__/') && !name.endsWith('.exp_avg') && !name.endsWith('.exp_avg_sq');
}

function describe(t: ModelTensor): string {
  return `${t.dtype} [${t.shape.join(', ')}]`;
}

/**
 * Refuse a checkpoint whose model differs from the previous step's, naming the first tensor that differs.
 * @param previous the previous step's tensors (its container header)
 * @param current the new checkpoint's tensors
 * @param labels how to name the two in the message
 * @throws ExcpError ERR_CHAIN
 */
export function checkSameModel(previous: readonly ModelTensor[], current: readonly ModelTensor[], labels: { previous: string; current: string }): void {
  const before = new Map(previous.filter((t) => isModelTensor(t.name)).map((t) => [t.name, t]));
  const now = current.filter((t) => isModelTensor(t.name));
  const fail = (what: string): never => {
    throw new ExcpError('ERR_CHAIN', `chain: ${labels.current} is another model than ${labels.previous}: ${what} (a chain holds one model; start a new chain for another)`);
  };
  const names = new Set<string>();
  for (const t of now) {
    names.add(t.name);
    const p = before.get(t.name);
    if (!p) fail(`tensor '${t.name}' (${describe(t)}) is not in the chain's model`);
    else if (p.dtype !== t.dtype || p.shape.join(',') !== t.shape.join(',')) fail(`tensor '${t.name}' is ${describe(t)} in it, ${describe(p)} in the chain`);
  }
  for (const p of before.values()) {
    if (!names.has(p.name)) fail(`it has no tensor '${p.name}' (${describe(p)} in the chain)`);
  }
}

/**
 * Refuse checkpoints the chain holds already, or that a command gives twice, by content fingerprint.
 * @param steps the chain's steps (those of older versions have no fingerprint and are not compared)
 * @param inputs the new checkpoints, in order, with their fingerprints
 * @throws ExcpError ERR_CHAIN naming the checkpoint and the step (or the other checkpoint) it repeats
 */
export function checkNotHeld(steps: readonly ChainStep[], inputs: ReadonlyArray<{ path: string; fingerprint: string }>): void {
  const held = new Map(steps.filter((s) => s.sourceFingerprint !== undefined).map((s) => [s.sourceFingerprint!, s]));
  const given = new Map<string, string>();
  for (const { path, fingerprint } of inputs) {
    const step = held.get(fingerprint);
    if (step) {
      throw new ExcpError('ERR_CHAIN', `chain: ${path} is already in the chain as step ${step.step} (${step.source}, same content: fingerprint ${fingerprint}); a chain holds each checkpoint once`);
    }
    const earlier = given.get(fingerprint);
    if (earlier !== undefined) {
      throw new ExcpError('ERR_CHAIN', `chain: ${path} has the same content as ${earlier}, given before it (fingerprint ${fingerprint}); a chain holds each checkpoint once`);
    }
    given.set(fingerprint, path);
  }
}
