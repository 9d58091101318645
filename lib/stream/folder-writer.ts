/**
 * FolderWriter: restored chunks -> the files of a checkpoint folder (issue 7).
 *
 * Consumes the same RestoredEvent stream as SafetensorsWriter. Every byte of
 * every output file has a fixed position known from the header (a
 * safetensors file is its raw header then its tensors in order; a blob is
 * one tensor; a torch.save file, optimizer.pt or pytorch_model.bin, is its
 * skeleton's bytes in the gaps between its tensor ranges), so chunks are
 * written where they belong as they arrive, with positional writes: nothing
 * waits in memory, whatever the order.
 *
 * Everything is written into a temporary folder beside the target. At the
 * end the fingerprints are checked, each torch.save file's zip CRCs are
 * recomputed for the storages that hold its restored (maybe lossy) moments
 * or weights (lib/torch.ts rewriteTorchCheckpoint: every other byte carried
 * through), and the temporary folder is renamed to the target. On error it
 * is removed.
 *
 * It is a Writable (object mode), not a Transform: it produces files, not a
 * byte stream.
 */
import { closeSync, fsyncSync, openSync, renameSync, write, writeSync } from 'node:fs';
import { mkdir, open, rename, rm, stat, realpath } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { Writable } from 'node:stream';
import { type ContainerFooter, type ContainerHeader, HEAD_FIXED_BYTES, decodeHeader, readPreamble } from '../container/format.js';
import { DTYPE_BYTES, elementCount } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { Hasher } from '../core/hash.js';
import { skeletonSegments } from '../model/plan.js';
import { type TorchStorage, readTorchCheckpoint, rewriteTorchCheckpoint } from '../formats/torch.js';
import { crc32 } from '../core/crc32.js';
import { readExactly, readExactlySync } from '../formats/safetensors-file.js';
import type { RestoredEvent, RestoredRecord } from './codec.js';
import { checkedRawHeader, takeRestoredChunk, verifyFingerprints } from './writer.js';

/** Where a tensor's bytes go: a file and an offset, or (a skeleton) the gaps of a file. */
type Target =
  | { fd: number; offset: number }
  | { fd: number; segments: { at: number; offset: number; length: number }[] };

interface TorchFix {
  fd: number;
  rawPath: string;
  finalPath: string;
  size: number;
  ranges: { offset: number; length: number }[];
}

/**
 * RestoredEvent -> files in `temp`, each chunk written at its final offset.
 * Also restores a single-file container into an open file (`file`): the
 * chunks arrive entry by entry (a weight with its moments) while the file
 * lists tensors in its own order, and writing each at its offset needs no
 * spill store (SafetensorsWriter's way, for a stream such as stdout).
 */
export class FolderWriter extends Writable {
  private readonly temp: string | null;
  private readonly file: number | undefined;
  private header: ContainerHeader | null = null;
  private footer: ContainerFooter | null = null;
  private targets: (Target | null)[] = [];
  private hashers: Hasher[] = [];
  private readonly fds: number[] = [];
  private fixes: TorchFix[] = [];
  private restoredBytes = 0;
  private totalBytes = 0;
  private readonly onProgress: ((done: number, total: number) => void) | undefined;

  /**
   * @param temp an empty folder the files are written into; null only checks the fingerprints (excp verify)
   * @param onProgress called with tensor bytes restored so far and in all
   * @param file an open regular file to restore a single-file container into (then `temp` is null)
   */
  constructor(temp: string | null, onProgress?: (done: number, total: number) => void, file?: number) {
    super({ objectMode: true, highWaterMark: 2 });
    this.temp = temp;
    this.onProgress = onProgress;
    this.file = file;
  }

  override _write(event: RestoredEvent, _enc: BufferEncoding, callback: (error?: Error | null) => void): void {
    const run = async (): Promise<void> => {
      if (event.type === 'header') await this.onHeader(event.header);
      else if (event.type === 'footer') this.footer = event.footer;
      else await this.onChunk(event);
    };
    run().then(() => callback(), (e: unknown) => callback(e as Error));
  }

  private open(path: string): number {
    const fd = openSync(join(this.temp!, path), 'wx+');
    this.fds.push(fd);
    return fd;
  }

