/**
 * StreamWriter: restored chunks -> the bytes of a single-file container's
 * file, front to back (a pipe, stdout), and the fingerprint check at the end.
 *
 * The file's kind places its bytes (lib/formats/file-format.ts): fixed bytes
 * (a safetensors header) and tensors at offsets. Chunks arrive entry by
 * entry (a weight with its moments) while the file lists tensors in its own
 * order; what cannot be written yet waits in a SpillStore (memory, then a
 * temporary file), so memory stays bounded. A file kind with a finishing
 * or fixing step (a torch.save zip, whose CRCs follow its data) cannot be
 * streamed: such a container is restored to a file.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { DTYPE_BYTES, elementCount } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { HasherList } from '../core/hash.js';
import { type RestoredRecord, takeRestoredChunk, verifyFingerprints } from '../container/verify.js';
import type { ContainerFooter, ContainerHeader } from '../model/checkpoint.js';
import { fileFormat } from '../formats/registry.js';
import type { RestoredEvent } from './codec.js';
import { SpillStore } from '../io/spill.js';

/**
 * Bytes the readable side may hold before spilled data waits for the reader
 * (drain). Without it, finishing a weight released its whole moments from
 * the spill file at once: hundreds of MB for a large embedding.
 */
const DRAIN_BYTES = 4 * 1024 * 1024;

/**
 * Spilled bytes kept in memory (the rest goes to a temporary file): enough
 * for the small tensors of an entry, while the large ones go to disk anyway.
 */
const SPILL_MEMORY = 4 * 1024 * 1024;

/** RestoredEvent -> the bytes of the container's one file. */
export class StreamWriter extends Transform {
  private header: ContainerHeader | null = null;
  /** The file front to back: fixed bytes, or a tensor's index. */
  private sequence: (number | Uint8Array)[] = [];
  private sizes: number[] = [];
  private cursor = 0;
  private cursorOffset = 0;
  private readonly spill = new SpillStore(SPILL_MEMORY);
  private hashers = new HasherList(0);
  private footer: ContainerFooter | null = null;
  private restoredBytes = 0;
  private totalBytes = 0;
  private readonly onProgress: ((done: number, total: number) => void) | undefined;
  /** _flush's callback while spilled data still waits for the reader. */
  private pendingFlush: TransformCallback | null = null;

  /** @param onProgress called with tensor bytes restored so far and in all */
  constructor(onProgress?: (done: number, total: number) => void) {
    super({ writableObjectMode: true, readableObjectMode: false, writableHighWaterMark: 1 });
    this.onProgress = onProgress;
  }

  override _transform(event: RestoredEvent, _enc: BufferEncoding, callback: TransformCallback): void {
    try {
      if (event.type === 'header') this.onHeader(event.header);
      else if (event.type === 'footer') this.footer = event.footer;
      else this.onChunk(event);
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  private onHeader(header: ContainerHeader): void {
    const file = header.files[0];
    if (header.files.length !== 1 || !file || file.path !== null) {
      throw new ExcpError('ERR_BAD_HEADER', 'restore: this container holds a checkpoint folder; restore it to a folder with -o DIR');
    }
    const placement = fileFormat(file.kind).place(file, header.tensors);
    if (placement.finish || placement.patch) {
      throw new ExcpError('ERR_USAGE', `restore: a ${file.kind} file cannot be written to a pipe (its zip CRCs are fixed after its data is written); restore it to a file with -o FILE`);
    }
    const pieces: { offset: number; piece: number | Uint8Array }[] = placement.fixed.map((f) => ({ offset: f.offset, piece: f.bytes }));
    for (const { tensor, target } of placement.targets) {
      if (!('offset' in target)) throw new ExcpError('ERR_USAGE', `restore: a ${file.kind} file cannot be written to a pipe; restore it to a file with -o FILE`);
      pieces.push({ offset: target.offset, piece: tensor });
    }
    // Stable: a fixed piece before an empty tensor at the same offset.
    pieces.sort((a, b) => a.offset - b.offset);
    this.header = header;
    this.sequence = pieces.map((p) => p.piece);
    this.sizes = header.tensors.map((t) => elementCount(t.shape, t.name) * DTYPE_BYTES[t.dtype]);
    this.hashers = new HasherList(header.tensors.length);
    this.totalBytes = this.sizes.reduce((a, b) => a + b, 0);
    this.advance();
  }

  private onChunk(record: RestoredRecord): void {
    this.restoredBytes += takeRestoredChunk(this.header, record, this.hashers, (t, bytes, offset) => {
      if (t === this.sequence[this.cursor] && offset === this.cursorOffset) this.emitBytes(bytes);
      else this.spill.put(`${t}:${offset}`, bytes);
    });
    this.drain();
    this.onProgress?.(this.restoredBytes, this.totalBytes);
  }

  private emitBytes(bytes: Uint8Array): void {
    this.push(bytes);
    this.cursorOffset += bytes.length;
    this.advance();
  }

  /** Move past finished (and empty) tensors, writing the fixed bytes met on the way. */
  private advance(): void {
    while (this.cursor < this.sequence.length) {
      const piece = this.sequence[this.cursor]!;
      if (piece instanceof Uint8Array) {
        this.push(piece);
      } else if (this.cursorOffset < this.sizes[piece]!) {
        return;
      }
      this.cursor++;
      this.cursorOffset = 0;
    }
  }

  /**
   * Emit spilled bytes that are next in the file, until the readable side
   * holds DRAIN_BYTES.
   * @param force push at least one piece if one is ready, whatever the
   *   readable side holds: _read must push when it can. Readable calls _read
   *   with data still buffered (a flowing read takes the whole buffer), and
   *   a _read that pushes nothing leaves the stream "reading" with nobody to
   *   push: restore then ended with exit code 0 and no output once a piece
   *   was as large as DRAIN_BYTES (a chunk of 2^21 float32 elements).
   * @returns true when it stopped because the reader has not taken enough yet (more is ready)
   */
  private drain(force = false): boolean {
    let pushed = false;
    while (this.cursor < this.sequence.length) {
      const key = `${this.sequence[this.cursor] as number}:${this.cursorOffset}`;
      if (this.readableLength >= DRAIN_BYTES && !(force && !pushed)) return this.spill.has(key);
      const next = this.spill.take(key);
      if (!next) return false;
      this.emitBytes(next);
      pushed = true;
    }
    return false;
  }

  override _read(size: number): void {
    super._read(size);
    this.drain(true);
    if (this.pendingFlush) this.finish(this.pendingFlush);
  }

  override _flush(callback: TransformCallback): void {
    this.finish(callback);
  }

  private finish(callback: TransformCallback): void {
    this.pendingFlush = null;
    try {
      if (this.drain()) {
        this.pendingFlush = callback;
        return;
      }
      const header = this.header;
      if (!header) throw new ExcpError('ERR_TRUNCATED', 'restore: no container header');
      if (this.cursor < this.sequence.length || this.spill.size > 0) throw new ExcpError('ERR_TRUNCATED', 'restore: the container ended before every tensor was restored');
      if (!this.footer) throw new ExcpError('ERR_TRUNCATED', 'restore: no footer');
      verifyFingerprints(header, this.footer, this.hashers.digests());
      this.spill.dispose();
      callback();
    } catch (err) {
      this.spill.dispose();
      callback(err as Error);
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.spill.dispose();
    callback(error);
  }
}
