/**
 * compress: the stages composed with stream.pipeline (checkpoint -> chunk
 * source -> chunk encoder -> container writer), as a Duplex for users'
 * pipelines, to a Writable for the CLI, and as a one-shot buffer helper
 * built from the same stream classes.
 */
import { Duplex, PassThrough, Readable, type Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { concatBytes } from '../core/bytes.js';
import { DTYPE_BYTES, LOSSY_DTYPES, toFloat32 } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { type CodecOptions, type LooseOptions, resolveOptions } from '../core/options.js';
import { SPILL_MEMORY_BYTES, type SpillOptions } from '../io/spill.js';
import { BaseCheck, type BaseVerdict, implausibleBase, unrelatedBase } from '../method/base-check.js';
import type { Checkpoint, ContainerHeader, TensorInfo } from '../model/checkpoint.js';
import { entryRawBytes } from '../model/pack.js';
import { planHeader, streamReadOrder } from '../model/plan.js';
import { FILE_PREFIX, OPTIMIZER_FILE, STATE_PREFIX } from '../formats/folder.js';
import { checkpointNotices } from '../formats/notice.js';
import { isDirectory, openCheckpoint } from '../formats/registry.js';
import { SafetensorsMemory } from '../formats/safetensors-file.js';
import { SafetensorsStream } from '../formats/safetensors-stream.js';
import type { ParamPrior } from '../formats/optimizer-map.js';
import { ChunkEncoder } from '../stream/codec.js';
import { resolveResources } from '../pool/budget.js';
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
  /** The param map carried from the previous step of a run (a chain passes it: ids are stable within a run). */
  paramPrior?: ParamPrior | null | undefined;
  /** Per-tensor hashes in the footer (default 'auto': left out of small containers, see TensorHashes). */
  tensorHashes?: TensorHashes | undefined;
  /**
   * Folder for what waits when the checkpoint comes from a stream (default:
   * the system's temporary folder): the tensors that arrive before their
   * partners, beyond {@link streamMemoryBytes} in memory.
   */
  tmp?: string | undefined;
  /** A distributed checkpoint folder (DCP): compress only this rank's files (and the shared ones); the base is read the same way. */
  rank?: number | undefined;
  /** The base check (default 'refuse'). */
  baseCheck?: BaseCheckMode | undefined;
  /**
   * One line about something the user should know: a base check warning,
   * what a checkpoint holds when the method cannot be applied to it
   * (lib/formats/notice.ts), what was carried as it is and why (an
   * optimizer that is not Adam's, param ids left unmapped).
   */
  onNotice?: ((message: string) => void) | undefined;
  /** compressTo: called at the end with the sizes in and out. */
  onStats?: ((stats: CompressStats) => void) | undefined;
}

/**
 * Bytes of a streamed checkpoint that may wait in memory for their partners
 * before they go to a temporary file, at most: a parameter whose weight and
 * moments are neighbours in the file waits its weight and first moment
 * here. A run takes {@link streamMemoryBytes} of its memory budget.
 */
export const STREAM_MEMORY_BYTES = 64 * 1024 * 1024;

/**
 * What each store of a streamed run (the checkpoint's tensors that wait,
 * the base's, the records that wait to go out in order) keeps in memory:
 * a sixteenth of the memory budget, up to STREAM_MEMORY_BYTES. At the
 * default 256M that is 16 MiB: with all of 64 MiB a residual compress from
 * stdin peaked at 333 MB (160m pair, one worker), over the budget.
 * @param memory the memory budget in bytes
 */
export function streamMemoryBytes(memory: number): number {
  return Math.min(STREAM_MEMORY_BYTES, Math.floor(memory / 16));
}

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
  /** The memory budget (bytes or a size; default 256M): how many workers it feeds (lib/pool/budget.ts). */
  memory?: number | string | undefined;
}

