/**
 * ChunkEncoder / ChunkDecoder: the chunk codec as object Transforms, run on
 * a pool of workers or in the calling thread (the same jobs, lib/pool/jobs.ts,
 * so the same bytes whatever the thread count).
 *
 * The main thread only schedules: a compress job names the file ranges of
 * its chunk and the worker reads them, codes the chunk and frames its
 * record; a restore job carries the record's payload (and its CRC, checked
 * by the worker) and the file ranges of its base, and the worker decodes,
 * digests and, given a {@link ChunkPlacer}, writes the restored bytes to the
 * output files itself. How many workers run is what the memory budget feeds
 * (lib/pool/budget.ts).
 */
import type { EncodedRecord } from '../container/assemble.js';
import type { RestoredRecord } from '../container/verify.js';
import { layoutOf } from '../container/format.js';
import { DTYPE_BYTES } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { BufferRecycler, JobRunner, OrderedTransform, inputBuffers } from '../pool/pool.js';
import { type Resources, type WorkPlan, planWork, resolveResources } from '../pool/budget.js';
import type { DecodeJob, PieceWrite } from '../pool/jobs.js';
import type { ChunkJob } from './source.js';
import type { Checkpoint, ContainerFooter, ContainerHeader, FileRange } from '../model/checkpoint.js';
import type { ContainerEvent } from '../container/framing.js';
import type { FinishTools } from '../formats/file-format.js';
import { SPILL_MEMORY_BYTES } from '../io/spill.js';

export type { EncodedRecord } from '../container/assemble.js';

/** A chunk as read from a container. */
export interface PayloadRecord {
  entry: number;
  chunk: number;
  payload: Uint8Array;
}

export type { RestoredRecord } from '../container/verify.js';

/** Thread and memory options shared by both directions. */
export interface ThreadOptions {
  /**
   * Worker threads; 0 codes in the calling thread. 'auto' (what the CLI and
   * the file helpers use when no count is given): all cores, but fewer or
   * none for a small checkpoint, where workers cost more than they save
   * (lib/pool/budget.ts). Either way no more than `memory` feeds.
   */
  threads?: number | 'auto' | undefined;
  /** Memory budget in bytes or as a size ('256M'; default 256M): see lib/pool/budget.ts. */
  memory?: number | string | undefined;
}

function ownBuffer(b: Uint8Array): Uint8Array {
  return b.byteOffset === 0 && b.byteLength === b.buffer.byteLength ? b : new Uint8Array(b);
}

/** Options of {@link ChunkEncoder}. */
export interface EncoderOptions extends ThreadOptions {
  /** The jobs carry their bytes (read on the main thread), so each chunk in flight costs its bytes there too. */
  bytesOnMain?: boolean;
  /** Bytes the main thread holds besides the chunks (a stream's spill stores), for the budget. */
  heldOnMain?: number;
}

/** ChunkJob -> EncodedRecord (with its framed record bytes). */
export class ChunkEncoder extends OrderedTransform<ChunkJob, EncodedRecord> {
  private readonly runner: JobRunner;
  /** Workers and chunks in flight, as the budget allows. */
  readonly plan: WorkPlan;

  /**
   * @param header the container header (options and layouts)
   * @param options threads (default 0) and memory
   * @throws ExcpError ERR_OUT_OF_RANGE for bad threads or memory
   */
  constructor(header: ContainerHeader, options: EncoderOptions = {}) {
    const plan = planWork(header, resolveResources(options, 0), 'compress', { readOnMain: options.bytesOnMain === true, heldOnMain: options.heldOnMain ?? 0 });
    const runner = new JobRunner(plan.workers);
    super(async (job: ChunkJob): Promise<EncodedRecord> => {
      const layout = layoutOf(header, job.entry);
      const position = { entry: job.entry, chunk: job.chunk, start: job.chunk * header.options.chunkElements };
      let input = job.input;
      let transfer: ArrayBuffer[] = [];
      if (input && runner.workers > 0) {
        // Recycled views own their whole buffer; other views are copied unless they do.
        const own = job.release ? (b: Uint8Array) => b : ownBuffer;
        input = { weight: own(input.weight), base: input.base && own(input.base), expAvg: input.expAvg && own(input.expAvg), expAvgSq: input.expAvgSq && own(input.expAvgSq) };
        transfer = inputBuffers(input);
      }
      const { result, inputs } = await runner.run({ kind: 'encode', entry: job.entry, chunk: job.chunk, layout, options: header.options, position, input, reads: job.reads }, transfer);
      if (result.kind !== 'encode') throw new ExcpError('ERR_CORRUPT', 'pool: unexpected answer');
      if (job.input) job.release?.(runner.workers > 0 ? inputs : inputBuffers(job.input));
      return { entry: job.entry, chunk: job.chunk, ...result.encoded, framed: result.record };
    }, plan.inFlight);
    this.runner = runner;
    this.plan = plan;
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    void this.runner.close();
    callback(error);
  }