  private async onHeader(header: ContainerHeader): Promise<void> {
    const single = header.files.length === 1 && header.files[0]!.path === null;
    if (this.file !== undefined && !single) throw new ExcpError('ERR_BAD_HEADER', 'restore: this container holds a checkpoint folder; restore it to a folder with -o DIR');
    if (this.file === undefined && header.files.some((f) => f.path === null)) throw new ExcpError('ERR_BAD_HEADER', 'restore: this container holds one safetensors file, not a folder; restore it to a file');
    this.header = header;
    const sizes = header.tensors.map((t) => elementCount(t.shape, t.name) * DTYPE_BYTES[t.dtype]);
    this.totalBytes = sizes.reduce((a, b) => a + b, 0);
    this.hashers = header.tensors.map(() => new Hasher());
    this.targets = header.tensors.map(() => null);
    if (this.file !== undefined) {
      const f = header.files[0]!;
      if (f.kind !== 'safetensors') throw new ExcpError('ERR_BAD_HEADER', 'restore: a single-file container must hold a safetensors file');
      const raw = checkedRawHeader(header, f.rawHeader, f.tensors);
      writeAll(this.file, raw, 0);
      let offset = raw.length;
      for (const t of f.tensors) {
        this.targets[t] = { fd: this.file, offset };
        offset += sizes[t]!;
      }
      return;
    }
    if (this.temp === null) {
      for (const f of header.files) if (f.kind === 'safetensors') checkedRawHeader(header, f.rawHeader, f.tensors);
      return;
    }
    for (const f of header.files) {
      const path = f.path!;
      if (path.includes('/')) await mkdir(join(this.temp, dirname(path)), { recursive: true });
      if (f.kind === 'safetensors') {
        const raw = checkedRawHeader(header, f.rawHeader, f.tensors);
        const fd = this.open(path);
        writeSync(fd, raw, 0, raw.length, 0);
        let offset = raw.length;
        for (const t of f.tensors) {
          this.targets[t] = { fd, offset };
          offset += sizes[t]!;
        }
      } else if (f.kind === 'blob') {
        this.targets[f.tensor] = { fd: this.open(path), offset: 0 };
      } else {
        const layout = f.layout as { size: number; offsets: number[] };
        const rawPath = `.${basename(path)}.excp-raw`;
        const fd = this.open(join(dirname(path), rawPath));
        const ranges = f.tensors.slice(1).map((t, k) => {
          const offset = layout.offsets[k]!;
          this.targets[t] = { fd, offset };
          return { offset, length: sizes[t]! };
        });
        this.targets[f.tensors[0]!] = { fd, segments: skeletonSegments(layout.size, ranges) };
        this.fixes.push({ fd, rawPath: join(this.temp, dirname(path), rawPath), finalPath: join(this.temp, path), size: layout.size, ranges });
      }
    }
  }

  /**
   * Write a chunk's tensors at their offsets. The writes are asynchronous (the
   * thread pool does them) so the main thread keeps feeding the decoder
   * workers meanwhile; the next event waits for them, which keeps back-pressure.
   */
  private async onChunk(record: RestoredRecord): Promise<void> {
    const writes: Promise<void>[] = [];
    this.restoredBytes += takeRestoredChunk(this.header, record, this.hashers, (t, bytes, start) => {
      const target = this.targets[t];
      if (!target) {
        // verify only
      } else if ('offset' in target) {
        writes.push(writeAllAsync(target.fd, bytes, target.offset + start));
      } else {
        for (const s of target.segments) {
          const from = Math.max(start, s.at);
          const to = Math.min(start + bytes.length, s.at + s.length);
          if (from < to) writes.push(writeAllAsync(target.fd, bytes.subarray(from - start, to - start), s.offset + from - s.at));
        }
      }
    });
    await Promise.all(writes);
    this.onProgress?.(this.restoredBytes, this.totalBytes);
  }

  override _final(callback: (error?: Error | null) => void): void {
    try {
      const header = this.header;
      if (!header) throw new ExcpError('ERR_TRUNCATED', 'restore: no container header');
      if (!this.footer) throw new ExcpError('ERR_TRUNCATED', 'restore: no footer');
      verifyFingerprints(header, this.footer, this.hashers.map((h) => h.digest()));
      for (const fix of this.fixes) fixTorchFile(fix);
      for (const fd of this.fds.splice(0)) {
        fsyncSync(fd);
        closeSync(fd);
      }
      Promise.all(this.fixes.map((f) => rm(f.rawPath, { force: true }))).then(() => callback(), (e: unknown) => callback(e as Error));
    } catch (err) {
      callback(err as Error);
    }
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    for (const fd of this.fds.splice(0)) closeSync(fd);
    callback(error);
  }
}

/**
 * A torch.save file with recomputed CRCs for the storages that hold restored
 * tensors (moments or weights); every other byte as written. When every such
 * storage still has its recorded CRC (exact tensors: a keyframe's weights,
 * --lossless), the raw file is the original file and is renamed into place
 * instead of copied (a pytorch_model.bin can be most of a checkpoint).
 */