/**
 * The compress stages as one Readable of container bytes.
 * @param current the checkpoint (random access, or a stream: `sequential`)
 * @param base the base, or null
 * @param options validated options
 * @param threads worker threads, or 'auto' (all cores the budget feeds, none for a small checkpoint)
 * @param onProgress called with checkpoint bytes coded and in all
 * @param hashes per-tensor hashes in the footer
 * @param extras the base check of a stream, notices, where early records wait, the memory budget
 * @returns the bytes, the header, and `done`: settles once every stage ended and the workers stopped
 *   (destroy the stream and await it before closing the checkpoints: the workers read their files)
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
  // A stream's tensors that wait for their partners, and records that wait to go out in order, stay in memory up to their spill stores' limit.
  const spillMemory = extras.spill?.memoryBytes ?? SPILL_MEMORY_BYTES;
  const heldOnMain = spillMemory * ((current.sequential ? 1 : 0) + (base?.sequential ? 1 : 0) + (reordered ? 1 : 0));
  const encoder = new ChunkEncoder(header, { threads, memory: extras.memory, bytesOnMain: !source.positional, heldOnMain });
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
      // A job that carries no bytes (read by its worker) comes only from a checkpoint read by path, never checked here.
      if (!checked.has(job.entry) || !job.input?.base) return;
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

/** The weights the base check looks at in a planned checkpoint: those of its parameters (coded lossy against a base when the base has them). */
function paramWeights(header: ContainerHeader): TensorInfo[] {
  if (header.options.lossless) return [];
  return header.entries.filter((e) => e.kind === 'param').map((e) => header.tensors[e.weight]!).map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, begin: 0, end: 0 }));
}

/** The weights of a checkpoint folder opened without its moments named: its float model tensors. */
function folderWeights(folder: Checkpoint): TensorInfo[] {
  return folder.tensors.filter((t) => LOSSY_DTYPES.has(t.dtype) && !t.name.startsWith(FILE_PREFIX) && !t.name.startsWith(STATE_PREFIX));
}

/**
 * The base check of two checkpoints read by random access, before anything
 * is coded: does the base hold the checkpoint's weights (same name, dtype
 * and shape), and do they point the same way (a few runs of each)?
 * @param weights the checkpoint's weights to look at
 * @returns what was found: the caller says (or refuses) what a base that shares no weight means
 * @throws ExcpError ERR_BASE_IMPLAUSIBLE in 'refuse' mode
 */
async function checkBase(current: Checkpoint, base: Checkpoint, weights: readonly TensorInfo[], mode: BaseCheckMode, onNotice?: (message: string) => void): Promise<BaseFindings> {
  const check = new BaseCheck();
  let shared = 0;
  let example: { name: string; here: string; there: string | null } | null = null;
  const describe = (t: TensorInfo): string => `${t.dtype} [${t.shape.join(', ')}]`;
  for (const w of weights) {
    const t = current.byName.get(w.name)!;
    const b = base.byName.get(t.name);
    if (!b || b.dtype !== t.dtype || b.shape.join() !== t.shape.join()) {
      example ??= { name: t.name, here: describe(t), there: b ? describe(b) : null };
      continue;
    }
    shared++;
    const eb = DTYPE_BYTES[t.dtype];
    const elements = (t.end - t.begin) / eb;
    const runs = Math.min(SAMPLE_RUNS, Math.ceil(elements / SAMPLE_RUN));
    for (let r = 0; r < runs; r++) {
      const start = Math.floor(((elements - Math.min(SAMPLE_RUN, elements)) * r) / Math.max(1, runs - 1));
      const end = Math.min(elements, start + SAMPLE_RUN);
      const wb = await current.tensorBytes(t, start * eb, end * eb);
      const bb = await base.tensorBytes(b, start * eb, end * eb);
      check.add(t.name, elements, toFloat32(wb, t.dtype), toFloat32(bb, t.dtype));
    }
  }
  judge(check, base.path, mode, onNotice);
  return { ...check.verdict(), unrelated: shared === 0 && example ? unrelatedBase(base.path, weights.length, example) : null };
}

/** What checkBase found: the verdict, and the error for a base that shares no weight with the checkpoint. */
type BaseFindings = BaseVerdict & { unrelated: ExcpError | null };

