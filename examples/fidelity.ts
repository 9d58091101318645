/**
 * Is ExCP nearly lossless on a model we train ourselves? Trains the example
 * character model twice: (a) plainly, (b) compressing every K-th checkpoint
 * against the previous restored one, restoring it and training on from the
 * restored weights and moments. Prints a table per checkpoint and the final
 * validation-loss gap, and writes an SVG chart.
 *
 *   npx tsx examples/fidelity.ts                       # defaults: 1m params, 300 steps, every 50
 *   npx tsx examples/fidelity.ts --update-error 0.4    # method 2's fidelity knob (default 0.577)
 *   npx tsx examples/fidelity.ts --keyframe exact      # exact fp32 keyframe weights (default: rounded to bf16)
 *   npx tsx examples/fidelity.ts --keep 0.3 --bits 2   # method 1, pruning (the defaults before container format 3)
 *   npx tsx examples/fidelity.ts --rule saliency       # weight rule: dither (default), magnitude, saliency, paper
 *   npx tsx examples/fidelity.ts --alpha 1e-3          # the paper's alpha rule (an explicit alpha selects it)
 *   npx tsx examples/fidelity.ts --paper               # the paper's settings (PAPER_OPTIONS): alpha rule, 4 bits, zero v fill, linear v, exact keyframe
 *   npx tsx examples/fidelity.ts --sweep               # ratio against final loss gap over settings
 *   npx tsx examples/fidelity.ts --codec none          # harness check: identity codec, gap must be 0
 *
 * The README's chart: --svg examples/train/fidelity.svg.
 * Other flags: --svg PATH (default runs/fidelity.svg), --batch B, --lr LR,
 * --seed S, --eval-samples N.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { renderFidelityChart } from './train/chart.js';
import { type CheckpointCodec, type CheckpointRow, type CodecSettings, type EvalPoint, type ExperimentOptions, type RunCurve, excpCodec, identityCodec, runBaseline, runCompressed, summarise } from './train/experiment.js';
import type { TrainerOptions } from './train/trainer.js';
import { PAPER_OPTIONS } from '../lib/core/options.js';

function pct(x: number): string {
  return Number.isNaN(x) ? '   -  ' : `${(100 * x).toFixed(2).padStart(6)}%`;
}

function printRow(row: CheckpointRow, b: EvalPoint | undefined, c: EvalPoint): void {
  const gap = b ? (c.validation - b.validation) / b.validation : Number.NaN;
  console.log([
    String(row.step).padStart(5), row.kind.padEnd(8), String(row.originalBytes).padStart(10), String(row.compressedBytes).padStart(10),
    `${row.ratio.toFixed(1)}x`.padStart(8), pct(row.weightsKept), pct(row.momentsKept), row.weightError.toExponential(1).padStart(8),
    (b ? b.train.toFixed(4) : '-').padStart(7), (b ? b.validation.toFixed(4) : '-').padStart(7),
    c.train.toFixed(4).padStart(7), c.validation.toFixed(4).padStart(7), pct(gap).padStart(8), row.codecSeconds.toFixed(2).padStart(6),
  ].join(' '));
}

const HEADER = [
  ' step', 'kind    ', '  original', 'compressed', '   ratio', 'W kept ', 'm kept ', ' W relerr',
  'b.train', '  b.val', 'c.train', '  c.val', ' val gap', 'codec s',
].join(' ');

/**
 * Settings tried by --sweep: the defaults (method 2), its fidelity knob
 * --update-error on both sides of the default 0.577, exact keyframes, then
 * method 1 as it was the default before container format 3 (keep 0.3, 2
 * bits, exact keyframes) and the paper's settings.
 */
const PAPER: CodecSettings = { ...PAPER_OPTIONS } as CodecSettings;
const SWEEP: [string, CodecSettings][] = [
  ['library defaults', {}],
  ['updateError=0.3', { updateError: 0.3 }],
  ['updateError=0.4', { updateError: 0.4 }],
  ['updateError=0.72', { updateError: 0.72 }],
  ['updateError=1', { updateError: 1 }],
  ['keyframe=exact', { keyframe: 'exact' }],
  ['method 1, old defaults: keep=0.3 bits=2 keyframe=exact', { keep: 0.3, bits: 2, keyframe: 'exact' }],
  ['paper (PAPER_OPTIONS)', PAPER],
];

