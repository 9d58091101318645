/**
 * Step 4 of the parameter mapping (param-map.ts explains the steps), the
 * decisions: which candidate order of a group the statistics pick, or which
 * assignment of one shape's ids to names, and for each id whether every
 * rival that names it otherwise loses by a z of at least `minZ`
 * (param-stats.ts). Apart from param-map.ts, which gathers the inputs and
 * applies the decisions, because this is where "settled" is defined.
 */
import { assignmentZ, hungarian } from './assignment.js';
import { zOf } from './param-stats.js';

/** Scores of ids x names of one shape with their sample size, or null without data. */
export type ScoreSource = (ids: readonly number[], names: readonly string[]) => { scores: number[][]; samples: number[] } | null;

/** Confidence of an id the statistics settled with this z. */
export function statisticsConfidence(z: number, minZ: number): number {
  return Math.max(0, Math.min(1, 1 - 0.5 * (minZ / z) ** 2));
}

/** What was decided for one id. */
export interface Decided {
  name: string | null;
  confidence: number;
  method: 'shape' | 'order' | 'statistics' | 'carried' | 'shape-only';
  options: string[];
  reason: string;
}

/**
 * Pick among candidate orders of `ids`: ids all candidates name alike are
 * settled by shape or structure; the rest by the statistics, when the best
 * order beats every rival that names the id otherwise by z >= minZ.
 * @param ids the ids, in the candidates' order
 * @param orders candidate names per id (param-orders.ts)
 * @param shapes shape key by name
 * @param scoresOf the statistics
 * @param minZ the z an id must clear
 * @param prior carried names (such ids are reported as carried)
 * @param noData the reason given when there are no statistics
 * @returns one decision per id
 */
export function decideOrders(ids: readonly number[], orders: readonly string[][], shapes: ReadonlyMap<string, string>, scoresOf: ScoreSource, minZ: number,
  prior: ReadonlyMap<number, { name: string; confidence: number }>, noData: string): Decided[] {
  const options = ids.map((_, i) => [...new Set(orders.map((o) => o[i]!))]);
  // Scores of each position with each name a candidate gives it (only those: not the whole shape bucket).
  const score = ids.map(() => new Map<string, number>());
  const samples = ids.map(() => 0);
  let data = true;
  ids.forEach((id, i) => {
    if (options[i]!.length < 2 || !data) return;
    const s = scoresOf([id], options[i]!);
    if (!s) {
      data = false;
      return;
    }
    options[i]!.forEach((n, c) => score[i]!.set(n, s.scores[0]![c]!));
    samples[i] = s.samples[0] ?? 0;
  });
  const totals = orders.map((o) => o.reduce((t, n, i) => t + (score[i]!.get(n) ?? 0), 0));
  const best = totals.reduce((b, t, k) => (t > totals[b]! ? k : b), 0);
  const chosen = orders[best];
  // Per id: the smallest z of a rival order that names it otherwise (each rival's z computed once).
  const zs = ids.map(() => Infinity);
  if (chosen && data) {
    orders.forEach((o, k) => {
      if (k === best) return;
      const changed: number[] = [];
      const sizes: number[] = [];
      o.forEach((n, p) => {
        if (n === chosen[p]) return;
        changed.push(p);
        sizes.push(samples[p]!);
      });
      const z = zOf(totals[best]! - totals[k]!, sizes);
      for (const p of changed) zs[p] = Math.min(zs[p]!, z);
    });
  }
  return ids.map((id, i): Decided => {
    const list = options[i]!;
    if (list.length === 1) {
      const unique = [...shapes.values()].filter((s) => s === shapes.get(list[0]!)).length === 1;
      return { name: list[0]!, confidence: unique ? 1 : 0.9, method: unique ? 'shape' : 'order', options: list, reason: '' };
    }
    if (prior.has(id)) return { name: prior.get(id)!.name, confidence: prior.get(id)!.confidence, method: 'carried', options: list, reason: '' };
    if (!data || !chosen) return { name: null, confidence: 0, method: 'statistics', options: list, reason: noData };
    const z = zs[i]!;
    if (z >= minZ) return { name: chosen[i]!, confidence: statisticsConfidence(z, minZ), method: 'statistics', options: list, reason: '' };
    return { name: null, confidence: 0, method: 'statistics', options: list, reason: `the statistics tell them apart by z ${z.toFixed(1)} only (${sampleText(samples[i]!)})` };
  });
}


/**
 * Without a usable structure: a maximum-weight assignment of one shape's ids
 * to names; an id is settled when no swap or move beats it by z >= minZ.
 * @param s the scores of `ids` x `names`
 */
export function decideAssignment(ids: readonly number[], names: readonly string[], s: { scores: number[][]; samples: number[] }, minZ: number): Decided[] {
  const assignment = hungarian(s.scores);
  const zs = assignmentZ(s.scores, assignment, Math.min(...s.samples));
  return ids.map((_, i): Decided => {
    const z = zs[i]!;
    return z >= minZ
      ? { name: names[assignment[i]!]!, confidence: statisticsConfidence(z, minZ), method: 'statistics', options: [...names], reason: '' }
      : { name: null, confidence: 0, method: 'statistics', options: [...names], reason: `the statistics tell them apart by z ${z.toFixed(1)} only (${sampleText(Math.min(...s.samples))})` };
  });
}

/** An (effective) sample size in words. */
function sampleText(n: number): string {
  return Number.isInteger(n) ? `weights of ${n} sampled elements` : `several steps' statistics, worth ${n.toFixed(1)} sampled elements of one`;
}
