/**
 * Which parameter does each optimizer param id belong to?
 *
 * `optimizer.state_dict()` keys its state by integer id: the position of the
 * parameter in the param groups, concatenated. Hugging Face Trainer builds
 * two groups from `model.named_parameters()` (module definition order): the
 * weights that get weight decay, then the rest (biases and norm weights).
 * model.safetensors lists names alphabetically and says nothing about
 * definition order, so the mapping has to be inferred:
 *
 *  1. Groups: names are split into decay / no-decay by Trainer's rules (by
 *     name, by rank); the first rule whose shape counts match the groups wins.
 *  2. Shapes: inside a group, a shape held by one parameter settles it.
 *  3. Structure: `named_parameters()` is a pre-order walk of the module tree
 *     (a module's own parameters, then its submodules in registration order;
 *     ModuleList items in index order). The unknowns are the sibling orders,
 *     one per module *template* (the path with indices replaced by `#`, so
 *     every `layers.#` block shares one order). Candidate orders of a bucket
 *     of same-shape names come from enumerating those sibling permutations;
 *     a bucket whose names differ only by indices has exactly one.
 *  4. Data: AdamW moves W against m, so with two consecutive checkpoints the
 *     right pairing maximises corr(W_cur - W_prev, -m). Candidate orders are
 *     scored by the summed correlation (every layer votes for the same
 *     sibling order, so a weak per-tensor signal still decides); without a
 *     usable structure, a maximum-weight assignment (Hungarian) is used.
 *
 * What stays ambiguous throws ERR_PARAM_MAP naming the ids; pass the names
 * in optimizer order (`explicit`) to settle it.
 *
 * Step 3's candidate orders are in param-orders.ts, step 4's assignment in
 * assignment.ts.
 */
import { ExcpError } from '../../core/errors.js';
import { hungarian, swapMargins } from './assignment.js';
import { candidateOrders, compareNames } from './param-orders.js';

/** A tensor of the model file. */
export interface NamedShape {
  name: string;
  shape: readonly number[];
}

/** One optimizer param group. */
export interface ParamGroupInfo {
  params: readonly number[];
  weightDecay?: number | null;
}

/** Values for the correlation test; a function may return null when it has no data. */
export interface ParamMapData {
  /** W_cur - W_prev of a named parameter, as float32. */
  delta(name: string): Float32Array | null;
  /** Adam's exp_avg of a param id, as float32. */
  expAvg(id: number): Float32Array | null;
}

/** Input of {@link mapParams}. */
export interface ParamMapInput {
  /** Parameter names and shapes (e.g. from model.safetensors; order does not matter). */
  params: readonly NamedShape[];
  groups: readonly ParamGroupInfo[];
  /** exp_avg shape per param id that has state. */
  stateShapes: ReadonlyMap<number, readonly number[]>;
  data?: ParamMapData;
  /** Names in optimizer order (id i -> explicit[i]); overrides inference. */
  explicit?: readonly string[];
  /** Smallest per-id score margin accepted from data (default 0.05). */
  minMargin?: number;
  /** Elements sampled per tensor for correlations (default 4096). */
  sampleSize?: number;
  /** Most candidate orders enumerated per bucket (default 40320). */
  maxCandidates?: number;
  /**
   * A keyframe (no previous checkpoint): ids that stay ambiguous are paired
   * with the remaining names of their shape in name order, method
   * `shape-only`, confidence 0, instead of failing. A keyframe codes its
   * weights exactly, so pairing decides nothing but which equal-shape weight
   * a moment is listed with: it does not change what is kept or restored.
   */
  keyframe?: boolean;
}

/** How an id was settled. */
export type ParamMapMethod = 'explicit' | 'shape' | 'order' | 'correlation' | 'shape-only';

/** Result of {@link mapParams}. */
export interface ParamMapping {
  /** Parameter name by id, for every id with state. */
  names: Map<number, string>;
  /** 0..1 per id: 1 = certain (explicit, unique shape), 0.9 = structure alone, else from the data margin. */
  confidence: Map<number, number>;
  method: Map<number, ParamMapMethod>;
  /** Ids in the groups without state (never stepped): nothing to map. */
  unmapped: number[];
}

const STAGE = 'param-map';
const shapeKey = (s: readonly number[]): string => `[${s.join(',')}]`;

/** Trainer's decay rules, tried in order: by name (transformers >= 4.46 patterns), then by rank. */
const NORM = /(^|[._])(bias|layernorm|layer_norm|rmsnorm|norm\d*|ln(_\w+|\d+)?)($|[._])/i;
const DECAY_RULES: readonly ((p: NamedShape) => boolean)[] = [
  (p) => !NORM.test(p.name) && !p.name.endsWith('bias'),
  (p) => p.shape.length >= 2,
  (p) => p.shape.length >= 2 && !NORM.test(p.name),
];

/**
 * Map optimizer param ids to parameter names.
 * @throws ExcpError ERR_PARAM_MAP naming the ids that stay ambiguous or cannot match
 */
