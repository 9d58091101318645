/**
 * Rewriting a zip archive with new contents for some entries, every other
 * byte carried through: how restore rebuilds a torch checkpoint from its
 * base file's layout without re-deriving PyTorch's writer choices. Apart from
 * the reader and writer because it patches bytes in place rather than
 * parsing or laying out records.
 */
import { ExcpError } from '../../core/errors.js';
import { crc32 } from '../../core/crc32.js';
import { concatBytes } from '../../core/bytes.js';
import { type ReadAt, type ZipDirectory, type ZipEntry, readChecked } from './zip.js';

/** New contents of one entry: its bytes, or a function giving its chunks (called once, when the entry is reached). */
export type ZipReplacement = Uint8Array | (() => Iterable<Uint8Array>);

/**
 * Rewrite an archive with new contents for some entries, carrying every other
 * byte through unchanged: local headers (padding included), untouched entries,
 * the central directory and end records. Only the CRC fields of replaced
 * entries change (data descriptor and central header; the local header too
 * when it holds the CRC itself). Replacements must keep each entry's size,
 * so every offset stays valid.
 *
 * Streaming: output comes as a sequence of chunks, each valid until the next
 * is requested (chunks may be views of `readAt` results or of the caller's
 * chunks). A replaced entry whose local header carries its CRC (no data
 * descriptor; never the case for torch files) is buffered whole first.
 * @param directory from {@link readZipDirectory}
 * @param readAt reader of the original archive
 * @param replacements new contents by entry name
 * @throws ExcpError ERR_INVALID_ARG (unknown entry), ERR_SHAPE (size differs)
 */
export function* rewriteZip(
  directory: ZipDirectory,
  readAt: ReadAt,
  replacements: ReadonlyMap<string, ZipReplacement>,
  options: { chunkBytes?: number } = {},
): Generator<Uint8Array, void, undefined> {
  const size = directory.size;
  const chunk = options.chunkBytes ?? 4 * 1024 * 1024;
  if (!Number.isSafeInteger(chunk) || chunk < 1) throw new ExcpError('ERR_OUT_OF_RANGE', `zip: options.chunkBytes ${chunk} is not a positive integer`);
  const known = new Set(directory.entries.map((e) => e.name));
  for (const name of replacements.keys()) {
    if (!known.has(name)) throw new ExcpError('ERR_INVALID_ARG', `zip: no entry ${JSON.stringify(name)} to replace`);
  }
  function* copy(from: number, to: number): Generator<Uint8Array, void, undefined> {
    for (let at = from; at < to; at += chunk) yield readChecked(size, readAt, at, Math.min(chunk, to - at), 'copied range');
  }
  const newCrc = new Map<ZipEntry, number>();
  let cursor = 0;
  for (const e of [...directory.entries].sort((a, b) => a.headerOffset - b.headerOffset)) {
    const replacement = replacements.get(e.name);
    if (replacement === undefined) continue;
    let chunks: Iterable<Uint8Array> = replacement instanceof Uint8Array ? [replacement] : replacement();
    const headerHoldsCrc = (e.flags & 8) === 0;
    if (headerHoldsCrc) chunks = [concatBytes([...chunks])];
    yield* copy(cursor, e.headerOffset);
    const header = readChecked(size, readAt, e.headerOffset, e.dataOffset - e.headerOffset, `${e.name} local header`).slice();
    let crc = 0;
    let length = 0;
    if (headerHoldsCrc) {
      for (const c of chunks) crc = crc32(c, crc);
      new DataView(header.buffer).setUint32(crcFields(e).local! - e.headerOffset, crc, true);
    }
    yield header;
    let running = 0;
    for (const c of chunks) {
      length += c.length;
      if (length > e.size) break;
      running = crc32(c, running);
      if (c.length > 0) yield c;
    }
    if (length !== e.size) throw new ExcpError('ERR_SHAPE', `zip: replacement for ${e.name} has ${length > e.size ? 'more than ' : ''}${length} bytes, the entry has ${e.size}`);
    crc = running;
    newCrc.set(e, crc);
    if (e.descriptorLength > 0) {
      const at = e.dataOffset + e.size;
      const d = readChecked(size, readAt, at, e.descriptorLength, `${e.name} data descriptor`).slice();
      new DataView(d.buffer).setUint32(crcFields(e).descriptor! - at, crc, true);
      yield d;
    }
    cursor = e.dataOffset + e.size + e.descriptorLength;
  }
  const cdOffset = directory.centralDirectoryOffset;
  yield* copy(cursor, cdOffset);
  const cd = readChecked(size, readAt, cdOffset, directory.centralDirectorySize, 'central directory').slice();
  const cdView = new DataView(cd.buffer);
  for (const [e, crc] of newCrc) cdView.setUint32(crcFields(e).central - cdOffset, crc, true);
  yield cd;
  yield* copy(cdOffset + directory.centralDirectorySize, size);
}

/**
 * Where an entry's CRC-32 is recorded, as absolute file offsets of 4-byte
 * fields: the central directory header always; the data descriptor when
 * there is one (signed descriptors are 16 or 24 bytes, unsigned ones 12 or
 * 20); else the local header.
 * @param e an entry of {@link readZipDirectory}
 */
export function crcFields(e: ZipEntry): { local: number | null; descriptor: number | null; central: number } {
  const descriptor = e.descriptorLength > 0 ? e.dataOffset + e.size + (e.descriptorLength === 16 || e.descriptorLength === 24 ? 4 : 0) : null;
  return { local: descriptor === null ? e.headerOffset + 14 : null, descriptor, central: e.centralOffset + 16 };
}

/**
 * Give entries of a written archive new CRCs in place: the 4-byte fields
 * {@link crcFields} names, nothing else. Restore writes a torch.save file's
 * bytes where they belong (restored storages included) and then fixes the
 * CRCs of the storages that changed, without a copy of the file.
 * @param crcs new CRC by entry
 * @param writeAt writes bytes at an absolute offset
 */
export function patchZipCrcs(crcs: ReadonlyMap<ZipEntry, number>, writeAt: (offset: number, bytes: Uint8Array) => void): void {
  const field = new Uint8Array(4);
  for (const [e, crc] of crcs) {
    new DataView(field.buffer).setUint32(0, crc, true);
    const at = crcFields(e);
    for (const offset of [at.local, at.descriptor, at.central]) if (offset !== null) writeAt(offset, field);
  }
}
