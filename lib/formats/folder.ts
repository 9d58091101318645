/**
 * A PyTorch / Hugging Face checkpoint folder as one virtual tensor table, so
 * that the chunk source and codec work on it unchanged (issue 7).
 *
 * The folder's files become tensors of the container:
 *  - every tensor of every `*.safetensors` file (one file or shards), by name;
 *  - from `pytorch_model.bin` or its shards (Trainer with save_safetensors=False,
 *    read with the restricted unpickler): every contiguous tensor by its
 *    state_dict key, plus the file's skeleton `__file__/PATH` (the bytes
 *    around them, a tied weight's second key included) as for optimizer.pt;
 *  - from `optimizer.pt` (Adam/AdamW, read with the restricted unpickler, never
 *    executed): each param id's `exp_avg` / `exp_avg_sq`, named
 *    `NAME.exp_avg` / `NAME.exp_avg_sq` when the id maps to model parameter
 *    NAME (optimizer-map.ts: the names file `optimizer_param_names.json`
 *    beside it when there is one, else inferred), else
 *    `__optimizer__/ID/exp_avg` (coded exactly);
 *    plus the *skeleton*: the file's bytes with those moment ranges cut out
 *    (zip records, data.pkl, step tensors, ...), as a U8 tensor
 *    `__file__/optimizer.pt`;
 *  - every other file (scheduler.pt, rng_state.pth, trainer_state.json,
 *    training_args.bin, the shard index, the names file, an optimizer.pt
 *    that is not Adam's, ...) as a U8 tensor `__file__/PATH`, carried
 *    byte-exactly. These files are never unpickled.
 *
 * The skeleton does not depend on the param map (every exp_avg/exp_avg_sq
 * range is cut), so a base folder opened without a map lines up with it and
 * the exact coder's base mode can use it.
 */
