/**
 * Compact header and footer bodies of container format version 2
 * (spec/FORMAT.md, "Header body" and "Footer body"): varints, dtype/role
 * codes and raw 8-byte hashes instead of JSON, then the whole body through
 * lib/lz.ts when that is smaller. The in-memory types stay those of
 * lib/container.ts; the caller validates the result (validateHeader,
 * decodeFooter's checks) exactly as for a version 1 JSON body.
 */
import { ByteReader, ByteWriter } from './bytes.js';
import { type DType, elementCount } from './dtype.js';
import { ExcpError } from './errors.js';
import { MAX_JSON_BYTES, MAX_TENSORS } from './constants.js';
import { fingerprintTensors } from './hash.js';
import { lzCompress, lzDecompress } from './lz.js';
import type { ContainerFooter, ContainerHeader, FileSpec, FooterEntry } from './container.js';
import type { EntrySpec, Role, TensorSpec } from './types.js';

/** Body encodings (first byte of a v2 header or footer body). A v1 JSON body starts with '{' (0x7b). */
export const BODY_STORED = 0;
export const BODY_LZ = 1;

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

/** The footer's fingerprints as lib/stream/container.ts buildFooter computes them. */
function fingerprints(header: ContainerHeader, tensorHashes: readonly string[], baseHashes: readonly (string | null)[]): { base: string | null; target: string } {
  const described = (hashes: readonly (string | null)[]) => header.tensors
    .map((t, i) => ({ name: t.name, dtype: t.dtype, shape: t.shape, hash: hashes[i] ?? null }))
    .filter((t): t is { name: string; dtype: DType; shape: number[]; hash: string } => t.hash !== null);
  const baseList = described(baseHashes);
  return { base: baseList.length ? fingerprintTensors(baseList) : null, target: fingerprintTensors(described(tensorHashes)) };
}

/** Most dimensions of one tensor. */
const MAX_RANK = 64;

const utf8 = new TextEncoder();
const strictUtf8 = new TextDecoder('utf-8', { fatal: true });

function corrupt(what: string): never {
  throw new ExcpError('ERR_BAD_HEADER', `container: invalid v2 ${what}`);
}

const zigzag = (v: number): number => (v >= 0 ? 2 * v : -2 * v - 1);
const unzigzag = (v: number): number => (v % 2 === 0 ? v / 2 : -(v + 1) / 2);

function writeString(w: ByteWriter, s: string): void {
  const b = utf8.encode(s);
  w.varint(b.length);
  w.bytes(b);
}

function readBytes(r: ByteReader): Uint8Array {
  return r.bytesView(r.varint());
}

function readString(r: ByteReader, what: string): string {
  try {
    return strictUtf8.decode(readBytes(r));
  } catch (e) {
    if (e instanceof ExcpError) throw e;
    return corrupt(`${what}: not UTF-8`);
  }
}

function readJson(r: ByteReader, what: string): unknown {
  const text = readString(r, what);
  try {
    return JSON.parse(text);
  } catch {
    return corrupt(`${what}: not JSON`);
  }
}

/** A count that must fit in the remaining bytes (each item takes at least `min` bytes). */
function readCount(r: ByteReader, min: number, max: number, what: string): number {
  const n = r.varint();
  if (n > max || n * min > r.remaining) corrupt(`${what} count ${n}`);
  return n;
}

/** Index list as zigzag deltas from previous + 1 (so 0, 1, 2, ... codes as zeros). */
function writeIndices(w: ByteWriter, xs: readonly number[]): void {
  w.varint(xs.length);
  let previous = -1;
  for (const x of xs) {
    w.varint(zigzag(x - previous - 1));
    previous = x;
  }
}

function readIndices(r: ByteReader, what: string): number[] {
  const n = readCount(r, 1, MAX_TENSORS, what);
  const out: number[] = [];
  let previous = -1;
  for (let k = 0; k < n; k++) {
    previous = previous + 1 + unzigzag(r.varint());
    out.push(previous);
  }
  return out;
}

function base64ToBytes(text: string): Uint8Array | null {
  try {
    const binary = atob(text);
    const out = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
    return out;
  } catch {
    return null;
  }
}

