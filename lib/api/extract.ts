/**
 * `excp restore X --tensor NAME ...`: a few tensors out of a container by
 * random access. The footer indexes every record by its byte offset, so
 * only the records of the entries that hold the tensors asked for are read
 * and decoded (with the base bytes they need), and the time and memory are
 * those of what is asked, not of the checkpoint. The tensors are written as
 * a safetensors file (the original's `__metadata__` kept for a single-file
 * container), each checked against its hash when the footer keeps them.
 */
import type { Writable } from 'node:stream';
import { DTYPE_BYTES } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { HasherList } from '../core/hash.js';
import { type OutputOptions, writeAtomically } from '../io/output.js';
import { decodeChunk } from '../method/codec.js';
import type { ContainerFooter, ContainerHeader } from '../model/checkpoint.js';
import { chunkCount, layoutOf } from '../container/format.js';
import { type ContainerSource, readRecordAt } from '../container/index.js';
import { takeRestoredChunk } from '../container/verify.js';
import { openCheckpoint } from '../formats/registry.js';
import { buildSafetensorsHeader, parseSafetensorsHeader } from '../formats/safetensors.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { withContainerIndex } from './open.js';

/** Options of {@link restoreTensors}. */
export interface TensorRestoreOptions extends OutputOptions {
  /** The base the container was made against (needed when a chosen tensor's entry is a residual). */
  base?: string | Uint8Array | undefined;
  /** Also restore each chosen weight's exp_avg and exp_avg_sq. */
  withMoments?: boolean | undefined;
  /** Folder for what waits when the base is a stream. */
  tmp?: string | undefined;
}

/** What was restored. */
export interface TensorRestoreResult {
  /** The tensors written, in file order. */
  tensors: string[];
  /** Records read and decoded. */
  records: number;
  /** Whether each tensor was checked against a hash of the footer (false: the container keeps none, only the CRCs were checked). */
  hashed: boolean;
}

/**
 * The tensors asked for, as header indices in container order.
 * @throws ExcpError ERR_INVALID_ARG naming a tensor the container does not hold
 */
function chooseTensors(header: ContainerHeader, names: readonly string[], withMoments: boolean): number[] {
  const index = new Map(header.tensors.map((t, i) => [t.name, i]));
  const chosen = new Set<number>();
  for (const name of names) {
    const i = index.get(name);
    if (i === undefined) throw new ExcpError('ERR_INVALID_ARG', `restore: the container holds no tensor '${name}' (excp inspect --names lists them)`);
    chosen.add(i);
    const e = header.entries[header.tensors[i]!.entry]!;
    if (withMoments && e.kind === 'param' && e.weight === i) {
      if (e.expAvg !== null) chosen.add(e.expAvg);
      if (e.expAvgSq !== null) chosen.add(e.expAvgSq);
    }
  }
  return [...chosen].sort((a, b) => a - b);
}

/** The `__metadata__` of a single-file container's safetensors header, or null. */
function metadataOf(header: ContainerHeader): Record<string, string> | null {
  const only = header.files.length === 1 ? header.files[0]! : null;
  if (!only || only.path !== null || only.kind !== 'safetensors' || !(only.layout instanceof Uint8Array)) return null;
  return parseSafetensorsHeader(only.layout).metadata;
}

/**
 * Decode the chunks of one entry, one at a time, in order.
 * @param place receives each member tensor's restored bytes and their offset in it (hashes folded into `hashers`)
 * @returns the records read
 */
async function decodeEntry(source: ContainerSource, header: ContainerHeader, footer: ContainerFooter, entry: number, base: Checkpoint | null,
  hashers: HasherList, place: (tensor: number, bytes: Uint8Array, offset: number) => Promise<void>): Promise<number> {
  const e = header.entries[entry]!;
  const spec = header.tensors[e.weight]!;
  const C = header.options.chunkElements;
  const count = chunkCount(e, C);
  const offsets = footer.entries[entry]!.offsets;
  if (offsets.length !== count) throw new ExcpError('ERR_CORRUPT', `container: the footer indexes ${offsets.length} records of tensor '${spec.name}', it has ${count}`);
  const layout = layoutOf(header, entry);
  for (let c = 0; c < count; c++) {
    const payload = await readRecordAt(source, header, offsets[c]!, entry, c);
    const start = c * C;
    const n = Math.min(e.elements - start, C);
    let baseBytes: Uint8Array | null = null;
    if (e.base) {
      if (!base) throw new ExcpError('ERR_BASE_MISSING', `restore: tensor '${spec.name}' was compressed against a base checkpoint; pass --base`);
      const info = base.byName.get(spec.name);
      const eb = DTYPE_BYTES[spec.dtype];
      if (!info || info.dtype !== spec.dtype || info.end - info.begin !== e.elements * eb) {
        throw new ExcpError('ERR_BASE_MISMATCH', `restore: base ${base.path} has no tensor '${spec.name}' of dtype ${spec.dtype} and shape [${spec.shape.join(', ')}]`);
      }
      baseBytes = await base.tensorBytes(info, start * eb, (start + n) * eb);
    }
    const restored = decodeChunk(layout, payload, n, baseBytes, spec.name, { entry, chunk: c, start });
    const placed: Promise<void>[] = [];
    takeRestoredChunk(header, { entry, chunk: c, restored }, hashers, (t, bytes, offset) => placed.push(place(t, bytes, offset)));
    await Promise.all(placed);
  }
  return count;
}

