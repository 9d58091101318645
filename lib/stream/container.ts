/**
 * ContainerWriter (encoded records -> bytes) and ContainerReader (bytes ->
 * header, chunk records, footer), the framing stage of spec/FORMAT.md.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { type ContainerFooter, type ContainerHeader, type FooterEntry, HEAD_FIXED_BYTES, TRAILER_BYTES, chunkCount, decodeFooter, decodeHeader, decodeTrailer, encodeHead, encodeRecord, encodeTail, maxPayloadBytes, readPreambleInfo, recordCrc, recordCrcPrefix } from '../container/format.js';
import { FORMAT_VERSION, RECORD_CHUNK, RECORD_FOOTER, MAX_BODY_BYTES } from '../core/constants.js';
import { ExcpError } from '../core/errors.js';
import { Hasher, fingerprintTensors } from '../core/hash.js';
import { digestTensors } from '../model/pack.js';
import type { EncodedRecord, RestoreEvent } from './codec.js';

const encoder = new TextEncoder();

/** Tracks what a sequence of chunk records must look like: entries in order, chunks in order. */
export class RecordOrder {
  private readonly counts: number[];
  private entry = 0;
  private chunk = 0;

  constructor(header: ContainerHeader) {
    this.counts = header.entries.map((e) => chunkCount(e, header.options.chunkElements));
    this.skipEmpty();
  }

  private skipEmpty(): void {
    while (this.entry < this.counts.length && this.chunk >= this.counts[this.entry]!) {
      this.entry++;
      this.chunk = 0;
    }
  }

  /** @throws ExcpError ERR_CORRUPT unless (entry, chunk) is the next expected record */
  accept(entry: number, chunk: number): void {
    if (entry !== this.entry || chunk !== this.chunk) {
      throw new ExcpError('ERR_CORRUPT', `container: record (entry ${entry}, chunk ${chunk}) out of order; expected (entry ${this.entry}, chunk ${this.chunk})`);
    }
    this.chunk++;
    this.skipEmpty();
  }

  get done(): boolean {
    return this.entry >= this.counts.length;
  }

  /** The record expected next (meaningless when done). */
  get next(): { entry: number; chunk: number } {
    return { entry: this.entry, chunk: this.chunk };
  }
}

/**
 * Per-tensor hashes in the footer: 'always', or 'auto': left out when they
 * would be more than 1/HASH_SHARE of the container (many small tensors, as
 * in a small model's lossless keyframe, where 8 bytes a tensor was 4% of the
 * fixture folder's container). They name the tensor that differs and let
 * `excp chain` check links before restoring; the fingerprints, stored either
 * way, still check every restored byte.
 */
export type TensorHashes = 'auto' | 'always';

/** See {@link TensorHashes}. */
const HASH_SHARE = 100;

/** EncodedRecord (object) -> container bytes. */
export class ContainerWriter extends Transform {
  private readonly header: ContainerHeader;
  private readonly order: RecordOrder;
  private offset = 0;
  private readonly footerEntries: FooterEntry[];
  private readonly tensorHashers: Hasher[];
  private readonly baseHashers: (Hasher | null)[];
  private started = false;
  private readonly hashes: TensorHashes;

  /**
   * @param header the container header, written first
   * @param hashes whether the footer keeps per-tensor hashes (see {@link TensorHashes})
   */
  constructor(header: ContainerHeader, hashes: TensorHashes = 'auto') {
    super({ writableObjectMode: true, readableObjectMode: false, writableHighWaterMark: 2 });
    this.header = header;
    this.hashes = hashes;
    this.order = new RecordOrder(header);
    this.footerEntries = header.entries.map(() => ({ offsets: [], codedBytes: 0, keptWeights: 0, keptMoments: 0, entropyBits: 0, symbolBits: 0 }));
    this.tensorHashers = header.tensors.map(() => new Hasher());
    this.baseHashers = header.tensors.map((t, i) => (header.entries[t.entry]!.base && header.entries[t.entry]!.weight === i ? new Hasher() : null));
  }

  private out(bytes: Uint8Array): void {
    this.offset += bytes.length;
    this.push(bytes);
  }

  private start(): void {
    if (this.started) return;
    this.started = true;
    this.out(encodeHead(this.header));
  }

