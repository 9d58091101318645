/**
 * Threads and memory: the `threads` and `memory` options checked, and how
 * many workers a memory budget feeds.
 *
 * The budget bounds the process's resident memory: the main thread (Node,
 * the modules, the header, stream buffers, spill memory) plus, per worker,
 * its isolate and what one chunk needs while it is coded (its bytes read in,
 * the codec's working arrays, what it restores). Those costs were measured
 * (peak RSS against the worker count, examples/bench.ts and the numbers in
 * README "Threads and memory") and are taken a little high. A chunk's cost
 * depends on the container: the largest chunk of any entry, coded exactly
 * (a keyframe: the exact coder works on byte planes, about four times the
 * chunk) or lossy (about twice). Workers the budget does not feed are not
 * started: their chunks wait for a free worker instead of taking memory.
 * One worker always runs, whatever the budget.
 */
import { availableParallelism } from 'node:os';
import { DTYPE_BYTES } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { type OptionSpec, describeRange, optionNamed, parseSize, valueFits } from '../core/options.js';
import type { ContainerHeader, EntrySpec } from '../model/checkpoint.js';
import { entryRawBytes } from '../model/pack.js';

/** Threads and memory, checked. */
export interface Resources {
  /** Worker threads wanted: a count (0: the calling thread), or 'auto'. */
  threads: number | 'auto';
  /** The memory budget in bytes. */
  memory: number;
}

/** Cores of this machine (what 'auto' uses, and what the threads limit is per). */
export function cores(): number {
  return availableParallelism();
}

function row(name: string): OptionSpec {
  return optionNamed(name)!;
}

/**
 * Check the `threads` and `memory` options of the library, eagerly.
 * @param options threads (a count or 'auto') and memory (bytes, or a size like '256M')
 * @param defaultThreads threads when none is given
 * @returns the resources
 * @throws ExcpError ERR_OUT_OF_RANGE naming `options.threads` or `options.memory`
 */
export function resolveResources(options: { threads?: unknown; memory?: unknown }, defaultThreads: number | 'auto' = 'auto'): Resources {
  const threads = options.threads ?? defaultThreads;
  const n = cores();
  if (!valueFits(row('threads'), threads, n)) {
    throw new ExcpError('ERR_OUT_OF_RANGE', `options.threads must be ${describeRange(row('threads'), n)}, got ${JSON.stringify(threads)}`);
  }
  const given = options.memory ?? row('memory').default;
  const memory = typeof given === 'string' ? parseSize(given) : given;
  if (!valueFits(row('memory'), memory)) {
    throw new ExcpError('ERR_OUT_OF_RANGE', `options.memory must be ${describeRange(row('memory'))}, got ${JSON.stringify(given)}`);
  }
  return { threads: threads as number | 'auto', memory: memory as number };
}

const MB = 1024 * 1024;

/**
 * Resident memory of the main thread before any chunk: Node itself, the
 * modules, stream and pipe buffers, the spill store's memory (measured: 45
 * to 60 MB; a folder's header and file table add a little).
 */
export const MAIN_BYTES = 72 * MB;
/** A worker's isolate with the codec loaded, before its first chunk (measured: 17 MB). */
export const WORKER_BYTES = 24 * MB;
/** Working memory per byte of chunk input while a chunk is coded exactly (byte planes, models, output). */
const EXACT_FACTOR = 4.5;
/** Working memory per byte of chunk input while a chunk is coded lossy (residual, selection, gathers). */
const LOSSY_FACTOR = 2.5;

/** Elements of the container per worker started by 'auto' (see {@link autoWorkers}). */
const ELEMENTS_PER_WORKER = 16 * 1024 * 1024;

function chunkElements(header: ContainerHeader, e: EntrySpec): number {
  return e.kind === 'pack' ? e.elements : Math.min(e.elements, header.options.chunkElements);
}

