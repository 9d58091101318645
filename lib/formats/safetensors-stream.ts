/**
 * The input format "a safetensors file that comes as a stream" (stdin, a
 * FIFO, a process substitution `<(...)`): a {@link Checkpoint} whose
 * tensors are read forward, once, in any order the reader asks for them.
 *
 * A reader asks for byte ranges of tensors. A range ahead of the stream is
 * read from it; the bytes passed over on the way, when they belong to a
 * tensor that will still be asked for (see {@link SafetensorsStream.expect}),
 * wait in a {@link SpillStore} (memory, then a temporary file in the folder
 * given) until they are asked for, and are forgotten then. So what waits is
 * exactly what the stream delivers before the reader needs it: nothing when
 * the reader asks in file order, the partners of a parameter when its
 * moments come later in the file.
 *
 * Each byte of a tensor can be asked for once (the readers of excp read
 * every chunk once); asking again for bytes already delivered is an error.
 */
import { ExcpError } from '../core/errors.js';
import { type SpillOptions, SpillStore } from '../io/spill.js';
import type { Checkpoint, CheckpointFile, TensorInfo } from '../model/checkpoint.js';
import { type SafetensorsHeader, parseSafetensorsHeader, readHeaderLength } from './safetensors.js';
import { fileOf } from './safetensors-file.js';

/** Bytes a waiting tensor is cut into in the store (the unit that is freed once read). */
const SEGMENT_BYTES = 1 << 20;

/** A waiting byte range of a tensor: [at, at + length) relative to the tensor, `left` bytes not yet read. */
interface Segment {
  at: number;
  length: number;
  left: number;
}

/** Where bytes come from: the stream's pieces, in order. */
class ByteQueue {
  private readonly iterator: AsyncIterator<Uint8Array>;
  private head: Uint8Array | null = null;

  constructor(source: AsyncIterable<Uint8Array>) {
    this.iterator = source[Symbol.asyncIterator]();
  }

  /** The next bytes (at most `max`), or null at the end of the stream. */
  async next(max: number): Promise<Uint8Array | null> {
    while (!this.head || this.head.length === 0) {
      const r = await this.iterator.next();
      if (r.done) return null;
      this.head = r.value instanceof Uint8Array ? r.value : new Uint8Array(r.value as ArrayBuffer);
    }
    const out = this.head.subarray(0, Math.min(max, this.head.length));
    this.head = this.head.subarray(out.length);
    return out;
  }

  /** Exactly n bytes, or fewer at the end of the stream. */
  async exactly(n: number): Promise<Uint8Array> {
    const out = new Uint8Array(n);
    let done = 0;
    while (done < n) {
      const piece = await this.next(n - done);
      if (!piece) return out.subarray(0, done);
      out.set(piece, done);
      done += piece.length;
    }
    return out;
  }

  /** Stop reading the source (a reader that is done early). */
  async close(): Promise<void> {
    await this.iterator.return?.();
  }
}

/** A safetensors file read forward from a stream. */
export class SafetensorsStream implements Checkpoint {
  /** Read forward only: readers should ask in the order of the bytes (lib/stream/source.ts does). */
  readonly sequential = true;
  readonly path: string;
  readonly header: SafetensorsHeader;
  readonly byName: Map<string, TensorInfo>;
  readonly files: CheckpointFile[];
  readonly info = null;
  private readonly bytes: ByteQueue;
  private readonly store: SpillStore;
  /** Data-relative offset of the next byte of the stream. */
  private position = 0;
  /** Index (in header.tensors) of the tensor at `position`. */
  private cursor = 0;
  private wanted: Set<string> | null = null;
  private readonly waiting = new Map<string, Segment[]>();
  private queue: Promise<unknown> = Promise.resolve();
  /** The segment being filled: passed bytes of one tensor, not yet in the store. */
  private open: { name: string; at: number; bytes: Uint8Array; length: number } | null = null;