  override _transform(rec: EncodedRecord, _enc: BufferEncoding, callback: TransformCallback): void {
    try {
      this.start();
      this.order.accept(rec.entry, rec.chunk);
      const e = this.header.entries[rec.entry]!;
      const fe = this.footerEntries[rec.entry]!;
      fe.offsets.push(this.offset);
      const bytes = encodeRecord({ entry: rec.entry, chunk: rec.chunk, payload: rec.payload });
      fe.codedBytes += bytes.length;
      fe.keptWeights += rec.stats.keptWeights;
      fe.keptMoments += rec.stats.keptMoments;
      fe.entropyBits = (fe.entropyBits ?? 0) + (rec.stats.entropyBits ?? 0);
      fe.symbolBits = (fe.symbolBits ?? 0) + (rec.stats.symbolBits ?? 0);
      digestTensors(this.header.tensors, e).forEach((t, i) => this.tensorHashers[t]!.update(encoder.encode(rec.digests[i]!)));
      if (rec.baseDigest) this.baseHashers[e.weight]?.update(encoder.encode(rec.baseDigest));
      this.out(bytes);
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      this.start();
      if (!this.order.done) throw new ExcpError('ERR_TRUNCATED', 'container: input ended before every chunk was coded');
      for (const fe of this.footerEntries) fe.entropyBits = Math.round(fe.entropyBits ?? 0);
      const footer = buildFooter(this.header, this.footerEntries, this.tensorHashers.map((h) => h.digest()), this.baseHashers.map((h) => h?.digest() ?? null));
      const storedHashBytes = 8 * (this.tensorHashers.length + this.baseHashers.filter((h) => h !== null).length);
      if (this.hashes === 'auto' && storedHashBytes * HASH_SHARE > this.offset) {
        footer.tensorHashes = null;
        footer.baseHashes = null;
      }
      this.out(encodeTail(footer, this.offset, this.header));
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }
}

/**
 * The footer from per-tensor hashes.
 * @returns the footer with fingerprints
 */
export function buildFooter(header: ContainerHeader, entries: FooterEntry[], tensorHashes: string[], baseHashes: (string | null)[]): ContainerFooter {
  const described = (hashes: (string | null)[]) => header.tensors
    .map((t, i) => ({ name: t.name, dtype: t.dtype, shape: t.shape, hash: hashes[i] ?? null }))
    .filter((t): t is { name: string; dtype: typeof t.dtype; shape: number[]; hash: string } => t.hash !== null);
  const baseList = described(baseHashes);
  return {
    entries,
    tensorHashes,
    baseHashes,
    baseFingerprint: baseList.length ? fingerprintTensors(baseList) : null,
    targetFingerprint: fingerprintTensors(described(tensorHashes)),
  };
}

type ReaderState = 'preamble' | 'header' | 'record' | 'fields' | 'payload' | 'footer-length' | 'footer' | 'trailer' | 'done';

/** Longest varint of a version 2 record length (values below 2^35). */
const MAX_FIELD_BYTES = 5;

/** Container bytes -> RestoreEvent objects (header, chunks, footer). */
export class ContainerReader extends Transform {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  /** Bytes consumed so far (the absolute offset of the next unread byte). */
  private consumed = 0;
  private state: ReaderState = 'preamble';
  private need = HEAD_FIXED_BYTES;
  private header: ContainerHeader | null = null;
  private order: RecordOrder | null = null;
  private pendingRecord: { entry: number; chunk: number; prefix: Uint8Array; length: number } | null = null;
  /** Format version from the preamble: 1 frames records with u32 entry, chunk and length; 2 with a varint length only. */
  private version = 0;
  /** Version 2 record length varint being read byte by byte. */
  private fieldValue = 0;
  private fieldScale = 1;
  private footerLength = 0;
  private footerOffset = 0;

  constructor() {
    super({ writableObjectMode: false, readableObjectMode: true, readableHighWaterMark: 2 });
  }

  /** Return exactly n buffered bytes, or null if fewer are buffered. */
  private takeBytes(n: number): Uint8Array | null {
    if (this.buffered < n) return null;
    let out: Uint8Array;
    const first = this.chunks[0]!;
    if (first.length >= n) {
      out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
    } else {
      out = new Uint8Array(n);
      let filled = 0;
      while (filled < n) {
        const c = this.chunks[0]!;
        const k = Math.min(c.length, n - filled);
        out.set(c.subarray(0, k), filled);
        filled += k;
        if (k === c.length) this.chunks.shift();
        else this.chunks[0] = c.subarray(k);
      }
    }
    this.buffered -= n;
    this.consumed += n;
    return out;
  }