  /** Release the workers once the stream is done (resolves once none runs). */
  async close(): Promise<void> {
    await this.runner.close();
  }
}

/** Objects of the restore direction: the container's header and footer travel with the chunks, in order. */
export type RestoreEvent = ContainerEvent;

/** Objects after decoding. */
export type RestoredEvent =
  | { type: 'header'; header: ContainerHeader }
  | { type: 'footer'; footer: ContainerFooter }
  | ({ type: 'chunk' } & RestoredRecord);

/**
 * Where restored chunks go when workers write them (lib/stream/folder-writer.ts):
 * the decoder asks before it decodes a chunk, and the chunk's event then
 * carries only its digests.
 */
export interface ChunkPlacer {
  /**
   * Get the outputs ready for a container (open the files, write fixed
   * bytes), before its first chunk is decoded.
   * @param header the container header
   * @param tools work the writer may hand to the decoder's threads later (its finishing steps)
   */
  prepare(header: ContainerHeader, tools: FinishTools): Promise<void>;
  /**
   * The writes of one chunk's restored bytes, or null when nothing is
   * written (verify: only the digests are needed).
   */
  writes(entry: number, chunk: number): PieceWrite[] | null;
}

/** Options of {@link ChunkDecoder}. */
export interface DecoderOptions extends ThreadOptions {
  /** Workers write restored bytes where this says; without it the bytes come back in the events (a pipe). */
  placer?: ChunkPlacer | undefined;
}

/** RestoreEvent -> RestoredEvent, reading base bytes as needed. */
export class ChunkDecoder extends OrderedTransform<RestoreEvent, RestoredEvent> {
  private runner: JobRunner | null = null;
  private readonly resources: Resources;
  /** Workers and chunks in flight, once the header has come. */
  plan: WorkPlan | null = null;

