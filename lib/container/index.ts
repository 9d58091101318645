/**
 * Reading a container by random access (spec/FORMAT.md): its header from
 * the front, its footer through the trailer at the end, without decoding a
 * record. inspect, verify, chains and restore's "file or folder?" use it;
 * a restore reads the container front to back instead (framing.ts). Both
 * use the same structure readers (format.ts).
 */
import { ExcpError } from '../core/errors.js';
import { FORMAT_VERSION, MAX_BODY_BYTES, RECORD_CHUNK, RECORD_FOOTER } from '../core/constants.js';
import type { ContainerFooter, ContainerHeader } from '../model/checkpoint.js';
import { HEAD_FIXED_BYTES, TRAILER_BYTES, decodeFooter, decodeHeader, decodeTrailer, maxPayloadBytes, readPreambleInfo, recordCrc, recordCrcPrefix } from './format.js';
import type { FileKinds } from './kinds.js';
import { ContainerParser } from './framing.js';

/** Bytes read at a time when a truncated container is read through to find where it stops. */
const SCAN_BYTES = 1 << 20;

/**
 * A container without its end marker, read front to back: the error that
 * says at which byte it stops and what is missing (or what is corrupt).
 */
async function describeTruncation(source: ContainerSource, options: IndexOptions, fallback: ExcpError): Promise<ExcpError> {
  const parser = new ContainerParser(options.kinds, options.hint);
  try {
    for (let at = 0; at < source.size; at += SCAN_BYTES) parser.push(await source.read(at, Math.min(SCAN_BYTES, source.size - at)));
    parser.end();
  } catch (e) {
    if (e instanceof ExcpError) return e;
    throw e;
  }
  return fallback;
}

/** Random access to a container's bytes. */
export interface ContainerSource {
  /** The container's size in bytes. */
  size: number;
  /** Exactly `length` bytes at `offset` (ERR_TRUNCATED past the end). */
  read(offset: number, length: number): Promise<Uint8Array>;
}

/** What a reader needs besides the bytes. */
export interface IndexOptions {
  kinds: FileKinds;
  /** What a file that is not a container is instead (a suffix for the bad-magic message). */
  hint?: (head: Uint8Array) => string;
}

/**
 * The preamble and header.
 * @returns the header and the byte offset where the records start
 * @throws ExcpError ERR_BAD_MAGIC, ERR_VERSION, ERR_TRUNCATED, ERR_CRC, ERR_BAD_HEADER
 */
export async function readContainerHead(source: ContainerSource, options: IndexOptions): Promise<{ header: ContainerHeader; recordsAt: number }> {
  if (source.size === 0) throw new ExcpError('ERR_TRUNCATED', 'container: empty file, not an .excp container');
  // A short file is read whole, so its magic is checked before its length.
  const { version, length } = readPreambleInfo(await source.read(0, Math.min(source.size, HEAD_FIXED_BYTES)), options.hint);
  if (source.size < HEAD_FIXED_BYTES + length + 4) {
    throw new ExcpError('ERR_TRUNCATED', `container: truncated: the header needs ${HEAD_FIXED_BYTES + length + 4} bytes, the file has ${source.size}`);
  }
  const header = decodeHeader(await source.read(HEAD_FIXED_BYTES, length + 4), options.kinds, version);
  if (version !== FORMAT_VERSION) header.format = version;
  return { header, recordsAt: HEAD_FIXED_BYTES + length + 4 };
}

/**
 * Header and footer (the footer through the trailer's offset).
 * @throws ExcpError as readContainerHead, and ERR_CORRUPT for a footer that is not where the trailer says
 */
