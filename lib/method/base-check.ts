/**
 * Is the base an earlier checkpoint of the same run? (pure)
 *
 * A residual is only as good as its base: against a checkpoint of another
 * run the weight residual is as large as the weights, the pruned residual
 * loses most of it, and the restore is tens of percent off while every
 * check passes (the container was made against that base). The test: the
 * cosine of W and W_base, per tensor, averaged over the tensors weighted by
 * their elements. Training moves a tensor from where it was, so a tensor and
 * its earlier self point the same way; two runs from independent random
 * initialisations give independent tensors, whose cosine is 0 up to
 * 1/sqrt(elements).
 *
 * Measured (examples/python/base_check_runs.py, README "Wrong base"): 8
 * small GPT-2, Llama, Qwen2 and MLP runs with AdamW, two seeds each,
 * learning rates 1e-4 to 3e-2 with and without warm-up, fp32 and bf16:
 * every pair of checkpoints of one run, 1 to 300 steps apart and the first
 * against the initialisation included, had a mean cosine of 0.27 or more;
 * every pair across runs 0.12 or less. The rule refuses below 0.2. The
 * agreement of dW with the moments (sign(dW) = -sign(exp_avg)) was
 * measured too and does not separate the two (0.50 to 0.64 across runs,
 * from 0.49 within a run), so it is not used.
 *
 * Only entries that will be coded as a lossy residual are looked at:
 * exactly coded tensors restore bit for bit whatever the base.
 */
import { ExcpError } from '../core/errors.js';

/** Below this mean cosine of W and W_base the base is refused. */
export const MIN_BASE_COSINE = 0.2;

/** Tensors with fewer elements say too little (their cosine is noise) and are left out. */
const MIN_TENSOR_ELEMENTS = 64;

interface TensorSums {
  /** Elements of the whole tensor (the weight of its cosine). */
  elements: number;
  wb: number;
  ww: number;
  bb: number;
  /** Values compared, and how many differed. */
  compared: number;
  differing: number;
}

/** What the check found. */
export interface BaseVerdict {
  /** Mean cosine of W and W_base, weighted by elements; null when nothing was measured. */
  cosine: number | null;
  /** Tensors measured. */
  tensors: number;
  /** Elements of those tensors. */
  elements: number;
  /** True when the base looks like an earlier checkpoint of this run (or nothing was measured). */
  plausible: boolean;
  /** Every value compared was equal: the base holds the same weights (the same checkpoint?). */
  identical: boolean;
}

/** Running sums of the base check, fed with (samples of) weight and base values. */
export class BaseCheck {
  private readonly sums = new Map<string, TensorSums>();

  /**
   * Add values of one tensor.
   * @param name the tensor
   * @param elements the tensor's element count (its weight in the mean)
   * @param w current values (all or a sample)
   * @param b base values at the same positions
   */
  add(name: string, elements: number, w: Float32Array, b: Float32Array): void {
    if (elements < MIN_TENSOR_ELEMENTS) return;
    let s = this.sums.get(name);
    if (!s) this.sums.set(name, (s = { elements, wb: 0, ww: 0, bb: 0, compared: 0, differing: 0 }));
    let wb = 0;
    let ww = 0;
    let bb = 0;
    let compared = 0;
    let differing = 0;
    for (let i = 0; i < w.length; i++) {
      const x = w[i]!;
      const y = b[i]!;
      // Non-finite values say nothing about direction (and would poison the sums).
      if (x - x !== 0 || y - y !== 0) continue;
      wb += x * y;
      ww += x * x;
      bb += y * y;
      compared++;
      if (x !== y) differing++;
    }
    s.wb += wb;
    s.ww += ww;
    s.bb += bb;
    s.compared += compared;
    s.differing += differing;
  }

  /** The verdict over what was added. */
  verdict(): BaseVerdict {
    let weighted = 0;
    let elements = 0;
    let tensors = 0;
    let compared = 0;
    let differing = 0;
    for (const s of this.sums.values()) {
      compared += s.compared;
      differing += s.differing;
      if (!(s.ww > 0 && s.bb > 0)) continue;
      weighted += s.elements * (s.wb / Math.sqrt(s.ww * s.bb));
      elements += s.elements;
      tensors++;
    }
    const cosine = elements > 0 ? weighted / elements : null;
    return { cosine, tensors, elements, plausible: cosine === null || cosine >= MIN_BASE_COSINE, identical: compared > 0 && differing === 0 };
  }
}

/**
 * The error (or, with `force`, the warning) for an implausible base.
 * @param verdict what the check found
 * @param base the base's name
 * @returns one line: the evidence, the threshold, what to do
 */
export function implausibleBase(verdict: BaseVerdict, base: string): ExcpError {
  const cos = verdict.cosine === null ? '-' : verdict.cosine.toFixed(3);
  return new ExcpError('ERR_BASE_IMPLAUSIBLE',
    `compress: ${base} does not look like an earlier checkpoint of this run: its weights point elsewhere (mean cosine of W and W_base ${cos} over ${verdict.tensors} tensors, ${verdict.elements} weights; an earlier checkpoint of the same run has ${MIN_BASE_COSINE} or more, see README "Wrong base"). Check --base, or give --force to compress against it anyway`);
}

/**
 * The error for a base that shares no weight with the checkpoint (every
 * residual would be coded as a keyframe, or a folder's moments cannot be
 * matched to its parameters).
 * @param base the base's name
 * @param weights the checkpoint's weights looked for
 * @param example one weight as the checkpoint and the base have it (or null when the base lacks the name)
 */
export function unrelatedBase(base: string, weights: number, example: { name: string; here: string; there: string | null }): ExcpError {
  const there = example.there === null ? 'the base has no such tensor' : `the base has ${example.there}`;
  return new ExcpError('ERR_BASE_IMPLAUSIBLE',
    `compress: ${base} does not look like an earlier checkpoint of this run: none of the checkpoint's ${weights} weights is in it with the same name, dtype and shape ('${example.name}' is ${example.here}, ${there}). Check --base, or give --force to compress against it anyway`);
}
