/**
 * What a file kind implements (one file per kind in lib/formats/): its part
 * of the container format (lib/container/kinds.ts) and how restore rebuilds
 * the file from restored tensors.
 *
 * Restore is positional: every byte of a restored file is either a tensor's
 * byte, at an offset the layout gives, or a fixed byte of the file (a
 * safetensors header), so chunks are written where they belong as they
 * arrive, in any order (lib/stream/folder-writer.ts), and a file whose
 * pieces tile it can also be written front to back as a stream
 * (lib/stream/writer.ts).
 */
import type { FileKind } from '../container/kinds.js';
import type { FileRange, FileSpec, TensorSpec } from '../model/checkpoint.js';

/** A run of a skeleton tensor's bytes: [at, at + length) of the tensor goes to [offset, offset + length) of the file. */
export interface Segment {
  at: number;
  offset: number;
  length: number;
}

/**
 * The file ranges of bytes [start, end) of a skeleton tensor whose segments
 * (in order of `at`) lie in the file `fd`: what a worker reads for them.
 * @param fd the file
 * @param segments the skeleton's segments
 * @param start first byte of the tensor
 * @param end byte after the last
 * @returns the ranges, in order
 */
export function segmentRanges(fd: number, segments: readonly Segment[], start: number, end: number): FileRange[] {
  const ranges: FileRange[] = [];
  for (const s of segments) {
    const from = Math.max(start, s.at);
    const to = Math.min(end, s.at + s.length);
    if (from < to) ranges.push({ fd, position: s.offset + from - s.at, length: to - from });
  }
  return ranges;
}

/**
 * Bytes [start, end) of a tensor stored in segments (a skeleton): the
 * ranges segmentRanges lists, read into one buffer.
 * @param read reads `length` bytes at `position` of `fd` (the reader's own messages)
 */
export function readSegments(fd: number, segments: readonly Segment[], start: number, end: number, read: (fd: number, position: number, length: number) => Uint8Array): Uint8Array {
  const out = new Uint8Array(end - start);
  for (const s of segments) {
    const from = Math.max(start, s.at);
    const to = Math.min(end, s.at + s.length);
    if (from < to) out.set(read(fd, s.offset + from - s.at, to - from), from - start);
  }
  return out;
}

/** Where a tensor's restored bytes go in its file: from an offset on, or (a skeleton: the bytes around other tensors) in segments. */
export type Target = { offset: number } | { segments: Segment[] };

/** How a file is rebuilt from restored tensors. */
export interface FilePlacement {
  /** The file's size. */
  size: number;
  /** Bytes that are not tensor data (a safetensors header), at their offsets. */
  fixed: { offset: number; bytes: Uint8Array }[];
  /** Where each of the file's tensors goes. */
  targets: { tensor: number; target: Target }[];
  /**
   * The last step, after every byte was written and the fingerprints
   * checked, for a file that is not final as written (a torch.save zip,
   * whose CRC fields must follow its restored storages): the file was
   * written as `raw`, and this makes `finalPath` from it (patching it in
   * place and renaming it there). Absent: the written file is final.
   */
  finish?: (raw: { fd: number; path: string }, finalPath: string, tools: FinishTools) => Promise<void> | void;
  /**
   * The last step for a file that is fixed in place instead (a torch.save
   * zip, whose CRC fields must follow its restored storages): called after
   * every byte was written and the fingerprints checked, with the written
   * file open for reading and writing; `what` names it in messages. Unlike
   * `finish`, it also serves a single-file container restored to a file.
   */
  patch?: (fd: number, what: string, tools: FinishTools) => Promise<void> | void;
}

/** What the restore writer lends a finishing or fixing step: work spread over its threads. */
export interface FinishTools {
  /**
   * The CRC-32 of the concatenation of file ranges, computed by a worker
   * (calls run in parallel, up to the restore's threads).
   */
  crc32(ranges: readonly FileRange[]): Promise<number>;
}

/** A file kind: its container records and its restore. */
export interface FileFormat extends FileKind {
  /**
   * The placement of a (validated) file's bytes.
   * @param file the file
   * @param tensors the header's tensors
   */
  place(file: FileSpec, tensors: readonly TensorSpec[]): FilePlacement;
  /**
   * Tensors whose restored bytes the finish step changes, so their hashes
   * are not the restored file's (chains compare them only when lossless).
   */
  rewritten?(file: FileSpec): number[];
}