/** Bytes of one chunk of an entry as read (its tensors and its base), and its working memory. */
function chunkCost(header: ContainerHeader, e: EntrySpec): { bytes: number; working: number } {
  const t = header.tensors;
  const n = chunkElements(header, e);
  let bytes: number;
  if (e.kind === 'pack') {
    bytes = entryRawBytes(t, e);
  } else {
    const wb = DTYPE_BYTES[t[e.weight]!.dtype];
    const mb = e.expAvg !== null ? DTYPE_BYTES[t[e.expAvg]!.dtype] : 0;
    bytes = n * (wb * (e.base ? 2 : 1) + 2 * mb);
  }
  const exact = e.exactWeight && (e.exactMoments || e.expAvg === null);
  return { bytes, working: bytes * (exact ? EXACT_FACTOR : LOSSY_FACTOR) };
}

/** The largest chunk of a container: its bytes and its working memory. */
function largestChunk(header: ContainerHeader): { bytes: number; working: number } {
  let bytes = 0;
  let working = 0;
  for (const e of header.entries) {
    if (e.elements === 0) continue;
    const c = chunkCost(header, e);
    bytes = Math.max(bytes, c.bytes);
    working = Math.max(working, c.working);
  }
  return { bytes, working };
}

function totalElements(header: ContainerHeader): number {
  let n = 0;
  for (const e of header.entries) n += e.elements;
  return n;
}

/**
 * Workers 'auto' asks for: all cores, but none below ELEMENTS_PER_WORKER
 * elements, and never a single one: a worker costs 0.1 to 0.2 s of start-up
 * and each chunk a round trip, which a small checkpoint does not earn back
 * (measured, 1m pair: 0.34 s in the calling thread, 0.46 s with one
 * worker, 0.57 s with two; 10m pair: 1.01 s and 1.08 s with two; 160m:
 * 8.9 s and 6.1 s with two). Restore starts one worker per
 * ELEMENTS_PER_WORKER elements, up to the cores (10m pair: 0.64 s in the
 * calling thread, 0.79 s with one worker, 0.84 s with two).
 */
function autoWorkers(header: ContainerHeader, direction: 'compress' | 'restore'): number {
  const n = cores();
  const elements = totalElements(header);
  if (direction === 'restore') return Math.min(n, Math.floor(elements / ELEMENTS_PER_WORKER));
  return n >= 2 && elements >= ELEMENTS_PER_WORKER ? n : 0;
}

/** How a run uses threads and memory. */
export interface WorkPlan {
  /** Worker threads to start (0: jobs run in the calling thread). */
  workers: number;
  /** Chunks in flight at once: one per worker plus one scheduled ahead. */
  inFlight: number;
  /** The budget's estimate of the peak resident memory (bytes). */
  estimate: number;
}

/**
 * How many workers a budget feeds.
 * @param header the container header (its entries' chunk sizes and modes)
 * @param resources threads and memory
 * @param direction compress or restore
 * @param viaMain whether each chunk's bytes also pass through the main thread
 *   (read there, or restored into a pipe): then every chunk in flight costs
 *   its bytes there too
 * @returns workers, chunks in flight and the estimate
 */
export function planWork(header: ContainerHeader, resources: Resources, direction: 'compress' | 'restore', viaMain: boolean): WorkPlan {
  const wanted = resources.threads === 'auto' ? autoWorkers(header, direction) : resources.threads;
  const chunk = largestChunk(header);
  // Restore holds the restored bytes (about the chunk's bytes) besides what compress needs.
  const working = chunk.working + (direction === 'restore' ? chunk.bytes : 0);
  const onMain = viaMain ? chunk.bytes : 0;
  if (wanted === 0) return { workers: 0, inFlight: 1, estimate: MAIN_BYTES + working + onMain };
  const perWorker = WORKER_BYTES + working + onMain;
  // One chunk in flight beyond the workers (scheduled ahead) costs its bytes on the main thread when they pass there.
  const fed = Math.floor((resources.memory - MAIN_BYTES - onMain) / perWorker);
  const workers = Math.max(1, Math.min(wanted, fed));
  return { workers, inFlight: workers + 1, estimate: MAIN_BYTES + onMain + workers * perWorker };
}
