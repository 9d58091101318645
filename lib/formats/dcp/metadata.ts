/**
 * The `.metadata` file of a PyTorch distributed checkpoint (DCP,
 * `torch.distributed.checkpoint`): what the folder holds and where.
 *
 * Format (torch/distributed/checkpoint/metadata.py and filesystem.py, checked
 * on torch 2.13 output, spec/fixtures/dcp/README.md): a plain pickle
 * (protocol 4) of a `Metadata` dataclass built with NEWOBJ + BUILD of its
 * `__dict__`:
 *  - `state_dict_metadata`: `{flat key: TensorStorageMetadata | BytesStorageMetadata}`;
 *    a tensor's `properties` (a `TensorProperties` whose state is the tuple
 *    `(dtype, layout, requires_grad, memory format, pin_memory)`), its global
 *    `size` (`torch.Size`) and its `chunks` (`ChunkStorageMetadata{offsets, sizes}`,
 *    one per shard);
 *  - `planner_data`: `{flat key: the tuple of its state-dict path}`;
 *  - `storage_data`: `{MetadataIndex{fqn, offset, index}: _StorageInfo{relative_path, offset, length}}`:
 *    where each chunk (or bytes item) lies, as a whole torch.save zip;
 *  - `storage_meta`, `version`: not needed here.
 *
 * The pickle is read by the restricted unpickler (lib/formats/torch/pickle.ts)
 * with {@link DCP_ALLOWED_GLOBALS} as its allow-list: DCP's own classes, torch
 * dtypes and sizes, the layout helper and pathlib paths, nothing else, so a
 * `.metadata` naming any other global is refused before anything acts. The
 * objects come back as inert descriptions; this module checks them field by
 * field and turns them into {@link DcpMetadata}.
 */
import { type DType, elementCount } from '../../core/dtype.js';
import { ExcpError } from '../../core/errors.js';
import { isSafeRelativePath } from '../../container/validate.js';
import { type PickleObject, type PickleValue, unpickle } from '../torch/pickle.js';
import { isGlobal, isTuple } from '../torch/pickle-objects.js';

const META = 'torch.distributed.checkpoint.metadata';
/** torch 2.0-2.1 kept TensorProperties and the memory-format enum here. */
const SHARD_META = 'torch.distributed._shard.sharded_tensor.metadata';

/** torch dtype globals and the dtype excp codes them as (null: carried exactly, never cut out). */
const TORCH_DTYPES: Readonly<Record<string, DType | null>> = Object.freeze({
  float64: 'F64', float32: 'F32', float16: 'F16', bfloat16: 'BF16',
  int64: 'I64', int32: 'I32', int16: 'I16', int8: 'I8',
  uint64: 'U64', uint32: 'U32', uint16: 'U16', uint8: 'U8', bool: 'BOOL',
  float8_e4m3fn: 'F8_E4M3', float8_e5m2: 'F8_E5M2',
  complex32: null, complex64: null, complex128: null, float8_e4m3fnuz: null, float8_e5m2fnuz: null,
  qint8: null, quint8: null, qint32: null,
});

/**
 * Every global a DCP `.metadata` may name. None of them is ever called: the
 * unpickler describes them (lib/formats/torch/pickle-objects.ts).
 */
export const DCP_ALLOWED_GLOBALS: ReadonlySet<string> = new Set([
  ...['Metadata', 'TensorStorageMetadata', 'TensorProperties', '_MEM_FORMAT_ENCODING', 'ChunkStorageMetadata',
    'BytesStorageMetadata', 'MetadataIndex', 'StorageMeta'].map((n) => `${META}.${n}`),
  `${SHARD_META}.TensorProperties`, `${SHARD_META}.MEM_FORMAT_ENCODING`,
  'torch.distributed.checkpoint.filesystem._StorageInfo',
  'torch.serialization._get_layout', 'torch.Size',
  ...Object.keys(TORCH_DTYPES).map((d) => `torch.${d}`),
  'pathlib.PosixPath', 'pathlib.WindowsPath',
]);

/** One shard of a tensor: its offset in the whole tensor and its size, per dimension. */
export interface DcpChunk {
  offsets: number[];
  sizes: number[];
}

