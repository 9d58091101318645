/**
 * Mutation fuzzing of distributed checkpoint folders (DCP, issue 15): the
 * `.metadata` reader (the restricted unpickler with DCP's allow-list, the
 * structure checks), the `.distcp` item reader and the whole folder adapter.
 * Run by examples/fuzz.ts (`--target dcp`) and spec/fuzz.spec.ts.
 *
 * Corpus: a synthetic 2-rank sharded model (spec/support/dcp-writer.ts) and
 * two fixture folders written by torch 2.13 (spec/fixtures/dcp). Mutators:
 * bytes of `.metadata` or of a `.distcp` file (random, or near an item's
 * zip records), truncated files, and structural edits of the synthetic
 * folder written out again: storage offsets and lengths set to extremes or
 * nudged, chunk offsets and sizes changed, a global renamed.
 *
 * Every case must end in an ExcpError or in a folder that opens and reads;
 * on the cases that run the round trip, an opened folder must come back
 * byte for byte from `compress --lossless` and restore.
 */
import { createWriteStream, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ExcpError } from '../lib/core/errors.js';
import { compressTo } from '../lib/api/compress.js';
import { restoreToFolder } from '../lib/api/restore.js';
import { DcpCheckpoint } from '../lib/formats/dcp/checkpoint.js';
import type { Prng } from '../spec/support/prng.js';
import { type SynthDcp, type SynthStorage, distcpFiles, metadataPickle, shardedModel } from '../spec/support/dcp-writer.js';

/** A folder of the corpus: its files, and for a synthetic one its description (for structural edits). */
export interface DcpSample {
  name: string;
  files: Map<string, Uint8Array>;
  synthetic: { dcp: SynthDcp; storage: SynthStorage[] } | null;
}

/** The kinds of mutation. */
export type DcpMutation = 'metadata-bytes' | 'distcp-bytes' | 'truncate' | 'storage-fields' | 'chunk-fields' | 'global';

/** A failure of a DCP case (runFuzz reports it with the seed and case). */
export class DcpFuzzFailure extends Error {}

const EXTREMES = [0, 1, -1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, 2 ** 53, 1e300];

function readFolder(dir: string): Map<string, Uint8Array> {
  return new Map(readdirSync(dir).map((n) => [n, new Uint8Array(readFileSync(join(dir, n)))]));
}

/** The corpus: one synthetic folder and two of torch's. */
export function dcpCorpus(): DcpSample[] {
  const dcp = shardedModel(2, 2, 5, 3, 1);
  const { files, storage } = distcpFiles(dcp);
  files.set('.metadata', metadataPickle(dcp, storage));
  const fixtures = fileURLToPath(new URL('../spec/fixtures/dcp/', import.meta.url));
  return [
    { name: 'synthetic', files, synthetic: { dcp, storage } },
    { name: 'fsdp2/step-4', files: readFolder(join(fixtures, 'fsdp2/step-4')), synthetic: null },
    { name: 'single/step-4', files: readFolder(join(fixtures, 'single/step-4')), synthetic: null },
  ];
}

function pick<T>(rng: Prng, items: readonly T[]): T {
  return items[rng.int(items.length)]!;
}

/**
 * One mutation of a sample.
 * @returns the mutated files and what was done
 */
