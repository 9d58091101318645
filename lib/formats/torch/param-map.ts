/**
 * Which parameter does each optimizer param id belong to?
 *
 * `optimizer.state_dict()` keys its state by integer id: the position of the
 * parameter in the param groups, concatenated. Hugging Face Trainer builds
 * two groups from `model.named_parameters()` (module definition order): the
 * weights that get weight decay, then the rest (biases and norm weights);
 * tied weights appear once, frozen ones not at all. model.safetensors lists
 * names alphabetically and says nothing about definition order, so unless
 * the names are given (`explicit`: --param-map, the callback's
 * optimizer_param_names.json, the state's own `param_names` or FQN keys,
 * read by the adapters) the mapping is inferred:
 *
 *  1. Groups: names are split into decay / no-decay by Trainer's rules (by
 *     name, by rank); the first rule whose shape counts match the groups wins.
 *  2. Shapes: inside a group, a shape held by one parameter settles it.
 *  3. Structure: `named_parameters()` is a pre-order walk of the module tree
 *     (a module's own parameters, then its submodules in registration order;
 *     ModuleList items in index order). The unknowns are the sibling orders,
 *     one per module *template* (the path with indices replaced by `#`, so
 *     every `layers.#` block shares one order). The candidate orders of a
 *     whole group are those whose shapes match its ids' shapes position by
 *     position (param-orders.ts); an id every candidate names alike is settled.
 *  4. Statistics: the weight change between two checkpoints against Adam's
 *     update direction of both optimizer states (param-stats.ts). Candidate
 *     orders are scored by their summed correlations (every layer votes for
 *     the same sibling order); without a usable structure, a maximum-weight
 *     assignment per shape (Hungarian). An id is settled when every rival
 *     naming it otherwise loses by a z of at least `minZ` (param-decide.ts).
 *
 * A mapping carried from the previous step of a run (`prior`: ids are
 * stable within a run) is checked, not trusted blindly: its names must fit
 * the shapes and the structure, and the statistics must not settle any of
 * its ids otherwise; then it names those ids and narrows the rest.
 *
 * What stays ambiguous: in a keyframe (no previous checkpoint, weights coded
 * exactly) it is paired by shape, which changes nothing that is kept; ids of
 * at most `smallElements` elements are left unmapped (their moments coded
 * exactly: never a guess, and small); anything else throws ERR_PARAM_MAP
 * naming the ids, their candidates and why.
 */
import { ExcpError } from '../../core/errors.js';
import { type Decided, decideAssignment, decideOrders } from './param-decide.js';
import { candidateOrders, compareNames, groupOrders } from './param-orders.js';
import { type Evidence, type ParamMapData, RunStatistics } from './param-stats.js';

export type { Evidence, ParamMapData } from './param-stats.js';

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

/** How an id was settled. */
export type ParamMapMethod = 'explicit' | 'names-file' | 'param-names' | 'fqn' | 'carried' | 'shape' | 'order' | 'statistics' | 'shape-only';

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
  /** Where `explicit` came from (default 'explicit': --param-map). */
  explicitMethod?: 'explicit' | 'names-file' | 'param-names' | 'fqn';
  /** A mapping carried from the previous step of the run: name and confidence by id. */
  prior?: ReadonlyMap<number, { name: string; confidence: number }>;
  /**
   * The statistics of earlier steps of the run for ids they left unnamed:
   * per id, the number of steps and the summed score of each candidate name.
   * Added to this step's scores, so evidence too weak in one step can settle
   * an id over several (the steps' changes are independent, so the null
   * variance adds up too).
   */
  evidence?: ReadonlyMap<number, Evidence>;
  /** Smallest z of the statistics that settles an id (default 5). */
  minZ?: number;
  /** Ambiguous ids of at most this many elements are left unmapped instead of failing (default 1024). */
  smallElements?: number;
  /** Most candidate orders listed per group or bucket (default 40320). */
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

/** An id left unmapped: its candidate names and why. */
export interface AmbiguousId {
  id: number;
  options: string[];
  reason: string;
}

