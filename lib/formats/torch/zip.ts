/**
 * The zip layer of PyTorch checkpoints (`torch.save` since 1.6): a random-
 * access reader for STORED archives, a writer that lays entries out the way
 * PyTorch's writer does, and a rewriter that swaps entry contents while
 * carrying every other byte through.
 *
 * Format: PKWARE APPNOTE.TXT (6.3.x), sections 4.3 (records) and 4.5.3
 * (zip64 extended information). What torch writes (caffe2/serialize/
 * inline_container.cc on top of miniz with MZ_ZIP_FLAG_WRITE_ZIP64), checked
 * against files torch 1.13 wrote (spec/fixtures/torch):
 *  - every entry STORED; local header with version 0, time/date 0, flags
 *    0x0808 (bit 3: sizes and CRC follow the data in a data descriptor;
 *    bit 11: UTF-8 name), CRC and sizes 0; an empty entry has flags 0x0800
 *    and no descriptor;
 *  - local extra field: [zip64 field when size or header offset >= 2^32-1]
 *    then an "FB" field padded with 'Z' so that the data starts on a 64-byte
 *    boundary (torch's reader may mmap storages in place);
 *  - data descriptor "PK\x07\x08", CRC, sizes as 4 bytes each (8 bytes each
 *    when the local header has a zip64 field; torch 2.x: from the 4 GiB
 *    record on, whose followers carry an 8-byte local zip64 field holding
 *    their own header offset, so the descriptor's form is found by trying
 *    each against the central directory, never read off the local field);
 *  - torch 2.x also: the padding aligns data to `.storage_alignment` (64 by
 *    default, any power of two configured), and with
 *    `set_crc32_options(False)` every CRC field is 0 (see serialization.ts);
 *  - central directory with version 0, no padding field; then always a zip64
 *    end record (made by 0x031E, needs 45), its locator, and the classic end
 *    record with counts and offsets clamped to 0xFFFF / 0xFFFFFFFF.
 *
 * The reader never allocates on a length it has not checked against the
 * file size first, and works on a `readAt` callback so a multi-GB file is
 * never held in memory: only the central directory and local headers are read.
 *
 * This module is the reader; the writer (zip-writer.ts) and the rewriter
 * (zip-rewrite.ts) are apart because compress only reads archives, restore
 * only writes or rewrites them, and each side is long enough on its own.
 */
import { ExcpError } from '../../core/errors.js';
import { ByteReader } from '../../core/bytes.js';

/** Reads exactly `length` bytes at absolute `offset` (the caller guarantees offset + length <= size). */
export type ReadAt = (offset: number, length: number) => Uint8Array;

/** One STORED entry of an archive. All offsets are absolute file offsets. */
export interface ZipEntry {
  name: string;
  /** Offset of the local file header. */
  headerOffset: number;
  /** Offset of the first data byte. */
  dataOffset: number;
  /** Data length (stored: compressed = uncompressed). */
  size: number;
  /** CRC-32 of the data, from the central directory. */
  crc32: number;
  /** General-purpose flags (bit 3: a data descriptor follows the data). */
  flags: number;
  /** Bytes of the data descriptor after the data (0 when none). */
  descriptorLength: number;
  /** Offset of this entry's central directory header. */
  centralOffset: number;
}

/** The parsed directory of an archive. */
export interface ZipDirectory {
  /** Entries in central-directory order. */
  entries: ZipEntry[];
  centralDirectoryOffset: number;
  centralDirectorySize: number;
  /** File size the directory was validated against. */
  size: number;
}

/** Limits for {@link readZipDirectory}. */
export interface ZipReadOptions {
  /** Largest central directory read, in bytes (default 64 MiB). */
  maxCentralDirectoryBytes?: number;
}

/** Record signatures (APPNOTE 4.3) and the 32-bit "see the zip64 field" value, shared with the writer. */
export const LOCAL_SIG = 0x04034b50;

/** Whether bytes start like a zip archive (a local file header), e.g. a torch.save file. */
export function startsLikeZip(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && (bytes[0]! | (bytes[1]! << 8) | (bytes[2]! << 16) | (bytes[3]! << 24)) >>> 0 === LOCAL_SIG;
}
export const CENTRAL_SIG = 0x02014b50;
export const END_SIG = 0x06054b50;
export const END64_SIG = 0x06064b50;
export const LOCATOR64_SIG = 0x07064b50;
export const DESCRIPTOR_SIG = 0x08074b50;
export const U32_MAX = 0xffffffff;
const utf8 = new TextDecoder('utf-8', { fatal: true });

