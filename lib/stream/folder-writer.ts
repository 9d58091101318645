/**
 * FolderWriter: restored chunks -> the files of a container, each chunk
 * written at its final offset as it arrives (a checkpoint folder's files,
 * or the one file of a single-file container restored to a file).
 *
 * Every byte of every output file has a fixed position that its file kind
 * gives (lib/formats/file-format.ts): fixed bytes (a safetensors header),
 * tensors at offsets, a skeleton in the gaps around them. So chunks are
 * written where they belong with positional writes, and nothing waits in
 * memory, whatever the order. Given to the decoder as its ChunkPlacer, the
 * writer only says where each chunk goes, and the worker that decodes it
 * writes it (the main thread touches no restored byte); a chunk that comes
 * with its bytes is written here.
 *
 * Everything is written into a temporary folder beside the target. At the
 * end the fingerprints are checked, each file with a fixing step (a
 * torch.save zip, whose CRC fields must follow its restored storages) is
 * patched in place, each file with a finishing step is finished from its
 * raw file, and the caller renames the folder into place
 * (lib/io/output.ts). On error the temporary folder is removed.
 *
 * It is a Writable (object mode), not a Transform: it produces files, not a
 * byte stream.
 */
import { closeSync, fsync, openSync, write, writeSync } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { DTYPE_BYTES, elementCount } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { HasherList } from '../core/hash.js';
import { type RestoredRecord, chunkPieces, takeRestoredChunk, verifyFingerprints } from '../container/verify.js';
import type { ContainerFooter, ContainerHeader } from '../model/checkpoint.js';
import type { FilePlacement, FinishTools, Target } from '../formats/file-format.js';
import { fileFormat } from '../formats/registry.js';
import { type PieceWrite, runJob } from '../pool/jobs.js';
import type { ChunkPlacer, RestoredEvent } from './codec.js';

/** Where a tensor's bytes go: a descriptor and the file kind's target. */
type Placed = { fd: number; target: Target };

/** A file written raw and finished at the end. */
interface Unfinished {
  fd: number;
  rawPath: string;
  finalPath: string;
  finish: NonNullable<FilePlacement['finish']>;
}

/** Finishing work in the calling thread, for a writer no decoder lent its threads to. */
const IN_THREAD: FinishTools = {
  crc32: async (ranges) => {
    const result = runJob({ kind: 'crc', ranges: [...ranges] });
    return result.kind === 'crc' ? result.crc : 0;
  },
};

/**
 * RestoredEvent -> files in `temp`, each chunk written at its final offset.
 * Also restores a single-file container into an open file (`file`).
 */
export class FolderWriter extends Writable implements ChunkPlacer {
  private readonly temp: string | null;
  private readonly file: number | undefined;
  private header: ContainerHeader | null = null;
  private footer: ContainerFooter | null = null;
  private targets: (Placed | null)[] = [];
  private hashers = new HasherList(0);
  private readonly fds: number[] = [];
  private unfinished: Unfinished[] = [];
  /** Files fixed in place at the end (FilePlacement.patch). */
  private patches: { fd: number; what: string; patch: NonNullable<FilePlacement['patch']> }[] = [];
  private restoredBytes = 0;
  private totalBytes = 0;
  private readonly onProgress: ((done: number, total: number) => void) | undefined;
  private readonly skip: ReadonlySet<string>;
  /** The outputs opened for the header (by the decoder's prepare, or by the header event). */
  private prepared: Promise<void> | null = null;
  private tools: FinishTools = IN_THREAD;
  /** A decoder places chunks through this writer (its workers write the files). */
  private placing = false;
  /** Every output file of the header is open (onHeader finished). */
  private opened = false;

  /**
   * @param temp an empty folder the files are written into; null only checks the fingerprints (excp verify)
   * @param onProgress called with tensor bytes restored so far and in all
   * @param file an open regular file to restore a single-file container into (then `temp` is null)
   * @param skip paths of files not to write (restored and checked all the same): a distributed
   *   checkpoint's `.metadata`, which every rank's container holds, is written once
   */
  constructor(temp: string | null, onProgress?: (done: number, total: number) => void, file?: number, skip: ReadonlySet<string> = new Set()) {
    super({ objectMode: true, highWaterMark: 2 });
    this.temp = temp;
    this.onProgress = onProgress;
    this.file = file;
    this.skip = skip;
  }

