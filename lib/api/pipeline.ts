/**
 * compress / restore: the stages composed with stream.pipeline, as Duplex
 * streams for users' pipelines, as file-to-file operations for the CLI
 * (atomic output: lib/output.ts), and as one-shot buffer helpers built from
 * the same stream classes.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Duplex, PassThrough, Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ContainerHeader } from '../container/format.js';
import { concatBytes } from '../core/bytes.js';
import { ExcpError } from '../core/errors.js';
import { type OutputOptions, writeAtomically } from '../io/output.js';
import { resolveOptions } from '../core/options.js';
import { planFolder, planSafetensors } from '../model/plan.js';
import { FolderCheckpoint, isDirectory } from '../formats/folder.js';
import { FolderWriter, type FolderTargetOptions, writeFolderAtomically } from '../stream/folder-writer.js';
import { SafetensorsFile, SafetensorsMemory, type TensorReader } from '../formats/safetensors-file.js';
import { ChunkDecoder, ChunkEncoder } from '../stream/codec.js';
import { ContainerReader, ContainerWriter, type TensorHashes } from '../stream/container.js';
import { entryRawBytes } from '../model/pack.js';
import { ChunkSource } from '../stream/source.js';
import { SafetensorsWriter } from '../stream/writer.js';
import type { CodecOptions, LooseOptions } from '../core/options.js';

/** Options of compress. */
export interface CompressOptions extends LooseOptions {
  /** Base checkpoint: a path, or the file's bytes. Absent: a keyframe. */
  base?: string | Uint8Array | undefined;
  /** Worker threads (default: all cores; 0 = in the calling thread). */
  threads?: number | undefined;
  /** Called as chunks are coded, with input bytes done and total. */
  onProgress?: ((done: number, total: number) => void) | undefined;
  /** Checkpoint folder only: parameter names in optimizer order (settles the param map). */
  paramMap?: readonly string[] | undefined;
  /** Per-tensor hashes in the footer (default 'auto': left out of small containers, see TensorHashes). */
  tensorHashes?: TensorHashes | undefined;
}

/** Options of restore. */
export interface RestoreOptions {
  base?: string | Uint8Array | undefined;
  threads?: number | undefined;
  onProgress?: ((done: number, total: number) => void) | undefined;
}

async function openReader(source: string | Uint8Array): Promise<TensorReader> {
  // A base folder: its moments stay unnamed (only its weights and files are used as a base).
  if (typeof source === 'string' && await isDirectory(source)) return FolderCheckpoint.open(source, { mapMoments: false });
  return typeof source === 'string' ? SafetensorsFile.open(source) : new SafetensorsMemory(source);
}

/** Plan the container for a checkpoint against an optional base. */
export function planFor(current: TensorReader, base: TensorReader | null, options: CodecOptions): ContainerHeader {
  if (current instanceof FolderCheckpoint) return planFolder(current.header.tensors, current.files, current.paramMap, base ? base.byName : null, options);
  return planSafetensors(current.header.tensors, current.header.raw, base ? base.byName : null, options);
}

/**
 * The compress stages as one Readable of container bytes.
 * @param current the checkpoint (random access)
 * @param base the base, or null
 * @param options validated options
 * @param threads worker threads, or 'auto' (all cores, none for a small checkpoint)
 */
export function compressReadable(current: TensorReader, base: TensorReader | null, options: CodecOptions, threads: number | 'auto',
  onProgress?: (done: number, total: number) => void, hashes: TensorHashes = 'auto'): { stream: Readable; header: ContainerHeader; done: Promise<void> } {
  const header = planFor(current, base, options);
  const source = new ChunkSource(header, current, base);
  const encoder = new ChunkEncoder(header, { threads });
  const writer = new ContainerWriter(header, hashes);
  if (onProgress) {
    // Progress in checkpoint bytes: an entry's chunk covers its elements in every member tensor.
    const bytesPerElement = header.entries.map((e) => (e.elements ? entryRawBytes(header.tensors, e) / e.elements : 0));
    const total = current.header.dataLength;
    let done = 0;
    encoder.on('data', (r: { entry: number; stats: { elements: number } }) => {
      done += r.stats.elements * bytesPerElement[r.entry]!;
      onProgress(done, total);
    });
  }
  const out = new PassThrough();
  const done = pipeline(source, encoder, writer, out).finally(() => encoder.close());
  done.catch(() => undefined);
  return { stream: out, header, done };
}

