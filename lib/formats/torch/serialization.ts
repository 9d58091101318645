/**
 * PyTorch checkpoints (`torch.save` zip format, torch >= 1.6): list the
 * tensors of a file with their byte ranges, read an Adam/AdamW optimizer
 * state_dict, and write a checkpoint back with new storage contents.
 *
 * Layout (torch/serialization.py `_save`, checked on torch 1.13 output):
 * `<archive>/data.pkl` is a protocol-2 pickle of the object in which every
 * tensor is `_rebuild_tensor_v2(persistent_id, offset, size, stride, ...)`
 * and each persistent id `('storage', torch.<T>Storage, key, location, numel)`
 * points at the STORED entry `<archive>/data/<key>` holding numel elements,
 * little-endian. `<archive>` is the saved file's base name (`optimizer` for
 * optimizer.pt, `archive` when saved to a buffer). Other entries (`version`,
 * and in torch 2.x `byteorder`, `.data/serialization_id`, ...) are carried
 * through untouched.
 *
 * Nothing here reads tensor data in bulk: the caller gets absolute file
 * offsets and streams the bytes in chunks of its choosing.
 */
import { ExcpError } from '../../core/errors.js';
import { DTYPE_BYTES, type DType, elementCount, bf16ToF32 } from '../../core/dtype.js';
import { crc32 } from '../../core/crc32.js';
import { type ZipReplacement, rewriteZip } from './zip-rewrite.js';
import { concatBytes } from '../../core/bytes.js';
import { type ReadAt, type ZipDirectory, type ZipEntry, readZipDirectory } from './zip.js';
import { isTuple } from './pickle-objects.js';
import { type PickleValue, type StorageRef, type TensorRef, type UnpickleOptions, unpickle } from './pickle.js';

/** A tensor found in the pickled tree, with where its bytes are. */
export interface TorchTensor {
  /** Where the tensor sits in the tree, keys joined by `/`, e.g. `state/3/exp_avg`. */
  path: string;
  /** The same keys as a list (a key may itself contain `/`). */
  keys: string[];
  dtype: DType;
  shape: number[];
  stride: number[];
  /** Offset into its storage, in elements. */
  storageOffset: number;
  storageKey: string;
  /** Zip entry holding the storage, e.g. `optimizer/data/3`. */
  entryName: string;
  /** True when the elements are C-contiguous, so `[byteOffset, byteOffset + byteLength)` is the tensor in order. */
  contiguous: boolean;
  /** Absolute file offset of the tensor's first element. */
  byteOffset: number;
  /** numel x element size. */
  byteLength: number;
}

/** One storage entry and the storage it holds. */
export interface TorchStorage {
  key: string;
  dtype: DType;
  numel: number;
  location: string;
  entry: ZipEntry;
}

/** A parsed torch.save file. */
export interface TorchCheckpoint {
  /** The folder all entries live in, e.g. `optimizer`. */
  archiveName: string;
  directory: ZipDirectory;
  /** The unpickled object (tensors appear as {@link TensorRef} nodes). */
  tree: PickleValue;
  tensors: TorchTensor[];
  /** Storages by key. */
  storages: Map<string, TorchStorage>;
}

/** Options of {@link readTorchCheckpoint}. */
export interface TorchReadOptions extends UnpickleOptions {
  /** Deepest nesting of containers walked when listing tensors (default 64). */
  maxDepth?: number;
}

const STAGE = 'torch';

function fail(code: 'ERR_BAD_PICKLE' | 'ERR_SHAPE' | 'ERR_BAD_ZIP' | 'ERR_CRC' | 'ERR_DTYPE', what: string): never {
  throw new ExcpError(code, `${STAGE}: ${what}`);
}

/**
 * Read the directory, the pickle and the tensor table of a torch.save file.
 * Reads only the zip directory, `data.pkl` and small marker entries.
 * @param size file size in bytes
 * @param readAt random-access reader
 * @throws ExcpError ERR_BAD_ZIP, ERR_UNSAFE_PICKLE, ERR_BAD_PICKLE, ERR_CRC, ERR_SHAPE, ERR_DTYPE, ERR_TRUNCATED
 */
export function readTorchCheckpoint(size: number, readAt: ReadAt, options: TorchReadOptions = {}): TorchCheckpoint {
  try {
    return readCheckpoint(size, readAt, options);
  } catch (e) {
    // Name the file (options.stage) in every error, as the unpickler's already do: with shards, which one is bad matters.
    const stage = options.stage;
    if (stage && e instanceof ExcpError && !e.message.startsWith(stage)) throw new ExcpError(e.code, `${stage}: ${e.message}`, { cause: e });
    throw e;
  }
}

