/**
 * The example trainer as a library: a seeded character-level model trained
 * with AdamW on the committed corpus, with safetensors checkpoints in the
 * PyTorch-like convention `NAME`, `NAME.exp_avg`, `NAME.exp_avg_sq` (fp32)
 * and resume that is bit-exact.
 *
 * Why resume is exact: everything that survives from one step to the next is
 * in the checkpoint (weights and moments as the very fp32 values held in
 * memory, and the step counter). The learning rate and Adam's bias
 * correction are functions of the step, and the batch of step t is drawn
 * from a fresh PRNG seeded with hash(seed, t), so the data loader has no
 * state beyond the step either.
 */
import { parseSafetensors, serializeSafetensors, type TensorData } from '../../lib/formats/safetensors.js';
import { toFloat32 } from '../../lib/core/dtype.js';
import { type AdamWOptions, type MomentState, adamWStep, createMoments, learningRateAt } from './adamw.js';
import { type Corpus, loadCorpus } from './corpus.js';
import { CharMlp, type ModelShape, countParameters, hiddenDimFor } from './model.js';
import { Prng } from '../../spec/support/prng.js';

/** Checkpoint `__metadata__.format` written and required by this trainer. */
export const CHECKPOINT_FORMAT = 'excp-train/1';

/** Every setting of a run; stored in each checkpoint as JSON. */
export interface TrainerConfig extends Omit<ModelShape, 'vocabSize'>, AdamWOptions {
  /** Sequences (predictions) per step. */
  batchSize: number;
  /** Length of the learning-rate schedule (training may stop earlier or go on at the floor). */
  totalSteps: number;
  warmupSteps: number;
  learningRate: number;
  minLearningRateRatio: number;
  /** Seeds the initial weights and the batch sampler. */
  seed: number;
  /** Evenly spaced windows per split used by evaluate(). */
  evalSamples: number;
}

/** Options of createTrainer: any config field, plus a parameter budget and a corpus. */
export type TrainerOptions = Partial<TrainerConfig> & {
  /** Parameter budget used to pick hiddenDim when hiddenDim is not given: a number or '1m', '250k'... */
  params?: number | string;
  /** Text to train on; defaults to `examples/corpus/`. */
  corpus?: Corpus;
};

/** Result of one training step. */
export interface StepResult {
  /** Mean cross-entropy of the batch (nats per character), before the update. */
  loss: number;
  learningRate: number;
  /** Global gradient norm before clipping. */
  gradNorm: number;
}

/** Mean cross-entropy (nats per character) on fixed windows of each split. */
export interface Evaluation {
  train: number;
  validation: number;
}

/**
 * Parse a parameter budget such as `1m`, `5M`, `250k` or `1000000`.
 * @param value budget
 * @returns the count
 * @throws Error on an unparseable value
 */
export function parseParameterBudget(value: number | string): number {
  if (typeof value === 'number') return value;
  const match = /^\s*([0-9]*\.?[0-9]+)\s*([kKmM]?)\s*$/.exec(value);
  if (!match) throw new Error(`train: cannot parse parameter budget '${value}' (try 1m, 250k)`);
  const scale = match[2] === '' ? 1 : match[2]!.toLowerCase() === 'k' ? 1e3 : 1e6;
  return Math.round(Number(match[1]) * scale);
}

/**
 * Fill in defaults. The default shape (16 characters of context, 32-wide
 * embeddings, 2 residual blocks) gets its hidden width from the budget.
 * @param options partial settings
 * @param vocabSize symbols in the corpus
 * @returns a complete config
 */
export function resolveConfig(options: TrainerOptions, vocabSize: number): TrainerConfig {
  const contextLength = options.contextLength ?? 16;
  const embedDim = options.embedDim ?? 32;
  const blocks = options.blocks ?? 2;
  const hiddenDim = options.hiddenDim
    ?? hiddenDimFor(parseParameterBudget(options.params ?? '1m'), { vocabSize, contextLength, embedDim, blocks });
  const totalSteps = options.totalSteps ?? 500;
  const config: TrainerConfig = {
    contextLength, embedDim, hiddenDim, blocks,
    batchSize: options.batchSize ?? 64,
    totalSteps,
    warmupSteps: options.warmupSteps ?? Math.max(1, Math.min(100, Math.ceil(totalSteps / 10))),
    learningRate: options.learningRate ?? 2e-3,
    minLearningRateRatio: options.minLearningRateRatio ?? 0.1,
    beta1: options.beta1 ?? 0.9,
    beta2: options.beta2 ?? 0.95,
    eps: options.eps ?? 1e-8,
    weightDecay: options.weightDecay ?? 0.1,
    gradClip: options.gradClip ?? 1,
    seed: options.seed ?? 1,
    evalSamples: options.evalSamples ?? 1024,
  };
  for (const [key, value] of Object.entries(config)) {
    if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) throw new Error(`train: config.${key} = ${value} is not a finite number >= 0`);
  }
  if (config.batchSize < 1 || config.contextLength < 1 || config.embedDim < 1 || config.hiddenDim < 1) {
    throw new Error('train: batchSize, contextLength, embedDim and hiddenDim must be >= 1');
  }
  return config;
}

