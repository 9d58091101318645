/**
 * Step 4 of the parameter mapping (param-map.ts explains the steps): the
 * statistics of a run. Between two checkpoints AdamW moved every weight by
 *
 *   W_cur - W_prev = -sum_k lr_k * (u_k + wd * W_k),   u_k = m̂_k / (sqrt(v̂_k) + eps)
 *
 * (m̂, v̂: the moments with Adam's bias correction). The optimizer state of
 * both checkpoints gives u at the two ends of the interval; the moments
 * forget slowly (beta1 = 0.9: about ten steps), so the mean of the two
 * directions leans toward the sum, and a weight's change, with the
 * weight-decay term put back, correlates with -u of its own id and with
 * nothing else's. The scores are Pearson correlations on a sample of
 * positions that is the same for every tensor of a size.
 *
 * How sure a score difference is: with no relation between a change and a
 * direction, a correlation over n positions is about normal with variance
 * 1/(n-1), so a difference of scores summed over k changed positions has
 * variance sum(2/(n_p - 1)); its z (difference / standard deviation) is what
 * a mapping must clear. Pure arithmetic on typed arrays; the adapters read
 * the samples.
 */

/** Adam's hyper-parameters of a param group (torch's names: betas, eps). */
export interface AdamHyper {
  beta1: number;
  beta2: number;
  eps: number;
}

/** A run of sampled elements: [start, start + length). */
export interface SampleBlock {
  start: number;
  length: number;
}

/**
 * The positions sampled from a tensor of `elements` elements: up to 16
 * contiguous blocks spread evenly, `sampleSize` elements in all (all of a
 * smaller tensor). Blocks, not single elements: a reader reads each with one
 * call, and a tensor of any size costs the same to score.
 * @param elements the tensor's element count
 * @param sampleSize most elements sampled
 */
export function samplePlan(elements: number, sampleSize: number): SampleBlock[] {
  if (elements <= sampleSize) return elements > 0 ? [{ start: 0, length: elements }] : [];
  const blocks = 16;
  const length = Math.floor(sampleSize / blocks);
  return Array.from({ length: blocks }, (_, b) => ({ start: Math.floor((b * (elements - length)) / (blocks - 1)), length }));
}

/**
 * Adam's update direction of one state, as torch's AdamW computes it:
 * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps).
 * @param m exp_avg values
 * @param v exp_avg_sq values (same positions)
 * @param step the state's step t (>= 1)
 * @param h the group's betas and eps
 */
export function adamDirection(m: ArrayLike<number>, v: ArrayLike<number>, step: number, h: AdamHyper): Float64Array {
  const c1 = step > 0 ? 1 - h.beta1 ** step : 1;
  const c2 = step > 0 ? Math.sqrt(1 - h.beta2 ** step) : 1;
  const out = new Float64Array(m.length);
  for (let i = 0; i < out.length; i++) out[i] = m[i]! / c1 / (Math.sqrt(Math.max(0, v[i]!)) / c2 + h.eps);
  return out;
}

/** Pearson correlation; NaN when either side does not vary. */
export function pearson(a: ArrayLike<number>, b: ArrayLike<number>): number {
  const n = a.length;
  let sa = 0;
  let sb = 0;
  for (let i = 0; i < n; i++) {
    sa += a[i]!;
    sb += b[i]!;
  }
  const ma = sa / n;
  const mb = sb / n;
  let cov = 0;
  let va = 0;
  let vb = 0;
  for (let i = 0; i < n; i++) {
    const x = a[i]! - ma;
    const y = b[i]! - mb;
    cov += x * y;
    va += x * x;
    vb += y * y;
  }
  return cov / Math.sqrt(va * vb);
}

/** Sampled values of one candidate pairing's two sides. */
export interface ScoreInputs {
  /** Per id: the Adam direction (sampled), or null when its state gives none. */
  directions: (Float64Array | null)[];
  /** Per name: W_cur - W_prev (sampled), or null without a previous weight. */
  changes: (Float64Array | null)[];
  /** Per name: the mean of W_prev and W_cur (sampled), for the decay term; null: no decay term. */
  weights: (Float64Array | null)[];
  /** Per id: lr summed over the interval times the group's weight decay (0: none). */
  decay: number[];
}

/**
 * Scores of every (id, name) pair: corr(change + decay * weight, -direction),
 * 0 where either side does not vary; null when any side is missing (then the
 * data cannot decide this bucket). Also the sample size per name.
 * @throws nothing; lengths that differ give null
 */
