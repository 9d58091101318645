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
import { takeRestoredChunk, verifyFingerprints } from '../container/verify.js';
import { openCheckpoint } from '../formats/registry.js';
import { buildSafetensorsHeader, parseSafetensorsHeader } from '../formats/safetensors.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { entryTensors } from '../model/pack.js';
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
    const hashes = footer.tensorHashes;
    // No per-tensor hashes: the writer leaves them out only of a container
    // they would take more than 1% of, a small one, so the other entries are
    // decoded too (into nothing) and the whole fingerprint is checked, when
    // every base they need is at hand; else only the CRCs vouch for the bytes.
    const picked = new Set(entries);
    const rest = hashes ? [] : header.entries.map((_, i) => i).filter((i) => !picked.has(i));
    const based = (list: number[]) => list.filter((e) => header.entries[e]!.base);
    const whole = hashes === null && (based(rest).length === 0 || options.base !== undefined);
    const needed = [...based(entries), ...(whole ? based(rest) : [])];
    const base = needed.length && options.base !== undefined ? await openCheckpoint(options.base, { role: 'base', spill: { dir: options.tmp, stage: 'restore' } }) : null;
    base?.expect?.(needed.map((e) => header.tensors[header.entries[e]!.weight]!.name));
    const { raw, tensors: layout } = buildSafetensorsHeader(chosen.map((t) => header.tensors[t]!), metadataOf(header));
    const at = new Map(chosen.map((t, k) => [t, raw.length + layout[k]!.begin]));
    let records = 0;
    const hashers = new HasherList(header.tensors.length);
    // Checked before a file is renamed into place: a tensor that does not match leaves nothing behind.
    const check = async (): Promise<void> => {
      if (hashes) {
        const digests = hashers.digests();
        for (const t of chosen) {
          if (digests[t] !== hashes[t]) throw new ExcpError('ERR_FINGERPRINT', `restore: tensor '${header.tensors[t]!.name}' restored to different bytes than recorded at compression`);
        }
      } else if (whole) {
        for (const e of rest) records += await decodeEntry(source, header, footer, e, base, hashers, () => Promise.resolve());
        verifyFingerprints(header, footer, hashers.digests());
      }
    };
    try {
      const write = async (out: Writable, fd?: number): Promise<void> => {
        if (fd !== undefined) {
          // A file: every chosen member of an entry is placed as its chunks are decoded, each entry once.
          await writeAt(fd, raw, 0);
          for (const e of entries) records += await decodeEntry(source, header, footer, e, base, hashers, (t, bytes, offset) => (at.has(t) ? writeAt(fd, bytes, at.get(t)! + offset) : Promise.resolve()));
          await check();
          return;
        }
        // A stream: tensor after tensor, in file order (an entry with several chosen members is decoded once per member).
        await writeOut(out, raw);
        const seen = new Set<number>();
        for (const t of chosen) {
          const own = new HasherList(header.tensors.length);
          const e = header.tensors[t]!.entry;
          records += await decodeEntry(source, header, footer, e, base, own, (m, bytes) => (m === t ? writeOut(out, bytes) : Promise.resolve()));
          if (!seen.has(e)) {
            // The entry's every member once, for the whole fingerprint.
            for (const m of entryTensors(header.entries[e]!)) hashers.adopt(own, m);
            seen.add(e);
          }
        }
        await check();
      };
      if (typeof target === 'string') await writeAtomically(target, write, { force: options.force, inputs: [...(options.inputs ?? []), input] });
      else await write(target);
    } finally {
      await base?.close();
    }
    return { tensors: chosen.map((t) => header.tensors[t]!.name), records, hashed: hashes !== null || whole };
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
