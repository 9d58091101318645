/**
 * Writing small PyTorch distributed checkpoints (DCP) in the tests, laid out
 * as torch 2.13 writes them (spec/fixtures/dcp/README.md): a `.metadata`
 * pickle of DCP's dataclasses (NEWOBJ + BUILD of their `__dict__`, protocol 4
 * opcodes) and `__{rank}_0.distcp` files, each the concatenation of its
 * items, every item a whole torch.save zip (bytes items first). Hostile
 * variants are made by editing the plain description before writing it.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { writeZip } from './zip-writer.js';

/** A value to pickle. Numbers are ints; floats are `{ float }`. */
export type PickleNode =
  | null | boolean | number | string
  | PickleNode[]
  | { tuple: PickleNode[] }
  | { float: number }
  | { dict: [PickleNode, PickleNode][] }
  | { global: string }
  | { object: string; state?: PickleNode }
  | { reduce: string; args: PickleNode[] }
  | { pid: PickleNode[] };

/**
 * Pickle a value with protocol 4 opcodes (no FRAME, no memo), as `.metadata`
 * is written, or protocol 2 ones (BINUNICODE, GLOBAL), as torch.save writes.
 * @param value the tree
 * @returns the pickle bytes, STOP included
 */
export function pickleNode(value: PickleNode, protocol: 2 | 4 = 4): Uint8Array {
  const out: number[] = [0x80, protocol];
  const u32 = (n: number): void => {
    out.push(n & 255, (n >>> 8) & 255, (n >>> 16) & 255, (n >>> 24) & 255);
  };
  const text = (s: string): void => {
    const b = new TextEncoder().encode(s);
    if (b.length < 256 && protocol === 4) out.push(0x8c, b.length);
    else {
      out.push(0x58);
      u32(b.length);
    }
    out.push(...b);
  };
  const global = (name: string): void => {
    const dot = name.lastIndexOf('.');
    if (protocol === 2) {
      out.push(0x63, ...new TextEncoder().encode(`${name.slice(0, dot)}\n${name.slice(dot + 1)}\n`));
      return;
    }
    text(name.slice(0, dot));
    text(name.slice(dot + 1));
    out.push(0x93);
  };
  const tupleOf = (items: PickleNode[]): void => {
    if (items.length === 0) out.push(0x29);
    else {
      out.push(0x28);
      items.forEach(emit);
      out.push(0x74);
    }
  };
  function emit(v: PickleNode): void {
    if (v === null) out.push(0x4e);
    else if (v === true) out.push(0x88);
    else if (v === false) out.push(0x89);
    else if (typeof v === 'number') {
      if (v >= 0 && v < 256) out.push(0x4b, v);
      else if (v >= 0 && v < 65536) out.push(0x4d, v & 255, v >>> 8);
      else if (v >= -(2 ** 31) && v < 2 ** 31) {
        out.push(0x4a);
        u32(v >>> 0);
      } else {
        // LONG1: little-endian two's complement, 8 bytes
        const b = new Uint8Array(8);
        new DataView(b.buffer).setBigInt64(0, BigInt(v), true);
        out.push(0x8a, 8, ...b);
      }
    } else if (typeof v === 'string') text(v);
    else if (Array.isArray(v)) {
      out.push(0x5d);
      if (v.length > 0) {
        out.push(0x28);
        v.forEach(emit);
        out.push(0x65);
      }
    } else if ('tuple' in v) tupleOf(v.tuple);
    else if ('float' in v) {
      const b = new Uint8Array(8);
      new DataView(b.buffer).setFloat64(0, v.float, false);
      out.push(0x47, ...b);
    } else if ('dict' in v) {
      out.push(0x7d);
      if (v.dict.length > 0) {
        out.push(0x28);
        for (const [k, x] of v.dict) {
          emit(k);
          emit(x);
        }
        out.push(0x75);
      }
    } else if ('global' in v) global(v.global);
    else if ('object' in v) {
      global(v.object);
      out.push(0x29, 0x81);
      if (v.state !== undefined) {
        emit(v.state);
        out.push(0x62);
      }
    } else if ('reduce' in v) {
      global(v.reduce);
      tupleOf(v.args);
      out.push(0x52);
    } else {
      tupleOf(v.pid);
      out.push(0x51);
    }
  }
  emit(value);
  out.push(0x2e);
  return Uint8Array.from(out);
}

const META = 'torch.distributed.checkpoint.metadata';
const size = (dims: readonly number[]): PickleNode => ({ reduce: 'torch.Size', args: [{ tuple: [...dims] }] });

