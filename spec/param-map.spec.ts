/**
 * Param-id -> name inference on the PyTorch fixtures (two consecutive
 * checkpoints per run) and on small synthetic cases.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { hungarian } from '../lib/formats/torch/assignment.js';
import { type ParamMapData, type ParamMapInput, mapParams } from '../lib/formats/torch/param-map.js';
import { candidateOrders, compareNames, groupOrders } from '../lib/formats/torch/param-orders.js';
import { adamDirection, samplePlan, zOf } from '../lib/formats/torch/param-stats.js';
import type { OptimizerState } from '../lib/formats/torch/serialization.js';
import { FolderCheckpoint } from '../lib/formats/folder.js';
import { runStatistics } from '../lib/formats/optimizer-map.js';
import { errorOf, uniform } from './helpers.js';

const FIXTURES = new URL('./fixtures/torch/', import.meta.url);
const reference = JSON.parse(readFileSync(new URL('reference.json', FIXTURES), 'utf8'));

/** The pieces of a fixture run's mapping input: base and current folders opened as optimizer sides. */
async function fixtureInput(run: string, withData: boolean, root: URL = FIXTURES): Promise<ParamMapInput & { close(): Promise<void> }> {
  const prev = await FolderCheckpoint.open(fileURLToPath(new URL(`${run}/checkpoint-4`, root)), { mapMoments: false });
  const cur = await FolderCheckpoint.open(fileURLToPath(new URL(`${run}/checkpoint-8`, root)), { mapMoments: false });
  const opt = cur.optimizer!;
  const input: ParamMapInput = {
    params: cur.tensors.filter((t) => !t.name.startsWith('__')).map((t) => ({ name: t.name, shape: t.shape })),
    groups: opt.paramGroups.map((g) => ({ params: g.params, weightDecay: g.weightDecay })),
    stateShapes: new Map([...opt.state].map(([id, s]) => [id, s.expAvg.shape])),
    ...(withData ? { data: runStatistics(cur as typeof cur & { optimizer: OptimizerState }, prev) } : {}),
  };
  return { ...input, close: async () => { await cur.close(); await prev.close(); } };
}

test('compareNames sorts indices numerically', () => {
  const names = ['layers.10.w', 'layers.2.w', 'layers.1.w', 'head', 'layers.9.w', 'layers.1.b', 'embed'];
  assert.deepEqual([...names].sort(compareNames), ['embed', 'head', 'layers.1.b', 'layers.1.w', 'layers.2.w', 'layers.9.w', 'layers.10.w']);
});

test('candidateOrders: one order per sibling permutation, shared by every layer', () => {
  assert.deepEqual(candidateOrders(['l.10.w', 'l.2.w', 'l.1.w'], 100), [['l.1.w', 'l.2.w', 'l.10.w']]);
  const orders = candidateOrders(['l.0.q', 'l.0.k', 'l.1.q', 'l.1.k'], 100)!;
  assert.deepEqual(orders, [['l.0.k', 'l.0.q', 'l.1.k', 'l.1.q'], ['l.0.q', 'l.0.k', 'l.1.q', 'l.1.k']]);
  // Own parameters come before submodules, whatever their names.
  assert.deepEqual(candidateOrders(['m.a.w', 'm.z'], 100), [['m.z', 'm.a.w']]);
  assert.equal(candidateOrders(['a', 'b', 'c', 'd', 'e'], 100), null);
});

test('hungarian finds the maximum-weight assignment (checked by brute force)', () => {
  let seed = 5;
  const rand = (): number => ((seed = (seed * 16807) % 2147483647) / 2147483647);
  const perms = (n: number, m: number): number[][] => {
    const out: number[][] = [];
    const go = (row: number[]): void => {
      if (row.length === n) out.push(row);
      else for (let j = 0; j < m; j++) if (!row.includes(j)) go([...row, j]);
    };
    go([]);
    return out;
  };
  for (const [n, m] of [[4, 4], [5, 5], [3, 6], [6, 6]] as const) {
    for (let round = 0; round < 20; round++) {
      const score = Array.from({ length: n }, () => Array.from({ length: m }, () => rand() * 2 - 1));
      const total = (a: number[]): number => a.reduce((s, j, i) => s + score[i]![j]!, 0);
      const best = Math.max(...perms(n, m).map(total));
      assert.ok(Math.abs(total(hungarian(score)) - best) < 1e-9, `${n}x${m} round ${round}`);
    }
  }
});

