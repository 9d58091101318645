/**
 * A small worker_threads pool for the chunk codec, and an order-preserving
 * parallel Transform built on it.
 *
 * Why order matters: container records of an entry must be written in chunk
 * order, and restore must hand chunks to the writer in the order they came.
 * Why a bounded queue: a Transform that accepted chunks faster than the
 * workers finish them would buffer the whole checkpoint; here the write
 * callback is held until the queue has room, so back-pressure reaches the
 * reader.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { Worker } from 'node:worker_threads';
import { ExcpError, type ErrorCode } from '../core/errors.js';
import type { ChunkInput } from '../method/reconstruct.js';
import { trackWorkerCpu } from './cpu.js';
import { type Job, type JobResult, runJob } from './jobs.js';

/** A request to a worker. */
export interface WorkerRequest {
  id: number;
  job: Job;
}

/** A worker's answer, with its thread's CPU seconds so far (null where unknown). */
export type WorkerResponse =
  | { id: number; result: JobResult; inputs: ArrayBuffer[]; cpu: number | null }
  | { id: number; error: { code: ErrorCode; message: string }; cpu: number | null };

/** A job's result and the request's buffers it sent back (for reuse). */
export interface JobAnswer {
  result: JobResult;
  inputs: ArrayBuffer[];
}

/**
 * A free list of chunk-sized ArrayBuffers. The compress direction reads
 * every chunk into a buffer from here and gives it back once the chunk is
 * coded (workers transfer the input buffers back with their answer), so
 * the read buffers cycle instead of piling up as garbage: a worker's GC
 * runs rarely, and dead transferred buffers would otherwise hold tens of
 * MB per thread.
 */
export class BufferRecycler {
  private readonly free: ArrayBuffer[] = [];
  /** Size of every pooled buffer; larger requests get a one-off buffer. */
  readonly slotBytes: number;
  private readonly keep: number;

  /**
   * @param slotBytes size of a pooled buffer
   * @param keep most free buffers kept
   */
  constructor(slotBytes: number, keep: number) {
    this.slotBytes = slotBytes;
    this.keep = keep;
  }

  /**
   * @param bytes length wanted
   * @returns a view of that length, over a pooled buffer when bytes <= slotBytes
   */
  take(bytes: number): Uint8Array {
    if (bytes > this.slotBytes) return new Uint8Array(bytes);
    return new Uint8Array(this.free.pop() ?? new ArrayBuffer(this.slotBytes), 0, bytes);
  }

  /** @returns whether a view came from {@link take} over a pooled buffer */
  pooled(view: Uint8Array): boolean {
    return view.byteOffset === 0 && view.buffer.byteLength === this.slotBytes;
  }

  /** Return buffers (pool-sized ones are kept; detached or foreign sizes are dropped). */
  give(buffers: ArrayBuffer[]): void {
    for (const b of buffers) {
      if (b.byteLength === this.slotBytes && this.free.length < this.keep && !this.free.includes(b)) this.free.push(b);
    }
  }
}

/**
 * The distinct buffers under a chunk's input views (what is transferred to a
 * worker and recycled after).
 * @param input the chunk input
 * @returns each underlying buffer once
 */
export function inputBuffers(input: ChunkInput): ArrayBuffer[] {
  const { weight, base, expAvg, expAvgSq } = input;
  return [...new Set([weight, base, expAvg, expAvgSq].filter((b) => b !== null).map((b) => b.buffer as ArrayBuffer))];
}

const WORKER_LIMITS = { maxYoungGenerationSizeMb: 4 };

function startWorker(): Worker {
  const self = import.meta.url;
  // A small young generation: a worker's JS objects are few and short-lived
  // (the chunk data lives in ArrayBuffers outside the heap), so the default
  // semi-spaces only add resident memory per thread.
  if (!self.endsWith('.ts')) return new Worker(new URL('./worker.js', self), { resourceLimits: WORKER_LIMITS });
  // Running from TypeScript sources (tests, examples under tsx): the worker
  // registers tsx's loader before importing the TypeScript worker module.
  const url = new URL('./worker.ts', self).href;
  const boot = `import('tsx/esm/api').then((m) => { m.register(); return import(${JSON.stringify(url)}); })`;
  return new Worker(boot, { eval: true, resourceLimits: WORKER_LIMITS });
}

