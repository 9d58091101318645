/**
 * The compact footer body of container format version 2 (spec/FORMAT.md,
 * "Footer body"): chunk offsets as deltas, kept counts as differences from
 * the header's element counts, raw 8-byte hashes, and fingerprints left out
 * when they follow from the hashes. Apart from the header body because it
 * is written last, once every chunk is known, and shares only the field
 * encodings (container-v2.ts).
 */
import { ByteReader, ByteWriter } from '../core/bytes.js';
import type { DType } from '../core/dtype.js';
import { fingerprintTensors } from '../core/hash.js';
import { corrupt, pack, readCount, unpack, unzigzag, zigzag } from './fields.js';
import type { ContainerFooter, ContainerHeader, FooterEntry } from '../model/checkpoint.js';

/** The footer's fingerprints as lib/stream/container.ts buildFooter computes them. */
function fingerprints(header: ContainerHeader, tensorHashes: readonly string[], baseHashes: readonly (string | null)[]): { base: string | null; target: string } {
  const described = (hashes: readonly (string | null)[]) => header.tensors
    .map((t, i) => ({ name: t.name, dtype: t.dtype, shape: t.shape, hash: hashes[i] ?? null }))
    .filter((t): t is { name: string; dtype: DType; shape: number[]; hash: string } => t.hash !== null);
  const baseList = described(baseHashes);
  return { base: baseList.length ? fingerprintTensors(baseList) : null, target: fingerprintTensors(described(tensorHashes)) };
}
function writeHash(w: ByteWriter, hex: string): void {
  for (let k = 0; k < 16; k += 2) w.u8(parseInt(hex.slice(k, k + 2), 16));
}

function readHash(r: ByteReader): string {
  let hex = '';
  for (let k = 0; k < 8; k++) hex += r.u8().toString(16).padStart(2, '0');
  return hex;
}

/** Footer flag: no tensor or base hashes stored (both fingerprints then are). */
const NO_HASHES = 8;

/** A count stored as a varint: safe non-negative integers only (fractions are rounded). */
/**
 * A relative error in one byte: 0 is 0, k = 1..255 is 2^((k - 1) / 16 - 14)
 * (1/16 of an octave apart, 6e-5 to 3.7; larger, and infinite, is 255).
 */
export function errorCode(x: number): number {
  if (!(x > 0)) return 0;
  if (!Number.isFinite(x)) return 255;
  return Math.min(255, Math.max(1, Math.round(16 * (Math.log2(x) + 14)) + 1));
}

/** The relative error a byte of errorCode stands for. */
export function errorValue(k: number): number {
  return k === 0 ? 0 : 2 ** ((k - 1) / 16 - 14);
}

const asCount = (x: number): number => (Number.isFinite(x) && x > 0 ? Math.min(Number.MAX_SAFE_INTEGER, Math.round(x)) : 0);

/**
 * The v2 footer body (mode byte first).
 * @param footer a valid footer (16-hex-digit hashes)
 * @param header its header (chunk counts and element counts are not repeated)
 */
export function encodeFooterBody(footer: ContainerFooter, header: ContainerHeader): Uint8Array {
  const w = new ByteWriter(1024 + 24 * header.tensors.length);
  const hashes = footer.tensorHashes && footer.baseHashes ? { tensor: footer.tensorHashes, base: footer.baseHashes } : null;
  const derived = hashes ? fingerprints(header, hashes.tensor, hashes.base) : null;
  const baseDerived = derived !== null && footer.baseFingerprint !== null && footer.baseFingerprint === derived.base;
  const targetDerived = derived !== null && footer.targetFingerprint === derived.target;
  w.u8((footer.baseFingerprint !== null && !baseDerived ? 1 : 0) | (targetDerived ? 0 : 2) | (baseDerived ? 4 : 0) | (hashes ? 0 : NO_HASHES));
  let expected = 0;
  footer.entries.forEach((e, i) => {
    const spec = header.entries[i];
    const elements = spec?.elements ?? 0;
    const moments = spec?.kind === 'param' ? 2 * elements : 0;
    w.u8((e.entropyBits !== undefined ? 1 : 0) | (e.symbolBits !== undefined ? 2 : 0) | (e.errors ? 4 : 0));
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
    if (e.errors) for (const x of [e.errors.weight, e.errors.m, e.errors.v]) w.u8(errorCode(x));
  });
  if (hashes) {
    for (const h of hashes.tensor) writeHash(w, h);
    const present = new Uint8Array(Math.ceil(hashes.base.length / 8));
    hashes.base.forEach((h, i) => {
      if (h !== null) present[i >> 3] = present[i >> 3]! | (1 << (i & 7));
    });
    w.bytes(present);
    for (const h of hashes.base) if (h !== null) writeHash(w, h);
  }
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
  if (flags > 15 || (flags & 5) === 5 || (flags & NO_HASHES && (flags & 6) !== 2)) corrupt(`footer flags ${flags}`);
  const entries: FooterEntry[] = [];
  let expected = 0;
  header.entries.forEach((spec) => {
    const present = r.u8();
    if (present > 7) corrupt(`footer entry flags ${present}`);
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
    if (present & 4) entry.errors = { weight: errorValue(r.u8()), m: errorValue(r.u8()), v: errorValue(r.u8()) };
    entries.push(entry);
  });
  if (flags & NO_HASHES) {
    const baseFingerprint = flags & 1 ? readHash(r) : null;
    const targetFingerprint = readHash(r);
    if (r.remaining !== 0) corrupt(`footer: ${r.remaining} trailing bytes`);
    return { entries, tensorHashes: null, baseHashes: null, baseFingerprint, targetFingerprint };
  }
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
