/**
 * npm run demo: make a realistic pair of checkpoints (GPT-NeoX-shaped, Adam
 * moments), compress the second against the first, restore it, and print
 * sizes, ratio and the error per stream.
 *
 *   npx tsx examples/demo.ts [--params tiny|1m|10m] [--alpha A] [--beta B] [--bits N]
 */
import { mkdtempSync, rmSync, statSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { PRESETS, neoxParams, writeSyntheticPair } from './synthetic.js';
import { parseSafetensors } from '../lib/formats/safetensors.js';
import { toFloat32 } from '../lib/core/dtype.js';
import { compressBuffer } from '../lib/api/compress.js';
import { restoreBuffer } from '../lib/api/restore.js';

const { values } = parseArgs({ options: { params: { type: 'string', default: '1m' }, alpha: { type: 'string' }, beta: { type: 'string' }, bits: { type: 'string' } } });
const preset = PRESETS[values.params!];
if (!preset) throw new Error(`unknown --params ${values.params}; one of ${Object.keys(PRESETS).join(', ')}`);
const dir = mkdtempSync(join(tmpdir(), 'excp-demo-'));
try {
  const params = neoxParams(preset.d, preset.layers, preset.vocab);
  const prevPath = join(dir, 'step-1000.safetensors');
  const curPath = join(dir, 'step-2000.safetensors');
  await writeSyntheticPair(params, prevPath, curPath, { seed: 42 });
  const previous = readFileSync(prevPath);
  const current = readFileSync(curPath);
  const options = {
    ...(values.alpha ? { alpha: Number(values.alpha) } : {}),
    ...(values.beta ? { beta: Number(values.beta) } : {}),
    ...(values.bits ? { bits: Number(values.bits) } : {}),
  };
  let t = performance.now();
  const container = await compressBuffer(current, previous, { ...options, threads: 2 });
  const compressMs = performance.now() - t;
  t = performance.now();
  const restored = await restoreBuffer(container, previous, { threads: 2 });
  const restoreMs = performance.now() - t;
  const keyframe = await compressBuffer(previous, undefined, { ...options, threads: 2 });

  const orig = new Map(parseSafetensors(current).tensors.map((x) => [x.name, x]));
  const errors = { weight: [0, 0], exp_avg: [0, 0], exp_avg_sq: [0, 0] } as Record<string, [number, number]>;
  for (const r of parseSafetensors(restored).tensors) {
    const o = orig.get(r.name)!;
    const kind = r.name.endsWith('.exp_avg_sq') ? 'exp_avg_sq' : r.name.endsWith('.exp_avg') ? 'exp_avg' : 'weight';
    const a = toFloat32(o.data, o.dtype);
    const b = toFloat32(r.data, r.dtype);
    const e = errors[kind]!;
    for (let i = 0; i < a.length; i++) {
      e[0] = Math.max(e[0], Math.abs(a[i]! - b[i]!));
      e[1] = Math.max(e[1], Math.abs(a[i]!));
    }
  }
  const mb = (n: number) => `${(n / 1e6).toFixed(2)} MB`;
  const paramCount = params.reduce((s, p) => s + p.shape.reduce((a, b) => a * b, 1), 0);
  console.log(`excp demo: synthetic GPT-NeoX-shaped checkpoint, ${(paramCount / 1e6).toFixed(2)}M parameters, fp32 weights + Adam moments`);
  console.log('');
  console.log('| what | bytes | ratio |');
  console.log('| --- | --- | --- |');
  console.log(`| checkpoint (step 2000) | ${mb(current.length)} | 1x |`);
  console.log(`| excp residual vs step 1000 | ${mb(container.length)} | ${(current.length / container.length).toFixed(1)}x |`);
  console.log(`| excp keyframe (step 1000, no base) | ${mb(keyframe.length)} | ${(previous.length / keyframe.length).toFixed(1)}x |`);
  console.log('');
  console.log('| stream | max abs error | max abs value |');
  console.log('| --- | --- | --- |');
  for (const [k, [err, max]] of Object.entries(errors)) console.log(`| ${k} | ${err.toExponential(3)} | ${max.toExponential(3)} |`);
  console.log('');
  console.log(`compress ${compressMs.toFixed(0)} ms, restore ${restoreMs.toFixed(0)} ms; restored ${restored.length === current.length ? 'all' : 'WRONG SIZE'} ${restored.length} bytes, fingerprint verified`);
  console.log(`files were in ${dir} (${mb(statSync(curPath).size)} each), now removed`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