function describeSettings(s: CodecSettings): string {
  const parts = Object.entries(s).map(([k, v]) => `${k}=${v}`);
  return parts.length ? parts.join(' ') : 'library defaults';
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      alpha: { type: 'string' }, beta: { type: 'string' }, bits: { type: 'string' },
      rule: { type: 'string' }, keep: { type: 'string' }, paper: { type: 'boolean', default: false },
      'update-error': { type: 'string' }, keyframe: { type: 'string' },
      every: { type: 'string', default: '50' }, steps: { type: 'string', default: '300' }, params: { type: 'string', default: '1m' },
      batch: { type: 'string' }, lr: { type: 'string' }, seed: { type: 'string' }, 'eval-samples': { type: 'string' },
      sweep: { type: 'boolean', default: false }, svg: { type: 'string', default: 'runs/fidelity.svg' },
      codec: { type: 'string', default: 'excp' },
    },
  });
  const num = (name: string, value: string | undefined): number | undefined => {
    if (value === undefined) return undefined;
    const n = Number(value);
    if (!Number.isFinite(n)) throw new Error(`fidelity: --${name} '${value}' is not a number`);
    return n;
  };
  const trainer: TrainerOptions = { params: values.params! };
  const batch = num('batch', values.batch);
  if (batch !== undefined) trainer.batchSize = batch;
  const lr = num('lr', values.lr);
  if (lr !== undefined) trainer.learningRate = lr;
  const seed = num('seed', values.seed);
  if (seed !== undefined) trainer.seed = seed;
  const evalSamples = num('eval-samples', values['eval-samples']);
  if (evalSamples !== undefined) trainer.evalSamples = evalSamples;
  // --paper: the paper's method throughout (the library's PAPER_OPTIONS); flags given with it override.
  const settings: CodecSettings = values.paper ? { ...PAPER } : {};
  const alpha = num('alpha', values.alpha);
  if (alpha !== undefined) settings.alpha = alpha;
  const beta = num('beta', values.beta);
  if (beta !== undefined) settings.beta = beta;
  const bits = num('bits', values.bits);
  if (bits !== undefined) settings.bits = bits;
  if (values.rule !== undefined) {
    if (values.rule !== 'dither' && values.rule !== 'paper' && values.rule !== 'magnitude' && values.rule !== 'saliency') throw new Error(`fidelity: --rule '${values.rule}' is not dither, paper, magnitude or saliency`);
    settings.weightRule = values.rule;
  }
  const keep = num('keep', values.keep);
  if (keep !== undefined) settings.keep = keep;
  const updateError = num('update-error', values['update-error']);
  if (updateError !== undefined) settings.updateError = updateError;
  if (values.keyframe !== undefined) {
    if (values.keyframe !== 'lossy' && values.keyframe !== 'exact') throw new Error(`fidelity: --keyframe '${values.keyframe}' is not lossy or exact`);
    settings.keyframe = values.keyframe;
  }
  const experiment: ExperimentOptions = { trainer, steps: num('steps', values.steps)!, every: num('every', values.every)! };
  const codecFor = (s: CodecSettings): CheckpointCodec => (values.codec === 'none' ? identityCodec : excpCodec(s));

  console.log(`baseline: ${values.params} params, ${experiment.steps} steps, checkpoint every ${experiment.every}`);
  const baseline: RunCurve = runBaseline(experiment);
  console.log(`baseline trained in ${baseline.trainSeconds.toFixed(1)} s; final validation ${baseline.evals.at(-1)?.validation.toFixed(4)}`);

  if (values.sweep) {
    console.log('\nsweep: aggregate ratio over residual checkpoints against final validation-loss gap');
    console.log(`${'settings'.padEnd(62)} keyframe  residual  mean ratio  W kept  W relerr  final val     gap`);
    for (const [label, x] of SWEEP) {
      const s = { ...x, ...settings };
      const run = await runCompressed(experiment, codecFor(s));
      const sum = summarise(baseline, run);
      const residual = run.checkpoints.filter((r) => r.kind === 'residual');
      const mean = (f: (r: CheckpointRow) => number) => residual.reduce((t, r) => t + f(r), 0) / residual.length;
      const name = Object.keys(settings).length ? `${label} + ${describeSettings(settings)}` : label;
      console.log(`${name.padEnd(62)} ${sum.keyframeRatio.toFixed(1).padStart(8)}x ${sum.residualRatio.toFixed(1).padStart(8)}x ${sum.meanResidualRatio.toFixed(1).padStart(10)}x ${pct(mean((r) => r.weightsKept))} ${mean((r) => r.weightError).toExponential(2).padStart(9)} ${sum.compressedValidation.toFixed(4).padStart(10)} ${pct(sum.finalGap)}`);
    }
    return;
  }

  console.log(`\ncompressed in the loop (${values.codec === 'none' ? 'identity codec' : describeSettings(settings)}):`);
  console.log(HEADER);
  const compressed = await runCompressed({ ...experiment, onCheckpoint: printRow }, codecFor(settings), baseline);
  const sum = summarise(baseline, compressed);
  console.log(`\nfinal validation loss: baseline ${sum.baselineValidation.toFixed(4)}, compressed ${sum.compressedValidation.toFixed(4)}, gap ${pct(sum.finalGap).trim()} (target within 1%)`);
  console.log(`ratio: keyframe ${sum.keyframeRatio.toFixed(1)}x, residual checkpoints ${sum.residualRatio.toFixed(1)}x aggregate (mean ${sum.meanResidualRatio.toFixed(1)}x; target >= 50x)`);
  const codecSeconds = compressed.checkpoints.reduce((s, r) => s + r.codecSeconds, 0);
  console.log(`time: training ${compressed.trainSeconds.toFixed(1)} s, codec ${codecSeconds.toFixed(1)} s`);

  const title = [
    `ExCP in the loop: ${values.params} parameters, checkpoint every ${experiment.every} steps, ${values.codec === 'none' ? 'identity codec' : describeSettings(settings)}`,
    `final validation loss ${sum.compressedValidation.toFixed(4)} vs ${sum.baselineValidation.toFixed(4)} (gap ${pct(sum.finalGap).trim()}); residual checkpoints ${sum.residualRatio.toFixed(1)}x smaller`,
  ];
  mkdirSync(dirname(values.svg!), { recursive: true });
  writeFileSync(values.svg!, renderFidelityChart(baseline, compressed, title));
  console.log(`chart: ${values.svg}`);
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
