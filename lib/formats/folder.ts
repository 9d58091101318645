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
 *    NAME (lib/param-map.ts), else `__optimizer__/ID/exp_avg` (coded exactly);
 *    plus the *skeleton*: the file's bytes with those moment ranges cut out
 *    (zip records, data.pkl, step tensors, ...), as a U8 tensor
 *    `__file__/optimizer.pt`;
 *  - every other file (scheduler.pt, rng_state.pth, trainer_state.json,
 *    training_args.bin, the shard index, ...) as a U8 tensor `__file__/PATH`,
 *    carried byte-exactly. These files are never unpickled.
 *
 * The skeleton does not depend on the param map (every exp_avg/exp_avg_sq
 * range is cut), so a base folder opened without a map lines up with it and
 * the exact coder's base mode can use it.
 */
import { openSync, closeSync, fstatSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { DTYPE_BYTES, LOSSY_DTYPES, type DType, elementCount, toFloat32 } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { type ParamMapping, mapParams } from './torch/param-map.js';
import { isSafeRelativePath } from '../container/validate.js';
import type { Checkpoint, CheckpointFile, FileRange, TensorInfo } from '../model/checkpoint.js';
import { SafetensorsFile } from './safetensors-file.js';
import { type TorchLayout, skeletonSegments } from './torch-kind.js';
import { type OptimizerState, type TorchCheckpoint, readOptimizerState, readTorchCheckpoint } from './torch/serialization.js';
import { readExactlySync } from '../io/read.js';

/** Prefix of the virtual tensors that hold whole files (or a torch.save file's skeleton). */
export const FILE_PREFIX = '__file__/';
/** Prefix of optimizer moments whose param id has no parameter name. */
export const STATE_PREFIX = '__optimizer__/';
/** The optimizer file of a Trainer checkpoint. */
export const OPTIMIZER_FILE = 'optimizer.pt';

/** The param map as stored in `header.info.paramMap` and shown by inspect. */
export interface ParamMapInfo {
  /** The optimizer file, e.g. `optimizer.pt`. */
  file: string;
  /** [id, name, confidence 0..1, method] per mapped id, in id order. */
  ids: [number, string, number, string][];
  /** Ids with state whose moments are coded exactly under `__optimizer__/ID/...`. */
  unmapped: number[];
  minConfidence: number;
}

/** Where a virtual tensor's bytes are. */
type Source =
  | { fd: number; offset: number }
  | { fd: number; segments: { at: number; offset: number; length: number }[] };

/** Options of {@link FolderCheckpoint.open}. */
export interface FolderOpenOptions {
  /** Name the moments: false for a base folder (all moments stay `__optimizer__/ID/...`). */
  mapMoments: boolean;
  /** Previous folder: its weights give W_cur - W_prev for the param-map correlation test. */
  previous?: FolderCheckpoint | null;
  /** Parameter names in optimizer order (overrides inference). */
  explicit?: readonly string[] | null;
}

/** A checkpoint folder as a {@link Checkpoint} over its virtual tensor table. */
export class FolderCheckpoint implements Checkpoint {
  readonly path: string;
  readonly tensors: TensorInfo[];
  readonly dataLength: number;
  readonly byName: Map<string, TensorInfo>;
  readonly files: CheckpointFile[];
  readonly paramMap: ParamMapInfo | null;
  readonly info: Record<string, unknown> | null;
  /** Where each virtual tensor's bytes are (internal). */
  readonly sources: ReadonlyMap<string, Source>;
  private readonly fds: number[];

  private constructor(path: string, tensors: TensorInfo[], files: CheckpointFile[], sources: Map<string, Source>, fds: number[], paramMap: ParamMapInfo | null) {
    this.path = path;
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
        if (options.mapMoments && optimizer.state.state.size > 0) {
          let mapping: ParamMapping;
          try {
            mapping = mapOptimizer(optimizer.state, optimizer.fd, model, options);
          } catch (e) {
            if (!(e instanceof ExcpError) || e.code !== 'ERR_PARAM_MAP') throw e;
            const hint = options.explicit ? '' : options.previous ? ' (or pass --param-map FILE)' : ' (pass --base PREV_DIR, the previous checkpoint folder, or --param-map FILE)';
            throw new ExcpError('ERR_PARAM_MAP', `${join(dir, optimizer.path)}: ${e.message}${hint}`);
          }
          mapping.names.forEach((name, id) => names.set(id, name));
          paramMap = {
            file: optimizer.path,
            ids: [...mapping.names].sort((a, b) => a[0] - b[0]).map(([id, name]) => [id, name, round(mapping.confidence.get(id) ?? 0), mapping.method.get(id) ?? '']),
            unmapped: [...optimizer.state.state.keys()].filter((id) => !mapping.names.has(id)),
            minConfidence: round(Math.min(1, ...mapping.confidence.values())),
          };
        }
        const byName = new Map(model.map((m) => [m.name, m]));
        const cuts: Cut[] = [];
        for (const [id, s] of optimizer.state.state) {
          const name = names.get(id);
          const paired = name !== undefined && byName.get(name)!.shape.join() === s.expAvg.shape.join() && LOSSY_DTYPES.has(s.expAvg.dtype);
          for (const [t, key] of [[s.expAvg, 'exp_avg'], [s.expAvgSq, 'exp_avg_sq']] as const) {
            const tname = paired ? `${name}.${key}` : `${STATE_PREFIX}${id}/${key}`;
            if (byName.has(tname)) throw new ExcpError('ERR_BAD_HEADER', `folder: model tensor '${tname}' collides with an optimizer moment name`);
            cuts.push({ name: tname, offset: t.byteOffset, length: t.byteLength, dtype: t.dtype, shape: t.shape });
          }
        }
        cuts.sort((a, b) => a.offset - b.offset);
        for (let i = 1; i < cuts.length; i++) {
          if (cuts[i]!.offset < cuts[i - 1]!.offset + cuts[i - 1]!.length) throw new ExcpError('ERR_SHAPE', `folder: ${OPTIMIZER_FILE}: moments '${cuts[i - 1]!.name}' and '${cuts[i]!.name}' share bytes`);
        }
        files.push(addSkeleton(add, optimizer, cuts));
        for (const c of cuts) add(c.name, c.dtype, c.shape, { fd: optimizer.fd, offset: c.offset });
      }
      // Weight files: their tensors are model tensors (added above), the rest of the file a skeleton.
      for (const w of weightFiles) files.push(addSkeleton(add, w, w.cuts));
      for (const p of pending) {
        add(`${FILE_PREFIX}${p.path}`, 'U8', [p.size], { fd: p.fd, offset: 0 });
        files.push({ kind: 'blob', path: p.path, tensors: [`${FILE_PREFIX}${p.path}`], layout: null });
      }
      return new FolderCheckpoint(dir, tensors, files, sources, fds, paramMap);
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
    const out = new Uint8Array(end - start);
    for (const s of source.segments) {
      const from = Math.max(start, s.at);
      const to = Math.min(end, s.at + s.length);
      if (from < to) out.set(readAt(source.fd, s.offset + from - s.at, to - from), from - start);
    }
    return out;
  }

  /** The file ranges of bytes [start, end) of a virtual tensor (see {@link Checkpoint.tensorRanges}). */
  tensorRanges(info: TensorInfo, start: number, end: number): FileRange[] {
    const source = this.sources.get(info.name);
    if (!source) throw new ExcpError('ERR_BAD_HEADER', `folder: ${this.path}: no tensor '${info.name}'`);
    if ('offset' in source) return [{ fd: source.fd, position: source.offset + start, length: end - start }];
    const ranges: FileRange[] = [];
    for (const s of source.segments) {
      const from = Math.max(start, s.at);
      const to = Math.min(end, s.at + s.length);
      if (from < to) ranges.push({ fd: source.fd, position: s.offset + from - s.at, length: to - from });
    }
    return ranges;
  }

  async close(): Promise<void> {
    for (const fd of this.fds.splice(0)) closeSync(fd);
  }
}

