/**
 * Maximum-weight assignment (the Hungarian method) and how firmly each row
 * holds its column: step 4 of the parameter mapping (param-map.ts) when no
 * module structure narrows the candidates. Apart because it is a general
 * algorithm on a score matrix and reads best without the mapping around it.
 */
import { zOf } from './param-stats.js';

/** Maximum-weight assignment of rows to distinct columns (rows <= columns), O(n^2 m). */
export function hungarian(score: number[][]): number[] {
  const n = score.length;
  const m = score[0]?.length ?? 0;
  // Minimise cost = -score with the potentials method; 1-based arrays, column 0 is a sentinel.
  const u = new Float64Array(n + 1);
  const v = new Float64Array(m + 1);
  const p = new Int32Array(m + 1);
  const way = new Int32Array(m + 1);
  for (let i = 1; i <= n; i++) {
    p[0] = i;
    let j0 = 0;
    const minv = new Float64Array(m + 1).fill(Infinity);
    const used = new Uint8Array(m + 1);
    do {
      used[j0] = 1;
      const i0 = p[j0]!;
      let delta = Infinity;
      let j1 = 0;
      for (let j = 1; j <= m; j++) {
        if (used[j]) continue;
        const cur = -score[i0 - 1]![j - 1]! - u[i0]! - v[j]!;
        if (cur < minv[j]!) {
          minv[j] = cur;
          way[j] = j0;
        }
        if (minv[j]! < delta) {
          delta = minv[j]!;
          j1 = j;
        }
      }
      for (let j = 0; j <= m; j++) {
        if (used[j]) {
          u[p[j]!] = u[p[j]!]! + delta;
          v[j] = v[j]! - delta;
        } else {
          minv[j] = minv[j]! - delta;
        }
      }
      j0 = j1;
    } while (p[j0] !== 0);
    do {
      const j1 = way[j0]!;
      p[j0] = p[j1]!;
      j0 = j1;
    } while (j0 !== 0);
  }
  const rowToCol = new Array<number>(n).fill(-1);
  for (let j = 1; j <= m; j++) if (p[j]! > 0) rowToCol[p[j]! - 1] = j - 1;
  return rowToCol;
}

/**
 * Per row: how firmly it holds its column, as the smallest z (param-stats.ts)
 * of what the assignment loses by a swap with another row (two positions
 * change) or a move to a free column (one position changes).
 * @param score the score matrix
 * @param assignment column per row, from {@link hungarian}
 * @param samples sample size behind every score
 */
export function assignmentZ(score: number[][], assignment: number[], samples: number): number[] {
  const taken = new Set(assignment);
  const free = (score[0] ?? []).map((_, j) => j).filter((j) => !taken.has(j));
  return assignment.map((ci, i) => {
    let z = Infinity;
    assignment.forEach((cj, j) => {
      if (j !== i) z = Math.min(z, zOf(score[i]![ci]! + score[j]![cj]! - score[i]![cj]! - score[j]![ci]!, [samples, samples]));
    });
    for (const f of free) z = Math.min(z, zOf(score[i]![ci]! - score[i]![f]!, [samples]));
    return z;
  });
}
