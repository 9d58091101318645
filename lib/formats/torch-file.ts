/**
 * The input format "a torch.save file": the one file of a hand-written
 * training loop, `torch.save({'model': model.state_dict(), 'optimizer':
 * opt.state_dict(), 'step': n, ...}, PATH)`, nested or Lightning-style
 * (`state_dict` + `optimizer_states: [...]`), or a bare state_dict.
 * Read with the restricted unpickler (torch/pickle.ts): a pickle that names a
 * global outside the allow-list is refused before anything else happens.
 *
 * As a {@link Checkpoint} of one file of kind `torch` (torch-kind.ts, path
 * null):
 *  - the model state_dict's tensors, named by their keys (contiguous,
 *    non-empty, each byte range once: a tied weight's second key and views
 *    stay in the skeleton);
 *  - the Adam/AdamW state's `exp_avg` / `exp_avg_sq` of every param id,
 *    named `NAME.exp_avg` / `NAME.exp_avg_sq` when the id maps to weight
 *    NAME (optimizer-map.ts), else `__optimizer__/ID/...` (coded exactly);
 *  - the skeleton `__file__/torch.save`: every other byte of the file (zip
 *    records, the pickle, steps, schedulers, RNG states, EMA copies, ...),
 *    carried exactly.
 * An optimizer state that is not Adam's is left in the skeleton, with a
 * notice. At restore the file is rebuilt byte for byte around the restored
 * tensors and its zip CRCs are fixed in place, so `torch.load` (also with
 * `weights_only=True`) reads it as it read the original.
 */
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { basename } from 'node:path';
import { DTYPE_BYTES, LOSSY_DTYPES, type DType, elementCount } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { readExactlySync } from '../io/read.js';
import type { Checkpoint, CheckpointFile, FileRange, TensorInfo } from '../model/checkpoint.js';
import { NAMES_PYTHON, type OptimizerOpenOptions, type OptimizerSide, type ParamMapInfo, STATE_PREFIX, type TensorReader, mapOptimizer, momentCuts } from './optimizer-map.js';
import { type Cut, torchFile } from './torch-kind.js';
import { readSegments, segmentRanges } from './file-format.js';
import type { PickleValue } from './torch/pickle.js';
import { type OptimizerState, type TorchCheckpoint, type TorchTensor, adamStateOf, readTorchCheckpoint } from './torch/serialization.js';
import { startsLikeZip } from './torch/zip.js';

/** The skeleton tensor of a torch.save file (a fixed name, so a base file's skeleton lines up with it). */
export const TORCH_SKELETON = '__file__/torch.save';

/** Keys under which a training loop usually keeps its model state_dict, most likely first. */
const MODEL_KEYS = ['model', 'state_dict', 'model_state_dict', 'model_state', 'module', 'net', 'network', 'weights'];

/**
 * Whether a path is a file that starts like a zip archive (torch.save since 1.6).
 * @param path a file path
 */
export function isTorchSaveFile(path: string): boolean {
  let fd = -1;
  try {
    fd = openSync(path, 'r');
    const head = new Uint8Array(4);
    return readSync(fd, head, 0, 4, 0) === 4 && startsLikeZip(head);
  } catch {
    return false;
  } finally {
    if (fd >= 0) closeSync(fd);
  }
}

/** A torch.save file as a {@link Checkpoint}: its weights and moments as tensors, the rest a skeleton. */
export class TorchFileCheckpoint implements Checkpoint, OptimizerSide {
  readonly path: string;
  readonly tensors: TensorInfo[];
  readonly byName: Map<string, TensorInfo>;
  readonly dataLength: number;
  readonly files: CheckpointFile[];
  readonly info: Record<string, unknown> | null;
  readonly optimizer: OptimizerState | null;
  private readonly fd: number;
  /** File offset of each cut tensor, and the skeleton's segments. */
  private readonly offsets: Map<string, number>;
  private readonly segments: { at: number; offset: number; length: number }[];

  private constructor(path: string, fd: number, cuts: Cut[], size: number, optimizer: OptimizerState | null, paramMap: ParamMapInfo | null) {
    this.path = path;
    this.fd = fd;
    this.optimizer = optimizer;
    this.info = paramMap ? { paramMap } : null;
    const skeleton = torchFile(null, TORCH_SKELETON, size, cuts);
    this.segments = skeleton.segments;
    this.files = [skeleton.file];
    this.tensors = [];
    let at = 0;
    for (const t of [{ name: TORCH_SKELETON, dtype: 'U8' as DType, shape: [skeleton.skeletonBytes] }, ...cuts]) {
      const bytes = elementCount(t.shape, `torch: tensor '${t.name}'`) * DTYPE_BYTES[t.dtype];
      this.tensors.push({ name: t.name, dtype: t.dtype, shape: t.shape, begin: at, end: at + bytes });
      at += bytes;
    }
    this.dataLength = at;
    this.byName = new Map(this.tensors.map((t) => [t.name, t]));
    this.offsets = new Map(cuts.map((c) => [c.name, c.offset]));
  }