function bad(what: string): ExcpError {
  return new ExcpError('ERR_BAD_ZIP', `zip: ${what}`);
}

/**
 * Read `length` bytes at `offset` after checking they lie inside the file.
 * @param size the file size
 * @param readAt the reader
 * @param offset absolute offset
 * @param length byte count
 * @param what the record's name for messages
 * @returns exactly `length` bytes
 * @throws ExcpError ERR_TRUNCATED when the range is outside the file or the read is short
 */
export function readChecked(size: number, readAt: ReadAt, offset: number, length: number, what: string): Uint8Array {
  if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0 || offset + length > size) {
    throw new ExcpError('ERR_TRUNCATED', `zip: ${what} at ${offset} (+${length}) lies outside the file of ${size} bytes`);
  }
  const bytes = readAt(offset, length);
  if (bytes.length !== length) throw new ExcpError('ERR_TRUNCATED', `zip: read of ${what} returned ${bytes.length} of ${length} bytes`);
  return bytes;
}

/** Values of a zip64 extended-information field, present only for the 32-bit fields that hold 0xFFFFFFFF. */
function readZip64Extra(extra: Uint8Array, want: { size: boolean; compressed: boolean; offset: boolean }, what: string): number[] {
  const r = new ByteReader(extra, 'zip');
  while (r.remaining >= 4) {
    const id = r.u16();
    const len = r.u16();
    if (len > r.remaining) throw bad(`${what}: extra field ${id} of ${len} bytes overruns the extra data`);
    if (id !== 1) {
      r.offset += len;
      continue;
    }
    const field = new ByteReader(r.bytesView(len), 'zip');
    const out: number[] = [];
    for (const present of [want.size, want.compressed, want.offset]) {
      if (!present) continue;
      if (field.remaining < 8) throw bad(`${what}: zip64 extra field is ${len} bytes, too short`);
      out.push(field.u64());
    }
    return out;
  }
  if (want.size || want.compressed || want.offset) throw bad(`${what}: 32-bit field is 0xFFFFFFFF but there is no zip64 extra field`);
  return [];
}

/** Locate the end records and return [central directory offset, size, entry count, end of CD region]. */
function readEnd(size: number, readAt: ReadAt): [number, number, number, number] {
  if (!Number.isSafeInteger(size) || size < 22) throw bad(`file of ${size} bytes is too small to be a zip archive`);
  const tailLength = Math.min(size, 22 + 0xffff);
  const tail = readChecked(size, readAt, size - tailLength, tailLength, 'end of central directory');
  const view = new DataView(tail.buffer, tail.byteOffset, tail.byteLength);
  let at = -1;
  // Scan backwards; the comment length must account for every byte after the record.
  for (let i = tailLength - 22; i >= 0; i--) {
    if (view.getUint32(i, true) === END_SIG && i + 22 + view.getUint16(i + 20, true) === tailLength) {
      at = i;
      break;
    }
  }
  if (at < 0) throw bad('no end of central directory record (not a zip archive, or bytes were appended)');
  const endOffset = size - tailLength + at;
  const r = new ByteReader(tail, 'zip', at + 4);
  const disk = r.u16();
  const cdDisk = r.u16();
  let entriesOnDisk = r.u16();
  let entries = r.u16();
  let cdSize = r.u32();
  let cdOffset = r.u32();
  let cdEnd = endOffset;
  if (disk !== 0 || cdDisk !== 0 || entriesOnDisk !== entries) throw bad('multi-disk archives are not supported');
  // A zip64 locator sits right before the classic record; torch always writes one.
  const locator = endOffset >= 20 ? readChecked(size, readAt, endOffset - 20, 20, 'zip64 locator') : null;
  if (locator && new DataView(locator.buffer, locator.byteOffset, 20).getUint32(0, true) === LOCATOR64_SIG) {
    const loc = new ByteReader(locator, 'zip', 4);
    const locDisk = loc.u32();
    const end64 = loc.u64();
    const disks = loc.u32();
    if (locDisk !== 0 || disks > 1) throw bad('multi-disk zip64 archives are not supported');
    if (end64 + 56 > endOffset - 20) throw bad(`zip64 end record offset ${end64} is past the locator at ${endOffset - 20}`);
    const e = new ByteReader(readChecked(size, readAt, end64, 56, 'zip64 end record'), 'zip');
    if (e.u32() !== END64_SIG) throw bad(`no zip64 end record at ${end64}`);
    e.offset += 8 + 2 + 2; // record size, made by, needed
    if (e.u32() !== 0 || e.u32() !== 0) throw bad('multi-disk zip64 archives are not supported');
    entriesOnDisk = e.u64();
    entries = e.u64();
    cdSize = e.u64();
    cdOffset = e.u64();
    if (entriesOnDisk !== entries) throw bad('multi-disk zip64 archives are not supported');
    cdEnd = end64;
  } else if (entries === 0xffff || cdSize === U32_MAX || cdOffset === U32_MAX) {
    throw bad('end record needs zip64 values but there is no zip64 locator');
  }
  if (cdOffset + cdSize > cdEnd) throw bad(`central directory ${cdOffset} + ${cdSize} runs past its end record at ${cdEnd}`);
  if (entries * 46 > cdSize) throw bad(`${entries} entries cannot fit in a central directory of ${cdSize} bytes`);
  return [cdOffset, cdSize, entries, cdEnd];
}

