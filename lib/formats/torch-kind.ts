/**
 * The file kind `torch` (code 2): a torch.save zip (optimizer.pt,
 * pytorch_model.bin) whose tensors are cut out and coded as tensors, the
 * rest of the file (zip records, data.pkl, small tensors) carried as one U8
 * tensor, its *skeleton*.
 *
 * Header record: path, tensor indices (the skeleton first, then the cut
 * tensors), and the layout as JSON: `{"size": file bytes, "offsets": each
 * cut tensor's byte offset}`. At restore the skeleton's bytes fill the gaps
 * between the tensors, and the zip CRC fields of the storages that hold
 * restored (possibly lossy) tensors are recomputed
 * (lib/formats/torch/serialization.ts); every other byte is carried through.
 */
import { fsyncSync, renameSync, writeSync } from 'node:fs';
import type { ByteReader, ByteWriter } from '../core/bytes.js';
import { DTYPE_BYTES, elementCount } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { readIndices, readJson, readString, writeIndices, writeString } from '../container/fields.js';
import { readExactlySync } from '../io/read.js';
import type { FileSpec, TensorSpec } from '../model/checkpoint.js';
import { isByteVector } from './blob.js';
import type { FileFormat, FilePlacement, FinishTools, Segment } from './file-format.js';
import { type TorchStorage, readTorchCheckpoint } from './torch/serialization.js';
import { zipCrcPatches } from './torch/zip-rewrite.js';

/** A torch file's layout: its size and the byte offset of each cut tensor (after the skeleton in `tensors`). */
export interface TorchLayout {
  size: number;
  offsets: number[];
}

/**
 * The skeleton of a file: the gaps between its tensor ranges, in order, each
 * at `at` in the skeleton tensor and at `offset` in the file. Compress reads
 * the skeleton from them (lib/formats/folder.ts), restore writes it back.
 * @param size the file's size
 * @param ranges the tensor ranges, sorted, disjoint and inside the file
 */
export function skeletonSegments(size: number, ranges: readonly { offset: number; length: number }[]): Segment[] {
  const segments: Segment[] = [];
  let cursor = 0;
  let at = 0;
  for (const r of [...ranges, { offset: size, length: 0 }]) {
    if (r.offset > cursor) segments.push({ at, offset: cursor, length: r.offset - cursor });
    at += r.offset - cursor;
    cursor = r.offset + r.length;
  }
  return segments;
}

function bytesOf(t: TensorSpec): number {
  return elementCount(t.shape, 'container') * DTYPE_BYTES[t.dtype];
}

/** The file kind `torch`. */
export const torchKind: FileFormat = {
  name: 'torch',
  code: 2,

  write(w: ByteWriter, file: FileSpec): void {
    writeString(w, file.path ?? '');
    writeIndices(w, file.tensors);
    const layout = file.layout as TorchLayout;
    // Key order is part of the stored text: size, then offsets.
    writeString(w, JSON.stringify({ size: layout.size, offsets: layout.offsets }));
  },

  read(r: ByteReader) {
    const path = readString(r, 'path');
    const tensors = readIndices(r, 'file tensors');
    return { file: { kind: 'torch', path, tensors, layout: readJson(r, 'layout') } };
  },

  fromJson(value: Record<string, unknown>): FileSpec | null {
    const { path, tensors, layout } = value;
    if (typeof path !== 'string' || !Array.isArray(tensors)) return null;
    return { kind: 'torch', path, tensors: tensors as number[], layout };
  },

  validate(file: FileSpec, tensors: readonly TensorSpec[], fail: (what: string) => never): void {
    const layout = file.layout as { size?: unknown; offsets?: unknown } | null;
    if (file.tensors.length < 1 || !layout || typeof layout !== 'object') fail('torch layout');
    const { size, offsets } = layout;
    if (!Number.isSafeInteger(size) || (size as number) < 0 || !Array.isArray(offsets) || offsets.length !== file.tensors.length - 1) fail('torch layout');
    if (!isByteVector(tensors[file.tensors[0]!])) fail('the skeleton is one U8 vector');
    let end = 0;
    let cut = 0;
    file.tensors.slice(1).forEach((t, k) => {
      const at = (offsets as unknown[])[k];
      if (!Number.isSafeInteger(at) || (at as number) < end) fail(`torch layout offset ${String(at)}`);
      end = (at as number) + bytesOf(tensors[t]!);
      cut += bytesOf(tensors[t]!);
    });
    if (end > (size as number) || bytesOf(tensors[file.tensors[0]!]!) !== (size as number) - cut) fail('torch layout size');
  },

  place(file: FileSpec, tensors: readonly TensorSpec[]): FilePlacement {
    const layout = file.layout as TorchLayout;
    const ranges = file.tensors.slice(1).map((t, k) => ({ tensor: t, offset: layout.offsets[k]!, length: bytesOf(tensors[t]!) }));
    return {
      size: layout.size,
      fixed: [],
      targets: [
        { tensor: file.tensors[0]!, target: { segments: skeletonSegments(layout.size, ranges) } },
        ...ranges.map((r) => ({ tensor: r.tensor, target: { offset: r.offset } })),
      ],
      finish: (raw, finalPath, tools) => fixTorchFile(raw, finalPath, layout.size, ranges, tools),
    };
  },

  rewritten(file: FileSpec): number[] {
    return file.tensors.slice(0, 1);
  },
};

/**
 * A torch.save file with recomputed CRCs for the storages that hold restored
 * tensors (moments or weights); every other byte as written. The raw file
 * already holds every byte of the final file but those CRC fields, so they
 * are patched in place (the zip rewrite's bytes, lib/formats/torch/zip-rewrite.ts)
 * and the file renamed into place: no copy. The storages' CRCs are computed
 * by the restore's workers, one job per storage, in parallel; when every
 * such storage still has its recorded CRC (exact tensors: a keyframe's
 * weights, --lossless), nothing is patched.
 */
async function fixTorchFile(raw: { fd: number; path: string }, finalPath: string, size: number,
  ranges: readonly { offset: number; length: number }[], tools: FinishTools): Promise<void> {
  const readAt = (offset: number, length: number): Uint8Array => readExactlySync(raw.fd, offset, length, `restore: ${finalPath}`);
  const checkpoint = readTorchCheckpoint(size, readAt);
  const storages = [...checkpoint.storages.values()];
  const touched = new Map<string, TorchStorage>();
  for (const r of ranges) {
    if (r.length === 0) continue;
    const s = storages.find((x) => r.offset >= x.entry.dataOffset && r.offset + r.length <= x.entry.dataOffset + x.entry.size);
    if (!s) throw new ExcpError('ERR_CORRUPT', `restore: ${finalPath}: tensor bytes at ${r.offset} lie outside every storage`);
    touched.set(s.key, s);
  }
  const list = [...touched.values()];
  const crcs = await Promise.all(list.map((s) => tools.crc32([{ fd: raw.fd, position: s.entry.dataOffset, length: s.entry.size }])));
  const changed = new Map<string, number>();
  list.forEach((s, i) => {
    if (crcs[i] !== s.entry.crc32) changed.set(s.entry.name, crcs[i]!);
  });
  for (const patch of zipCrcPatches(checkpoint.directory, changed)) {
    let done = 0;
    while (done < patch.bytes.length) done += writeSync(raw.fd, patch.bytes, done, patch.bytes.length - done, patch.offset + done);
  }
  fsyncSync(raw.fd);
  renameSync(raw.path, finalPath);
}
