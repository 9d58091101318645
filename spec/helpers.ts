/**
 * Shared test helpers: seeded random checkpoints, chunking, stream collection.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { Readable, Writable, type Duplex } from 'node:stream';
import { ExcpError } from '../lib/core/errors.js';
import { pipeline } from 'node:stream/promises';
import { Prng } from './support/prng.js';
import { type DType, fromFloat32 } from '../lib/core/dtype.js';
import { serializeSafetensors, type TensorData } from '../lib/formats/safetensors.js';
import { createWriteStream } from 'node:fs';
import { type CompressOptions, compressTo } from '../lib/api/compress.js';

/** A random tensor of float dtype; `special` sprinkles NaN, ±Inf, -0 and subnormals. */
export function randomFloats(rng: Prng, n: number, scale: number, special = false): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = rng.normal() * scale;
  if (special && n > 0) {
    const specials = [NaN, Infinity, -Infinity, -0, 1e-40, -1e-42];
    for (let k = 0; k < Math.max(1, n >> 7); k++) out[rng.int(n)] = specials[rng.int(specials.length)]!;
  }
  return out;
}

/** Shapes including empty, 0-rank and odd sizes. */
export function randomShape(rng: Prng, maxElements: number): number[] {
  const kind = rng.int(8);
  if (kind === 0) return [];
  if (kind === 1) return [0, 1 + rng.int(4)];
  if (kind === 2) return [1 + rng.int(maxElements)];
  const rows = 1 + rng.int(Math.max(1, Math.floor(Math.sqrt(maxElements))));
  return [rows, 1 + rng.int(Math.max(1, Math.floor(maxElements / rows)))];
}

/** Options of {@link randomCheckpointPair}. */
export interface RandomPairOptions {
  params?: number;
  maxElements?: number;
  weightDtype?: DType;
  momentDtype?: DType;
  special?: boolean;
  /** Add tensors without moments (buffers) and an integer tensor. */
  extras?: boolean;
  /** Fraction of params missing from the base. */
  missingBase?: number;
}

/**
 * A base and a current checkpoint in the input convention, with moments and
 * residuals of realistic relative size, in safetensors-style sorted order.
 */
export function randomCheckpointPair(seed: number, o: RandomPairOptions = {}): { previous: Uint8Array; current: Uint8Array } {
  const rng = new Prng(seed);
  const wd = o.weightDtype ?? 'F32';
  const md = o.momentDtype ?? 'F32';
  const prev: TensorData[] = [];
  const cur: TensorData[] = [];
  const count = o.params ?? 1 + rng.int(5);
  for (let p = 0; p < count; p++) {
    const name = `layers.${p}.weight`;
    const shape = randomShape(rng, o.maxElements ?? 3000);
    const n = shape.reduce((a, b) => a * b, 1);
    const base = randomFloats(rng, n, 0.02, o.special);
    const m = randomFloats(rng, n, 1e-3, o.special);
    const v = new Float32Array(n);
    for (let i = 0; i < n; i++) v[i] = m[i]! * m[i]! + 1e-7 * Math.abs(rng.normal());
    const w = new Float32Array(n);
    for (let i = 0; i < n; i++) w[i] = base[i]! - 1e-3 * (m[i]! / (Math.sqrt(v[i]!) + 1e-8)) + 1e-5 * rng.normal();
    if (o.special && n > 4) {
      w[rng.int(n)] = NaN;
      base[rng.int(n)] = Infinity;
    }
    if (!(o.missingBase && rng.next() < o.missingBase)) prev.push({ name, dtype: wd, shape, data: fromFloat32(base, wd) });
    cur.push({ name, dtype: wd, shape, data: fromFloat32(w, wd) });
    cur.push({ name: `${name}.exp_avg`, dtype: md, shape, data: fromFloat32(m, md) });
    cur.push({ name: `${name}.exp_avg_sq`, dtype: md, shape, data: fromFloat32(v, md) });
  }
  if (o.extras) {
    const n = 1 + rng.int(300);
    const buf = randomFloats(rng, n, 1, o.special);
    prev.push({ name: 'buffers.running_mean', dtype: 'F32', shape: [n], data: fromFloat32(buf, 'F32') });
    buf[0] = buf[0]! + 1;
    cur.push({ name: 'buffers.running_mean', dtype: 'F32', shape: [n], data: fromFloat32(buf, 'F32') });
    const ids = new Uint8Array(8 * 17);
    for (let i = 0; i < ids.length; i++) ids[i] = rng.int(256);
    cur.push({ name: 'buffers.position_ids', dtype: 'I64', shape: [17], data: ids });
  }
  const sorted = (list: TensorData[]) => list.sort((a, b) => (a.dtype === b.dtype ? (a.name < b.name ? -1 : 1) : a.dtype < b.dtype ? -1 : 1));
  return {
    previous: serializeSafetensors(sorted(prev), { step: '100' }),
    current: serializeSafetensors(sorted(cur), { step: '200', note: 'random' }),
  };
}

