/**
 * Structural validation of a container header read from an untrusted file
 * (style guide 7, the safetensors discipline applied to our own format):
 * options in range, tensors and entries that own each other exactly once,
 * file paths that cannot leave the output folder, layouts their kinds accept.
 * Apart from container.ts because it is the attack surface of the reader
 * and is easier to review, and to extend, as one list of checks.
 */
import { type DType, elementCount, isDType } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { MAX_CHUNK_ELEMENTS, MAX_TENSORS, MIN_CHUNK_ELEMENTS } from '../core/constants.js';
import type { ContainerHeader, Role } from '../model/checkpoint.js';
import { entryTensors } from '../model/pack.js';
import type { FileKinds } from './kinds.js';

const ROLES: ReadonlySet<Role> = new Set<Role>(['weight', 'exp_avg', 'exp_avg_sq', 'plain']);

function bad(what: string): never {
  throw new ExcpError('ERR_BAD_HEADER', `container: invalid header: ${what}`);
}

/**
 * Structural checks on a header read from an untrusted file.
 * @param h the parsed header (v1 JSON or v2 body)
 * @param kinds the file kinds, which check their files' layouts
 * @throws ExcpError ERR_BAD_HEADER naming the first check that fails
 */
export function validateHeader(h: ContainerHeader, kinds: FileKinds): void {
  if (!h || typeof h !== 'object') bad('not an object');
  if (typeof h.tool !== 'string') bad('tool');
  const o = h.options;
  if (!o || typeof o !== 'object') bad('options missing');
  if (!Number.isSafeInteger(o.chunkElements) || o.chunkElements < MIN_CHUNK_ELEMENTS || o.chunkElements > MAX_CHUNK_ELEMENTS) bad(`chunkElements ${String(o.chunkElements)}`);
  if (!Number.isInteger(o.bits) || o.bits < 1 || o.bits > 8) bad(`bits ${String(o.bits)}`);
  if (!Array.isArray(h.tensors) || h.tensors.length > MAX_TENSORS) bad('tensors');
  if (!Array.isArray(h.entries) || h.entries.length > h.tensors.length) bad('entries');
  if (!Array.isArray(h.files)) bad('files');
  const owner = new Int32Array(h.tensors.length).fill(-1);
  h.tensors.forEach((t, i) => {
    if (!t || typeof t.name !== 'string' || !isDType(t.dtype as unknown) || !Array.isArray(t.shape) || !ROLES.has(t.role)) bad(`tensor ${i}`);
    elementCount(t.shape, `container: tensor '${t.name}'`);
    if (!Number.isInteger(t.entry) || t.entry < 0 || t.entry >= h.entries.length) bad(`tensor ${i} entry`);
  });
  h.entries.forEach((e, i) => {
    if (!e || (e.kind !== 'param' && e.kind !== 'plain' && e.kind !== 'pack')) bad(`entry ${i} kind`);
    if ((e.kind === 'pack') !== (e.members !== undefined)) bad(`entry ${i} members`);
    if (e.kind === 'pack' && (!Array.isArray(e.members) || e.members.length < 2 || e.members.length > MAX_TENSORS)) bad(`entry ${i} members`);
    const members = entryTensors(e);
    if (e.kind === 'param' && members.length !== 3) bad(`entry ${i} members`);
    if (e.kind === 'plain' && members.length !== 1) bad(`entry ${i} members`);
    let packElements = 0;
    for (const t of members) {
      if (!Number.isInteger(t) || t < 0 || t >= h.tensors.length || owner[t] !== -1) bad(`entry ${i} tensor ${String(t)}`);
      owner[t] = i;
      const spec = h.tensors[t]!;
      if (spec.entry !== i) bad(`entry ${i} tensor ${String(t)} owner`);
      const count = elementCount(spec.shape, 'container');
      packElements += count;
      if (e.kind !== 'pack' && count !== e.elements) bad(`entry ${i} element count`);
    }
    if (e.kind === 'pack') {
      // One exact chunk of one dtype, no base: what lib/pack.ts makes and the codec can cut back.
      if (e.weight !== members[0] || e.expAvg !== null || e.expAvgSq !== null) bad(`entry ${i} pack members`);
      const dtype = h.tensors[e.weight]!.dtype;
      if (members.some((t) => h.tensors[t]!.dtype !== dtype)) bad(`entry ${i} pack dtypes`);
      if (packElements !== e.elements || e.elements > o.chunkElements) bad(`entry ${i} pack element count`);
      if (!e.exactWeight || e.exactMoments || e.base) bad(`entry ${i} pack flags`);
    } else if (e.kind === 'param') {
      const m = h.tensors[e.expAvg!]!;
      const v = h.tensors[e.expAvgSq!]!;
      if (m.dtype !== v.dtype) bad(`entry ${i} moment dtypes`);
      if (!e.exactWeight && !isLossyDtype(h.tensors[e.weight]!.dtype)) bad(`entry ${i} lossy weight dtype`);
      if (!e.exactMoments && !isLossyDtype(m.dtype)) bad(`entry ${i} lossy moment dtype`);
    } else if (!e.exactWeight) {
      bad(`entry ${i}: plain entries are exact`);
    }
    if (typeof e.base !== 'boolean' || typeof e.exactWeight !== 'boolean' || typeof e.exactMoments !== 'boolean') bad(`entry ${i} flags`);
  });
  if (owner.some((x) => x === -1)) bad('a tensor belongs to no entry');
  validateFiles(h, kinds);
  if (h.info !== undefined && (h.info === null || typeof h.info !== 'object' || Array.isArray(h.info))) bad('info');
}

