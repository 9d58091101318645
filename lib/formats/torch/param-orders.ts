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