/**
 * A folder's moments are matched to its parameters by how the weights
 * changed since the base. When that left ids unnamed and the base shares no
 * weight with the checkpoint, or is the checkpoint itself, the base is the
 * cause and most likely a mistake: refuse, saying so, rather than code
 * those moments exactly with a notice that blames the names.
 */
function refuseUnmappable(findings: BaseFindings, current: Checkpoint, baseName: string, input: string): void {
  const map = current.info?.['paramMap'] as { ambiguous?: unknown[] } | undefined;
  if (!map?.ambiguous?.length) return;
  const how = 'the optimizer\'s moments are matched to parameters by how the weights changed since the base: give the previous checkpoint as --base, or --param-map FILE';
  if (findings.unrelated) throw new ExcpError('ERR_BASE_IMPLAUSIBLE', findings.unrelated.message.replace(/\. Check --base.*$/, `; ${how}`));
  if (findings.identical) throw new ExcpError('ERR_BASE_IMPLAUSIBLE', `compress: ${baseName} holds the same weights as ${input} (the same checkpoint?): ${how}`);
}

/** A base that shares no weight is no residual's base: the checkpoint is coded as a keyframe would be. Say so. */
function noticeUnrelated(findings: BaseFindings, onNotice?: (message: string) => void): void {
  if (findings.unrelated) onNotice?.(`notice: ${findings.unrelated.message.replace(/^compress: /, '').replace(/\. Check --base, or give --force.*$/, '')}: the checkpoint is coded as a keyframe (exactly), as without --base`);
}

/**
 * Container bytes for a checkpoint given as a path or as a byte stream. A
 * stream is read once, forward: a tensor that comes before its partners
 * waits (in memory, then in a temporary file in `tmp`) until they come.
 */
async function* compressedBytes(input: string | AsyncIterable<Uint8Array>, options: CompressOptions, stats?: CompressStats): AsyncGenerator<Uint8Array> {
  const codec = resolveOptions(stripRuntime(options));
  const { threads, memory } = resolveResources(options);
  const spill: SpillOptions = { dir: options.tmp, stage: 'compress', memoryBytes: streamMemoryBytes(memory) };
  let base: Checkpoint | null = null;
  let current: Checkpoint | null = null;
  try {
    const rank = options.rank ?? null;
    base = options.base !== undefined ? await openCheckpoint(options.base, { role: 'base', spill, rank }) : null;
    const mode = options.baseCheck ?? 'refuse';
    const checked = base !== null && !base.sequential && mode !== 'off' && !codec.lossless;
    // A folder's moments are matched to its parameters through the base's weights: look at the base first.
    let folderVerdict: BaseFindings | null = null;
    if (checked && typeof input === 'string' && (await isDirectory(input))) {
      const weightsOnly = await openCheckpoint(input, { role: 'base', rank });
      try {
        // Without Adam state every tensor is coded exactly, whatever the base.
        const moments = weightsOnly.files.some((f) => f.path === OPTIMIZER_FILE && f.kind !== 'blob');
        if (moments) folderVerdict = await checkBase(weightsOnly, base!, folderWeights(weightsOnly), mode, options.onNotice);
      } finally {
        await weightsOnly.close();
      }
    }
    // The reader's notices go out with the verdict on the whole checkpoint (checkpointNotices), one line per thing.
    const details: string[] = [];
    current = typeof input === 'string'
      ? await openCheckpoint(input, { role: 'current', previous: base, paramMap: options.paramMap ?? null, paramPrior: options.paramPrior ?? null, spill, onNotice: (m) => details.push(m), rank }).catch((e: unknown) => {
        // The param map needs W - W_base: say what is wrong with the base, in one line.
        if (e instanceof ExcpError && e.code === 'ERR_PARAM_MAP' && folderVerdict?.unrelated) throw new ExcpError('ERR_BASE_IMPLAUSIBLE', folderVerdict.unrelated.message.replace(/\. Check --base.*$/, '; the optimizer\'s moments are matched to parameters by how the weights changed since the base: give the previous checkpoint as --base, or --param-map FILE'), { cause: e });
        if (e instanceof ExcpError && e.code === 'ERR_PARAM_MAP' && folderVerdict?.identical) {
          throw new ExcpError('ERR_BASE_IMPLAUSIBLE', `compress: ${base!.path} holds the same weights as ${input} (the same checkpoint?): the optimizer's moments are matched to parameters by how the weights changed since the base; give the previous checkpoint as --base, or --param-map FILE`, { cause: e });
        }
        throw e;
      })
      : await SafetensorsStream.open(input, 'stdin', spill);
    if (folderVerdict && mode === 'refuse') refuseUnmappable(folderVerdict, current, base!.path, input as string);
    if (folderVerdict) noticeUnrelated(folderVerdict, options.onNotice);
    if (options.onNotice) for (const line of await checkpointNotices(current, planFor(current, base, codec), details)) options.onNotice(line);
    if (checked && !folderVerdict && !current.sequential) noticeUnrelated(await checkBase(current, base!, paramWeights(planFor(current, base, codec)), mode, options.onNotice), options.onNotice);
    const { stream, done } = compressReadable(current, base, codec, threads, options.onProgress, options.tensorHashes,
      { baseCheck: mode, onNotice: options.onNotice, spill, memory: options.memory });
    if (stats) stats.inputBytes = current.dataLength + current.files.reduce((n, f) => n + (f.layout instanceof Uint8Array ? f.layout.length : 0), 0);
    try {
      for await (const chunk of stream) {
        if (stats) stats.outputBytes += (chunk as Uint8Array).length;
        yield chunk as Uint8Array;
      }
      await done;
    } finally {
      // Stopped early (an error downstream): the workers must stop reading before the files close.
      stream.destroy();
      await done.catch(() => undefined);
    }
    if (current instanceof SafetensorsStream) {
      await current.end();
      if (stats) stats.spilledBytes = current.spilledBytes;
    }
  } finally {
    await current?.close();
    await base?.close();
  }
}

