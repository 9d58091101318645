/**
 * The compress-in-the-loop experiment (ExCP paper, section 4 / Figure 3):
 * train once without compression and once where every K steps the
 * checkpoint is compressed against the previous *restored* checkpoint,
 * restored, and training continues from the restored weights and moments.
 * If the method is nearly lossless, the two loss curves lie on each other.
 */
import { parseSafetensors } from '../../lib/formats/safetensors.js';
import { type TrainerOptions, createTrainer } from './trainer.js';

/**
 * Compress a checkpoint against a base (undefined: keyframe) and restore it.
 * The experiment only ever talks to the codec through this one function.
 */
export type CheckpointCodec = (current: Uint8Array, base: Uint8Array | undefined) => Promise<{ container: Uint8Array; restored: Uint8Array }>;

/** Codec settings the experiment varies. */
export interface CodecSettings {
  alpha?: number;
  beta?: number;
  bits?: number;
  weightRule?: 'dither' | 'paper' | 'magnitude' | 'saliency';
  keep?: number;
  vFill?: 'mean' | 'zero';
  vDomain?: 'log' | 'linear';
  /** Method 2 (rule `dither`): relative error of each weight update. */
  updateError?: number;
  /** A keyframe's fp32 weights: rounded to bf16's precision (`lossy`) or `exact`. */
  keyframe?: 'lossy' | 'exact';
  /** Code everything exactly: the loop must then reproduce the baseline bit for bit. */
  lossless?: boolean;
}

/**
 * The one place the codec is called: compressBuffer then restoreBuffer.
 * Imported lazily so the harness (and `--codec none`) runs even while the
 * library is being changed.
 * @param settings options passed to compressBuffer (unset ones take the library defaults)
 * @returns a CheckpointCodec
 */
export function excpCodec(settings: CodecSettings): CheckpointCodec {
  return async (current, base) => {
    const { compressBuffer, restoreBuffer } = await import('../../lib/index.js');
    const container = await compressBuffer(current, base, { ...settings });
    const restored = await restoreBuffer(container, base);
    return { container, restored };
  };
}

/** A codec that stores the checkpoint as is: the harness's own zero point. */
export const identityCodec: CheckpointCodec = async (current) => ({ container: current, restored: current.slice() });

/** Losses at a checkpoint step (nats per character). */
export interface EvalPoint {
  step: number;
  train: number;
  validation: number;
}

/** One run's trajectory. */
export interface RunCurve {
  /** Batch loss of every step (index = step - 1). */
  stepLosses: Float64Array;
  /** Evaluations at checkpoint steps (after restoring, for the compressed run). */
  evals: EvalPoint[];
  /** Seconds spent in trainer.step(). */
  trainSeconds: number;
}

/** What happened to one checkpoint of the compressed run. */
export interface CheckpointRow {
  step: number;
  /** Keyframe (no base) or residual against the previous restored checkpoint. */
  kind: 'keyframe' | 'residual';
  originalBytes: number;
  compressedBytes: number;
  ratio: number;
  /** Share of weights whose restored value differs from the base's (residual kept); NaN for keyframes. */
  weightsKept: number;
  /** Share of exp_avg entries restored nonzero (the method zeroes pruned m). */
  momentsKept: number;
  /** Relative RMS error of restored weights against the checkpoint that was compressed. */
  weightError: number;
  /** Seconds for compress + restore. */
  codecSeconds: number;
}

/** Settings of the experiment: the trainer's plus the checkpoint interval. */
export interface ExperimentOptions {
  trainer: TrainerOptions;
  /** Train until this step. */
  steps: number;
  /** Checkpoint (and, in the compressed run, compress + restore) every this many steps. */
  every: number;
  /** Called after each checkpoint of the compressed run. */
  onCheckpoint?: (row: CheckpointRow, baseline: EvalPoint | undefined, compressed: EvalPoint) => void;
}

/** Result of the compressed run. */
export interface CompressedRun extends RunCurve {
  checkpoints: CheckpointRow[];
}

function isCheckpointStep(step: number, options: ExperimentOptions): boolean {
  return step % options.every === 0 || step === options.steps;
}

/**
 * Train without compression.
 * @param options experiment settings
 * @returns the baseline curve
 */
export function runBaseline(options: ExperimentOptions): RunCurve {
  const trainer = createTrainer({ ...options.trainer, totalSteps: options.trainer.totalSteps ?? options.steps });
  const stepLosses = new Float64Array(options.steps);
  const evals: EvalPoint[] = [];
  let trainSeconds = 0;
  while (trainer.completedSteps < options.steps) {
    const t0 = performance.now();
    stepLosses[trainer.completedSteps] = trainer.step().loss;
    trainSeconds += (performance.now() - t0) / 1000;
    const step = trainer.completedSteps;
    if (isCheckpointStep(step, options)) evals.push({ step, ...trainer.evaluate() });
  }
  return { stepLosses, evals, trainSeconds };
}

/** F32 tensor data as a Float32Array (copies: the view may be unaligned). */
function floatsOf(data: Uint8Array): Float32Array {
  const copy = new Uint8Array(data.length);
  copy.set(data);
  return new Float32Array(copy.buffer);
}