function fixTorchFile(fix: TorchFix): void {
  const readAt = (offset: number, length: number): Uint8Array => readExactlySync(fix.fd, offset, length, `restore: ${fix.finalPath}`);
  const checkpoint = readTorchCheckpoint(fix.size, readAt);
  const replacements = new Map<string, () => Iterable<Uint8Array>>();
  const storages = [...checkpoint.storages.values()];
  const step = 4 * 1024 * 1024;
  const chunksOf = (s: TorchStorage) => function* (): Iterable<Uint8Array> {
    for (let at = 0; at < s.entry.size; at += step) yield readAt(s.entry.dataOffset + at, Math.min(step, s.entry.size - at));
  };
  const checked = new Set<string>();
  for (const r of fix.ranges) {
    if (r.length === 0) continue;
    const s = storages.find((x) => r.offset >= x.entry.dataOffset && r.offset + r.length <= x.entry.dataOffset + x.entry.size);
    if (!s) throw new ExcpError('ERR_CORRUPT', `restore: ${fix.finalPath}: tensor bytes at ${r.offset} lie outside every storage`);
    if (checked.has(s.key)) continue;
    checked.add(s.key);
    let crc = 0;
    for (const chunk of chunksOf(s)()) crc = crc32(chunk, crc);
    if (crc !== s.entry.crc32) replacements.set(s.key, chunksOf(s));
  }
  if (replacements.size === 0) {
    fsyncSync(fix.fd);
    renameSync(fix.rawPath, fix.finalPath);
    return;
  }
  const out = openSync(fix.finalPath, 'wx');
  try {
    let position = 0;
    for (const chunk of rewriteTorchCheckpoint(checkpoint, readAt, replacements)) {
      writeAll(out, chunk, position);
      position += chunk.length;
    }
    fsyncSync(out);
  } finally {
    closeSync(out);
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

/** What a folder restore writes to. */
export interface FolderTargetOptions {
  /** Replace an existing folder. */
  force?: boolean | undefined;
  /** Paths that must not be overwritten (the inputs). */
  inputs?: Array<string | undefined>;
}

/**
 * Produce a folder atomically: into a temporary folder beside the target,
 * renamed over it only when the producer finished without error.
 * @param target the output folder
 * @param produce fills the given (empty) temporary folder
 */
export async function writeFolderAtomically(target: string, produce: (temp: string) => Promise<void>, options: FolderTargetOptions = {}): Promise<void> {
  const existing = await stat(target).catch(() => null);
  if (existing) {
    const real = await realpath(target);
    for (const input of options.inputs ?? []) {
      if (input && (await realpath(input).catch(() => null)) === real) throw new ExcpError('ERR_SAME_FILE', `${target}: output is also an input; refusing to overwrite it`);
    }
    if (!options.force) throw new ExcpError('ERR_EXISTS', `${target}: exists (use --force to overwrite)`);
    if (!existing.isDirectory()) throw new ExcpError('ERR_EXISTS', `${target}: is not a folder`);
  }
  // Not mkdtemp: it makes the folder 0700, and the restored folder should
  // have the permissions any new folder gets (0777 less the umask).
  const temp = join(dirname(target), `.${basename(target)}.excp-tmp-${process.pid}-${Date.now().toString(36)}`);
  await mkdir(temp, { mode: 0o777 });
  try {
    await produce(temp);
    if (existing) {
      const old = `${temp}.old`;
      await rename(target, old);
      await rename(temp, target);
      await rm(old, { recursive: true, force: true });
    } else {
      await rename(temp, target);
    }
  } catch (e) {
    await rm(temp, { recursive: true, force: true });
    throw e;
  }
}

/**
 * Does a container file hold a checkpoint folder (rather than one safetensors file)?
 * Reads only the preamble and header.
 * @param path container file
 */
export async function holdsFolder(path: string): Promise<boolean> {
  const handle = await open(path, 'r').catch((e: NodeJS.ErrnoException) => {
    throw new ExcpError('ERR_IO', `${path}: cannot open (${e.code ?? e.message})`);
  });
  try {
    // A short file is read whole, so its magic is checked before its length.
    const size = (await handle.stat()).size;
    if (size === 0) throw new ExcpError('ERR_TRUNCATED', `${path}: empty file, not an .excp container`);
    const length = readPreamble(await readExactly(handle, 0, Math.min(size, HEAD_FIXED_BYTES)));
    const header = decodeHeader(await readExactly(handle, HEAD_FIXED_BYTES, length + 4));
    return !header.files.every((f) => f.kind === 'safetensors' && f.path === null);
  } finally {
    await handle.close();
  }
}
