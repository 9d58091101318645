/**
 * The house rules of lib/, read from the sources, so that the test fails
 * the day a change breaks one: folders are layers, each importing only from
 * the layers below it (README, "Architecture"); no import cycle; the pure
 * layers import nothing of Node; no folder holds more than 14 files.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

const lib = join(dirname(fileURLToPath(import.meta.url)), '..', 'lib');

/** The layers, lowest first: a file may import from its own layer and the ones before it. */
const LAYERS = ['core', 'io', 'coding', 'method', 'model', 'container', 'formats', 'pool', 'stream', 'api', 'chain', 'cli'];
/** Layers whose code is pure: typed arrays in, typed arrays out, no I/O. */
const PURE = ['core', 'coding', 'method', 'model', 'container'];

function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) return sources(path);
    return name.endsWith('.ts') && !name.endsWith('.d.ts') ? [path] : [];
  });
}

const IMPORT = /(?:import|export)[^'"]*?from\s*['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g;

/** Relative imports of every file, as files of lib/. */
function graph(): Map<string, { relative: string[]; node: string[] }> {
  const out = new Map<string, { relative: string[]; node: string[] }>();
  for (const file of sources(lib)) {
    const rel: string[] = [];
    const node: string[] = [];
    for (const m of readFileSync(file, 'utf8').matchAll(IMPORT)) {
      const spec = m[1] ?? m[2]!;
      if (spec.startsWith('node:')) node.push(spec);
      else if (spec.startsWith('.')) rel.push(normalize(join(dirname(file), spec)).replace(/\.js$/, '.ts'));
    }
    out.set(normalize(file), { relative: rel, node });
  }
  return out;
}

/** The layer of a file of lib/ (its top folder), or null at lib/'s top. */
function layerOf(file: string): string | null {
  const parts = relative(lib, file).split(/[\\/]/);
  return parts.length > 1 ? parts[0]! : null;
}

test('every folder of lib/ is a known layer, with at most 14 files, and lib/ itself at most 4', () => {
  const files = sources(lib);
  const perFolder = new Map<string, number>();
  for (const f of files) perFolder.set(dirname(f), (perFolder.get(dirname(f)) ?? 0) + 1);
  for (const [folder, count] of perFolder) {
    const limit = folder === lib ? 4 : 14;
    assert.ok(count <= limit, `${relative(lib, folder) || 'lib/'} holds ${count} files (at most ${limit})`);
  }
  for (const f of files) {
    const layer = layerOf(f);
    if (layer !== null) assert.ok(LAYERS.includes(layer), `${relative(lib, f)}: folder '${layer}' is not a layer in LAYERS`);
  }
});

/** Imports that go up the layers: "from -> to" lines. */
function upwardImports(g: ReadonlyMap<string, readonly string[]>): string[] {
  const problems: string[] = [];
  for (const [file, imports] of g) {
    const from = layerOf(file);
    if (from === null) continue; // lib/index.ts and lib/cli.ts sit on top
    for (const target of imports) {
      const to = layerOf(target);
      if (to === null) problems.push(`${relative(lib, file)} imports ${relative(lib, target)} at lib/'s top`);
      else if (LAYERS.indexOf(to) > LAYERS.indexOf(from)) problems.push(`${relative(lib, file)} (${from}) imports ${relative(lib, target)} (${to})`);
    }
  }
  return problems;
}

/** The import cycles of a graph, each as "a -> b -> a". */
function importCycles(g: ReadonlyMap<string, readonly string[]>): string[] {
  const state = new Map<string, 'open' | 'done'>();
  const cycles: string[] = [];
  const visit = (file: string, path: string[]): void => {
    if (state.get(file) === 'done') return;
    if (state.get(file) === 'open') {
      cycles.push([...path.slice(path.indexOf(file)), file].map((f) => relative(lib, f)).join(' -> '));
      return;
    }
    state.set(file, 'open');
    for (const next of g.get(file) ?? []) if (g.has(next)) visit(next, [...path, file]);
    state.set(file, 'done');
  };
  for (const file of g.keys()) visit(file, []);
  return cycles;
}

const relativeGraph = (): Map<string, string[]> => new Map([...graph()].map(([f, { relative: r }]) => [f, r]));

test('no file imports from a higher layer', () => {
  assert.deepEqual(upwardImports(relativeGraph()), []);
});

test('no import cycle', () => {
  assert.deepEqual(importCycles(relativeGraph()), []);
});

test('the pure layers import nothing of Node', () => {
  const problems: string[] = [];
  for (const [file, { node }] of graph()) {
    const layer = layerOf(file);
    if (layer !== null && PURE.includes(layer) && node.length) problems.push(`${relative(lib, file)} imports ${node.join(', ')}`);
  }
  assert.deepEqual(problems, []);
});

test('the checks see an upward import and a cycle when there is one (a check that cannot fail proves nothing)', () => {
  const a = join(lib, 'core', 'a.ts');
  const b = join(lib, 'core', 'b.ts');
  const fake = new Map<string, string[]>([[a, [join(lib, 'cli', 'x.ts'), b]], [b, [a]]]);
  assert.deepEqual(upwardImports(fake), ['core/a.ts (core) imports cli/x.ts (cli)']);
  assert.deepEqual(importCycles(fake), ['core/a.ts -> core/b.ts -> core/a.ts']);
});