function round(x: number): number {
  return Math.round(x * 1000) / 1000;
}

/** Run the param map for an optimizer state against the model tensors. */
function mapOptimizer(opt: OptimizerState, optFd: number, model: { name: string; shape: number[]; dtype: DType; fd: number; offset: number }[],
  options: FolderOpenOptions): ParamMapping {
  const prev = options.previous ?? null;
  const byName = new Map(model.map((m) => [m.name, m]));
  const floats = (fd: number, offset: number, dtype: DType, shape: number[]): Float32Array | null => {
    if (!LOSSY_DTYPES.has(dtype)) return null;
    return toFloat32(readAt(fd, offset, elementCount(shape, 'param-map') * DTYPE_BYTES[dtype]), dtype);
  };
  const data = prev ? {
    delta: (name: string): Float32Array | null => {
      const cur = byName.get(name);
      const before = prev.byName.get(name);
      const src = prev.sources.get(name);
      if (!cur || !before || !src || !('offset' in src) || before.dtype !== cur.dtype || before.shape.join() !== cur.shape.join()) return null;
      const a = floats(cur.fd, cur.offset, cur.dtype, cur.shape);
      const b = floats(src.fd, src.offset, before.dtype, before.shape);
      if (!a || !b) return null;
      for (let i = 0; i < a.length; i++) a[i] = a[i]! - b[i]!;
      return a;
    },
    expAvg: (id: number): Float32Array | null => {
      const t = opt.state.get(id)?.expAvg;
      return t ? floats(optFd, t.byteOffset, t.dtype, t.shape) : null;
    },
  } : undefined;
  return mapParams({
    params: model.map((m) => ({ name: m.name, shape: m.shape })),
    groups: opt.paramGroups.map((g) => ({ params: g.params, weightDecay: g.weightDecay })),
    stateShapes: new Map([...opt.state].map(([id, s]) => [id, s.expAvg.shape])),
    ...(data ? { data } : {}),
    ...(options.explicit ? { explicit: options.explicit } : {}),
    ...(prev || options.explicit ? {} : { keyframe: true }),
  });
}

