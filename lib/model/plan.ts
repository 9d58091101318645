/**
 * Planning (pure): which tensors form a parameter entry with their Adam
 * moments, which are coded on their own, and which use the base.
 *
 * Input convention (issue "codec end to end"): a parameter `NAME` with its
 * optimizer state as `NAME.exp_avg` and `NAME.exp_avg_sq`, anywhere in the
 * file (writers sort by dtype, then name, so they are rarely adjacent).
 */
import { type DType, LOSSY_DTYPES, elementCount } from '../core/dtype.js';
import type { ContainerHeader, FileSpec } from '../container/format.js';
import { TOOL_VERSION } from '../core/constants.js';
import { packEntries } from './pack.js';
import { ExcpError } from '../core/errors.js';
import type { CodecOptions } from '../core/options.js';
import type { EntrySpec, Role, TensorSpec } from './checkpoint.js';

/** A tensor as a plan needs it. */
export interface PlanTensor {
  name: string;
  dtype: DType;
  shape: number[];
}

/**
 * Group tensors into entries (small exact ones into packs, lib/pack.ts).
 * @param tensors the checkpoint's tensors, in the order the container will list them
 * @param base the base checkpoint's tensors by name, or null for a keyframe
 * @param options method options
 * @returns tensors and entries of the container header
 */
export function planEntries(
  tensors: readonly PlanTensor[],
  base: ReadonlyMap<string, PlanTensor> | null,
  options: CodecOptions,
): { tensors: TensorSpec[]; entries: EntrySpec[] } {
  const index = new Map<string, number>();
  tensors.forEach((t, i) => index.set(t.name, i));
  const role: Role[] = tensors.map(() => 'plain');
  const paired = new Map<number, [number, number]>();
  tensors.forEach((t, i) => {
    const m = index.get(`${t.name}.exp_avg`);
    const v = index.get(`${t.name}.exp_avg_sq`);
    if (m === undefined || v === undefined) return;
    const mt = tensors[m]!;
    const vt = tensors[v]!;
    const same = sameShape(t.shape, mt.shape) && sameShape(t.shape, vt.shape) && mt.dtype === vt.dtype;
    if (!same || !LOSSY_DTYPES.has(t.dtype) || !LOSSY_DTYPES.has(mt.dtype)) return;
    if (role[i] !== 'plain' || role[m] !== 'plain' || role[v] !== 'plain') return;
    role[i] = 'weight';
    role[m] = 'exp_avg';
    role[v] = 'exp_avg_sq';
    paired.set(i, [m, v]);
  });
  const entries: EntrySpec[] = [];
  const entryOf = new Int32Array(tensors.length).fill(-1);
  tensors.forEach((t, i) => {
    if (role[i] === 'exp_avg' || role[i] === 'exp_avg_sq') return;
    const b = base?.get(t.name);
    const hasBase = b !== undefined && b.dtype === t.dtype && sameShape(b.shape, t.shape);
    const pair = paired.get(i);
    const elements = elementCount(t.shape, `tensor '${t.name}'`);
    const id = entries.length;
    entryOf[i] = id;
    if (pair) {
      entryOf[pair[0]] = id;
      entryOf[pair[1]] = id;
      entries.push({
        kind: 'param', weight: i, expAvg: pair[0], expAvgSq: pair[1],
        exactWeight: options.lossless || !hasBase, exactMoments: options.lossless, base: hasBase, elements,
      });
    } else {
      entries.push({ kind: 'plain', weight: i, expAvg: null, expAvgSq: null, exactWeight: true, exactMoments: false, base: hasBase, elements });
    }
  });
  const specs = tensors.map((t, i) => ({ name: t.name, dtype: t.dtype, shape: t.shape.slice(), role: role[i]!, entry: entryOf[i]! }));
  return { tensors: specs, entries: packEntries(specs, entries, options.chunkElements) };
}