/** Result of {@link mapParams}. */
export interface ParamMapping {
  /** Parameter name by id. */
  names: Map<number, string>;
  /** 0..1 per id: 1 = given or unique shape, 0.9 = structure alone, 0.5..1 from the statistics' z, 0 = shape-only pairing. */
  confidence: Map<number, number>;
  method: Map<number, ParamMapMethod>;
  /** Ids in the groups without state (never stepped): nothing to map. */
  unmapped: number[];
  /** Small ids left unmapped because nothing told them apart (their moments are coded exactly). */
  ambiguous: AmbiguousId[];
  /** The statistics so far of every id not named by more than its shape (for the next step). */
  evidence: Map<number, Evidence>;
}

const STAGE = 'param-map';
const shapeKey = (s: readonly number[]): string => `[${s.join(',')}]`;
const elementsOf = (s: readonly number[]): number => s.reduce((a, b) => a * b, 1);

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
  const result: ParamMapping = { names: new Map(), confidence: new Map(), method: new Map(), unmapped: order.filter((id) => !input.stateShapes.has(id)), ambiguous: [], evidence: new Map() };
  if (input.explicit) return explicitMapping(input, byName, order, result);
  const prior = checkPrior(input, byName);
  const context: Context = { input, minZ: input.minZ ?? 5, stats: new RunStatistics(input.data, input.evidence) };
  const split = splitGroups(input);
  const left: AmbiguousId[] = [];
  for (const [g, ids] of split.ids.entries()) {
    left.push(...settleGroup(ids, split.names[g]!, split.structured, context, prior, result));
  }
  const minZ = input.minZ ?? 5;
  const smallElements = input.smallElements ?? 1024;
  const refused: AmbiguousId[] = [];
  for (const a of left) {
    if (input.keyframe) continue;
    if (elementsOf(input.stateShapes.get(a.id)!) <= smallElements) result.ambiguous.push(a);
    else refused.push(a);
  }
  if (input.keyframe) pairByShape(left, input, result);
  for (const a of left) {
    const e = context.stats.evidenceOf(a.id) ?? input.evidence?.get(a.id);
    if (e) result.evidence.set(a.id, e);
  }
  if (refused.length > 0) {
    const shown = refused.slice(0, 8).map((a) => `id ${a.id} (${a.options.slice(0, 4).join(' | ')}${a.options.length > 4 ? ` | ${a.options.length - 4} more` : ''}: ${a.reason})`);
    throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: cannot tell apart ${refused.length} param ids: ${shown.join('; ')}${refused.length > 8 ? `; and ${refused.length - 8} more` : ''} (a mapping needs z >= ${minZ})`);
  }
  return result;
}

function explicitMapping(input: ParamMapInput, byName: Map<string, NamedShape>, order: number[], result: ParamMapping): ParamMapping {
  const names = input.explicit!;
  const method = input.explicitMethod ?? 'explicit';
  if (names.length !== order.length) throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: ${names.length} names (${method}) for ${order.length} optimizer params`);
  if (new Set(names).size !== names.length) throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: the names (${method}) repeat a name`);
  order.forEach((id, i) => {
    const name = names[i]!;
    const p = byName.get(name);
    const shape = input.stateShapes.get(id);
    if (!p) {
      // A parameter the model file does not hold (a tied weight saved once under its other name): unmapped.
      if (shape && method === 'explicit') throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: explicit name ${JSON.stringify(name)} (id ${id}) is not a model parameter`);
      return;
    }
    if (!shape) return;
    if (shapeKey(shape) !== shapeKey(p.shape)) throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: id ${id} has shape ${shapeKey(shape)}, ${name} has ${shapeKey(p.shape)} (${method})`);
    result.names.set(id, name);
    result.confidence.set(id, 1);
    result.method.set(id, method);
  });
  return result;
}

/** The prior, checked against the model: every carried name exists and has its id's shape. */
function checkPrior(input: ParamMapInput, byName: Map<string, NamedShape>): Map<number, { name: string; confidence: number }> {
  const prior = new Map<number, { name: string; confidence: number }>();
  const used = new Set<string>();
  for (const [id, p] of input.prior ?? []) {
    const shape = input.stateShapes.get(id);
    const named = byName.get(p.name);
    if (!shape) continue;
    if (!named || shapeKey(named.shape) !== shapeKey(shape) || used.has(p.name)) {
      throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: the mapping carried from the previous step names id ${id} ${JSON.stringify(p.name)}, which ${named ? (used.has(p.name) ? 'it names twice' : `has shape ${shapeKey(named.shape)}, the id ${shapeKey(shape)}`) : 'the model does not hold'}: not the same run?`);
    }
    used.add(p.name);
    prior.set(id, p);
  }
  return prior;
}