  private constructor(path: string, header: SafetensorsHeader, bytes: ByteQueue, store: SpillStore) {
    this.path = path;
    this.header = header;
    this.bytes = bytes;
    this.store = store;
    this.byName = new Map(header.tensors.map((t) => [t.name, t]));
    this.files = fileOf(header);
  }

  /**
   * Read the header of a safetensors stream.
   * @param source the stream's bytes
   * @param path its name in messages (`stdin`, the FIFO's path)
   * @param options where waiting bytes go (memory limit, folder)
   * @throws ExcpError ERR_TRUNCATED (an empty or short stream), the header's errors, with the name
   */
  static async open(source: AsyncIterable<Uint8Array>, path: string, options: SpillOptions = {}): Promise<SafetensorsStream> {
    const bytes = new ByteQueue(source);
    try {
      const first = await bytes.exactly(8);
      if (first.length === 0) throw new ExcpError('ERR_TRUNCATED', 'no input (0 bytes)');
      const n = readHeaderLength(first);
      const rest = await bytes.exactly(n);
      if (rest.length < n) throw new ExcpError('ERR_TRUNCATED', `safetensors: the stream ended after ${8 + rest.length} bytes, inside a header of ${8 + n}`);
      const raw = new Uint8Array(8 + n);
      raw.set(first);
      raw.set(rest, 8);
      return new SafetensorsStream(path, parseSafetensorsHeader(raw), bytes, new SpillStore(options));
    } catch (e) {
      await bytes.close();
      if (e instanceof ExcpError) throw new ExcpError(e.code, `${path}: ${e.message}`, { cause: e });
      throw e;
    }
  }

  get tensors(): readonly TensorInfo[] {
    return this.header.tensors;
  }

  get dataLength(): number {
    return this.header.dataLength;
  }

  /** Bytes that waited on disk so far (what a pipe cost in temporary space). */
  get spilledBytes(): number {
    return this.store.spilledBytes;
  }

  /**
   * Say which tensors will be asked for: the others are skipped, not kept,
   * when the stream passes them. Without this call every tensor is kept.
   * @param names the tensors a reader will ask for
   */
  expect(names: Iterable<string>): void {
    this.wanted = new Set(names);
  }