  /**
   * Open a torch.save file.
   * @param path the file
   * @param options what it is for (the checkpoint being compressed names its moments)
   * @throws ExcpError ERR_UNSAFE_PICKLE (a global outside the allow-list), ERR_BAD_ZIP, ERR_BAD_PICKLE, ERR_PARAM_MAP, ERR_IO
   */
  static async open(path: string, options: OptimizerOpenOptions): Promise<TorchFileCheckpoint> {
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      throw new ExcpError('ERR_IO', `${path}: cannot open (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    try {
      const size = fstatSync(fd).size;
      const readAt = (o: number, l: number): Uint8Array => readExactlySync(fd, o, l, path);
      const checkpoint = readTorchCheckpoint(size, readAt, { stage: path });
      const optimizer = findOptimizer(checkpoint, readAt, path, options.onNotice);
      const model = findModel(checkpoint, optimizer?.state ?? null);
      const weights = model ? uniqueCuts(checkpoint.tensors.filter((t) => t.keys.length === model.keys.length + 1 && model.keys.every((k, i) => t.keys[i] === k)), (t) => t.keys.at(-1)!) : [];
      const byName = new Map(weights.map((w) => [w.name, w]));
      let paramMap: ParamMapInfo | null = null;
      const names = new Map<number, string>();
      if (optimizer && model && options.mapMoments && optimizer.state.state.size > 0) {
        const opt = optimizer.state;
        const mapped = mapOptimizer({
          stage: `${path}: ${optimizer.keys.join('/') || 'optimizer'}`, file: basename(path),
          params: weights.filter((w) => LOSSY_DTYPES.has(w.dtype)).map((w) => ({ name: w.name, shape: w.shape })),
          current: { optimizer: opt, weight: (name) => readerOf(byName.get(name), readAt), readOptimizer: readAt },
          base: options.previous ?? null,
          explicit: options.explicit ? { names: options.explicit, method: 'explicit' } : null,
          prior: options.prior ?? null,
          recipe: `To give the names, run once where model and optimizer exist: ${NAMES_PYTHON.replace('PATH', '"names.json"')} and pass --param-map names.json (or build the optimizer from model.named_parameters(): torch >= 2.6 then records param_names)`,
          onNotice: options.onNotice,
        });
        mapped.names.forEach((name, id) => names.set(id, name));
        paramMap = mapped.info;
      }
      const moments = optimizer ? momentCuts(optimizer.state, names, byName, `torch: ${path}`) : [];
      const cuts = [...weights, ...moments].sort((a, b) => a.offset - b.offset);
      for (let i = 1; i < cuts.length; i++) {
        if (cuts[i]!.offset < cuts[i - 1]!.offset + cuts[i - 1]!.length) {
          throw new ExcpError('ERR_SHAPE', `torch: ${path}: tensors '${cuts[i - 1]!.name}' and '${cuts[i]!.name}' share bytes`);
        }
      }
      return new TorchFileCheckpoint(path, fd, cuts, size, optimizer?.state ?? null, paramMap);
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  async tensorBytes(info: TensorInfo, start: number, end: number): Promise<Uint8Array> {
    const at = this.offsets.get(info.name);
    if (at !== undefined) return readExactlySync(this.fd, at + start, end - start, this.path);
    if (info.name !== TORCH_SKELETON) throw new ExcpError('ERR_BAD_HEADER', `torch: ${this.path}: no tensor '${info.name}'`);
    return readSegments(this.fd, this.segments, start, end, (fd, position, length) => readExactlySync(fd, position, length, this.path));
  }

  /** The file ranges of bytes [start, end) of a tensor (see {@link Checkpoint.tensorRanges}): the workers read them. */
  tensorRanges(info: TensorInfo, start: number, end: number): FileRange[] {
    const at = this.offsets.get(info.name);
    if (at !== undefined) return [{ fd: this.fd, position: at + start, length: end - start }];
    if (info.name !== TORCH_SKELETON) throw new ExcpError('ERR_BAD_HEADER', `torch: ${this.path}: no tensor '${info.name}'`);
    return segmentRanges(this.fd, this.segments, start, end);
  }

  /** A model weight, read synchronously (the param map's statistics of the next file). */
  weight(name: string): TensorReader | null {
    const info = this.byName.get(name);
    const at = this.offsets.get(name);
    if (!info || at === undefined || name.startsWith(STATE_PREFIX) || name.endsWith('.exp_avg') || name.endsWith('.exp_avg_sq')) return null;
    return { dtype: info.dtype, shape: info.shape, read: (start, end) => readExactlySync(this.fd, at + start, end - start, this.path) };
  }

  readOptimizer(offset: number, length: number): Uint8Array {
    return readExactlySync(this.fd, offset, length, this.path);
  }

  async close(): Promise<void> {
    closeSync(this.fd);
  }
}

function readerOf(cut: Cut | undefined, readAt: (o: number, l: number) => Uint8Array): TensorReader | null {
  return cut ? { dtype: cut.dtype, shape: cut.shape, read: (start, end) => readAt(cut.offset + start, end - start) } : null;
}

/** The contiguous, non-empty tensors with a byte range of their own, in file order, named by `name`. */
function uniqueCuts(tensors: readonly TorchTensor[], name: (t: TorchTensor) => string): Cut[] {
  const out: Cut[] = [];
  const names = new Set<string>();
  let end = 0;
  for (const t of [...tensors].filter((x) => x.contiguous && x.byteLength > 0).sort((a, b) => a.byteOffset - b.byteOffset)) {
    const n = name(t);
    if (t.byteOffset < end || names.has(n)) continue;
    names.add(n);
    out.push({ name: n, offset: t.byteOffset, length: t.byteLength, dtype: t.dtype, shape: [...t.shape] });
    end = t.byteOffset + t.byteLength;
  }
  return out;
}

/**
 * Dicts of the tree (to depth 4) with their key paths, shallow first. Each
 * container is visited once (a hostile pickle can share one container
 * many times over through its memo).
 */
function dictsOf(tree: PickleValue): { keys: string[]; value: Map<PickleValue, PickleValue> }[] {
  const out: { keys: string[]; value: Map<PickleValue, PickleValue> }[] = [];
  const seen = new Set<object>();
  let level: { keys: string[]; value: PickleValue }[] = [{ keys: [], value: tree }];
  for (let depth = 0; depth <= 4 && level.length > 0; depth++) {
    const next: { keys: string[]; value: PickleValue }[] = [];
    for (const { keys, value } of level) {
      if (typeof value !== 'object' || value === null || seen.has(value)) continue;
      seen.add(value);
      if (value instanceof Map) {
        out.push({ keys, value });
        for (const [k, v] of value) if (typeof k === 'string' || typeof k === 'number') next.push({ keys: [...keys, String(k)], value: v });
      } else if (Array.isArray(value)) {
        value.forEach((v, i) => next.push({ keys: [...keys, String(i)], value: v }));
      }
    }
    level = next;
  }
  return out;
}

/**
 * The optimizer state_dict: the first dict with `state` and `param_groups`
 * that is Adam's. Others are carried in the skeleton, with a notice each.
 */
function findOptimizer(checkpoint: TorchCheckpoint, readAt: (o: number, l: number) => Uint8Array, path: string,
  onNotice: ((m: string) => void) | undefined): { keys: string[]; state: OptimizerState } | null {
  let found: { keys: string[]; state: OptimizerState } | null = null;
  for (const { keys, value } of dictsOf(checkpoint.tree)) {
    if (!(value.get('state') instanceof Map) || !Array.isArray(value.get('param_groups'))) continue;
    if (found) {
      onNotice?.(`${path}: a second optimizer state_dict at ${keys.join('/')}: carried byte for byte, its state coded exactly`);
      continue;
    }
    try {
      found = { keys, state: adamStateOf(checkpoint, keys, readAt) };
    } catch (e) {
      if (!(e instanceof ExcpError) || e.code !== 'ERR_BAD_PICKLE') throw e;
      onNotice?.(`${path}: ${e.message}: carried byte for byte, its state coded exactly`);
    }
  }
  return found;
}

/**
 * The model state_dict: a dict of tensors by name (string keys, every value
 * a tensor). Preferred by its key (`model`, `state_dict`, ...), else the one
 * that holds the optimizer's shapes, else the largest; the whole file when it
 * is a bare state_dict.
 */
function findModel(checkpoint: TorchCheckpoint, optimizer: OptimizerState | null): { keys: string[] } | null {
  const tensorsAt = new Map<string, TorchTensor[]>();
  for (const t of checkpoint.tensors) {
    const parent = t.keys.slice(0, -1).join('\0');
    tensorsAt.set(parent, [...(tensorsAt.get(parent) ?? []), t]);
  }
  const dicts = dictsOf(checkpoint.tree);
  // Not inside an optimizer state_dict (its per-id states are dicts of tensors too).
  const optimizers = dicts.filter(({ value }) => value.get('state') instanceof Map && Array.isArray(value.get('param_groups'))).map((d) => d.keys);
  const inside = (keys: string[]): boolean => optimizers.some((o) => o.every((k, i) => keys[i] === k));
  const candidates = dicts.filter(({ keys, value }) => value.size > 0 && !inside(keys)
    && [...value.keys()].every((k) => typeof k === 'string') && (tensorsAt.get(keys.join('\0'))?.length ?? 0) === value.size);
  if (candidates.length === 0) return null;
  const named = MODEL_KEYS.map((k) => candidates.find((c) => c.keys.at(-1) === k && c.keys.length <= 2)).find((c) => c !== undefined);
  if (named) return named;
  const shapes = new Set([...optimizer?.state.values() ?? []].map((s) => s.expAvg.shape.join()));
  const score = (c: { keys: string[] }): number => {
    const list = tensorsAt.get(c.keys.join('\0'))!;
    return list.filter((t) => shapes.has(t.shape.join())).length * 1e12 + list.reduce((n, t) => n + t.byteLength, 0);
  };
  return candidates.reduce((best, c) => (score(c) > score(best) ? c : best));
}
