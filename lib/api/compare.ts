/**
 * `excp compare A B`: how far a restored checkpoint is from the original,
 * tensor by tensor. It answers the question users ask when the loss jumps
 * after resuming: which tensors changed, and by how much, in the terms that
 * matter to Adam (the weights, and the first step m / sqrt(v) that the
 * restored moments produce).
 *
 * Both checkpoints are read chunk by chunk through TensorReaders, so memory
 * stays bounded whatever their size. The statistics are pure functions of
 * the chunks ({@link accumulate}); the file handling sits below them.
 */
import { DTYPE_BYTES, LOSSY_DTYPES, toFloat32 } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { printable } from '../core/text.js';
import type { Checkpoint, TensorInfo } from '../model/checkpoint.js';
import { FILE_PREFIX, FolderCheckpoint, STATE_PREFIX } from '../formats/folder.js';
import { openCheckpoint } from '../formats/registry.js';

/** Adam's epsilon in the step comparison (PyTorch's default). */
const ADAM_EPS = 1e-8;
/** Elements read per chunk. */
const CHUNK = 1 << 20;

/** What a tensor is to Adam: a weight, one of its moments, or anything else. */
export type CompareRole = 'weight' | 'exp_avg' | 'exp_avg_sq' | 'other';

/** Differences of one tensor. */
export interface TensorDiff {
  name: string;
  /** The file of a checkpoint folder that holds it (absent for a single file). */
  file?: string;
  role: CompareRole;
  dtype: string;
  elements: number;
  /** Elements whose bits differ. */
  changed: number;
  /** ||a - b|| / ||a|| over finite pairs (0 when a is all zero and b equals it; null for non-float tensors). */
  relError: number | null;
  /** Largest |a - b| over finite pairs (null for non-float tensors). */
  maxAbs: number | null;
  /** Positions where exactly one side is NaN/Inf, or both are but with other bits. */
  nonFiniteMismatch: number;
}

/** A parameter with both Adam moments on both sides. */
export interface StepDiff {
  name: string;
  /** ||u_a - u_b|| / ||u_a||, u = m / (sqrt(v) + 1e-8): the first Adam step after resuming. */
  stepRelError: number;
}

/** The whole comparison. */
export interface CompareReport {
  a: string;
  b: string;
  tensors: TensorDiff[];
  steps: StepDiff[];
  onlyInA: string[];
  onlyInB: string[];
  /** Same name, other dtype or shape: not compared. */
  mismatched: string[];
  /** Aggregated ||a - b|| / ||a|| of the float tensors per role (weights, exp_avg, exp_avg_sq, other). */
  byRole: Record<'weight' | 'exp_avg' | 'exp_avg_sq' | 'other', { relError: number | null; tensors: number }>;
  identical: boolean;
}

/** Running sums of one float tensor. */
export interface FloatSums {
  sumSqA: number;
  sumSqDiff: number;
  maxAbs: number;
  changed: number;
  nonFiniteMismatch: number;
}

/** A fresh accumulator. */
export function emptySums(): FloatSums {
  return { sumSqA: 0, sumSqDiff: 0, maxAbs: 0, changed: 0, nonFiniteMismatch: 0 };
}

/**
 * Add one chunk of float values to the sums.
 * @param a original values
 * @param b restored values (same length)
 * @param bitsA the raw bits of a (so -0 vs 0 and NaN payloads count as changes)
 * @param bitsB the raw bits of b
 */
export function accumulate(s: FloatSums, a: Float32Array, b: Float32Array, bitsA: Uint8Array, bitsB: Uint8Array, elementBytes: number): void {
  for (let i = 0; i < a.length; i++) {
    const x = a[i]!;
    const y = b[i]!;
    if (Number.isFinite(x) && Number.isFinite(y)) {
      const d = x - y;
      s.sumSqA += x * x;
      s.sumSqDiff += d * d;
      const ad = d < 0 ? -d : d;
      if (ad > s.maxAbs) s.maxAbs = ad;
    } else if (Number.isFinite(x) !== Number.isFinite(y)) {
      s.nonFiniteMismatch++;
    } else if (!sameBits(bitsA, bitsB, i, elementBytes)) {
      s.nonFiniteMismatch++;
    }
    if (!sameBits(bitsA, bitsB, i, elementBytes)) s.changed++;
  }
}

