/**
 * The compress-in-the-loop experiment in small (examples/fidelity.ts at
 * 200k parameters, 120 steps, a checkpoint every 20): training that resumes
 * from restored checkpoints stays close to the uncompressed run, and the
 * residual checkpoints shrink. Runs in about 15 s on one core.
 *
 * Bounds come from a run of the library defaults (alpha 5e-5, beta 2,
 * bits 4) on the day this spec was written: residual ratio 16.6x aggregate,
 * final validation-loss gap +0.91%. The bounds leave room for noise and for
 * better defaults; tighten them when the defaults change on purpose.
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { loadCorpus } from '../examples/train/corpus.js';
import {
  type CompressedRun, type ExperimentOptions, type RunCurve, type Summary,
  excpCodec, identityCodec, runBaseline, runCompressed, summarise,
} from '../examples/train/experiment.js';

const EXPERIMENT: ExperimentOptions = {
  trainer: { corpus: loadCorpus(), params: '200k', evalSamples: 512 },
  steps: 120,
  every: 20,
};
/** Lowest acceptable Σ original / Σ compressed over residual checkpoints (measured 16.6x). */
const MIN_RESIDUAL_RATIO = 15;
/** Largest acceptable |final validation gap| (measured +0.91%). */
const MAX_ABS_GAP = 0.02;
/** The product's target at the default settings (examples/fidelity.ts at 1M parameters). */
const TARGET = { ratio: 50, gap: 0.01 };

describe('fidelity: compress in the loop', () => {
  let baseline: RunCurve;
  let compressed: CompressedRun;
  let summary: Summary;

  before(async () => {
    baseline = runBaseline(EXPERIMENT);
    compressed = await runCompressed(EXPERIMENT, excpCodec({}));
    summary = summarise(baseline, compressed);
  });

  it('checkpoints every K steps: one keyframe, then residuals', () => {
    assert.deepEqual(compressed.checkpoints.map((r) => r.step), [20, 40, 60, 80, 100, 120]);
    assert.deepEqual(compressed.checkpoints.map((r) => r.kind), ['keyframe', 'residual', 'residual', 'residual', 'residual', 'residual']);
    assert.deepEqual(compressed.evals.map((e) => e.step), baseline.evals.map((e) => e.step));
  });

  it('the two runs agree until the first checkpoint, bit for bit', () => {
    // Nothing has been compressed before step 20, so the batch losses must be identical.
    assert.deepEqual(compressed.stepLosses.subarray(0, 20), baseline.stepLosses.subarray(0, 20));
    assert.ok(compressed.stepLosses.every(Number.isFinite));
  });

  it(`residual checkpoints shrink at least ${MIN_RESIDUAL_RATIO}x`, () => {
    assert.ok(summary.residualRatio >= MIN_RESIDUAL_RATIO, `residual ratio ${summary.residualRatio.toFixed(1)}x`);
    for (const row of compressed.checkpoints) {
      assert.ok(row.compressedBytes < row.originalBytes, `step ${row.step}: ${row.compressedBytes} >= ${row.originalBytes}`);
    }
  });

  it(`final validation loss stays within ${100 * MAX_ABS_GAP}% of the baseline`, () => {
    assert.ok(Math.abs(summary.finalGap) <= MAX_ABS_GAP,
      `gap ${(100 * summary.finalGap).toFixed(2)}% (baseline ${summary.baselineValidation}, compressed ${summary.compressedValidation})`);
  });

  it(`reaches the product target (>= ${TARGET.ratio}x, gap <= ${100 * TARGET.gap}%)`, { todo: 'library defaults keep ~95% of residuals on this model (alpha / sqrt(mean v) << 2.5)' }, () => {
    assert.ok(summary.residualRatio >= TARGET.ratio, `residual ratio ${summary.residualRatio.toFixed(1)}x`);
    assert.ok(Math.abs(summary.finalGap) <= TARGET.gap, `gap ${(100 * summary.finalGap).toFixed(2)}%`);
  });
});

describe('fidelity: the harness itself', () => {
  const short: ExperimentOptions = { ...EXPERIMENT, steps: 40, every: 20 };

  it('an identity codec reproduces the baseline exactly', async () => {
    const baseline = runBaseline(short);
    const run = await runCompressed(short, identityCodec);
    assert.deepEqual(run.stepLosses, baseline.stepLosses);
    assert.deepEqual(run.evals, baseline.evals);
    assert.equal(summarise(baseline, run).finalGap, 0);
  });

  it('lossless compression in the loop reproduces the baseline exactly', async () => {
    const baseline = runBaseline(short);
    const run = await runCompressed(short, excpCodec({ lossless: true }));
    assert.deepEqual(run.stepLosses, baseline.stepLosses);
    assert.deepEqual(run.evals, baseline.evals);
    for (const row of run.checkpoints) assert.equal(row.weightError, 0);
  });
});
