/**
 * The optimizer side of a PyTorch checkpoint, shared by the input formats
 * that hold one (a checkpoint folder's optimizer.pt: folder.ts; a
 * torch.save file's nested optimizer state_dict: torch-file.ts): which param
 * id is which parameter, and how sure that is.
 *
 * The names come, first to last, from: --param-map; the names file the
 * training run wrote beside optimizer.pt (`optimizer_param_names.json`,
 * examples/python/excp_callback.py); the state_dict itself (FQN state keys,
 * or `param_names` in its groups); else they are inferred
 * (torch/param-map.ts) from the structure Trainer gives the groups and
 * from the run's statistics, with a mapping carried from the previous step
 * of a chain checked and used. The result ({@link ParamMapInfo}) is stored
 * in the container header, shown by `excp inspect`, and carried by a chain.
 */
import { DTYPE_BYTES, LOSSY_DTYPES, type DType, toFloat32 } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { type Evidence, type NamedShape, type ParamMapData, type ParamMapping, mapParams } from './torch/param-map.js';
import { type AdamHyper, adamDirection, samplePlan } from './torch/param-stats.js';
import type { OptimizerState, TorchTensor } from './torch/serialization.js';
import type { Cut } from './torch-kind.js';

/** The names file a training run writes beside optimizer.pt: parameter names in optimizer order. */
export const NAMES_FILE = 'optimizer_param_names.json';
/** Prefix of optimizer moments whose param id has no parameter name. */
export const STATE_PREFIX = '__optimizer__/';

/** The param map as stored in `header.info.paramMap` and shown by inspect. */
export interface ParamMapInfo {
  /** The optimizer file, e.g. `optimizer.pt`. */
  file: string;
  /** [id, name, confidence 0..1, method] per mapped id, in id order. */
  ids: [number, string, number, string][];
  /** Ids with state whose moments are coded exactly under `__optimizer__/ID/...`. */
  unmapped: number[];
  minConfidence: number;
  /** Of `unmapped`: the small ids nothing told apart, with their candidate names (absent when none). */
  ambiguous?: [number, string[]][];
  /**
   * The statistics so far of ids not named by more than their shape: [id,
   * steps, [name, summed score] per candidate] (absent when none). A chain
   * adds the next step's to them (torch/param-map.ts's Evidence).
   */
  evidence?: [number, number, [string, number][]][];
}

/** What a step hands the next step of the same run: its names, and the evidence on the ids it left unnamed. */
export interface ParamPrior {
  names: ReadonlyMap<number, { name: string; confidence: number }>;
  evidence: ReadonlyMap<number, Evidence>;
}

/** A tensor that can be read by byte range, synchronously. */
export interface TensorReader {
  dtype: DType;
  shape: readonly number[];
  /** Bytes [start, end) of the tensor. */
  read(start: number, end: number): Uint8Array;
}

/** One checkpoint's optimizer state and weights, as the statistics read them. */
export interface OptimizerSide {
  optimizer: OptimizerState | null;
  /** A model weight by name, or null. */
  weight(name: string): TensorReader | null;
  /** Bytes of the optimizer's file at an absolute offset. */
  readOptimizer(offset: number, length: number): Uint8Array;
}

/** How a format with an optimizer (a folder, a torch.save file) is opened. */
export interface OptimizerOpenOptions {
  /** Name the moments: false for a base (all moments stay `__optimizer__/ID/...`). */
  mapMoments: boolean;
  /** The previous checkpoint: its weights and optimizer state give the param map's statistics. */
  previous?: OptimizerSide | null;
  /** Parameter names in optimizer order (--param-map: overrides everything else). */
  explicit?: readonly string[] | null;
  /** The mapping carried from the previous step of a chain. */
  prior?: ParamPrior | null;
  /** Where one-line notices go (an optimizer that is not Adam's, small ids left unmapped). */
  onNotice?: ((message: string) => void) | undefined;
}