/**
 * Read and validate the directory of a STORED zip archive.
 *
 * Checks: end records (classic and zip64), every central header, every local
 * header (signature, name equal to the central one, method), data
 * descriptors (CRC and sizes equal to the central ones), no two entries
 * overlapping, no entry reaching into the central directory, no duplicate
 * names. Compressed, encrypted and multi-disk archives are refused.
 * @param size total file size in bytes
 * @param readAt random-access reader
 * @returns the entries, with absolute data offsets for streaming reads
 * @throws ExcpError ERR_BAD_ZIP, ERR_TRUNCATED, ERR_SHAPE
 */
export function readZipDirectory(size: number, readAt: ReadAt, options: ZipReadOptions = {}): ZipDirectory {
  const maxCd = options.maxCentralDirectoryBytes ?? 64 * 1024 * 1024;
  const [cdOffset, cdSize, count] = readEnd(size, readAt);
  if (cdSize > maxCd) throw bad(`central directory of ${cdSize} bytes exceeds the limit of ${maxCd}`);
  const cd = new ByteReader(readChecked(size, readAt, cdOffset, cdSize, 'central directory'), 'zip');
  const entries: ZipEntry[] = [];
  const names = new Set<string>();
  for (let i = 0; i < count; i++) {
    const centralOffset = cdOffset + cd.offset;
    if (cd.u32() !== CENTRAL_SIG) throw bad(`entry ${i}: no central header signature at ${centralOffset}`);
    cd.offset += 4; // made by, needed
    const flags = cd.u16();
    const method = cd.u16();
    cd.offset += 4; // time, date
    const crc = cd.u32();
    const compressed32 = cd.u32();
    const size32 = cd.u32();
    const nameLength = cd.u16();
    const extraLength = cd.u16();
    const commentLength = cd.u16();
    const disk = cd.u16();
    cd.offset += 6; // internal, external attributes
    const header32 = cd.u32();
    const nameBytes = cd.bytesView(nameLength);
    const extra = cd.bytesView(extraLength);
    cd.offset += commentLength;
    cd.need(0);
    let name: string;
    try {
      name = utf8.decode(nameBytes);
    } catch {
      throw bad(`entry ${i}: name is not valid UTF-8`);
    }
    if (name.length === 0 || name.includes('\0')) throw bad(`entry ${i}: empty or NUL-containing name`);
    if (names.has(name)) throw bad(`duplicate entry name ${JSON.stringify(name)}`);
    names.add(name);
    if (flags & 0x41) throw bad(`${name}: encrypted entries are not supported`);
    if (method === 8) throw bad(`${name}: deflate-compressed entries are not supported (torch.save writes STORED entries)`);
    if (method !== 0) throw bad(`${name}: compression method ${method} is not supported`);
    if (disk !== 0 && disk !== 0xffff) throw bad(`${name}: multi-disk archives are not supported`);
    const z64 = readZip64Extra(extra, { size: size32 === U32_MAX, compressed: compressed32 === U32_MAX, offset: header32 === U32_MAX }, name);
    let k = 0;
    const entrySize = size32 === U32_MAX ? z64[k++]! : size32;
    const compressed = compressed32 === U32_MAX ? z64[k++]! : compressed32;
    const headerOffset = header32 === U32_MAX ? z64[k++]! : header32;
    if (compressed !== entrySize) throw bad(`${name}: stored entry has compressed size ${compressed} != size ${entrySize}`);
    // Local header: fixed part, then its own name and extra lengths.
    const local = new ByteReader(readChecked(size, readAt, headerOffset, 30, `${name} local header`), 'zip');
    if (local.u32() !== LOCAL_SIG) throw bad(`${name}: no local header signature at ${headerOffset}`);
    local.offset += 4;
    const localMethod = local.u16();
    local.offset += 16;
    const localNameLength = local.u16();
    const localExtraLength = local.u16();
    if (localMethod !== method) throw bad(`${name}: local method ${localMethod} differs from central ${method}`);
    const localName = readChecked(size, readAt, headerOffset + 30, localNameLength, `${name} local name`);
    if (localNameLength !== nameLength || !localName.every((b, j) => b === nameBytes[j])) {
      throw bad(`${name}: local header name differs from the central directory`);
    }
    const dataOffset = headerOffset + 30 + localNameLength + localExtraLength;
    if (dataOffset + entrySize > cdOffset) throw bad(`${name}: data ${dataOffset} + ${entrySize} runs into the central directory at ${cdOffset}`);
    let descriptorLength = 0;
    if (flags & 8) {
      descriptorLength = readDescriptor(size, readAt, { name, dataOffset, size: entrySize, crc, room: cdOffset - dataOffset - entrySize });
    }
    entries.push({ name, headerOffset, dataOffset, size: entrySize, crc32: crc, flags, descriptorLength, centralOffset });
  }
  if (cd.remaining !== 0) throw bad(`${cd.remaining} unexplained bytes at the end of the central directory`);
  const sorted = [...entries].sort((a, b) => a.headerOffset - b.headerOffset);
  for (let i = 1; i < sorted.length; i++) {
    const prev = sorted[i - 1]!;
    const end = prev.dataOffset + prev.size + prev.descriptorLength;
    if (end > sorted[i]!.headerOffset) throw bad(`${prev.name} (ends at ${end}) overlaps ${sorted[i]!.name} (starts at ${sorted[i]!.headerOffset})`);
  }
  return { entries, centralDirectoryOffset: cdOffset, centralDirectorySize: cdSize, size };
}

