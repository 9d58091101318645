/**
 * The compress-in-the-loop experiment in small (examples/fidelity.ts at
 * 750k parameters, 150 steps, a checkpoint every 50): training that resumes
 * from restored checkpoints stays close to the uncompressed run, and the
 * residual checkpoints shrink. Runs in about 30 s on one core.
 *
 * Measured with the library defaults (method 2: dithered weight residual,
 * --update-error 0.8, keyframe weights rounded to bf16's precision):
 * residual ratio 66.1x aggregate, final validation-loss gap +0.38%, so the
 * product target (>= 50x within 1%) is asserted here. The run is
 * deterministic (seeded data and weights; the dither is drawn from the
 * base's digest and the chunk's position), so the margins only move when
 * the codec or trainer changes. At --update-error 0.577 (the default
 * before) it gave 53.9x at +0.15%; the full run (examples/fidelity.ts, 1M
 * parameters, 300 steps) gave 54.2x at -0.05..+1.13% over three seeds
 * there. Smaller, more frequent runs fell short on the ratio at 0.577:
 * 200k parameters, 120 steps with a checkpoint every 20 gave 48.8x at
 * +0.55% (the per-chunk tables and coder models weigh more on small
 * tensors).
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { loadCorpus } from '../examples/train/corpus.js';
import { type CompressedRun, type ExperimentOptions, type RunCurve, type Summary, excpCodec, identityCodec, runBaseline, runCompressed, summarise } from '../examples/train/experiment.js';

const corpus = loadCorpus();
const EXPERIMENT: ExperimentOptions = {
  trainer: { corpus, params: '750k', evalSamples: 512 },
  steps: 150,
  every: 50,
};
/** Lowest acceptable Σ original / Σ compressed over residual checkpoints (measured 53.9x). */
const MIN_RESIDUAL_RATIO = 45;
/** Largest acceptable |final validation gap| (measured +0.15%). */
const MAX_ABS_GAP = 0.02;
/** The product's target at the default settings. */
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
    assert.deepEqual(compressed.checkpoints.map((r) => r.step), [50, 100, 150]);
    assert.deepEqual(compressed.checkpoints.map((r) => r.kind), ['keyframe', 'residual', 'residual']);
    assert.deepEqual(compressed.evals.map((e) => e.step), baseline.evals.map((e) => e.step));
  });

  it('the two runs agree until the first checkpoint, bit for bit', () => {
    // Nothing has been compressed before step 50, so the batch losses must be identical.
    assert.deepEqual(compressed.stepLosses.subarray(0, 50), baseline.stepLosses.subarray(0, 50));
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

  it(`reaches the product target (>= ${TARGET.ratio}x, gap <= ${100 * TARGET.gap}%)`, () => {
    assert.ok(summary.residualRatio >= TARGET.ratio, `residual ratio ${summary.residualRatio.toFixed(1)}x`);
    assert.ok(Math.abs(summary.finalGap) <= TARGET.gap, `gap ${(100 * summary.finalGap).toFixed(2)}%`);
  });
});

describe('fidelity: the harness itself', () => {
  const short: ExperimentOptions = { trainer: { corpus, params: '200k', evalSamples: 512 }, steps: 40, every: 20 };

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