for (const run of ['fp32', 'bf16']) {
  test(`fixtures ${run}: two checkpoints settle ids to the names Trainer used, never to another; what stays close is small and left unmapped`, async () => {
    const order: string[] = reference.runs[run].param_order;
    const input = await fixtureInput(run, true);
    try {
      const result = mapParams(input);
      for (const [id, name] of result.names) assert.equal(name, order[id], `id ${id}`);
      assert.equal(result.method.get(48), 'shape', 'head.bias is the only [40] in its group');
      assert.equal(result.method.get(5), 'order', 'layers.#.fc.weight differ only by index');
      assert.equal(result.method.get(0), 'statistics', 'embed.weight vs head.weight needs the data');
      assert.equal(result.method.get(12), 'statistics');
      for (const [id, c] of result.confidence) assert.ok(c >= 0.5 && c <= 1, `id ${id} confidence ${c}`);
      // Every id is named or left unmapped as small, each with its candidates (the truth among them) and why.
      assert.equal(result.names.size + result.ambiguous.length, order.length);
      for (const a of result.ambiguous) {
        assert.ok(a.options.includes(order[a.id]!), `id ${a.id}`);
        assert.match(a.reason, /z \d/);
        assert.deepEqual(input.stateShapes.get(a.id), [12]);
      }
      // Those ids fail when they are not small.
      const err = errorOf(() => mapParams({ ...input, smallElements: 0 }));
      assert.equal(err.code, 'ERR_PARAM_MAP');
      assert.match(err.message, new RegExp(`cannot tell apart ${result.ambiguous.length} param ids: id ${result.ambiguous[0]!.id} \\(`));
    } finally {
      await input.close();
    }
  });

  test(`fixtures ${run}: without data the ambiguous ids are named`, async () => {
    const input = await fixtureInput(run, false);
    try {
      const err = errorOf(() => mapParams({ ...input, smallElements: 0 }));
      assert.equal(err.code, 'ERR_PARAM_MAP');
      assert.match(err.message, /id 0 \((embed\.weight \| head\.weight|head\.weight \| embed\.weight): no previous checkpoint to compare with\)/);
      assert.match(err.message, /id 12 /);
      assert.doesNotMatch(err.message, /id 5 /, 'fc weights are settled by index order');
    } finally {
      await input.close();
    }
  });
}

test('a keyframe pairs the ids that stay ambiguous by shape alone, with confidence 0', async () => {
  const input = await fixtureInput('fp32', false);
  const result = mapParams({ ...input, keyframe: true });
  await input.close();
  const order: string[] = reference.runs.fp32.param_order;
  assert.equal(result.names.size, order.length);
  assert.equal(new Set(result.names.values()).size, order.length, 'every name used once');
  const shapes = new Map(input.params.map((p) => [p.name, p.shape.join()]));
  for (const [id, name] of result.names) {
    assert.equal(shapes.get(name), input.stateShapes.get(id)!.join(), `id ${id} pairs with a parameter of its shape`);
    if (result.method.get(id) === 'shape-only') assert.equal(result.confidence.get(id), 0);
    else assert.equal(name, order[id], `settled id ${id} is right`);
  }
  assert.ok([...result.method.values()].includes('shape-only'));
});

test('a weaker method never gives a wrong answer silently', async () => {
  const order: string[] = reference.runs.fp32.param_order;
  // Force the unstructured assignment: it settles correctly or leaves the ids it cannot.
  const input = await fixtureInput('fp32', true);
  const result = mapParams({ ...input, maxCandidates: 1 });
  await input.close();
  for (const [id, name] of result.names) assert.equal(name, order[id]);
  assert.ok(result.names.size > 0);
});