/** splitmix32 finaliser: hashes (seed, step) into a seed, so consecutive steps get unrelated batches. */
function mix32(value: number): number {
  let z = (value + 0x9e3779b9) | 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** Target indices spread evenly over a split (deterministic evaluation set). */
function evenPositions(length: number, context: number, count: number): Int32Array {
  const available = length - context;
  const n = Math.max(0, Math.min(count, available));
  const out = new Int32Array(n);
  for (let i = 0; i < n; i++) out[i] = context + Math.floor((i * available) / n);
  return out;
}

/** Bytes of a Float32Array, as stored on this (little-endian) host. */
function bytesOf(values: Float32Array): Uint8Array {
  return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
}

if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  // safetensors is little-endian and checkpoints are written from memory as is.
  throw new Error('train: big-endian hosts are not supported');
}

/** A training run in memory. */
export class Trainer {
  readonly config: TrainerConfig;
  readonly corpus: Corpus;
  readonly model: CharMlp;
  private readonly moments: MomentState[];
  private readonly batchPositions: Int32Array;
  private readonly evalPositions: { train: Int32Array; validation: Int32Array };
  private steps = 0;
  /** Seed of the batch sampler: data-loader state, so a loaded checkpoint's value replaces config.seed. */
  private dataSeed: number;

  /**
   * @param config complete settings (see resolveConfig)
   * @param corpus tokenised text
   */
  constructor(config: TrainerConfig, corpus: Corpus) {
    this.config = config;
    this.corpus = corpus;
    const shape: ModelShape = { ...pickShape(config), vocabSize: corpus.vocabulary.length };
    this.model = new CharMlp(shape, config.batchSize, config.seed);
    this.moments = createMoments(this.model.parameters);
    this.batchPositions = new Int32Array(config.batchSize);
    this.dataSeed = config.seed;
    this.evalPositions = {
      train: evenPositions(corpus.train.length, config.contextLength, config.evalSamples),
      validation: evenPositions(corpus.validation.length, config.contextLength, config.evalSamples),
    };
    if (corpus.train.length <= config.contextLength) throw new Error('train: training text shorter than the context');
  }

  /** Optimiser steps taken so far (the checkpoint's `step`). */
  get completedSteps(): number {
    return this.steps;
  }

  /** Trainable scalars in the model. */
  get parameterCount(): number {
    return countParameters(this.model.shape);
  }

  /**
   * Take one AdamW step on a freshly sampled batch.
   * @returns the batch loss before the update, the learning rate and gradient norm
   */
  step(): StepResult {
    const t = this.steps + 1;
    const { batchSize, contextLength } = this.config;
    const text = this.corpus.train;
    // Stateless sampler: the batch of step t depends only on (seed, t).
    const prng = new Prng(mix32(this.dataSeed ^ mix32(t)));
    const range = text.length - contextLength;
    for (let r = 0; r < batchSize; r++) this.batchPositions[r] = contextLength + (prng.nextU32() % range);
    for (const p of this.model.parameters) p.grad.fill(0);
    this.model.setBatch(text, this.batchPositions, batchSize);
    const loss = this.model.run(batchSize, true) / batchSize;
    const learningRate = learningRateAt(t, this.config);
    const gradNorm = adamWStep(this.model.parameters, this.moments, t, learningRate, this.config);
    this.steps = t;
    return { loss, learningRate, gradNorm };
  }

  /** @returns mean cross-entropy on the fixed train and validation windows */
  evaluate(): Evaluation {
    return {
      train: this.meanLoss(this.corpus.train, this.evalPositions.train),
      validation: this.meanLoss(this.corpus.validation, this.evalPositions.validation),
    };
  }

  private meanLoss(text: Uint8Array, positions: Int32Array): number {
    const rows = this.model.maxRows;
    let total = 0;
    for (let start = 0; start < positions.length; start += rows) {
      const count = Math.min(rows, positions.length - start);
      this.model.setBatch(text, positions.subarray(start, start + count), count);
      total += this.model.run(count, false);
    }
    return positions.length > 0 ? total / positions.length : Number.NaN;
  }

  /**
   * Serialise the full training state.
   * @returns a safetensors file: per parameter `NAME`, `NAME.exp_avg`, `NAME.exp_avg_sq` (F32),
   *   metadata `format`, `step`, `data_seed` (the data loader's whole state together with `step`),
   *   `config` (JSON) and `vocabulary`
   */
  saveCheckpoint(): Uint8Array {
    const tensors: TensorData[] = [];
    this.model.parameters.forEach((p, i) => {
      const { expAvg, expAvgSq } = this.moments[i]!;
      tensors.push({ name: p.name, dtype: 'F32', shape: p.shape, data: bytesOf(p.data) });
      tensors.push({ name: `${p.name}.exp_avg`, dtype: 'F32', shape: p.shape, data: bytesOf(expAvg) });
      tensors.push({ name: `${p.name}.exp_avg_sq`, dtype: 'F32', shape: p.shape, data: bytesOf(expAvgSq) });
    });
    return serializeSafetensors(tensors, {
      format: CHECKPOINT_FORMAT,
      step: String(this.steps),
      data_seed: String(this.dataSeed),
      config: JSON.stringify(this.config),
      vocabulary: this.corpus.vocabulary,
    });
  }