/** A tensor of the state dict. */
export interface DcpTensorItem {
  kind: 'tensor';
  key: string;
  /** The dtype excp codes it as, or null for one it carries exactly (complex, quantized, ...). */
  dtype: DType | null;
  /** The torch dtype's name, e.g. `float32`. */
  torchDtype: string;
  size: number[];
  chunks: DcpChunk[];
}

/** A non-tensor value of the state dict (a float, a list, bytes, ...), stored as a torch.save zip of its own. */
export interface DcpBytesItem {
  kind: 'bytes';
  key: string;
}

export type DcpItem = DcpTensorItem | DcpBytesItem;

/** Where one chunk (or bytes item) lies: `[offset, offset + length)` of `path`, a whole torch.save zip. */
export interface DcpStorage {
  key: string;
  /** The tensor chunk it holds, or null for a bytes item. */
  chunk: DcpChunk | null;
  /** File name relative to the checkpoint folder, e.g. `__1_0.distcp`. */
  path: string;
  offset: number;
  length: number;
}

/** A parsed `.metadata`. */
export interface DcpMetadata {
  /** Items by flat key, in the order DCP listed them. */
  items: Map<string, DcpItem>;
  /** Each key's state-dict path (`planner_data`), when the planner recorded one. */
  paths: Map<string, (string | number)[]>;
  /** Every chunk and bytes item, in `storage_data` order. */
  storage: DcpStorage[];
}

/** Options of {@link parseDcpMetadata}. */
export interface DcpMetadataOptions {
  /** Prefix of every message (the file's path). */
  stage?: string;
  /** Largest `.metadata` read, in bytes (default 256 MiB). */
  maxBytes?: number;
}

/**
 * Parse and check a `.metadata` file.
 * @param bytes the file
 * @returns its items and storage, checked: every chunk inside its tensor, the
 *   chunks of a tensor tiling it exactly, one storage record per chunk and per
 *   bytes item, safe relative file names, no storage transforms
 * @throws ExcpError ERR_UNSAFE_PICKLE (a global outside {@link DCP_ALLOWED_GLOBALS}),
 *   ERR_BAD_PICKLE, ERR_TRUNCATED (a malformed pickle), ERR_BAD_HEADER (not DCP
 *   metadata), ERR_SHAPE (chunks that do not tile their tensor), ERR_INVALID_ARG
 *   (a storage transform such as zstd, which excp cannot read through)
 */
export function parseDcpMetadata(bytes: Uint8Array, options: DcpMetadataOptions = {}): DcpMetadata {
  const stage = options.stage ?? '.metadata';
  const bad = (what: string): never => {
    throw new ExcpError('ERR_BAD_HEADER', `${stage}: ${what}`);
  };
  const root = unpickle(bytes, { allowedGlobals: DCP_ALLOWED_GLOBALS, stage, maxBytes: options.maxBytes ?? 256 * 1024 * 1024 });
  const fields = stateOf(root, `${META}.Metadata`) ?? bad('not a torch.distributed.checkpoint Metadata object');
  const sdm = fields.get('state_dict_metadata');
  const storageData = fields.get('storage_data');
  if (!(sdm instanceof Map)) bad('state_dict_metadata is not a dict');
  if (!(storageData instanceof Map)) bad('storage_data is not a dict (a folder saved without storage data cannot be read)');
  const items = new Map<string, DcpItem>();
  for (const [key, value] of sdm as Map<PickleValue, PickleValue>) {
    if (typeof key !== 'string') bad(`state_dict_metadata key ${describe(key)} is not a string`);
    items.set(key as string, readItem(key as string, value, bad));
  }
  const paths = new Map<string, (string | number)[]>();
  const planner = fields.get('planner_data');
  if (planner instanceof Map) {
    for (const [key, path] of planner) {
      if (typeof key === 'string' && isTuple(path) && path.length > 0 && path.every((p) => typeof p === 'string' || typeof p === 'number')) {
        paths.set(key, [...(path as (string | number)[])]);
      }
    }
  }
  const storage = readStorage(storageData as Map<PickleValue, PickleValue>, items, bad, stage);
  return { items, paths, storage };
}

/** The `__dict__` of a NEWOBJ + BUILD object of the given class, or null. */
function stateOf(v: PickleValue | undefined, type: string | readonly string[]): Map<PickleValue, PickleValue> | null {
  if (!isObject(v) || !(typeof type === 'string' ? [type] : type).includes(v.type)) return null;
  return v.state instanceof Map ? v.state : v.state === undefined ? new Map() : null;
}