test('explicit names settle everything and are checked', async () => {
  const order: string[] = reference.runs.bf16.param_order;
  const input = await fixtureInput('bf16', false);
  await input.close();
  const result = mapParams({ ...input, explicit: order });
  assert.deepEqual([...result.names].map(([id, n]) => [id, n]), order.map((n, id) => [id, n]));
  assert.ok([...result.method.values()].every((m) => m === 'explicit'));
  assert.ok([...mapParams({ ...input, explicit: order, explicitMethod: 'names-file' }).method.values()].every((m) => m === 'names-file'));
  assert.equal(errorOf(() => mapParams({ ...input, explicit: order.slice(1) })).code, 'ERR_PARAM_MAP');
  assert.equal(errorOf(() => mapParams({ ...input, explicit: [...order.slice(0, -1), 'nope'] })).code, 'ERR_PARAM_MAP');
  const swapped = [...order];
  [swapped[0], swapped[1]] = [swapped[1]!, swapped[0]!]; // [40,12] vs [12,12]
  assert.match(errorOf(() => mapParams({ ...input, explicit: swapped })).message, /id 0 has shape \[40,12\]/);
  assert.equal(errorOf(() => mapParams({ ...input, explicit: [...order.slice(0, -1), order[0]!] })).code, 'ERR_PARAM_MAP');
});

test('synthetic: unique shapes, index-only buckets, ids without state, impossible shapes', () => {
  const params = [
    { name: 'blocks.0.w', shape: [4, 4] }, { name: 'blocks.1.w', shape: [4, 4] }, { name: 'blocks.10.w', shape: [4, 4] },
    { name: 'blocks.2.w', shape: [4, 4] }, { name: 'out.w', shape: [2, 4] }, { name: 'out.b', shape: [2] },
    { name: 'blocks.0.b', shape: [4] },
  ];
  const groups = [{ params: [0, 1, 2, 3, 4], weightDecay: 0.1 }, { params: [5, 6, 7], weightDecay: 0 }];
  const stateShapes = new Map<number, number[]>([[0, [4, 4]], [1, [4, 4]], [2, [4, 4]], [3, [4, 4]], [4, [2, 4]], [5, [4]], [6, [2]]]);
  const result = mapParams({ params, groups, stateShapes });
  assert.deepEqual([...result.names.entries()], [
    [0, 'blocks.0.w'], [1, 'blocks.1.w'], [2, 'blocks.2.w'], [3, 'blocks.10.w'], [4, 'out.w'], [5, 'blocks.0.b'], [6, 'out.b'],
  ]);
  assert.equal(result.method.get(4), 'shape');
  assert.equal(result.confidence.get(4), 1);
  assert.equal(result.method.get(0), 'order');
  assert.equal(result.confidence.get(0), 0.9);
  assert.deepEqual(result.unmapped, [7]);
  const err = errorOf(() => mapParams({ params, groups, stateShapes: new Map([...stateShapes, [6, [3]]]) }));
  assert.equal(err.code, 'ERR_PARAM_MAP');
  assert.match(err.message, /id\(s\) 6 have shape \[3\]/);
});

/** Data where each name's change follows one id's Adam direction; `follows` gives that id per name. */
function synthetic(names: string[], follows: Map<string, number>, n = 400, seed = 3): ParamMapData {
  const rand = uniform(seed);
  const direction = new Map([...new Set(follows.values())].map((id) => [id, Float64Array.from({ length: n }, () => rand() * 2 - 1)]));
  const change = new Map(names.map((name) => [name, Float64Array.from({ length: n }, (_, i) => -0.01 * direction.get(follows.get(name)!)![i]! + 0.004 * (rand() - 0.5))]));
  return { change: (name) => change.get(name) ?? null, weight: () => null, direction: (id) => direction.get(id) ?? null, decay: () => 0 };
}