/** What the settling steps share: the input, the z to clear, the statistics. */
interface Context {
  input: ParamMapInput;
  minZ: number;
  stats: RunStatistics;
}

/** Shape counts (multiset) as a map. */
function shapeCounts(shapes: Iterable<readonly number[]>): Map<string, number> {
  const m = new Map<string, number>();
  for (const s of shapes) m.set(shapeKey(s), (m.get(shapeKey(s)) ?? 0) + 1);
  return m;
}

/** Assign candidate names to groups: by a decay rule when the groups are Trainer's two, else all names to each group. */
function splitGroups(input: ParamMapInput): { ids: number[][]; names: NamedShape[][]; structured: boolean } {
  const ids = input.groups.map((g) => [...g.params]);
  const stated = ids.map((list) => list.filter((id) => input.stateShapes.has(id)));
  const wd = input.groups.map((g) => g.weightDecay ?? null);
  if (input.groups.length === 2 && wd[0] !== null && wd[1] !== null && (wd[0]! > 0) !== (wd[1]! > 0)) {
    const decayGroup = wd[0]! > 0 ? 0 : 1;
    const want = stated.map((list) => shapeCounts(list.map((id) => input.stateShapes.get(id)!)));
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

/**
 * Settle the ids of one group (ids without state keep their place in the
 * structure but are not mapped); returns the ids left ambiguous.
 */
function settleGroup(allIds: number[], names: NamedShape[], structured: boolean, context: Context, prior: Map<number, { name: string; confidence: number }>,
  result: ParamMapping): AmbiguousId[] {
  const input = context.input;
  const ids = allIds.filter((id) => input.stateShapes.has(id));
  const buckets = new Map<string, { ids: number[]; names: string[] }>();
  for (const id of ids) {
    const key = shapeKey(input.stateShapes.get(id)!);
    if (!buckets.has(key)) buckets.set(key, { ids: [], names: [] });
    buckets.get(key)!.ids.push(id);
  }
  for (const p of names) buckets.get(shapeKey(p.shape))?.names.push(p.name);
  for (const [key, bucket] of buckets) {
    bucket.names.sort(compareNames);
    if (bucket.names.length < bucket.ids.length) {
      throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: id(s) ${bucket.ids.join(', ')} have shape ${key} but only ${bucket.names.length} parameter(s) do: ${bucket.names.join(', ') || 'none'}`);
    }
  }
  // Candidates for the whole group (stateless ids match any name), else per bucket.
  const max = input.maxCandidates ?? 40320;
  const shapes = new Map(names.map((p) => [p.name, shapeKey(p.shape)]));
  let candidates: { ids: number[]; orders: string[][] }[] | null = null;
  if (structured) {
    const whole = groupOrders(names.map((p) => ({ name: p.name, shape: shapes.get(p.name)! })), allIds.map((id) => {
      const s = input.stateShapes.get(id);
      return s ? shapeKey(s) : null;
    }), max);
    if (whole && whole.length > 0) {
      const keep = allIds.map((id) => input.stateShapes.has(id));
      candidates = [{ ids, orders: whole.map((o) => o.filter((_, i) => keep[i])) }];
    } else if (!whole) {
      candidates = [...buckets.values()].map((b) => ({ ids: b.ids, orders: b.names.length === b.ids.length ? candidateOrders(b.names, max) ?? [] : [] }));
      if (candidates.some((c) => c.orders.length === 0)) candidates = null;
    }
  }
  const left: AmbiguousId[] = [];
  const settle = (list: { ids: number[]; orders: string[][] }, narrowed: boolean): void => {
    const decided = decideOrders(list.ids, list.orders, shapes, context.stats.scoresOf, context.minZ, narrowed ? prior : new Map(), context.stats.noData);
    for (const [i, id] of list.ids.entries()) {
      const d = decided[i]!;
      if (prior.has(id)) continue;
      if (d.name !== null) set(result, id, d.name, d.confidence, d.method);
      else left.push({ id, options: d.options, reason: d.reason });
    }
  };
  if (candidates) {
    for (const list of candidates) {
      // The data on its own first: a carried name it settles otherwise is a contradiction, the same name a confirmation.
      if (prior.size > 0) confirmed(list.ids, decideOrders(list.ids, list.orders, shapes, context.stats.scoresOf, context.minZ, new Map(), context.stats.noData), prior, result);
      const narrowed = prior.size > 0 ? list.orders.filter((o) => o.every((n, i) => (prior.get(list.ids[i]!)?.name ?? n) === n)) : list.orders;
      if (prior.size > 0 && narrowed.length === 0) {
        throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: the mapping carried from the previous step fits no order named_parameters() could give ids ${list.ids.filter((id) => prior.has(id)).slice(0, 8).join(', ')}: not the same run?`);
      }
      settle({ ids: list.ids, orders: narrowed }, true);
    }
  } else {
    for (const bucket of buckets.values()) left.push(...assignBucket(bucket.ids, bucket.names, context, prior, result));
  }
  return left;
}

