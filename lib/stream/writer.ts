/**
 * SafetensorsWriter: restored chunks -> the safetensors file, byte for byte
 * in the original tensor order, and the fingerprint check at the end.
 *
 * Chunks arrive entry by entry (a weight with its moments), files list
 * tensors in their own order; what cannot be written yet waits in a
 * SpillStore (memory, then a temporary file), so memory stays bounded.
 */
import { Transform, type TransformCallback } from 'node:stream';
import type { ContainerFooter, ContainerHeader } from '../container/format.js';
import { DTYPE_BYTES, elementCount } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { Hasher, fingerprintTensors } from '../core/hash.js';
import { packSlices } from '../model/pack.js';
import { parseSafetensorsHeader } from '../formats/safetensors.js';
import type { RestoredEvent, RestoredRecord } from './codec.js';
import { SpillStore } from './spill.js';

const encoder = new TextEncoder();

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

/**
 * Check a stored safetensors header against the container's tensor table.
 * @returns the raw header bytes
 */
export function checkedRawHeader(header: ContainerHeader, rawBase64: string, tensors: number[]): Uint8Array {
  const raw = new Uint8Array(Buffer.from(rawBase64, 'base64'));
  const parsed = parseSafetensorsHeader(raw);
  const ok = parsed.tensors.length === tensors.length && parsed.tensors.every((t, i) => {
    const spec = header.tensors[tensors[i]!];
    return spec && spec.name === t.name && spec.dtype === t.dtype && spec.shape.length === t.shape.length && spec.shape.every((d, j) => d === t.shape[j]);
  });
  if (!ok) throw new ExcpError('ERR_BAD_HEADER', 'container: stored safetensors header does not match the tensor table');
  return raw;
}

/** RestoredEvent -> safetensors bytes (one file: the container's first file). */
export class SafetensorsWriter extends Transform {
  private header: ContainerHeader | null = null;
  private order: number[] = [];
  private sizes: number[] = [];
  private cursor = 0;
  private cursorOffset = 0;
  private readonly spill = new SpillStore(SPILL_MEMORY);
  private hashers: Hasher[] = [];
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
    if (header.files.length !== 1 || !file || file.kind !== 'safetensors') {
      throw new ExcpError('ERR_BAD_HEADER', 'restore: this container holds a checkpoint folder; restore it to a folder with -o DIR');
    }
    this.header = header;
    const raw = checkedRawHeader(header, file.rawHeader, file.tensors);
    this.order = file.tensors;
    this.sizes = header.tensors.map((t) => elementCount(t.shape, t.name) * DTYPE_BYTES[t.dtype]);
    this.hashers = header.tensors.map(() => new Hasher());
    this.totalBytes = this.sizes.reduce((a, b) => a + b, 0);
    this.push(raw);
    this.advance();
  }

  private onChunk(record: RestoredRecord): void {
    this.restoredBytes += takeRestoredChunk(this.header, record, this.hashers, (t, bytes, offset) => {
      if (t === this.order[this.cursor] && offset === this.cursorOffset) this.emitBytes(bytes);
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

  /** Move past finished (and empty) tensors. */
  private advance(): void {
    while (this.cursor < this.order.length && this.cursorOffset >= this.sizes[this.order[this.cursor]!]!) {
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
    while (this.cursor < this.order.length) {
      const key = `${this.order[this.cursor]}:${this.cursorOffset}`;
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
      if (this.cursor < this.order.length || this.spill.size > 0) throw new ExcpError('ERR_TRUNCATED', 'restore: the container ended before every tensor was restored');
      if (!this.footer) throw new ExcpError('ERR_TRUNCATED', 'restore: no footer');
      verifyFingerprints(header, this.footer, this.hashers.map((h) => h.digest()));
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

/**
 * Take one restored chunk, for both writers: fold each member tensor's
 * digest into its hash and hand its bytes on with their byte offset in the
 * tensor.
 * @param header the container header (null: no header came yet)
 * @param record the restored chunk
 * @param hashers one per tensor
 * @param place receives tensor index, bytes and byte offset, in member order (weight, exp_avg, exp_avg_sq; a pack's non-empty members)
 * @returns the bytes taken
 * @throws ExcpError ERR_CORRUPT for a chunk before the header or a missing digest
 */
export function takeRestoredChunk(header: ContainerHeader | null, record: RestoredRecord, hashers: Hasher[],
  place: (tensor: number, bytes: Uint8Array, offset: number) => void): number {
  if (!header) throw new ExcpError('ERR_CORRUPT', 'restore: chunk before header');
  const e = header.entries[record.entry]!;
  if (e.kind === 'pack') {
    // One digest per non-empty member (the codec's `pieces`), as the writer hashed them.
    const { weight, digests } = record.restored;
    packSlices(header.tensors, e, weight).forEach((m, i) => {
      const digest = digests[i];
      if (digest === undefined) throw new ExcpError('ERR_CORRUPT', 'restore: chunk digest missing');
      hashers[m.tensor]!.update(encoder.encode(digest));
      place(m.tensor, m.bytes, 0);
    });
    return weight.length;
  }
  const { weight, expAvg, expAvgSq, digests } = record.restored;
  const buffers = [weight, expAvg, expAvgSq];
  let d = 0;
  let taken = 0;
  [e.weight, e.expAvg, e.expAvgSq].forEach((t, i) => {
    const bytes = buffers[i];
    if (t === null || !bytes) return;
    const digest = digests[d++];
    if (digest === undefined) throw new ExcpError('ERR_CORRUPT', 'restore: chunk digest missing');
    hashers[t]!.update(encoder.encode(digest));
    taken += bytes.length;
    place(t, bytes, record.chunk * header.options.chunkElements * DTYPE_BYTES[header.tensors[t]!.dtype]);
  });
  return taken;
}

/**
 * Compare restored tensor hashes with the footer.
 * @throws ExcpError ERR_FINGERPRINT naming the first differing tensor
 */
export function verifyFingerprints(header: ContainerHeader, footer: ContainerFooter, hashes: string[]): void {
  hashes.forEach((h, i) => {
    if (footer.tensorHashes && h !== footer.tensorHashes[i]) {
      throw new ExcpError('ERR_FINGERPRINT', `restore: tensor '${header.tensors[i]!.name}' restored to different bytes than recorded at compression`);
    }
  });
  const target = fingerprintTensors(header.tensors.map((t, i) => ({ name: t.name, dtype: t.dtype, shape: t.shape, hash: hashes[i]! })));
  if (target !== footer.targetFingerprint) throw new ExcpError('ERR_FINGERPRINT', 'restore: checkpoint fingerprint differs from the one recorded at compression');
}