  override _write(event: RestoredEvent, _enc: BufferEncoding, callback: (error?: Error | null) => void): void {
    const run = async (): Promise<void> => {
      if (event.type === 'header') await (this.prepared ??= this.onHeader(event.header));
      else if (event.type === 'footer') this.footer = event.footer;
      else await this.onChunk(event);
    };
    run().then(() => callback(), (e: unknown) => callback(e as Error));
  }

  /**
   * Open the outputs for a header before the decoder decodes its first chunk ({@link ChunkPlacer}).
   * @param header the container header
   * @param tools the decoder's threads, for the finishing steps
   */
  prepare(header: ContainerHeader, tools: FinishTools): Promise<void> {
    this.tools = tools;
    this.placing = true;
    return (this.prepared ??= this.onHeader(header));
  }

  /**
   * Where a chunk's restored bytes go ({@link ChunkPlacer}): each piece at its
   * tensor's offset, a skeleton's piece split over its segments.
   * @returns the writes, or null when only fingerprints are checked (verify)
   */
  writes(entry: number, chunk: number): PieceWrite[] | null {
    if (!this.header || (this.temp === null && this.file === undefined)) return null;
    // A chunk placed before its files are open would be decoded and checked but never written.
    if (!this.opened) throw new ExcpError('ERR_IO', 'restore: a chunk was placed before the output files were open');
    const writes: PieceWrite[] = [];
    for (const piece of chunkPieces(this.header, entry, chunk)) {
      const placed = this.targets[piece.tensor];
      if (!placed || piece.length === 0) continue;
      const { fd, target } = placed;
      if ('offset' in target) {
        writes.push({ buffer: piece.buffer, at: piece.at, length: piece.length, fd, position: target.offset + piece.offset });
        continue;
      }
      const end = piece.offset + piece.length;
      for (const s of target.segments) {
        const from = Math.max(piece.offset, s.at);
        const to = Math.min(end, s.at + s.length);
        if (from < to) writes.push({ buffer: piece.buffer, at: piece.at + from - piece.offset, length: to - from, fd, position: s.offset + from - s.at });
      }
    }
    return writes;
  }

  private open(path: string): number {
    const fd = openSync(join(this.temp!, path), 'wx+');
    this.fds.push(fd);
    return fd;
  }

  private async onHeader(header: ContainerHeader): Promise<void> {
    const single = header.files.length === 1 && header.files[0]!.path === null;
    if (this.file !== undefined && !single) throw new ExcpError('ERR_BAD_HEADER', 'restore: this container holds a checkpoint folder; restore it to a folder with -o DIR');
    if (this.temp !== null && single) throw new ExcpError('ERR_BAD_HEADER', 'restore: this container holds one file, not a folder; restore it to a file');
    this.header = header;
    const sizes = header.tensors.map((t) => elementCount(t.shape, t.name) * DTYPE_BYTES[t.dtype]);
    this.totalBytes = sizes.reduce((a, b) => a + b, 0);
    this.hashers = new HasherList(header.tensors.length);
    this.targets = header.tensors.map(() => null);
    // verify only: the header was validated when read, the fingerprints are checked at the end
    if (this.temp === null && this.file === undefined) return;
    for (const f of header.files) {
      if (f.path !== null && this.skip.has(f.path)) continue;
      const placement = fileFormat(f.kind).place(f, header.tensors);
      let fd: number;
      if (this.file !== undefined) {
        if (placement.finish && !placement.patch) throw new ExcpError('ERR_USAGE', `restore: a ${f.kind} file is restored into a folder`);
        fd = this.file;
        if (placement.patch) this.patches.push({ fd, what: 'the restored file', patch: placement.patch });
      } else {
        const path = f.path!;
        if (path.includes('/')) await mkdir(join(this.temp!, dirname(path)), { recursive: true });
        if (placement.patch) {
          fd = this.open(path);
          this.patches.push({ fd, what: path, patch: placement.patch });
        } else if (placement.finish) {
          // Written raw beside its final name, finished at the end.
          const rawPath = join(dirname(path), `.${basename(path)}.excp-raw`);
          fd = this.open(rawPath);
          this.unfinished.push({ fd, rawPath: join(this.temp!, rawPath), finalPath: join(this.temp!, path), finish: placement.finish });
        } else {
          fd = this.open(path);
        }
      }
      for (const fixed of placement.fixed) writeAll(fd, fixed.bytes, fixed.offset);
      for (const { tensor, target } of placement.targets) this.targets[tensor] = { fd, target };
    }
    this.opened = true;
  }