function isObject(v: PickleValue | undefined): v is PickleObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Map) && !(v instanceof Set) && !(v instanceof Uint8Array) && v.kind === 'object';
}

function describe(v: PickleValue | undefined): string {
  if (isObject(v)) return v.type;
  if (typeof v === 'string') return JSON.stringify(v.slice(0, 80));
  return v === undefined ? 'nothing' : Array.isArray(v) ? 'a list' : v instanceof Map ? 'a dict' : typeof v;
}

/** A torch.Size (a tuple after the unpickler's REDUCE) or a plain tuple of non-negative integers. */
function sizeOf(v: PickleValue | undefined): number[] | null {
  if (!Array.isArray(v) || !v.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)) return null;
  return [...(v as number[])];
}

function readItem(key: string, value: PickleValue, bad: (what: string) => never): DcpItem {
  if (isObject(value) && value.type === `${META}.BytesStorageMetadata`) return { kind: 'bytes', key };
  const fields = stateOf(value, `${META}.TensorStorageMetadata`) ?? bad(`item '${key}' is ${describe(value)}, not tensor or bytes metadata`);
  const size = sizeOf(fields.get('size')) ?? bad(`item '${key}': size is not a list of non-negative integers`);
  const torchDtype = dtypeOf(fields.get('properties')) ?? bad(`item '${key}': properties name no torch dtype`);
  const list = fields.get('chunks');
  if (!Array.isArray(list)) bad(`item '${key}': chunks is not a list`);
  const chunks = (list as PickleValue[]).map((c, i) => {
    const f = stateOf(c, `${META}.ChunkStorageMetadata`) ?? bad(`item '${key}': chunk ${i} is ${describe(c)}`);
    const offsets = sizeOf(f.get('offsets'));
    const sizes = sizeOf(f.get('sizes'));
    if (!offsets || !sizes || offsets.length !== size.length || sizes.length !== size.length) {
      return bad(`item '${key}': chunk ${i} offsets/sizes are not ${size.length} non-negative integers each`);
    }
    return { offsets, sizes };
  });
  checkTiling(key, size, chunks);
  return { kind: 'tensor', key, dtype: TORCH_DTYPES[torchDtype] ?? null, torchDtype, size, chunks };
}

/** The torch dtype name of a TensorProperties (state tuple or dict, current or torch 2.0 module). */
function dtypeOf(v: PickleValue | undefined): string | null {
  if (!isObject(v) || (v.type !== `${META}.TensorProperties` && v.type !== `${SHARD_META}.TensorProperties`)) return null;
  const state = v.state;
  const dtype = isTuple(state) ? state[0] : state instanceof Map ? state.get('dtype') : undefined;
  if (dtype === undefined || !isGlobal(dtype) || !dtype.qualifiedName.startsWith('torch.')) return null;
  const name = dtype.qualifiedName.slice('torch.'.length);
  return Object.prototype.hasOwnProperty.call(TORCH_DTYPES, name) ? name : null;
}

/**
 * The chunks of a tensor must tile it: each inside the tensor, no two
 * overlapping, their volumes adding up to the tensor's. (Disjoint boxes
 * inside the tensor whose volumes sum to its volume cover it exactly.)
 * Overlaps are found by a sweep along the most split dimension, so row or
 * column shards cost linear time whatever the world size.
 * @throws ExcpError ERR_SHAPE naming the tensor and the chunks
 */
