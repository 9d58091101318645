/**
 * ChunkEncoder / ChunkDecoder: the chunk codec as object Transforms, run in
 * process or on a worker pool (same pure functions, same bytes).
 */
import { decodeChunk, encodeChunk } from '../method/codec.js';
import type { EncodedRecord } from '../container/assemble.js';
import type { RestoredRecord } from '../container/verify.js';
import { layoutOf } from '../container/format.js';
import { DTYPE_BYTES } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { BufferRecycler, OrderedTransform, WorkerPool, defaultThreads, inputBuffers, unwrap } from '../pool/pool.js';
import type { ChunkJob } from './source.js';
import type { Checkpoint, ContainerFooter, ContainerHeader } from '../model/checkpoint.js';
import type { ContainerEvent } from '../container/framing.js';

export type { EncodedRecord } from '../container/assemble.js';

/** A chunk as read from a container. */
export interface PayloadRecord {
  entry: number;
  chunk: number;
  payload: Uint8Array;
}

export type { RestoredRecord } from '../container/verify.js';

/** Thread options shared by both directions. */
export interface ThreadOptions {
  /**
   * Worker threads; 0 codes in the calling thread. 'auto' (what the CLI and
   * the file helpers use when no count is given): all cores, but fewer or
   * none for a small checkpoint, where workers cost more than they save
   * (see {@link poolSize}). An explicit count is always honoured.
   */
  threads?: number | 'auto';
}

/**
 * Chunks in flight: one per worker plus one read ahead, so a worker that
 * finishes finds its next chunk already read. More only adds memory (each
 * compress chunk is up to 4 tensors x chunkElements x 4 bytes).
 */
function inFlight(threads: number): number {
  return threads > 0 ? threads + 1 : 1;
}

/**
 * Workers for a restore: a worker costs 0.1 to 0.2 s of start-up (an isolate
 * and the codec's modules) and each chunk a round trip, so a small container
 * is decoded with fewer workers, or in the calling thread, where that is
 * faster (measured on the 10m pair, 10M elements: 0.64 s in the calling
 * thread, 0.79 s with one worker, 0.84 s with two).
 */
function poolSize(header: ContainerHeader, threads: number | 'auto'): number {
  if (threads !== 'auto') return threads;
  return Math.min(defaultThreads(), Math.floor(totalElements(header) / ELEMENTS_PER_WORKER));
}

function totalElements(header: ContainerHeader): number {
  let elements = 0;
  for (const e of header.entries) elements += e.elements;
  return elements;
}

/** Elements of the container per worker started (see {@link poolSize}). */
const ELEMENTS_PER_WORKER = 16 * 1024 * 1024;

/**
 * Workers for a compress: none below 16M elements, else one per core; never
 * a single one, which only adds its start-up and the transfers to the same
 * serial work (measured, 1m pair: 0.34 s in the calling thread, 0.46 s with
 * one worker, 0.57 s with two; 10m pair: 1.01 s and 1.08 s with two; 160m:
 * 8.9 s and 6.1 s with two).
 */
function encodeWorkers(header: ContainerHeader, threads: number | 'auto'): number {
  if (threads !== 'auto') return threads;
  const cores = defaultThreads();
  return cores >= 2 && totalElements(header) >= ELEMENTS_PER_WORKER ? cores : 0;
}

function ownBuffer(b: Uint8Array): Uint8Array {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength ? b : new Uint8Array(b);
}

/** ChunkJob -> EncodedRecord. */
export class ChunkEncoder extends OrderedTransform<ChunkJob, EncodedRecord> {
  private readonly pool: WorkerPool | null;

  /**
   * @param header the container header (options and layouts)
   * @param options threads
   */
  constructor(header: ContainerHeader, options: ThreadOptions = {}) {
    const threads = encodeWorkers(header, options.threads ?? 0);
    const pool = threads > 0 ? new WorkerPool(threads) : null;
    super(async (job: ChunkJob): Promise<EncodedRecord> => {
      const layout = layoutOf(header, job.entry);
      const position = { entry: job.entry, chunk: job.chunk, start: job.chunk * header.options.chunkElements };
      if (!pool) {
        const encoded = encodeChunk(layout, job.input, header.options, position);
        job.release?.(inputBuffers(job.input));
        return { entry: job.entry, chunk: job.chunk, ...encoded };
      }
      // Recycled views own their whole buffer; other views are copied unless they do.
      const own = job.release ? (b: Uint8Array) => b : ownBuffer;
      const input = {
        weight: own(job.input.weight),
        base: job.input.base && own(job.input.base),
        expAvg: job.input.expAvg && own(job.input.expAvg),
        expAvgSq: job.input.expAvgSq && own(job.input.expAvgSq),
      };
      const r = unwrap(await pool.run({ kind: 'encode', layout, input, options: header.options, position }, inputBuffers(input)));
      if (!('encoded' in r)) throw new ExcpError('ERR_CORRUPT', 'pool: unexpected answer');
      job.release?.(r.inputs);
      return { entry: job.entry, chunk: job.chunk, ...r.encoded };
    }, inFlight(threads));
    this.pool = pool;
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    void this.pool?.close();
    callback(error);
  }