function sameBits(a: Uint8Array, b: Uint8Array, i: number, eb: number): boolean {
  const o = i * eb;
  for (let k = 0; k < eb; k++) if (a[o + k] !== b[o + k]) return false;
  return true;
}

/** ||a - b|| / ||a||; 0 when both are zero, Infinity when only a is. */
export function relativeError(sumSqDiff: number, sumSqA: number): number {
  if (sumSqDiff === 0) return 0;
  return sumSqA === 0 ? Infinity : Math.sqrt(sumSqDiff / sumSqA);
}

/**
 * Add one chunk of Adam steps u = m / (sqrt(v) + eps) of both sides.
 * @returns nothing; updates `s.sumSqA` (||u_a||^2) and `s.sumSqDiff`
 */
export function accumulateStep(s: FloatSums, ma: Float32Array, va: Float32Array, mb: Float32Array, vb: Float32Array): void {
  for (let i = 0; i < ma.length; i++) {
    const ua = ma[i]! / (Math.sqrt(Math.max(va[i]!, 0)) + ADAM_EPS);
    const ub = mb[i]! / (Math.sqrt(Math.max(vb[i]!, 0)) + ADAM_EPS);
    if (!Number.isFinite(ua) || !Number.isFinite(ub)) continue;
    s.sumSqA += ua * ua;
    s.sumSqDiff += (ua - ub) * (ua - ub);
  }
}

/**
 * A checkpoint opened as a base: a folder's moments keep their optimizer ids
 * (`__optimizer__/ID/exp_avg`): naming them needs two consecutive
 * checkpoints, and A and B are two versions of one checkpoint, where ids are
 * what both sides share.
 */
function openForCompare(path: string): Promise<Checkpoint> {
  return openCheckpoint(path, { role: 'base' });
}

/** Moment names of a parameter: `NAME.exp_avg` (safetensors convention) or `__optimizer__/ID/exp_avg` (folders). */
function momentNames(param: string): [string, string] {
  return param.startsWith(STATE_PREFIX) ? [`${param}/exp_avg`, `${param}/exp_avg_sq`] : [`${param}.exp_avg`, `${param}.exp_avg_sq`];
}

/** Parameters with both moments: weight names, and optimizer ids of folders. */
function paramsOf(names: ReadonlySet<string>): string[] {
  const out: string[] = [];
  for (const n of names) {
    if (n.startsWith(STATE_PREFIX) && n.endsWith('/exp_avg') && names.has(`${n}_sq`)) out.push(n.slice(0, -'/exp_avg'.length));
    else if (!n.startsWith(STATE_PREFIX) && names.has(`${n}.exp_avg`) && names.has(`${n}.exp_avg_sq`)) out.push(n);
  }
  return out;
}

function roleOf(name: string, names: ReadonlySet<string>, folder: boolean): CompareRole {
  // In a folder, every model tensor is a weight (its moments go by optimizer id).
  if (folder) return name.startsWith(FILE_PREFIX) ? 'other' : name.startsWith(STATE_PREFIX) ? roleOf(name, names, false) : 'weight';
  if (name.startsWith(STATE_PREFIX)) return name.endsWith('/exp_avg') ? 'exp_avg' : name.endsWith('/exp_avg_sq') ? 'exp_avg_sq' : 'other';
  if (name.endsWith('.exp_avg_sq') && names.has(name.slice(0, -'.exp_avg_sq'.length))) return 'exp_avg_sq';
  if (name.endsWith('.exp_avg') && names.has(name.slice(0, -'.exp_avg'.length))) return 'exp_avg';
  if (names.has(`${name}.exp_avg`) && names.has(`${name}.exp_avg_sq`)) return 'weight';
  return 'other';
}