/**
 * The header of a container for one safetensors file.
 * @param tensors tensors in file order
 * @param rawHeader the file's exact header bytes (written back verbatim by restore)
 * @param base base tensors by name, or null
 * @param options method options
 * @returns the container header
 */
export function planSafetensors(
  tensors: readonly PlanTensor[],
  rawHeader: Uint8Array,
  base: ReadonlyMap<string, PlanTensor> | null,
  options: CodecOptions,
): ContainerHeader {
  const planned = planEntries(tensors, base, options);
  const file: FileSpec = { kind: 'safetensors', path: null, rawHeader: Buffer.from(rawHeader).toString('base64'), tensors: tensors.map((_, i) => i) };
  return { tool: `excp ${TOOL_VERSION}`, options: { ...options }, tensors: planned.tensors, entries: planned.entries, files: [file] };
}

/** How one file of a checkpoint folder maps onto the container's tensors (lib/folder.ts builds these). */
export type FolderFile =
  | { kind: 'safetensors'; path: string; rawHeader: Uint8Array; tensors: string[] }
  | { kind: 'blob'; path: string; tensor: string }
  | { kind: 'torch'; path: string; size: number; skeleton: string; cuts: { name: string; offset: number }[] };

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

/**
 * The header of a container for a checkpoint folder (issue 7): tensors in
 * the folder's virtual table order, one file spec per file.
 * @param tensors the folder's virtual tensors (model, torch.save skeletons, moments, blobs)
 * @param files how files map onto those tensors
 * @param paramMap the optimizer param map, stored in header.info
 * @param base base tensors by name, or null
 * @param options method options
 */
export function planFolder(
  tensors: readonly PlanTensor[],
  files: readonly FolderFile[],
  paramMap: ParamMapInfo | null,
  base: ReadonlyMap<string, PlanTensor> | null,
  options: CodecOptions,
): ContainerHeader {
  const planned = planEntries(tensors, base, options);
  const index = new Map(tensors.map((t, i) => [t.name, i]));
  const at = (name: string): number => {
    const i = index.get(name);
    if (i === undefined) throw new ExcpError('ERR_BAD_HEADER', `plan: file tensor '${name}' is not in the table`);
    return i;
  };
  const specs = files.map((f): FileSpec => {
    if (f.kind === 'safetensors') return { kind: 'safetensors', path: f.path, rawHeader: Buffer.from(f.rawHeader).toString('base64'), tensors: f.tensors.map(at) };
    if (f.kind === 'blob') return { kind: 'blob', path: f.path, tensor: at(f.tensor) };
    return { kind: 'torch', path: f.path, tensors: [at(f.skeleton), ...f.cuts.map((c) => at(c.name))], layout: { size: f.size, offsets: f.cuts.map((c) => c.offset) } };
  });
  const header: ContainerHeader = { tool: `excp ${TOOL_VERSION}`, options: { ...options }, tensors: planned.tensors, entries: planned.entries, files: specs };
  if (paramMap) header.info = { paramMap };
  return header;
}

/**
 * The skeleton of a torch.save file: the gaps between its tensor ranges, in
 * order, each at `at` in the skeleton tensor and at `offset` in the file.
 * Compress reads the skeleton from them (lib/folder.ts), restore writes it
 * back (lib/stream/folder-writer.ts).
 * @param size the file's size
 * @param ranges the tensor ranges, sorted, disjoint and inside the file
 */
export function skeletonSegments(size: number, ranges: readonly { offset: number; length: number }[]): { at: number; offset: number; length: number }[] {
  const segments: { at: number; offset: number; length: number }[] = [];
  let cursor = 0;
  let at = 0;
  for (const r of [...ranges, { offset: size, length: 0 }]) {
    if (r.offset > cursor) segments.push({ at, offset: cursor, length: r.offset - cursor });
    at += r.offset - cursor;
    cursor = r.offset + r.length;
  }
  return segments;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}
