/**
 * Threads and memory: the `threads` and `memory` options checked, and how
 * many workers a memory budget feeds.
 *
 * The budget bounds the process's resident memory: the main thread (Node,
 * the modules, the header, stream buffers, spill memory) plus, per worker,
 * its isolate and what one chunk needs while it is coded (its bytes read in,
 * the codec's working arrays, what it restores). Those costs were measured
 * (peak RSS against the worker count: `npm run bench -- --rss`, and the
 * table below) and are taken a little high. A chunk's cost
 * depends on the container: the largest chunk of any entry, its weight
 * coded exactly (a keyframe: the exact coder works on byte planes, about
 * six times the chunk) or lossy (three times; four and a half with
 * method 2's dither). Workers the budget does not feed are not started: their chunks
 * wait for a free worker instead of taking memory. Where not even one
 * worker fits, the chunks are coded on the calling thread.
 */
import { availableParallelism } from 'node:os';
import { DTYPE_BYTES } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { type OptionSpec, describeRange, optionNamed, parseSize, valueFits } from '../core/options.js';
import type { ContainerHeader, EntrySpec } from '../model/checkpoint.js';
import { entryRawBytes } from '../model/pack.js';
import { WORKER_DEPTH } from './pool.js';

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

/*
 * The cost model, fitted to peak RSS measured against the worker count on
 * the 160m pair (1.9 GB, chunks of 2^20 elements; 1, 2 and 4 workers on 2
 * cores, --memory 64G so that nothing capped them), each constant rounded
 * up so that the measured peaks stay under the estimate. Residual compress
 * was measured with method 2 (the default rule, dither), whose encoder
 * works on more arrays per chunk than the pruning rules (paper, magnitude,
 * saliency); its peaks (files and folders, several runs) vary by 10-20%
 * from run to run (garbage collection):
 *
 *   run                              measured RSS (MB) at 1 / 2 / 4 workers   estimate
 *   residual compress, dither        172-175 / 246-249 / 403-409              197 / 308 / 530
 *   residual compress, --rule paper  163 / 253 / 396                          173 / 260 / 434
 *   keyframe compress                226-228 / 303-314 / 475-485              250 / 372 / 616
 *   residual restore, file           168-169 / 233-256 / 400-402              189 / 292 / 498
 *   residual restore, pipe           253-281 / 312-334 / 415-471              327 / 478 / 780
 *
 * (Two runs each, after the dithered encoder stopped keeping a buffer per
 * intermediate (dW, the offsets, the steps, the gathered steps): its rows
 * were 193-204 / 297-366 / 511-524 before, estimated with a factor of 6.5
 * where 4.5 now; the --rule paper row is from the earlier fit.)
 *
 * So the default 256M feeds one worker at the default chunk size; 1G
 * feeds 7 (keyframe compress; 7 started, 759 MB peak, with --threads 8),
 * 8 (residual compress; 8, 770 MB) and 9 (residual restore, by the
 * estimate; 8, the most --threads takes on 2 cores, peaked at 498 MB).
 * A checkpoint read from a stream (stdin, a FIFO) also
 * holds what waits for its partners in memory (up to the spill stores'
 * memory, lib/io/spill.ts), which the plan counts on the main thread
 * (PlanOptions.heldOnMain, a sixteenth of the budget per store:
 * streamMemoryBytes in lib/api/compress.ts). With all of 64 MiB per store
 * and one worker such a residual compress peaked at 346 MB; with 16 MiB at
 * 277-312 MB, and with no worker (one does not fit 256M) at 225 MB.
 */

/**
 * Resident memory of the main thread before any chunk: Node itself and the
 * modules (54 MB measured), stream buffers, the header and footer, what the
 * garbage collector has not taken back yet.
 */
export const MAIN_BYTES = 80 * MB;
/** A worker's isolate with the codec loaded, before its first chunk (17 MB measured). */
export const WORKER_BYTES = 20 * MB;
/**
 * Working memory per byte of chunk input (its tensors and its base) while a
 * chunk is coded, the chunk's own bytes included: exactly (byte planes,
 * candidate codings, the output) or lossy (residual, selection, gathers,
 * symbols), and the same while it is decoded.
 */
const ENCODE_FACTOR = { exact: 5.5, lossy: 3, dithered: 4.5 };
const DECODE_FACTOR = { exact: 3, lossy: 4, dithered: 4 };
/** A lossy chunk's payload against its bytes (about 1/20 in practice; an exact one is taken as large as its bytes). */
const LOSSY_PAYLOAD = 1 / 8;
/**
 * Payloads the main thread holds besides one per chunk in flight: the
 * container being parsed or assembled, the stream buffers on either side,
 * the read buffers not yet collected.
 */
const PAYLOAD_COPIES = 4;
/**
 * A restore into a pipe: the writer's spill memory and the bytes it holds
 * for the reader, and the garbage of what it already wrote (the main
 * thread allocates and drops a chunk's bytes at the rate they leave).
 */
const PIPE_BYTES = 64 * MB;
/** A restore into a pipe holds each restored chunk on the main thread this many times over (in flight, then buffered by the writer). */
const PIPE_COPIES = 2;

/**
 * A chunk read on the main thread (from a stream) is held there this many
 * times over: as the stream delivered it and as the buffer handed to the
 * worker. (Counted once, a residual compress from stdin at 256M was
 * estimated at 245 MB with one worker, which then peaked at 262-295 MB:
 * `npm run bench -- --rss`.)
 */
const READ_COPIES = 2;

/** Elements of the container per worker started by 'auto' (see {@link autoWorkers}). */
const ELEMENTS_PER_WORKER = 16 * 1024 * 1024;