/**
 * Jobs a worker holds at once: one it codes and the next, whose bytes it
 * reads meanwhile (lib/pool/worker.ts).
 */
export const WORKER_DEPTH = 2;

/** Fixed-size pool; jobs go to the least busy worker, up to WORKER_DEPTH each. */
export class WorkerPool {
  private readonly workers: Worker[] = [];
  /** Jobs each worker holds. */
  private readonly load = new Map<Worker, number>();
  private readonly waiting: Array<() => void> = [];
  private readonly pending = new Map<number, { resolve: (r: WorkerResponse) => void; reject: (e: Error) => void }>();
  /** Each worker's CPU seconds as it last reported them. */
  private readonly cpu = new Map<Worker, number>();
  private readonly untrack: () => void;
  /** Where the search for a worker starts: the work spreads over every worker (each warms up its JIT). */
  private next = 0;
  private nextId = 1;
  private closed = false;
  private broken: Error | null = null;

  /** @param size number of worker threads (>= 1) */
  constructor(size: number) {
    for (let i = 0; i < size; i++) {
      const w = startWorker();
      w.on('message', (r: WorkerResponse) => {
        if (r.cpu !== null) this.cpu.set(w, r.cpu);
        const p = this.pending.get(r.id);
        this.pending.delete(r.id);
        const load = this.load.get(w)! - 1;
        this.load.set(w, load);
        // Idle workers must not keep the process alive; busy ones must.
        if (load === 0) w.unref();
        this.waiting.shift()?.();
        p?.resolve(r);
      });
      w.on('error', (e) => this.failAll(new ExcpError('ERR_IO', `pool: worker failed: ${e.message}`)));
      w.on('exit', () => {
        if (!this.closed) this.failAll(new ExcpError('ERR_IO', 'pool: a worker exited unexpectedly'));
      });
      w.unref();
      this.workers.push(w);
      this.load.set(w, 0);
    }
    this.untrack = trackWorkerCpu(this);
  }

  /** Number of workers. */
  get size(): number {
    return this.workers.length;
  }

  /** CPU seconds the workers have used, as last reported. */
  workerCpuSeconds(): number {
    let total = 0;
    for (const s of this.cpu.values()) total += s;
    return total;
  }

  /** The least busy worker with room for a job (the search starts after the last one chosen), or null. */
  private pick(): Worker | null {
    let best: Worker | null = null;
    for (let k = 0; k < this.workers.length; k++) {
      const w = this.workers[(this.next + k) % this.workers.length]!;
      const load = this.load.get(w)!;
      if (load < WORKER_DEPTH && (best === null || load < this.load.get(best)!)) best = w;
    }
    if (best) this.next = (this.workers.indexOf(best) + 1) % this.workers.length;
    return best;
  }

  private failAll(e: Error): void {
    this.broken ??= e;
    for (const p of this.pending.values()) p.reject(e);
    this.pending.clear();
    for (const wake of this.waiting.splice(0)) wake();
  }

  /**
   * Run one job on the least busy worker.
   * @param job the job
   * @param transfer buffers to move to the worker
   * @returns its result and the request's buffers
   * @throws ExcpError the job's error, or ERR_IO when the pool broke
   */
  async run(job: Job, transfer: ArrayBuffer[]): Promise<JobAnswer> {
    let w: Worker | null;
    while ((w = this.pick()) === null && !this.broken) await new Promise<void>((r) => this.waiting.push(r));
    if (this.broken) throw this.broken;
    if (this.closed) throw new ExcpError('ERR_IO', 'pool: closed');
    const worker = w!;
    this.load.set(worker, this.load.get(worker)! + 1);
    const id = this.nextId++;
    const r = await new Promise<WorkerResponse>((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      worker.ref();
      worker.postMessage({ id, job } satisfies WorkerRequest, [...new Set(transfer)]);
    });
    if ('error' in r) throw new ExcpError(r.error.code, r.error.message);
    return { result: r.result, inputs: r.inputs };
  }

