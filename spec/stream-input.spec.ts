/**
 * A checkpoint that comes as a stream (stdin, a FIFO) is read once,
 * forward: the container must be byte-identical to compressing the same
 * file by path, whatever the order of the tensors in the file, and only
 * what comes before its partners may wait (lib/formats/safetensors-stream.ts).
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { type CompressStats, compress, compressReadable, compressTo } from '../lib/api/compress.js';
import { resolveOptions } from '../lib/core/options.js';
import { SafetensorsMemory } from '../lib/formats/safetensors-file.js';
import { SafetensorsStream } from '../lib/formats/safetensors-stream.js';
import { parseSafetensors, serializeSafetensors, type TensorData } from '../lib/formats/safetensors.js';
import { ExcpError } from '../lib/core/errors.js';
import { chunkify, randomCheckpointPair, sameBytes } from './helpers.js';
import { Prng } from './support/prng.js';

/** The same tensors in another order in the file. */
function reorder(file: Uint8Array, order: (list: TensorData[]) => TensorData[]): Uint8Array {
  const { tensors, metadata } = parseSafetensors(file);
  return serializeSafetensors(order([...tensors]), metadata);
}

const LAYOUTS: Record<string, (list: TensorData[]) => TensorData[]> = {
  'sorted by name (weight, exp_avg, exp_avg_sq together)': (l) => l,
  'weights first, then every exp_avg, then every exp_avg_sq': (l) => [
    ...l.filter((t) => !t.name.includes('.exp_avg')), ...l.filter((t) => t.name.endsWith('.exp_avg')), ...l.filter((t) => t.name.endsWith('.exp_avg_sq'))],
  'moments before their weights, reversed': (l) => [...l].reverse(),
  'shuffled': (l) => {
    const rng = new Prng(7);
    const out = [...l];
    for (let i = out.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [out[i], out[j]] = [out[j]!, out[i]!];
    }
    return out;
  },
};

async function collect(stream: Readable): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const c of stream) parts.push(c as Uint8Array);
  return Buffer.concat(parts);
}

/** The container of a checkpoint read by random access. */
async function byPath(current: Uint8Array, base: Uint8Array | null, chunkElements: number): Promise<Uint8Array> {
  const { stream, done } = compressReadable(new SafetensorsMemory(current), base ? new SafetensorsMemory(base) : null, resolveOptions({ chunkElements }), 0);
  const out = await collect(stream);
  await done;
  return out;
}

/** The container of a checkpoint read from a stream in pieces, with a small memory window (so waiting spills to disk). */
async function byStream(current: Uint8Array, base: Uint8Array | null, chunkElements: number, pieces: number | { seed: number }, memoryBytes: number, dir: string): Promise<{ bytes: Uint8Array; spilled: number }> {
  const stream = await SafetensorsStream.open(Readable.from(chunkify(current, pieces)), 'stdin', { memoryBytes, dir });
  try {
    const { stream: out, done } = compressReadable(stream, base ? new SafetensorsMemory(base) : null, resolveOptions({ chunkElements }), 0, undefined, 'auto', { spill: { memoryBytes, dir } });
    const bytes = await collect(out);
    await done;
    return { bytes, spilled: stream.spilledBytes };
  } finally {
    await stream.close();
  }
}