function set(result: ParamMapping, id: number, name: string, confidence: number, method: ParamMapMethod): void {
  result.names.set(id, name);
  result.confidence.set(id, Math.round(Math.max(0, Math.min(1, confidence)) * 1000) / 1000);
  result.method.set(id, method);
}

/**
 * The carried ids, against what the data of this step settles on its own:
 * another name is a contradiction (thrown), the same name raises the
 * carried confidence to the statistics' own. Sets every carried id.
 */
function confirmed(ids: number[], decided: readonly Decided[], prior: Map<number, { name: string; confidence: number }>, result: ParamMapping): void {
  const bad: string[] = [];
  ids.forEach((id, i) => {
    const p = prior.get(id);
    const d = decided[i] ?? { name: null, confidence: 0, method: 'shape-only', options: [], reason: '' };
    if (!p) return;
    if (d.name !== null && d.name !== p.name && d.method === 'statistics') bad.push(`id ${id}: carried ${p.name}, the statistics say ${d.name} (confidence ${d.confidence.toFixed(3)})`);
    set(result, id, p.name, Math.max(p.confidence, d.name === p.name ? d.confidence : 0), 'carried');
  });
  if (bad.length > 0) throw new ExcpError('ERR_PARAM_MAP', `${STAGE}: the mapping carried from the previous step disagrees with this step's statistics: ${bad.slice(0, 6).join('; ')}`);
}

/** Without a usable structure: a maximum-weight assignment of one shape's ids to names (carried ids keep theirs). */
function assignBucket(ids: number[], names: string[], context: Context, prior: Map<number, { name: string; confidence: number }>, result: ParamMapping): AmbiguousId[] {
  const s = ids.length > 1 || names.length > 1 ? context.stats.scores(ids, names) : null;
  // The data on its own: a carried id it settles to another name is a contradiction.
  if (prior.size > 0) confirmed(ids, s ? decideAssignment(ids, names, s, context.minZ) : [], prior, result);
  const carried = new Set(ids.filter((id) => prior.has(id)).map((id) => prior.get(id)!.name));
  const free = ids.filter((id) => !prior.has(id));
  const open = names.filter((n) => !carried.has(n));
  if (free.length === 0) return [];
  if (free.length === 1 && open.length === 1) {
    set(result, free[0]!, open[0]!, names.length === 1 ? 1 : 0.9, names.length === 1 ? 'shape' : 'order');
    return [];
  }
  if (!s) return free.map((id) => ({ id, options: open, reason: context.stats.noData }));
  const sub = free.map((id) => open.map((n) => s.scores[ids.indexOf(id)]![names.indexOf(n)]!));
  const left: AmbiguousId[] = [];
  decideAssignment(free, open, { scores: sub, samples: s.samples }, context.minZ).forEach((d, i) => {
    if (d.name !== null) set(result, free[i]!, d.name, d.confidence, 'statistics');
    else left.push({ id: free[i]!, options: open, reason: d.reason });
  });
  return left;
}

/** A keyframe: the ambiguous ids take the remaining names of their shape in name order, confidence 0. */
function pairByShape(left: AmbiguousId[], input: ParamMapInput, result: ParamMapping): void {
  const used = new Set(result.names.values());
  for (const a of left) {
    const shape = shapeKey(input.stateShapes.get(a.id)!);
    const name = [...a.options, ...input.params.filter((p) => shapeKey(p.shape) === shape).map((p) => p.name).sort(compareNames)].find((n) => !used.has(n));
    if (name === undefined) continue;
    used.add(name);
    set(result, a.id, name, 0, 'shape-only');
  }
}