function readCheckpoint(size: number, readAt: ReadAt, options: TorchReadOptions): TorchCheckpoint {
  const directory = readZipDirectory(size, readAt);
  const first = directory.entries[0];
  if (!first) fail('ERR_BAD_ZIP', 'archive has no entries');
  const slash = first.name.indexOf('/');
  if (slash <= 0) fail('ERR_BAD_ZIP', `first entry ${JSON.stringify(first.name)} is not inside an archive folder`);
  const archiveName = first.name.slice(0, slash);
  const byName = new Map(directory.entries.map((e) => [e.name, e]));
  const readEntry = (name: string, limit: number): Uint8Array | null => {
    const e = byName.get(`${archiveName}/${name}`);
    if (!e) return null;
    if (e.size > limit) fail('ERR_BAD_ZIP', `${e.name} is ${e.size} bytes, more than the ${limit} expected`);
    const bytes = readAt(e.dataOffset, e.size);
    if (bytes.length !== e.size) throw new ExcpError('ERR_TRUNCATED', `${STAGE}: ${e.name} read returned ${bytes.length} of ${e.size} bytes`);
    // CRC 0: torch 2.x with set_crc32_options(False) records none.
    if (e.crc32 !== 0 && crc32(bytes) !== e.crc32) fail('ERR_CRC', `${e.name} CRC ${crc32(bytes)} differs from the recorded ${e.crc32}`);
    return bytes;
  };
  const byteorder = readEntry('byteorder', 16);
  if (byteorder && new TextDecoder().decode(byteorder).trim() !== 'little') fail('ERR_DTYPE', 'big-endian checkpoints are not supported');
  const pickle = readEntry('data.pkl', options.maxBytes ?? 256 * 1024 * 1024);
  if (!pickle) fail('ERR_BAD_ZIP', `no ${archiveName}/data.pkl entry (not a torch.save file, or the legacy pre-1.6 format)`);
  const tree = unpickle(pickle, { ...options, stage: options.stage ?? `${STAGE}: ${archiveName}/data.pkl` });
  const storages = new Map<string, TorchStorage>();
  const tensors: TorchTensor[] = [];
  const useStorage = (s: StorageRef): TorchStorage => {
    const known = storages.get(s.key);
    if (known) {
      if (known.dtype !== s.dtype || known.numel !== s.numel) fail('ERR_BAD_PICKLE', `storage ${s.key} is referenced with two different types or sizes`);
      return known;
    }
    const entry = byName.get(`${archiveName}/data/${s.key}`);
    if (!entry) fail('ERR_BAD_ZIP', `storage ${s.key} has no ${archiveName}/data/${s.key} entry`);
    const bytes = s.numel * DTYPE_BYTES[s.dtype];
    if (entry.size !== bytes) fail('ERR_SHAPE', `storage ${s.key}: ${s.numel} x ${s.dtype} needs ${bytes} bytes, the entry has ${entry.size}`);
    const out = { key: s.key, dtype: s.dtype, numel: s.numel, location: s.location, entry };
    storages.set(s.key, out);
    return out;
  };
  walk(tree, options.maxDepth ?? 64, (path, node) => {
    if (node.kind === 'storage') {
      useStorage(node);
      return;
    }
    const storage = useStorage(node.storage);
    tensors.push(describe(path, node, storage));
  });
  return { archiveName, directory, tree, tensors, storages };
}