  /**
   * Replace the training state with a checkpoint's: weights, moments, step
   * and data-loader seed. Hyper-parameters (learning rate, schedule, batch
   * size) stay this trainer's own, so a run can be resumed with new ones.
   * F16/BF16 tensors are widened to fp32; missing moments (a weights-only
   * checkpoint) restart from zero.
   * @param bytes a safetensors file written by saveCheckpoint (or restored from one)
   * @throws Error when the model shape, vocabulary or tensor set does not match
   */
  loadCheckpoint(bytes: Uint8Array): void {
    const { tensors, metadata } = parseSafetensors(bytes);
    if (metadata['format'] !== undefined && metadata['format'] !== CHECKPOINT_FORMAT) {
      throw new Error(`train: checkpoint format '${metadata['format']}', expected '${CHECKPOINT_FORMAT}'`);
    }
    if (metadata['vocabulary'] !== undefined && metadata['vocabulary'] !== this.corpus.vocabulary) {
      throw new Error('train: checkpoint vocabulary differs from the corpus');
    }
    if (metadata['config'] !== undefined) {
      const saved = pickShape(JSON.parse(metadata['config']) as TrainerConfig);
      const mine = pickShape(this.config);
      if (JSON.stringify(saved) !== JSON.stringify(mine)) {
        throw new Error(`train: checkpoint shape ${JSON.stringify(saved)} differs from ${JSON.stringify(mine)}`);
      }
    }
    const byName = new Map(tensors.map((t) => [t.name, t]));
    const targets = new Map<string, Float32Array>();
    this.model.parameters.forEach((p, i) => {
      targets.set(p.name, p.data);
      targets.set(`${p.name}.exp_avg`, this.moments[i]!.expAvg);
      targets.set(`${p.name}.exp_avg_sq`, this.moments[i]!.expAvgSq);
    });
    for (const name of byName.keys()) if (!targets.has(name)) throw new Error(`train: unexpected tensor '${name}' in checkpoint`);
    for (const [name, target] of targets) {
      const tensor = byName.get(name);
      if (!tensor) {
        if (name.endsWith('.exp_avg') || name.endsWith('.exp_avg_sq')) {
          target.fill(0);
          continue;
        }
        throw new Error(`train: checkpoint lacks tensor '${name}'`);
      }
      const count = tensor.shape.reduce((a, d) => a * d, 1);
      if (count !== target.length) throw new Error(`train: tensor '${name}' has ${count} elements, model needs ${target.length}`);
      // Copy through a byte view: the source may sit at any byte offset.
      if (tensor.dtype === 'F32') bytesOf(target).set(tensor.data);
      else target.set(toFloat32(tensor.data, tensor.dtype));
    }
    const step = Number(metadata['step'] ?? '0');
    if (!Number.isSafeInteger(step) || step < 0) throw new Error(`train: bad step '${metadata['step']}' in checkpoint`);
    const dataSeed = Number(metadata['data_seed'] ?? String(this.config.seed));
    if (!Number.isSafeInteger(dataSeed)) throw new Error(`train: bad data_seed '${metadata['data_seed']}' in checkpoint`);
    this.steps = step;
    this.dataSeed = dataSeed;
  }
}

function pickShape(config: Pick<TrainerConfig, 'contextLength' | 'embedDim' | 'hiddenDim' | 'blocks'>): Omit<ModelShape, 'vocabSize'> {
  return { contextLength: config.contextLength, embedDim: config.embedDim, hiddenDim: config.hiddenDim, blocks: config.blocks };
}

/**
 * Create a trainer at step 0 with seeded initial weights.
 * @param options settings; unspecified ones take the defaults of resolveConfig
 * @returns the trainer
 */
export function createTrainer(options: TrainerOptions = {}): Trainer {
  const corpus = options.corpus ?? loadCorpus();
  return new Trainer(resolveConfig(options, corpus.vocabulary.length), corpus);
}

/**
 * Create a trainer from a checkpoint, taking its config from the metadata.
 * @param bytes checkpoint written by saveCheckpoint
 * @param overrides settings to change (e.g. evalSamples); shape fields must match
 * @returns the trainer, positioned at the checkpoint's step
 */
export function createTrainerFromCheckpoint(bytes: Uint8Array, overrides: TrainerOptions = {}): Trainer {
  const { metadata } = parseSafetensors(bytes);
  const saved = metadata['config'] !== undefined ? (JSON.parse(metadata['config']) as Partial<TrainerConfig>) : {};
  const trainer = createTrainer({ ...saved, ...overrides });
  trainer.loadCheckpoint(bytes);
  return trainer;
}
