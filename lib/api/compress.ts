/**
 * compress: the stages composed with stream.pipeline (checkpoint -> chunk
 * source -> chunk encoder -> container writer), as a Duplex for users'
 * pipelines, to a Writable for the CLI, and as a one-shot buffer helper
 * built from the same stream classes.
 */
import { Duplex, PassThrough, Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { concatBytes } from '../core/bytes.js';
import { DTYPE_BYTES, toFloat32 } from '../core/dtype.js';
import { type CodecOptions, type LooseOptions, resolveOptions } from '../core/options.js';
import type { SpillOptions } from '../io/spill.js';
import { BaseCheck, implausibleBase } from '../method/base-check.js';
import type { Checkpoint, ContainerHeader } from '../model/checkpoint.js';
import { entryRawBytes } from '../model/pack.js';
import { planHeader, streamReadOrder } from '../model/plan.js';
import { openCheckpoint } from '../formats/registry.js';
import { SafetensorsMemory } from '../formats/safetensors-file.js';
import { SafetensorsStream } from '../formats/safetensors-stream.js';
import { ChunkEncoder } from '../stream/codec.js';
import { ContainerWriter, type TensorHashes } from '../stream/container.js';
import { RecordReorder } from '../stream/reorder.js';
import { type ChunkJob, ChunkSource } from '../stream/source.js';

/**
 * What to do with a base that does not look like an earlier checkpoint of
 * the same run (lib/method/base-check.ts): refuse (ERR_BASE_IMPLAUSIBLE),
 * warn through onNotice and go on, or not look.
 */
export type BaseCheckMode = 'refuse' | 'warn' | 'off';

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
  /**
   * Folder for what waits when the checkpoint comes from a stream (default:
   * the system's temporary folder): the tensors that arrive before their
   * partners, beyond {@link STREAM_MEMORY_BYTES} in memory.
   */
  tmp?: string | undefined;
  /** The base check (default 'refuse'). */
  baseCheck?: BaseCheckMode | undefined;
  /** One line about something the user should know (a base check warning, what a folder holds). */
  onNotice?: ((message: string) => void) | undefined;
}

/**
 * Bytes of a streamed checkpoint that may wait in memory for their partners
 * before they go to a temporary file: a parameter whose weight and moments
 * are neighbours in the file waits its weight and first moment here.
 */
export const STREAM_MEMORY_BYTES = 64 * 1024 * 1024;

/** The container header for a checkpoint against an optional base. */
export function planFor(current: Checkpoint, base: Checkpoint | null, options: CodecOptions): ContainerHeader {
  return planHeader(current, base ? base.byName : null, options);
}

/** What compressReadable does besides coding. */
export interface ReadableExtras {
  /** The base check of a checkpoint that is read once (a stream): judged when the last chunk has been read. */
  baseCheck?: BaseCheckMode | undefined;
  onNotice?: ((message: string) => void) | undefined;
  /** Where early records wait when the checkpoint is read out of container order. */
  spill?: SpillOptions | undefined;
}

/**
 * The compress stages as one Readable of container bytes.
 * @param current the checkpoint (random access, or a stream: `sequential`)
 * @param base the base, or null
 * @param options validated options
 * @param threads worker threads, or 'auto' (all cores, none for a small checkpoint)
 * @param extras the base check of a stream, notices, where early records wait
 */
export function compressReadable(current: Checkpoint, base: Checkpoint | null, options: CodecOptions, threads: number | 'auto',
  onProgress?: (done: number, total: number) => void, hashes: TensorHashes = 'auto', extras: ReadableExtras = {}): { stream: Readable; header: ContainerHeader; done: Promise<void> } {
  const header = planFor(current, base, options);
  base?.expect?.(header.entries.filter((e) => e.base).map((e) => header.tensors[e.weight]!.name));
  // A stream is read in the order its bytes come; its records are put back in container order.
  const order = current.sequential ? streamReadOrder(header, new Map(current.tensors.map((t) => [t.name, t.begin]))) : undefined;
  const reordered = order !== undefined && order.some((entry, i) => entry !== i);
  const check = base && (current.sequential || base.sequential) && (extras.baseCheck ?? 'refuse') !== 'off' ? streamBaseCheck(header, base.path, extras) : {};
  const source = new ChunkSource(header, current, base, { order, ...check });
  const encoder = new ChunkEncoder(header, { threads });
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
  const stages = reordered ? [source, encoder, new RecordReorder(header, extras.spill), writer, out] as const : [source, encoder, writer, out] as const;
  const done = (pipeline as (...s: unknown[]) => Promise<void>)(...stages).finally(() => encoder.close());
  done.catch(() => undefined);
  return { stream: out, header, done };
}

/** Entries the base check looks at: coded as a lossy residual against the base. */
function checkedEntries(header: ContainerHeader): number[] {
  return header.entries.flatMap((e, i) => (e.kind === 'param' && e.base && !e.exactWeight ? [i] : []));
}

/** The base check of a stream: every chunk's weight and base seen as it is read, judged at the end. */
function streamBaseCheck(header: ContainerHeader, baseName: string, extras: ReadableExtras): { observe: (job: ChunkJob) => void; finish: () => void } {
  const checked = new Set(checkedEntries(header));
  const check = new BaseCheck();
  return {
    observe: (job) => {
      if (!checked.has(job.entry) || !job.input.base) return;
      const e = header.entries[job.entry]!;
      const t = header.tensors[e.weight]!;
      check.add(t.name, e.elements, toFloat32(job.input.weight, t.dtype), toFloat32(job.input.base, t.dtype));
    },
    finish: () => judge(check, baseName, extras.baseCheck ?? 'refuse', extras.onNotice),
  };
}

