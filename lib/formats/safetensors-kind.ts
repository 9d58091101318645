/**
 * The file kind `safetensors` (code 0): a safetensors file, its header
 * bytes kept exactly and its tensors in data order after them.
 *
 * Header record (spec/FORMAT.md, "Files"): optional path, the raw header,
 * the tensor indices. The raw header is usually not stored at all: the
 * writers everyone uses (Python safetensors, lib/formats/safetensors.ts)
 * make it from the tensors (compact JSON, `__metadata__` first, names
 * sorted or in data order, space padding), so a recipe of a few bytes
 * rebuilds it exactly once the tensor table is read.
 */
import type { ByteReader, ByteWriter } from '../core/bytes.js';
import { DTYPE_BYTES, byteSize, elementCount } from '../core/dtype.js';
import { corrupt, readBytes, readIndices, readOptional, readString, strictUtf8, utf8, writeIndices, writeOptional } from '../container/fields.js';
import type { FileSpec, TensorSpec } from '../model/checkpoint.js';
import type { FileFormat, FilePlacement } from './file-format.js';
import { parseSafetensorsHeader } from './safetensors.js';

/** rawHeader encodings: the base64 text verbatim, the decoded bytes as UTF-8 text, the decoded bytes. */
const RAW_BASE64 = 0;
const RAW_TEXT = 1;
const RAW_BYTES = 2;
/** The decoded header is what {@link buildRawHeader} makes from the file's tensors. */
const RAW_DERIVED = 3;

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
    const size = byteSize(t.dtype, t.shape, `container: tensor '${t.name}'`);
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
 * A raw header in the fewest bytes: its recipe when the tensors rebuild it,
 * else the bytes (marked as UTF-8 text when they are, for the body's LZ
 * stage). RAW_BASE64 is only read: version 1 stored headers as base64 text.
 */
function writeRawHeader(w: ByteWriter, bytes: Uint8Array, tensors: readonly TensorSpec[]): void {
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
function readRawHeader(r: ByteReader): Uint8Array | RawRecipe {
  const mode = r.u8();
  if (mode === RAW_BASE64) return fromBase64(readString(r, 'rawHeader'));
  if (mode === RAW_TEXT || mode === RAW_BYTES) return readBytes(r).slice();
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


/** Version 1 stored the raw header as base64 text; decoded as Node always did (lenient). */
function fromBase64(text: string): Uint8Array {
  return new Uint8Array(Buffer.from(text, 'base64'));
}

/** The raw header bytes of a file of this kind. */
function rawOf(file: FileSpec): Uint8Array {
  return file.layout as Uint8Array;
}

/** The file kind `safetensors`. */
export const safetensorsKind: FileFormat = {
  name: 'safetensors',
  code: 0,

  write(w: ByteWriter, file: FileSpec, tensors: readonly TensorSpec[]): void {
    writeOptional(w, file.path);
    writeRawHeader(w, rawOf(file), file.tensors.map((t) => tensors[t]!));
    writeIndices(w, file.tensors);
  },

  read(r: ByteReader) {
    const path = readOptional(r, 'path');
    const raw = readRawHeader(r);
    const file: FileSpec = { kind: 'safetensors', path, tensors: readIndices(r, 'file tensors'), layout: raw instanceof Uint8Array ? raw : null };
    if (raw instanceof Uint8Array) return { file };
    return {
      file,
      complete: (tensors: readonly TensorSpec[]) => {
        file.layout = buildRawHeader(file.tensors.map((t) => tensors[t] ?? corrupt(`file tensor ${t}`)), raw);
      },
    };
  },

  fromJson(value: Record<string, unknown>): FileSpec | null {
    const { path, rawHeader, tensors } = value;
    if (typeof rawHeader !== 'string' || !Array.isArray(tensors)) return null;
    return { kind: 'safetensors', path: typeof path === 'string' ? path : null, tensors: tensors as number[], layout: fromBase64(rawHeader) };
  },

  validate(file: FileSpec, tensors: readonly TensorSpec[], fail: (what: string) => never): void {
    if (!(file.layout instanceof Uint8Array)) fail('no safetensors header');
    let parsed;
    try {
      parsed = parseSafetensorsHeader(file.layout);
    } catch {
      return fail('stored safetensors header is invalid');
    }
    const ok = parsed.tensors.length === file.tensors.length && parsed.tensors.every((t, i) => {
      const spec = tensors[file.tensors[i]!]!;
      return spec.name === t.name && spec.dtype === t.dtype && spec.shape.length === t.shape.length && spec.shape.every((d, j) => d === t.shape[j]);
    });
    if (!ok) fail('stored safetensors header does not match the tensor table');
  },

  place(file: FileSpec, tensors: readonly TensorSpec[]): FilePlacement {
    const raw = rawOf(file);
    let offset = raw.length;
    const targets = file.tensors.map((t) => {
      const target = { tensor: t, target: { offset } };
      offset += elementCount(tensors[t]!.shape, tensors[t]!.name) * DTYPE_BYTES[tensors[t]!.dtype];
      return target;
    });
    return { size: offset, fixed: [{ offset: 0, bytes: raw }], targets };
  },
};