/** A tensor cut out of a torch.save file (the rest of the file is its skeleton). */
interface Cut {
  name: string;
  offset: number;
  length: number;
  dtype: DType;
  shape: number[];
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
  const segments = skeletonSegments(file.size, cuts);
  const skeleton = `${FILE_PREFIX}${file.path}`;
  add(skeleton, 'U8', [segments.reduce((n, s) => n + s.length, 0)], { fd: file.fd, segments });
  const layout: TorchLayout = { size: file.size, offsets: cuts.map((c) => c.offset) };
  return { kind: 'torch', path: file.path, tensors: [skeleton, ...cuts.map((c) => c.name)], layout };
}

/** Read exactly `length` bytes at `offset` of an open file. */
function readAt(fd: number, offset: number, length: number): Uint8Array {
  return readExactlySync(fd, offset, length, 'folder');
}

/** Relative paths ('/'-separated) of every regular file under dir, sorted. */
async function listFiles(dir: string): Promise<string[]> {
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
  const { readFile } = await import('node:fs/promises');
  const text = await readFile(path, 'utf8').catch((e: NodeJS.ErrnoException) => {
    throw new ExcpError('ERR_IO', `${path}: cannot read (${e.code ?? e.message})`);
  });
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch {
    throw new ExcpError('ERR_PARAM_MAP', `param-map: ${path} is not JSON`);
  }
  if (!Array.isArray(list) || !list.every((x) => typeof x === 'string')) throw new ExcpError('ERR_PARAM_MAP', `param-map: ${path} must hold a JSON list of parameter names`);
  return list as string[];
}