/** A tensor of a synthetic DCP checkpoint: its chunks, each written by a rank. */
export interface SynthTensor {
  key: string;
  size: number[];
  /** torch dtype name (default float32; the data is float32 either way unless `raw`). */
  dtype?: string;
  chunks: { offsets: number[]; sizes: number[]; rank: number; data: Float32Array }[];
  /** planner_data path (default: none recorded). */
  path?: (string | number)[];
}

/** A bytes item: a float value, pickled into its own zip. */
export interface SynthBytes {
  key: string;
  rank: number;
  value: number;
  path?: (string | number)[];
}

/** Where an item was written. */
export interface SynthStorage {
  key: string;
  /** Chunk offsets (tensors) or null (bytes items). */
  offsets: number[] | null;
  index: number | null;
  file: string;
  offset: number;
  length: number;
}

/** A synthetic checkpoint, before it is written: edit its fields to make hostile variants. */
export interface SynthDcp {
  tensors: SynthTensor[];
  bytes: SynthBytes[];
}

/** torch.save(tensor) of a float32 tensor into a buffer: archive/data.pkl + archive/data/0. */
export function tensorItem(data: Float32Array, shape: readonly number[], storage = 'torch.FloatStorage'): Uint8Array {
  const stride: number[] = [];
  let s = 1;
  for (let d = shape.length - 1; d >= 0; d--) {
    stride.unshift(s);
    s *= shape[d]!;
  }
  const pkl = pickleNode({
    reduce: 'torch._utils._rebuild_tensor_v2',
    args: [{ pid: ['storage', { global: storage }, '0', 'cpu', data.length] }, 0, { tuple: [...shape] }, { tuple: stride }, false, { reduce: 'collections.OrderedDict', args: [] }],
  }, 2);
  return torchZip(pkl, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
}

/** torch.save(value) of a float: a zip without data records. */
export function bytesItem(value: number): Uint8Array {
  return torchZip(pickleNode({ float: value }, 2), null);
}

function torchZip(pkl: Uint8Array, storage: Uint8Array | null): Uint8Array {
  const entries = [{ name: 'archive/data.pkl', data: pkl }, { name: 'archive/byteorder', data: new TextEncoder().encode('little') }];
  if (storage) entries.push({ name: 'archive/data/0', data: storage });
  entries.push({ name: 'archive/version', data: new TextEncoder().encode('3\n') });
  return writeZip(entries);
}

/**
 * The `.distcp` files of a checkpoint: per rank, its bytes items then its tensor chunks, back to back.
 * @returns the files by name and every item's place
 */
export function distcpFiles(dcp: SynthDcp): { files: Map<string, Uint8Array>; storage: SynthStorage[] } {
  const parts = new Map<string, Uint8Array[]>();
  const storage: SynthStorage[] = [];
  const put = (rank: number, bytes: Uint8Array, where: Omit<SynthStorage, 'file' | 'offset' | 'length'>): void => {
    const file = `__${rank}_0.distcp`;
    const list = parts.get(file) ?? [];
    const offset = list.reduce((n, b) => n + b.length, 0);
    list.push(bytes);
    parts.set(file, list);
    storage.push({ ...where, file, offset, length: bytes.length });
  };
  for (const b of dcp.bytes) put(b.rank, bytesItem(b.value), { key: b.key, offsets: null, index: null });
  for (const t of dcp.tensors) t.chunks.forEach((c, i) => put(c.rank, tensorItem(c.data, c.sizes), { key: t.key, offsets: c.offsets, index: i }));
  const files = new Map([...parts].map(([name, list]) => [name, new Uint8Array(Buffer.concat(list))]));
  return { files, storage };
}

/**
 * The `.metadata` pickle of a checkpoint.
 * @param dcp the items
 * @param storage where each item was written (from {@link distcpFiles}, possibly edited)
 * @param extra `_StorageInfo` fields to add to every record (e.g. transform_descriptors)
 */
export function metadataPickle(dcp: SynthDcp, storage: readonly SynthStorage[], extra: [string, PickleNode][] = []): Uint8Array {
  const items: [PickleNode, PickleNode][] = [];
  for (const b of dcp.bytes) items.push([b.key, { object: `${META}.BytesStorageMetadata`, state: { dict: [] } }]);
  for (const t of dcp.tensors) {
    const properties: PickleNode = {
      object: `${META}.TensorProperties`,
      state: { tuple: [{ global: `torch.${t.dtype ?? 'float32'}` }, { reduce: 'torch.serialization._get_layout', args: ['torch.strided'] }, false, { reduce: `${META}._MEM_FORMAT_ENCODING`, args: [0] }, false] },
    };
    const chunks = t.chunks.map((c): PickleNode => ({ object: `${META}.ChunkStorageMetadata`, state: { dict: [['offsets', size(c.offsets)], ['sizes', size(c.sizes)]] } }));
    items.push([t.key, { object: `${META}.TensorStorageMetadata`, state: { dict: [['properties', properties], ['size', size(t.size)], ['chunks', chunks]] } }]);
  }
  const planner: [PickleNode, PickleNode][] = [...dcp.bytes, ...dcp.tensors].filter((x) => x.path).map((x) => [x.key, { tuple: x.path! }]);
  const storageData: [PickleNode, PickleNode][] = storage.map((s) => [
    { object: `${META}.MetadataIndex`, state: { dict: [['fqn', s.key], ['offset', s.offsets ? size(s.offsets) : null], ['index', s.index]] } },
    { object: 'torch.distributed.checkpoint.filesystem._StorageInfo', state: { dict: [['relative_path', s.file], ['offset', s.offset], ['length', s.length], ...extra] } },
  ]);
  return pickleNode({
    object: `${META}.Metadata`,
    state: {
      dict: [
        ['state_dict_metadata', { dict: items }], ['planner_data', { dict: planner }], ['storage_data', { dict: storageData }],
        ['storage_meta', { object: `${META}.StorageMeta`, state: { dict: [['checkpoint_id', { reduce: 'pathlib.PosixPath', args: ['step'] }], ['save_id', 'x'], ['load_id', null], ['modules', []]] } }],
        ['version', '1.0.0'],
      ],
    },
  });
}

/**
 * Write a checkpoint folder: `.metadata` and the ranks' `.distcp` files.
 * @param dir created if needed
 * @param edit changes the item places before `.metadata` is written (hostile variants)
 */
export function writeDcpFolder(dir: string, dcp: SynthDcp, edit?: (storage: SynthStorage[], files: Map<string, Uint8Array>) => void): void {
  mkdirSync(dir, { recursive: true });
  const { files, storage } = distcpFiles(dcp);
  edit?.(storage, files);
  for (const [name, bytes] of files) writeFileSync(join(dir, name), bytes);
  writeFileSync(join(dir, '.metadata'), metadataPickle(dcp, storage));
}

/**
 * A model of `params` 2-D parameters sharded in rows over `world` ranks, with
 * Adam moments, as `get_state_dict` + `dcp.save` name them
 * (`model.<fqn>`, `optim.state.<fqn>.{exp_avg,exp_avg_sq,step}`).
 * @param seed values are a function of (seed, parameter, element)
 * @param drift added to every weight (a later step of the same run)
 */
export function shardedModel(world: number, params: number, rows: number, cols: number, seed: number, drift = 0): SynthDcp {
  const tensors: SynthTensor[] = [];
  const bytes: SynthBytes[] = [{ key: 'optim.param_groups.0.lr', rank: world - 1, value: 1e-3, path: ['optim', 'param_groups', 0, 'lr'] }];
  const value = (p: number, k: number, i: number): number => Math.sin(seed * 7.1 + p * 13.7 + k * 3.3 + i * 0.71) * (k === 2 ? 1e-6 : k === 1 ? 1e-3 : 0.05);
  for (let p = 0; p < params; p++) {
    const fqn = `layers.${p}.weight`;
    for (const [k, key, path] of [[0, `model.${fqn}`, ['model', fqn]], [1, `optim.state.${fqn}.exp_avg`, ['optim', 'state', fqn, 'exp_avg']], [2, `optim.state.${fqn}.exp_avg_sq`, ['optim', 'state', fqn, 'exp_avg_sq']]] as const) {
      const chunks = [];
      let row = 0;
      for (let r = 0; r < world; r++) {
        const n = Math.floor(rows / world) + (r < rows % world ? 1 : 0);
        const data = new Float32Array(n * cols).map((_, i) => {
          const v = value(p, k, (row * cols) + i);
          return k === 2 ? Math.abs(v) : k === 0 ? v + drift * Math.cos(i + p) : v;
        });
        chunks.push({ offsets: [row, 0], sizes: [n, cols], rank: r, data });
        row += n;
      }
      tensors.push({ key, size: [rows, cols], chunks, path: [...path] });
    }
    tensors.push({ key: `optim.state.${fqn}.step`, size: [], chunks: [{ offsets: [], sizes: [], rank: world - 1, data: Float32Array.of(10) }], path: ['optim', 'state', fqn, 'step'] });
  }
  return { tensors, bytes };
}