function chunkElements(header: ContainerHeader, e: EntrySpec): number {
  return e.kind === 'pack' ? e.elements : Math.min(e.elements, header.options.chunkElements);
}

/**
 * What one chunk of an entry costs: its bytes as read (tensors and base),
 * restored (tensors), its payload, how its weight is coded, and the bytes
 * its working set scales with: the chunk's bytes for an exact coding (byte
 * planes), its values as float32 for a lossy one (the codec works in
 * float32 whatever the dtype: a bf16 residual from stdin, counted by its
 * bytes, was estimated at 243 MB and peaked at 292 MB).
 */
interface ChunkCost {
  bytes: number;
  restored: number;
  payload: number;
  coding: 'exact' | 'lossy' | 'dithered';
  working: number;
}

function chunkCost(header: ContainerHeader, e: EntrySpec): ChunkCost {
  const t = header.tensors;
  const n = chunkElements(header, e);
  let restored: number;
  let base = 0;
  if (e.kind === 'pack') {
    restored = entryRawBytes(t, e);
  } else {
    const wb = DTYPE_BYTES[t[e.weight]!.dtype];
    const mb = e.expAvg !== null ? DTYPE_BYTES[t[e.expAvg]!.dtype] : 0;
    restored = n * (wb + 2 * mb);
    base = e.base ? n * wb : 0;
  }
  // An exact weight (a keyframe, a plain tensor) dominates: the exact coder's working set is several times the pruning path's.
  const exact = e.exactWeight;
  const coding = exact ? 'exact' : header.options.weightRule === 'dither' ? 'dithered' : 'lossy';
  const floats = e.kind === 'pack' ? 0 : n * 4 * ((e.expAvg !== null ? 3 : 1) + (e.base ? 1 : 0));
  return { bytes: restored + base, restored, payload: exact ? restored : Math.ceil(restored * LOSSY_PAYLOAD), coding, working: exact ? restored + base : Math.max(restored + base, floats) };
}

/** The costs of a container's chunks that the plan needs: the largest of each over its entries. */
function largest(header: ContainerHeader, direction: 'compress' | 'restore'): { working: number; payload: number; restored: number; bytes: number } {
  const out = { working: 0, payload: 0, restored: 0, bytes: 0 };
  for (const e of header.entries) {
    if (e.elements === 0) continue;
    const c = chunkCost(header, e);
    const factor = (direction === 'compress' ? ENCODE_FACTOR : DECODE_FACTOR)[c.coding];
    out.working = Math.max(out.working, c.working * factor);
    out.payload = Math.max(out.payload, c.payload);
    out.restored = Math.max(out.restored, c.restored);
    out.bytes = Math.max(out.bytes, c.bytes);
  }
  return out;
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
  /** Chunks in flight at once: WORKER_DEPTH per worker plus one scheduled ahead. */
  inFlight: number;
  /** The budget's estimate of the peak resident memory (bytes). */
  estimate: number;
}

/** Where a run's chunk bytes go besides the workers. */
export interface PlanOptions {
  /** Each chunk's bytes are read on the main thread and handed to a worker (a checkpoint in memory). */
  readOnMain?: boolean;
  /** Restore: the restored bytes come back to the main thread (a pipe) instead of being written by the workers. */
  restoredOnMain?: boolean;
  /** Bytes the main thread holds besides the chunks: what a checkpoint read from a stream keeps in memory while it waits. */
  heldOnMain?: number;
}

/**
 * How many workers a budget feeds (see the cost model above).
 * @param header the container header (its entries' chunk sizes and modes)
 * @param resources threads and memory
 * @param direction compress or restore
 * @param where what passes through the main thread
 * @returns workers, chunks in flight and the estimate
 */
export function planWork(header: ContainerHeader, resources: Resources, direction: 'compress' | 'restore', where: PlanOptions = {}): WorkPlan {
  const wanted = resources.threads === 'auto' ? autoWorkers(header, direction) : resources.threads;
  const chunk = largest(header, direction);
  // Per chunk in flight on the main thread: its payload (the record coded, or the record to decode), its bytes when read there, its restored bytes when they come back.
  const onMain = chunk.payload + (where.readOnMain ? READ_COPIES * chunk.bytes : 0) + (where.restoredOnMain ? PIPE_COPIES * chunk.restored : 0);
  const fixed = MAIN_BYTES + PAYLOAD_COPIES * chunk.payload + (where.restoredOnMain ? PIPE_BYTES + onMain : 0) + (where.heldOnMain ?? 0);
  if (wanted === 0) return { workers: 0, inFlight: 1, estimate: fixed + onMain + chunk.working };
  // A worker holds WORKER_DEPTH jobs: the one it codes, and the next, read meanwhile (or the last, being written).
  const perWorker = WORKER_BYTES + chunk.working + (WORKER_DEPTH - 1) * chunk.bytes + WORKER_DEPTH * onMain;
  const workers = Math.min(wanted, Math.floor((resources.memory - fixed) / perWorker));
  // Not even one worker fits: the calling thread codes the chunks, which
  // costs neither a worker's isolate nor a second chunk in flight (a restore
  // into a pipe at 256M: 197 MB and 14.7 s instead of 258 MB and 11.9 s; a
  // compress from stdin: 225 MB instead of 277 MB, as fast).
  if (workers < 1) return { workers: 0, inFlight: 1, estimate: fixed + onMain + chunk.working };
  return { workers, inFlight: WORKER_DEPTH * workers + 1, estimate: fixed + workers * perWorker };
}
