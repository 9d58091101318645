/**
 * Writing a container (spec/FORMAT.md) from its header and its coded
 * chunks, in order, as a pure assembler: it frames each record, keeps the
 * offsets and the per-tensor hashes, and builds the footer. The stream stage
 * (lib/stream/container.ts) only hands it records and pushes its bytes.
 */
import { ExcpError } from '../core/errors.js';
import { HasherList, fingerprintTensors } from '../core/hash.js';
import { type EncodedChunk, type ErrorSums, relativeError } from '../method/codec.js';
import type { ContainerFooter, ContainerHeader, FooterEntry } from '../model/checkpoint.js';
import { digestTensors } from '../model/pack.js';
import { encodeHead, encodeRecord, encodeTail } from './format.js';
import { RecordOrder } from './framing.js';
import type { FileKinds } from './kinds.js';

const encoder = new TextEncoder();

/** A coded chunk with its position. */
export interface EncodedRecord extends EncodedChunk {
  entry: number;
  chunk: number;
  /**
   * The record's bytes as encodeRecord makes them, when the thread that
   * coded the chunk framed it already (its payload is then a view of them).
   */
  framed?: Uint8Array;
}

/**
 * Per-tensor hashes in the footer: 'always', or 'auto': left out when they
 * would be more than 1/HASH_SHARE of the container (many small tensors, as
 * in a small model's lossless keyframe, where 8 bytes a tensor was 4% of the
 * fixture folder's container). They name the tensor that differs and let
 * `excp chain` check links before restoring; the fingerprints, stored either
 * way, still check every restored byte.
 */
export type TensorHashes = 'auto' | 'always';

/** See {@link TensorHashes}. */
const HASH_SHARE = 100;

/** Header, records and footer of one container, as bytes. */
export class ContainerAssembler {
  private readonly header: ContainerHeader;
  private readonly kinds: FileKinds;
  private readonly order: RecordOrder;
  private offset = 0;
  private readonly footerEntries: FooterEntry[];
  /** Per entry, the sums of its chunks' ChunkStats.errors (none for entries without them). */
  private readonly errorSums: (ErrorSums | undefined)[] = [];
  private readonly tensorHashers: HasherList;
  private readonly baseHashers: HasherList;
  /** Tensors with a base hash (a residual's weight), by index. */
  private readonly hasBase: Uint8Array;
  private started = false;
  private readonly hashes: TensorHashes;

  /**
   * @param header the container header, written first
   * @param kinds the file kinds of its files
   * @param hashes whether the footer keeps per-tensor hashes (see {@link TensorHashes})
   */
  constructor(header: ContainerHeader, kinds: FileKinds, hashes: TensorHashes = 'auto') {
    this.header = header;
    this.kinds = kinds;
    this.hashes = hashes;
    this.order = new RecordOrder(header);
    this.footerEntries = header.entries.map(() => ({ offsets: [], codedBytes: 0, keptWeights: 0, keptMoments: 0, entropyBits: 0, symbolBits: 0 }));
    this.tensorHashers = new HasherList(header.tensors.length);
    this.baseHashers = new HasherList(header.tensors.length);
    this.hasBase = new Uint8Array(header.tensors.length);
    header.tensors.forEach((t, i) => {
      if (header.entries[t.entry]!.base && header.entries[t.entry]!.weight === i) this.hasBase[i] = 1;
    });
  }

  private out(bytes: Uint8Array, parts: Uint8Array[]): void {
    this.offset += bytes.length;
    parts.push(bytes);
  }

  private start(parts: Uint8Array[]): void {
    if (this.started) return;
    this.started = true;
    this.out(encodeHead(this.header, this.kinds), parts);
  }

  /**
   * The bytes of the next record (after the header, before the first record).
   * @throws ExcpError ERR_CORRUPT for a record out of order
   */
  record(rec: EncodedRecord): Uint8Array[] {
    const parts: Uint8Array[] = [];
    this.start(parts);
    this.order.accept(rec.entry, rec.chunk);
    const e = this.header.entries[rec.entry]!;
    const fe = this.footerEntries[rec.entry]!;
    fe.offsets.push(this.offset);
    const bytes = rec.framed ?? encodeRecord({ entry: rec.entry, chunk: rec.chunk, payload: rec.payload });
    fe.codedBytes += bytes.length;
    fe.keptWeights += rec.stats.keptWeights;
    fe.keptMoments += rec.stats.keptMoments;
    fe.entropyBits = (fe.entropyBits ?? 0) + (rec.stats.entropyBits ?? 0);
    fe.symbolBits = (fe.symbolBits ?? 0) + (rec.stats.symbolBits ?? 0);
    if (rec.stats.errors) {
      const sums: ErrorSums = (this.errorSums[rec.entry] ??= [0, 0, 0, 0, 0, 0]);
      rec.stats.errors.forEach((x, k) => (sums[k] = sums[k]! + x));
    }
    digestTensors(this.header.tensors, e).forEach((t, i) => this.tensorHashers.update(t, encoder.encode(rec.digests[i]!)));
    if (rec.baseDigest && this.hasBase[e.weight]) this.baseHashers.update(e.weight, encoder.encode(rec.baseDigest));
    this.out(bytes, parts);
    return parts;
  }

  /**
   * The bytes after the last record: the footer and the trailer (and the header, for a container without records).
   * @throws ExcpError ERR_TRUNCATED when records are missing
   */
  finish(): Uint8Array[] {
    const parts: Uint8Array[] = [];
    this.start(parts);
    if (!this.order.done) throw new ExcpError('ERR_TRUNCATED', 'container: input ended before every chunk was coded');
    for (const fe of this.footerEntries) fe.entropyBits = Math.round(fe.entropyBits ?? 0);
    this.errorSums.forEach((s, i) => {
      if (s) this.footerEntries[i]!.errors = { weight: relativeError(s[0], s[1]), m: relativeError(s[2], s[3]), v: relativeError(s[4], s[5]) };
    });
    const baseDigests = this.baseHashers.digests();
    const footer = buildFooter(this.header, this.footerEntries, this.tensorHashers.digests(), baseDigests.map((d, i) => (this.hasBase[i] ? d : null)));
    let bases = 0;
    for (const b of this.hasBase) bases += b;
    const storedHashBytes = 8 * (this.tensorHashers.length + bases);
    if (this.hashes === 'auto' && storedHashBytes * HASH_SHARE > this.offset) {
      footer.tensorHashes = null;
      footer.baseHashes = null;
    }
    this.out(encodeTail(footer, this.offset, this.header), parts);
    return parts;
  }
}

/**
 * The footer from per-tensor hashes.
 * @returns the footer with fingerprints
 */
export function buildFooter(header: ContainerHeader, entries: FooterEntry[], tensorHashes: string[], baseHashes: (string | null)[]): ContainerFooter {
  const described = (hashes: (string | null)[]) => header.tensors
    .map((t, i) => ({ name: t.name, dtype: t.dtype, shape: t.shape, hash: hashes[i] ?? null }))
    .filter((t): t is { name: string; dtype: typeof t.dtype; shape: number[]; hash: string } => t.hash !== null);
  const baseList = described(baseHashes);
  return {
    entries,
    tensorHashes,
    baseHashes,
    baseFingerprint: baseList.length ? fingerprintTensors(baseList) : null,
    targetFingerprint: fingerprintTensors(described(tensorHashes)),
  };
}