/**
 * The data descriptor after an entry's data, checked against the central
 * directory; returns its length. Four forms exist: an optional signature
 * (`PK\x07\x08`), the CRC, then both sizes as 4 or as 8 bytes: 12, 16, 20
 * or 24 bytes. Which one is not told by the local header: torch 2.x writes
 * 8-byte sizes for the 4 GiB record and for every record after it, while
 * those later records' local zip64 field holds the local header's own
 * offset, not sizes (zip64/LAYOUT.txt of the torch2 fixtures); and a record
 * whose data merely crosses 4 GiB has no zip64 field at all. So each form is
 * tried against the central directory's CRC and size; at most one can match
 * (a 4-byte reading of 8-byte sizes gives a size and then 0, an 8-byte
 * reading of 4-byte sizes runs into the next record's signature).
 * @throws ExcpError ERR_BAD_ZIP when no form matches
 */
function readDescriptor(size: number, readAt: ReadAt, e: { name: string; dataOffset: number; size: number; crc: number; room: number }): number {
  const d = readChecked(size, readAt, e.dataOffset + e.size, Math.min(24, e.room), `${e.name} data descriptor`);
  const view = new DataView(d.buffer, d.byteOffset, d.byteLength);
  const signed = d.length >= 4 && view.getUint32(0, true) === DESCRIPTOR_SIG;
  const seen: string[] = [];
  for (const start of signed ? [4, 0] : [0]) {
    for (const wide of [true, false]) {
      const length = start + 4 + (wide ? 16 : 8);
      if (length > d.length) continue;
      const crc = view.getUint32(start, true);
      const sizes = wide
        ? [Number(view.getBigUint64(start + 4, true)), Number(view.getBigUint64(start + 12, true))]
        : [view.getUint32(start + 4, true), view.getUint32(start + 8, true)];
      if (crc === e.crc && sizes[0] === e.size && sizes[1] === e.size) return length;
      seen.push(`crc ${crc}, size ${sizes[1]}`);
    }
  }
  throw bad(`${e.name}: data descriptor (${seen[0] ?? 'missing'}) differs from the central directory (crc ${e.crc}, size ${e.size})`);
}