/** What {@link mapOptimizer} needs. */
export interface MapRequest {
  /** The optimizer's file for messages, e.g. `run/checkpoint-8/optimizer.pt`. */
  stage: string;
  /** The name stored in the header (`optimizer.pt`, or the torch.save file's). */
  file: string;
  /** The model's parameters (names and shapes). */
  params: readonly NamedShape[];
  current: OptimizerSide & { optimizer: OptimizerState };
  /** The previous checkpoint, or null (a keyframe). */
  base: OptimizerSide | null;
  /** Names in optimizer order and where they came from, or null. */
  explicit: { names: readonly string[]; method: 'explicit' | 'names-file' } | null;
  /** The mapping carried from the previous step of a chain, or null. */
  prior: ParamPrior | null;
  /** How a user gives the names, for messages (a sentence). */
  recipe: string;
  /** Where one-line notices go. */
  onNotice?: ((message: string) => void) | undefined;
}

/** Ambiguous ids named in the notice; the container's header has them all. */
const AMBIGUOUS_SHOWN = 3;

/** The Python line that writes the names, run where `model` and `optimizer` exist. */
export const NAMES_PYTHON = 'import json; n = {id(p): k for k, p in model.named_parameters()}; '
  + 'json.dump([n[id(p)] for g in optimizer.param_groups for p in g["params"]], open(PATH, "w"))';

/**
 * Map an optimizer's param ids to parameter names.
 * @returns the names by id and the record for the header
 * @throws ExcpError ERR_PARAM_MAP (with the recipe) when a large id stays ambiguous or given names do not fit
 */
export function mapOptimizer(req: MapRequest): { names: Map<number, string>; info: ParamMapInfo } {
  const opt = req.current.optimizer;
  const own = opt.names && !req.explicit ? { names: opt.paramGroups.flatMap((g) => g.params.map((id) => opt.names!.byId.get(id) ?? '')), method: opt.names.source } : null;
  const explicit = req.explicit ?? own;
  let mapping: ParamMapping;
  try {
    mapping = mapParams({
      params: req.params,
      groups: opt.paramGroups.map((g) => ({ params: g.params, weightDecay: g.weightDecay })),
      stateShapes: new Map([...opt.state].map(([id, s]) => [id, s.expAvg.shape])),
      ...(explicit ? { explicit: explicit.names, explicitMethod: explicit.method } : {}),
      ...(req.base ? { data: runStatistics(req.current, req.base) } : { keyframe: true }),
      ...(req.prior ? { prior: req.prior.names, evidence: req.prior.evidence } : {}),
    });
  } catch (e) {
    if (!(e instanceof ExcpError) || e.code !== 'ERR_PARAM_MAP') throw e;
    throw new ExcpError('ERR_PARAM_MAP', `${req.stage}: ${e.message}. ${req.recipe}`, { cause: e });
  }
  if (mapping.ambiguous.length > 0) {
    // One line a terminal can show: a few ids, and where the rest are listed.
    const shown = mapping.ambiguous.slice(0, AMBIGUOUS_SHOWN);
    const more = mapping.ambiguous.length - shown.length;
    const list = shown.map((a) => `id ${a.id} (${a.options.slice(0, 4).join(' | ')})`).join('; ') + (more > 0 ? `; ${more} more ('excp inspect' on the container lists them)` : '');
    req.onNotice?.(`${req.stage}: ${mapping.ambiguous.length} small param id(s) left unmapped, their moments coded exactly (${mapping.ambiguous[0]!.reason}): ${list}. ${req.recipe}`);
  }
  const ids = [...mapping.names].sort((a, b) => a[0] - b[0]).map(([id, name]): [number, string, number, string] => [id, name, mapping.confidence.get(id) ?? 0, mapping.method.get(id) ?? '']);
  const info: ParamMapInfo = {
    file: req.file,
    ids,
    unmapped: [...opt.state.keys()].filter((id) => !mapping.names.has(id)),
    minConfidence: Math.min(1, ...ids.map((r) => r[2])),
    ...(mapping.ambiguous.length > 0 ? { ambiguous: mapping.ambiguous.map((a): [number, string[]] => [a.id, a.options]) } : {}),
    ...(mapping.evidence.size > 0 ? {
      evidence: [...mapping.evidence].sort((a, b) => a[0] - b[0]).map(([id, e]): [number, number, [string, number][]] =>
        [id, e.steps, [...e.scores].map(([n, x]): [string, number] => [n, Math.round(x * 1e6) / 1e6])]),
    } : {}),
  };
  return { names: mapping.names, info };
}

