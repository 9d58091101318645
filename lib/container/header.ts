/**
 * The compact header body of container format version 2 (spec/FORMAT.md,
 * "Header body"): options as a difference from a fixed reference, tensor
 * names front-coded, dtype/role codes, and the file table, whose records
 * belong to their file kinds (lib/container/kinds.ts). Apart from the footer
 * body because the two share nothing but the field encodings (fields.ts).
 */
import { ByteReader, ByteWriter } from '../core/bytes.js';
import { type DType, elementCount } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { MAX_TENSORS } from '../core/constants.js';
import type { ContainerHeader, EntrySpec, FileSpec, Role, TensorSpec } from '../model/checkpoint.js';
import { entryTensors } from '../model/pack.js';
import { corrupt, pack, readBytes, readCount, readJson, readOptional, readString, strictUtf8, unpack, unzigzag, utf8, writeOptional, writeString, zigzag } from './fields.js';
import type { FileKinds } from './kinds.js';

/** Entry flag of a pack (lib/pack.ts): member count and members follow. */
const PACK = 64;

const DTYPE_CODES: readonly DType[] = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U64', 'U32', 'U16', 'U8', 'BOOL', 'F8_E4M3', 'F8_E5M2'];
const ROLE_CODES: readonly Role[] = ['weight', 'exp_avg', 'exp_avg_sq', 'plain'];
/**
 * Options a header stores as a difference from (options mode 1), by format
 * version. Part of the format: never change one (DEFAULT_OPTIONS may change;
 * a new version gets a new reference, usually the defaults of its day).
 */
const REFERENCE_OPTIONS: Readonly<Record<number, Readonly<Record<string, unknown>>>> = Object.freeze({
  2: Object.freeze({ alpha: 5e-5, weightRule: 'magnitude', keep: 0.3, beta: 2, bits: 2, lossless: false, chunkElements: 1048576, vFill: 'mean', vDomain: 'log' }),
  3: Object.freeze({
    alpha: 5e-5, weightRule: 'dither', keep: 0.3, beta: 2, bits: 2, lossless: false, chunkElements: 1048576, vFill: 'mean', vDomain: 'log',
    updateError: 0.72, keyframe: 'lossy',
  }),
  4: Object.freeze({
    alpha: 5e-5, weightRule: 'dither', keep: 0.3, beta: 2, bits: 2, lossless: false, chunkElements: 1048576, vFill: 'mean', vDomain: 'log',
    updateError: 0.8, keyframe: 'lossy',
  }),
});

function referenceOf(version: number): Readonly<Record<string, unknown>> {
  return REFERENCE_OPTIONS[version] ?? corrupt(`options of format version ${version}`);
}

/** Options as mode 1 (JSON of the keys that differ from REFERENCE_OPTIONS) when that rebuilds the same JSON text, else mode 0 (the JSON text). */
function writeOptions(w: ByteWriter, options: object, version: number): void {
  const reference = referenceOf(version);
  const full = JSON.stringify(options);
  const diff: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(options)) if (JSON.stringify(v) !== JSON.stringify(reference[k])) diff[k] = v;
  if (JSON.stringify({ ...reference, ...diff }) === full) {
    w.u8(1);
    writeString(w, JSON.stringify(diff));
  } else {
    w.u8(0);
    writeString(w, full);
  }
}

function readOptions(r: ByteReader, version: number): ContainerHeader['options'] {
  const mode = r.u8();
  if (mode > 1) corrupt(`options mode ${mode}`);
  const value = readJson(r, 'options');
  if (mode === 0) return value as ContainerHeader['options'];
  if (!value || typeof value !== 'object' || Array.isArray(value)) corrupt('options difference');
  return { ...referenceOf(version), ...(value as object) } as unknown as ContainerHeader['options'];
}

/** Most dimensions of one tensor. */
const MAX_RANK = 64;

/**
 * The v2 header body (mode byte first).
 * @param header a valid header
 * @param kinds the file kinds (each file's record is its kind's)
 * @param version the format version written (its options reference)
 */
export function encodeHeaderBody(header: ContainerHeader, kinds: FileKinds, version: number): Uint8Array {
  const w = new ByteWriter(4096);
  writeString(w, header.tool);
  writeOptions(w, header.options, version);
  w.varint(header.files.length);
  for (const f of header.files) {
    const kind = kinds.named(f.kind);
    if (!kind) throw new ExcpError('ERR_INVALID_ARG', `container: unknown file kind '${f.kind}'`);
    w.u8(kind.code);
    kind.write(w, f, header.tensors);
  }
  // Column by column (names, codes, shapes): longer repeats for the lz stage.
  w.varint(header.tensors.length);
  let previousName = new Uint8Array(0);
  for (const t of header.tensors) {
    const name = utf8.encode(t.name);
    let shared = 0;
    while (shared < name.length && shared < previousName.length && name[shared] === previousName[shared]) shared++;
    w.varint(shared);
    w.varint(name.length - shared);
    w.bytes(name.subarray(shared));
    previousName = name;
  }
  for (const t of header.tensors) w.u8(DTYPE_CODES.indexOf(t.dtype) | (ROLE_CODES.indexOf(t.role) << 4));
  for (const t of header.tensors) {
    w.varint(t.shape.length);
    for (const d of t.shape) w.varint(d);
  }
  w.varint(header.entries.length);
  let previous = -1;
  for (const e of header.entries) {
    const flags = (e.kind === 'param' ? 1 : 0) | (e.exactWeight ? 2 : 0) | (e.exactMoments ? 4 : 0) | (e.base ? 8 : 0)
      | (e.expAvg !== null ? 16 : 0) | (e.expAvgSq !== null ? 32 : 0) | (e.kind === 'pack' ? PACK : 0);
    w.u8(flags);
    if (e.kind === 'pack') w.varint(e.members!.length - 2);
    for (const t of entryTensors(e)) {
      w.varint(zigzag(t - previous - 1));
      previous = t;
    }
  }
  writeOptional(w, header.info === undefined ? null : JSON.stringify(header.info));
  return pack(w.finish());
}

