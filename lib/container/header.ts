/**
 * The compact header body of container format version 2 (spec/FORMAT.md,
 * "Header body"): options as a difference from a fixed reference, tensor
 * names front-coded, dtype/role codes, and safetensors raw headers rebuilt
 * from the tensors when the usual writers made them. Apart from the footer
 * body because the two share nothing but the field encodings
 * (container-v2.ts), and the header is the larger, format-heavy half.
 */
import { ByteReader, ByteWriter } from '../core/bytes.js';
import { type DType, elementCount } from '../core/dtype.js';
import { MAX_TENSORS } from '../core/constants.js';
import { base64ToBytes, bytesToBase64, corrupt, pack, readBytes, readCount, readIndices, readJson, readOptional, readString, strictUtf8, unpack, unzigzag, utf8, writeIndices, writeOptional, writeString, zigzag } from './fields.js';
import type { ContainerHeader, FileSpec } from './format.js';
import { entryTensors } from '../model/pack.js';
import type { EntrySpec, Role, TensorSpec } from '../model/checkpoint.js';

/** Entry flag of a pack (lib/pack.ts): member count and members follow. */
const PACK = 64;

const DTYPE_CODES: readonly DType[] = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U64', 'U32', 'U16', 'U8', 'BOOL', 'F8_E4M3', 'F8_E5M2'];
const ROLE_CODES: readonly Role[] = ['weight', 'exp_avg', 'exp_avg_sq', 'plain'];
const FILE_KINDS = ['safetensors', 'blob', 'torch'] as const;
/** rawHeader encodings: the base64 text verbatim, the decoded bytes as UTF-8 text, the decoded bytes. */
const RAW_BASE64 = 0;
const RAW_TEXT = 1;
const RAW_BYTES = 2;
/** The decoded header is what {@link buildRawHeader} makes from the file's tensors. */
const RAW_DERIVED = 3;
const DTYPE_SIZE: Readonly<Record<DType, number>> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1 };

/** How a raw safetensors header is rebuilt: key order, metadata JSON text, trailing spaces. */
interface RawRecipe {
  sorted: boolean;
  metadata: string | null;
  pad: number;
}

/**
 * The safetensors header (u64 length, JSON, space padding) that the usual
 * writers (Python safetensors, lib/safetensors.ts) make: compact JSON,
 * `__metadata__` first, tensors in data order or sorted by name, data
 * offsets contiguous in the file's data order.
 */
function buildRawHeader(tensors: readonly TensorSpec[], recipe: RawRecipe): Uint8Array {
  let offset = 0;
  const parts = tensors.map((t) => {
    const size = elementCount(t.shape, `container: tensor '${t.name}'`) * DTYPE_SIZE[t.dtype];
    const text = `${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${offset},${offset + size}]}`;
    offset += size;
    return { name: t.name, text };
  });
  if (recipe.sorted) parts.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const items = parts.map((x) => x.text);
  if (recipe.metadata !== null) items.unshift(`"__metadata__":${recipe.metadata}`);
  const json = utf8.encode(`{${items.join(',')}}${' '.repeat(recipe.pad)}`);
  const out = new Uint8Array(json.length + 8);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.length), true);
  out.set(json, 8);
  return out;
}

/** The recipe that rebuilds `raw` exactly from the tensors, or null. */
function findRecipe(raw: Uint8Array, tensors: readonly TensorSpec[]): RawRecipe | null {
  if (raw.length < 10) return null;
  let text: string;
  let metadata: unknown;
  try {
    text = strictUtf8.decode(raw.subarray(8));
    metadata = (JSON.parse(text) as Record<string, unknown>).__metadata__;
  } catch {
    return null;
  }
  const core = text.replace(/ +$/, '');
  const pad = text.length - core.length;
  const meta = metadata === undefined ? null : JSON.stringify(metadata);
  for (const sorted of [true, false]) {
    const recipe = { sorted, metadata: meta, pad };
    try {
      const built = buildRawHeader(tensors, recipe);
      if (built.length === raw.length && built.every((b, i) => b === raw[i])) return recipe;
    } catch {
      return null;
    }
  }
  return null;
}
/**
 * Options a version 2 header stores as a difference from (options mode 1).
 * Part of the format: never change it (DEFAULT_OPTIONS may change).
 */
const REFERENCE_OPTIONS: Readonly<Record<string, unknown>> = Object.freeze({
  alpha: 5e-5, weightRule: 'magnitude', keep: 0.3, beta: 2, bits: 2, lossless: false, chunkElements: 1048576, vFill: 'mean', vDomain: 'log',
});