  /**
   * @param base the base checkpoint (required when an entry uses one)
   * @param options threads (default 0), memory, placer
   * @throws ExcpError ERR_OUT_OF_RANGE for bad threads or memory
   */
  constructor(base: Checkpoint | null, options: DecoderOptions = {}) {
    const resources = resolveResources(options, 0);
    const placer = options.placer ?? null;
    let header: ContainerHeader | null = null;
    // Base chunks read on this thread go into recycled buffers: workers send them back with their answer.
    let recycler: BufferRecycler | null = null;
    const positionalBase = base !== null && typeof base.tensorRanges === 'function';
    super(async (event: RestoreEvent): Promise<RestoredEvent> => {
      if (event.type === 'header') {
        header = event.header;
        // A base read from a stream keeps only the tensors that will be asked for.
        const h = header;
        base?.expect?.(h.entries.filter((e) => e.base).map((e) => h.tensors[e.weight]!.name));
        // A base read from a stream keeps what is read out of order in memory, up to its spill store's default limit (lib/api/restore.ts).
        const plan = planWork(header, resources, 'restore', {
          restoredOnMain: placer === null, readOnMain: base !== null && !positionalBase, heldOnMain: base?.sequential ? SPILL_MEMORY_BYTES : 0,
        });
        this.plan = plan;
        this.runner ??= new JobRunner(plan.workers);
        let eb = 1;
        for (const en of header.entries) if (en.base) eb = Math.max(eb, DTYPE_BYTES[header.tensors[en.weight]!.dtype]);
        recycler = new BufferRecycler(header.options.chunkElements * eb, Math.max(1, plan.workers));
        await placer?.prepare(header, { crc32: (ranges) => this.crc32(ranges) });
        // Only now may chunks start: their writes go to the files prepare opened (a folder's subfolders are made meanwhile).
        this.setLimit(plan.inFlight);
        return event;
      }
      if (event.type === 'footer') return event;
      if (!header || !this.runner) throw new ExcpError('ERR_CORRUPT', 'restore: chunk before header');
      const rec = event;
      const e = header.entries[rec.entry]!;
      const spec = header.tensors[e.weight]!;
      const chunkElements = header.options.chunkElements;
      const start = rec.chunk * chunkElements;
      const count = Math.min(e.elements - start, chunkElements);
      const position = { entry: rec.entry, chunk: rec.chunk, start };
      let baseBytes: Uint8Array | null = null;
      let baseReads: FileRange[] | null = null;
      if (e.base) {
        if (!base) throw new ExcpError('ERR_BASE_MISSING', `restore: tensor '${spec.name}' was compressed against a base checkpoint; pass --base`);
        const info = base.byName.get(spec.name);
        if (!info || info.dtype !== spec.dtype || info.end - info.begin !== e.elements * DTYPE_BYTES[spec.dtype]) {
          throw new ExcpError('ERR_BASE_MISMATCH', `restore: base ${base.path} has no tensor '${spec.name}' of dtype ${spec.dtype} and shape [${spec.shape.join(', ')}]`);
        }
        const eb = DTYPE_BYTES[spec.dtype];
        baseReads = positionalBase ? base.tensorRanges!(info, start * eb, (start + count) * eb) : null;
        if (!baseReads) baseBytes = await base.tensorBytes(info, start * eb, (start + count) * eb, recycler!.take(count * eb));
      }
      const runner = this.runner;
      const inWorker = runner.workers > 0;
      const payload = inWorker ? ownBuffer(rec.payload) : rec.payload;
      const writes = placer ? placer.writes(rec.entry, rec.chunk) : null;
      const job: DecodeJob = {
        kind: 'decode', chunk: rec.chunk, position, layout: layoutOf(header, rec.entry), count, what: spec.name,
        payload, check: rec.crc ?? null, base: baseBytes, baseReads, writes, keep: placer === null,
      };
      const transfer = inWorker ? [payload.buffer as ArrayBuffer, ...(baseBytes ? [baseBytes.buffer as ArrayBuffer] : [])] : [];
      const { result, inputs } = await runner.run(job, transfer);
      if (result.kind !== 'decode') throw new ExcpError('ERR_CORRUPT', 'pool: unexpected answer');
      if (inWorker) recycler!.give(inputs);
      else if (baseBytes && recycler!.pooled(baseBytes)) recycler!.give([baseBytes.buffer as ArrayBuffer]);
      const out: RestoredEvent = { type: 'chunk', entry: rec.entry, chunk: rec.chunk, restored: result.decoded };
      if (result.written !== null) out.written = result.written;
      return out;
    }, 1);
    this.resources = resources;
  }

  /**
   * The CRC-32 of file ranges, on a worker (for the writer's finishing steps).
   * @throws ExcpError ERR_IO before the header came
   */
  async crc32(ranges: readonly FileRange[]): Promise<number> {
    if (!this.runner) throw new ExcpError('ERR_IO', 'restore: no workers before the header');
    const { result } = await this.runner.run({ kind: 'crc', ranges: [...ranges] });
    if (result.kind !== 'crc') throw new ExcpError('ERR_CORRUPT', 'pool: unexpected answer');
    return result.crc;
  }

  /** The threads and memory this decoder was given. */
  get budget(): Resources {
    return this.resources;
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // On success the owner closes the workers (close()): a writer's finishing step may still use them.
    if (error) void this.runner?.close();
    callback(error);
  }

  /** Release the workers once the writer is done too (resolves once none runs). */
  async close(): Promise<void> {
    await this.runner?.close();
  }
}