/**
 * The mapping a container records, as the prior of the next step of the
 * same run: every id named by more than its shape alone, and the evidence
 * on the others.
 * @param info a container's `header.info.paramMap`, or anything else (then null)
 */
export function priorOf(info: unknown): ParamPrior | null {
  const record = info as { ids?: unknown; evidence?: unknown } | null;
  if (!record || !Array.isArray(record.ids)) return null;
  const names = new Map<number, { name: string; confidence: number }>();
  for (const row of record.ids as unknown[]) {
    if (!Array.isArray(row) || typeof row[0] !== 'number' || typeof row[1] !== 'string' || typeof row[2] !== 'number') continue;
    if (row[3] === 'shape-only' || row[2] <= 0) continue;
    names.set(row[0], { name: row[1], confidence: row[2] });
  }
  const evidence = new Map<number, Evidence>();
  for (const row of Array.isArray(record.evidence) ? record.evidence as unknown[] : []) {
    if (!Array.isArray(row) || typeof row[0] !== 'number' || !Number.isSafeInteger(row[1]) || row[1] < 1 || !Array.isArray(row[2])) continue;
    const scores = new Map<string, number>();
    for (const pair of row[2] as unknown[]) {
      if (Array.isArray(pair) && typeof pair[0] === 'string' && typeof pair[1] === 'number' && Number.isFinite(pair[1])) scores.set(pair[0], pair[1]);
    }
    if (!names.has(row[0])) evidence.set(row[0], { steps: row[1] as number, scores });
  }
  return names.size > 0 || evidence.size > 0 ? { names, evidence } : null;
}

/**
 * The moments of an Adam state cut out of their file: `NAME.exp_avg` /
 * `NAME.exp_avg_sq` for an id named NAME (a weight of the moments' shape and
 * a float dtype), else `__optimizer__/ID/...` (coded exactly). Sorted by
 * offset.
 * @param weights the model's weights by name
 * @param stage the file, for messages
 * @throws ExcpError ERR_BAD_HEADER (a moment name a weight already has), ERR_SHAPE (moments sharing bytes)
 */
export function momentCuts(state: OptimizerState, names: ReadonlyMap<number, string>, weights: ReadonlyMap<string, { shape: readonly number[] }>, stage: string): Cut[] {
  const cuts: Cut[] = [];
  for (const [id, s] of state.state) {
    const name = names.get(id);
    const paired = name !== undefined && weights.get(name)?.shape.join() === s.expAvg.shape.join() && LOSSY_DTYPES.has(s.expAvg.dtype);
    for (const [t, key] of [[s.expAvg, 'exp_avg'], [s.expAvgSq, 'exp_avg_sq']] as const) {
      const tname = paired ? `${name}.${key}` : `${STATE_PREFIX}${id}/${key}`;
      if (weights.has(tname)) throw new ExcpError('ERR_BAD_HEADER', `${stage}: model tensor '${tname}' collides with an optimizer moment name`);
      cuts.push({ name: tname, offset: t.byteOffset, length: t.byteLength, dtype: t.dtype, shape: t.shape });
    }
  }
  cuts.sort((a, b) => a.offset - b.offset);
  for (let i = 1; i < cuts.length; i++) {
    if (cuts[i]!.offset < cuts[i - 1]!.offset + cuts[i - 1]!.length) throw new ExcpError('ERR_SHAPE', `${stage}: moments '${cuts[i - 1]!.name}' and '${cuts[i]!.name}' share bytes`);
  }
  return cuts;
}

/** Elements sampled per tensor by the statistics. */
const SAMPLE_SIZE = 16384;

