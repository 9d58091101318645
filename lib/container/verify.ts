/**
 * What restore checks as it writes: each restored chunk's digests folded
 * into its tensors' hashes, and at the end the hashes against the footer.
 * Both restore writers (lib/stream/writer.ts, lib/stream/folder-writer.ts)
 * take chunks through here.
 */
import { DTYPE_BYTES } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { type HasherList, fingerprintTensors } from '../core/hash.js';
import type { DecodedChunk } from '../method/codec.js';
import type { ContainerFooter, ContainerHeader } from '../model/checkpoint.js';
import { packSlices } from '../model/pack.js';

const encoder = new TextEncoder();

/** A restored chunk with its position. */
export interface RestoredRecord {
  entry: number;
  chunk: number;
  restored: DecodedChunk;
}

/**
 * Take one restored chunk, for both writers: fold each member tensor's
 * digest into its hash and hand its bytes on with their byte offset in the
 * tensor.
 * @param header the container header (null: no header came yet)
 * @param record the restored chunk
 * @param hashers one per tensor
 * @param place receives tensor index, bytes and byte offset, in member order (weight, exp_avg, exp_avg_sq; a pack's non-empty members)
 * @returns the bytes taken
 * @throws ExcpError ERR_CORRUPT for a chunk before the header or a missing digest
 */
export function takeRestoredChunk(header: ContainerHeader | null, record: RestoredRecord, hashers: HasherList,
  place: (tensor: number, bytes: Uint8Array, offset: number) => void): number {
  if (!header) throw new ExcpError('ERR_CORRUPT', 'restore: chunk before header');
  const e = header.entries[record.entry]!;
  if (e.kind === 'pack') {
    // One digest per non-empty member (the codec's `pieces`), as the writer hashed them.
    const { weight, digests } = record.restored;
    packSlices(header.tensors, e, weight).forEach((m, i) => {
      const digest = digests[i];
      if (digest === undefined) throw new ExcpError('ERR_CORRUPT', 'restore: chunk digest missing');
      hashers.update(m.tensor, encoder.encode(digest));
      place(m.tensor, m.bytes, 0);
    });
    return weight.length;
  }
  const { weight, expAvg, expAvgSq, digests } = record.restored;
  const buffers = [weight, expAvg, expAvgSq];
  let d = 0;
  let taken = 0;
  [e.weight, e.expAvg, e.expAvgSq].forEach((t, i) => {
    const bytes = buffers[i];
    if (t === null || !bytes) return;
    const digest = digests[d++];
    if (digest === undefined) throw new ExcpError('ERR_CORRUPT', 'restore: chunk digest missing');
    hashers.update(t, encoder.encode(digest));
    taken += bytes.length;
    place(t, bytes, record.chunk * header.options.chunkElements * DTYPE_BYTES[header.tensors[t]!.dtype]);
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
