/**
 * The example trainer (examples/train/): gradients match finite
 * differences, the checkpoint follows the NAME / NAME.exp_avg /
 * NAME.exp_avg_sq convention, and resuming from a checkpoint reproduces an
 * uninterrupted run bit for bit.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { parseSafetensors } from '../lib/formats/safetensors.js';
import { learningRateAt } from '../examples/train/adamw.js';
import { buildCorpus, loadCorpus } from '../examples/train/corpus.js';
import { countParameters, hiddenDimFor } from '../examples/train/model.js';
import { CHECKPOINT_FORMAT, type TrainerOptions, createTrainer, createTrainerFromCheckpoint, parseParameterBudget } from '../examples/train/trainer.js';

const corpus = loadCorpus();
/** A model of about 10k parameters: each step takes well under a millisecond. */
const TINY: TrainerOptions = {
  corpus, contextLength: 8, embedDim: 8, hiddenDim: 32, blocks: 2, batchSize: 16, totalSteps: 40, evalSamples: 128, seed: 7,
};

describe('corpus', () => {
  it('splits every document 90/10 over one shared vocabulary', () => {
    const c = buildCorpus(['abcdefghij', 'zzzzzzzzzzzzzzzzzzzz']);
    assert.equal(c.vocabulary, 'abcdefghijz');
    assert.deepEqual([...c.train], [0, 1, 2, 3, 4, 5, 6, 7, 8, ...new Array(18).fill(10)]);
    assert.deepEqual([...c.validation], [9, 10, 10]);
  });

  it('the committed corpus is under 1 MB with a non-trivial validation split', () => {
    const total = corpus.train.length + corpus.validation.length;
    assert.ok(total > 100_000 && total < 1_000_000, `corpus has ${total} characters`);
    assert.ok(corpus.validation.length > 0.09 * total && corpus.validation.length < 0.11 * total);
  });
});

describe('model sizing', () => {
  it('parses budgets', () => {
    assert.equal(parseParameterBudget('1m'), 1_000_000);
    assert.equal(parseParameterBudget('250k'), 250_000);
    assert.equal(parseParameterBudget('2.5M'), 2_500_000);
    assert.equal(parseParameterBudget(1234), 1234);
    assert.throws(() => parseParameterBudget('lots'));
  });

  it('picks a hidden width within 5% of the budget', () => {
    for (const target of [1e6, 5e6, 1e7]) {
      const base = { vocabSize: corpus.vocabulary.length, contextLength: 16, embedDim: 32, blocks: 2 };
      const count = countParameters({ ...base, hiddenDim: hiddenDimFor(target, base) });
      assert.ok(Math.abs(count - target) / target < 0.05, `${count} for ${target}`);
    }
  });
});

describe('schedule', () => {
  const schedule = { learningRate: 1e-3, minLearningRateRatio: 0.1, warmupSteps: 10, totalSteps: 110 };
  it('warms up linearly, decays by a cosine, then stays at the floor', () => {
    assert.equal(learningRateAt(1, schedule), 1e-4);
    assert.equal(learningRateAt(10, schedule), 1e-3);
    assert.ok(Math.abs(learningRateAt(60, schedule) - 5.5e-4) < 1e-12);
    assert.ok(Math.abs(learningRateAt(110, schedule) - 1e-4) < 1e-12);
    assert.ok(Math.abs(learningRateAt(500, schedule) - 1e-4) < 1e-12);
  });
});

describe('gradients', () => {
  it('match central finite differences', () => {
    const trainer = createTrainer({ ...TINY, hiddenDim: 24, contextLength: 6, embedDim: 4 });
    const model = trainer.model;
    const positions = [100, 2000, 3000, 4000, 5000, 6000, 7000, 8000];
    const loss = (): number => {
      model.setBatch(corpus.train, positions, positions.length);
      return model.run(positions.length, false) / positions.length;
    };
    for (const p of model.parameters) p.grad.fill(0);
    model.setBatch(corpus.train, positions, positions.length);
    model.run(positions.length, true);
    // Embedding rows of characters that occur in the batch, and spread-out entries elsewhere.
    const usedId = corpus.train[positions[0]! - 1]!;
    for (const p of model.parameters) {
      for (let j = 0; j < 6; j++) {
        const i = p.name === 'embed.weight' ? usedId * 4 + (j % 4) : (j * 7919) % p.data.length;
        const original = p.data[i]!;
        const h = 1e-2;
        p.data[i] = original + h;
        const plus = loss();
        p.data[i] = original - h;
        const minus = loss();
        p.data[i] = original;
        const numeric = (plus - minus) / (2 * h);
        const analytic = p.grad[i]!;
        const error = Math.abs(numeric - analytic) / Math.max(1e-3, Math.abs(numeric) + Math.abs(analytic));
        assert.ok(error < 0.02, `${p.name}[${i}]: numeric ${numeric}, analytic ${analytic}`);
      }
    }
  });
});

