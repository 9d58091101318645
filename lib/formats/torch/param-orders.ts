/**
 * Step 3 of the parameter mapping (param-map.ts explains the steps): the
 * orders `named_parameters()` could list a set of names in, from the module
 * tree their dotted paths describe, and the natural name order it rests on.
 * Apart from param-map.ts because it is pure combinatorics over names, with
 * no optimizer state or tensor data in sight.
 */

/** Compare names with digit runs compared as numbers, so `layers.10` sorts after `layers.9`. */
export function compareNames(a: string, b: string): number {
  const pa = a.split(/(\d+)/);
  const pb = b.split(/(\d+)/);
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    const x = pa[i]!;
    const y = pb[i]!;
    if (x === y) continue;
    if (i % 2 === 1) return Number(x) - Number(y) || (x < y ? -1 : 1);
    return x < y ? -1 : 1;
  }
  return pa.length - pb.length;
}

/**
 * Every order `named_parameters()` could give these names (see the file
 * header): at each template node, own parameters first then submodules, each
 * in one unknown permutation shared by all nodes of that template; index
 * children in numeric order. Returns null when there are more than `max`.
 */
export function candidateOrders(names: readonly string[], max: number): string[][] | null {
  interface Node { children: Map<string, Node>; leaf: string | null }
  const root: Node = { children: new Map(), leaf: null };
  for (const name of names) {
    let node = root;
    for (const part of name.split('.')) {
      if (!node.children.has(part)) node.children.set(part, { children: new Map(), leaf: null });
      node = node.children.get(part)!;
    }
    node.leaf = name;
  }
  // Sibling sets per template: leaves and named submodules; index children travel as one unit "#".
  const templates = new Map<string, { leaves: Set<string>; modules: Set<string> }>();
  const collect = (node: Node, template: string): void => {
    const t = templates.get(template) ?? { leaves: new Set(), modules: new Set() };
    templates.set(template, t);
    for (const [part, child] of node.children) {
      const isIndex = /^\d+$/.test(part);
      if (child.leaf !== null && child.children.size === 0) t.leaves.add(isIndex ? '#' : part);
      else t.modules.add(isIndex ? '#' : part);
      collect(child, `${template}.${isIndex ? '#' : part}`);
    }
  };
  collect(root, '');
  const keys = [...templates.keys()];
  const options = keys.map((k) => {
    const t = templates.get(k)!;
    const leaves = permutations([...t.leaves].sort(compareNames));
    const modules = permutations([...t.modules].sort(compareNames));
    return leaves.flatMap((l) => modules.map((m) => [...l, ...m]));
  });
  let total = 1;
  for (const o of options) {
    total *= o.length;
    if (total > max) return null;
  }
  const out: string[][] = [];
  const choice = new Array<number>(keys.length).fill(0);
  for (;;) {
    const rank = new Map(keys.map((k, i) => [k, new Map(options[i]![choice[i]!]!.map((part, r) => [part, r]))]));
    const seq: string[] = [];
    const emit = (node: Node, template: string): void => {
      const ranks = rank.get(template)!;
      const parts = [...node.children.keys()].sort((a, b) => {
        const ua = /^\d+$/.test(a) ? '#' : a;
        const ub = /^\d+$/.test(b) ? '#' : b;
        return ua === ub ? compareNames(a, b) : ranks.get(ua)! - ranks.get(ub)!;
      });
      for (const part of parts) {
        const child = node.children.get(part)!;
        if (child.leaf !== null) seq.push(child.leaf);
        emit(child, `${template}.${/^\d+$/.test(part) ? '#' : part}`);
      }
    };
    emit(root, '');
    out.push(seq);
    let k = 0;
    while (k < keys.length && ++choice[k]! === options[k]!.length) choice[k++] = 0;
    if (k === keys.length) return out;
  }
}

function permutations<T>(items: T[]): T[][] {
  if (items.length <= 1) return [items];
  return items.flatMap((x, i) => permutations([...items.slice(0, i), ...items.slice(i + 1)]).map((rest) => [x, ...rest]));
}

/** A name with its shape's key (`[4,8]`). */
export interface ShapedName {
  name: string;
  shape: string;
}