export function mapParams(input: ParamMapInput): ParamMapping {
  const byName = new Map(input.params.map((p) => [p.name, p]));
  const order = input.groups.flatMap((g) => [...g.params]);
  const result: ParamMapping = { names: new Map(), confidence: new Map(), method: new Map(), unmapped: order.filter((id) => !input.stateShapes.has(id)) };
  if (input.explicit) return explicitMapping(input, byName, order, result);
  const split = splitGroups(input);
  const ambiguous: string[] = [];
  for (const [g, ids] of split.ids.entries()) {
    const buckets = new Map<string, { ids: number[]; names: string[] }>();
    for (const id of ids) {
      const key = shapeKey(input.stateShapes.get(id)!);
      if (!buckets.has(key)) buckets.set(key, { ids: [], names: [] });
      buckets.get(key)!.ids.push(id);
    }
    for (const p of split.names[g]!) buckets.get(shapeKey(p.shape))?.names.push(p.name);
    for (const [key, bucket] of buckets) {
      bucket.names.sort(compareNames);
      if (bucket.names.length < bucket.ids.length) {
        throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: id(s) ${bucket.ids.join(', ')} have shape ${key} but only ${bucket.names.length} parameter(s) do: ${bucket.names.join(', ') || 'none'}`);
      }
      const left = settleBucket(bucket.ids, bucket.names, input, result, split.structured);
      if (left.length > 0 && input.keyframe) {
        const used = new Set(result.names.values());
        const free = bucket.names.filter((n) => !used.has(n));
        for (const id of bucket.ids) {
          if (result.names.has(id)) continue;
          result.names.set(id, free.shift()!);
          result.confidence.set(id, 0);
          result.method.set(id, 'shape-only');
        }
      } else {
        ambiguous.push(...left);
      }
    }
  }
  if (ambiguous.length > 0) {
    // Two examples: the rest says the same (a whole list made a line of over a thousand characters).
    const shown = ambiguous.slice(0, 2).join('; ') + (ambiguous.length > 2 ? `; and ${ambiguous.length - 2} more` : '');
    throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: cannot tell apart ${ambiguous.length} param ids: ${shown}; give two consecutive checkpoints or pass the names in optimizer order explicitly`);
  }
  return result;
}

function explicitMapping(input: ParamMapInput, byName: Map<string, NamedShape>, order: number[], result: ParamMapping): ParamMapping {
  const names = input.explicit!;
  if (names.length !== order.length) throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: ${names.length} explicit names for ${order.length} optimizer params`);
  if (new Set(names).size !== names.length) throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: explicit names repeat a name`);
  order.forEach((id, i) => {
    const name = names[i]!;
    const p = byName.get(name);
    if (!p) throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: explicit name ${JSON.stringify(name)} (id ${id}) is not a model parameter`);
    const shape = input.stateShapes.get(id);
    if (!shape) return;
    if (shapeKey(shape) !== shapeKey(p.shape)) throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: id ${id} has shape ${shapeKey(shape)}, ${name} has ${shapeKey(p.shape)}`);
    result.names.set(id, name);
    result.confidence.set(id, 1);
    result.method.set(id, 'explicit');
  });
  return result;
}

/** Shape counts (multiset) as a map. */
function shapeCounts(shapes: Iterable<readonly number[]>): Map<string, number> {
  const m = new Map<string, number>();
  for (const s of shapes) m.set(shapeKey(s), (m.get(shapeKey(s)) ?? 0) + 1);
  return m;
}

/** Assign candidate names to groups: by a decay rule when the groups are Trainer's two, else all names to each group. */
function splitGroups(input: ParamMapInput): { ids: number[][]; names: NamedShape[][]; structured: boolean } {
  const ids = input.groups.map((g) => g.params.filter((id) => input.stateShapes.has(id)));
  const wd = input.groups.map((g) => g.weightDecay ?? null);
  if (input.groups.length === 2 && wd[0] !== null && wd[1] !== null && (wd[0]! > 0) !== (wd[1]! > 0)) {
    const decayGroup = wd[0]! > 0 ? 0 : 1;
    const want = ids.map((list) => shapeCounts(list.map((id) => input.stateShapes.get(id)!)));
    const covers = (have: Map<string, number>, need: Map<string, number>, exact: boolean): boolean =>
      [...need].every(([k, n]) => (exact ? have.get(k) === n : (have.get(k) ?? 0) >= n)) && (!exact || have.size === need.size);
    for (const exact of [true, false]) {
      for (const rule of DECAY_RULES) {
        const decay = input.params.filter(rule);
        const rest = input.params.filter((p) => !rule(p));
        const names = decayGroup === 0 ? [decay, rest] : [rest, decay];
        if (names.every((list, g) => covers(shapeCounts(list.map((p) => p.shape)), want[g]!, exact))) return { ids, names, structured: true };
      }
    }
  }
  if (input.groups.length === 1) return { ids, names: [[...input.params]], structured: true };
  // Unknown grouping: one bucket space for all ids; id order then says nothing about module order.
  return { ids: [ids.flat()], names: [[...input.params]], structured: false };
}

