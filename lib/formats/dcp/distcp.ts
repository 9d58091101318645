/**
 * A `.distcp` file of a distributed checkpoint: a sequence of items, each a
 * whole `torch.save` zip at `[offset, offset + length)` (the default
 * `SerializationFormat.TORCH_SAVE` of DCP's FileSystemWriter), which
 * `.metadata` lists (lib/formats/dcp/metadata.ts). torch 2.13 writes them
 * back to back, non-tensor ("bytes") items first, then tensor items; offsets
 * inside each zip (and its 64-byte alignment) count from the item's start.
 *
 * A tensor item is `torch.save(shard)`: a pickle that rebuilds one tensor
 * from one storage record holding the shard's bytes. Its bytes are cut out
 * of the file and become a tensor of the checkpoint; everything else (zip
 * records, pickles, bytes items, tensors of dtypes excp does not code) stays
 * in the file's skeleton and is carried exactly. Bytes items are never
 * unpickled.
 */
import { type DType, DTYPE_BYTES, elementCount } from '../../core/dtype.js';
import { ExcpError } from '../../core/errors.js';
import { readTorchCheckpoint } from '../torch/serialization.js';
import type { ReadAt } from '../torch/zip.js';
import type { DcpChunk, DcpItem, DcpStorage } from './metadata.js';

/** A tensor cut out of a `.distcp` file. */
export interface DistcpCut {
  /** The item's key in `.metadata`. */
  key: string;
  chunk: DcpChunk;
  dtype: DType;
  /** The chunk's shape (its sizes). */
  shape: number[];
  /** The tensor's first byte in the file. */
  offset: number;
  length: number;
  /** The item (a whole zip) that holds it: [offset, length] in the file. */
  item: [number, number];
  /** The CRC-32 its zip records for exactly these bytes, or null (a storage larger than the tensor). */
  crc: number | null;
}

/**
 * Check a file's items and find the tensors to cut out of it.
 * @param path the file's path (for messages)
 * @param size the file's size
 * @param readAt reader of the file
 * @param storage the `.metadata` records of this file
 * @param items the `.metadata` items by key
 * @returns the cut tensors, in file order
 * @throws ExcpError ERR_TRUNCATED (an item past the end of the file), ERR_SHAPE
 *   (overlapping items; a tensor item whose tensor is not its chunk), ERR_DTYPE,
 *   and the zip and pickle readers' errors for a malformed tensor item
 */
export function readDistcpItems(path: string, size: number, readAt: ReadAt, storage: readonly DcpStorage[], items: ReadonlyMap<string, DcpItem>): DistcpCut[] {
  const sorted = [...storage].sort((a, b) => a.offset - b.offset);
  let end = 0;
  let previous: DcpStorage | null = null;
  for (const s of sorted) {
    if (s.offset + s.length > size) {
      throw new ExcpError('ERR_TRUNCATED', `dcp: ${path}: item '${s.key}' at [${s.offset}, ${s.offset + s.length}) runs past the end of the file (${size} bytes)`);
    }
    if (previous && s.offset < end) {
      throw new ExcpError('ERR_SHAPE', `dcp: ${path}: items '${previous.key}' [${previous.offset}, ${end}) and '${s.key}' [${s.offset}, ${s.offset + s.length}) overlap`);
    }
    end = s.offset + s.length;
    previous = s;
  }
  const cuts: DistcpCut[] = [];
  for (const s of sorted) {
    const item = items.get(s.key);
    if (!item || item.kind !== 'tensor' || !s.chunk || item.dtype === null) continue;
    const where = `dcp: ${path}: item '${s.key}'${item.chunks.length > 1 ? ` chunk [${s.chunk.offsets.join(', ')}]` : ''}`;
    const at = s.offset;
    const itemRead: ReadAt = (offset, length) => readAt(at + offset, length);
    const zip = readTorchCheckpoint(s.length, itemRead, { stage: where });
    const [tensor, ...more] = zip.tensors;
    if (!tensor || more.length > 0 || tensor.keys.length !== 0) {
      throw new ExcpError('ERR_SHAPE', `${where}: holds ${zip.tensors.length} tensors, not the one chunk .metadata lists`);
    }
    if (tensor.dtype !== item.dtype) {
      throw new ExcpError('ERR_DTYPE', `${where}: the tensor is ${tensor.dtype}, .metadata says ${item.dtype} (torch.${item.torchDtype})`);
    }
    if (tensor.shape.join() !== s.chunk.sizes.join()) {
      throw new ExcpError('ERR_SHAPE', `${where}: the tensor is [${tensor.shape.join(', ')}], .metadata gives the chunk [${s.chunk.sizes.join(', ')}]`);
    }
    const length = elementCount(tensor.shape, where) * DTYPE_BYTES[tensor.dtype];
    // A view into a larger storage stays in the skeleton (torch 2.13 clones shards, so this does not happen).
    if (!tensor.contiguous || length === 0) continue;
    const entry = zip.storages.get(tensor.storageKey)!.entry;
    const crc = entry.dataOffset === tensor.byteOffset && entry.size === length ? entry.crc32 : null;
    cuts.push({ key: s.key, chunk: s.chunk, dtype: tensor.dtype, shape: [...tensor.shape], offset: at + tensor.byteOffset, length, item: [s.offset, s.length], crc });
  }
  return cuts;
}

/** The rank a DCP file name says wrote it (`__{rank}_{i}.distcp`), or null. */
export function rankOfFile(path: string): number | null {
  const m = /(^|\/)__(\d+)_\d+\.distcp$/.exec(path);
  return m ? Number(m[2]) : null;
}
