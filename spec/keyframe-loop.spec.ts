/**
 * Lossy keyframes in the loop (issue: cheap keyframes must cost no
 * measurable fidelity): the example trainer (500k parameters, 100 steps, a
 * checkpoint every 50: a keyframe, then a residual against it) resumed from
 * restored checkpoints with the default lossy keyframe (fp32 weights rounded
 * to bf16's precision) and with --keyframe exact. The lossy keyframe must be
 * much smaller and leave the validation loss where the exact one does.
 * Measured: keyframe 8.44x lossy against 3.51x exact, final validation gap
 * +0.07% against +0.09% (residual 64.8x both). Deterministic; about 25 s.
 */
import { before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { loadCorpus } from '../examples/train/corpus.js';
import { type ExperimentOptions, type Summary, excpCodec, runBaseline, runCompressed, summarise } from '../examples/train/experiment.js';

const EXPERIMENT: ExperimentOptions = { trainer: { corpus: loadCorpus(), params: '500k', evalSamples: 256 }, steps: 100, every: 50 };

describe('lossy keyframes in the loop', () => {
  let lossy: Summary;
  let exact: Summary;
  before(async () => {
    const baseline = runBaseline(EXPERIMENT);
    lossy = summarise(baseline, await runCompressed(EXPERIMENT, excpCodec({})));
    exact = summarise(baseline, await runCompressed(EXPERIMENT, excpCodec({ keyframe: 'exact' })));
  });

  it('a lossy keyframe is at least 1.5x smaller than an exact one', () => {
    assert.ok(lossy.keyframeRatio >= 1.5 * exact.keyframeRatio, `keyframe ${lossy.keyframeRatio.toFixed(2)}x lossy, ${exact.keyframeRatio.toFixed(2)}x exact`);
  });

  it('and the run resumed from it ends where the exact keyframe\'s does (within 0.3 points of validation loss)', () => {
    assert.ok(Math.abs(lossy.finalGap - exact.finalGap) < 0.003,
      `gap ${(100 * lossy.finalGap).toFixed(2)}% lossy, ${(100 * exact.finalGap).toFixed(2)}% exact`);
  });
});
