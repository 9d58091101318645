/**
 * Reading a container front to back (spec/FORMAT.md), as a pure incremental
 * parser: the one place that parses the framing of a container stream
 * (lib/stream/container.ts wraps it in a Transform; lib/container/index.ts
 * reads the same structures by random access). Every length is checked
 * against a limit before anything is allocated, every record's CRC before
 * its payload is handed on, and the record order is enforced.
 */
import { ExcpError } from '../core/errors.js';
import { FORMAT_VERSION, MAX_BODY_BYTES, RECORD_CHUNK, RECORD_FOOTER } from '../core/constants.js';
import type { ContainerFooter, ContainerHeader } from '../model/checkpoint.js';
import { crc32 } from '../core/crc32.js';
import { type Crc32, HEAD_FIXED_BYTES, TRAILER_BYTES, chunkCount, decodeFooter, decodeHeader, decodeTrailer, maxPayloadBytes, readPreambleInfo, recordCrc, recordCrcPrefix } from './format.js';
import type { FileKinds } from './kinds.js';

/** What a container holds, in order: its header, its chunk records, its footer. */
export type ContainerEvent =
  | { type: 'header'; header: ContainerHeader }
  | { type: 'footer'; footer: ContainerFooter }
  | { type: 'chunk'; entry: number; chunk: number; payload: Uint8Array; crc?: RecordCheck };

/**
 * A record's CRC left for the consumer to check (see {@link ParserOptions}):
 * what it covers before the payload, and the stored value.
 */
export interface RecordCheck {
  prefix: Uint8Array;
  stored: number;
}

/** Options of {@link ContainerParser}. */
export interface ParserOptions {
  /**
   * Hand each version 2 record's CRC on with its payload instead of checking
   * it here: the consumer checks it with {@link assertRecordCrc} before it
   * uses the payload (restore does it on the worker that decodes the chunk,
   * so the main thread does not run over every byte). Version 1 records are
   * always checked here (their entry and chunk fields are only trusted
   * once their CRC is).
   */
  deferRecordCrc?: boolean;
}

/**
 * Check a chunk record's CRC.
 * @param name the entry's tensor name (for the message)
 * @param chunk the chunk index
 * @param check prefix and stored CRC
 * @param payload the payload
 * @param crc the CRC-32 to use
 * @throws ExcpError ERR_CRC when they differ
 */
export function assertRecordCrc(name: string, chunk: number, check: RecordCheck, payload: Uint8Array, crc: Crc32 = crc32): void {
  if (recordCrc(check.prefix, payload, crc) !== check.stored) {
    throw new ExcpError('ERR_CRC', `container: checksum mismatch in tensor '${name}' chunk ${chunk}: the file is corrupt`);
  }
}

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

type ReaderState = 'preamble' | 'header' | 'record' | 'fields' | 'payload' | 'footer-length' | 'footer' | 'trailer' | 'done';

/** Longest varint of a version 2 record length (values below 2^35). */
const MAX_FIELD_BYTES = 5;

/**
 * Container bytes -> events (header, chunks, footer), incrementally: bytes
 * come in pieces of any size, and a short buffer is a normal state ("wait")
 * until {@link end} says the input is over.
 */
export class ContainerParser {
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

  private readonly kinds: FileKinds;
  private readonly hint: ((head: Uint8Array) => string) | undefined;
  private readonly deferRecordCrc: boolean;
  private events: ContainerEvent[] = [];

  /**
   * @param kinds the file kinds a header's files may be of
   * @param hint what a file that is not a container is (a suffix for the bad-magic error)
   * @param options see {@link ParserOptions}
   */
  constructor(kinds: FileKinds, hint?: (head: Uint8Array) => string, options: ParserOptions = {}) {
    this.kinds = kinds;
    this.hint = hint;
    this.deferRecordCrc = options.deferRecordCrc === true;
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

  /**
   * Take the next bytes of the container.
   * @returns the events they completed, in order
   * @throws ExcpError on bad bytes (never on too few: see end())
   */
  push(bytes: Uint8Array): ContainerEvent[] {
    if (bytes.length) {
      this.chunks.push(bytes);
      this.buffered += bytes.length;
    }
    this.parse();
    const out = this.events;
    this.events = [];
    return out;
  }

  private emit(event: ContainerEvent): void {
    this.events.push(event);
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
        const { version, length } = readPreambleInfo(bytes, this.hint);
        this.version = version;
        this.need = length + 4;
        this.state = 'header';
        return;
      }
      case 'header': {
        this.header = decodeHeader(bytes, this.kinds, this.version);
        if (this.version !== FORMAT_VERSION) this.header.format = this.version;
        this.order = new RecordOrder(this.header);
        this.emit({ type: 'header', header: this.header });
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
        const check = { prefix: rec.prefix, stored: crc };
        const defer = this.deferRecordCrc && this.version !== 1;
        if (!defer) assertRecordCrc(name, rec.chunk, check, payload);
        try {
          this.order!.accept(rec.entry, rec.chunk);
        } catch (e) {
          throw new ExcpError('ERR_CORRUPT', `${(e as Error).message} (tensor '${name}')`);
        }
        this.emit(defer ? { type: 'chunk', entry: rec.entry, chunk: rec.chunk, payload, crc: check } : { type: 'chunk', entry: rec.entry, chunk: rec.chunk, payload });
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
        this.emit({ type: 'footer', footer });
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

  /**
   * The input is over.
   * @throws ExcpError ERR_TRUNCATED unless the container was complete
   */
  end(): void {
    if (this.state === 'done') return;
    const at = this.consumed + this.buffered;
    if (at === 0) throw new ExcpError('ERR_TRUNCATED', 'container: no input (0 bytes), not an .excp container');
    const missing = this.need - this.buffered;
    const before = this.state !== 'footer-length' && this.state !== 'footer' && this.state !== 'trailer';
    throw new ExcpError('ERR_TRUNCATED', `container: truncated: the data stops at byte ${at}, ${missing} bytes short of the end of ${this.part()}${before ? ', and the rest of the records, the footer and the trailer are missing' : ''}`);
  }

  /** What is being read, in words (for the truncation message). */
  private part(): string {
    switch (this.state) {
      case 'preamble': return 'the preamble';
      case 'header': return 'the header';
      case 'record':
      case 'fields': return 'a record\'s framing';
      case 'payload': {
        const rec = this.pendingRecord;
        if (!rec || !this.header) return 'a record';
        return `the record of tensor '${this.header.tensors[this.header.entries[rec.entry]!.weight]!.name}' chunk ${rec.chunk} (${rec.length + 4} bytes)`;
      }
      case 'footer-length':
      case 'footer': return 'the footer';
      default: return 'the trailer';
    }
  }
}