function floats(t: TensorReader, block: { start: number; length: number }): Float32Array {
  const eb = DTYPE_BYTES[t.dtype];
  return toFloat32(t.read(block.start * eb, (block.start + block.length) * eb), t.dtype);
}

function sampled(t: TensorReader | null): Float64Array | null {
  if (!t || !LOSSY_DTYPES.has(t.dtype)) return null;
  const n = t.shape.reduce((a, b) => a * b, 1);
  const out: number[] = [];
  for (const b of samplePlan(n, SAMPLE_SIZE)) for (const x of floats(t, b)) out.push(x);
  return Float64Array.from(out);
}

/** The group hyper-parameters of an id (torch's defaults where the group does not say). */
function hyperOf(opt: OptimizerState, id: number): { hyper: AdamHyper; lr: number | null; weightDecay: number } {
  const group = opt.paramGroups.find((g) => g.params.includes(id));
  const betas = group?.options.get('betas');
  const eps = group?.options.get('eps');
  const lr = group?.options.get('lr');
  return {
    hyper: {
      beta1: Array.isArray(betas) && typeof betas[0] === 'number' ? betas[0] : 0.9,
      beta2: Array.isArray(betas) && typeof betas[1] === 'number' ? betas[1] : 0.999,
      eps: typeof eps === 'number' ? eps : 1e-8,
    },
    lr: typeof lr === 'number' ? lr : null,
    weightDecay: group?.weightDecay ?? 0,
  };
}

/**
 * The run's statistics between a base and the current checkpoint
 * (torch/param-stats.ts), read lazily.
 * @param cur the current checkpoint's optimizer and weights
 * @param base the previous checkpoint's (its optimizer may be null: then only the current direction)
 */
export function runStatistics(cur: OptimizerSide & { optimizer: OptimizerState }, base: OptimizerSide): ParamMapData {
  const reader = (side: OptimizerSide, t: TorchTensor): TensorReader => ({
    dtype: t.dtype, shape: t.shape, read: (start, end) => side.readOptimizer(t.byteOffset + start, end - start),
  });
  const direction = (side: OptimizerSide, id: number): Float64Array | null => {
    const s = side.optimizer?.state.get(id);
    if (!s) return null;
    const m = sampled(reader(side, s.expAvg));
    const v = sampled(reader(side, s.expAvgSq));
    return m && v ? adamDirection(m, v, s.step, hyperOf(side.optimizer!, id).hyper) : null;
  };
  const pairs = new Map<string, [Float64Array, Float64Array] | null>();
  const pair = (name: string): [Float64Array, Float64Array] | null => {
    if (pairs.has(name)) return pairs.get(name)!;
    const a = cur.weight(name);
    const b = base.weight(name);
    const x = a && b && a.dtype === b.dtype && a.shape.join() === b.shape.join() ? sampled(a) : null;
    const y = x ? sampled(b) : null;
    pairs.set(name, x && y ? [x, y] : null);
    return pairs.get(name)!;
  };
  return {
    change: (name) => {
      const p = pair(name);
      return p ? p[0].map((x, i) => x - p[1][i]!) : null;
    },
    weight: (name) => {
      const p = pair(name);
      return p ? p[0].map((x, i) => (x + p[1][i]!) / 2) : null;
    },
    direction: (id) => {
      const now = direction(cur, id);
      const before = direction(base, id);
      if (!now) return null;
      return before && before.length === now.length ? now.map((x, i) => (x + before[i]!) / 2) : now;
    },
    decay: (id) => {
      // sum of lr over the interval ~ steps x the mean of the two lrs; unknown without the base's state.
      const s = cur.optimizer.state.get(id);
      const b = base.optimizer?.state.get(id);
      const h = hyperOf(cur.optimizer, id);
      const hb = base.optimizer ? hyperOf(base.optimizer, id) : null;
      if (!s || !b || h.lr === null || hb?.lr == null || s.step <= b.step) return 0;
      return (s.step - b.step) * ((h.lr + hb.lr) / 2) * h.weightDecay;
    },
  };
}