test('groups that are not Trainer\'s two: id order is not trusted, the statistics decide', () => {
  const params = [{ name: 'a.w', shape: [400] }, { name: 'b.w', shape: [400] }];
  const stateShapes = new Map<number, number[]>([[0, [400]], [1, [400]]]);
  // Three groups with custom hyper-parameters: no structural guess.
  const groups = [{ params: [0], weightDecay: 0.1 }, { params: [1], weightDecay: 0.1 }, { params: [], weightDecay: 0 }];
  assert.match(errorOf(() => mapParams({ params, groups, stateShapes, smallElements: 0 })).message, /no previous checkpoint/);
  // a.w moved along id 1's direction, b.w along id 0's.
  const data = synthetic(['a.w', 'b.w'], new Map([['a.w', 1], ['b.w', 0]]));
  const result = mapParams({ params, groups, stateShapes, data });
  assert.deepEqual([...result.names.entries()], [[0, 'b.w'], [1, 'a.w']]);
  assert.equal(result.method.get(0), 'statistics');
  assert.ok(result.confidence.get(0)! > 0.9);
  // Noise alone settles nothing: both stay ambiguous (small: unmapped; larger than smallElements: refused).
  const noise: ParamMapData = { ...data, change: (name) => synthetic(['a.w', 'b.w'], new Map([['a.w', 7], ['b.w', 8]]), 400, name === 'a.w' ? 11 : 12).change(name) };
  assert.deepEqual(mapParams({ params, groups, stateShapes, data: noise }).ambiguous.map((a) => a.id), [0, 1]);
  assert.match(errorOf(() => mapParams({ params, groups, stateShapes, data: noise, smallElements: 399 })).message, /cannot tell apart 2 param ids: id 0 \(a\.w \| b\.w: the statistics tell them apart by z/);
});

test('a mapping carried from the previous step: confirmed, raised by agreeing statistics, refused when they disagree or it does not fit', () => {
  const params = [{ name: 'l.0.q', shape: [400] }, { name: 'l.0.k', shape: [400] }, { name: 'l.1.q', shape: [400] }, { name: 'l.1.k', shape: [400] }];
  const groups = [{ params: [0, 1, 2, 3], weightDecay: 0.1 }];
  const stateShapes = new Map<number, number[]>(params.map((_, id) => [id, [400]]));
  const truth = new Map([['l.0.q', 0], ['l.0.k', 1], ['l.1.q', 2], ['l.1.k', 3]]);
  // Structure alone: q/k order unknown, shared by both layers.
  const none = mapParams({ params, groups, stateShapes, smallElements: 400 });
  assert.equal(none.names.size, 0);
  // A prior on one id settles its layer and, through the shared sibling order, the other layer.
  const prior = new Map([[0, { name: 'l.0.q', confidence: 0.7 }]]);
  const narrowed = mapParams({ params, groups, stateShapes, prior });
  assert.deepEqual([...narrowed.names].sort((a, b) => a[0] - b[0]), [[0, 'l.0.q'], [1, 'l.0.k'], [2, 'l.1.q'], [3, 'l.1.k']]);
  assert.equal(narrowed.method.get(0), 'carried');
  assert.equal(narrowed.confidence.get(0), 0.7);
  assert.equal(narrowed.method.get(2), 'order');
  // Statistics that agree raise the carried confidence.
  const data = synthetic(params.map((p) => p.name), truth);
  const agreed = mapParams({ params, groups, stateShapes, prior, data });
  assert.ok(agreed.confidence.get(0)! > 0.9);
  // Statistics that settle the id otherwise: refused, naming both.
  const swapped = synthetic(params.map((p) => p.name), new Map([['l.0.q', 1], ['l.0.k', 0], ['l.1.q', 3], ['l.1.k', 2]]));
  assert.match(errorOf(() => mapParams({ params, groups, stateShapes, prior, data: swapped })).message, /carried l\.0\.q, the statistics say l\.0\.k/);
  // A prior that does not fit the model: refused.
  assert.match(errorOf(() => mapParams({ params, groups, stateShapes, prior: new Map([[0, { name: 'nope', confidence: 1 }]]) })).message, /the model does not hold/);
  assert.match(errorOf(() => mapParams({ params: [...params, { name: 'x', shape: [2] }], groups, stateShapes, prior: new Map([[0, { name: 'x', confidence: 1 }]]) })).message, /has shape \[2\]/);
  // One that fits no order the structure allows (q of layer 0, k of layer 1 as ids 0 and 1).
  const crossed = new Map([[0, { name: 'l.0.q', confidence: 1 }], [1, { name: 'l.1.k', confidence: 1 }]]);
  assert.match(errorOf(() => mapParams({ params, groups, stateShapes, prior: crossed })).message, /fits no order/);
});

test('evidence adds up over the steps of a run: too weak in one step, enough in a few; never against the data', () => {
  const params = [{ name: 'a.w', shape: [64] }, { name: 'b.w', shape: [64] }];
  const groups = [{ params: [0], weightDecay: 0.1 }, { params: [1], weightDecay: 0.1 }, { params: [], weightDecay: 0 }];
  const stateShapes = new Map<number, number[]>([[0, [64]], [1, [64]]]);
  // A weak relation: a.w's change follows id 0's direction a little, b.w's id 1's.
  const weak = (seed: number): ParamMapData => {
    const rand = uniform(seed);
    const d = new Map([0, 1].map((id) => [id, Float64Array.from({ length: 64 }, () => rand() - 0.5)]));
    const c = new Map([['a.w', 0], ['b.w', 1]].map(([n, id]) => [n as string, d.get(id as number)!.map((x) => -0.4 * x + (rand() - 0.5))]));
    return { change: (n) => c.get(n) ?? null, weight: () => null, direction: (id) => d.get(id) ?? null, decay: () => 0 };
  };
  let evidence: ParamMapInput['evidence'] = new Map();
  const named: number[] = [];
  for (let step = 0; step < 6; step++) {
    const result = mapParams({ params, groups, stateShapes, data: weak(100 + step), evidence, smallElements: 64 });
    for (const [id, name] of result.names) assert.equal(name, id === 0 ? 'a.w' : 'b.w', `step ${step}`);
    named.push(result.names.size);
    if (result.names.size === 2) break;
    assert.deepEqual([...result.evidence.keys()], [0, 1]);
    assert.equal(result.evidence.get(0)!.steps, step + 1);
    evidence = result.evidence;
  }
  assert.equal(named[0], 0, 'one step is too weak');
  assert.equal(named.at(-1), 2, `named after ${named.length} steps`);
  assert.ok(named.length >= 2 && named.length <= 4, `named after ${named.length} steps`);
});

test('groupOrders: shapes narrow the sibling orders of a whole group; frozen names may be left out; stateless ids match any shape', () => {
  const llama = ['m.embed.w', 'm.layers.0.attn.q', 'm.layers.0.attn.k', 'm.layers.0.attn.v', 'm.layers.0.mlp.up', 'head.w'];
  const shape: Record<string, string> = { 'm.embed.w': '[32,8]', 'head.w': '[32,8]', 'm.layers.0.attn.q': '[8,8]', 'm.layers.0.attn.k': '[4,8]', 'm.layers.0.attn.v': '[4,8]', 'm.layers.0.mlp.up': '[16,8]' };
  const named = llama.map((name) => ({ name, shape: shape[name]! }));
  const ids = ['[32,8]', '[8,8]', '[4,8]', '[4,8]', '[16,8]', '[32,8]'];
  const orders = groupOrders(named, ids, 1000)!;
  // embed first and head last, or head first and embed last (model's children reversed); k/v either way.
  assert.equal(orders.length, 4);
  assert.ok(orders.some((o) => o.join() === llama.join()));
  assert.ok(orders.every((o) => o[1] === 'm.layers.0.attn.q' && o[4] === 'm.layers.0.mlp.up'));
  // A frozen embedding: one name fewer in the optimizer.
  const frozen = groupOrders(named, ids.slice(1), 1000)!;
  assert.ok(frozen.some((o) => o.join() === llama.slice(1).join()));
  assert.ok(frozen.every((o) => o.length === 5));
  // A stateless id (null) in the middle takes any name.
  assert.ok(groupOrders(named, [ids[0]!, null, ...ids.slice(2)], 1000)!.some((o) => o.join() === llama.join()));
  assert.deepEqual(groupOrders(named, ['[9]'], 1000), []);
  assert.equal(groupOrders(named, ids, 1), null);
});

test('param-stats: Adam direction as torch computes it, sample plans, z', () => {
  const d = adamDirection([0.1, -0.2], [0.04, 0.01], 1, { beta1: 0.9, beta2: 0.999, eps: 1e-8 });
  // Step 1: m / 0.1 / (sqrt(v / 0.001) + eps)
  assert.ok(Math.abs(d[0]! - 0.1 / 0.1 / (Math.sqrt(0.04 / 0.001) + 1e-8)) < 1e-12);
  assert.ok(d[1]! < 0);
  assert.deepEqual(samplePlan(10, 100), [{ start: 0, length: 10 }]);
  const plan = samplePlan(1_000_000, 4096);
  assert.equal(plan.length, 16);
  assert.equal(plan.reduce((s, b) => s + b.length, 0), 4096);
  assert.equal(plan[0]!.start, 0);
  assert.equal(plan[15]!.start + plan[15]!.length, 1_000_000);
  assert.ok(Math.abs(zOf(1, [101, 101]) - 1 / Math.sqrt(0.04)) < 1e-12);
});
