/**
 * The file kind `torch` (code 2): a torch.save zip (optimizer.pt,
 * pytorch_model.bin) whose tensors are cut out and coded as tensors, the
 * rest of the file (zip records, data.pkl, small tensors) carried as one U8
 * tensor, its *skeleton*.
 *
 * Header record: path, tensor indices (the skeleton first, then the cut
 * tensors), and the layout as JSON: `{"size": file bytes, "offsets": each
 * cut tensor's byte offset}`. At restore the skeleton's bytes fill the gaps
 * between the tensors, and then the zip CRC fields of the storages that hold
 * restored (possibly lossy) tensors are recomputed in place (the `patch`
 * step); every other byte is carried through. The file is a folder's
 * (optimizer.pt, pytorch_model.bin) or, path null, a single torch.save
 * file (lib/formats/torch-file.ts).
 */
import { writeSync } from 'node:fs';
import type { ByteReader, ByteWriter } from '../core/bytes.js';
import { type DType, byteSize } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { readIndices, readJson, readString, writeIndices, writeString } from '../container/fields.js';
import { readExactlySync } from '../io/read.js';
import type { CheckpointFile, FileSpec, TensorSpec } from '../model/checkpoint.js';
import { isByteVector } from './blob.js';
import type { FileFormat, FilePlacement, FinishTools, Segment } from './file-format.js';
import { readTorchCheckpoint } from './torch/serialization.js';
import type { ZipEntry } from './torch/zip.js';
import { patchZipCrcs } from './torch/zip-rewrite.js';

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

/** A tensor cut out of a torch.save file and coded as a tensor (the rest of the file is its skeleton). */
export interface Cut {
  name: string;
  /** Its first byte in the file. */
  offset: number;
  length: number;
  dtype: DType;
  shape: number[];
}

/**
 * A torch.save file as a file of kind `torch`: the skeleton tensor (the
 * file's bytes without the cut ranges, which must be sorted and disjoint)
 * first, then the cut tensors.
 * @param path the file's path in its folder, or null for a single-file checkpoint
 * @param skeleton the skeleton tensor's name
 * @param size the file's size
 * @param cuts the tensors cut out, sorted by offset
 * @returns the file, and where the skeleton's bytes are in the file
 */
export function torchFile(path: string | null, skeleton: string, size: number, cuts: readonly Cut[]): { file: CheckpointFile; segments: Segment[]; skeletonBytes: number } {
  const segments = skeletonSegments(size, cuts);
  const layout: TorchLayout = { size, offsets: cuts.map((c) => c.offset) };
  return {
    file: { kind: 'torch', path, tensors: [skeleton, ...cuts.map((c) => c.name)], layout },
    segments,
    skeletonBytes: segments.reduce((n, x) => n + x.length, 0),
  };
}

function bytesOf(t: TensorSpec): number {
  return byteSize(t.dtype, t.shape, 'container');
}

/**
 * Check the cut tensors of a skeleton-and-cut file (this kind and `distcp`):
 * each offset after the previous tensor's end, the last end within the
 * file, and the skeleton exactly the bytes that are not cut out.
 * @param within called with each tensor's [at, end) for a kind's own checks
 */
export function checkCutOffsets(file: FileSpec, tensors: readonly TensorSpec[], size: number, offsets: readonly unknown[], kind: string,
  fail: (what: string) => never, within?: (at: number, end: number) => void): void {
  let end = 0;
  let cut = 0;
  file.tensors.slice(1).forEach((t, i) => {
    const at = offsets[i];
    if (!Number.isSafeInteger(at) || (at as number) < end) fail(`${kind} layout offset ${String(at)}`);
    const length = bytesOf(tensors[t]!);
    end = (at as number) + length;
    cut += length;
    within?.(at as number, end);
  });
  if (end > size || bytesOf(tensors[file.tensors[0]!]!) !== size - cut) fail(`${kind} layout size`);
}

/** Where a skeleton-and-cut file's tensors go: the skeleton into the gaps, each cut tensor at its offset. */
export function cutPlacement(file: FileSpec, tensors: readonly TensorSpec[], size: number, offsets: readonly number[]): {
  ranges: { tensor: number; offset: number; length: number }[]; placement: Pick<FilePlacement, 'size' | 'fixed' | 'targets'>;
} {
  const ranges = file.tensors.slice(1).map((t, k) => ({ tensor: t, offset: offsets[k]!, length: bytesOf(tensors[t]!) }));
  return {
    ranges,
    placement: {
      size,
      fixed: [],
      targets: [
        { tensor: file.tensors[0]!, target: { segments: skeletonSegments(size, ranges) } },
        ...ranges.map((r) => ({ tensor: r.tensor, target: { offset: r.offset } })),
      ],
    },
  };
}