/** Split bytes by a pattern: 'whole', a fixed size, or seeded random sizes. */
export function chunkify(bytes: Uint8Array, pattern: 'whole' | number | { seed: number }): Uint8Array[] {
  if (pattern === 'whole') return [bytes];
  const out: Uint8Array[] = [];
  const rng = typeof pattern === 'object' ? new Prng(pattern.seed) : null;
  for (let i = 0; i < bytes.length;) {
    const size = rng ? 1 + rng.int(4096) : (pattern as number);
    out.push(bytes.subarray(i, i + size));
    i += size;
  }
  return out;
}

/** Run chunks through a Duplex and collect the output. */
export async function runThrough(chunks: Uint8Array[], stream: Duplex): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  await pipeline(Readable.from(chunks), stream, new Writable({
    write(c: Uint8Array, _e, cb) {
      parts.push(c);
      cb();
    },
  }));
  return Buffer.concat(parts);
}

/** Assert helper: bytes equal, with a short message. */
export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.length), Buffer.from(b.buffer, b.byteOffset, b.length)) === 0;
}

/** A seeded uniform [0, 1) source for spec generators and fuzz loops. */
export function uniform(seed: number): () => number {
  const rng = new Prng(seed);
  return () => rng.next();
}

/** The ExcpError `fn` throws; fails the test if it throws nothing or something else. */
export function errorOf(fn: () => unknown): ExcpError {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ExcpError, `expected ExcpError, got ${String(err)}`);
    return err;
  }
  assert.fail('expected an error');
}

/** The code of the ExcpError `fn` throws, or 'none' when it succeeds. */
export function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ExcpError, `expected ExcpError, got ${String(err)}`);
    return err.code;
  }
  return 'none';
}

/** Varint bytes (unsigned LEB128), for hand-built container bytes. */
export function varint(v: number): number[] {
  const out: number[] = [];
  while (v >= 128) {
    out.push((v % 128) | 0x80);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return out;
}

/** A `str` of the container format: varint byte length, then UTF-8. */
export function str(s: string): number[] {
  const b = [...new TextEncoder().encode(s)];
  return [...varint(b.length), ...b];
}

/**
 * Run node with arguments asynchronously (a test may change files while it
 * runs), collecting its output.
 * @param args node's arguments (a script and its arguments)
 * @param cwd working folder
 */
export function runNode(args: string[], cwd: string): Promise<{ status: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { cwd });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    child.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    child.on('error', reject);
    child.on('close', (status) => resolve({ status, stdout, stderr }));
  });
}

/** Compress a checkpoint (a file or a folder) into a new file at `path`, in the calling thread unless options say otherwise. */
export async function compressToPath(input: string, path: string, options: CompressOptions = {}): Promise<string> {
  const out = createWriteStream(path);
  await compressTo(input, out, { threads: 0, ...options });
  out.end();
  await new Promise<void>((resolve) => out.on('finish', () => resolve()));
  return path;
}