describe('training', () => {
  it('lowers the loss of a tiny model', () => {
    const trainer = createTrainer({ ...TINY, totalSteps: 150, learningRate: 1e-2 });
    const before = trainer.evaluate();
    for (let i = 0; i < 150; i++) trainer.step();
    const after = trainer.evaluate();
    assert.ok(after.train < before.train - 1, `train loss ${before.train} -> ${after.train}`);
    assert.ok(after.validation < before.validation - 1, `validation loss ${before.validation} -> ${after.validation}`);
  });

  it('is deterministic: same seed, same bytes; other seed, other bytes', () => {
    const run = (seed: number): Uint8Array => {
      const trainer = createTrainer({ ...TINY, seed });
      for (let i = 0; i < 5; i++) trainer.step();
      return trainer.saveCheckpoint();
    };
    assert.deepEqual(run(3), run(3));
    assert.notDeepEqual(run(3), run(4));
  });
});

describe('checkpoints', () => {
  it('hold NAME, NAME.exp_avg, NAME.exp_avg_sq in F32 plus step and config metadata', () => {
    const trainer = createTrainer(TINY);
    for (let i = 0; i < 3; i++) trainer.step();
    const { tensors, metadata } = parseSafetensors(trainer.saveCheckpoint());
    assert.equal(tensors.length, 3 * trainer.model.parameters.length);
    for (const p of trainer.model.parameters) {
      for (const name of [p.name, `${p.name}.exp_avg`, `${p.name}.exp_avg_sq`]) {
        const t = tensors.find((x) => x.name === name);
        assert.ok(t, `missing ${name}`);
        assert.equal(t.dtype, 'F32');
        assert.deepEqual(t.shape, p.shape);
      }
    }
    assert.equal(metadata['format'], CHECKPOINT_FORMAT);
    assert.equal(metadata['step'], '3');
    assert.equal(metadata['vocabulary'], corpus.vocabulary);
    assert.equal((JSON.parse(metadata['config']!) as { hiddenDim: number }).hiddenDim, 32);
  });

  it('resume from step k equals an uninterrupted run, byte for byte', () => {
    const straight = createTrainer(TINY);
    const saved = new Map<number, Uint8Array>();
    for (let i = 0; i < 25; i++) {
      straight.step();
      if (straight.completedSteps % 5 === 0) saved.set(straight.completedSteps, straight.saveCheckpoint());
    }
    const final = straight.saveCheckpoint();
    for (const k of [5, 10, 20]) {
      // Both ways to resume: a fresh trainer from the file, and loading into an existing trainer.
      const fromFile = createTrainerFromCheckpoint(saved.get(k)!, { corpus });
      assert.equal(fromFile.completedSteps, k);
      while (fromFile.completedSteps < 25) fromFile.step();
      assert.deepEqual(fromFile.saveCheckpoint(), final, `resumed at ${k}`);

      const reused = createTrainer({ ...TINY, seed: 99 });
      for (let i = 0; i < 3; i++) reused.step();
      reused.loadCheckpoint(saved.get(k)!);
      while (reused.completedSteps < 25) reused.step();
      // Its config (seed 99) is recorded in the header, so compare the tensors and the step.
      const a = parseSafetensors(reused.saveCheckpoint());
      const b = parseSafetensors(final);
      assert.equal(a.metadata['step'], b.metadata['step']);
      assert.deepEqual(a.tensors.map((t) => [t.name, t.data]), b.tensors.map((t) => [t.name, t.data]), `loaded into a used trainer at ${k}`);
    }
  });

  it('refuses a checkpoint of another shape', () => {
    const small = createTrainer(TINY).saveCheckpoint();
    const wider = createTrainer({ ...TINY, hiddenDim: 40 });
    assert.throws(() => wider.loadCheckpoint(small), /shape/);
  });
});