/**
 * Parse a v2 header body (not yet validated: call validateHeader).
 * Tensor `entry` and entry `elements` are not stored: they follow from the
 * entries' members and the weight's shape.
 */
export function decodeHeaderBody(body: Uint8Array, kinds: FileKinds, version: number): ContainerHeader {
  const r = new ByteReader(unpack(body, 'header'), 'container: header');
  const tool = readString(r, 'tool');
  const options = readOptions(r, version);
  const files: FileSpec[] = [];
  const completions: ((tensors: readonly TensorSpec[]) => void)[] = [];
  const fileCount = readCount(r, 2, MAX_TENSORS, 'file');
  for (let i = 0; i < fileCount; i++) {
    const code = r.u8();
    const kind = kinds.coded(code) ?? corrupt(`file ${i} kind ${code}`);
    const { file, complete } = kind.read(r);
    files.push(file);
    if (complete) completions.push(complete);
  }
  const tensors: TensorSpec[] = [];
  const tensorCount = readCount(r, 4, MAX_TENSORS, 'tensor');
  const names: string[] = [];
  let previousName = new Uint8Array(0);
  for (let i = 0; i < tensorCount; i++) {
    const shared = r.varint();
    if (shared > previousName.length) corrupt(`tensor ${i} name prefix ${shared}`);
    const suffix = readBytes(r);
    const name = new Uint8Array(shared + suffix.length);
    name.set(previousName.subarray(0, shared));
    name.set(suffix, shared);
    try {
      names.push(strictUtf8.decode(name));
    } catch {
      corrupt(`tensor ${i} name: not UTF-8`);
    }
    previousName = name;
  }
  const codes = r.bytesView(tensorCount);
  for (let i = 0; i < tensorCount; i++) {
    const code = codes[i]!;
    const dtype = DTYPE_CODES[code & 15];
    const role = ROLE_CODES[code >> 4];
    if (dtype === undefined || role === undefined) corrupt(`tensor ${i} dtype/role code ${code}`);
    const rank = readCount(r, 1, MAX_RANK, 'tensor rank');
    const shape: number[] = [];
    for (let k = 0; k < rank; k++) shape.push(r.varint());
    tensors.push({ name: names[i]!, dtype, shape, role, entry: -1 });
  }
  const entries: EntrySpec[] = [];
  const entryCount = readCount(r, 2, tensorCount, 'entry');
  let previous = -1;
  const member = (present: boolean): number | null => {
    if (!present) return null;
    previous = previous + 1 + unzigzag(r.varint());
    if (!Number.isInteger(previous) || previous < 0 || previous >= tensorCount) corrupt(`entry tensor ${previous}`);
    return previous;
  };
  for (let i = 0; i < entryCount; i++) {
    const flags = r.u8();
    if (flags > 127 || (flags & PACK && flags !== (PACK | 2))) corrupt(`entry ${i} flags ${flags}`);
    let entry: EntrySpec;
    if (flags & PACK) {
      const count = readCount(r, 1, tensorCount - 2, `entry ${i} pack member`) + 2;
      const members: number[] = [];
      let elements = 0;
      for (let k = 0; k < count; k++) {
        const t = member(true)!;
        members.push(t);
        elements += elementCount(tensors[t]!.shape, `container: tensor '${tensors[t]!.name}'`);
      }
      entry = { kind: 'pack', weight: members[0]!, expAvg: null, expAvgSq: null, exactWeight: true, exactMoments: false, base: false, elements, members };
    } else {
      const weight = member(true)!;
      const expAvg = member((flags & 16) !== 0);
      const expAvgSq = member((flags & 32) !== 0);
      const elements = elementCount(tensors[weight]!.shape, `container: tensor '${tensors[weight]!.name}'`);
      entry = { kind: flags & 1 ? 'param' : 'plain', weight, expAvg, expAvgSq, exactWeight: (flags & 2) !== 0, exactMoments: (flags & 4) !== 0, base: (flags & 8) !== 0, elements };
    }
    entries.push(entry);
    for (const t of entryTensors(entry)) {
      if (tensors[t]!.entry !== -1) corrupt(`tensor ${t} in two entries`);
      tensors[t]!.entry = i;
    }
  }
  for (const complete of completions) complete(tensors);
  const info = readOptional(r, 'info');
  if (r.remaining !== 0) corrupt(`header: ${r.remaining} trailing bytes`);
  const header: ContainerHeader = { tool, options, tensors, entries, files };
  if (info !== null) {
    try {
      header.info = JSON.parse(info) as Record<string, unknown>;
    } catch {
      corrupt('info: not JSON');
    }
  }
  return header;
}
