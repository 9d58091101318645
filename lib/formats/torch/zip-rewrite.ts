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
      new DataView(header.buffer).setUint32(14, crc, true);
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
      const d = readChecked(size, readAt, e.dataOffset + e.size, e.descriptorLength, `${e.name} data descriptor`).slice();
      const view = new DataView(d.buffer);
      // Signed descriptors are 16 or 24 bytes, unsigned ones 12 or 20.
      view.setUint32(e.descriptorLength === 16 || e.descriptorLength === 24 ? 4 : 0, crc, true);
      yield d;
    }
    cursor = e.dataOffset + e.size + e.descriptorLength;
  }
  const cdOffset = directory.centralDirectoryOffset;
  yield* copy(cursor, cdOffset);
  const cd = readChecked(size, readAt, cdOffset, directory.centralDirectorySize, 'central directory').slice();
  const cdView = new DataView(cd.buffer);
  for (const [e, crc] of newCrc) cdView.setUint32(e.centralOffset - cdOffset + 16, crc, true);
  yield cd;
  yield* copy(cdOffset + directory.centralDirectorySize, size);
}

/** Bytes to write at an offset of an archive. */
export interface ZipPatch {
  offset: number;
  bytes: Uint8Array;
}

/**
 * The CRC fields to change, in place, so that an archive whose entries'
 * data were replaced (same sizes) reads as {@link rewriteZip} would have
 * written it: for each entry given, its data descriptor's CRC (the local
 * header's when there is no descriptor) and its central directory CRC.
 * Every other byte is as it is: patching these into a copy of the archive
 * whose data were replaced gives exactly rewriteZip's output, without
 * copying the file (restore writes an optimizer.pt of gigabytes in place).
 * @param directory from {@link readZipDirectory}
 * @param crcs the new CRC of each replaced entry, by name
 * @returns the patches, 4 bytes each
 * @throws ExcpError ERR_INVALID_ARG for an unknown entry
 */
export function zipCrcPatches(directory: ZipDirectory, crcs: ReadonlyMap<string, number>): ZipPatch[] {
  const byName = new Map(directory.entries.map((e) => [e.name, e]));
  const patches: ZipPatch[] = [];
  const u32 = (offset: number, value: number): void => {
    const bytes = new Uint8Array(4);
    new DataView(bytes.buffer).setUint32(0, value >>> 0, true);
    patches.push({ offset, bytes });
  };
  for (const [name, crc] of crcs) {
    const e = byName.get(name);
    if (!e) throw new ExcpError('ERR_INVALID_ARG', `zip: no entry ${JSON.stringify(name)} to patch`);
    if ((e.flags & 8) === 0) u32(e.headerOffset + 14, crc);
    // Signed descriptors are 16 or 24 bytes, unsigned ones 12 or 20 (as in rewriteZip).
    if (e.descriptorLength > 0) u32(e.dataOffset + e.size + (e.descriptorLength === 16 || e.descriptorLength === 24 ? 4 : 0), crc);
    u32(e.centralOffset + 16, crc);
  }
  return patches.sort((a, b) => a.offset - b.offset);
}
