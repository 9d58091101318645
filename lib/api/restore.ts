/**
 * restore: the stages composed with stream.pipeline (container bytes ->
 * container reader -> chunk decoder -> writer), as a Duplex for users'
 * pipelines, into a file or a folder atomically for the CLI (lib/io/output.ts),
 * and as a one-shot buffer helper built from the same stream classes.
 */
import { createReadStream } from 'node:fs';
import { Duplex, PassThrough, Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { concatBytes } from '../core/bytes.js';
import { ExcpError } from '../core/errors.js';
import { type FolderTargetOptions, type OutputOptions, writeAtomically, writeFolderAtomically } from '../io/output.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { openCheckpoint } from '../formats/registry.js';
import { containerRank } from './open.js';
import { ChunkDecoder } from '../stream/codec.js';
import { resolveResources } from '../pool/budget.js';
import { ContainerReader } from '../stream/container.js';
import { FolderWriter } from '../stream/folder-writer.js';
import { StreamWriter } from '../stream/writer.js';

/** Options of restore. */
export interface RestoreOptions {
  /** The base the container was made against: a path (file or folder), or a safetensors file's bytes. */
  base?: string | Uint8Array | undefined;
  /**
   * Worker threads: 'auto' (the default: all cores the memory budget feeds,
   * fewer for a small container), 0 (the calling thread) or 1 to 4 per core.
   */
  threads?: number | 'auto' | undefined;
  /** Memory budget for everything in flight: bytes, or a size like '256M' or '1G' (default 256M). */
  memory?: number | string | undefined;
  onProgress?: ((done: number, total: number) => void) | undefined;
  /** A per-rank container of a distributed checkpoint: the base folder is read for this rank's files only. */
  rank?: number | undefined;
  /** Folder for what waits when the base is a stream (a FIFO): its tensors read out of order. */
  tmp?: string | undefined;
}

/** The base opened as a base (a folder's moments stay unnamed: only its weights and files are used). */
function openBase(options: RestoreOptions): Promise<Checkpoint | null> {
  return options.base !== undefined ? openCheckpoint(options.base, { role: 'base', rank: options.rank ?? null, spill: { dir: options.tmp, stage: 'restore' } }) : Promise.resolve(null);
}

/**
 * Restore as a Duplex: write container bytes, read the restored file's bytes.
 * @param options the base (when the container was made against one), threads, memory
 * @returns a Duplex for stream.pipeline
 * @throws ExcpError ERR_OUT_OF_RANGE for bad threads or memory, at once
 */
export function restore(options: RestoreOptions = {}): Duplex {
  const resources = resolveResources(options);
  return Duplex.from(async function* (source: AsyncIterable<Uint8Array>) {
    const base = await openBase(options);
    const decoder = new ChunkDecoder(base, resources);
    const writer = new StreamWriter(options.onProgress);
    const out = new PassThrough();
    const done = pipeline(Readable.from(source), new ContainerReader({ deferRecordCrc: true }), decoder, writer, out);
    done.catch(() => undefined);
    try {
      for await (const chunk of out) yield chunk as Uint8Array;
      await done;
    } finally {
      out.destroy();
      await done.catch(() => undefined);
      // The workers read the base: they stop before its files close.
      await decoder.close();
      await base?.close();
    }
  });
}

/**
 * One-shot restore of an in-memory container.
 * @param container container bytes
 * @param base base safetensors bytes, when needed
 * @returns the restored file's bytes
 */
export async function restoreBuffer(container: Uint8Array, base?: Uint8Array, options: Omit<RestoreOptions, 'base'> = {}): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  await pipeline(Readable.from([container]), restore({ ...options, base, threads: resolveResources(options, 0).threads }), new Writable({
    write(chunk: Uint8Array, _e, cb) {
      parts.push(chunk);
      cb();
    },
  }));
  return concatBytes(parts);
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
  const held = await containerRank(input);
  if (options.rank !== undefined && options.rank !== held) {
    throw new ExcpError('ERR_USAGE', `${input}: --rank ${options.rank} was given, but this container holds ${held === undefined ? 'a whole folder' : `rank ${held}'s files`}`);
  }
  const ranked = { ...options, rank: held };
  await writeFolderAtomically(target, (temp) => decodeInto(input, new FolderWriter(temp, options.onProgress), ranked), { force: options.force, inputs: [...(options.inputs ?? []), input] });
}

/**
 * Decode a container and check its fingerprints without writing anything (excp verify).
 * @param input container file
 * @param options base, threads
 */
export async function verifyContainerFile(input: string, options: RestoreOptions): Promise<void> {
  await decodeInto(input, new FolderWriter(null, options.onProgress), { ...options, rank: options.rank ?? await containerRank(input) });
}

/**
 * Decode a folder container into an existing folder (the temporary folder of
 * a restore that gathers several containers, lib/api/ranks.ts).
 * @param input container file
 * @param folder where its files are written (none of them may exist)
 * @param options base, threads, progress, rank
 * @param skip paths not to write (decoded and checked all the same)
 */
export async function decodeFolderInto(input: string, folder: string, options: RestoreOptions, skip?: ReadonlySet<string>): Promise<void> {
  await decodeInto(input, new FolderWriter(folder, options.onProgress, undefined, skip), options);
}

/**
 * Decode a container file (or stdin when input is undefined) into a
 * FolderWriter, whose files the workers write: the writer says where each
 * chunk goes (it is the decoder's placer), and its files close only once
 * the workers have stopped.
 */
async function decodeInto(input: string | undefined, writer: FolderWriter, options: RestoreOptions): Promise<void> {
  const resources = resolveResources(options);
  const base = await openBase(options);
  const decoder = new ChunkDecoder(base, { ...resources, placer: writer });
  try {
    await pipeline(input === undefined ? process.stdin : createReadStream(input), new ContainerReader({ deferRecordCrc: true }), decoder, writer);
  } finally {
    await decoder.close();
    writer.closeFiles();
    await base?.close();
  }
}
