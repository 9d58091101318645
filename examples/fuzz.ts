/**
 * Deterministic mutation fuzzing of everything excp reads from an untrusted
 * file: safetensors checkpoints (parseSafetensors, SafetensorsMemory,
 * SafetensorsFile) and .excp containers (restoreBuffer, the ContainerReader
 * stream under random input chunking, readContainerFile / inspect).
 *
 * Every case must end in an ExcpError or in the correct result (for a
 * container: the exact bytes of the clean restore), within a time bound.
 * Anything else (another exception, a hang, a wrong result) is a failure,
 * reported with the seed and case number that reproduce it.
 *
 * Mutators: bit flips, byte sets, truncations, inserted, deleted and
 * duplicated bytes, length and offset fields set to extremes (0, 2^31,
 * 2^32-1, 2^53, ...), and "re-sealed" mutations that edit a header, footer or
 * chunk payload and then recompute lengths and CRCs, so the mutation reaches
 * the decoders behind the checksums.
 *
 * Distributed checkpoint folders (DCP) are fuzzed by examples/fuzz-dcp.ts
 * (`--target dcp`).
 *
 * The spec (spec/fuzz.spec.ts) runs a few thousand cases; run more with
 *   npm run fuzz -- --iterations 100000 [--seed N] [--target safetensors|container|dcp|all]
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import type { ContainerHeader } from '../lib/model/checkpoint.js';
import { FILE_KINDS } from '../lib/formats/registry.js';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { pathToFileURL } from 'node:url';
import { decodeFooter, decodeHeader, readPreambleInfo } from '../lib/container/format.js';
import { crc32 } from '../lib/core/crc32.js';
import { DTYPE_BYTES, elementCount } from '../lib/core/dtype.js';
import { ExcpError } from '../lib/core/errors.js';
import { formatInspect, inspectContainer, verifyContainer } from '../lib/api/inspect.js';
import { Prng } from '../spec/support/prng.js';
import { parseSafetensors, serializeSafetensors } from '../lib/formats/safetensors.js';
import { SafetensorsFile, SafetensorsMemory } from '../lib/formats/safetensors-file.js';
import { randomCheckpointPair } from '../spec/helpers.js';
import { readContainerFile } from '../lib/api/open.js';
import { compressBuffer } from '../lib/api/compress.js';
import { restore, restoreBuffer } from '../lib/api/restore.js';
import { dcpCase, dcpCorpus, mutateDcp } from './fuzz-dcp.js';
import { restoreTensors } from '../lib/api/extract.js';
import { SafetensorsStream } from '../lib/formats/safetensors-stream.js';

/** Values a length or offset field is set to. */
export const EXTREMES_U32 = [0, 1, 2, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
export const EXTREMES_U64 = [0, 1, 0x7fffffff, 0x80000000, 0xffffffff, 0x100000000, 2 ** 53 - 1, 2 ** 53, 2 ** 63, 2 ** 64 - 1];
/** Number tokens spliced into JSON headers. */
const EXTREME_NUMBERS = ['0', '-1', '1', '2147483648', '4294967295', '4294967296', '9007199254740991', '9007199254740992',
  '18446744073709551615', '1e308', '1e309', '0.5', '-0', '1e-400', '[]', 'null', '"x"', '{}'];

/** A failure: something other than an ExcpError or the correct result. */
export class FuzzFailure extends Error {}

function setU32(b: Uint8Array, at: number, v: number): void {
  if (at + 4 <= b.length) new DataView(b.buffer, b.byteOffset, b.length).setUint32(at, v >>> 0, true);
}

function setU64(b: Uint8Array, at: number, v: number): void {
  if (at + 8 > b.length) return;
  const view = new DataView(b.buffer, b.byteOffset, b.length);
  view.setBigUint64(at, v >= 2 ** 64 ? 0xffffffffffffffffn : BigInt.asUintN(64, BigInt(v)), true);
}

function u32(v: number): Uint8Array {
  const b = new Uint8Array(4);
  setU32(b, 0, v);
  return b;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((s, p) => s + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/**
 * One raw byte mutation (no knowledge of the format).
 * @returns the mutated copy and a description
 */
export function mutateBytes(input: Uint8Array, rng: Prng): { bytes: Uint8Array; what: string } {
  const kind = rng.int(7);
  const n = input.length;
  // Half of the positions land in the first 64 bytes, where the lengths live.
  const pos = () => (n === 0 ? 0 : rng.next() < 0.5 ? rng.int(Math.min(n, 64)) : rng.int(n));
  switch (kind) {
    case 0: {
      const b = input.slice();
      const flips = 1 + rng.int(rng.next() < 0.7 ? 1 : 8);
      for (let k = 0; k < flips && n; k++) {
        const at = pos();
        b[at] = b[at]! ^ (1 << rng.int(8));
      }
      return { bytes: b, what: `flip ${flips} bits` };
    }
    case 1: {
      const b = input.slice();
      const at = pos();
      const v = [0, 0xff, 0x7f, 0x80, rng.int(256)][rng.int(5)]!;
      if (n) b[at] = v;
      return { bytes: b, what: `byte ${at} = ${v}` };
    }
    case 2: {
      const cut = rng.next() < 0.3 ? rng.int(Math.min(n + 1, 40)) : rng.int(n + 1);
      return { bytes: input.slice(0, cut), what: `truncate to ${cut}` };
    }
    case 3: {
      const at = pos();
      const extra = new Uint8Array(1 + rng.int(16));
      for (let i = 0; i < extra.length; i++) extra[i] = rng.int(256);
      return { bytes: concat([input.subarray(0, at), extra, input.subarray(at)]), what: `insert ${extra.length} at ${at}` };
    }
    case 4: {
      const at = pos();
      const len = 1 + rng.int(16);
      return { bytes: concat([input.subarray(0, at), input.subarray(at + len)]), what: `delete ${len} at ${at}` };
    }
    case 5: {
      const from = pos();
      const len = 1 + rng.int(64);
      const at = pos();
      return { bytes: concat([input.subarray(0, at), input.subarray(from, from + len), input.subarray(at)]), what: `duplicate ${len} from ${from} at ${at}` };
    }
    default: {
      const b = input.slice();
      const at = pos();
      if (rng.next() < 0.5) setU32(b, at, EXTREMES_U32[rng.int(EXTREMES_U32.length)]!);
      else setU64(b, at, EXTREMES_U64[rng.int(EXTREMES_U64.length)]!);
      return { bytes: b, what: `extreme integer at ${at}` };
    }
  }
}

/**
 * Mutate JSON text: a number or token replaced by an extreme, a key dropped,
 * an array element duplicated, or a raw byte mutation of the text.
 */
export function mutateJson(text: string, rng: Prng): { text: string; what: string } {
  const kind = rng.int(5);
  if (kind <= 1) {
    const tokens = [...text.matchAll(/-?\d+(\.\d+)?([eE][-+]?\d+)?|true|false|null/g)];
    const t = tokens[rng.int(Math.max(1, tokens.length))];
    if (t && t.index !== undefined) {
      const value = EXTREME_NUMBERS[rng.int(EXTREME_NUMBERS.length)]!;
      return { text: text.slice(0, t.index) + value + text.slice(t.index + t[0].length), what: `json token '${t[0]}' at ${t.index} -> ${value}` };
    }
  }
  if (kind === 2) {
    const strings = [...text.matchAll(/"[^"\\]*"/g)];
    const s = strings[rng.int(Math.max(1, strings.length))];
    if (s && s.index !== undefined) {
      const value = ['""', '"__metadata__"', '"F32"', '"I64"', '"weight"', '"param"', '"x"', '0'][rng.int(8)]!;
      return { text: text.slice(0, s.index) + value + text.slice(s.index + s[0].length), what: `json string ${s[0].slice(0, 20)} -> ${value}` };
    }
  }
  if (kind === 3) {
    const arrays = [...text.matchAll(/\[[^[\]]*\]/g)];
    const a = arrays[rng.int(Math.max(1, arrays.length))];
    if (a && a.index !== undefined) {
      const inner = a[0].slice(1, -1);
      const value = rng.next() < 0.5 ? '[]' : `[${inner},${inner}]`;
      return { text: text.slice(0, a.index) + value + text.slice(a.index + a[0].length), what: `json array ${a[0].slice(0, 20)} -> ${value.slice(0, 20)}` };
    }
  }
  const m = mutateBytes(new TextEncoder().encode(text), rng);
  return { text: Buffer.from(m.bytes).toString('latin1'), what: `json bytes: ${m.what}` };
}

// ---------------------------------------------------------------- safetensors

/** A valid safetensors corpus: small files covering dtypes, 0-rank, empty tensors and metadata. */
export function safetensorsCorpus(): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (const seed of [1, 2, 3]) out.push(randomCheckpointPair(seed, { params: 2, maxElements: 40, extras: true }).current);
  out.push(serializeSafetensors([
    { name: 'scalar', dtype: 'F64', shape: [], data: new Uint8Array(8).fill(1) },
    { name: 'empty', dtype: 'BF16', shape: [0, 3], data: new Uint8Array(0) },
    { name: 'flags', dtype: 'BOOL', shape: [5], data: Uint8Array.from([0, 1, 0, 1, 1]) },
    { name: 'ids', dtype: 'I32', shape: [2, 2], data: new Uint8Array(16).fill(7) },
  ], { format: 'pt' }));
  out.push(serializeSafetensors([]));
  return out;
}

/** Rebuild a safetensors file around mutated header JSON (length prefix recomputed). */
function withHeaderText(file: Uint8Array, text: string): Uint8Array {
  const n = Number(new DataView(file.buffer, file.byteOffset, 8).getBigUint64(0, true));
  const json = Buffer.from(text, 'latin1');
  const prefix = new Uint8Array(8);
  setU64(prefix, 0, json.length);
  return concat([prefix, json, file.subarray(8 + n)]);
}

/** Check a successful parse against the bytes: everything must be consistent. */
function checkParsed(bytes: Uint8Array, parsed: ReturnType<typeof parseSafetensors>): void {
  const h = parsed.header;
  if (h.dataOffset + h.dataLength !== bytes.length) throw new FuzzFailure(`parse accepted ${bytes.length} bytes but covers ${h.dataOffset + h.dataLength}`);
  const names = new Set<string>();
  let expected = 0;
  parsed.tensors.forEach((t, i) => {
    const info = h.tensors[i]!;
    if (names.has(t.name)) throw new FuzzFailure(`duplicate tensor ${t.name}`);
    names.add(t.name);
    if (info.begin !== expected) throw new FuzzFailure(`tensor ${t.name} begins at ${info.begin}, expected ${expected}`);
    expected = info.end;
    if (t.data.length !== elementCount(t.shape, 'fuzz') * DTYPE_BYTES[t.dtype]) throw new FuzzFailure(`tensor ${t.name} has ${t.data.length} bytes for its shape`);
  });
  if (expected !== h.dataLength) throw new FuzzFailure(`tensors cover ${expected} of ${h.dataLength} data bytes`);
}

type Outcome = { code: string } | { ok: true; digest: string };

function describeOutcome(o: Outcome): string {
  return 'code' in o ? o.code : `ok ${o.digest}`;
}

/** The error code of an ExcpError; anything else is a failure. */
function codeOfError(e: unknown, where: string): { code: string } {
  if (e instanceof FuzzFailure) throw e;
  if (e instanceof ExcpError) return { code: e.code };
  const detail = e instanceof Error ? `${e.name}: ${e.message}\n${e.stack ?? ''}` : String(e);
  throw new FuzzFailure(`${where} threw a non-ExcpError: ${detail}`);
}

function summary(parsed: ReturnType<typeof parseSafetensors>): string {
  return JSON.stringify(parsed.header.tensors.map((t) => [t.name, t.dtype, t.shape, t.begin, t.end])) + JSON.stringify(parsed.metadata);
}

/**
 * One safetensors case: the in-memory parser, SafetensorsMemory and
 * (when `dir` is given) SafetensorsFile must agree, and a success must be consistent.
 */
export async function safetensorsCase(bytes: Uint8Array, dir: string | null, caseId: string): Promise<string> {
  let a: Outcome;
  try {
    const parsed = parseSafetensors(bytes);
    checkParsed(bytes, parsed);
    a = { ok: true, digest: summary(parsed) };
  } catch (e) {
    a = codeOfError(e, 'parseSafetensors');
  }
  let b: Outcome;
  try {
    const mem = new SafetensorsMemory(bytes);
    for (const t of mem.header.tensors) {
      const data = await mem.tensorBytes(t, 0, t.end - t.begin);
      if (data.length !== t.end - t.begin) throw new FuzzFailure(`SafetensorsMemory read ${data.length} bytes of ${t.name}`);
    }
    b = { ok: true, digest: JSON.stringify(mem.header.tensors.map((t) => [t.name, t.dtype, t.shape, t.begin, t.end])) + JSON.stringify(mem.header.metadata ?? {}) };
  } catch (e) {
    b = codeOfError(e, 'SafetensorsMemory');
  }
  if (describeOutcome(a) !== describeOutcome(b)) throw new FuzzFailure(`parseSafetensors gave ${describeOutcome(a)}, SafetensorsMemory ${describeOutcome(b)}`);
  // The same bytes as a stream (stdin, a FIFO): read once, in pieces, its
  // tensors asked for in a shuffled order. It never knows the file's size, so
  // an error may carry another code; but it must fail exactly when the file
  // reader fails, and otherwise give the same bytes.
  const order = new Prng(bytes.length).int(3);
  let s: Outcome;
  try {
    const stream = await SafetensorsStream.open(Readable.from(piecesOf(bytes, 1 + (bytes.length % 97))), 'stdin', { memoryBytes: order === 0 ? 0 : 1 << 20, dir: tmpdir() });
    try {
      const tensors = [...stream.header.tensors];
      if (order === 1) tensors.reverse();
      for (const t of tensors) {
        const data = await stream.tensorBytes(t, 0, t.end - t.begin);
        const want = bytes.subarray(stream.header.dataOffset + t.begin, stream.header.dataOffset + t.end);
        if (Buffer.compare(Buffer.from(data), Buffer.from(want)) !== 0) throw new FuzzFailure(`SafetensorsStream read wrong bytes for ${t.name}`);
      }
      await stream.end();
      s = { ok: true, digest: JSON.stringify(stream.header.tensors.map((t) => [t.name, t.dtype, t.shape, t.begin, t.end])) + JSON.stringify(stream.header.metadata ?? {}) };
    } finally {
      await stream.close();
    }
  } catch (e) {
    s = codeOfError(e, 'SafetensorsStream');
  }
  if (('ok' in s) !== ('ok' in b) || ('ok' in s && describeOutcome(s) !== describeOutcome(b))) throw new FuzzFailure(`SafetensorsMemory gave ${describeOutcome(b)}, SafetensorsStream ${describeOutcome(s)}`);
  if (dir) {
    const path = join(dir, `${caseId}.safetensors`);
    writeFileSync(path, bytes);
    let c: Outcome;
    try {
      const file = await SafetensorsFile.open(path);
      try {
        for (const t of file.header.tensors) {
          const data = await file.tensorBytes(t, 0, t.end - t.begin);
          const want = bytes.subarray(file.header.dataOffset + t.begin, file.header.dataOffset + t.end);
          if (Buffer.compare(Buffer.from(data), Buffer.from(want)) !== 0) throw new FuzzFailure(`SafetensorsFile read wrong bytes for ${t.name}`);
        }
        c = { ok: true, digest: JSON.stringify(file.header.tensors.map((t) => [t.name, t.dtype, t.shape, t.begin, t.end])) + JSON.stringify(file.header.metadata ?? {}) };
      } finally {
        await file.close();
      }
    } catch (e) {
      c = codeOfError(e, 'SafetensorsFile');
    }
    rmSync(path, { force: true });
    if (describeOutcome(a) !== describeOutcome(c)) throw new FuzzFailure(`parseSafetensors gave ${describeOutcome(a)}, SafetensorsFile ${describeOutcome(c)}`);
  }
  return 'code' in a ? a.code : 'ok';
}

/** Bytes in pieces of `size`. */
function piecesOf(bytes: Uint8Array, size: number): Uint8Array[] {
  const out: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) out.push(bytes.subarray(i, i + size));
  return out;
}

/** A mutated safetensors file for case `index` of run `seed`. */
export function mutateSafetensors(corpus: Uint8Array[], rng: Prng): { bytes: Uint8Array; what: string } {
  const file = corpus[rng.int(corpus.length)]!;
  const kind = rng.int(10);
  if (kind < 3) {
    const n = Number(new DataView(file.buffer, file.byteOffset, 8).getBigUint64(0, true));
    const m = mutateJson(Buffer.from(file.subarray(8, 8 + n)).toString('latin1'), rng);
    return { bytes: withHeaderText(file, m.text), what: m.what };
  }
  if (kind === 3) {
    const b = file.slice();
    const v = rng.next() < 0.5 ? EXTREMES_U64[rng.int(EXTREMES_U64.length)]! : Number(new DataView(file.buffer, file.byteOffset, 8).getBigUint64(0, true)) + rng.int(17) - 8;
    setU64(b, 0, Math.max(0, v));
    return { bytes: b, what: `header length = ${v}` };
  }
  return mutateBytes(file, rng);
}

// ---------------------------------------------------------------- containers

/** A parsed clean container: the pieces a re-sealing mutation reassembles. */
export interface ContainerParts {
  head: Uint8Array;
  headerText: string;
  records: { entry: number; chunk: number; payload: Uint8Array; at: number }[];
  footerText: string;
  footerAt: number;
}

/**
 * A version 2 container (what the writer makes) as version 1 parts: JSON
 * header and footer text, u32 record fields, preamble version 1. The
 * JSON-level and field-level mutations work on that version 1 form.
 */
function splitContainerV2(c: Uint8Array): ContainerParts {
  const view = new DataView(c.buffer, c.byteOffset, c.length);
  const { length: headerLength } = readPreambleInfo(c.subarray(0, 16));
  const header = decodeHeader(c.subarray(16, 16 + headerLength + 4), FILE_KINDS);
  let o = 16 + headerLength + 4;
  const records: ContainerParts['records'] = [];
  const varint = (): number => {
    let v = 0;
    for (let scale = 1; ; scale *= 128) {
      const b = c[o++]!;
      v += (b & 0x7f) * scale;
      if (!(b & 0x80)) return v;
    }
  };
  const order: [number, number][] = [];
  header.entries.forEach((e, i) => {
    for (let k = 0; k < Math.ceil(e.elements / header.options.chunkElements); k++) order.push([i, k]);
  });
  while (c[o] === 1) {
    const at = o++;
    const [entry, chunk] = order.shift() ?? [0, 0];
    const length = varint();
    records.push({ entry, chunk, payload: c.subarray(o, o + length), at });
    o += length + 4;
  }
  const footerLength = view.getUint32(o + 1, true);
  const footer = decodeFooter(c.subarray(o + 5, o + 5 + footerLength), view.getUint32(o + 5 + footerLength, true), header);
  const head = c.slice(0, 12);
  head[8] = 1;
  head[9] = 0;
  return { head, headerText: Buffer.from(JSON.stringify(version1Header(header))).toString('latin1'), records, footerText: Buffer.from(JSON.stringify(footer)).toString('latin1'), footerAt: o };
}

/** A header's JSON as version 1 wrote it: each file in its kind's version 1 form (a safetensors header as base64, a blob's one tensor). */
function version1Header(header: ContainerHeader): unknown {
  const files = header.files.map((f) => {
    if (f.kind === 'safetensors') return { kind: f.kind, path: f.path, rawHeader: Buffer.from(f.layout as Uint8Array).toString('base64'), tensors: f.tensors };
    if (f.kind === 'blob') return { kind: f.kind, path: f.path, tensor: f.tensors[0] };
    return { kind: f.kind, path: f.path, tensors: f.tensors, layout: f.layout };
  });
  return { ...header, files };
}

/**
 * The same content as a version 1 container (JSON header and footer, u32
 * record fields, record offsets recomputed). The payloads are kept: valid
 * version 1 for exact streams; lossy symbol streams were range-coded in
 * version 1, so a lossy container's rewrite exercises only the parsers.
 */
export function toVersion1(containerV2: Uint8Array): Uint8Array {
  const parts = splitContainerV2(containerV2);
  return assemble(parts, parts.headerText, parts.records, null);
}

/** Version 2 container with bytes of its header or footer body changed in place and the CRC recomputed. */
function mutateV2Body(c: Uint8Array, rng: Prng): { bytes: Uint8Array; what: string } {
  const b = c.slice();
  const view = new DataView(b.buffer, b.byteOffset, b.length);
  const headerLength = view.getUint32(12, true);
  const footerAt = Number(view.getBigUint64(b.length - 16, true));
  const footerLength = view.getUint32(footerAt + 1, true);
  const inHeader = rng.next() < 0.5;
  const start = inHeader ? 16 : footerAt + 5;
  const length = inHeader ? headerLength : footerLength;
  const flips = 1 + rng.int(3);
  for (let k = 0; k < flips; k++) {
    const at = start + rng.int(Math.max(1, length));
    b[at] = rng.next() < 0.5 ? b[at]! ^ (1 << rng.int(8)) : rng.int(256);
  }
  if (inHeader) view.setUint32(16 + headerLength, crc32(b.subarray(16, 16 + headerLength)), true);
  else view.setUint32(footerAt + 5 + footerLength, crc32(b.subarray(footerAt + 5, footerAt + 5 + footerLength), crc32(b.subarray(footerAt, footerAt + 5))), true);
  return { bytes: b, what: `${inHeader ? 'header' : 'footer'} body: ${flips} bytes changed, CRC recomputed` };
}

function splitContainer(c: Uint8Array): ContainerParts {
  const view = new DataView(c.buffer, c.byteOffset, c.length);
  const headerLength = view.getUint32(12, true);
  const headerText = Buffer.from(c.subarray(16, 16 + headerLength)).toString('latin1');
  let o = 16 + headerLength + 4;
  const records: ContainerParts['records'] = [];
  while (c[o] === 1) {
    const length = view.getUint32(o + 9, true);
    records.push({ entry: view.getUint32(o + 1, true), chunk: view.getUint32(o + 5, true), payload: c.subarray(o + 13, o + 13 + length), at: o });
    o += 13 + length + 4;
  }
  const footerLength = view.getUint32(o + 1, true);
  return { head: c.subarray(0, 12), headerText, records, footerText: Buffer.from(c.subarray(o + 5, o + 5 + footerLength)).toString('latin1'), footerAt: o };
}

/** Container bytes from parts, every length and CRC recomputed (footer offsets fixed unless the footer text is given as mutated). */
function assemble(p: ContainerParts, headerText: string, records: ContainerParts['records'], footerText: string | null): Uint8Array {
  const header = Buffer.from(headerText, 'latin1');
  const out: Uint8Array[] = [p.head, u32(header.length), header, u32(crc32(header))];
  let offset = 16 + header.length + 4;
  const offsets = new Map<number, number[]>();
  for (const r of records) {
    const prefix = new Uint8Array(13);
    prefix[0] = 1;
    setU32(prefix, 1, r.entry);
    setU32(prefix, 5, r.chunk);
    setU32(prefix, 9, r.payload.length);
    out.push(prefix, r.payload, u32(crc32(r.payload, crc32(prefix))));
    const list = offsets.get(r.entry) ?? [];
    list.push(offset);
    offsets.set(r.entry, list);
    offset += 13 + r.payload.length + 4;
  }
  let text = footerText;
  if (text === null) {
    const footer = JSON.parse(p.footerText) as { entries: { offsets: number[] }[] };
    footer.entries.forEach((e, i) => { e.offsets = offsets.get(i) ?? []; });
    text = JSON.stringify(footer);
  }
  const body = Buffer.from(text, 'latin1');
  const prefix = new Uint8Array(5);
  prefix[0] = 2;
  setU32(prefix, 1, body.length);
  out.push(prefix, body, u32(crc32(body, crc32(prefix))));
  const trailer = new Uint8Array(8);
  setU64(trailer, 0, offset);
  out.push(trailer, u32(crc32(trailer)), Uint8Array.from([0x50, 0x43, 0x58, 0x45]));
  return concat(out);
}

/** A clean container with what restoring it gives. */
export interface ContainerSample {
  name: string;
  container: Uint8Array;
  base: Uint8Array | undefined;
  restored: Uint8Array;
  parts: ContainerParts;
  /** The same container as the writer made it (format version 2); `container` is its version 1 form. */
  containerV2: Uint8Array;
}

/** Valid containers: lossy against a base, lossless keyframe, special values, BF16. */
export async function containerCorpus(): Promise<ContainerSample[]> {
  // The version 1 form keeps the version 2 payloads: a valid version 1
  // container only for lossless samples (exact streams are the same in both
  // formats; lossy symbol streams were range-coded in version 1, rANS in 2),
  // so the first sample, which the regression tests restore in that form, is
  // lossless. Lossy samples' version 1 forms still exercise the parsers.
  const specs = [
    // The first two keep per-tensor hashes, which these small containers would leave out by default.
    { name: 'lossless + base', seed: 34, pair: { params: 1, maxElements: 500, extras: true }, base: true, options: { chunkElements: 256, lossless: true }, hashes: 'always' as const },
    { name: 'lossy F32 + base', seed: 31, pair: { params: 2, maxElements: 400, extras: true }, base: true, options: { chunkElements: 64 }, hashes: 'always' as const },
    { name: 'lossless keyframe', seed: 32, pair: { params: 2, maxElements: 300, special: true }, base: false, options: { chunkElements: 128, lossless: true } },
    { name: 'lossy BF16 specials', seed: 33, pair: { params: 2, maxElements: 300, weightDtype: 'BF16' as const, special: true, extras: true }, base: true, options: { chunkElements: 100 } },
  ];
  const out: ContainerSample[] = [];
  for (const s of specs) {
    const pair = randomCheckpointPair(s.seed, s.pair);
    const base = s.base ? pair.previous : undefined;
    const containerV2 = await compressBuffer(pair.current, base, { ...s.options, threads: 0, tensorHashes: 'hashes' in s ? s.hashes : 'auto' });
    const restored = await restoreBuffer(containerV2, base, { threads: 0 });
    const container = toVersion1(containerV2);
    out.push({ name: s.name, container, base, restored, parts: splitContainer(container), containerV2 });
  }
  return out;
}

/** Kinds of container mutation; "sealed" ones recompute CRCs. */
export type ContainerMutation = 'bytes' | 'field' | 'header-json' | 'footer-json' | 'payload' | 'records' | 'v2-bytes' | 'v2-body';

/**
 * A mutated container.
 * @returns the bytes, the kind, and a description
 */
export function mutateContainer(sample: ContainerSample, rng: Prng): { bytes: Uint8Array; kind: ContainerMutation; what: string } {
  const p = sample.parts;
  const c = sample.container;
  const r = rng.int(12);
  if (r < 4) {
    // Raw byte mutations of the version 1 form and of the writer's version 2 bytes.
    if (rng.next() < 0.5) return { kind: 'v2-bytes', ...mutateBytes(sample.containerV2, rng) };
    if (rng.next() < 0.5) return { kind: 'v2-body', ...mutateV2Body(sample.containerV2, rng) };
    return { kind: 'bytes', ...mutateBytes(c, rng) };
  }
  if (r < 6) {
    // A length / index / offset field set to an extreme.
    const b = c.slice();
    const rec = p.records[rng.int(Math.max(1, p.records.length))];
    const fields: Array<[string, number, 4 | 8]> = [['header length', 12, 4], ['footer length', p.footerAt + 1, 4], ['trailer offset', c.length - 16, 8]];
    if (rec) fields.push(['record entry', rec.at + 1, 4], ['record chunk', rec.at + 5, 4], ['record length', rec.at + 9, 4]);
    const [name, at, width] = fields[rng.int(fields.length)]!;
    const near = width === 4 ? new DataView(c.buffer, c.byteOffset).getUint32(at, true) : Number(new DataView(c.buffer, c.byteOffset).getBigUint64(at, true));
    const value = rng.next() < 0.25 ? Math.max(0, near + rng.int(9) - 4) : width === 4 ? EXTREMES_U32[rng.int(EXTREMES_U32.length)]! : EXTREMES_U64[rng.int(EXTREMES_U64.length)]!;
    if (width === 4) setU32(b, at, value);
    else setU64(b, at, value);
    return { kind: 'field', bytes: b, what: `${name} = ${value}` };
  }
  if (r < 8) {
    const m = mutateJson(p.headerText, rng);
    return { kind: 'header-json', bytes: assemble(p, m.text, p.records, null), what: `header ${m.what}` };
  }
  if (r < 9) {
    const m = mutateJson(p.footerText, rng);
    return { kind: 'footer-json', bytes: assemble(p, p.headerText, p.records, m.text), what: `footer ${m.what}` };
  }
  if (r < 11 && p.records.length) {
    const i = rng.int(p.records.length);
    const m = mutateBytes(p.records[i]!.payload, rng);
    const records = p.records.slice();
    records[i] = { ...records[i]!, payload: m.bytes };
    return { kind: 'payload', bytes: assemble(p, p.headerText, records, null), what: `payload of record ${i}: ${m.what}` };
  }
  // Records dropped, duplicated, swapped, or renumbered (all sealed).
  const records = p.records.slice();
  const i = rng.int(Math.max(1, records.length));
  const j = rng.int(Math.max(1, records.length));
  const op = rng.int(4);
  if (records.length === 0) return { kind: 'bytes', ...mutateBytes(c, rng) };
  if (op === 0) records.splice(i, 1);
  else if (op === 1) records.splice(i, 0, records[j]!);
  else if (op === 2) [records[i], records[j]] = [records[j]!, records[i]!];
  else records[i] = { ...records[i]!, entry: records[j]!.entry, chunk: EXTREMES_U32[rng.int(EXTREMES_U32.length)]! };
  return { kind: 'records', bytes: assemble(p, p.headerText, records, null), what: `records: op ${op} at ${i}, ${j}` };
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.length), Buffer.from(b.buffer, b.byteOffset, b.length)) === 0;
}