function bytesToBase64(bytes: Uint8Array): string {
  let binary = '';
  for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(binary);
}

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

/** Optional string: 0 for absent, else byte length + 1 then the bytes. */
function writeOptional(w: ByteWriter, s: string | null | undefined): void {
  if (s === null || s === undefined) {
    w.varint(0);
    return;
  }
  const b = utf8.encode(s);
  w.varint(b.length + 1);
  w.bytes(b);
}

function readOptional(r: ByteReader, what: string): string | null {
  const n = r.varint();
  if (n === 0) return null;
  try {
    return strictUtf8.decode(r.bytesView(n - 1));
  } catch (e) {
    if (e instanceof ExcpError) throw e;
    return corrupt(`${what}: not UTF-8`);
  }
}

/** Wrap a plain body: mode byte, then stored bytes, or the decoded length and an lz stream. */
function pack(plain: Uint8Array): Uint8Array {
  const packed = lzCompress(plain);
  const w = new ByteWriter(Math.min(plain.length, packed.length) + 16);
  if (packed.length + 8 < plain.length) {
    w.u8(BODY_LZ);
    w.varint(plain.length);
    w.bytes(packed);
  } else {
    w.u8(BODY_STORED);
    w.bytes(plain);
  }
  return w.finish();
}

function unpack(body: Uint8Array, what: string): Uint8Array {
  const r = new ByteReader(body, `container: ${what}`);
  const mode = r.u8();
  if (mode === BODY_STORED) return body.subarray(1);
  if (mode !== BODY_LZ) throw new ExcpError('ERR_BAD_HEADER', `container: ${what} body encoding ${mode} is unknown`);
  const length = r.varint();
  if (length > MAX_JSON_BYTES) throw new ExcpError('ERR_HEADER_TOO_LARGE', `container: ${what} length ${length} exceeds limit ${MAX_JSON_BYTES}`);
  try {
    return lzDecompress(body.subarray(r.offset), length, MAX_JSON_BYTES);
  } catch (e) {
    if (e instanceof ExcpError && e.code === 'ERR_TRUNCATED') throw new ExcpError('ERR_CORRUPT', `container: ${what}: ${e.message}`);
    throw e;
  }
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
      | (e.expAvg !== null ? 16 : 0) | (e.expAvgSq !== null ? 32 : 0);
    w.u8(flags);
    for (const t of [e.weight, e.expAvg, e.expAvgSq]) {
      if (t === null) continue;
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
    if (flags > 63) corrupt(`entry ${i} flags ${flags}`);
    const weight = member(true)!;
    const expAvg = member((flags & 16) !== 0);
    const expAvgSq = member((flags & 32) !== 0);
    const elements = elementCount(tensors[weight]!.shape, `container: tensor '${tensors[weight]!.name}'`);
    entries.push({ kind: flags & 1 ? 'param' : 'plain', weight, expAvg, expAvgSq, exactWeight: (flags & 2) !== 0, exactMoments: (flags & 4) !== 0, base: (flags & 8) !== 0, elements });
    for (const t of [weight, expAvg, expAvgSq]) {
      if (t === null) continue;
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

function writeHash(w: ByteWriter, hex: string): void {
  for (let k = 0; k < 16; k += 2) w.u8(parseInt(hex.slice(k, k + 2), 16));
}

function readHash(r: ByteReader): string {
  let hex = '';
  for (let k = 0; k < 8; k++) hex += r.u8().toString(16).padStart(2, '0');
  return hex;
}

/** A count stored as a varint: safe non-negative integers only (fractions are rounded). */
const asCount = (x: number): number => (Number.isFinite(x) && x > 0 ? Math.min(Number.MAX_SAFE_INTEGER, Math.round(x)) : 0);

/**
 * The v2 footer body (mode byte first).
 * @param footer a valid footer (16-hex-digit hashes)
 * @param header its header (chunk counts and element counts are not repeated)
 */
export function encodeFooterBody(footer: ContainerFooter, header: ContainerHeader): Uint8Array {
  const w = new ByteWriter(1024 + 24 * footer.tensorHashes.length);
  const derived = fingerprints(header, footer.tensorHashes, footer.baseHashes);
  const baseDerived = footer.baseFingerprint !== null && footer.baseFingerprint === derived.base;
  const targetDerived = footer.targetFingerprint === derived.target;
  w.u8((footer.baseFingerprint !== null && !baseDerived ? 1 : 0) | (targetDerived ? 0 : 2) | (baseDerived ? 4 : 0));
  let expected = 0;
  footer.entries.forEach((e, i) => {
    const spec = header.entries[i];
    const elements = spec?.elements ?? 0;
    const moments = spec?.kind === 'param' ? 2 * elements : 0;
    w.u8((e.entropyBits !== undefined ? 1 : 0) | (e.symbolBits !== undefined ? 2 : 0));
    w.varint(e.offsets.length);
    let previous = 0;
    e.offsets.forEach((o, k) => {
      w.varint(k === 0 ? zigzag(o - expected) : o - previous);
      previous = o;
    });
    if (e.offsets.length) expected = e.offsets[0]! + e.codedBytes;
    w.varint(e.codedBytes);
    w.varint(zigzag(elements - e.keptWeights));
    w.varint(zigzag(moments - e.keptMoments));
    if (e.entropyBits !== undefined) w.varint(asCount(e.entropyBits));
    if (e.symbolBits !== undefined) w.varint(asCount(e.symbolBits));
  });
  for (const h of footer.tensorHashes) writeHash(w, h);
  const present = new Uint8Array(Math.ceil(footer.baseHashes.length / 8));
  footer.baseHashes.forEach((h, i) => {
    if (h !== null) present[i >> 3] = present[i >> 3]! | (1 << (i & 7));
  });
  w.bytes(present);
  for (const h of footer.baseHashes) if (h !== null) writeHash(w, h);
  if (footer.baseFingerprint !== null && !baseDerived) writeHash(w, footer.baseFingerprint);
  if (!targetDerived) writeHash(w, footer.targetFingerprint);
  return pack(w.finish());
}

/**
 * Parse a v2 footer body; the caller checks it against the header as for v1.
 * Entry and tensor counts are the header's.
 */
export function decodeFooterBody(body: Uint8Array, header: ContainerHeader): ContainerFooter {
  const r = new ByteReader(unpack(body, 'footer'), 'container: footer');
  const flags = r.u8();
  if (flags > 7 || (flags & 5) === 5) corrupt(`footer flags ${flags}`);
  const entries: FooterEntry[] = [];
  let expected = 0;
  header.entries.forEach((spec) => {
    const present = r.u8();
    if (present > 3) corrupt(`footer entry flags ${present}`);
    const count = readCount(r, 1, Number.MAX_SAFE_INTEGER, 'offset');
    const offsets: number[] = [];
    for (let k = 0; k < count; k++) {
      const v = r.varint();
      offsets.push(k === 0 ? expected + unzigzag(v) : offsets[k - 1]! + v);
    }
    const codedBytes = r.varint();
    if (count) expected = offsets[0]! + codedBytes;
    const entry: FooterEntry = {
      offsets,
      codedBytes,
      keptWeights: spec.elements - unzigzag(r.varint()),
      keptMoments: (spec.kind === 'param' ? 2 * spec.elements : 0) - unzigzag(r.varint()),
    };
    if (present & 1) entry.entropyBits = r.varint();
    if (present & 2) entry.symbolBits = r.varint();
    entries.push(entry);
  });
  const tensorHashes = header.tensors.map(() => readHash(r));
  const bitmap = r.bytesView(Math.ceil(header.tensors.length / 8));
  const baseHashes = header.tensors.map((_, i) => ((bitmap[i >> 3]! >> (i & 7)) & 1 ? readHash(r) : null));
  const storedBase = flags & 1 ? readHash(r) : null;
  const storedTarget = flags & 2 ? readHash(r) : null;
  if (r.remaining !== 0) corrupt(`footer: ${r.remaining} trailing bytes`);
  const computed = (flags & 4) !== 0 || storedTarget === null ? fingerprints(header, tensorHashes, baseHashes) : null;
  const baseFingerprint = flags & 4 ? computed!.base : storedBase;
  const targetFingerprint = storedTarget ?? computed!.target;
  return { entries, tensorHashes, baseHashes, baseFingerprint, targetFingerprint };
}
