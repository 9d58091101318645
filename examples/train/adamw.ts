/**
 * AdamW (Loshchilov & Hutter, decoupled weight decay) with global-norm
 * gradient clipping and a linear-warmup + cosine learning-rate schedule.
 * The update follows PyTorch's `torch.optim.AdamW` order of operations:
 * decay the weight, update the moments, then step with bias-corrected
 * moments, so the moments saved as `exp_avg` / `exp_avg_sq` mean the same
 * thing as in a PyTorch checkpoint.
 */
import type { Parameter } from './model.js';

/** Optimiser hyper-parameters. */
export interface AdamWOptions {
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Clip the global gradient L2 norm to this; 0 disables clipping. */
  gradClip: number;
}

/** Learning-rate schedule parameters. */
export interface ScheduleOptions {
  learningRate: number;
  /** Floor of the cosine, as a fraction of learningRate. */
  minLearningRateRatio: number;
  warmupSteps: number;
  totalSteps: number;
}

/**
 * Learning rate of the update that produces step `step` (1-based): linear
 * warmup to the peak, then half a cosine down to the floor at `totalSteps`,
 * and the floor after that.
 * @param step 1-based update number
 * @param schedule schedule parameters
 * @returns the learning rate
 */
export function learningRateAt(step: number, schedule: ScheduleOptions): number {
  const { learningRate, minLearningRateRatio, warmupSteps, totalSteps } = schedule;
  if (step <= warmupSteps) return (learningRate * step) / warmupSteps;
  const floor = learningRate * minLearningRateRatio;
  const span = totalSteps - warmupSteps;
  if (step >= totalSteps || span <= 0) return floor;
  const progress = (step - warmupSteps) / span;
  return floor + 0.5 * (learningRate - floor) * (1 + Math.cos(Math.PI * progress));
}

/** Per-parameter optimiser state: Adam's first and second moments. */
export interface MomentState {
  /** First moment m (PyTorch `exp_avg`). */
  expAvg: Float32Array;
  /** Second moment v (PyTorch `exp_avg_sq`). */
  expAvgSq: Float32Array;
}

/**
 * Allocate zeroed moments for each parameter.
 * @param parameters model parameters
 * @returns moments, index-aligned with `parameters`
 */
export function createMoments(parameters: readonly Parameter[]): MomentState[] {
  return parameters.map((p) => ({ expAvg: new Float32Array(p.data.length), expAvgSq: new Float32Array(p.data.length) }));
}

/**
 * Global L2 norm of all gradients.
 * @param parameters parameters with gradients
 * @returns sqrt(Σ g²)
 */
export function gradientNorm(parameters: readonly Parameter[]): number {
  let sum = 0;
  for (const p of parameters) {
    const g = p.grad;
    for (let i = 0; i < g.length; i++) sum += g[i]! * g[i]!;
  }
  return Math.sqrt(sum);
}

/**
 * One AdamW update of every parameter (gradients are read, not cleared).
 * @param parameters parameters with gradients
 * @param moments their moments (updated in place)
 * @param step 1-based update number, for bias correction
 * @param learningRate learning rate of this update
 * @param options hyper-parameters
 * @returns the global gradient norm before clipping
 */
export function adamWStep(
  parameters: readonly Parameter[], moments: readonly MomentState[], step: number,
  learningRate: number, options: AdamWOptions,
): number {
  const { beta1, beta2, eps, weightDecay, gradClip } = options;
  const norm = gradientNorm(parameters);
  const scale = gradClip > 0 && norm > gradClip ? gradClip / (norm + 1e-6) : 1;
  const correction1 = 1 - beta1 ** step;
  const correction2Sqrt = Math.sqrt(1 - beta2 ** step);
  const stepSize = learningRate / correction1;
  parameters.forEach((p, index) => {
    const { expAvg, expAvgSq } = moments[index]!;
    const w = p.data;
    const g = p.grad;
    const keep = p.decay ? 1 - learningRate * weightDecay : 1;
    for (let i = 0; i < w.length; i++) {
      const grad = g[i]! * scale;
      expAvg[i] = beta1 * expAvg[i]! + (1 - beta1) * grad;
      expAvgSq[i] = beta2 * expAvgSq[i]! + (1 - beta2) * grad * grad;
      // Read the moments back so the step uses their fp32-rounded values,
      // exactly what a checkpoint stores (resume stays bit-exact).
      w[i] = w[i]! * keep - (stepSize * expAvg[i]!) / (Math.sqrt(expAvgSq[i]!) / correction2Sqrt + eps);
    }
  });
  return norm;
}