export function mutateDcp(sample: DcpSample, rng: Prng): { files: Map<string, Uint8Array>; kind: DcpMutation; what: string } {
  const files: Map<string, Uint8Array> = new Map([...sample.files].map(([n, b]) => [n, new Uint8Array(b)]));
  const kinds: DcpMutation[] = sample.synthetic ? ['metadata-bytes', 'distcp-bytes', 'truncate', 'storage-fields', 'chunk-fields', 'global'] : ['metadata-bytes', 'distcp-bytes', 'truncate'];
  const kind = pick(rng, kinds);
  const distcp = [...files.keys()].filter((n) => n.endsWith('.distcp'));
  if (kind === 'metadata-bytes' || kind === 'distcp-bytes') {
    const name = kind === 'metadata-bytes' ? '.metadata' : pick(rng, distcp);
    const b = files.get(name)!;
    const n = 1 + rng.int(4);
    const at: number[] = [];
    for (let k = 0; k < n; k++) {
      // Half of the .distcp edits land near an item's start or end, where its zip records are.
      let i = rng.int(b.length);
      if (kind === 'distcp-bytes' && sample.synthetic && rng.next() < 0.5) {
        const s = pick(rng, sample.synthetic.storage.filter((x) => x.file === name));
        i = Math.min(b.length - 1, Math.max(0, (rng.next() < 0.5 ? s.offset : s.offset + s.length - 120) + rng.int(120)));
      }
      b[i] = rng.next() < 0.5 ? b[i]! ^ (1 << rng.int(8)) : rng.int(256);
      at.push(i);
    }
    return { files, kind, what: `${name}: bytes at ${at.join(', ')}` };
  }
  if (kind === 'truncate') {
    const name = pick(rng, [...files.keys()]);
    const b = files.get(name)!;
    const keep = rng.int(b.length);
    files.set(name, b.subarray(0, keep));
    return { files, kind, what: `${name} truncated to ${keep} of ${b.length} bytes` };
  }
  const dcp: SynthDcp = structuredClone(sample.synthetic!.dcp);
  const storage: SynthStorage[] = structuredClone(sample.synthetic!.storage);
  let what: string;
  if (kind === 'storage-fields') {
    const s = pick(rng, storage);
    const field = pick(rng, ['offset', 'length'] as const);
    const value = rng.next() < 0.5 ? pick(rng, EXTREMES) : Math.max(0, s[field] + rng.int(65) - 32);
    s[field] = value;
    what = `storage of '${s.key}' ${field} = ${value}`;
  } else if (kind === 'chunk-fields') {
    const t = pick(rng, dcp.tensors);
    const c = pick(rng, t.chunks);
    const d = t.size.length ? rng.int(t.size.length) : 0;
    const which = pick(rng, ['offsets', 'sizes', 'size'] as const);
    const value = rng.next() < 0.3 ? pick(rng, EXTREMES) : rng.int(8);
    if (which === 'size') t.size[d] = value;
    else c[which][d] = value;
    // The storage records follow the chunk's offsets so the edit reaches the tiling checks.
    for (const s of storage) if (s.key === t.key && s.offsets && which === 'offsets' && s.index === t.chunks.indexOf(c)) s.offsets = [...c.offsets];
    what = `'${t.key}' ${which}[${d}] = ${value}`;
  } else {
    const t = pick(rng, dcp.tensors);
    t.dtype = pick(rng, ['float64', 'bfloat16', 'int32', 'complex64', 'nope', 'float32']);
    what = `'${t.key}' dtype torch.${t.dtype}`;
  }
  files.set('.metadata', metadataPickle(dcp, storage));
  return { files, kind, what };
}

async function code(p: Promise<unknown>, where: string): Promise<string> {
  try {
    await p;
    return 'ok';
  } catch (e) {
    if (e instanceof DcpFuzzFailure) throw e;
    if (e instanceof ExcpError) return e.code;
    throw new DcpFuzzFailure(`${where} threw a non-ExcpError: ${e instanceof Error ? `${e.name}: ${e.message}\n${e.stack ?? ''}` : String(e)}`);
  }
}

/**
 * One case: the folder opens (all ranks, or one) and every tensor reads, or
 * an ExcpError; with `roundTrip`, an opened folder comes back byte for byte.
 * @param dir a scratch folder of the case's own
 * @returns `ok` or the error code
 */
export async function dcpCase(files: Map<string, Uint8Array>, rng: Prng, dir: string, roundTrip: boolean): Promise<string> {
  const folder = join(dir, 'in');
  mkdirSync(folder, { recursive: true });
  for (const [n, b] of files) writeFileSync(join(folder, n), b);
  try {
    const rank = rng.next() < 0.25 ? rng.int(2) : null;
    const opened = await code((async () => {
      const cp = await DcpCheckpoint.open(folder, { rank });
      try {
        for (const t of cp.tensors) await cp.tensorBytes(t, 0, t.end - t.begin);
      } finally {
        await cp.close();
      }
    })(), 'open');
    if (opened !== 'ok' || !roundTrip || rank !== null) return opened;
    const container = join(dir, 'c.excp');
    const out = createWriteStream(container);
    await compressTo(folder, out, { lossless: true, threads: 0 });
    out.end();
    await new Promise<void>((resolve) => out.on('finish', () => resolve()));
    await restoreToFolder(container, join(dir, 'out'), { threads: 0 });
    for (const [n, b] of files) {
      if (!readFileSync(join(dir, 'out', n)).equals(b)) throw new DcpFuzzFailure(`${n} did not come back byte for byte from a lossless round trip`);
    }
    return 'ok (round trip)';
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