function sameLayout(x: TensorInfo, y: TensorInfo): boolean {
  return x.dtype === y.dtype && x.shape.length === y.shape.length && x.shape.every((d, i) => d === y.shape[i]);
}

/**
 * Compare two checkpoints (safetensors files or checkpoint folders).
 * @param pathA the original
 * @param pathB the restored one
 * @param onProgress bytes of A compared so far, of the total
 */
export async function compareCheckpoints(pathA: string, pathB: string, onProgress?: (done: number, total: number) => void): Promise<CompareReport> {
  const a = await openForCompare(pathA);
  let b: Checkpoint;
  try {
    b = await openForCompare(pathB);
  } catch (e) {
    await a.close();
    throw e;
  }
  try {
    return await compareReaders(a, b, pathA, pathB, onProgress);
  } finally {
    await a.close();
    await b.close();
  }
}

async function compareReaders(a: Checkpoint, b: Checkpoint, pathA: string, pathB: string, onProgress?: (done: number, total: number) => void): Promise<CompareReport> {
  const namesA = new Set(a.byName.keys());
  const onlyInA = [...namesA].filter((n) => !b.byName.has(n));
  const onlyInB = [...b.byName.keys()].filter((n) => !namesA.has(n));
  const mismatched: string[] = [];
  const tensors: TensorDiff[] = [];
  const roleSums = { weight: emptySums(), exp_avg: emptySums(), exp_avg_sq: emptySums(), other: emptySums() };
  const roleCounts = { weight: 0, exp_avg: 0, exp_avg_sq: 0, other: 0 };
  const total = a.tensors.reduce((s, t) => s + t.end - t.begin, 0);
  let done = 0;
  const progress = (bytes: number): void => {
    done += bytes;
    onProgress?.(done, total);
  };
  const pairs = momentPairs(a, b, namesA);
  // Which file of a folder holds each tensor (a file's own bytes are the tensor `__file__/PATH`).
  const fileOf = new Map<string, string>();
  for (const f of a.files) if (f.path !== null) for (const t of f.tensors) fileOf.set(t, f.path);
  const where = (name: string): { file?: string } => (fileOf.has(name) ? { file: fileOf.get(name)! } : {});
  const pairOf = new Map<string, MomentPair>();
  for (const p of pairs) pairOf.set(p.m.name, p).set(p.v.name, p);
  /** Sums of moment tensors read together with their partner (for the step), by name. */
  const pairSums = new Map<string, FloatSums>();
  const steps = new Map<string, number>();
  for (const ta of a.tensors) {
    const tb = b.byName.get(ta.name);
    if (!tb) continue;
    if (!sameLayout(ta, tb)) {
      mismatched.push(ta.name);
      continue;
    }
    const eb = DTYPE_BYTES[ta.dtype];
    const bytes = ta.end - ta.begin;
    const elements = bytes / eb;
    const role = roleOf(ta.name, namesA, a instanceof FolderCheckpoint);
    if (LOSSY_DTYPES.has(ta.dtype)) {
      const pair = pairOf.get(ta.name);
      if (pair && !pairSums.has(ta.name)) {
        const sums = await comparePair(a, b, pair, progress);
        pairSums.set(pair.m.name, sums.m).set(pair.v.name, sums.v);
        steps.set(pair.param, relativeError(sums.step.sumSqDiff, sums.step.sumSqA));
      }
      let s = pair ? pairSums.get(ta.name)! : null;
      if (!s) {
        s = emptySums();
        for (let start = 0; start < bytes; start += CHUNK * eb) {
          const end = Math.min(bytes, start + CHUNK * eb);
          const ra = await a.tensorBytes(ta, start, end);
          const rb = await b.tensorBytes(tb, start, end);
          accumulate(s, toFloat32(ra, ta.dtype), toFloat32(rb, tb.dtype), ra, rb, eb);
          progress(end - start);
        }
      }
      const r = roleSums[role];
      r.sumSqA += s.sumSqA;
      r.sumSqDiff += s.sumSqDiff;
      roleCounts[role]++;
      tensors.push({
        name: ta.name, ...where(ta.name), role, dtype: ta.dtype, elements, changed: s.changed,
        relError: relativeError(s.sumSqDiff, s.sumSqA), maxAbs: s.maxAbs, nonFiniteMismatch: s.nonFiniteMismatch,
      });
    } else {
      let changed = 0;
      for (let start = 0; start < bytes; start += CHUNK * eb) {
        const end = Math.min(bytes, start + CHUNK * eb);
        const ra = await a.tensorBytes(ta, start, end);
        const rb = await b.tensorBytes(tb, start, end);
        for (let i = 0; i < ra.length; i += eb) if (!sameBits(ra, rb, i / eb, eb)) changed++;
        progress(end - start);
      }
      tensors.push({ name: ta.name, ...where(ta.name), role, dtype: ta.dtype, elements, changed, relError: null, maxAbs: null, nonFiniteMismatch: 0 });
    }
  }
  const byRole = Object.fromEntries((['weight', 'exp_avg', 'exp_avg_sq', 'other'] as const).map((r) => [r, {
    relError: roleCounts[r] === 0 ? null : relativeError(roleSums[r].sumSqDiff, roleSums[r].sumSqA),
    tensors: roleCounts[r],
  }])) as CompareReport['byRole'];
  const identical = onlyInA.length === 0 && onlyInB.length === 0 && mismatched.length === 0
    && tensors.every((t) => t.changed === 0);
  return { a: pathA, b: pathB, tensors, steps: pairs.map((p) => ({ name: p.param, stepRelError: steps.get(p.param)! })), onlyInA, onlyInB, mismatched, byRole, identical };
}