/** Tensors (name, dtype, shape, data) equal, header bytes possibly not. */
function sameTensors(a: Uint8Array, b: Uint8Array): boolean {
  let pa: ReturnType<typeof parseSafetensors>;
  try {
    pa = parseSafetensors(a);
  } catch {
    return false;
  }
  const pb = parseSafetensors(b);
  const key = (p: typeof pa) => p.tensors.map((t) => `${t.name}|${t.dtype}|${t.shape.join(',')}|${Buffer.from(t.data).toString('base64')}`).sort().join('\n');
  return key(pa) === key(pb);
}

/** Split bytes into seeded random slices (1 byte to 4 KiB). */
function slices(bytes: Uint8Array, rng: Prng): Uint8Array[] {
  const out: Uint8Array[] = [];
  const small = rng.next() < 0.2;
  for (let i = 0; i < bytes.length;) {
    const size = 1 + rng.int(small ? 16 : 4096);
    out.push(bytes.subarray(i, i + size));
    i += size;
  }
  return out;
}

/**
 * One container case: restoreBuffer (or the restore stream under random
 * chunking) must throw an ExcpError or give the clean restore; with a
 * directory, readContainerFile and inspect must throw an ExcpError or succeed.
 */
export async function containerCase(sample: ContainerSample, bytes: Uint8Array, kind: ContainerMutation, rng: Prng, dir: string | null, caseId: string): Promise<string> {
  let out: Uint8Array | null = null;
  let code = 'ok';
  try {
    if (rng.next() < 0.3) {
      const parts: Uint8Array[] = [];
      await pipeline(Readable.from(slices(bytes, rng)), restore({ base: sample.base, threads: 0 }), new Writable({
        write(chunk: Uint8Array, _e, cb) {
          parts.push(chunk);
          cb();
        },
      }));
      out = concat(parts);
    } else {
      out = await restoreBuffer(bytes, sample.base, { threads: 0 });
    }
  } catch (e) {
    code = codeOfError(e, 'restore').code;
  }
  if (out) {
    // A re-sealed header may legitimately change what the CRC protected and
    // the fingerprint does not cover (the stored safetensors header, e.g.
    // metadata); the tensors themselves must still be exact.
    const ok = kind === 'header-json' || kind === 'v2-body' ? sameTensors(out, sample.restored) : sameBytes(out, sample.restored);
    if (!ok) throw new FuzzFailure(`restore succeeded with a different result (${out.length} bytes, clean ${sample.restored.length})`);
  }
  if (dir) {
    const path = join(dir, `${caseId}.excp`);
    writeFileSync(path, bytes);
    try {
      await readContainerFile(path);
      formatInspect(await inspectContainer(path));
      let basePath: string | undefined;
      if (sample.base) {
        basePath = join(dir, `${caseId}.base.safetensors`);
        writeFileSync(basePath, sample.base);
      }
      // Random access to one tensor (restore --tensor): an ExcpError, or that
      // tensor's bytes in the clean restore (re-sealed headers and footers
      // may rename or reshape; without per-tensor hashes only the CRCs guard).
      const clean = parseSafetensors(sample.restored).tensors;
      const pick = clean[rng.int(clean.length)];
      if (pick) {
        const parts: Uint8Array[] = [];
        const sink = new Writable({
          write(chunk: Uint8Array, _e, cb) {
            parts.push(chunk);
            cb();
          },
        });
        const one = await restoreTensors(path, [pick.name], sink, { base: sample.base }).then(() => 'ok', (e: unknown) => codeOfError(e, 'restoreTensors').code);
        const sealed = kind === 'header-json' || kind === 'footer-json' || kind === 'v2-body';
        if (one === 'ok' && !sealed) {
          const got = parseSafetensors(concat(parts)).tensors;
          if (got.length !== 1 || got[0]!.name !== pick.name || !sameBytes(got[0]!.data, pick.data)) throw new FuzzFailure(`restoreTensors('${pick.name}') succeeded with other bytes`);
        }
      }
      // verify reads the index, then restores without writing: it must agree with restore.
      const verified = await verifyContainer(path, basePath, 0).then(() => 'ok', (e: unknown) => codeOfError(e, 'verifyContainer').code);
      if ((verified === 'ok') !== (code === 'ok')) throw new FuzzFailure(`verify says ${verified}, restore ${code}`);
    } catch (e) {
      codeOfError(e, 'readContainerFile/inspect');
    } finally {
      rmSync(path, { force: true });
      rmSync(join(dir, `${caseId}.base.safetensors`), { force: true });
    }
  }
  return code;
}