export async function readContainerIndex(source: ContainerSource, options: IndexOptions): Promise<{ header: ContainerHeader; footer: ContainerFooter; size: number }> {
  const { header, recordsAt } = await readContainerHead(source, options);
  const size = source.size;
  if (size < recordsAt + TRAILER_BYTES) throw new ExcpError('ERR_TRUNCATED', `container: truncated: ${size} bytes end after the header, with no footer or trailer`);
  let footerOffset: number;
  try {
    footerOffset = decodeTrailer(await source.read(size - TRAILER_BYTES, TRAILER_BYTES));
  } catch (e) {
    // No end marker: read the records to say where the data stops and what is missing.
    if (e instanceof ExcpError && e.code === 'ERR_TRUNCATED') throw await describeTruncation(source, options, e);
    throw e;
  }
  if (footerOffset + 5 > size - TRAILER_BYTES) throw new ExcpError('ERR_CORRUPT', `container: footer offset ${footerOffset} is outside the file`);
  if (footerOffset < recordsAt) throw new ExcpError('ERR_CORRUPT', `container: footer offset ${footerOffset} points into the header`);
  const prefix = await source.read(footerOffset, 5);
  const length = new DataView(prefix.buffer, prefix.byteOffset, 5).getUint32(1, true);
  if (prefix[0] !== RECORD_FOOTER || footerOffset + 5 + length + 4 !== size - TRAILER_BYTES) throw new ExcpError('ERR_CORRUPT', 'container: footer is malformed');
  if (length > MAX_BODY_BYTES) throw new ExcpError('ERR_HEADER_TOO_LARGE', `container: footer length ${length} exceeds limit ${MAX_BODY_BYTES}`);
  const body = await source.read(footerOffset + 5, length + 4);
  const footer = decodeFooter(body.subarray(0, length), new DataView(body.buffer, body.byteOffset, length + 4).getUint32(length, true), header);
  return { header, footer, size };
}

/**
 * One chunk record by its offset (from the footer's index), its CRC checked:
 * the random access that restores a few tensors without reading the rest.
 * @param source the container
 * @param header its header
 * @param offset the record's first byte (footer.entries[entry].offsets[chunk])
 * @param entry the entry the footer says it belongs to
 * @param chunk its chunk index
 * @returns the payload
 * @throws ExcpError ERR_CORRUPT (not a chunk record, a length out of range), ERR_CRC, ERR_TRUNCATED
 */
export async function readRecordAt(source: ContainerSource, header: ContainerHeader, offset: number, entry: number, chunk: number): Promise<Uint8Array> {
  const e = header.entries[entry];
  const name = e ? header.tensors[e.weight]!.name : `#${entry}`;
  if (!e || offset < 0 || offset >= source.size) throw new ExcpError('ERR_CORRUPT', `container: record of tensor '${name}' chunk ${chunk} is outside the file (offset ${offset})`);
  const head = await source.read(offset, Math.min(13, source.size - offset));
  if (head[0] !== RECORD_CHUNK) throw new ExcpError('ERR_CORRUPT', `container: no chunk record at byte ${offset} (tensor '${name}' chunk ${chunk})`);
  let length: number;
  let prefix: Uint8Array;
  let at: number;
  if (header.format === 1) {
    const view = new DataView(head.buffer, head.byteOffset, head.length);
    if (head.length < 13 || view.getUint32(1, true) !== entry || view.getUint32(5, true) !== chunk) throw new ExcpError('ERR_CORRUPT', `container: the record at byte ${offset} is not tensor '${name}' chunk ${chunk}`);
    length = view.getUint32(9, true);
    prefix = head.subarray(0, 13);
    at = offset + 13;
  } else {
    length = 0;
    let scale = 1;
    let i = 1;
    for (;; i++) {
      if (i >= head.length || i > 5) throw new ExcpError('ERR_CORRUPT', `container: bad record length at byte ${offset + 1}`);
      const b = head[i]!;
      length += (b & 0x7f) * scale;
      scale *= 128;
      if (!(b & 0x80)) break;
    }
    prefix = recordCrcPrefix(entry, chunk, length);
    at = offset + i + 1;
  }
  if (length > maxPayloadBytes(header, e)) throw new ExcpError('ERR_CORRUPT', `container: tensor '${name}' chunk ${chunk} claims ${length} bytes, more than possible`);
  if (at + length + 4 > source.size) throw new ExcpError('ERR_TRUNCATED', `container: truncated: the record of tensor '${name}' chunk ${chunk} needs bytes up to ${at + length + 4}, the file has ${source.size}`);
  const body = await source.read(at, length + 4);
  const payload = body.subarray(0, length);
  const crc = new DataView(body.buffer, body.byteOffset + length, 4).getUint32(0, true);
  if (recordCrc(prefix, payload) !== crc) throw new ExcpError('ERR_CRC', `container: checksum mismatch in tensor '${name}' chunk ${chunk}: the file is corrupt`);
  return payload;
}