/** A parameter's two moments, on both sides. */
interface MomentPair {
  param: string;
  m: TensorInfo;
  v: TensorInfo;
  mb: TensorInfo;
  vb: TensorInfo;
}

/** Every parameter whose moments both sides have, float and of one layout: the ones with a first Adam step. */
function momentPairs(a: Checkpoint, b: Checkpoint, namesA: ReadonlySet<string>): MomentPair[] {
  const out: MomentPair[] = [];
  for (const param of paramsOf(namesA)) {
    const [mName, vName] = momentNames(param);
    const m = a.byName.get(mName);
    const v = a.byName.get(vName);
    const mb = b.byName.get(mName);
    const vb = b.byName.get(vName);
    if (!m || !v || !mb || !vb) continue;
    if (!sameLayout(m, mb) || !sameLayout(v, vb) || !sameLayout(m, v) || !LOSSY_DTYPES.has(m.dtype)) continue;
    out.push({ param, m, v, mb, vb });
  }
  return out;
}

/**
 * Both moments of a parameter in one pass, chunk by chunk: their own
 * differences and the first Adam step's, so each moment is read once.
 */
async function comparePair(a: Checkpoint, b: Checkpoint, p: MomentPair, progress: (bytes: number) => void): Promise<{ m: FloatSums; v: FloatSums; step: FloatSums }> {
  const sums = { m: emptySums(), v: emptySums(), step: emptySums() };
  const eb = DTYPE_BYTES[p.m.dtype];
  const bytes = p.m.end - p.m.begin;
  for (let start = 0; start < bytes; start += CHUNK * eb) {
    const end = Math.min(bytes, start + CHUNK * eb);
    const [rma, rmb, rva, rvb] = [await a.tensorBytes(p.m, start, end), await b.tensorBytes(p.mb, start, end), await a.tensorBytes(p.v, start, end), await b.tensorBytes(p.vb, start, end)];
    const [ma, mb, va, vb] = [toFloat32(rma, p.m.dtype), toFloat32(rmb, p.mb.dtype), toFloat32(rva, p.v.dtype), toFloat32(rvb, p.vb.dtype)];
    accumulate(sums.m, ma, mb, rma, rmb, eb);
    accumulate(sums.v, va, vb, rva, rvb, eb);
    accumulateStep(sums.step, ma, va, mb, vb);
    progress(2 * (end - start));
  }
  return sums;
}

