/**
 * Compress a PyTorch / Hugging Face checkpoint folder against the previous
 * one, restore it, and resume training from the restored folder in PyTorch
 * next to a resume from the original (examples/torch-resume.py).
 *
 *   npx tsx examples/torch-resume.ts [--run fp32|bf16|bin] [--steps N] [--lossless]
 *
 * Uses the committed fixture folders (spec/fixtures/torch/RUN/checkpoint-4 and
 * -8). Needs /usr/bin/python3 with torch (Debian: apt-get install -y
 * python3-torch); without it the PyTorch part is skipped with a message.
 */
import { spawnSync } from 'node:child_process';
import { createWriteStream, mkdtempSync, rmSync, statSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { compressTo } from '../lib/api/compress.js';
import { restoreToFolder } from '../lib/api/restore.js';

const { values } = parseArgs({ options: { run: { type: 'string', default: 'fp32' }, steps: { type: 'string', default: '6' }, lossless: { type: 'boolean', default: false } } });
const fixtures = fileURLToPath(new URL('../spec/fixtures/torch/', import.meta.url));
const previous = join(fixtures, values.run!, 'checkpoint-4');
const current = join(fixtures, values.run!, 'checkpoint-8');
const dir = mkdtempSync(join(tmpdir(), 'excp-torch-resume-'));
const folderBytes = (d: string): number => readdirSync(d).reduce((s, f) => s + statSync(join(d, f)).size, 0);
try {
  const container = join(dir, 'checkpoint-8.excp');
  const out = createWriteStream(container);
  await compressTo(current, out, { base: previous, lossless: values.lossless });
  out.end();
  await new Promise<void>((resolve) => out.on('finish', () => resolve()));
  const restored = join(dir, 'checkpoint-8');
  await restoreToFolder(container, restored, { base: previous });
  console.log(`${values.run}: ${current} (${folderBytes(current)} bytes) -> ${statSync(container).size} bytes container -> ${restored}`);
  const python = '/usr/bin/python3';
  const probe = spawnSync(python, ['-c', 'import torch'], { encoding: 'utf8' });
  if (probe.error || probe.status !== 0) {
    console.log(`skipped the PyTorch resume: ${python} with torch is not available (apt-get install -y python3-torch)`);
  } else {
    const r = spawnSync(python, [fileURLToPath(new URL('./torch-resume.py', import.meta.url)), current, restored, '--steps', values.steps!], { stdio: 'inherit' });
    if (r.status !== 0) process.exitCode = 1;
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