/** Settle one (group, shape) bucket; returns descriptions of ambiguous ids. */
function settleBucket(ids: number[], names: string[], input: ParamMapInput, result: ParamMapping, structured: boolean): string[] {
  const set = (id: number, name: string, confidence: number, method: ParamMapMethod): void => {
    result.names.set(id, name);
    result.confidence.set(id, Math.max(0, Math.min(1, confidence)));
    result.method.set(id, method);
  };
  if (ids.length === 1 && names.length === 1) {
    set(ids[0]!, names[0]!, 1, 'shape');
    return [];
  }
  const minMargin = input.minMargin ?? 0.05;
  const candidates = structured && names.length === ids.length ? candidateOrders(names, input.maxCandidates ?? 40320) : null;
  const scores = input.data ? scoreMatrix(ids, names, input.data, input.sampleSize ?? 4096) : null;
  const describe = (id: number, options: Iterable<string>): string => {
    const list = [...new Set(options)];
    return `id ${id} (${list.slice(0, 6).join(' | ')}${list.length > 6 ? ` | ${list.length - 6} more` : ''})`;
  };
  if (candidates && candidates.length === 1) {
    candidates[0]!.forEach((name, i) => set(ids[i]!, name, 0.9, 'order'));
    return [];
  }
  if (!scores) {
    // Structure alone: ids whose name is the same in every candidate are settled.
    if (!candidates) return ids.map((id) => describe(id, names));
    const out: string[] = [];
    ids.forEach((id, i) => {
      const options = candidates.map((c) => c[i]!);
      if (options.every((n) => n === options[0])) set(id, options[0]!, 0.9, 'order');
      else out.push(describe(id, options));
    });
    return out;
  }
  const index = new Map(names.map((n, j) => [n, j]));
  let assignment: number[];
  let margins: number[];
  if (candidates) {
    const cols = candidates.map((c) => c.map((n) => index.get(n)!));
    const totals = cols.map((c) => c.reduce((s, j, i) => s + scores[i]![j]!, 0));
    const best = totals.indexOf(Math.max(...totals));
    assignment = cols[best]!;
    // Per id: the best rival order that names it differently, and by how much it loses per changed position.
    margins = ids.map((_, i) => {
      let margin = Infinity;
      cols.forEach((c, k) => {
        if (c[i] === assignment[i]) return;
        const changed = c.reduce((n, j, p) => n + (j !== assignment[p] ? 1 : 0), 0);
        margin = Math.min(margin, (totals[best]! - totals[k]!) / changed);
      });
      return margin;
    });
  } else {
    assignment = hungarian(scores);
    margins = swapMargins(scores, assignment);
  }
  const out: string[] = [];
  ids.forEach((id, i) => {
    const name = names[assignment[i]!]!;
    if (margins[i]! >= minMargin) set(id, name, 0.5 + margins[i]!, 'correlation');
    else out.push(describe(id, names.filter((_, j) => scores[i]![j]! >= scores[i]![assignment[i]!]! - minMargin)));
  });
  return out;
}

/** Pearson correlation of dW with -m for every (id, name) pair, on a fixed sample of positions; NaN (no movement) scores 0. */
function scoreMatrix(ids: number[], names: string[], data: ParamMapData, sampleSize: number): number[][] | null {
  const sample = (v: Float32Array | null): Float64Array | null => {
    if (!v) return null;
    const n = Math.min(v.length, sampleSize);
    const out = new Float64Array(n);
    for (let i = 0; i < n; i++) out[i] = v[Math.floor((i * v.length) / n)]!;
    return out;
  };
  const m = ids.map((id) => sample(data.expAvg(id)));
  const d = names.map((name) => sample(data.delta(name)));
  if (m.some((x) => !x) || d.some((x) => !x)) return null;
  return m.map((mi) => d.map((dj) => {
    if (mi!.length !== dj!.length) throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: data lengths ${mi!.length} and ${dj!.length} differ within a shape bucket`);
    const c = -pearson(mi!, dj!);
    return Number.isFinite(c) ? c : 0;
  }));
}

function pearson(a: Float64Array, b: Float64Array): number {
  const n = a.length;
  let sa = 0;
  let sb = 0;
  for (let i = 0; i < n; i++) {
    sa += a[i]!;
    sb += b[i]!;
  }
  const ma = sa / n;
  const mb = sb / n;
  let cov = 0;
  let va = 0;
  let vb = 0;
  for (let i = 0; i < n; i++) {
    const x = a[i]! - ma;
    const y = b[i]! - mb;
    cov += x * y;
    va += x * x;
    vb += y * y;
  }
  return cov / Math.sqrt(va * vb);
}