// ---------------------------------------------------------------- runner

/** Options of {@link runFuzz}. */
export interface FuzzOptions {
  seed: number;
  /** First case number (to replay one case: from = N, iterations = 1). */
  from?: number;
  iterations: number;
  target: 'safetensors' | 'container' | 'dcp' | 'all';
  /** Every how many cases the file-based readers run too (0 = never; for dcp: the lossless round trip). */
  fileEvery: number;
  /** Per-case time bound, milliseconds. */
  caseTimeoutMs: number;
  onProgress?: (done: number, stats: FuzzStats) => void;
}

/** Counts of a run. */
export interface FuzzStats {
  cases: number;
  outcomes: Record<string, number>;
  slowestMs: number;
  slowestCase: string;
  elapsedMs: number;
}

function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new FuzzFailure(`${what}: no answer after ${ms} ms (hang)`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Run `iterations` cases. Case i uses its own PRNG seeded from (seed, i),
 * so any case can be replayed alone.
 * @throws FuzzFailure naming seed, case and mutation
 */
export async function runFuzz(options: FuzzOptions): Promise<FuzzStats> {
  const started = Date.now();
  const stCorpus = safetensorsCorpus();
  const ctCorpus = options.target === 'safetensors' || options.target === 'dcp' ? [] : await containerCorpus();
  const dcpSamples = options.target === 'dcp' || options.target === 'all' ? dcpCorpus() : [];
  const dir = mkdtempSync(join(tmpdir(), 'excp-fuzz-'));
  const stats: FuzzStats = { cases: 0, outcomes: {}, slowestMs: 0, slowestCase: '', elapsedMs: 0 };
  try {
    const first = options.from ?? 0;
    for (let i = first; i < first + options.iterations; i++) {
      const rng = new Prng((options.seed * 0x9e3779b1 + i * 0x85ebca6b) >>> 0);
      const useFile = options.fileEvery > 0 && i % options.fileEvery === 0;
      const target = options.target === 'all' ? (['safetensors', 'container', 'container', 'dcp'] as const)[i % 4]! : options.target;
      const caseId = `seed ${options.seed} case ${i}`;
      const t0 = performance.now();
      let what = '';
      let outcome: string;
      try {
        if (target === 'dcp') {
          const sample = dcpSamples[rng.int(dcpSamples.length)]!;
          const m = mutateDcp(sample, rng);
          what = `${sample.name}: ${m.what}`;
          outcome = `dcp/${m.kind} ${await withTimeout(dcpCase(m.files, rng, join(dir, `c${i}`), useFile), options.caseTimeoutMs, caseId)}`;
        } else if (target === 'safetensors') {
          const m = mutateSafetensors(stCorpus, rng);
          what = m.what;
          outcome = `safetensors ${await withTimeout(safetensorsCase(m.bytes, useFile ? dir : null, `c${i}`), options.caseTimeoutMs, caseId)}`;
        } else {
          const sample = ctCorpus[rng.int(ctCorpus.length)]!;
          const m = mutateContainer(sample, rng);
          what = `${sample.name}: ${m.what}`;
          outcome = `container/${m.kind} ${await withTimeout(containerCase(sample, m.bytes, m.kind, rng, useFile ? dir : null, `c${i}`), options.caseTimeoutMs, caseId)}`;
        }
      } catch (e) {
        const message = e instanceof Error ? e.message : String(e);
        throw new FuzzFailure(`fuzz failure at ${caseId} (${target}; ${what}); replay with: npm run fuzz -- --seed ${options.seed} --from ${i} --iterations 1 --target ${target}\n${message}`);
      }
      const ms = performance.now() - t0;
      if (ms > stats.slowestMs) {
        stats.slowestMs = ms;
        stats.slowestCase = `${caseId} (${what})`;
      }
      stats.cases++;
      stats.outcomes[outcome] = (stats.outcomes[outcome] ?? 0) + 1;
      options.onProgress?.(i + 1, stats);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  stats.elapsedMs = Date.now() - started;
  return stats;
}

function parseArgs(argv: string[]): FuzzOptions & { from: number } {
  const o: FuzzOptions & { from: number } = { seed: 1, iterations: 10000, target: 'all', fileEvery: 10, caseTimeoutMs: 10_000, from: 0 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i];
    const value = argv[i + 1];
    const num = () => {
      const v = Number(value);
      if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${flag} needs a non-negative integer, got ${String(value)}`);
      i++;
      return v;
    };
    if (flag === '--iterations') o.iterations = num();
    else if (flag === '--seed') o.seed = num();
    else if (flag === '--from') o.from = num();
    else if (flag === '--file-every') o.fileEvery = num();
    else if (flag === '--timeout') o.caseTimeoutMs = num();
    else if (flag === '--target' && (value === 'safetensors' || value === 'container' || value === 'dcp' || value === 'all')) {
      o.target = value;
      i++;
    } else throw new Error(`unknown argument ${String(flag)} (use --iterations N --seed N --from N --target safetensors|container|dcp|all --file-every N --timeout MS)`);
  }
  return o;
}

async function main(): Promise<void> {
  const o = parseArgs(process.argv.slice(2));
  const tty = process.stderr.isTTY;
  let last = 0;
  const started = Date.now();
  const stats = await runFuzz({
    ...o,
    onProgress: (_at, s) => {
      const now = Date.now();
      if (now - last < (tty ? 250 : 10_000) && s.cases < o.iterations) return;
      last = now;
      const errors = Object.entries(s.outcomes).filter(([k]) => !k.endsWith(' ok')).reduce((a, [, v]) => a + v, 0);
      const line = `fuzz: ${s.cases}/${o.iterations} cases (${errors} ExcpError, ${s.cases - errors} correct result), ${((Date.now() - started) / 1000).toFixed(0)} s, slowest ${s.slowestMs.toFixed(0)} ms`;
      process.stderr.write(tty ? `\r${line}   ` : `${line}\n`);
    },
  });
  if (tty) process.stderr.write('\n');
  const lines = Object.entries(stats.outcomes).sort((a, b) => b[1] - a[1]).map(([k, v]) => `  ${String(v).padStart(8)}  ${k}`);
  process.stdout.write(`fuzz: seed ${o.seed}, ${stats.cases} cases, all ended in an ExcpError or the correct result\n`
    + `time ${(stats.elapsedMs / 1000).toFixed(1)} s, slowest case ${stats.slowestMs.toFixed(1)} ms: ${stats.slowestCase}\n`
    + `outcomes:\n${lines.join('\n')}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
