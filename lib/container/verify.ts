/**
 * What restore checks as it writes: each restored chunk's digests folded
 * into its tensors' hashes, and at the end the hashes against the footer.
 * Both restore writers (lib/stream/writer.ts, lib/stream/folder-writer.ts)
 * take chunks through here.
 */
import { DTYPE_BYTES, byteSize } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { type HasherList, fingerprintTensors } from '../core/hash.js';
import type { DecodedChunk } from '../method/codec.js';
import type { ContainerFooter, ContainerHeader } from '../model/checkpoint.js';
import { digestTensors } from '../model/pack.js';

const encoder = new TextEncoder();

/**
 * A restored chunk with its position: its bytes, or (`written`) only their
 * digests, when a worker wrote the bytes to their files itself.
 */
export interface RestoredRecord {
  entry: number;
  chunk: number;
  /** With `written`, the buffers are empty: the digests are what counts. */
  restored: DecodedChunk;
  /** Bytes a worker wrote to the output files (the buffers were not sent back). */
  written?: number;
}

/** Which of a restored chunk's buffers a piece is in. */
export type ChunkBuffer = 'weight' | 'expAvg' | 'expAvgSq';

/** One tensor's part of a chunk: bytes [at, at + length) of a chunk buffer are bytes [offset, offset + length) of the tensor. */
export interface ChunkPiece {
  tensor: number;
  buffer: ChunkBuffer;
  at: number;
  length: number;
  offset: number;
}

/**
 * The tensor pieces of one chunk of an entry, in digest order (weight,
 * exp_avg, exp_avg_sq; a pack's non-empty members, one after the other in
 * its weight buffer): one digest per piece. Both restore writers and the
 * workers that write restored bytes themselves place chunks by these.
 * @param header the container header
 * @param entry entry index
 * @param chunk chunk index
 */
export function chunkPieces(header: ContainerHeader, entry: number, chunk: number): ChunkPiece[] {
  const e = header.entries[entry]!;
  const tensors = header.tensors;
  if (e.kind === 'pack') {
    let at = 0;
    return digestTensors(tensors, e).map((t) => {
      const length = byteSize(tensors[t]!.dtype, tensors[t]!.shape, 'pack');
      const piece: ChunkPiece = { tensor: t, buffer: 'weight', at, length, offset: 0 };
      at += length;
      return piece;
    });
  }
  const chunkElements = header.options.chunkElements;
  const start = chunk * chunkElements;
  const count = Math.max(0, Math.min(e.elements - start, chunkElements));
  const pieces: ChunkPiece[] = [];
  for (const [t, buffer] of [[e.weight, 'weight'], [e.expAvg, 'expAvg'], [e.expAvgSq, 'expAvgSq']] as const) {
    if (t === null) continue;
    const eb = DTYPE_BYTES[tensors[t]!.dtype];
    pieces.push({ tensor: t, buffer, at: 0, length: count * eb, offset: start * eb });
  }
  return pieces;
}

/**
 * Take one restored chunk, for both writers: fold each piece's digest into
 * its tensor's hash and hand its bytes on with their byte offset in the
 * tensor (unless a worker already wrote them: `record.written`).
 * @param header the container header (null: no header came yet)
 * @param record the restored chunk
 * @param hashers one per tensor
 * @param place receives tensor index, bytes and byte offset, in piece order (see {@link chunkPieces})
 * @returns the bytes taken
 * @throws ExcpError ERR_CORRUPT for a chunk before the header, a missing digest or a buffer of the wrong size
 */
export function takeRestoredChunk(header: ContainerHeader | null, record: RestoredRecord, hashers: HasherList,
  place: (tensor: number, bytes: Uint8Array, offset: number) => void): number {
  if (!header) throw new ExcpError('ERR_CORRUPT', 'restore: chunk before header');
  const { digests } = record.restored;
  let taken = 0;
  chunkPieces(header, record.entry, record.chunk).forEach((piece, i) => {
    const digest = digests[i];
    if (digest === undefined) throw new ExcpError('ERR_CORRUPT', 'restore: chunk digest missing');
    hashers.update(piece.tensor, encoder.encode(digest));
    taken += piece.length;
    if (record.written !== undefined) return;
    const buffer = record.restored[piece.buffer];
    if (!buffer || buffer.length < piece.at + piece.length) throw new ExcpError('ERR_CORRUPT', 'restore: a restored chunk is shorter than its tensors');
    place(piece.tensor, buffer.subarray(piece.at, piece.at + piece.length), piece.offset);
  });
  return taken;
}

/**
 * Compare restored tensor hashes with the footer.
 * @throws ExcpError ERR_FINGERPRINT naming the first differing tensor
 */
export function verifyFingerprints(header: ContainerHeader, footer: ContainerFooter, hashes: string[]): void {
  hashes.forEach((h, i) => {
    if (footer.tensorHashes && h !== footer.tensorHashes[i]) {
      throw new ExcpError('ERR_FINGERPRINT', `restore: tensor '${header.tensors[i]!.name}' restored to different bytes than recorded at compression`);
    }
  });
  const target = fingerprintTensors(header.tensors.map((t, i) => ({ name: t.name, dtype: t.dtype, shape: t.shape, hash: hashes[i]! })));
  if (target !== footer.targetFingerprint) throw new ExcpError('ERR_FINGERPRINT', 'restore: checkpoint fingerprint differs from the one recorded at compression');
}