/**
 * A file path of a folder container: relative, '/'-separated, no empty, `.`
 * or `..` component, no backslash, NUL or drive letter, so restore can never
 * write outside the output folder.
 */
export function isSafeRelativePath(path: unknown): path is string {
  if (typeof path !== 'string' || path.length === 0 || path.length > 4096) return false;
  if (/[\\\0]/.test(path)) return false;
  return path.split('/').every((part) => part !== '' && part !== '.' && part !== '..');
}

/**
 * Checks on `files` that every kind shares: a known kind, paths that stay
 * inside the output folder (or the one pathless file of a single-file
 * container), each tensor in at most one file (all of them in a folder);
 * then the kind's own checks of its layout.
 */
function validateFiles(h: ContainerHeader, kinds: FileKinds): void {
  const used = new Uint8Array(h.tensors.length);
  const single = h.files.length === 1 && h.files[0]?.path === null;
  const paths = new Set<string>();
  h.files.forEach((f, i) => {
    const what = `file ${i}`;
    if (!f || typeof f !== 'object' || typeof f.kind !== 'string' || !Array.isArray(f.tensors)) bad(what);
    const kind = kinds.named(f.kind) ?? bad(`${what} kind ${JSON.stringify(f.kind)}`);
    if (!single) {
      if (!isSafeRelativePath(f.path)) bad(`${what} path ${JSON.stringify(f.path)}`);
      if (paths.has(f.path)) bad(`${what} path ${JSON.stringify(f.path)} repeats`);
      paths.add(f.path);
    }
    for (const t of f.tensors) {
      if (!Number.isInteger(t) || t < 0 || t >= h.tensors.length || used[t]) bad(`${what} tensor ${String(t)}`);
      used[t] = 1;
    }
    kind.validate(f, h.tensors, (reason) => bad(`${what}: ${reason}`));
  });
  if (!single) {
    for (const p of paths) {
      const parts = p.split('/');
      for (let k = 1; k < parts.length; k++) {
        if (paths.has(parts.slice(0, k).join('/'))) bad(`path ${JSON.stringify(parts.slice(0, k).join('/'))} is both a file and a folder`);
      }
    }
    if (used.some((u) => u === 0)) bad('a tensor belongs to no file');
  }
}

function isLossyDtype(d: DType): boolean {
  return d === 'F32' || d === 'F16' || d === 'BF16';
}