describe('compress from a stream', () => {
  const dir = mkdtempSync(join(tmpdir(), 'excp-stream-'));
  const pair = randomCheckpointPair(41, { params: 7, maxElements: 6000, extras: true, special: true });

  for (const [label, order] of Object.entries(LAYOUTS)) {
    it(`is byte-identical to compressing by path: ${label}`, async () => {
      const current = reorder(pair.current, order);
      for (const [base, chunk, pieces, memory] of [
        [pair.previous, 1024, 4096, 1 << 26],
        [pair.previous, 1500, { seed: 3 }, 4096],
        [null, 2048, 777, 0],
      ] as const) {
        const expected = await byPath(current, base, chunk);
        const got = await byStream(current, base, chunk, pieces, memory, dir);
        assert.ok(sameBytes(got.bytes, expected), `${label}, chunk ${chunk}, base ${base !== null}`);
      }
    });
  }

  it('spills nothing when each parameter meets its moments within the memory window, and only the waiting tensors otherwise', async () => {
    const sorted = pair.current;
    const inWindow = await byStream(sorted, pair.previous, 1024, 65536, 1 << 26, dir);
    assert.equal(inWindow.spilled, 0);
    // Weights first: every weight and exp_avg waits for its exp_avg_sq, nothing else does.
    const split = reorder(sorted, LAYOUTS['weights first, then every exp_avg, then every exp_avg_sq']!);
    const tensors = parseSafetensors(split).tensors;
    const waiting = tensors.filter((t) => tensors.some((o) => o.name === `${t.name}.exp_avg_sq`) || (t.name.endsWith('.exp_avg') && tensors.some((o) => o.name === `${t.name}_sq`)));
    const waitingBytes = waiting.reduce((s, t) => s + t.data.length, 0);
    const spilled = await byStream(split, pair.previous, 1024, 65536, 0, dir);
    assert.ok(spilled.spilled > 0 && spilled.spilled <= waitingBytes + 4096, `spilled ${spilled.spilled}, waiting tensors ${waitingBytes}`);
  });

  it('the Duplex reads the stream once (no copy of the input) and equals the path result', async () => {
    const expected = await byPath(pair.current, pair.previous, 1 << 20);
    const parts: Uint8Array[] = [];
    await pipeline(Readable.from(chunkify(pair.current, 1000)), compress({ base: pair.previous, threads: 0, tmp: dir }), new Writable({
      write(c: Uint8Array, _e, cb) {
        parts.push(c);
        cb();
      },
    }));
    assert.ok(sameBytes(Buffer.concat(parts), expected));
  });

  it('a stream that ends early or holds no checkpoint says so, naming the stream', async () => {
    const cut = pair.current.subarray(0, pair.current.length - 100);
    await assert.rejects(byStream(cut, pair.previous, 1024, 4096, 1 << 20, dir), (e: unknown) => e instanceof ExcpError && e.code === 'ERR_TRUNCATED' && /^stdin: the stream ended at byte \d+, inside tensor/.test(e.message));
    await assert.rejects(SafetensorsStream.open(Readable.from([]), 'stdin'), (e: unknown) => e instanceof ExcpError && e.message === 'stdin: no input (0 bytes)');
    await assert.rejects(SafetensorsStream.open(Readable.from([pair.current.subarray(0, 20)]), 'stdin'), (e: unknown) => e instanceof ExcpError && e.code === 'ERR_TRUNCATED');
  });

  it('a full spill folder names the folder and --tmp', async () => {
    // /dev/full as the folder: mkdtemp there fails, which is reported as for a full disk.
    const stream = await SafetensorsStream.open(Readable.from([reorder(pair.current, LAYOUTS['weights first, then every exp_avg, then every exp_avg_sq']!)]), 'stdin', { memoryBytes: 0, dir: join(dir, 'missing', 'folder'), stage: 'compress' });
    const { stream: out, done } = compressReadable(stream, new SafetensorsMemory(pair.previous), resolveOptions({ chunkElements: 1024 }), 0);
    await assert.rejects(collect(out).then(() => done), (e: unknown) => e instanceof ExcpError && /compress: cannot write temporary data in .*missing\/folder \(ENOENT\); give --tmp DIR a writable folder/.test(e.message));
    await stream.close();
    writeFileSync(join(dir, 'x'), '');
    rmSync(dir, { recursive: true, force: true });
  });
});

describe('what waits in memory follows --memory', () => {
  it('a sixteenth of the budget, at most 64 MiB: at 64M what waits for its partners goes to disk, at 1G it stays in memory', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'excp-stream-memory-'));
    try {
      const rng = new Prng(3);
      const n = 1 << 21;
      const floats = (scale: number, f = (x: number) => x) => {
        const a = new Float32Array(n);
        for (let i = 0; i < n; i++) a[i] = f(scale * rng.normal());
        return new Uint8Array(a.buffer);
      };
      const shape = [2048, 1024];
      const file = serializeSafetensors([
        { name: 'w', dtype: 'F32', shape, data: floats(0.02) },
        { name: 'w.exp_avg', dtype: 'F32', shape, data: floats(1e-3) },
        { name: 'w.exp_avg_sq', dtype: 'F32', shape, data: floats(1e-3, (x) => x * x) },
      ]);
      const spilled = async (memory: string): Promise<number> => {
        let stats: CompressStats | null = null;
        const sink = new Writable({ write: (_c, _e, cb) => cb() });
        await compressTo(Readable.from(chunkify(file, 1 << 16)), sink, { threads: 0, memory, tmp: dir, chunkElements: 1 << 18, onStats: (s) => (stats = s) });
        return stats!.spilledBytes;
      };
      // A chunk of w is read, then one of exp_avg, then one of exp_avg_sq:
      // the rest of w and of exp_avg (7 MiB each) wait as the stream passes them.
      assert.ok(await spilled('64M') >= 8 * 1024 * 1024, 'at 64M (4 MiB in memory) most of it waits on disk');
      assert.equal(await spilled('1G'), 0, 'at 1G (64 MiB in memory) nothing waits on disk');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
