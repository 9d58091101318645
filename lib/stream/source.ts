/**
 * ChunkSource: the checkpoint entry by entry, chunk by chunk, with the
 * matching base bytes, as the first object stream of compress. Reading by
 * entry (not by file order) is what lets a parameter and its moments be
 * pruned jointly wherever the writer put them in the file.
 *
 * Where the checkpoints are files (Checkpoint.tensorRanges), a job names
 * the file ranges of its bytes and the worker that codes it reads them:
 * the main thread touches no chunk byte. Otherwise (a checkpoint in memory,
 * a stream, or a stream's base check that looks at every chunk) the bytes
 * are read here.
 */
import { Readable } from 'node:stream';
import { DTYPE_BYTES } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { BufferRecycler } from '../pool/pool.js';
import { entryRawBytes, entryTensors } from '../model/pack.js';
import type { ChunkInput } from '../method/reconstruct.js';
import type { Checkpoint, ContainerHeader, EntrySpec, FileRange, TensorInfo } from '../model/checkpoint.js';
import type { ChunkReads } from '../pool/jobs.js';

/** One unit of work for the encoder: its bytes (`input`), or where to read them (`reads`). */
export interface ChunkJob {
  entry: number;
  chunk: number;
  input: ChunkInput | null;
  reads: ChunkReads | null;
  /**
   * Set when every input buffer came from the source's recycler: the coder
   * hands the buffers back through it once the chunk is coded (and then
   * may transfer the views' whole buffers, which hold nothing else).
   */
  release?: (buffers: ArrayBuffer[]) => void;
}

/** @throws ExcpError ERR_BAD_HEADER when the checkpoint has no tensor of this name */
function tensorInfo(file: Checkpoint, name: string): TensorInfo {
  const info = file.byName.get(name);
  if (!info) throw new ExcpError('ERR_BAD_HEADER', `${file.path}: tensor '${name}' is missing`);
  return info;
}

/** Options of a {@link ChunkSource}. */
export interface SourceOptions {
  /** Entry indices in reading order (default: container order). */
  order?: readonly number[] | undefined;
  /** Sees every job before it goes on (with its bytes: they are then read here, not by the workers). */
  observe?: ((job: ChunkJob) => void) | undefined;
  /** Called after the last job; may throw to fail the stream. */
  finish?: (() => void) | undefined;
}

/** Readable (object mode) of {@link ChunkJob}s, in container order unless told otherwise. */
export class ChunkSource extends Readable {
  private readonly header: ContainerHeader;
  private readonly current: Checkpoint;
  private readonly base: Checkpoint | null;
  /** Position in `order` of the entry being read. */
  private step = 0;
  private chunk = 0;
  /** Entries in reading order (container order, or a stream's, see streamReadOrder). */
  private readonly order: readonly number[];
  private readonly observe: ((job: ChunkJob) => void) | undefined;
  private readonly finish: (() => void) | undefined;
  private reading = false;
  /** Whether jobs name file ranges (the workers read) rather than carry bytes. */
  readonly positional: boolean;
  /** Read buffers, reused chunk after chunk (float32 chunks fit a slot). */
  private readonly recycler: BufferRecycler;
  private readonly release: (buffers: ArrayBuffer[]) => void;

  /**
   * @param header the planned container header
   * @param current the checkpoint being compressed
   * @param base the base checkpoint, or null
   * @param options `order`: entry indices in reading order (default: container
   *   order; jobs then come out of container order and need a RecordReorder);
   *   `observe`: sees every job before it goes on, `finish`: called after the
   *   last, may throw to fail the stream (the base check of a stream)
   */
  constructor(header: ContainerHeader, current: Checkpoint, base: Checkpoint | null, options: SourceOptions = {}) {
    // One job read ahead: the encoder keeps its own in-flight queue.
    super({ objectMode: true, highWaterMark: 1 });
    this.header = header;
    this.current = current;
    this.base = base;
    this.order = options.order ?? header.entries.map((_e, i) => i);
    this.observe = options.observe;
    this.finish = options.finish;
    this.recycler = new BufferRecycler(Math.max(64, header.options.chunkElements * 4), 64);
    this.release = (buffers) => this.recycler.give(buffers);
    // An observer looks at every job's bytes (the base check of a stream), so they are read here then.
    this.positional = options.observe === undefined && typeof current.tensorRanges === 'function' && (base === null || typeof base.tensorRanges === 'function');
  }