  /**
   * Write a chunk's tensors at their offsets. The writes are asynchronous (the
   * thread pool does them) so the main thread keeps feeding the decoder
   * workers meanwhile; the next event waits for them, which keeps back-pressure.
   */
  private async onChunk(record: RestoredRecord): Promise<void> {
    const writes: Promise<void>[] = [];
    this.restoredBytes += takeRestoredChunk(this.header, record, this.hashers, (t, bytes, start) => {
      const placed = this.targets[t];
      if (!placed) return; // verify only
      const { fd, target } = placed;
      if ('offset' in target) {
        writes.push(writeAllAsync(fd, bytes, target.offset + start));
        return;
      }
      for (const s of target.segments) {
        const from = Math.max(start, s.at);
        const to = Math.min(start + bytes.length, s.at + s.length);
        if (from < to) writes.push(writeAllAsync(fd, bytes.subarray(from - start, to - start), s.offset + from - s.at));
      }
    });
    await Promise.all(writes);
    this.onProgress?.(this.restoredBytes, this.totalBytes);
  }

  override _final(callback: (error?: Error | null) => void): void {
    const run = async (): Promise<void> => {
      const header = this.header;
      if (!header) throw new ExcpError('ERR_TRUNCATED', 'restore: no container header');
      if (!this.footer) throw new ExcpError('ERR_TRUNCATED', 'restore: no footer');
      verifyFingerprints(header, this.footer, this.hashers.digests());
      // Every file's fixing and finishing step at once: their CRC jobs share the decoder's workers.
      await Promise.all([
        ...this.patches.map((p) => p.patch(p.fd, p.what, this.tools)),
        ...this.unfinished.map((u) => u.finish({ fd: u.fd, path: u.rawPath }, u.finalPath, this.tools)),
      ]);
      // The files reach the disk together (libuv's threads), not one after the other on this thread.
      const fds = this.fds.splice(0);
      const synced = await Promise.allSettled(fds.map((fd) => new Promise<void>((resolve, reject) => fsync(fd, (e) => (e ? reject(e) : resolve())))));
      for (const fd of fds) closeSync(fd);
      const failed = synced.find((r) => r.status === 'rejected');
      if (failed) throw (failed as PromiseRejectedResult).reason;
      await Promise.all(this.unfinished.map((u) => rm(u.rawPath, { force: true })));
    };
    run().then(() => callback(), (e: unknown) => callback(e as Error));
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    // A decoder's workers may still write to the files: its owner closes them (closeFiles) once they stopped.
    if (!this.placing) this.closeFiles();
    callback(error);
  }

  /**
   * Close the output files (after an error; at the end they are closed
   * already). When the decoder's workers write them, call this only once
   * the decoder has closed (its workers stopped): a descriptor closed under
   * a worker could be reused by another file before the worker's write.
   */
  closeFiles(): void {
    for (const fd of this.fds.splice(0)) closeSync(fd);
  }
}

async function writeAllAsync(fd: number, bytes: Uint8Array, position: number): Promise<void> {
  let done = 0;
  while (done < bytes.length) {
    done += await new Promise<number>((resolve, reject) => {
      write(fd, bytes, done, bytes.length - done, position + done, (err, n) => (err ? reject(err) : resolve(n)));
    });
  }
}

function writeAll(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}