function describe(path: string[], t: TensorRef, storage: TorchStorage): TorchTensor {
  const where = path.join('/');
  const numel = elementCount(t.shape, `${STAGE}: tensor ${where}`);
  const elementBytes = DTYPE_BYTES[t.dtype];
  // In elements of the tensor's dtype: an untyped storage (v3 tensors) counts bytes.
  const room = Math.floor(storage.entry.size / elementBytes);
  if (storage.dtype !== t.dtype && storage.dtype !== 'U8') fail('ERR_BAD_PICKLE', `tensor ${where} of ${t.dtype} over a ${storage.dtype} storage`);
  // The view must stay inside its storage: offset + sum((size-1) * stride) < numel.
  if (numel > 0) {
    let last = t.storageOffset;
    for (let i = 0; i < t.shape.length; i++) last += (t.shape[i]! - 1) * t.stride[i]!;
    if (!Number.isSafeInteger(last) || last >= room) {
      fail('ERR_SHAPE', `tensor ${where} [${t.shape.join(', ')}] stride [${t.stride.join(', ')}] offset ${t.storageOffset} overruns storage ${storage.key} of ${room} ${t.dtype} elements`);
    }
  } else if (t.storageOffset > room) {
    fail('ERR_SHAPE', `tensor ${where} offset ${t.storageOffset} is past storage ${storage.key} of ${room} ${t.dtype} elements`);
  }
  let contiguous = true;
  let expected = 1;
  for (let i = t.shape.length - 1; i >= 0; i--) {
    if (t.shape[i] !== 1 && t.stride[i] !== expected) contiguous = false;
    expected *= t.shape[i]!;
  }
  return {
    path: where, keys: path, dtype: t.dtype, shape: [...t.shape], stride: [...t.stride], storageOffset: t.storageOffset, storageKey: storage.key,
    entryName: storage.entry.name, contiguous,
    byteOffset: storage.entry.dataOffset + t.storageOffset * elementBytes, byteLength: numel * elementBytes,
  };
}

/** Depth-first walk to every tensor and bare storage, with cycle protection and a depth limit. */
function walk(root: PickleValue, maxDepth: number, visit: (path: string[], node: TensorRef | StorageRef) => void): void {
  const seen = new Set<object>();
  const stack: [PickleValue, string[]][] = [[root, []]];
  while (stack.length > 0) {
    const [value, path] = stack.pop()!;
    if (typeof value !== 'object' || value === null || value instanceof Uint8Array) continue;
    // A tensor object reached twice (memo: e.g. tied weights) is listed at each path.
    if (!Array.isArray(value) && !(value instanceof Map) && !(value instanceof Set) && (value.kind === 'tensor' || value.kind === 'storage')) {
      visit(path, value);
      continue;
    }
    if (path.length > maxDepth) fail('ERR_BAD_PICKLE', `nesting deeper than ${maxDepth} at ${path.slice(0, 8).join('/')}/...`);
    // Containers are expanded once: stops cycles, and keeps shared sub-trees from multiplying paths.
    if (seen.has(value)) continue;
    seen.add(value);
    const children: [PickleValue, string][] = [];
    if (Array.isArray(value)) value.forEach((v, i) => children.push([v, String(i)]));
    else if (value instanceof Map) for (const [k, v] of value) children.push([v, keyString(k)]);
    else if (value instanceof Set) [...value].forEach((v, i) => children.push([v, String(i)]));
    else if (value.kind === 'object') {
      value.args.forEach((v, i) => children.push([v, String(i)]));
      if (value.state !== undefined) children.push([value.state, 'state']);
    }
    // Push in reverse so tensors come out in pickle order.
    for (let i = children.length - 1; i >= 0; i--) stack.push([children[i]![0], [...path, children[i]![1]]]);
  }
}

function keyString(k: PickleValue, depth = 0): string {
  if (typeof k === 'string' || typeof k === 'number' || typeof k === 'bigint' || typeof k === 'boolean' || k === null) return String(k);
  // Bounded: a hostile pickle can nest tuple keys arbitrarily deep.
  if (isTuple(k)) return depth > 4 ? '(...)' : `(${k.map((x) => keyString(x, depth + 1)).join(',')})`;
  return `<${typeof k === 'object' && 'kind' in k ? k.kind : 'key'}>`;
}

/** Adam/AdamW state of one parameter. */
export interface AdamParamState {
  /** The param id: its position in the param groups, concatenated (for FQN-keyed state too). */
  id: number;
  expAvg: TorchTensor;
  expAvgSq: TorchTensor;
  /** `max_exp_avg_sq` when amsgrad is on, else null. */
  maxExpAvgSq: TorchTensor | null;
  /** Steps taken (from the tensor, or the plain number older torch stored). */
  step: number;
  /** The 0-dim step tensor (torch >= 1.12), or null when it was a plain number. */
  stepTensor: TorchTensor | null;
}

/** One param group: the ids it holds and its hyper-parameters. */
export interface OptimizerParamGroup {
  params: number[];
  /** Every other key (lr, betas, eps, weight_decay, amsgrad, initial_lr, ...). */
  options: Map<string, PickleValue>;
  weightDecay: number | null;
}