function stripRuntime(o: CompressOptions): LooseOptions {
  const { base: _b, threads: _t, memory: _y, onProgress: _p, paramMap: _m, paramPrior: _q, tensorHashes: _h, tmp: _d, rank: _r, baseCheck: _c, onNotice: _n, onStats: _s, ...rest } = o;
  return rest;
}

/**
 * Compress as a Duplex: write safetensors bytes, read container bytes.
 * The input is read once, forward; what must wait for its partners waits
 * in memory up to streamMemoryBytes(memory), then in a temporary file (`tmp`).
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
  const mode = options.baseCheck ?? 'refuse';
  if (b && mode !== 'off') noticeUnrelated(await checkBase(cur, b, paramWeights(planFor(cur, b, codec)), mode, options.onNotice), options.onNotice);
  const { stream, done } = compressReadable(cur, b, codec, threads, options.onProgress, options.tensorHashes, { memory: options.memory });
  const parts: Uint8Array[] = [];
  for await (const c of stream) parts.push(c as Uint8Array);
  await done;
  return concatBytes(parts);
}

/** What a compress did. */
export interface CompressStats {
  /** Bytes of the checkpoint: its tensors and files, and the safetensors headers. */
  inputBytes: number;
  /** Bytes of the container. */
  outputBytes: number;
  /** Bytes of a streamed checkpoint that waited on disk for their partners. */
  spilledBytes: number;
}

/**
 * Compress a file, a byte stream, or stdin (input undefined) into a writable.
 * @param input checkpoint path (file, folder or FIFO), safetensors bytes as a stream, or undefined for stdin
 * @param out where the container bytes go (not ended)
 * @param options method options, base, threads, memory, progress
 * @throws ExcpError ERR_OUT_OF_RANGE for a bad option, before anything is read
 */
export async function compressTo(input: string | AsyncIterable<Uint8Array> | undefined, out: Writable, options: CompressOptions): Promise<void> {
  resolveOptions(stripRuntime(options));
  resolveResources(options);
  const stats: CompressStats = { inputBytes: 0, outputBytes: 0, spilledBytes: 0 };
  await pipeline(Readable.from(compressedBytes(input ?? process.stdin, options, stats)), out, { end: false });
  options.onStats?.(stats);
}
