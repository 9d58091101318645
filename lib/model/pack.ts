/**
 * Packs (planning, pure): small exactly coded tensors of one dtype joined
 * into one entry, coded as the one stream of their concatenation.
 *
 * Why: a checkpoint has many tiny tensors (biases, norms, and in a folder
 * the files: JSON, pickles, RNG state). On its own, each pays a record (type,
 * length, CRC), stream headers, and adaptive models that never learn from a
 * dozen elements, so a 12-element tensor stored raw costs more than its
 * bytes. Concatenated, they share one model and byte data shares one LZ
 * window (the same pickle framing in optimizer.pt, scheduler.pt and
 * training_args.bin). One stream for all members was smaller than a stream
 * per role on both fixture folders (bf16: 11994 vs 12077 bytes for the 49
 * parameters), so members are simply ordered by role (weights and plain
 * tensors, then exp_avg, then exp_avg_sq): neighbours then have alike values.
 *
 * A pack has no base (the transform against a base is chosen per stream, and
 * a pack's moments have none) and one chunk: its members hold at most
 * chunkElements elements together, so memory stays bounded. A member's
 * tensor hash is the same as unpacked (the hash of its one chunk digest; an
 * empty member, which has no chunk, none), so fingerprints do not depend on
 * packing.
 */
import { DTYPE_BYTES, byteSize, elementCount } from '../core/dtype.js';
import type { EntrySpec, Role, TensorSpec } from './checkpoint.js';

/**
 * Multi-byte tensors up to this many elements are packed: below it the
 * per-tensor framing and model learning are a visible share, above it a
 * tensor's own models pay off. Byte data (files, skeletons) is packed up to
 * the chunk size, for the shared LZ window.
 */
export const PACK_TENSOR_ELEMENTS = 4096;

const ROLE_RANK: Record<Role, number> = { weight: 0, plain: 0, exp_avg: 1, exp_avg_sq: 2 };

/** The tensors an entry codes: a pack's members, else weight and moments. */
export function entryTensors(e: EntrySpec): number[] {
  if (e.members) return e.members;
  const out = [e.weight];
  if (e.expAvg !== null) out.push(e.expAvg);
  if (e.expAvgSq !== null) out.push(e.expAvgSq);
  return out;
}

/**
 * The tensors an entry's chunk digests are for, in digest order: its weight
 * and moments, or a pack's non-empty members (an empty tensor has no chunk,
 * packed or not, so its hash stays that of no digest).
 * @param tensors the header's tensors
 * @param e an entry
 * @returns tensor indices, one per digest of each of the entry's chunks
 */
export function digestTensors(tensors: readonly TensorSpec[], e: EntrySpec): number[] {
  const members = entryTensors(e);
  return e.kind === 'pack' ? members.filter((t) => elementCount(tensors[t]!.shape, 'pack') > 0) : members;
}

/** Raw bytes of all of an entry's tensors (whole tensors, not one chunk). */
export function entryRawBytes(tensors: readonly TensorSpec[], e: EntrySpec): number {
  let bytes = 0;
  for (const t of entryTensors(e)) bytes += byteSize(tensors[t]!.dtype, tensors[t]!.shape, 'pack');
  return bytes;
}

function packable(tensors: readonly TensorSpec[], e: EntrySpec, chunkElements: number): boolean {
  if (e.kind === 'pack' || !e.exactWeight || e.base || e.elements <= 0) return false;
  if (e.kind === 'param' && !e.exactMoments) return false;
  const members = entryTensors(e);
  const dtype = tensors[e.weight]!.dtype;
  if (members.some((t) => tensors[t]!.dtype !== dtype)) return false;
  const limit = DTYPE_BYTES[dtype] === 1 ? chunkElements : PACK_TENSOR_ELEMENTS;
  return e.elements <= limit && e.elements * members.length <= chunkElements;
}

/**
 * Join packable entries into packs, per dtype, each pack at the place of its
 * first entry, closed when the next entry would take it past chunkElements.
 * A pack of one entry stays that entry. Sets each tensor's `entry`.
 * @param tensors the header's tensors (their `entry` fields are rewritten)
 * @param entries the planned entries
 * @param chunkElements the container's chunk size
 * @returns the new entry list
 */
export function packEntries(tensors: TensorSpec[], entries: readonly EntrySpec[], chunkElements: number): EntrySpec[] {
  type Open = { entries: EntrySpec[]; elements: number };
  const slots: (EntrySpec | Open)[] = [];
  const open = new Map<string, Open>();
  for (const e of entries) {
    if (!packable(tensors, e, chunkElements)) {
      slots.push(e);
      continue;
    }
    const dtype = tensors[e.weight]!.dtype;
    const elements = e.elements * entryTensors(e).length;
    let pack = open.get(dtype);
    if (pack && pack.elements + elements > chunkElements) pack = undefined;
    if (!pack) {
      pack = { entries: [], elements: 0 };
      slots.push(pack);
      open.set(dtype, pack);
    }
    pack.entries.push(e);
    pack.elements += elements;
  }
  const out = slots.map((slot): EntrySpec => {
    if (!('entries' in slot)) return slot;
    if (slot.entries.length === 1) return slot.entries[0]!;
    const members = slot.entries.flatMap(entryTensors).map((t, order) => ({ t, order }))
      .sort((a, b) => ROLE_RANK[tensors[a.t]!.role] - ROLE_RANK[tensors[b.t]!.role] || a.order - b.order)
      .map((m) => m.t);
    return { kind: 'pack', weight: members[0]!, expAvg: null, expAvgSq: null, exactWeight: true, exactMoments: false, base: false, elements: slot.elements, members };
  });
  out.forEach((e, i) => {
    for (const t of entryTensors(e)) tensors[t]!.entry = i;
  });
  return out;
}
