/**
 * Reference (spec only): the method's joint pruning stage by stage, as the
 * paper and its reference code define it. lib/method/encode.ts implements
 * the same in fused passes; spec/fused.spec.ts checks the two agree.
 *
 * ExCP (arXiv 2406.11257), section 3.2 and the reference code:
 * - weight residual: keep dW[i] where |dW[i]| > r_w,
 *   r_w = median(|dW|) * min(2.5, alpha / sqrt(mean(v)));
 * - moments: keep m[i], v[i] where |m[i]| > r_o = beta * mean(|m|) AND dW[i]
 *   was kept (for a keyframe, which has no residual, only the first test).
 *
 * `weightRule`: `paper` (the formula), `magnitude` (the `keep` share of the
 * largest |dW|), `saliency` (the `keep` share of the largest |dW| sqrt(v)).
 * Pruned entries become exact zeros in the arrays.
 */
import { keepRank, paperFactor, selectAbs } from '../../lib/method/select.js';

/** Counts of what survived. */
export interface PruneResult {
  weightThreshold: number;
  momentThreshold: number;
  keptWeights: number;
  keptMoments: number;
  /** Value restored at pruned v positions (0 for the paper's behaviour). */
  vFill: number;
}

/**
 * median(|x|) as torch.median defines it: the lower middle value.
 * @param values finite values
 * @returns the median absolute value (0 for an empty array)
 */
export function medianAbs(values: Float32Array): number {
  return values.length ? selectAbs(values, (values.length - 1) >> 1) : 0;
}

/**
 * mean(|x|) in double precision.
 * @param values finite values
 * @returns the mean absolute value (0 for an empty array)
 */
export function meanAbs(values: Float32Array): number {
  let s = 0;
  for (let i = 0; i < values.length; i++) s += Math.abs(values[i]!);
  return values.length ? s / values.length : 0;
}

/**
 * The weight threshold r_w of the method.
 * @param residual dW of the chunk
 * @param meanV mean of v over the chunk
 * @param alpha the method's alpha (> 0)
 * @returns r_w
 */
export function weightThreshold(residual: Float32Array, meanV: number, alpha: number): number {
  return medianAbs(residual) * paperFactor(meanV, alpha);
}

/** How the weight residual is pruned (see the file comment). */
export type WeightRule = 'paper' | 'magnitude' | 'saliency' | 'dither';

/** What pruneJoint reads of the codec options. */
export interface PruneOptions {
  alpha: number;
  beta: number;
  vFill: 'mean' | 'zero';
  weightRule: WeightRule;
  /** Share of dW kept by the `magnitude` and `saliency` rules, (0, 1]. */
  keep: number;
}

/**
 * |dW[i]| * sqrt(v[i]) as float32 (v < 0 cannot occur in Adam; it counts as 0).
 * @param residual dW
 * @param v second moment
 * @returns the scores
 */
export function saliencyScores(residual: Float32Array, v: Float32Array): Float32Array {
  const out = new Float32Array(residual.length);
  for (let i = 0; i < residual.length; i++) {
    const vi = v[i]!;
    out[i] = vi > 0 ? Math.abs(residual[i]!) * Math.sqrt(vi) : 0;
  }
  return out;
}

/**
 * Apply the joint prune in place.
 * @param residual dW, or null for a keyframe (no residual: moments tested alone)
 * @param m first moment, or null when the tensor has no optimizer state
 * @param v second moment, or null
 * @param options alpha, beta, weight rule and keep share, and whether pruned v restores as the mean of the pruned v (`'mean'`) or 0 (`'zero'`, the paper)
 * @returns thresholds and counts
 */
export function pruneJoint(
  residual: Float32Array | null,
  m: Float32Array | null,
  v: Float32Array | null,
  options: PruneOptions,
): PruneResult {
  const meanV = v ? meanAbs(v) : 0;
  let rw = 0;
  let keptWeights = 0;
  const rule = options.weightRule;
  if (rule === 'dither') throw new Error('pruneJoint: the rule dither (method 2) does not prune');
  if (residual && rule !== 'paper' && v) {
    const keep = options.keep;
    const n = residual.length;
    const score = rule === 'saliency' ? saliencyScores(residual, v) : residual;
    // Keep the scores strictly above the (1 - keep) quantile: a zero dW never survives.
    rw = keep >= 1 ? 0 : selectAbs(score, keepRank(n, keep));
    for (let i = 0; i < n; i++) {
      if (Math.abs(score[i]!) > rw && residual[i] !== 0) keptWeights++;
      else residual[i] = 0;
    }
  } else if (residual) {
    rw = weightThreshold(residual, meanV, options.alpha);
    for (let i = 0; i < residual.length; i++) {
      if (Math.abs(residual[i]!) > rw) keptWeights++;
      else residual[i] = 0;
    }
  }
  let ro = 0;
  let keptMoments = 0;
  let fillSum = 0;
  if (m && v) {
    ro = options.beta * meanAbs(m);
    for (let i = 0; i < m.length; i++) {
      const keep = Math.abs(m[i]!) > ro && (residual === null || residual[i] !== 0);
      if (keep) {
        keptMoments++;
      } else {
        fillSum += v[i]!;
        m[i] = 0;
        v[i] = 0;
      }
    }
  }
  const pruned = (m?.length ?? 0) - keptMoments;
  const vFill = options.vFill === 'mean' && pruned > 0 ? Math.fround(fillSum / pruned) : 0;
  return { weightThreshold: rw, momentThreshold: ro, keptWeights, keptMoments, vFill };
}