import { openSync, closeSync, fstatSync } from 'node:fs';
import { readFile, readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { DTYPE_BYTES, type DType, elementCount } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { MAX_TENSORS } from '../core/constants.js';
import { isSafeRelativePath } from '../container/validate.js';
import type { Checkpoint, CheckpointFile, FileRange, TensorInfo } from '../model/checkpoint.js';
import { SafetensorsFile } from './safetensors-file.js';
import { type Cut, torchFile } from './torch-kind.js';
import { readSegments, segmentRanges } from './file-format.js';
import { NAMES_FILE, NAMES_PYTHON, type OptimizerOpenOptions, type OptimizerSide, type ParamMapInfo, type TensorReader, mapOptimizer, momentCuts } from './optimizer-map.js';
import { type OptimizerState, type TorchCheckpoint, readOptimizerState, readTorchCheckpoint } from './torch/serialization.js';
import { readExactlySync } from '../io/read.js';

export { STATE_PREFIX, type ParamMapInfo } from './optimizer-map.js';

/** Prefix of the virtual tensors that hold whole files (or a torch.save file's skeleton). */
export const FILE_PREFIX = '__file__/';
/** The optimizer file of a Trainer checkpoint. */
export const OPTIMIZER_FILE = 'optimizer.pt';

/** Where a virtual tensor's bytes are. */
type Source =
  | { fd: number; offset: number }
  | { fd: number; segments: { at: number; offset: number; length: number }[] };

/** Options of {@link FolderCheckpoint.open}. */
export type FolderOpenOptions = OptimizerOpenOptions;

/** A checkpoint folder as a {@link Checkpoint} over its virtual tensor table. */
export class FolderCheckpoint implements Checkpoint, OptimizerSide {
  readonly path: string;
  readonly tensors: TensorInfo[];
  readonly dataLength: number;
  readonly byName: Map<string, TensorInfo>;
  readonly files: CheckpointFile[];
  readonly paramMap: ParamMapInfo | null;
  readonly info: Record<string, unknown> | null;
  /** The Adam state of optimizer.pt, or null. */
  readonly optimizer: OptimizerState | null;
  private readonly optimizerFd: number;
  /** Where each virtual tensor's bytes are (internal). */
  readonly sources: ReadonlyMap<string, Source>;
  private readonly fds: number[];

  private constructor(path: string, tensors: TensorInfo[], files: CheckpointFile[], sources: Map<string, Source>, fds: number[], paramMap: ParamMapInfo | null,
    optimizer: { fd: number; state: OptimizerState } | null) {
    this.path = path;
    this.optimizer = optimizer?.state ?? null;
    this.optimizerFd = optimizer?.fd ?? -1;
    this.tensors = tensors;
    this.dataLength = tensors.reduce((s, t) => s + t.end - t.begin, 0);
    this.info = paramMap ? { paramMap } : null;
    this.byName = new Map(tensors.map((t) => [t.name, t]));
    this.files = files;
    this.sources = sources;
    this.fds = fds;
    this.paramMap = paramMap;
  }

  /**
   * Open a folder: list its files, read the safetensors headers and the optimizer state.
   * @throws ExcpError ERR_UNSAFE_PICKLE (optimizer.pt or pytorch_model.bin names a forbidden global), ERR_PARAM_MAP, ERR_IO, ...
   */
  static async open(dir: string, options: FolderOpenOptions): Promise<FolderCheckpoint> {
    const paths = await listFiles(dir);
    const fds: number[] = [];
    try {
      const tensors: TensorInfo[] = [];
      const sources = new Map<string, Source>();
      const files: CheckpointFile[] = [];
      let virtual = 0;
      const add = (name: string, dtype: DType, shape: number[], source: Source): void => {
        if (sources.has(name)) throw new ExcpError('ERR_BAD_HEADER', `folder: ${dir}: tensor name '${name}' occurs twice`);
        if (tensors.length >= MAX_TENSORS) throw new ExcpError('ERR_HEADER_TOO_LARGE', `folder: ${dir} holds more than ${MAX_TENSORS} tensors and files, the most excp reads (its memory grows with the count, about 2 KB a tensor)`);
        const bytes = elementCount(shape, `folder: tensor '${name}'`) * DTYPE_BYTES[dtype];
        tensors.push({ name, dtype, shape, begin: virtual, end: virtual + bytes });
        virtual += bytes;
        sources.set(name, source);
      };
      const model: { name: string; shape: number[]; dtype: DType; fd: number; offset: number }[] = [];
      let optimizer: { path: string; fd: number; size: number; state: OptimizerState } | null = null;
      const pending: { path: string; fd: number; size: number }[] = [];
      const weightFiles: { path: string; fd: number; size: number; cuts: Cut[] }[] = [];
      for (const path of paths) {
        const full = join(dir, path);
        if (path.endsWith('.safetensors')) {
          const file = await SafetensorsFile.open(full);
          await file.close();
          const fd = openSync(full, 'r');
          fds.push(fd);
          for (const t of file.header.tensors) model.push({ name: t.name, shape: t.shape, dtype: t.dtype, fd, offset: file.header.dataOffset + t.begin });
          files.push({ kind: 'safetensors', path, tensors: file.header.tensors.map((t) => t.name), layout: file.header.raw });
          continue;
        }
        const fd = openSync(full, 'r');
        fds.push(fd);
        const size = fstatSync(fd).size;
        if (TORCH_WEIGHTS.test(path)) {
          const cuts = readTorchWeights(full, fd, size);
          if (cuts) {
            weightFiles.push({ path, fd, size, cuts });
            for (const c of cuts) model.push({ name: c.name, shape: c.shape, dtype: c.dtype, fd, offset: c.offset });
          } else {
            pending.push({ path, fd, size });
          }
        } else if (path === OPTIMIZER_FILE) {
          let state: OptimizerState | null = null;
          try {
            state = readOptimizerState(size, (o, l) => readAt(fd, o, l), { stage: `${full}` });
          } catch (e) {
            // Not an Adam state_dict (another optimizer, or no data.pkl): carried as a blob.
            // Anything else, ERR_UNSAFE_PICKLE above all, is refused.
            if (!(e instanceof ExcpError) || (e.code !== 'ERR_BAD_PICKLE' && e.code !== 'ERR_BAD_ZIP')) throw e;
            options.onNotice?.(`${e.message.startsWith(full) ? '' : `${full}: `}${e.message}: carried byte for byte, its state coded exactly`);
          }
          if (state) optimizer = { path, fd, size, state };
          else pending.push({ path, fd, size });
        } else {
          pending.push({ path, fd, size });
        }
      }
      for (const m of model) add(m.name, m.dtype, m.shape, { fd: m.fd, offset: m.offset });
      let paramMap: ParamMapInfo | null = null;
      if (optimizer) {
        const names = new Map<number, string>();
        const opt = optimizer;
        if (options.mapMoments && opt.state.state.size > 0) {
          const byName = new Map(model.map((m) => [m.name, m]));
          const given = options.explicit ? { names: options.explicit, method: 'explicit' as const }
            : paths.includes(NAMES_FILE) ? { names: await readNamesFile(join(dir, NAMES_FILE)), method: 'names-file' as const } : null;
          const mapped = mapOptimizer({
            stage: join(dir, opt.path), file: opt.path,
            params: model.map((m) => ({ name: m.name, shape: m.shape })),
            current: {
              optimizer: opt.state,
              weight: (name) => {
                const m = byName.get(name);
                return m ? { dtype: m.dtype, shape: m.shape, read: (start, end) => readAt(m.fd, m.offset + start, end - start) } : null;
              },
              readOptimizer: (o, l) => readAt(opt.fd, o, l),
            },
            base: options.previous ?? null,
            explicit: given,
            prior: options.prior ?? null,
            recipe: `To give the names, write ${NAMES_FILE} into each checkpoint folder (examples/python/excp_callback.py does it on every Trainer save), or run once where model and optimizer exist: ${NAMES_PYTHON.replace('PATH', `"${NAMES_FILE}"`)} and pass --param-map ${NAMES_FILE}`,
            onNotice: options.onNotice,
          });
          mapped.names.forEach((name, id) => names.set(id, name));
          paramMap = mapped.info;
        }
        const cuts = momentCuts(opt.state, names, new Map(model.map((m) => [m.name, m])), `folder: ${join(dir, opt.path)}`);
        files.push(addSkeleton(add, opt, cuts));
        for (const c of cuts) add(c.name, c.dtype, c.shape, { fd: opt.fd, offset: c.offset });
      }
      // Weight files: their tensors are model tensors (added above), the rest of the file a skeleton.
      for (const w of weightFiles) files.push(addSkeleton(add, w, w.cuts));
      for (const p of pending) {
        add(`${FILE_PREFIX}${p.path}`, 'U8', [p.size], { fd: p.fd, offset: 0 });
        files.push({ kind: 'blob', path: p.path, tensors: [`${FILE_PREFIX}${p.path}`], layout: null });
      }
      return new FolderCheckpoint(dir, tensors, files, sources, fds, paramMap, optimizer);
    } catch (e) {
      for (const fd of fds) closeSync(fd);
      throw e;
    }
  }

  /** Bytes [start, end) of a virtual tensor. */
  async tensorBytes(info: TensorInfo, start: number, end: number): Promise<Uint8Array> {
    const source = this.sources.get(info.name);
    if (!source) throw new ExcpError('ERR_BAD_HEADER', `folder: ${this.path}: no tensor '${info.name}'`);
    if ('offset' in source) return readAt(source.fd, source.offset + start, end - start);
    return readSegments(source.fd, source.segments, start, end, readAt);
  }

  /** A model weight (a tensor cut from its file), read synchronously: the param map's statistics of the next step. */
  weight(name: string): TensorReader | null {
    const info = this.byName.get(name);
    const source = this.sources.get(name);
    if (!info || !source || !('offset' in source) || name.startsWith(FILE_PREFIX)) return null;
    return { dtype: info.dtype, shape: info.shape, read: (start, end) => readAt(source.fd, source.offset + start, end - start) };
  }

  /** Bytes of optimizer.pt. */
  readOptimizer(offset: number, length: number): Uint8Array {
    return readAt(this.optimizerFd, offset, length);
  }

  /** The file ranges of bytes [start, end) of a virtual tensor (see {@link Checkpoint.tensorRanges}). */
  tensorRanges(info: TensorInfo, start: number, end: number): FileRange[] {
    const source = this.sources.get(info.name);
    if (!source) throw new ExcpError('ERR_BAD_HEADER', `folder: ${this.path}: no tensor '${info.name}'`);
    if ('offset' in source) return [{ fd: source.fd, position: source.offset + start, length: end - start }];
    return segmentRanges(source.fd, source.segments, start, end);
  }

  async close(): Promise<void> {
    for (const fd of this.fds.splice(0)) closeSync(fd);
  }
}

/**
 * Weight files that `torch.save` wrote (Trainer with save_safetensors=False):
 * `pytorch_model.bin` or its shards `pytorch_model-0000k-of-0000n.bin`.
 */
const TORCH_WEIGHTS = /(^|\/)pytorch_model(-\d+-of-\d+)?\.bin$/;

/**
 * The tensors of a torch.save'd state_dict that can be cut out of the file
 * and coded as model tensors, named by their state_dict keys: contiguous,
 * non-empty, each byte range used once. A tied weight (a second key over
 * the same storage range, e.g. a head tied to the embedding) and views that
 * overlap another tensor stay in the skeleton and restore byte for byte.
 * @returns the cuts in file order, or null when the file is not a torch.save
 *   zip with a pickle (it is then carried as a file)
 * @throws ExcpError ERR_UNSAFE_PICKLE and other errors of a malformed file
 */
function readTorchWeights(full: string, fd: number, size: number): Cut[] | null {
  let checkpoint: TorchCheckpoint;
  try {
    checkpoint = readTorchCheckpoint(size, (o, l) => readAt(fd, o, l), { stage: full });
  } catch (e) {
    if (!(e instanceof ExcpError) || (e.code !== 'ERR_BAD_PICKLE' && e.code !== 'ERR_BAD_ZIP')) throw e;
    return null;
  }
  const candidates = checkpoint.tensors.filter((t) => t.contiguous && t.byteLength > 0).sort((a, b) => a.byteOffset - b.byteOffset);
  const cuts: Cut[] = [];
  const names = new Set<string>();
  let end = 0;
  for (const t of candidates) {
    if (t.byteOffset < end || names.has(t.path)) continue;
    names.add(t.path);
    cuts.push({ name: t.path, offset: t.byteOffset, length: t.byteLength, dtype: t.dtype, shape: t.shape });
    end = t.byteOffset + t.byteLength;
  }
  return cuts;
}

/**
 * Add the skeleton of a torch.save file (its bytes without the cut ranges,
 * which must be sorted and disjoint) as the U8 tensor `__file__/PATH`.
 * @returns the file (kind `torch`: lib/formats/torch-kind.ts)
 */
function addSkeleton(add: (name: string, dtype: DType, shape: number[], source: Source) => void,
  file: { path: string; fd: number; size: number }, cuts: readonly Cut[]): CheckpointFile {
  const skeleton = torchFile(file.path, `${FILE_PREFIX}${file.path}`, file.size, cuts);
  add(`${FILE_PREFIX}${file.path}`, 'U8', [skeleton.skeletonBytes], { fd: file.fd, segments: skeleton.segments });
  return skeleton.file;
}

/** Read exactly `length` bytes at `offset` of an open file. */
function readAt(fd: number, offset: number, length: number): Uint8Array {
  return readExactlySync(fd, offset, length, 'folder');
}

/**
 * Relative paths ('/'-separated) of every regular file under dir, sorted.
 * @throws ExcpError ERR_IO (unreadable), ERR_INVALID_ARG (a symlink or other special file, a name with `\\` or NUL)
 */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string): Promise<void> => {
    const entries = await readdir(join(dir, rel), { withFileTypes: true }).catch((e: NodeJS.ErrnoException) => {
      throw new ExcpError('ERR_IO', `${join(dir, rel)}: cannot list (${e.code ?? e.message})`);
    });
    for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      const path = rel ? `${rel}/${e.name}` : e.name;
      if (!isSafeRelativePath(path)) throw new ExcpError('ERR_INVALID_ARG', `folder: ${JSON.stringify(path)}: file names with a backslash or NUL cannot be stored`);
      if (e.isDirectory()) await walk(path);
      else if (e.isFile()) out.push(path);
      else throw new ExcpError('ERR_INVALID_ARG', `folder: ${join(dir, path)} is not a regular file or folder (symlinks are not followed)`);
    }
  };
  await walk('');
  return out;
}

/** Read a --param-map file: a JSON list of parameter names in optimizer order. */
export async function readParamMapFile(path: string): Promise<string[]> {
  return readNamesFile(path, 'param-map');
}

/** Read a names file (--param-map, or optimizer_param_names.json): a JSON list of parameter names in optimizer order. */
async function readNamesFile(path: string, stage = 'names file'): Promise<string[]> {
  const text = await readFile(path, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new ExcpError('ERR_IO', `${path}: cannot read (${e.code ?? e.message})`);
  });
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch {
    throw new ExcpError('ERR_PARAM_MAP', `${stage}: ${path} is not JSON`);
  }
  if (!Array.isArray(list) || !list.every((x) => typeof x === 'string')) throw new ExcpError('ERR_PARAM_MAP', `${stage}: ${path} must hold a JSON list of parameter names`);
  return list as string[];
}
