/**
 * What compressing from a pipe costs in temporary space: a synthetic
 * GPT-NeoX-shaped checkpoint pair is written to a folder, the current one
 * is read as a stream (as from stdin), and the bytes that waited on disk
 * for their partners are printed with the time and peak RSS.
 *
 *   npx tsx examples/pipe-cost.ts [--params 10m|160m|...] [--dtype F32|BF16] [--layout name|dtype] [--memory SIZE] [--dir DIR]
 *
 * --memory is the budget excp compress would run under (default 256M): its
 * sixteenth, up to 64 MiB, waits in memory per store (streamMemoryBytes).
 *
 * `--layout dtype` rewrites the checkpoint in the order safetensors'
 * save_file uses (by dtype, F32 first, then by name), where bf16 weights
 * come after all their fp32 moments. README, "Pipes and temporary space".
 */
import { closeSync, createReadStream, mkdirSync, openSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { compressReadable, streamMemoryBytes } from '../lib/api/compress.js';
import { resolveResources } from '../lib/pool/budget.js';
import type { DType } from '../lib/core/dtype.js';
import { resolveOptions } from '../lib/core/options.js';
import { SafetensorsFile } from '../lib/formats/safetensors-file.js';
import { SafetensorsStream } from '../lib/formats/safetensors-stream.js';
import { buildSafetensorsHeader } from '../lib/formats/safetensors.js';
import { PRESETS, neoxParams, writeSyntheticPair } from './synthetic.js';

const { values } = parseArgs({ options: {
  params: { type: 'string', default: '10m' },
  dtype: { type: 'string', default: 'F32' },
  layout: { type: 'string', default: 'name' },
  memory: { type: 'string', default: '256M' },
  dir: { type: 'string', default: join(tmpdir(), 'excp-pipe-cost') },
} });
const preset = PRESETS[values.params!];
if (!preset) throw new Error(`--params: one of ${Object.keys(PRESETS).join(', ')}`);
const dtype = values.dtype as DType;
const dir = values.dir!;
mkdirSync(dir, { recursive: true });
const prev = join(dir, `${values.params}-${dtype}-prev.safetensors`);
const cur = join(dir, `${values.params}-${dtype}-cur.safetensors`);
try {
  statSync(cur);
} catch {
  await writeSyntheticPair(neoxParams(preset.d, preset.layers, preset.vocab), prev, cur, { dtype });
}

let input = cur;
if (values.layout === 'dtype') {
  const file = await SafetensorsFile.open(cur);
  const order = [...file.tensors].sort((a, b) => (a.dtype === b.dtype ? (a.name < b.name ? -1 : 1) : a.dtype === 'F32' ? -1 : 1));
  input = join(dir, `${values.params}-${dtype}-cur-by-dtype.safetensors`);
  const fd = openSync(input, 'w');
  writeSync(fd, buildSafetensorsHeader(order).raw);
  for (const t of order) {
    for (let s = 0; s < t.end - t.begin; s += 1 << 24) writeSync(fd, await file.tensorBytes(t, s, Math.min(t.end - t.begin, s + (1 << 24))));
  }
  closeSync(fd);
  await file.close();
}

const started = Date.now();
const { memory } = resolveResources({ memory: values.memory });
const spill = { dir, memoryBytes: streamMemoryBytes(memory) };
const stream = await SafetensorsStream.open(createReadStream(input, { highWaterMark: 1 << 16 }), 'stdin', spill);
const base = await SafetensorsFile.open(prev);
const { stream: out, done } = compressReadable(stream, base, resolveOptions({}), 'auto', undefined, 'auto', { spill, memory });
let bytes = 0;
for await (const c of out) bytes += (c as Uint8Array).length;
await done;
await stream.end();
console.log(JSON.stringify({
  params: values.params, dtype, layout: values.layout, memory: values.memory, inputBytes: statSync(input).size, outputBytes: bytes,
  waitedOnDisk: stream.spilledBytes, seconds: (Date.now() - started) / 1000, peakRssMB: Math.round(process.resourceUsage().maxRSS / 1024),
}));
await stream.close();
await base.close();
