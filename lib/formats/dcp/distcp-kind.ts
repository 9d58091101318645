/**
 * The file kind `distcp` (code 3): a `.distcp` file of a PyTorch distributed
 * checkpoint, a sequence of items each a whole torch.save zip
 * (lib/formats/dcp/distcp.ts). Its tensor items' data are cut out and coded
 * as tensors; the rest of the file (every zip record, pickle and bytes item)
 * is one U8 tensor, its *skeleton*, as for the `torch` kind.
 *
 * Header record: path, tensor indices (the skeleton first, then the cut
 * tensors), and the layout as JSON: `{"size": file bytes, "items": [[offset,
 * length], ...] of the items that hold cut tensors, "offsets": each cut
 * tensor's byte offset}`. At restore the skeleton fills the gaps between the
 * tensors; then, item by item, the zip CRC fields of the storage records
 * whose bytes changed (lossy tensors) are recomputed in place. Every other
 * byte is as written, so the items keep their offsets and lengths and
 * `.metadata` (carried as a blob) stays valid.
 */
import { fsyncSync, renameSync, writeSync } from 'node:fs';
import type { ByteReader, ByteWriter } from '../../core/bytes.js';
import { crc32 } from '../../core/crc32.js';
import { ExcpError } from '../../core/errors.js';
import { readIndices, readJson, readString, writeIndices, writeString } from '../../container/fields.js';
import { readExactlySync } from '../../io/read.js';
import type { FileSpec, TensorSpec } from '../../model/checkpoint.js';
import { isByteVector } from '../blob.js';
import type { FileFormat, FilePlacement } from '../file-format.js';
import { checkCutOffsets, cutPlacement } from '../torch-kind.js';
import { type ZipEntry, readZipDirectory } from '../torch/zip.js';

/** A distcp file's layout: its size, the items holding cut tensors, and each cut tensor's offset. */
export interface DistcpLayout {
  size: number;
  items: [number, number][];
  offsets: number[];
}

/** The file kind `distcp`. */
export const distcpKind: FileFormat = {
  name: 'distcp',
  code: 3,

  write(w: ByteWriter, file: FileSpec): void {
    writeString(w, file.path ?? '');
    writeIndices(w, file.tensors);
    const layout = file.layout as DistcpLayout;
    // Key order is part of the stored text: size, items, offsets.
    writeString(w, JSON.stringify({ size: layout.size, items: layout.items, offsets: layout.offsets }));
  },

  read(r: ByteReader) {
    const path = readString(r, 'path');
    const tensors = readIndices(r, 'file tensors');
    return { file: { kind: 'distcp', path, tensors, layout: readJson(r, 'layout') } };
  },

  fromJson(): FileSpec | null {
    return null; // version 1 headers predate the kind
  },

  validate(file: FileSpec, tensors: readonly TensorSpec[], fail: (what: string) => never): void {
    const layout = file.layout as { size?: unknown; items?: unknown; offsets?: unknown } | null;
    if (file.tensors.length < 1 || !layout || typeof layout !== 'object') fail('distcp layout');
    const { size, items, offsets } = layout;
    if (!Number.isSafeInteger(size) || (size as number) < 0 || !Array.isArray(items) || !Array.isArray(offsets) || offsets.length !== file.tensors.length - 1) fail('distcp layout');
    if (!isByteVector(tensors[file.tensors[0]!])) fail('the skeleton is one U8 vector');
    let itemEnd = 0;
    for (const item of items as unknown[]) {
      const [at, length] = Array.isArray(item) && item.length === 2 ? item as unknown[] : [];
      if (!Number.isSafeInteger(at) || !Number.isSafeInteger(length) || (at as number) < itemEnd || (length as number) < 0) fail(`distcp item ${JSON.stringify(item)}`);
      itemEnd = (at as number) + (length as number);
    }
    if (itemEnd > (size as number)) fail('distcp items run past the file');
    let k = 0;
    const ranges = items as [number, number][];
    checkCutOffsets(file, tensors, size as number, offsets as unknown[], 'distcp', fail, (at, end) => {
      while (k < ranges.length && ranges[k]![0] + ranges[k]![1] <= at) k++;
      const item = ranges[k];
      if (!item || at < item[0] || end > item[0] + item[1]) fail(`distcp tensor at ${String(at)} lies in no item`);
    });
  },

  place(file: FileSpec, tensors: readonly TensorSpec[]): FilePlacement {
    const layout = file.layout as DistcpLayout;
    const { ranges, placement } = cutPlacement(file, tensors, layout.size, layout.offsets);
    return {
      ...placement,
      finish: (raw, finalPath) => {
        fixDistcpCrcs(raw.fd, finalPath, layout.items, ranges);
        fsyncSync(raw.fd);
        renameSync(raw.path, finalPath);
      },
    };
  },

  rewritten(file: FileSpec): number[] {
    return file.tensors.slice(0, 1);
  },
};

/**
 * Recompute, in place, the CRC-32 fields of every zip entry of every item
 * that holds a restored tensor whose bytes no longer match its recorded CRC
 * (the data descriptor, the central directory header, and the local header
 * when it holds the CRC itself). Item offsets count from the item's start.
 * @param fd the restored file, open for reading and writing
 * @param name the file (for messages)
 * @param items the items holding the tensors, [offset, length] each
 * @param ranges the tensors' byte ranges in the file
 * @returns the number of entries patched
 * @throws ExcpError ERR_CORRUPT when a tensor lies in no storage entry of its item
 */
export function fixDistcpCrcs(fd: number, name: string, items: readonly [number, number][], ranges: readonly { offset: number; length: number }[]): number {
  const readAt = (offset: number, length: number): Uint8Array => readExactlySync(fd, offset, length, `restore: ${name}`);
  let patched = 0;
  let k = 0;
  for (const [at, length] of items) {
    const inside: { offset: number; length: number }[] = [];
    while (k < ranges.length && ranges[k]!.offset < at + length) inside.push(ranges[k++]!);
    if (inside.length === 0) continue;
    const directory = readZipDirectory(length, (o, l) => readAt(at + o, l));
    const entries = new Set<ZipEntry>();
    for (const r of inside) {
      if (r.length === 0) continue;
      const e = directory.entries.find((x) => r.offset >= at + x.dataOffset && r.offset + r.length <= at + x.dataOffset + x.size);
      if (!e) throw new ExcpError('ERR_CORRUPT', `restore: ${name}: tensor bytes at ${r.offset} lie outside every storage of the item at ${at}`);
      entries.add(e);
    }
    for (const e of entries) {
      let crc = 0;
      const step = 4 * 1024 * 1024;
      for (let o = 0; o < e.size; o += step) crc = crc32(readAt(at + e.dataOffset + o, Math.min(step, e.size - o)), crc);
      if (crc === e.crc32) continue;
      const field = new Uint8Array(4);
      new DataView(field.buffer).setUint32(0, crc, true);
      for (const position of crcFields(e)) writeAll(fd, field, at + position);
      patched++;
    }
  }
  return patched;
}

/** Where a zip entry records its CRC-32, relative to the archive's start. */
function crcFields(e: ZipEntry): number[] {
  const out = [e.centralOffset + 16];
  // Signed data descriptors are 16 or 24 bytes (the CRC after the signature), unsigned ones 12 or 20.
  if (e.descriptorLength > 0) out.push(e.dataOffset + e.size + (e.descriptorLength === 16 || e.descriptorLength === 24 ? 4 : 0));
  if ((e.flags & 8) === 0) out.push(e.headerOffset + 14);
  return out;
}

function writeAll(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}