export function checkTiling(key: string, size: readonly number[], chunks: readonly DcpChunk[]): void {
  const fail = (what: string): never => {
    throw new ExcpError('ERR_SHAPE', `dcp: tensor '${key}' [${size.join(', ')}]: ${what}`);
  };
  const total = elementCount(size, `dcp: tensor '${key}'`);
  let covered = 0;
  const show = (c: DcpChunk): string => `offsets [${c.offsets.join(', ')}] sizes [${c.sizes.join(', ')}]`;
  for (const c of chunks) {
    c.offsets.forEach((o, d) => {
      if (o + c.sizes[d]! > size[d]!) fail(`chunk at ${show(c)} runs past dimension ${d}`);
    });
    covered += elementCount(c.sizes, `dcp: tensor '${key}' chunk`);
    if (covered > total) fail(`chunks hold more than its ${total} elements (they overlap)`);
  }
  if (covered !== total) fail(`chunks hold ${covered} of its ${total} elements (they do not tile it)`);
  if (size.length === 0) {
    if (chunks.length !== 1) fail(`a 0-dim tensor has ${chunks.length} chunks`);
    return;
  }
  // Sweep along the dimension the chunks are split on most (dimension 0 for FSDP, 1 for column shards).
  let dim = 0;
  let most = 0;
  size.forEach((_, d) => {
    const distinct = new Set(chunks.map((c) => c.offsets[d])).size;
    if (distinct > most) [dim, most] = [d, distinct];
  });
  const live = chunks.filter((c) => c.sizes.every((s) => s > 0)).sort((a, b) => a.offsets[dim]! - b.offsets[dim]!);
  for (let i = 0; i < live.length; i++) {
    const a = live[i]!;
    for (let j = i + 1; j < live.length && live[j]!.offsets[dim]! < a.offsets[dim]! + a.sizes[dim]!; j++) {
      const b = live[j]!;
      if (a.offsets.every((o, d) => o < b.offsets[d]! + b.sizes[d]! && b.offsets[d]! < o + a.sizes[d]!)) fail(`chunks at ${show(a)} and ${show(b)} overlap`);
    }
  }
}

function sameOffsets(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

function readStorage(data: Map<PickleValue, PickleValue>, items: Map<string, DcpItem>, bad: (what: string) => never, stage: string): DcpStorage[] {
  const storage: DcpStorage[] = [];
  const placed = new Map<string, Set<number>>();
  for (const [index, info] of data) {
    const idx = stateOf(index, `${META}.MetadataIndex`) ?? bad(`storage_data key is ${describe(index)}, not a MetadataIndex`);
    const fqn = idx.get('fqn');
    if (typeof fqn !== 'string') bad('a MetadataIndex has no fqn');
    const key = fqn as string;
    const item = items.get(key) ?? bad(`storage_data names '${key}', which state_dict_metadata does not list`);
    const where = stateOf(info, 'torch.distributed.checkpoint.filesystem._StorageInfo') ?? bad(`storage of '${key}' is ${describe(info)}, not a _StorageInfo`);
    const path = where.get('relative_path');
    const offset = where.get('offset');
    const length = where.get('length');
    const transforms = where.get('transform_descriptors');
    if (Array.isArray(transforms) && transforms.length > 0) {
      throw new ExcpError('ERR_INVALID_ARG', `${stage}: '${key}' was saved through storage transforms (${transforms.map(String).join(', ')}, e.g. a zstd extension); excp reads only plain DCP items`);
    }
    if (!isSafeRelativePath(path)) bad(`storage of '${key}' names the file ${describe(path)}, not a relative path inside the folder`);
    if (typeof offset !== 'number' || !Number.isSafeInteger(offset) || offset < 0 || typeof length !== 'number' || !Number.isSafeInteger(length) || length < 0) {
      bad(`storage of '${key}' has offset ${describe(offset)} and length ${describe(length)}, not non-negative integers`);
    }
    let chunk: DcpChunk | null = null;
    if (item.kind === 'tensor') {
      const at = sizeOf(idx.get('offset'));
      const k = at ? item.chunks.findIndex((c) => sameOffsets(c.offsets, at)) : -1;
      if (k < 0) bad(`storage of '${key}' is for a chunk at [${at?.join(', ') ?? '?'}], which the tensor does not have`);
      const seen = placed.get(key) ?? new Set<number>();
      if (seen.has(k)) bad(`'${key}' chunk at [${at!.join(', ')}] is stored twice`);
      seen.add(k);
      placed.set(key, seen);
      chunk = item.chunks[k]!;
    } else {
      if (placed.has(key)) bad(`bytes item '${key}' is stored twice`);
      placed.set(key, new Set([0]));
    }
    storage.push({ key, chunk, path: path as string, offset: offset as number, length: length as number });
  }
  for (const item of items.values()) {
    const count = placed.get(item.key)?.size ?? 0;
    const want = item.kind === 'tensor' ? item.chunks.length : 1;
    if (count !== want) bad(`'${item.key}' has ${want} ${item.kind === 'tensor' ? 'chunks' : 'item'} but ${count} storage records`);
  }
  return storage;
}