/** Copy a byte stream into a fresh temporary file; returns its path and a cleanup. */
async function spool(source: AsyncIterable<Uint8Array>): Promise<{ path: string; cleanup: () => Promise<void> }> {
  const dir = await mkdtemp(join(tmpdir(), 'excp-in-'));
  const path = join(dir, 'input');
  const cleanup = () => rm(dir, { recursive: true, force: true });
  try {
    await pipeline(Readable.from(source), createWriteStream(path));
  } catch (e) {
    await cleanup();
    throw e;
  }
  return { path, cleanup };
}

/**
 * Container bytes for a checkpoint given as a path or as a byte stream (which
 * is spooled to a temporary file first: the method needs a parameter and its
 * moments together, wherever they sit, so the input must be random access).
 */
async function* compressedBytes(input: string | AsyncIterable<Uint8Array>, options: CompressOptions): AsyncGenerator<Uint8Array> {
  const codec = resolveOptions(stripRuntime(options));
  const spooled = typeof input === 'string' ? null : await spool(input);
  let base: TensorReader | null = null;
  let current: TensorReader | null = null;
  try {
    base = options.base !== undefined ? await openReader(options.base) : null;
    current = typeof input === 'string' && await isDirectory(input)
      ? await FolderCheckpoint.open(input, { mapMoments: true, previous: base instanceof FolderCheckpoint ? base : null, explicit: options.paramMap ?? null })
      : await SafetensorsFile.open(spooled ? spooled.path : (input as string)).catch((e: unknown) => {
      if (spooled && e instanceof ExcpError) throw new ExcpError(e.code, e.message.replace(spooled.path, '<input>'));
      throw e;
    });
    const { stream, done } = compressReadable(current, base, codec, options.threads ?? 'auto', options.onProgress, options.tensorHashes);
    for await (const chunk of stream) yield chunk as Uint8Array;
    await done;
  } finally {
    await current?.close();
    await base?.close();
    await spooled?.cleanup();
  }
}

/**
 * Compress as a Duplex: write safetensors bytes, read container bytes.
 * The input is spooled to a temporary file (bounded memory).
 * @param options method options and the base
 * @returns a Duplex for stream.pipeline
 */
export function compress(options: CompressOptions = {}): Duplex {
  resolveOptions(stripRuntime(options)); // bad options throw here, not later inside the stream
  return Duplex.from((source: AsyncIterable<Uint8Array>) => compressedBytes(source, options));
}

/**
 * Restore as a Duplex: write container bytes, read safetensors bytes.
 * @param options the base (when the container was made against one)
 * @returns a Duplex for stream.pipeline
 */
export function restore(options: RestoreOptions = {}): Duplex {
  return Duplex.from(async function* (source: AsyncIterable<Uint8Array>) {
    const base = options.base !== undefined ? await openReader(options.base) : null;
    const decoder = new ChunkDecoder(base, { threads: options.threads ?? 'auto' });
    const writer = new SafetensorsWriter(options.onProgress);
    const out = new PassThrough();
    const done = pipeline(Readable.from(source), new ContainerReader(), decoder, writer, out);
    done.catch(() => undefined);
    try {
      for await (const chunk of out) yield chunk as Uint8Array;
      await done;
    } finally {
      await decoder.close();
      await base?.close();
    }
  });
}

function stripRuntime(o: CompressOptions): LooseOptions {
  const { base: _b, threads: _t, onProgress: _p, paramMap: _m, tensorHashes: _h, ...rest } = o;
  return rest;
}

/**
 * One-shot compress of an in-memory checkpoint.
 * @param current safetensors bytes
 * @param base base safetensors bytes, or undefined for a keyframe
 * @param options method options
 * @returns container bytes
 */
