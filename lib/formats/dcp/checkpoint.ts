/**
 * The input format "a PyTorch distributed checkpoint folder" (DCP: FSDP2,
 * torchtitan, accelerate's SHARDED_STATE_DICT) as one virtual tensor table.
 *
 * A folder is taken when it, or a folder right below it (accelerate's
 * `pytorch_model_fsdp_0/` and `optimizer_0/`), holds a `.metadata` file.
 * Every folder with a `.metadata` is a DCP folder; its files become:
 *  - `.metadata`: a blob `__file__/PATH`, carried byte for byte (it is read,
 *    with DCP's allow-list, never executed: lib/formats/dcp/metadata.ts);
 *  - each `.distcp` file it lists: kind `distcp`, its tensor chunks cut out
 *    and named by their keys (lib/formats/dcp/keys.ts), the rest of the file
 *    its skeleton `__file__/PATH`;
 * and every other file of the tree (a Trainer's `scheduler.pt`,
 * `trainer_state.json`, ...) a blob, never unpickled.
 *
 * Per rank: with `rank` R, only the `.distcp` files rank R wrote
 * (`__R_i.distcp`) are read, plus every `.metadata` (each rank's container
 * can then be restored, and used as a base, on its own) and, for rank 0,
 * every other file. `info.dcp` records the rank, the ranks the folder was
 * written by and a fingerprint of its `.metadata` files, which ties a step's
 * per-rank containers together (lib/api/ranks.ts).
 */