/** Kept shares and weight error, measured from the files alone (independent of codec internals). */
function measure(original: Uint8Array, restored: Uint8Array, base: Uint8Array | undefined): Pick<CheckpointRow, 'weightsKept' | 'momentsKept' | 'weightError'> {
  const orig = new Map(parseSafetensors(original).tensors.map((t) => [t.name, t]));
  const back = parseSafetensors(restored).tensors;
  const prev = base ? new Map(parseSafetensors(base).tensors.map((t) => [t.name, t])) : undefined;
  let weights = 0;
  let changed = 0;
  let moments = 0;
  let nonzero = 0;
  let errorSq = 0;
  let normSq = 0;
  for (const t of back) {
    if (t.dtype !== 'F32') continue;
    const values = floatsOf(t.data);
    if (t.name.endsWith('.exp_avg')) {
      moments += values.length;
      for (const x of values) if (x !== 0) nonzero++;
    } else if (!t.name.endsWith('.exp_avg_sq')) {
      const source = orig.get(t.name);
      if (source) {
        const o = floatsOf(source.data);
        for (let i = 0; i < o.length; i++) {
          errorSq += (values[i]! - o[i]!) ** 2;
          normSq += o[i]! ** 2;
        }
      }
      const before = prev?.get(t.name);
      if (before) {
        const b = floatsOf(before.data);
        weights += values.length;
        for (let i = 0; i < b.length; i++) if (values[i] !== b[i]) changed++;
      }
    }
  }
  return {
    weightsKept: weights > 0 ? changed / weights : Number.NaN,
    momentsKept: moments > 0 ? nonzero / moments : Number.NaN,
    weightError: normSq > 0 ? Math.sqrt(errorSq / normSq) : 0,
  };
}

/**
 * Train with compress → restore → resume at every checkpoint.
 * @param options experiment settings
 * @param codec the compressor under test
 * @param baseline evaluations to pass to onCheckpoint alongside (optional)
 * @returns the compressed run's curve and per-checkpoint sizes
 */
export async function runCompressed(options: ExperimentOptions, codec: CheckpointCodec, baseline?: RunCurve): Promise<CompressedRun> {
  const trainer = createTrainer({ ...options.trainer, totalSteps: options.trainer.totalSteps ?? options.steps });
  const stepLosses = new Float64Array(options.steps);
  const evals: EvalPoint[] = [];
  const checkpoints: CheckpointRow[] = [];
  let previous: Uint8Array | undefined;
  let trainSeconds = 0;
  while (trainer.completedSteps < options.steps) {
    const t0 = performance.now();
    stepLosses[trainer.completedSteps] = trainer.step().loss;
    trainSeconds += (performance.now() - t0) / 1000;
    const step = trainer.completedSteps;
    if (!isCheckpointStep(step, options)) continue;
    const original = trainer.saveCheckpoint();
    const c0 = performance.now();
    const { container, restored } = await codec(original, previous);
    const codecSeconds = (performance.now() - c0) / 1000;
    const row: CheckpointRow = {
      step,
      kind: previous ? 'residual' : 'keyframe',
      originalBytes: original.length,
      compressedBytes: container.length,
      ratio: original.length / container.length,
      ...measure(original, restored, previous),
      codecSeconds,
    };
    // Closed loop: continue from what a user would restore, and diff the next checkpoint against it.
    trainer.loadCheckpoint(restored);
    if (trainer.completedSteps !== step) throw new Error(`fidelity: restored checkpoint says step ${trainer.completedSteps}, expected ${step}`);
    previous = restored;
    const point = { step, ...trainer.evaluate() };
    evals.push(point);
    checkpoints.push(row);
    options.onCheckpoint?.(row, baseline?.evals.find((e) => e.step === step), point);
  }
  return { stepLosses, evals, trainSeconds, checkpoints };
}

/** Headline numbers of a compressed run against its baseline. */
export interface Summary {
  /** (compressed − baseline) / baseline final validation loss. */
  finalGap: number;
  baselineValidation: number;
  compressedValidation: number;
  /** Σ original / Σ compressed bytes over residual checkpoints. */
  residualRatio: number;
  /** Mean of the per-checkpoint ratios over residual checkpoints. */
  meanResidualRatio: number;
  keyframeRatio: number;
}

/**
 * Summarise a run pair.
 * @param baseline uncompressed run
 * @param compressed compressed run
 * @returns final validation gap and ratios
 */
export function summarise(baseline: RunCurve, compressed: CompressedRun): Summary {
  const b = baseline.evals[baseline.evals.length - 1];
  const c = compressed.evals[compressed.evals.length - 1];
  if (!b || !c || b.step !== c.step) throw new Error('fidelity: runs do not end on the same checkpoint');
  const residual = compressed.checkpoints.filter((r) => r.kind === 'residual');
  const sum = (f: (r: CheckpointRow) => number): number => residual.reduce((s, r) => s + f(r), 0);
  const keyframe = compressed.checkpoints.find((r) => r.kind === 'keyframe');
  return {
    finalGap: (c.validation - b.validation) / b.validation,
    baselineValidation: b.validation,
    compressedValidation: c.validation,
    residualRatio: residual.length ? sum((r) => r.originalBytes) / sum((r) => r.compressedBytes) : Number.NaN,
    meanResidualRatio: residual.length ? sum((r) => r.ratio) / residual.length : Number.NaN,
    keyframeRatio: keyframe ? keyframe.ratio : Number.NaN,
  };
}