export async function compressBuffer(current: Uint8Array, base?: Uint8Array, options: Omit<CompressOptions, 'base'> = {}): Promise<Uint8Array> {
  const codec = resolveOptions(stripRuntime(options));
  const cur = new SafetensorsMemory(current, '<current>');
  const b = base ? new SafetensorsMemory(base, '<base>') : null;
  const { stream, done } = compressReadable(cur, b, codec, options.threads ?? 0, options.onProgress, options.tensorHashes);
  const parts: Uint8Array[] = [];
  for await (const c of stream) parts.push(c as Uint8Array);
  await done;
  return concatBytes(parts);
}

/**
 * One-shot restore of an in-memory container.
 * @param container container bytes
 * @param base base safetensors bytes, when needed
 * @returns safetensors bytes
 */
export async function restoreBuffer(container: Uint8Array, base?: Uint8Array, options: Omit<RestoreOptions, 'base'> = {}): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  await pipeline(Readable.from([container]), restore({ ...options, base, threads: options.threads ?? 0 }), new Writable({
    write(chunk: Uint8Array, _e, cb) {
      parts.push(chunk);
      cb();
    },
  }));
  return concatBytes(parts);
}


/** Compress a file (or stdin when input is undefined) into a writable. */
export async function compressTo(input: string | undefined, out: Writable, options: CompressOptions): Promise<void> {
  await pipeline(Readable.from(compressedBytes(input ?? process.stdin, options)), out, { end: false });
}

/** Restore a container file (or stdin) into a writable. */
export async function restoreTo(input: string | undefined, out: Writable, options: RestoreOptions): Promise<void> {
  const source = input === undefined ? process.stdin : createReadStream(input);
  await pipeline(source, restore(options), out, { end: false });
}

/**
 * Restore a single-file container into the file `target`, atomically. A
 * regular file is written chunk by chunk at each tensor's offset, so the
 * moments that come with their weight never wait in a spill store; a device
 * or FIFO gets the stream of {@link restoreTo}.
 * @param input container file, or undefined for stdin
 * @param target output path
 * @param options base, threads, progress, force, inputs (paths that must not be overwritten)
 */
export async function restoreToFile(input: string | undefined, target: string, options: RestoreOptions & OutputOptions): Promise<void> {
  await writeAtomically(target, async (out, fd) => {
    if (fd === undefined) {
      await restoreTo(input, out, options);
      return;
    }
    await decodeInto(input, new FolderWriter(null, options.onProgress, fd), options);
  }, { force: options.force, inputs: [...(options.inputs ?? []), input] });
}

/**
 * Restore a container that holds a checkpoint folder into the folder `target`
 * (written into a temporary folder beside it, renamed at the end).
 * @param input container file
 * @param target output folder
 * @param options base (a folder), threads, progress, force, inputs
 */
export async function restoreToFolder(input: string, target: string, options: RestoreOptions & FolderTargetOptions): Promise<void> {
  await writeFolderAtomically(target, (temp) => decodeInto(input, new FolderWriter(temp, options.onProgress), options), { force: options.force, inputs: [...(options.inputs ?? []), input] });
}

/**
 * Decode a folder container and check its fingerprints without writing anything (excp verify).
 * @param input container file
 * @param options base (a folder), threads
 */
export async function verifyFolderContainer(input: string, options: RestoreOptions): Promise<void> {
  await decodeInto(input, new FolderWriter(null, options.onProgress), options);
}

/** Decode a container file (or stdin when input is undefined) into a FolderWriter. */
async function decodeInto(input: string | undefined, writer: FolderWriter, options: RestoreOptions): Promise<void> {
  const base = options.base !== undefined ? await openReader(options.base) : null;
  const decoder = new ChunkDecoder(base, { threads: options.threads ?? 'auto' });
  try {
    await pipeline(input === undefined ? process.stdin : createReadStream(input), new ContainerReader(), decoder, writer);
  } finally {
    await decoder.close();
    await base?.close();
  }
}

export { holdsFolder } from '../stream/folder-writer.js';