import { closeSync, fstatSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from '../../core/crc32.js';
import { DTYPE_BYTES, type DType, elementCount } from '../../core/dtype.js';
import { ExcpError } from '../../core/errors.js';
import { Hasher } from '../../core/hash.js';
import { readExactlySync } from '../../io/read.js';
import type { Checkpoint, CheckpointFile, TensorInfo } from '../../model/checkpoint.js';
import { type Segment, readSegments } from '../file-format.js';
import { FILE_PREFIX, listFiles } from '../folder.js';
import { skeletonSegments } from '../torch-kind.js';
import { type DistcpCut, rankOfFile, readDistcpItems } from './distcp.js';
import type { DistcpLayout } from './distcp-kind.js';
import { type DcpFolder, nameChunks } from './keys.js';
import { type DcpStorage, parseDcpMetadata } from './metadata.js';

/** The name of a DCP folder's metadata file. */
export const METADATA_FILE = '.metadata';

/** Largest `.metadata` read, in bytes. */
const MAX_METADATA_BYTES = 256 * 1024 * 1024;

/** Whether a relative path names a DCP folder's metadata file. */
export function isMetadataPath(path: string): boolean {
  return path === METADATA_FILE || path.endsWith(`/${METADATA_FILE}`);
}

/** What `info.dcp` of a per-rank container holds. */
export interface DcpRankInfo {
  /** The rank whose files the container holds. */
  rank: number;
  /** Every rank that wrote `.distcp` files, ascending. */
  ranks: number[];
  /** Fingerprint of the `.metadata` files (paths and bytes): equal in every rank's container of one step. */
  metadata: string;
}

/**
 * Where a virtual tensor's bytes are; a cut tensor also has the CRC its zip
 * records, checked as the tensor is read front to back (compress reads each
 * tensor once, in order), so a corrupt item is refused at no extra read.
 */
type Source = { fd: number; offset: number; check?: CrcCheck } | { fd: number; segments: Segment[] };

/** A tensor's recorded CRC and the CRC of its bytes read so far, in order. */
interface CrcCheck {
  recorded: number;
  /** Bytes folded into `crc`; -1 once the tensor was read out of order (then it is not checked). */
  position: number;
  crc: number;
  where: string;
}

/** Options of {@link DcpCheckpoint.open}. */
export interface DcpOpenOptions {
  /** Read only this rank's `.distcp` files (and the shared ones); null: every file. */
  rank?: number | null;
}

/** A DCP checkpoint folder as a {@link Checkpoint}. */
export class DcpCheckpoint implements Checkpoint {
  readonly path: string;
  readonly tensors: TensorInfo[];
  readonly byName: Map<string, TensorInfo>;
  readonly dataLength: number;
  readonly files: CheckpointFile[];
  readonly info: Record<string, unknown> | null;
  private readonly sources: Map<string, Source>;
  private readonly fds: number[];

  private constructor(path: string, tensors: TensorInfo[], files: CheckpointFile[], sources: Map<string, Source>, fds: number[], info: DcpRankInfo | null) {
    this.path = path;
    this.tensors = tensors;
    this.byName = new Map(tensors.map((t) => [t.name, t]));
    this.dataLength = tensors.reduce((s, t) => s + t.end - t.begin, 0);
    this.files = files;
    this.info = info ? { dcp: info } : null;
    this.sources = sources;
    this.fds = fds;
  }

  /**
   * Open a DCP folder: parse every `.metadata`, check the items of the `.distcp` files read.
   * @param dir the folder
   * @param options the rank to read, or every file
   * @throws ExcpError ERR_UNSAFE_PICKLE, ERR_BAD_HEADER, ERR_SHAPE, ERR_TRUNCATED, ERR_IO, ...
   */
  static async open(dir: string, options: DcpOpenOptions = {}): Promise<DcpCheckpoint> {
    const rank = options.rank ?? null;
    const paths = await listFiles(dir);
    const fds: number[] = [];
    try {
      const folders: DcpFolder[] = [];
      const metadataBytes = new Map<string, Uint8Array>();
      for (const p of paths.filter(isMetadataPath)) {
        const fd = openSync(join(dir, p), 'r');
        let bytes: Uint8Array;
        try {
          const size = fstatSync(fd).size;
          if (size > MAX_METADATA_BYTES) throw new ExcpError('ERR_BAD_HEADER', `${join(dir, p)}: ${size} bytes exceeds the limit of ${MAX_METADATA_BYTES}`);
          bytes = readExactlySync(fd, 0, size, join(dir, p));
        } finally {
          closeSync(fd);
        }
        metadataBytes.set(p, bytes);
        folders.push({ dir: p === METADATA_FILE ? '' : p.slice(0, -METADATA_FILE.length - 1), metadata: parseDcpMetadata(bytes, { stage: join(dir, p), maxBytes: MAX_METADATA_BYTES }) });
      }
      // Every storage file a .metadata lists, with its folder and records.
      const storageFiles = new Map<string, { folder: DcpFolder; records: DcpStorage[] }>();
      const ranks = new Set<number>();
      for (const folder of folders) {
        for (const s of folder.metadata.storage) {
          const path = folder.dir ? `${folder.dir}/${s.path}` : s.path;
          const entry = storageFiles.get(path) ?? { folder, records: [] };
          entry.records.push(s);
          storageFiles.set(path, entry);
          const r = rankOfFile(path);
          if (r !== null) ranks.add(r);
          else if (rank !== null) throw new ExcpError('ERR_INVALID_ARG', `dcp: ${join(dir, path)}: the file name does not say which rank wrote it (__RANK_I.distcp), so --rank cannot pick it`);
        }
      }
      if (rank !== null && rank !== 0 && !ranks.has(rank)) {
        throw new ExcpError('ERR_INVALID_ARG', `dcp: ${dir}: rank ${rank} wrote no .distcp file (ranks ${[...ranks].sort((a, b) => a - b).join(', ') || 'none'} did)`);
      }
      const onDisk = new Set(paths);
      for (const path of storageFiles.keys()) {
        if ((rank === null || rankOfFile(path) === rank) && !onDisk.has(path)) throw new ExcpError('ERR_IO', `dcp: ${join(dir, path)}: listed in .metadata but missing`);
      }
      const nameOf = nameChunks(folders);
      const tensors: TensorInfo[] = [];
      const sources = new Map<string, Source>();
      const files: CheckpointFile[] = [];
      let virtual = 0;
      const add = (name: string, dtype: DType, shape: number[], source: Source): void => {
        if (sources.has(name)) throw new ExcpError('ERR_BAD_HEADER', `dcp: ${dir}: tensor name '${name}' occurs twice`);
        const bytes = elementCount(shape, `dcp: tensor '${name}'`) * DTYPE_BYTES[dtype];
        tensors.push({ name, dtype, shape, begin: virtual, end: virtual + bytes });
        virtual += bytes;
        sources.set(name, source);
      };
      const hash = new Hasher();
      for (const path of paths) {
        const storage = storageFiles.get(path);
        const isMetadata = isMetadataPath(path);
        // A .distcp file goes with the rank its name gives; any other file but .metadata (a Trainer's files) with rank 0.
        if (rank !== null && !isMetadata && (rankOfFile(path) ?? 0) !== rank) continue;
        const fd = openSync(join(dir, path), 'r');
        fds.push(fd);
        const size = fstatSync(fd).size;
        if (isMetadata) hash.update(new TextEncoder().encode(`${path}\0${size}\0`)).update(metadataBytes.get(path)!);
        if (!storage) {
          add(`${FILE_PREFIX}${path}`, 'U8', [size], { fd, offset: 0 });
          files.push({ kind: 'blob', path, tensors: [`${FILE_PREFIX}${path}`], layout: null });
          continue;
        }
        const cuts = readDistcpItems(join(dir, path), size, (o, l) => readExactlySync(fd, o, l, join(dir, path)), storage.records, storage.folder.metadata.items);
        files.push(addDistcp(add, path, fd, size, cuts, (c) => nameOf(storage.folder, c.key, c.chunk)));
      }
      const info = rank === null ? null : { rank, ranks: [...ranks].sort((a, b) => a - b), metadata: hash.digest() };
      return new DcpCheckpoint(dir, tensors, files, sources, fds, info);
    } catch (e) {
      for (const fd of fds) closeSync(fd);
      throw e;
    }
  }

  async tensorBytes(info: TensorInfo, start: number, end: number): Promise<Uint8Array> {
    const source = this.sources.get(info.name);
    if (!source) throw new ExcpError('ERR_BAD_HEADER', `dcp: ${this.path}: no tensor '${info.name}'`);
    if ('offset' in source) {
      const bytes = readExactlySync(source.fd, source.offset + start, end - start, this.path);
      if (source.check) checkCrc(source.check, bytes, start, info.end - info.begin);
      return bytes;
    }
    return readSegments(source.fd, source.segments, start, end, (fd, position, length) => readExactlySync(fd, position, length, this.path));
  }

  async close(): Promise<void> {
    for (const fd of this.fds.splice(0)) closeSync(fd);
  }
}

/**
 * Fold bytes read at `start` into a tensor's running CRC.
 * @throws ExcpError ERR_CRC when the whole tensor was read and its CRC is not the recorded one
 */
function checkCrc(check: CrcCheck, bytes: Uint8Array, start: number, length: number): void {
  if (start === 0) [check.position, check.crc] = [0, 0];
  if (check.position !== start) {
    check.position = -1;
    return;
  }
  check.crc = crc32(bytes, check.crc);
  check.position += bytes.length;
  if (check.position === length && check.crc !== check.recorded) {
    throw new ExcpError('ERR_CRC', `${check.where}: data CRC ${check.crc} differs from the recorded ${check.recorded} (the file is corrupt)`);
  }
}

/**
 * Add a `.distcp` file: its skeleton `__file__/PATH` (the bytes around the
 * cut tensors), then the cut tensors in file order.
 * @returns the file (kind `distcp`)
 */
function addDistcp(add: (name: string, dtype: DType, shape: number[], source: Source) => void, path: string, fd: number, size: number,
  cuts: readonly DistcpCut[], nameOf: (cut: DistcpCut) => string): CheckpointFile {
  const segments = skeletonSegments(size, cuts);
  const skeleton = `${FILE_PREFIX}${path}`;
  add(skeleton, 'U8', [segments.reduce((n, s) => n + s.length, 0)], { fd, segments });
  const names = cuts.map(nameOf);
  cuts.forEach((c, i) => {
    const check = c.crc === null ? undefined : { recorded: c.crc, position: 0, crc: 0, where: `dcp: ${path}: item '${c.key}' at ${c.item[0]}` };
    add(names[i]!, c.dtype, c.shape, check ? { fd, offset: c.offset, check } : { fd, offset: c.offset });
  });
  const items: [number, number][] = [];
  for (const c of cuts) if (items[items.length - 1]?.[0] !== c.item[0]) items.push(c.item);
  const layout: DistcpLayout = { size, items, offsets: cuts.map((c) => c.offset) };
  return { kind: 'distcp', path, tensors: [skeleton, ...names], layout };
}