/** Options as mode 1 (JSON of the keys that differ from REFERENCE_OPTIONS) when that rebuilds the same JSON text, else mode 0 (the JSON text). */
function writeOptions(w: ByteWriter, options: object): void {
  const full = JSON.stringify(options);
  const diff: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(options)) if (JSON.stringify(v) !== JSON.stringify(REFERENCE_OPTIONS[k])) diff[k] = v;
  if (JSON.stringify({ ...REFERENCE_OPTIONS, ...diff }) === full) {
    w.u8(1);
    writeString(w, JSON.stringify(diff));
  } else {
    w.u8(0);
    writeString(w, full);
  }
}

function readOptions(r: ByteReader): ContainerHeader['options'] {
  const mode = r.u8();
  if (mode > 1) corrupt(`options mode ${mode}`);
  const value = readJson(r, 'options');
  if (mode === 0) return value as ContainerHeader['options'];
  if (!value || typeof value !== 'object' || Array.isArray(value)) corrupt('options difference');
  return { ...REFERENCE_OPTIONS, ...(value as object) } as unknown as ContainerHeader['options'];
}

/** Most dimensions of one tensor. */
const MAX_RANK = 64;
function writeRawHeader(w: ByteWriter, base64: string, tensors: readonly TensorSpec[]): void {
  const bytes = base64ToBytes(base64);
  if (bytes === null || bytesToBase64(bytes) !== base64) {
    w.u8(RAW_BASE64);
    writeString(w, base64);
    return;
  }
  const recipe = findRecipe(bytes, tensors);
  if (recipe) {
    w.u8(RAW_DERIVED);
    w.u8(recipe.sorted ? 1 : 0);
    writeOptional(w, recipe.metadata);
    w.varint(recipe.pad);
    return;
  }
  try {
    strictUtf8.decode(bytes);
    w.u8(RAW_TEXT);
  } catch {
    w.u8(RAW_BYTES);
  }
  w.varint(bytes.length);
  w.bytes(bytes);
}

/** A raw header, or its recipe when it is rebuilt from the tensors (once they are read). */
function readRawHeader(r: ByteReader): string | RawRecipe {
  const mode = r.u8();
  if (mode === RAW_BASE64) return readString(r, 'rawHeader');
  if (mode === RAW_TEXT || mode === RAW_BYTES) return bytesToBase64(readBytes(r));
  if (mode === RAW_DERIVED) {
    const order = r.u8();
    if (order > 1) corrupt(`rawHeader order ${order}`);
    const metadata = readOptional(r, 'metadata');
    const pad = r.varint();
    if (pad > 4096) corrupt(`rawHeader padding ${pad}`);
    return { sorted: order === 1, metadata, pad };
  }
  return corrupt(`rawHeader encoding ${mode}`);
}

/**
 * The v2 header body (mode byte first).
 * @param header a valid header
 */
export function encodeHeaderBody(header: ContainerHeader): Uint8Array {
  const w = new ByteWriter(4096);
  writeString(w, header.tool);
  writeOptions(w, header.options);
  w.varint(header.files.length);
  for (const f of header.files) {
    w.u8(FILE_KINDS.indexOf(f.kind));
    if (f.kind === 'safetensors') {
      writeOptional(w, f.path);
      writeRawHeader(w, f.rawHeader, f.tensors.map((t) => header.tensors[t]!));
      writeIndices(w, f.tensors);
    } else if (f.kind === 'blob') {
      writeString(w, f.path);
      w.varint(f.tensor);
    } else {
      writeString(w, f.path);
      writeIndices(w, f.tensors);
      writeString(w, JSON.stringify(f.layout));
    }
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
export function decodeHeaderBody(body: Uint8Array): ContainerHeader {
  const r = new ByteReader(unpack(body, 'header'), 'container: header');
  const tool = readString(r, 'tool');
  const options = readOptions(r);
  const files: FileSpec[] = [];
  const recipes: { file: FileSpec & { kind: 'safetensors' }; recipe: RawRecipe }[] = [];
  const fileCount = readCount(r, 2, MAX_TENSORS, 'file');
  for (let i = 0; i < fileCount; i++) {
    const kind = FILE_KINDS[r.u8()];
    if (kind === 'safetensors') {
      const path = readOptional(r, 'path');
      const raw = readRawHeader(r);
      const file = { kind, path, rawHeader: typeof raw === 'string' ? raw : '', tensors: readIndices(r, 'file tensors') };
      if (typeof raw !== 'string') recipes.push({ file, recipe: raw });
      files.push(file);
    } else if (kind === 'blob') {
      files.push({ kind, path: readString(r, 'path'), tensor: r.varint() });
    } else if (kind === 'torch') {
      const path = readString(r, 'path');
      const tensors = readIndices(r, 'file tensors');
      files.push({ kind, path, tensors, layout: readJson(r, 'layout') });
    } else {
      corrupt(`file ${i} kind`);
    }
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
  for (const { file, recipe } of recipes) {
    const members = file.tensors.map((t) => tensors[t] ?? corrupt(`file tensor ${t}`));
    file.rawHeader = bytesToBase64(buildRawHeader(members, recipe));
  }
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