function pct(x: number | null): string {
  if (x === null) return '-';
  if (!Number.isFinite(x)) return 'inf';
  return `${(100 * x).toPrecision(3)}%`;
}

/** A tensor as the report names it: a file's own bytes by the file, others with their file when in a folder. */
export function describeTensor(t: Pick<TensorDiff, 'name' | 'file'>): string {
  if (t.name.startsWith(FILE_PREFIX)) return printable(t.name.slice(FILE_PREFIX.length));
  return t.file !== undefined ? `${printable(t.name)} in ${printable(t.file)}` : printable(t.name);
}

/**
 * The human-readable report.
 * @param r the comparison
 * @param top how many tensors to list, worst first
 */
export function formatCompare(r: CompareReport, top = 10): string {
  const lines: string[] = [`${printable(r.a)} -> ${printable(r.b)}`];
  if (r.identical) {
    lines.push(`identical: all ${r.tensors.length} tensors have the same bits`);
    return `${lines.join('\n')}\n`;
  }
  for (const [label, list] of [['only in A', r.onlyInA], ['only in B', r.onlyInB], ['dtype or shape differs', r.mismatched]] as const) {
    if (list.length) lines.push(`${label}: ${list.slice(0, top).map(printable).join(', ')}${list.length > top ? `, ... (${list.length})` : ''}`);
  }
  lines.push('relative error ||a-b||/||a|| of float tensors, by role:');
  for (const [role, v] of Object.entries(r.byRole)) if (v.tensors) lines.push(`  ${role.padEnd(10)} ${pct(v.relError).padStart(8)}  (${v.tensors} tensors)`);
  const raw = r.tensors.filter((t) => t.relError === null);
  if (raw.length) {
    const differ = raw.filter((t) => t.changed > 0);
    const names = differ.slice(0, top).map(describeTensor).join(', ');
    // With --top 0 no names are listed, only the count.
    lines.push(`other tensors and files (compared bit for bit): ${differ.length} of ${raw.length} differ${differ.length && top > 0 ? `: ${names}${differ.length > top ? ', ...' : ''}` : ''}`);
  }
  const steps = [...r.steps].sort((x, y) => y.stepRelError - x.stepRelError);
  if (steps.length) {
    const all = steps.map((s) => s.stepRelError).sort((x, y) => x - y);
    lines.push(`first Adam step m/(sqrt(v)+eps) after resuming: median relative error ${pct(all[all.length >> 1]!)}, worst ${pct(all[all.length - 1]!)} (${printable(steps[0]!.name)})`);
  }
  const worst = [...r.tensors].filter((t) => t.changed > 0)
    .sort((x, y) => (y.relError ?? -1) - (x.relError ?? -1)).slice(0, top);
  if (worst.length) {
    lines.push(`most changed tensors (of ${r.tensors.filter((t) => t.changed > 0).length} changed):`);
    for (const t of worst) {
      const nf = t.nonFiniteMismatch ? `, ${t.nonFiniteMismatch} non-finite mismatches` : '';
      lines.push(`  ${pct(t.relError).padStart(8)}  ${describeTensor(t)} (${t.dtype}, ${((100 * t.changed) / Math.max(1, t.elements)).toFixed(1)}% of ${t.elements} elements changed, max |a-b| ${t.maxAbs === null ? '-' : t.maxAbs.toPrecision(3)}${nf})`);
    }
  }
  return `${lines.join('\n')}\n`;
}