/**
 * Every order `named_parameters()` could give a whole param group in, as
 * param-map.ts's structure step sees it, narrowed by the shapes the group's
 * ids have in id order: a candidate must put a name of the id's shape at
 * every position. Names may be left out (frozen parameters are in the model
 * file but not in the optimizer), at most `names.length - shapes.length` of
 * them. The sibling orders are chosen per template as {@link candidateOrders}
 * does, lazily, by a depth-first search that drops an order at the first
 * position whose shape does not fit.
 * @param names the names the group may hold, with their shapes
 * @param shapes the shape key of each id of the group, in id order (null: an id without state, any shape)
 * @param max most candidates (more: null)
 * @param budget most search steps (more: null)
 * @returns candidates (names in id order), or null when there are too many to list
 */
export function groupOrders(names: readonly ShapedName[], shapes: readonly (string | null)[], max: number, budget = 2_000_000): string[][] | null {
  interface Node { children: Map<string, Node>; leaf: string | null; shape: string }
  const root: Node = { children: new Map(), leaf: null, shape: '' };
  for (const { name, shape } of names) {
    let node = root;
    for (const part of name.split('.')) {
      if (!node.children.has(part)) node.children.set(part, { children: new Map(), leaf: null, shape: '' });
      node = node.children.get(part)!;
    }
    node.leaf = name;
    node.shape = shape;
  }
  const partOf = (p: string): string => (/^\d+$/.test(p) ? '#' : p);
  const templates = new Map<string, { leaves: Set<string>; modules: Set<string> }>();
  const collect = (node: Node, template: string): void => {
    const t = templates.get(template) ?? { leaves: new Set(), modules: new Set() };
    templates.set(template, t);
    for (const [part, child] of node.children) {
      (child.leaf !== null && child.children.size === 0 ? t.leaves : t.modules).add(partOf(part));
      collect(child, `${template}.${partOf(part)}`);
    }
  };
  collect(root, '');
  const options = new Map([...templates].map(([k, t]) => {
    const leaves = permutations([...t.leaves].sort(compareNames));
    const modules = permutations([...t.modules].sort(compareNames));
    return [k, leaves.flatMap((l) => modules.map((m) => new Map([...l, ...m].map((part, r) => [part, r]))))];
  }));
  type Pending = { node: Node; template: string; next: Pending | null } | null;
  const choice = new Map<string, Map<string, number>>();
  const out: string[][] = [];
  // Two sibling orders can list a group alike (parts that never meet in one node).
  const seen = new Set<string>();
  const seq: string[] = [];
  let steps = 0;
  let overflow = false;
  const childrenOf = (node: Node, template: string, rank: Map<string, number>, rest: Pending): Pending => {
    const parts = [...node.children.keys()].sort((a, b) => {
      const ua = partOf(a);
      const ub = partOf(b);
      return ua === ub ? compareNames(a, b) : rank.get(ua)! - rank.get(ub)!;
    });
    let list = rest;
    for (let i = parts.length - 1; i >= 0; i--) list = { node: node.children.get(parts[i]!)!, template: `${template}.${partOf(parts[i]!)}`, next: list };
    return list;
  };
  const go = (pending: Pending, pos: number, skips: number): void => {
    if (overflow || ++steps > budget || out.length > max) {
      overflow = true;
      return;
    }
    if (pending === null) {
      const key = seq.join('\0');
      if (pos === shapes.length && !seen.has(key)) {
        seen.add(key);
        out.push([...seq]);
      }
      return;
    }
    const { node, template, next } = pending;
    if (node.leaf !== null) {
      if (pos < shapes.length && (shapes[pos] === null || node.shape === shapes[pos])) {
        seq.push(node.leaf);
        go(node.children.size ? childrenOf(node, template, choice.get(template) ?? new Map(), next) : next, pos + 1, skips);
        seq.pop();
      }
      if (skips > 0) go(next, pos, skips - 1);
      return;
    }
    const chosen = choice.get(template);
    if (chosen) {
      go(childrenOf(node, template, chosen, next), pos, skips);
      return;
    }
    for (const rank of options.get(template)!) {
      choice.set(template, rank);
      go(childrenOf(node, template, rank, next), pos, skips);
      choice.delete(template);
      if (overflow) return;
    }
  };
  const skips = names.length - shapes.length;
  if (skips < 0) return [];
  go({ node: root, template: '', next: null }, 0, skips);
  return overflow ? null : out;
}