export function scoreMatrix(s: ScoreInputs): { scores: number[][]; samples: number[] } | null {
  if (s.directions.some((d) => !d) || s.changes.some((c) => !c)) return null;
  const samples = s.changes.map((c) => c!.length);
  if (s.directions.some((d) => d!.length !== samples[0]) || samples.some((n) => n !== samples[0])) return null;
  const scores = s.directions.map((d, i) => s.changes.map((c, j) => {
    const w = s.weights[j];
    const decay = s.decay[i] ?? 0;
    const corrected = decay !== 0 && w ? c!.map((x, k) => x + decay * w[k]!) : c!;
    const r = -pearson(corrected, d!);
    return Number.isFinite(r) ? r : 0;
  }));
  return { scores, samples };
}

/**
 * z of a score difference summed over positions with these sample sizes.
 * @param difference the better total minus the worse
 * @param samples the sample size of each position that differs
 */
export function zOf(difference: number, samples: readonly number[]): number {
  const variance = samples.reduce((s, n) => s + 2 / Math.max(1, n - 1), 0);
  return variance > 0 ? difference / Math.sqrt(variance) : 0;
}

/**
 * The run's statistics, sampled ({@link samplePlan}, the same
 * positions for every tensor of a size); a function returns null when it
 * has no data.
 */
export interface ParamMapData {
  /** W_cur - W_prev of a named parameter. */
  change(name: string): Float64Array | null;
  /** (W_prev + W_cur) / 2 of a named parameter, for the weight-decay term. */
  weight(name: string): Float64Array | null;
  /** Adam's update direction of an id, the mean over the base and the current state. */
  direction(id: number): Float64Array | null;
  /** The learning rate summed over the interval times the id's weight decay (0: no decay term). */
  decay(id: number): number;
}

/** Summed scores of an id's candidate names over `steps` steps. */
export interface Evidence {
  steps: number;
  scores: ReadonlyMap<string, number>;
}

/**
 * The statistics of one step, read once per name and id, with the earlier
 * steps' evidence added: what param-map.ts scores candidates with.
 */
export class RunStatistics {
  private readonly data: ParamMapData | undefined;
  private readonly evidence: ReadonlyMap<number, Evidence> | undefined;
  private readonly changes = new Map<string, Float64Array | null>();
  private readonly directions = new Map<number, Float64Array | null>();
  /** Scores with the earlier steps' evidence added, by id and name (what the next step is given). */
  private readonly summed = new Map<number, Map<string, number>>();
  /** Why nothing can be decided without scores. */
  readonly noData: string;
  /** {@link scores}, as a function. */
  readonly scoresOf: (ids: readonly number[], names: readonly string[]) => { scores: number[][]; samples: number[] } | null;

  /**
   * @param data this step's samples, or undefined (no previous checkpoint)
   * @param evidence the earlier steps' summed scores
   */
  constructor(data: ParamMapData | undefined, evidence: ReadonlyMap<number, Evidence> | undefined) {
    this.data = data;
    this.evidence = evidence;
    this.noData = data ? 'no weight change or optimizer state to compare' : 'no previous checkpoint to compare with';
    this.scoresOf = (ids, names) => this.scores(ids, names);
  }

  /**
   * Scores of ids x names of one shape, the earlier steps' evidence added,
   * with an effective sample size per id (the null variance of a score
   * summed over k steps of n samples is k/(n-1): as one of 1 + (n-1)/k);
   * null without data.
   */
  scores(ids: readonly number[], names: readonly string[]): { scores: number[][]; samples: number[] } | null {
    const s = this.stepScores(ids, names);
    if (!s) return null;
    const samples = ids.map((id) => 1 + (s.samples[0]! - 1) / (1 + (this.evidence?.get(id)?.steps ?? 0)));
    const scores = s.scores.map((row, i) => row.map((x, j) => {
      const total = x + (this.evidence?.get(ids[i]!)?.scores.get(names[j]!) ?? 0);
      const seen = this.summed.get(ids[i]!) ?? new Map<string, number>();
      this.summed.set(ids[i]!, seen.set(names[j]!, total));
      return total;
    }));
    return { scores, samples };
  }

  /** The evidence of an id after this step, or null when this step scored nothing for it. */
  evidenceOf(id: number): Evidence | null {
    const summed = this.summed.get(id);
    return summed ? { steps: 1 + (this.evidence?.get(id)?.steps ?? 0), scores: summed } : null;
  }

  /** This step's scores alone. */
  private stepScores(ids: readonly number[], names: readonly string[]): { scores: number[][]; samples: number[] } | null {
    const data = this.data;
    if (!data) return null;
    const change = (n: string): Float64Array | null => {
      if (!this.changes.has(n)) this.changes.set(n, data.change(n));
      return this.changes.get(n)!;
    };
    const direction = (id: number): Float64Array | null => {
      if (!this.directions.has(id)) this.directions.set(id, data.direction(id));
      return this.directions.get(id)!;
    };
    const decay = ids.map((id) => data.decay(id));
    return scoreMatrix({
      directions: ids.map(direction), changes: names.map(change),
      weights: names.map((n) => (decay.some((d) => d !== 0) ? data.weight(n) : null)), decay,
    });
  }
}
