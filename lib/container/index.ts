/**
 * Reading a container by random access (spec/FORMAT.md): its header from
 * the front, its footer through the trailer at the end, without decoding a
 * record. inspect, verify, chains and restore's "file or folder?" use it;
 * a restore reads the container front to back instead (framing.ts). Both
 * use the same structure readers (format.ts).
 */
import { ExcpError } from '../core/errors.js';
import { FORMAT_VERSION, MAX_BODY_BYTES, RECORD_FOOTER } from '../core/constants.js';
import type { ContainerFooter, ContainerHeader } from '../model/checkpoint.js';
import { HEAD_FIXED_BYTES, TRAILER_BYTES, decodeFooter, decodeHeader, decodeTrailer, readPreambleInfo } from './format.js';
import type { FileKinds } from './kinds.js';

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
  const footerOffset = decodeTrailer(await source.read(size - TRAILER_BYTES, TRAILER_BYTES));
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