  /** Release the workers once the stream is done. */
  async close(): Promise<void> {
    await this.pool?.close();
  }
}

/** Objects of the restore direction: the container's header and footer travel with the chunks, in order. */
export type RestoreEvent = ContainerEvent;

/** Objects after decoding. */
export type RestoredEvent =
  | { type: 'header'; header: ContainerHeader }
  | { type: 'footer'; footer: ContainerFooter }
  | ({ type: 'chunk' } & RestoredRecord);

/** RestoreEvent -> RestoredEvent, reading base bytes as needed. */
export class ChunkDecoder extends OrderedTransform<RestoreEvent, RestoredEvent> {
  private pool: WorkerPool | null = null;

  /**
   * @param base the base checkpoint (required when an entry uses one)
   * @param options threads
   */
  constructor(base: Checkpoint | null, options: ThreadOptions = {}) {
    const threads = options.threads ?? 0;
    const maxWorkers = threads === 'auto' ? defaultThreads() : threads;
    let header: ContainerHeader | null = null;
    // Base chunks are read into recycled buffers: workers send them back with their answer.
    let recycler: BufferRecycler | null = null;
    super(async (event: RestoreEvent): Promise<RestoredEvent> => {
      if (event.type === 'header') {
        header = event.header;
        // A base read from a stream keeps only the tensors that will be asked for.
        const h = header;
        base?.expect?.(h.entries.filter((e) => e.base).map((e) => h.tensors[e.weight]!.name));
        const workers = poolSize(header, threads);
        if (workers > 0 && !this.pool) this.pool = new WorkerPool(workers);
        let eb = 1;
        for (const en of header.entries) if (en.base) eb = Math.max(eb, DTYPE_BYTES[header.tensors[en.weight]!.dtype]);
        recycler = new BufferRecycler(header.options.chunkElements * eb, Math.max(1, workers));
        return event;
      }
      if (event.type === 'footer') return event;
      if (!header) throw new ExcpError('ERR_CORRUPT', 'restore: chunk before header');
      const rec = event;
      const e = header.entries[rec.entry]!;
      const spec = header.tensors[e.weight]!;
      const chunkElements = header.options.chunkElements;
      const start = rec.chunk * chunkElements;
      const count = Math.min(e.elements - start, chunkElements);
      const layout = layoutOf(header, rec.entry);
      const position = { entry: rec.entry, chunk: rec.chunk, start };
      let baseBytes: Uint8Array | null = null;
      if (e.base) {
        if (!base) throw new ExcpError('ERR_BASE_MISSING', `restore: tensor '${spec.name}' was compressed against a base checkpoint; pass --base`);
        const info = base.byName.get(spec.name);
        if (!info || info.dtype !== spec.dtype || info.end - info.begin !== e.elements * DTYPE_BYTES[spec.dtype]) {
          throw new ExcpError('ERR_BASE_MISMATCH', `restore: base ${base.path} has no tensor '${spec.name}' of dtype ${spec.dtype} and shape [${spec.shape.join(', ')}]`);
        }
        const eb = DTYPE_BYTES[spec.dtype];
        baseBytes = await base.tensorBytes(info, start * eb, (start + count) * eb, recycler!.take(count * eb));
      }
      const pool = this.pool;
      if (!pool) {
        const restored = decodeChunk(layout, rec.payload, count, baseBytes, spec.name, position);
        if (baseBytes && recycler!.pooled(baseBytes)) recycler!.give([baseBytes.buffer as ArrayBuffer]);
        return { type: 'chunk', entry: rec.entry, chunk: rec.chunk, restored };
      }
      const payload = ownBuffer(rec.payload);
      const transfer = [payload.buffer as ArrayBuffer];
      if (baseBytes) transfer.push(baseBytes.buffer as ArrayBuffer);
      const r = unwrap(await pool.run({ kind: 'decode', layout, payload, count, base: baseBytes, what: spec.name, position }, transfer));
      if (!('decoded' in r)) throw new ExcpError('ERR_CORRUPT', 'pool: unexpected answer');
      recycler!.give(r.inputs);
      return { type: 'chunk', entry: rec.entry, chunk: rec.chunk, restored: r.decoded };
    // One restored chunk (12 MB at the default size) per worker: the writer
    // and the spill store already buffer ahead of the output.
    }, Math.max(1, maxWorkers));
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    void this.pool?.close();
    callback(error);
  }

  /** Release the workers once the stream is done. */
  async close(): Promise<void> {
    await this.pool?.close();
  }
}