function judge(check: BaseCheck, baseName: string, mode: BaseCheckMode, onNotice?: (message: string) => void): void {
  const verdict = check.verdict();
  if (verdict.plausible) return;
  const err = implausibleBase(verdict, baseName);
  if (mode === 'refuse') throw err;
  onNotice?.(`warning: ${err.message.replace(/\. Check --base, or give --force.*$/, '')}; compressing anyway (--force)`);
}

/** Elements sampled per tensor by the base check of a file: 4 runs of 4096, spread over the tensor. */
const SAMPLE_RUNS = 4;
const SAMPLE_RUN = 4096;

/**
 * The base check of two checkpoints read by random access, before anything
 * is coded: a few runs of each lossy residual's weight and base.
 * @throws ExcpError ERR_BASE_IMPLAUSIBLE in 'refuse' mode
 */
async function checkBase(current: Checkpoint, base: Checkpoint, options: CodecOptions, mode: BaseCheckMode, onNotice?: (message: string) => void): Promise<void> {
  const header = planFor(current, base, options);
  const check = new BaseCheck();
  for (const i of checkedEntries(header)) {
    const e = header.entries[i]!;
    const t = header.tensors[e.weight]!;
    const eb = DTYPE_BYTES[t.dtype];
    const runs = Math.min(SAMPLE_RUNS, Math.ceil(e.elements / SAMPLE_RUN));
    for (let r = 0; r < runs; r++) {
      const start = Math.floor(((e.elements - Math.min(SAMPLE_RUN, e.elements)) * r) / Math.max(1, runs - 1));
      const end = Math.min(e.elements, start + SAMPLE_RUN);
      const w = await current.tensorBytes(current.byName.get(t.name)!, start * eb, end * eb);
      const b = await base.tensorBytes(base.byName.get(t.name)!, start * eb, end * eb);
      check.add(t.name, e.elements, toFloat32(w, t.dtype), toFloat32(b, t.dtype));
    }
  }
  judge(check, base.path, mode, onNotice);
}

/**
 * Container bytes for a checkpoint given as a path or as a byte stream. A
 * stream is read once, forward: a tensor that comes before its partners
 * waits (in memory, then in a temporary file in `tmp`) until they come.
 */
async function* compressedBytes(input: string | AsyncIterable<Uint8Array>, options: CompressOptions): AsyncGenerator<Uint8Array> {
  const codec = resolveOptions(stripRuntime(options));
  const spill: SpillOptions = { dir: options.tmp, stage: 'compress', memoryBytes: STREAM_MEMORY_BYTES };
  let base: Checkpoint | null = null;
  let current: Checkpoint | null = null;
  try {
    base = options.base !== undefined ? await openCheckpoint(options.base, { role: 'base', spill }) : null;
    current = typeof input === 'string'
      ? await openCheckpoint(input, { role: 'current', previous: base, paramMap: options.paramMap ?? null, spill, onNotice: options.onNotice })
      : await SafetensorsStream.open(input, 'stdin', spill);
    const mode = options.baseCheck ?? 'refuse';
    if (base && !current.sequential && !base.sequential && mode !== 'off') await checkBase(current, base, codec, mode, options.onNotice);
    const { stream, done } = compressReadable(current, base, codec, options.threads ?? 'auto', options.onProgress, options.tensorHashes,
      { baseCheck: mode, onNotice: options.onNotice, spill });
    for await (const chunk of stream) yield chunk as Uint8Array;
    await done;
    if (current instanceof SafetensorsStream) await current.end();
  } finally {
    await current?.close();
    await base?.close();
  }
}

function stripRuntime(o: CompressOptions): LooseOptions {
  const { base: _b, threads: _t, onProgress: _p, paramMap: _m, tensorHashes: _h, tmp: _d, baseCheck: _c, onNotice: _n, ...rest } = o;
  return rest;
}

/**
 * Compress as a Duplex: write safetensors bytes, read container bytes.
 * The input is read once, forward; what must wait for its partners waits
 * in memory up to STREAM_MEMORY_BYTES, then in a temporary file (`tmp`).
 * @param options method options and the base
 * @returns a Duplex for stream.pipeline
 * @throws ExcpError ERR_OUT_OF_RANGE for a bad option, at once
 */
export function compress(options: CompressOptions = {}): Duplex {
  resolveOptions(stripRuntime(options)); // bad options throw here, not later inside the stream
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
  const cur = new SafetensorsMemory(current, '<current>');
  const b = base ? new SafetensorsMemory(base, '<base>') : null;
  const mode = options.baseCheck ?? 'refuse';
  if (b && mode !== 'off') await checkBase(cur, b, codec, mode, options.onNotice);
  const { stream, done } = compressReadable(cur, b, codec, options.threads ?? 0, options.onProgress, options.tensorHashes);
  const parts: Uint8Array[] = [];
  for await (const c of stream) parts.push(c as Uint8Array);
  await done;
  return concatBytes(parts);
}

/**
 * Compress a file (or stdin when input is undefined) into a writable.
 * @param input checkpoint path (file or folder), or undefined for stdin
 * @param out where the container bytes go (not ended)
 * @param options method options, base, threads, progress
 */
export async function compressTo(input: string | undefined, out: Writable, options: CompressOptions): Promise<void> {
  await pipeline(Readable.from(compressedBytes(input ?? process.stdin, options)), out, { end: false });
}