  override _transform(chunk: Uint8Array, _enc: BufferEncoding, callback: TransformCallback): void {
    if (chunk.length) {
      this.chunks.push(chunk);
      this.buffered += chunk.length;
    }
    try {
      this.parse();
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  private parse(): void {
    for (;;) {
      if (this.state === 'done') {
        if (this.buffered > 0) throw new ExcpError('ERR_TRAILING_DATA', `container: ${this.buffered} unexpected bytes after the end of the container at byte ${this.consumed}`);
        return;
      }
      const bytes = this.takeBytes(this.need);
      if (!bytes) return;
      this.step(bytes);
    }
  }

  private step(bytes: Uint8Array): void {
    const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    switch (this.state) {
      case 'preamble': {
        const { version, length } = readPreambleInfo(bytes);
        this.version = version;
        this.need = length + 4;
        this.state = 'header';
        return;
      }
      case 'header': {
        this.header = decodeHeader(bytes);
        if (this.version !== FORMAT_VERSION) this.header.format = this.version;
        this.order = new RecordOrder(this.header);
        this.push({ type: 'header', header: this.header } satisfies RestoreEvent);
        this.expectRecord();
        return;
      }
      case 'record': {
        const type = bytes[0]!;
        if (type === RECORD_FOOTER) {
          this.footerOffset = this.consumed - 1;
          this.state = 'footer-length';
          this.need = 4;
          return;
        }
        if (type !== RECORD_CHUNK) throw new ExcpError('ERR_CORRUPT', `container: unknown record type ${type} at byte ${this.consumed - 1}`);
        this.pendingRecord = null;
        if (this.version === 1) {
          this.state = 'payload';
          this.need = 12;
          return;
        }
        if (this.order!.done) throw new ExcpError('ERR_CORRUPT', `container: chunk record at byte ${this.consumed - 1} after the last chunk`);
        this.state = 'fields';
        this.need = 1;
        this.fieldValue = 0;
        this.fieldScale = 1;
        return;
      }
      case 'fields': {
        const b = bytes[0]!;
        this.fieldValue += (b & 0x7f) * this.fieldScale;
        this.fieldScale *= 128;
        if (b & 0x80) {
          if (this.fieldScale >= 128 ** MAX_FIELD_BYTES) throw new ExcpError('ERR_CORRUPT', `container: record length varint longer than ${MAX_FIELD_BYTES} bytes at byte ${this.consumed - 1}`);
          return;
        }
        const { entry, chunk } = this.order!.next;
        this.beginPayload(entry, chunk, this.fieldValue, recordCrcPrefix(entry, chunk, this.fieldValue));
        return;
      }
      case 'payload': {
        const header = this.header!;
        if (!this.pendingRecord) {
          const prefix = new Uint8Array(13);
          prefix[0] = RECORD_CHUNK;
          prefix.set(bytes, 1);
          this.beginPayload(view.getUint32(0, true), view.getUint32(4, true), view.getUint32(8, true), prefix);
          return;
        }
        const rec = this.pendingRecord;
        const payload = bytes.subarray(0, rec.length);
        const crc = view.getUint32(rec.length, true);
        const name = header.tensors[header.entries[rec.entry]!.weight]!.name;
        if (recordCrc(rec.prefix, payload) !== crc) {
          throw new ExcpError('ERR_CRC', `container: checksum mismatch in tensor '${name}' chunk ${rec.chunk}: the file is corrupt`);
        }
        try {
          this.order!.accept(rec.entry, rec.chunk);
        } catch (e) {
          throw new ExcpError('ERR_CORRUPT', `${(e as Error).message} (tensor '${name}')`);
        }
        this.push({ type: 'chunk', entry: rec.entry, chunk: rec.chunk, payload } satisfies RestoreEvent);
        this.expectRecord();
        return;
      }
      case 'footer-length': {
        this.footerLength = view.getUint32(0, true);
        if (this.footerLength > MAX_BODY_BYTES) throw new ExcpError('ERR_HEADER_TOO_LARGE', `container: footer length ${this.footerLength} exceeds limit`);
        this.state = 'footer';
        this.need = this.footerLength + 4;
        return;
      }
      case 'footer': {
        if (!this.order!.done) throw new ExcpError('ERR_TRUNCATED', 'container: footer reached before every chunk: records are missing');
        const footer = decodeFooter(bytes.subarray(0, this.footerLength), view.getUint32(this.footerLength, true), this.header!);
        this.push({ type: 'footer', footer } satisfies RestoreEvent);
        this.state = 'trailer';
        this.need = TRAILER_BYTES;
        return;
      }
      case 'trailer': {
        const offset = decodeTrailer(bytes);
        if (offset !== this.footerOffset) throw new ExcpError('ERR_CORRUPT', `container: trailer points at byte ${offset}, footer is at ${this.footerOffset}`);
        this.state = 'done';
        this.need = 0;
        return;
      }
      default:
        return;
    }
  }

  /** Check a record's fields (before its payload is allocated) and wait for payload + CRC. */
  private beginPayload(entry: number, chunk: number, length: number, prefix: Uint8Array): void {
    const header = this.header!;
    const e = header.entries[entry];
    const name = e ? header.tensors[e.weight]!.name : `#${entry}`;
    if (!e) throw new ExcpError('ERR_CORRUPT', `container: record names entry ${entry}, but there are ${header.entries.length}`);
    if (length > maxPayloadBytes(header, e)) throw new ExcpError('ERR_CORRUPT', `container: tensor '${name}' chunk ${chunk} claims ${length} bytes, more than possible`);
    this.pendingRecord = { entry, chunk, prefix, length };
    this.state = 'payload';
    this.need = length + 4;
  }

  private expectRecord(): void {
    this.state = 'record';
    this.need = 1;
  }

  override _flush(callback: TransformCallback): void {
    if (this.state !== 'done') {
      callback(new ExcpError('ERR_TRUNCATED', `container: unexpected end of data at byte ${this.consumed + this.buffered} (in ${this.state})`));
      return;
    }
    callback();
  }
}