/** The file kind `torch`. */
export const torchKind: FileFormat = {
  name: 'torch',
  code: 2,

  write(w: ByteWriter, file: FileSpec): void {
    // An empty path (never a folder file's: validate refuses it) is null: the file of a single-file container.
    writeString(w, file.path ?? '');
    writeIndices(w, file.tensors);
    const layout = file.layout as TorchLayout;
    // Key order is part of the stored text: size, then offsets.
    writeString(w, JSON.stringify({ size: layout.size, offsets: layout.offsets }));
  },

  read(r: ByteReader) {
    const path = readString(r, 'path');
    const tensors = readIndices(r, 'file tensors');
    return { file: { kind: 'torch', path: path === '' ? null : path, tensors, layout: readJson(r, 'layout') } };
  },

  fromJson(value: Record<string, unknown>): FileSpec | null {
    const { path, tensors, layout } = value;
    if ((typeof path !== 'string' && path !== null) || !Array.isArray(tensors)) return null;
    return { kind: 'torch', path, tensors: tensors as number[], layout };
  },

  validate(file: FileSpec, tensors: readonly TensorSpec[], fail: (what: string) => never): void {
    const layout = file.layout as { size?: unknown; offsets?: unknown } | null;
    if (file.tensors.length < 1 || !layout || typeof layout !== 'object') fail('torch layout');
    const { size, offsets } = layout;
    if (!Number.isSafeInteger(size) || (size as number) < 0 || !Array.isArray(offsets) || offsets.length !== file.tensors.length - 1) fail('torch layout');
    if (!isByteVector(tensors[file.tensors[0]!])) fail('the skeleton is one U8 vector');
    checkCutOffsets(file, tensors, size as number, offsets as unknown[], 'torch', fail);
  },

  place(file: FileSpec, tensors: readonly TensorSpec[]): FilePlacement {
    const layout = file.layout as TorchLayout;
    const { ranges, placement } = cutPlacement(file, tensors, layout.size, layout.offsets);
    return { ...placement, patch: (fd, what, tools) => patchTorchFile(fd, what, layout.size, ranges, tools) };
  },

  rewritten(file: FileSpec): number[] {
    return file.tensors.slice(0, 1);
  },
};

/**
 * Fix a restored torch.save file in place: the CRC fields of the storages
 * that hold restored tensors (moments or weights) get the CRC of their
 * restored bytes; every other byte stays as written. A file torch wrote
 * with `set_crc32_options(False)` records CRC 0 for every entry and keeps
 * it (torch.load checks no CRC, and a real CRC would change bytes the
 * original did not have). Exact tensors (a keyframe's weights, --lossless)
 * keep their CRCs, and nothing is written. The storages' CRCs are computed
 * by the restore's workers, one job per storage, in parallel.
 */
async function patchTorchFile(fd: number, what: string, size: number, ranges: readonly { offset: number; length: number }[], tools: FinishTools): Promise<void> {
  const readAt = (offset: number, length: number): Uint8Array => readExactlySync(fd, offset, length, `restore: ${what}`);
  const checkpoint = readTorchCheckpoint(size, readAt);
  if (checkpoint.directory.entries.every((e) => e.crc32 === 0 || e.size === 0)) return;
  const storages = [...checkpoint.storages.values()];
  const touched = new Map<string, ZipEntry>();
  for (const r of ranges) {
    if (r.length === 0) continue;
    const s = storages.find((x) => r.offset >= x.entry.dataOffset && r.offset + r.length <= x.entry.dataOffset + x.entry.size);
    if (!s) throw new ExcpError('ERR_CORRUPT', `restore: ${what}: tensor bytes at ${r.offset} lie outside every storage`);
    touched.set(s.key, s.entry);
  }
  const entries = [...touched.values()];
  const computed = await Promise.all(entries.map((e) => tools.crc32([{ fd, position: e.dataOffset, length: e.size }])));
  const crcs = new Map<ZipEntry, number>();
  entries.forEach((e, i) => {
    if (computed[i] !== e.crc32) crcs.set(e, computed[i]!);
  });
  patchZipCrcs(crcs, (offset, bytes) => {
    let done = 0;
    while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, offset + done);
  });
}
