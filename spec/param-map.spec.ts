/**
 * Param-id -> name inference on the PyTorch fixtures (two consecutive
 * checkpoints per run) and on small synthetic cases.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { ExcpError } from '../lib/core/errors.js';
import { hungarian } from '../lib/formats/torch/assignment.js';
import { type ParamMapInput, mapParams } from '../lib/formats/torch/param-map.js';
import { candidateOrders, compareNames } from '../lib/formats/torch/param-orders.js';
import { readOptimizerState } from '../lib/formats/torch/serialization.js';
import { errorOf } from './helpers.js';

const FIXTURES = new URL('./fixtures/torch/', import.meta.url);
const reference = JSON.parse(readFileSync(new URL('reference.json', FIXTURES), 'utf8'));

/** float32 values of F32/BF16 little-endian bytes. */
function floats(bytes: Uint8Array, dtype: string): Float32Array {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dtype === 'F32') return Float32Array.from({ length: bytes.length / 4 }, (_, i) => view.getFloat32(i * 4, true));
  return new Float32Array(new Uint32Array(Array.from({ length: bytes.length / 2 }, (_, i) => view.getUint16(i * 2, true) << 16)).buffer);
}

/** Every tensor of the *.safetensors files of a checkpoint folder (one file or shards). */
function model(folder: string): Map<string, { shape: number[]; values: Float32Array }> {
  const out = new Map<string, { shape: number[]; values: Float32Array }>();
  const dir = new URL(`${folder}/`, FIXTURES);
  for (const f of readdirSync(dir).filter((x) => x.endsWith('.safetensors'))) {
    const bytes = new Uint8Array(readFileSync(new URL(f, dir)));
    const n = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + n)));
    for (const [name, info] of Object.entries<{ dtype: string; shape: number[]; data_offsets: [number, number] }>(header)) {
      if (name === '__metadata__') continue;
      out.set(name, { shape: info.shape, values: floats(bytes.subarray(8 + n + info.data_offsets[0], 8 + n + info.data_offsets[1]), info.dtype) });
    }
  }
  return out;
}

function fixtureInput(run: string, withData: boolean): ParamMapInput {
  const prev = model(`${run}/checkpoint-4`);
  const cur = model(`${run}/checkpoint-8`);
  const bytes = new Uint8Array(readFileSync(new URL(`${run}/checkpoint-8/optimizer.pt`, FIXTURES)));
  const opt = readOptimizerState(bytes.length, (o, l) => bytes.subarray(o, o + l));
  const input: ParamMapInput = {
    params: [...cur].map(([name, t]) => ({ name, shape: t.shape })),
    groups: opt.paramGroups.map((g) => ({ params: g.params, weightDecay: g.weightDecay })),
    stateShapes: new Map([...opt.state].map(([id, s]) => [id, s.expAvg.shape])),
  };
  if (!withData) return input;
  return {
    ...input,
    data: {
      delta: (name) => {
        const a = cur.get(name)!.values;
        const b = prev.get(name)!.values;
        return a.map((x, i) => x - b[i]!);
      },
      expAvg: (id) => {
        const t = opt.state.get(id)!.expAvg;
        return floats(bytes.subarray(t.byteOffset, t.byteOffset + t.byteLength), t.dtype);
      },
    },
  };
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
  test(`fixtures ${run}: two checkpoints settle every id to the name Trainer used`, () => {
    const order: string[] = reference.runs[run].param_order;
    const result = mapParams(fixtureInput(run, true));
    assert.equal(result.names.size, order.length);
    for (const [id, name] of result.names) assert.equal(name, order[id], `id ${id}`);
    assert.equal(result.method.get(48), 'shape', 'head.bias is the only [40] in its group');
    assert.equal(result.method.get(5), 'order', 'layers.#.fc.weight differ only by index');
    assert.equal(result.method.get(0), 'correlation', 'embed.weight vs head.weight needs the data');
    for (const c of result.confidence.values()) assert.ok(c > 0.5 && c <= 1);
  });

  test(`fixtures ${run}: without data the ambiguous ids are named`, () => {
    const err = errorOf(() => mapParams(fixtureInput(run, false)));
    assert.equal(err.code, 'ERR_PARAM_MAP');
    assert.match(err.message, /id 0 \((embed\.weight \| head\.weight|head\.weight \| embed\.weight)\)/);
    assert.match(err.message, /id 12 /);
    assert.doesNotMatch(err.message, /id 5 /, 'fc weights are settled by index order');
  });
}

test('a keyframe pairs the ids that stay ambiguous by shape alone, with confidence 0', () => {
  const input = fixtureInput('fp32', false);
  const result = mapParams({ ...input, keyframe: true });
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

test('a weaker method never gives a wrong answer silently', () => {
  const order: string[] = reference.runs.fp32.param_order;
  // Force the unstructured assignment: it either settles correctly or names the ids it cannot.
  try {
    const result = mapParams({ ...fixtureInput('fp32', true), maxCandidates: 1 });
    for (const [id, name] of result.names) assert.equal(name, order[id]);
  } catch (err) {
    assert.ok(err instanceof ExcpError && err.code === 'ERR_PARAM_MAP');
  }
});

test('explicit names settle everything and are checked', () => {
  const order: string[] = reference.runs.bf16.param_order;
  const input = fixtureInput('bf16', false);
  const result = mapParams({ ...input, explicit: order });
  assert.deepEqual([...result.names].map(([id, n]) => [id, n]), order.map((n, id) => [id, n]));
  assert.ok([...result.method.values()].every((m) => m === 'explicit'));
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

test('groups that are not Trainer\'s two: id order is not trusted, data decides', () => {
  const params = [{ name: 'a.w', shape: [3] }, { name: 'b.w', shape: [3] }];
  const stateShapes = new Map<number, number[]>([[0, [3]], [1, [3]]]);
  // Three groups with custom hyper-parameters: no structural guess.
  const groups = [{ params: [0], weightDecay: 0.1 }, { params: [1], weightDecay: 0.1 }, { params: [], weightDecay: 0 }];
  assert.equal(errorOf(() => mapParams({ params, groups, stateShapes })).code, 'ERR_PARAM_MAP');
  const m = new Map([[0, new Float32Array([1, -2, 3])], [1, new Float32Array([-5, 1, 1])]]);
  // dW of a.w moves against m of id 1, dW of b.w against m of id 0.
  const delta = new Map([['a.w', new Float32Array([5, -1, -1.2])], ['b.w', new Float32Array([-1, 2, -3.1])]]);
  const result = mapParams({ params, groups, stateShapes, data: { delta: (n) => delta.get(n)!, expAvg: (id) => m.get(id)! } });
  assert.deepEqual([...result.names.entries()], [[0, 'b.w'], [1, 'a.w']]);
  assert.equal(result.method.get(0), 'correlation');
});