  /** The file ranges of bytes [start, end) of a tensor, or null when the checkpoint gives none. */
  private ranges(file: Checkpoint, name: string, start: number, end: number): FileRange[] | null {
    return file.tensorRanges?.(tensorInfo(file, name), start, end) ?? null;
  }

  /** A job whose bytes the worker reads, or null when some tensor has no file ranges. */
  private positionalJob(entry: number, e: EntrySpec, start: number, end: number): ChunkJob | null {
    const { tensors } = this.header;
    const of = (tensor: number | null, file: Checkpoint | null): FileRange[] | null => {
      if (tensor === null || file === null) return null;
      const eb = DTYPE_BYTES[tensors[tensor]!.dtype];
      return this.ranges(file, tensors[tensor]!.name, start * eb, end * eb);
    };
    if (e.kind === 'pack') {
      const weight: FileRange[] = [];
      for (const t of entryTensors(e)) {
        const info = tensorInfo(this.current, tensors[t]!.name);
        const r = this.ranges(this.current, info.name, 0, info.end - info.begin);
        if (!r) return null;
        weight.push(...r);
      }
      return { entry, chunk: 0, input: null, reads: { weight, base: null, expAvg: null, expAvgSq: null } };
    }
    const weight = of(e.weight, this.current);
    const base = e.base ? of(e.weight, this.base) : null;
    const expAvg = of(e.expAvg, this.current);
    const expAvgSq = of(e.expAvgSq, this.current);
    if (!weight || (e.base && !base) || (e.expAvg !== null && !expAvg) || (e.expAvgSq !== null && !expAvgSq)) return null;
    return { entry, chunk: this.chunk, input: null, reads: { weight, base, expAvg, expAvgSq } };
  }

  override _read(): void {
    if (this.reading) return;
    this.reading = true;
    this.next().then(
      (job) => {
        this.reading = false;
        try {
          if (job) this.observe?.(job);
          else this.finish?.();
        } catch (err) {
          this.destroy(err as Error);
          return;
        }
        this.push(job);
      },
      (err: unknown) => this.destroy(err as Error),
    );
  }

  private async next(): Promise<ChunkJob | null> {
    const { entries, tensors, options } = this.header;
    while (this.step < this.order.length) {
      const entry = this.order[this.step]!;
      const e = entries[entry]!;
      const start = this.chunk * options.chunkElements;
      if (start >= e.elements) {
        this.step++;
        this.chunk = 0;
        continue;
      }
      const end = Math.min(e.elements, start + options.chunkElements);
      const positional = this.positional ? this.positionalJob(entry, e, start, end) : null;
      if (positional) {
        this.chunk++;
        return positional;
      }
      if (e.kind === 'pack') {
        this.chunk++;
        return { entry, chunk: 0, input: { weight: await this.readPack(e), base: null, expAvg: null, expAvgSq: null }, reads: null };
      }
      let pooled = true;
      const read = async (tensor: number | null, file: Checkpoint | null): Promise<Uint8Array | null> => {
        if (tensor === null || file === null) return null;
        const spec = tensors[tensor]!;
        const info = tensorInfo(file, spec.name);
        const eb = DTYPE_BYTES[spec.dtype];
        const into = this.recycler.take((end - start) * eb);
        const bytes = await file.tensorBytes(info, start * eb, end * eb, into);
        if (bytes !== into || !this.recycler.pooled(bytes)) pooled = false;
        return bytes;
      };
      const [weight, base, expAvg, expAvgSq] = await Promise.all([
        read(e.weight, this.current),
        e.base ? read(e.weight, this.base) : Promise.resolve(null),
        read(e.expAvg, this.current),
        read(e.expAvgSq, this.current),
      ]);
      const job: ChunkJob = { entry, chunk: this.chunk, input: { weight: weight!, base, expAvg, expAvgSq }, reads: null };
      if (pooled) job.release = this.release;
      this.chunk++;
      return job;
    }
    return null;
  }

  /** A pack's members read whole and concatenated (at most one chunk of bytes). */
  private async readPack(e: EntrySpec): Promise<Uint8Array> {
    const { tensors } = this.header;
    const out = new Uint8Array(entryRawBytes(tensors, e));
    let at = 0;
    for (const t of entryTensors(e)) {
      const info = tensorInfo(this.current, tensors[t]!.name);
      const size = info.end - info.begin;
      const view = out.subarray(at, at + size);
      const bytes = await this.current.tensorBytes(info, 0, size, view);
      if (bytes !== view) view.set(bytes);
      at += size;
    }
    return out;
  }
}