  private closing: Promise<void> | null = null;

  /**
   * Stop all workers. Idempotent: a stream's destroy and its owner both close
   * the pool, and a second Worker.terminate() on an exited worker need not
   * settle, so every caller shares the first call's promise. Resolves once
   * every worker has exited (none still reads or writes a descriptor).
   */
  close(): Promise<void> {
    this.closed = true;
    this.closing ??= Promise.all(this.workers.map((w) => w.terminate())).then(() => this.untrack());
    return this.closing;
  }
}

/**
 * Runs jobs on a pool of workers, or (0 workers) in the calling thread:
 * the same function either way (lib/pool/jobs.ts), so the same bytes.
 */
export class JobRunner {
  private readonly pool: WorkerPool | null;

  /** @param workers worker threads; 0 runs jobs in the calling thread */
  constructor(workers: number) {
    this.pool = workers > 0 ? new WorkerPool(workers) : null;
  }

  /** Worker threads (0: jobs run in the calling thread). */
  get workers(): number {
    return this.pool?.size ?? 0;
  }

  /**
   * Run a job.
   * @param job the job
   * @param transfer buffers the job may take over (a worker sends them back in `inputs`)
   * @throws ExcpError the job's error
   */
  async run(job: Job, transfer: ArrayBuffer[] = []): Promise<JobAnswer> {
    if (this.pool) return this.pool.run(job, transfer);
    return { result: runJob(job), inputs: [] };
  }

  /** Stop the workers (resolves once none runs). */
  close(): Promise<void> {
    return this.pool?.close() ?? Promise.resolve();
  }
}

/**
 * A Transform that runs an async function on each object with bounded
 * concurrency and pushes results in input order.
 */
export class OrderedTransform<I, O> extends Transform {
  private readonly work: (item: I) => Promise<O> | O;
  private limit: number;
  private readonly queue: Array<Promise<O>> = [];
  private held: TransformCallback | null = null;
  private draining = false;
  private failed = false;

  /**
   * @param work the function (may be synchronous)
   * @param limit most items in flight
   */
  constructor(work: (item: I) => Promise<O> | O, limit: number) {
    // One object buffered on each side: the items are whole chunks (up to
    // 16 MB in, 12 MB restored out), and `limit` already keeps the workers fed.
    super({ objectMode: true, highWaterMark: 1 });
    this.work = work;
    this.limit = Math.max(1, limit);
  }

  /**
   * Change how many items may be in flight (a decoder learns it from the
   * container's header, its first item).
   * @param limit most items in flight (at least 1)
   */
  protected setLimit(limit: number): void {
    this.limit = Math.max(1, limit);
  }

  override _transform(item: I, _enc: BufferEncoding, callback: TransformCallback): void {
    let p: Promise<O>;
    try {
      p = Promise.resolve(this.work(item));
    } catch (e) {
      callback(e as Error);
      return;
    }
    p.catch(() => undefined);
    this.queue.push(p);
    if (this.queue.length < this.limit) callback();
    else this.held = callback;
    void this.drain();
  }

  private async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.queue.length > 0 && !this.failed) {
        const value = await this.queue[0]!;
        this.queue.shift();
        this.push(value);
        if (this.held && this.queue.length < this.limit) {
          const cb = this.held;
          this.held = null;
          cb();
        }
      }
    } catch (e) {
      this.failed = true;
      const cb = this.held;
      this.held = null;
      if (cb) cb(e as Error);
      else this.destroy(e as Error);
    } finally {
      this.draining = false;
    }
  }

  override _flush(callback: TransformCallback): void {
    const finish = async (): Promise<void> => {
      while (this.draining) await new Promise((r) => setImmediate(r));
      await this.drain();
      while (this.draining) await new Promise((r) => setImmediate(r));
    };
    finish().then(() => (this.failed ? undefined : callback()), (e: unknown) => callback(e as Error));
  }
}