/**
 * Restore chosen tensors of a container file into a safetensors file (or a stream).
 * @param input the container file (random access)
 * @param names tensor names (`excp inspect --names`)
 * @param target a path (written atomically) or a Writable (written in order)
 * @param options base, withMoments, force, inputs
 * @returns the tensors written and how they were checked
 * @throws ExcpError ERR_INVALID_ARG (an unknown name), ERR_BASE_MISSING, ERR_BASE_MISMATCH, ERR_CRC, ERR_FINGERPRINT
 */
export async function restoreTensors(input: string, names: readonly string[], target: string | Writable, options: TensorRestoreOptions = {}): Promise<TensorRestoreResult> {
  return withContainerIndex(input, async (source, header, footer) => {
    const chosen = chooseTensors(header, names, options.withMoments === true);
    const entries = [...new Set(chosen.map((t) => header.tensors[t]!.entry))].sort((a, b) => a - b);
    const needsBase = entries.some((e) => header.entries[e]!.base);
    const base = needsBase && options.base !== undefined ? await openCheckpoint(options.base, { role: 'base', spill: { dir: options.tmp, stage: 'restore' } }) : null;
    base?.expect?.(entries.filter((e) => header.entries[e]!.base).map((e) => header.tensors[header.entries[e]!.weight]!.name));
    const { raw, tensors: layout } = buildSafetensorsHeader(chosen.map((t) => header.tensors[t]!), metadataOf(header));
    const at = new Map(chosen.map((t, k) => [t, raw.length + layout[k]!.begin]));
    let records = 0;
    const hashers = new HasherList(header.tensors.length);
    try {
      const write = async (out: Writable, fd?: number): Promise<void> => {
        if (fd !== undefined) {
          // A file: every chosen member of an entry is placed as its chunks are decoded, each entry once.
          await writeAt(fd, raw, 0);
          for (const e of entries) records += await decodeEntry(source, header, footer, e, base, hashers, (t, bytes, offset) => (at.has(t) ? writeAt(fd, bytes, at.get(t)! + offset) : Promise.resolve()));
          return;
        }
        // A stream: tensor after tensor, in file order (an entry with several chosen members is decoded once per member).
        await writeOut(out, raw);
        for (const t of chosen) {
          const own = new HasherList(header.tensors.length);
          records += await decodeEntry(source, header, footer, header.tensors[t]!.entry, base, own, (m, bytes) => (m === t ? writeOut(out, bytes) : Promise.resolve()));
          hashers.adopt(own, t);
        }
      };
      if (typeof target === 'string') await writeAtomically(target, write, { force: options.force, inputs: [...(options.inputs ?? []), input] });
      else await write(target);
    } finally {
      await base?.close();
    }
    const digests = hashers.digests();
    const hashes = footer.tensorHashes;
    if (hashes) {
      for (const t of chosen) {
        if (digests[t] !== hashes[t]) throw new ExcpError('ERR_FINGERPRINT', `restore: tensor '${header.tensors[t]!.name}' restored to different bytes than recorded at compression`);
      }
    }
    return { tensors: chosen.map((t) => header.tensors[t]!.name), records, hashed: hashes !== null };
  });
}

async function writeAt(fd: number, bytes: Uint8Array, position: number): Promise<void> {
  const { write } = await import('node:fs');
  let done = 0;
  while (done < bytes.length) {
    done += await new Promise<number>((resolve, reject) => write(fd, bytes, done, bytes.length - done, position + done, (err, n) => (err ? reject(err) : resolve(n))));
  }
}

function writeOut(out: Writable, bytes: Uint8Array): Promise<void> {
  return new Promise((resolve, reject) => {
    out.write(bytes, (err) => (err ? reject(err) : resolve()));
  });
}