/** An optimizer state_dict read from optimizer.pt. */
export interface OptimizerState {
  checkpoint: TorchCheckpoint;
  /** State by param id, in id order. */
  state: Map<number, AdamParamState>;
  paramGroups: OptimizerParamGroup[];
  /**
   * Parameter names the file itself records, by id, and where from: `fqn`
   * (state keyed by name, as torch.distributed.checkpoint's
   * get_optimizer_state_dict writes it) or `param-names` (each group's
   * `param_names`, torch >= 2.6 when the optimizer was built from
   * named_parameters()); null when it records none.
   */
  names: { byId: Map<number, string>; source: 'fqn' | 'param-names' } | null;
}

/**
 * Read an Adam/AdamW `optimizer.state_dict()` saved with torch.save.
 * @throws ExcpError as {@link readTorchCheckpoint}; ERR_BAD_PICKLE when the tree is not an Adam state_dict
 */
export function readOptimizerState(size: number, readAt: ReadAt, options: TorchReadOptions = {}): OptimizerState {
  const checkpoint = readTorchCheckpoint(size, readAt, options);
  return adamStateOf(checkpoint, [], readAt);
}

/**
 * The Adam/AdamW state_dict at `keys` of a read torch.save file (`[]`: the
 * whole pickle; `['optimizer']`, `['optimizer_states', '0']`: a nested one).
 * Param groups list integer ids, or names (FQN-keyed state, whose ids are
 * then the names' positions in the groups).
 * @throws ExcpError ERR_BAD_PICKLE naming what is not an Adam state_dict, ERR_SHAPE, ERR_DTYPE
 */
export function adamStateOf(checkpoint: TorchCheckpoint, keys: readonly string[], readAt: ReadAt): OptimizerState {
  const structure = (what: string): never => fail('ERR_BAD_PICKLE', `optimizer state_dict${keys.length ? ` at ${keys.join('/')}` : ''}: ${what}`);
  let root: PickleValue = checkpoint.tree;
  for (const k of keys) {
    root = root instanceof Map ? [...root].find(([key]) => keyString(key) === k)?.[1] ?? null : Array.isArray(root) ? root[Number(k)] ?? null : null;
  }
  if (!(root instanceof Map)) return structure('the pickle is not a dict');
  const stateMap = root.get('state');
  const groups = root.get('param_groups');
  if (!(stateMap instanceof Map) || !Array.isArray(groups)) return structure('needs "state" (dict) and "param_groups" (list)');
  const byPath = new Map(checkpoint.tensors.map((t) => [t.keys.join('\0'), t]));
  const paramGroups: OptimizerParamGroup[] = [];
  // Param key (an id, or a name) -> [id, group].
  const owner = new Map<number | string, [number, number]>();
  const byId = new Map<number, string>();
  let source: 'fqn' | 'param-names' | null = null;
  for (const [g, group] of groups.entries()) {
    if (!(group instanceof Map)) return structure(`param group ${g} is not a dict`);
    const params = group.get('params');
    const ints = Array.isArray(params) && params.every((p) => typeof p === 'number' && Number.isSafeInteger(p) && p >= 0);
    const fqns = Array.isArray(params) && params.length > 0 && params.every((p) => typeof p === 'string');
    if (!ints && !fqns) return structure(`param group ${g} has no "params" list of integer ids or names`);
    const ids: number[] = [];
    for (const p of params as (number | string)[]) {
      if (owner.has(p)) return structure(`param ${JSON.stringify(p)} is in groups ${owner.get(p)![1]} and ${g}`);
      const id = typeof p === 'number' ? p : owner.size;
      owner.set(p, [id, g]);
      ids.push(id);
      if (typeof p === 'string') byId.set(id, p);
    }
    if (fqns) source = 'fqn';
    const names = group.get('param_names');
    if (ints && Array.isArray(names) && names.length === ids.length && names.every((n) => typeof n === 'string')) {
      ids.forEach((id, i) => byId.set(id, names[i] as string));
      source ??= 'param-names';
    }
    const opts = new Map<string, PickleValue>();
    for (const [k, v] of group) if (k !== 'params') opts.set(String(k), v);
    const wd = opts.get('weight_decay');
    paramGroups.push({ params: ids, options: opts, weightDecay: typeof wd === 'number' ? wd : null });
  }
  if (new Set([...owner.keys()].map((k) => typeof k)).size > 1) return structure('param groups mix ids and names');
  const state = new Map<number, AdamParamState>();
  for (const [key, s] of stateMap) {
    if (typeof key !== 'number' && typeof key !== 'string') return structure(`state key ${keyString(key)} is neither an id nor a name`);
    const own = owner.get(key);
    if (!own) return structure(`state ${JSON.stringify(key)} belongs to no param group`);
    const id = own[0];
    if (!(s instanceof Map)) return structure(`state ${JSON.stringify(key)} is not a dict`);
    const tensor = (name: string): TorchTensor | null => byPath.get([...keys, 'state', String(key), name].join('\0')) ?? null;
    const expAvg = tensor('exp_avg');
    const expAvgSq = tensor('exp_avg_sq');
    if (!expAvg || !expAvgSq) {
      const held = [...s.keys()].map((k) => keyString(k)).join(', ');
      return structure(`state ${JSON.stringify(key)} holds ${held || 'nothing'}, no exp_avg/exp_avg_sq tensors (not Adam/AdamW)`);
    }
    for (const t of [expAvg, expAvgSq]) {
      if (!t.contiguous) fail('ERR_SHAPE', `${t.path} is not contiguous`);
    }
    if (expAvg.shape.join() !== expAvgSq.shape.join()) fail('ERR_SHAPE', `state ${JSON.stringify(key)}: exp_avg [${expAvg.shape}] and exp_avg_sq [${expAvgSq.shape}] differ`);
    const stepTensor = tensor('step');
    const rawStep = s.get('step');
    let step: number;
    if (stepTensor) step = readScalar(stepTensor, readAt);
    else if (typeof rawStep === 'number') step = rawStep;
    else return structure(`state ${JSON.stringify(key)} has no step`);
    state.set(id, { id, expAvg, expAvgSq, maxExpAvgSq: tensor('max_exp_avg_sq'), step, stepTensor });
  }
  return {
    checkpoint, state: new Map([...state].sort((a, b) => a[0] - b[0])), paramGroups,
    names: source ? { byId, source } : null,
  };
}

