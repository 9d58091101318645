/**
 * Train the example character model and write checkpoints.
 *
 *   npx tsx examples/train/main.ts --steps 300 --every 100 --out runs/a --params 1m
 *   npx tsx examples/train/main.ts --resume runs/a/step-000200.safetensors --steps 300 --out runs/b
 *
 * Options: --steps N (train until step N), --every K (checkpoint every K
 * steps; 0 = only at the end), --out DIR, --params 1m|5m|250k, --batch B,
 * --lr LR, --seed S, --total-steps T (schedule length; defaults to --steps),
 * --eval-samples N, --log L (print the batch loss every L steps),
 * --resume FILE (continue a checkpoint; its config wins over the flags).
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { type Trainer, type TrainerOptions, createTrainer, createTrainerFromCheckpoint } from './trainer.js';

/** Checkpoint file name for a step, zero-padded so names sort by step. */
export function checkpointName(step: number): string {
  return `step-${String(step).padStart(6, '0')}.safetensors`;
}

/** Parse a numeric flag; undefined when absent. */
function numberFlag(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (!Number.isFinite(n)) throw new Error(`train: --${name} '${value}' is not a number`);
  return n;
}

function main(): void {
  const { values } = parseArgs({
    options: {
      steps: { type: 'string', default: '300' },
      every: { type: 'string', default: '100' },
      out: { type: 'string', default: 'runs/train' },
      params: { type: 'string', default: '1m' },
      batch: { type: 'string' },
      lr: { type: 'string' },
      seed: { type: 'string' },
      'total-steps': { type: 'string' },
      'eval-samples': { type: 'string' },
      log: { type: 'string', default: '10' },
      resume: { type: 'string' },
    },
  });
  const steps = numberFlag(values.steps, 'steps')!;
  const every = numberFlag(values.every, 'every')!;
  const logEvery = numberFlag(values.log, 'log')!;
  const options: TrainerOptions = { params: values.params!, totalSteps: numberFlag(values['total-steps'], 'total-steps') ?? steps };
  const batch = numberFlag(values.batch, 'batch');
  if (batch !== undefined) options.batchSize = batch;
  const lr = numberFlag(values.lr, 'lr');
  if (lr !== undefined) options.learningRate = lr;
  const seed = numberFlag(values.seed, 'seed');
  if (seed !== undefined) options.seed = seed;
  const evalSamples = numberFlag(values['eval-samples'], 'eval-samples');

  let trainer: Trainer;
  if (values.resume !== undefined) {
    trainer = createTrainerFromCheckpoint(readFileSync(values.resume), evalSamples !== undefined ? { evalSamples } : {});
    console.log(`resumed ${values.resume} at step ${trainer.completedSteps}`);
  } else {
    if (evalSamples !== undefined) options.evalSamples = evalSamples;
    trainer = createTrainer(options);
  }
  const out = values.out!;
  mkdirSync(out, { recursive: true });
  const c = trainer.config;
  console.log(`model: ${trainer.parameterCount} parameters (context ${c.contextLength}, embed ${c.embedDim}, hidden ${c.hiddenDim}, blocks ${c.blocks}, vocab ${trainer.corpus.vocabulary.length}); batch ${c.batchSize}, lr ${c.learningRate}, schedule ${c.totalSteps} steps`);

  const started = performance.now();
  let trainTime = 0;
  let taken = 0;
  while (trainer.completedSteps < steps) {
    const t0 = performance.now();
    const result = trainer.step();
    trainTime += performance.now() - t0;
    taken++;
    const step = trainer.completedSteps;
    if (logEvery > 0 && step % logEvery === 0) {
      console.log(`step ${step}  loss ${result.loss.toFixed(4)}  lr ${result.learningRate.toExponential(2)}  |g| ${result.gradNorm.toFixed(3)}`);
    }
    if ((every > 0 && step % every === 0) || step === steps) {
      const bytes = trainer.saveCheckpoint();
      const file = join(out, checkpointName(step));
      writeFileSync(file, bytes);
      const e = trainer.evaluate();
      console.log(`checkpoint ${file} (${bytes.length} bytes)  train ${e.train.toFixed(4)}  validation ${e.validation.toFixed(4)}`);
    }
  }
  const seconds = (performance.now() - started) / 1000;
  const rate = taken > 0 ? (1000 * taken) / trainTime : 0;
  console.log(`done: step ${trainer.completedSteps}; ${seconds.toFixed(1)} s wall, ${taken} steps in ${(trainTime / 1000).toFixed(1)} s (${rate.toFixed(2)} steps/s)`);
}

main();
