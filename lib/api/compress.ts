/**
 * compress: the stages composed with stream.pipeline (checkpoint -> chunk
 * source -> chunk encoder -> container writer), as a Duplex for users'
 * pipelines, to a Writable for the CLI, and as a one-shot buffer helper
 * built from the same stream classes.
 */
import { tmpdir } from 'node:os';
import { Duplex, PassThrough, Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { concatBytes } from '../core/bytes.js';
import { ExcpError } from '../core/errors.js';
import { type CodecOptions, type LooseOptions, resolveOptions } from '../core/options.js';
import { spoolToFile } from '../io/spool.js';
import type { Checkpoint, ContainerHeader } from '../model/checkpoint.js';
import { entryRawBytes } from '../model/pack.js';
import { planHeader } from '../model/plan.js';
import { openCheckpoint } from '../formats/registry.js';
import { SafetensorsMemory } from '../formats/safetensors-file.js';
import { ChunkEncoder } from '../stream/codec.js';
import { resolveResources } from '../pool/budget.js';
import { ContainerWriter, type TensorHashes } from '../stream/container.js';
import { ChunkSource } from '../stream/source.js';

/** Options of compress. */
export interface CompressOptions extends LooseOptions {
  /** Base checkpoint: a path, or the file's bytes. Absent: a keyframe. */
  base?: string | Uint8Array | undefined;
  /**
   * Worker threads: 'auto' (the default: all cores the memory budget feeds,
   * none for a small checkpoint), 0 (the calling thread) or 1 to 4 per core.
   */
  threads?: number | 'auto' | undefined;
  /** Memory budget for everything in flight: bytes, or a size like '256M' or '1G' (default 256M). */
  memory?: number | string | undefined;
  /** Called as chunks are coded, with input bytes done and total. */
  onProgress?: ((done: number, total: number) => void) | undefined;
  /** Checkpoint folder only: parameter names in optimizer order (settles the param map). */
  paramMap?: readonly string[] | undefined;
  /** Per-tensor hashes in the footer (default 'auto': left out of small containers, see TensorHashes). */
  tensorHashes?: TensorHashes | undefined;
  /** Folder for the copy of a checkpoint that comes from a stream (default: the system's temporary folder). */
  tmp?: string | undefined;
}

/** The container header for a checkpoint against an optional base. */
export function planFor(current: Checkpoint, base: Checkpoint | null, options: CodecOptions): ContainerHeader {
  return planHeader(current, base ? base.byName : null, options);
}

/**
 * The compress stages as one Readable of container bytes.
 * @param current the checkpoint (random access)
 * @param base the base, or null
 * @param options validated options
 * @param threads worker threads, or 'auto' (all cores the budget feeds, none for a small checkpoint)
 * @param onProgress called with checkpoint bytes coded and in all
 * @param hashes per-tensor hashes in the footer
 * @param memory the memory budget (bytes or a size; default 256M)
 * @returns the bytes, the header, and `done`: settles once every stage ended and the workers stopped
 *   (destroy the stream and await it before closing the checkpoints: the workers read their files)
 */
export function compressReadable(current: Checkpoint, base: Checkpoint | null, options: CodecOptions, threads: number | 'auto',
  onProgress?: (done: number, total: number) => void, hashes: TensorHashes = 'auto', memory?: number | string): { stream: Readable; header: ContainerHeader; done: Promise<void> } {
  const header = planFor(current, base, options);
  const source = new ChunkSource(header, current, base);
  const encoder = new ChunkEncoder(header, { threads, memory, bytesOnMain: !source.positional });
  const writer = new ContainerWriter(header, hashes);
  if (onProgress) {
    // Progress in checkpoint bytes: an entry's chunk covers its elements in every member tensor.
    const bytesPerElement = header.entries.map((e) => (e.elements ? entryRawBytes(header.tensors, e) / e.elements : 0));
    const total = current.dataLength;
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

/**
 * Container bytes for a checkpoint given as a path or as a byte stream (which
 * is spooled to a temporary file first: the method needs a parameter and its
 * moments together, wherever they sit, so the input must be random access).
 */
async function* compressedBytes(input: string | AsyncIterable<Uint8Array>, options: CompressOptions): AsyncGenerator<Uint8Array> {
  const codec = resolveOptions(stripRuntime(options));
  const { threads } = resolveResources(options);
  const spooled = typeof input === 'string' ? null : await spoolToFile(input, options.tmp ?? tmpdir());
  let base: Checkpoint | null = null;
  let current: Checkpoint | null = null;
  try {
    base = options.base !== undefined ? await openCheckpoint(options.base, { role: 'base' }) : null;
    current = await openCheckpoint(spooled ? spooled.path : (input as string), { role: 'current', previous: base, paramMap: options.paramMap ?? null }).catch((e: unknown) => {
      if (spooled && e instanceof ExcpError) throw new ExcpError(e.code, e.message.replace(spooled.path, '<input>'));
      throw e;
    });
    const { stream, done } = compressReadable(current, base, codec, threads, options.onProgress, options.tensorHashes, options.memory);
    try {
      for await (const chunk of stream) yield chunk as Uint8Array;
      await done;
    } finally {
      // Stopped early (an error downstream): the workers must stop reading before the files close.
      stream.destroy();
      await done.catch(() => undefined);
    }
  } finally {
    await current?.close();
    await base?.close();
    await spooled?.remove();
  }
}

function stripRuntime(o: CompressOptions): LooseOptions {
  const { base: _b, threads: _t, memory: _y, onProgress: _p, paramMap: _m, tensorHashes: _h, tmp: _d, ...rest } = o;
  return rest;
}

/**
 * Compress as a Duplex: write safetensors bytes, read container bytes.
 * The input is spooled to a temporary file (bounded memory).
 * @param options method options and the base
 * @returns a Duplex for stream.pipeline
 * @throws ExcpError ERR_OUT_OF_RANGE for a bad option (threads and memory included), at once
 */
export function compress(options: CompressOptions = {}): Duplex {
  // Bad options throw here, not later inside the stream.
  resolveOptions(stripRuntime(options));
  resolveResources(options);
  return Duplex.from((source: AsyncIterable<Uint8Array>) => compressedBytes(source, options));
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
  const { threads } = resolveResources(options, 0);
  const cur = new SafetensorsMemory(current, '<current>');
  const b = base ? new SafetensorsMemory(base, '<base>') : null;
  const { stream, done } = compressReadable(cur, b, codec, threads, options.onProgress, options.tensorHashes, options.memory);
  const parts: Uint8Array[] = [];
  for await (const c of stream) parts.push(c as Uint8Array);
  await done;
  return concatBytes(parts);
}

/**
 * Compress a file (or stdin when input is undefined) into a writable.
 * @param input checkpoint path (file or folder), or undefined for stdin
 * @param out where the container bytes go (not ended)
 * @param options method options, base, threads, memory, progress
 * @throws ExcpError ERR_OUT_OF_RANGE for a bad option, before anything is read
 */
export async function compressTo(input: string | undefined, out: Writable, options: CompressOptions): Promise<void> {
  resolveOptions(stripRuntime(options));
  resolveResources(options);
  await pipeline(Readable.from(compressedBytes(input ?? process.stdin, options)), out, { end: false });
}