  /**
   * Bytes [start, end) of a tensor: from the store when the stream has
   * passed them, else read forward.
   * @throws ExcpError ERR_TRUNCATED when the stream ends first; ERR_INVALID_ARG for bytes asked for twice
   */
  tensorBytes(info: TensorInfo, start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    const run = this.queue.then(() => this.read(info, start, end, into));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async read(info: TensorInfo, start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    const out = into && into.length === end - start ? into : new Uint8Array(end - start);
    const passed = Math.min(end, Math.max(start, this.position - info.begin));
    if (passed > start) this.fromStore(info, start, passed, out);
    if (end > passed) await this.forward(info.begin + end, info, info.begin + passed, out, passed - start);
    return out;
  }

  /** Copy [start, end) of a tensor from its waiting segments, forgetting the ones read whole. */
  private fromStore(info: TensorInfo, start: number, end: number, out: Uint8Array): void {
    const segments = this.waiting.get(info.name) ?? [];
    let covered = 0;
    for (const s of segments) {
      const from = Math.max(start, s.at);
      const to = Math.min(end, s.at + s.length);
      if (from >= to) continue;
      const key = `${info.name}\0${s.at}`;
      const bytes = this.store.get(key);
      if (!bytes) throw new ExcpError('ERR_INVALID_ARG', `${this.path}: bytes of '${info.name}' were read twice`);
      out.set(bytes.subarray(from - s.at, to - s.at), from - start);
      covered += to - from;
      s.left -= to - from;
      if (s.left <= 0) this.store.delete(key);
    }
    if (covered !== end - start) {
      throw new ExcpError('ERR_INVALID_ARG', `${this.path}: bytes ${start}..${end} of '${info.name}' were passed without being kept (read twice, or not announced by expect())`);
    }
    const left = segments.filter((s) => s.left > 0);
    if (left.length) this.waiting.set(info.name, left);
    else this.waiting.delete(info.name);
  }

  /**
   * Read the stream up to data offset `until`: the target's bytes from
   * `deliverFrom` on go into `out` (at `outAt`), other bytes are kept when
   * wanted.
   */
  private async forward(until: number, target: TensorInfo, deliverFrom: number, out: Uint8Array, outAt: number): Promise<void> {
    const tensors = this.header.tensors;
    try {
      while (this.position < until) {
        while (this.cursor < tensors.length && tensors[this.cursor]!.end <= this.position) this.cursor++;
        const t = tensors[this.cursor]!;
        let stop = Math.min(until, t.end);
        if (this.position < deliverFrom && deliverFrom < stop) stop = deliverFrom;
        const piece = await this.bytes.next(stop - this.position);
        if (!piece) {
          throw new ExcpError('ERR_TRUNCATED', `${this.path}: the stream ended at byte ${this.header.dataOffset + this.position}, inside tensor '${t.name}'; its header says the file has ${this.header.dataOffset + this.header.dataLength}`);
        }
        if (t === target && this.position >= deliverFrom) out.set(piece, outAt + this.position - deliverFrom);
        else if (this.wanted === null || this.wanted.has(t.name)) this.keep(t, this.position - t.begin, piece);
        this.position += piece.length;
      }
    } finally {
      this.flush();
    }
  }

  /** Keep passed bytes of a tensor, in segments of at most SEGMENT_BYTES aligned to it. */
  private keep(t: TensorInfo, at: number, bytes: Uint8Array): void {
    let done = 0;
    while (done < bytes.length) {
      const here = at + done;
      if (this.open && (this.open.name !== t.name || this.open.at + this.open.length !== here)) this.flush();
      if (!this.open) {
        const size = Math.min(SEGMENT_BYTES - (here % SEGMENT_BYTES), t.end - t.begin - here);
        this.open = { name: t.name, at: here, bytes: new Uint8Array(size), length: 0 };
      }
      const open = this.open;
      const n = Math.min(open.bytes.length - open.length, bytes.length - done);
      open.bytes.set(bytes.subarray(done, done + n), open.length);
      open.length += n;
      done += n;
      if (open.length === open.bytes.length) this.flush();
    }
  }

  /** Put the open segment into the store. */
  private flush(): void {
    const open = this.open;
    if (!open || open.length === 0) return;
    this.open = null;
    let list = this.waiting.get(open.name);
    if (!list) this.waiting.set(open.name, (list = []));
    this.store.put(`${open.name}\0${open.at}`, open.length === open.bytes.length ? open.bytes : open.bytes.slice(0, open.length));
    list.push({ at: open.at, length: open.length, left: open.length });
  }

  /**
   * Read the stream to its end (after the last tensor was read): a writer
   * into a Duplex waits until its bytes are taken, and bytes after the data
   * are an error as for a file.
   * @throws ExcpError ERR_TRAILING_DATA
   */
  async end(): Promise<void> {
    const rest = this.header.dataLength - this.position;
    this.wanted = new Set();
    if (rest > 0) await this.forward(this.header.dataLength, this.header.tensors[this.header.tensors.length - 1]!, this.header.dataLength, new Uint8Array(0), 0);
    let extra = 0;
    for (let piece = await this.bytes.next(1 << 20); piece; piece = await this.bytes.next(1 << 20)) extra += piece.length;
    if (extra > 0) throw new ExcpError('ERR_TRAILING_DATA', `${this.path}: ${extra} bytes after the last tensor (the header says the file has ${this.header.dataOffset + this.header.dataLength})`);
  }

  /** Stop reading and drop what waits. */
  async close(): Promise<void> {
    this.store.dispose();
    this.waiting.clear();
    await this.bytes.close();
  }
}