/** Value of a one-element tensor. */
function readScalar(t: TorchTensor, readAt: ReadAt): number {
  if (t.byteLength !== DTYPE_BYTES[t.dtype]) fail('ERR_SHAPE', `${t.path} has ${t.byteLength / DTYPE_BYTES[t.dtype]} elements, expected 1`);
  const b = readAt(t.byteOffset, t.byteLength);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  switch (t.dtype) {
    case 'F32': return v.getFloat32(0, true);
    case 'F64': return v.getFloat64(0, true);
    case 'BF16': return bf16ToF32(v.getUint16(0, true));
    case 'I64': return Number(v.getBigInt64(0, true));
    case 'I32': return v.getInt32(0, true);
    default: return fail('ERR_DTYPE', `${t.path} step has dtype ${t.dtype}`);
  }
}

/**
 * Stream a copy of a torch.save file with new contents for some storages.
 * `data.pkl` and every other entry are carried byte-exactly; each
 * replacement must have the storage's exact byte length (its numel and dtype
 * are fixed by data.pkl). Chunks are valid until the next one is requested.
 * @param checkpoint from {@link readTorchCheckpoint} on the same file
 * @param readAt reader of the original file
 * @param replacements new bytes (or a chunk source) by storage key, e.g. `'3'`
 * @throws ExcpError ERR_INVALID_ARG (unknown storage key), ERR_SHAPE (wrong length)
 */
export function rewriteTorchCheckpoint(
  checkpoint: TorchCheckpoint,
  readAt: ReadAt,
  replacements: ReadonlyMap<string, ZipReplacement>,
  options: { chunkBytes?: number } = {},
): Generator<Uint8Array, void, undefined> {
  const byEntry = new Map<string, ZipReplacement>();
  for (const [key, replacement] of replacements) {
    const storage = checkpoint.storages.get(key);
    if (!storage) throw new ExcpError('ERR_INVALID_ARG', `${STAGE}: no storage ${JSON.stringify(key)} in ${checkpoint.archiveName}`);
    if (replacement instanceof Uint8Array && replacement.length !== storage.entry.size) {
      throw new ExcpError('ERR_SHAPE', `${STAGE}: replacement for storage ${key} has ${replacement.length} bytes, the storage has ${storage.entry.size}`);
    }
    byEntry.set(storage.entry.name, replacement);
  }
  return rewriteZip(checkpoint.directory, readAt, byEntry, options);
}

/**
 * One-shot {@link rewriteTorchCheckpoint}: the whole new file in memory.
 * @returns the bytes of the new file
 */
export function writeTorchCheckpoint(checkpoint: TorchCheckpoint, readAt: ReadAt, replacements: ReadonlyMap<string, ZipReplacement>): Uint8Array {
  // Copy each chunk: readAt may hand out views of a buffer it reuses.
  return concatBytes([...rewriteTorchCheckpoint(checkpoint, readAt, replacements)].map((c) => c.slice()));
}
