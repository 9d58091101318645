/**
 * Planning (pure): which tensors form a parameter entry with their Adam
 * moments, which are coded on their own, and which use the base.
 *
 * Input convention (issue "codec end to end"): a parameter `NAME` with its
 * optimizer state as `NAME.exp_avg` and `NAME.exp_avg_sq`, anywhere in the
 * file (writers sort by dtype, then name, so they are rarely adjacent).
 */
import { type DType, LOSSY_DTYPES, elementCount } from '../core/dtype.js';
import { TOOL_VERSION } from '../core/constants.js';
import { entryTensors, packEntries } from './pack.js';
import { ExcpError } from '../core/errors.js';
import type { CodecOptions } from '../core/options.js';
import type { Checkpoint, ContainerHeader, EntrySpec, FileSpec, Role, TensorSpec } from './checkpoint.js';

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
 * The container header of an opened checkpoint: its tensors planned into
 * entries, its files with tensor indices, its information.
 * @param checkpoint the checkpoint (any input format)
 * @param base base tensors by name, or null for a keyframe
 * @param options method options
 * @returns the container header
 * @throws ExcpError ERR_BAD_HEADER when a file names a tensor the table lacks
 */
export function planHeader(
  checkpoint: Pick<Checkpoint, 'tensors' | 'files' | 'info'>,
  base: ReadonlyMap<string, PlanTensor> | null,
  options: CodecOptions,
): ContainerHeader {
  const planned = planEntries(checkpoint.tensors, base, options);
  const index = new Map(checkpoint.tensors.map((t, i) => [t.name, i]));
  const at = (name: string): number => {
    const i = index.get(name);
    if (i === undefined) throw new ExcpError('ERR_BAD_HEADER', `plan: file tensor '${name}' is not in the table`);
    return i;
  };
  const files = checkpoint.files.map((f): FileSpec => ({ kind: f.kind, path: f.path, tensors: f.tensors.map(at), layout: f.layout }));
  const header: ContainerHeader = { tool: `excp ${TOOL_VERSION}`, options: { ...options }, tensors: planned.tensors, entries: planned.entries, files };
  if (checkpoint.info) header.info = checkpoint.info;
  return header;
}

function sameShape(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

/**
 * The order in which to read the entries of a checkpoint that can only be
 * read forward (a stream): by the position of the member that starts last,
 * so that each entry is read as soon as its last member streams by, and
 * what waits is only the members that came before their partners.
 * @param header the planned header
 * @param begins each tensor's first byte in the checkpoint, by name
 * @returns entry indices in reading order (the identity when the file is in entry order)
 */
export function streamReadOrder(header: Pick<ContainerHeader, 'tensors' | 'entries'>, begins: ReadonlyMap<string, number>): number[] {
  const last = header.entries.map((e) => Math.max(...entryTensors(e).map((t) => begins.get(header.tensors[t]!.name) ?? 0)));
  return header.entries.map((_e, i) => i).sort((a, b) => last[a]! - last[b]! || a - b);
}