/** Error limits of `excp compare`: any tensor, or per role. */
export interface CompareLimits {
  /** Every tensor (`--max-error`): float tensors by relative error, others must be equal. */
  all?: number | undefined;
  /** Weights (`--max-weight-error`). */
  weight?: number | undefined;
  /** exp_avg and exp_avg_sq (`--max-moment-error`). */
  moment?: number | undefined;
  /** The first Adam step after resuming, per parameter (`--max-step-error`). */
  step?: number | undefined;
}

/**
 * The first limit a comparison exceeds, in words, or null.
 * @param r the comparison
 * @param limits the limits given
 * @returns one line naming the tensor (and its file), its error and the flag; null when every limit holds
 * @throws ExcpError ERR_MISMATCH when the tensor sets differ (nothing to measure against a limit)
 */
export function exceededLimit(r: CompareReport, limits: CompareLimits): string | null {
  if (r.onlyInA.length || r.onlyInB.length || r.mismatched.length) {
    throw new ExcpError('ERR_MISMATCH', `compare: the checkpoints do not have the same tensors (${r.onlyInA.length} only in A, ${r.onlyInB.length} only in B, ${r.mismatched.length} of another dtype or shape)`);
  }
  const errorOf = (t: TensorDiff): number => (t.nonFiniteMismatch ? Infinity : t.relError ?? (t.changed ? Infinity : 0));
  const checks: [string, number | undefined, (t: TensorDiff) => boolean][] = [
    ['--max-weight-error', limits.weight, (t) => t.role === 'weight'],
    ['--max-moment-error', limits.moment, (t) => t.role === 'exp_avg' || t.role === 'exp_avg_sq'],
    ['--max-error', limits.all, () => true],
  ];
  for (const [flag, limit, applies] of checks) {
    if (limit === undefined) continue;
    let worst: TensorDiff | null = null;
    for (const t of r.tensors) if (applies(t) && errorOf(t) > limit && (!worst || errorOf(t) > errorOf(worst))) worst = t;
    if (worst) {
      const e = errorOf(worst);
      const what = worst.relError === null ? `differs in ${worst.changed} of ${worst.elements} elements (compared bit for bit)` : `has a relative error of ${Number.isFinite(e) ? e.toPrecision(3) : 'inf'}`;
      const name = worst.name.startsWith(FILE_PREFIX) ? `file ${printable(worst.name.slice(FILE_PREFIX.length))}` : `'${printable(worst.name)}'${worst.file !== undefined ? ` in ${printable(worst.file)}` : ''}`;
      return `${worst.role === 'other' ? 'tensor ' : `${worst.role} `}${name} ${what}, above ${flag} ${limit}`;
    }
  }
  if (limits.step !== undefined) {
    const worst = [...r.steps].sort((x, y) => y.stepRelError - x.stepRelError)[0];
    if (worst && worst.stepRelError > limits.step) {
      return `the first Adam step of '${printable(worst.name)}' has a relative error of ${worst.stepRelError.toPrecision(3)}, above --max-step-error ${limits.step}`;
    }
  }
  return null;
}

/**
 * The largest relative error of weights and moments, for `--max-error`.
 * @throws ExcpError ERR_MISMATCH when the tensor sets differ
 */
export function worstRelativeError(r: CompareReport): number {
  if (r.onlyInA.length || r.onlyInB.length || r.mismatched.length) {
    throw new ExcpError('ERR_MISMATCH', `compare: the checkpoints do not have the same tensors (${r.onlyInA.length} only in A, ${r.onlyInB.length} only in B, ${r.mismatched.length} of another dtype or shape)`);
  }
  return Math.max(0, ...r.tensors.map((t) => (t.nonFiniteMismatch ? Infinity : t.relError ?? (t.changed ? Infinity : 0))));
}
