/**
 * The format-neutral model of a checkpoint. Every input format (a
 * safetensors file, a Hugging Face checkpoint folder, ...: lib/formats/)
 * opens as a {@link Checkpoint}: a table of tensors, each a byte range of a
 * virtual data section, and the files that hold them. The container
 * (lib/container/) stores the same model as a {@link ContainerHeader}:
 * tensors with their roles, the entries they are coded in, and the files,
 * each described by its kind's layout. Neither side knows any format: the
 * file kinds (lib/formats/) turn layouts into bytes and back.
 */
import type { DType } from '../core/dtype.js';
import type { CodecOptions } from '../core/options.js';

/** What a tensor is to the method. */
export type Role = 'weight' | 'exp_avg' | 'exp_avg_sq' | 'plain';

/** A tensor as the container describes it. */
export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
  role: Role;
  /** Index of the entry this tensor belongs to. */
  entry: number;
}

/**
 * The unit of coding: a parameter with its Adam moments (`param`), one
 * tensor on its own (`plain`), or small exact tensors of one dtype coded as
 * one (`pack`, see lib/pack.ts). Chunks of a param entry cover the same
 * element range of all of its tensors; a pack has one chunk, the
 * concatenation of its members.
 */
export interface EntrySpec {
  kind: 'param' | 'plain' | 'pack';
  /** Tensor indices: the weight (or the plain tensor, or a pack's first member), and the moments of a param. */
  weight: number;
  expAvg: number | null;
  expAvgSq: number | null;
  /** Weight coded exactly (keyframe, lossless, plain tensors) instead of as a pruned residual. */
  exactWeight: boolean;
  /** Moments coded exactly (lossless). */
  exactMoments: boolean;
  /** A base tensor of the same name, dtype and shape is used. */
  base: boolean;
  /** Elements per tensor of this entry (a pack: of all members together). */
  elements: number;
  /** A pack's tensors in coding order (members[0] === weight); absent otherwise. */
  members?: number[];
}


/** A tensor of an opened checkpoint: its bytes are [begin, end) of the checkpoint's data section. */
export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  /** First byte, relative to the data section. */
  begin: number;
  /** One past the last byte, relative to the data section. */
  end: number;
}

/**
 * A file of a checkpoint: which tensors hold its bytes, and how. `kind`
 * names the file kind (lib/formats/registry.ts) that lays the file out and
 * rebuilds it at restore; `layout` is that kind's own description (a
 * safetensors file's header bytes, a torch.save file's size and tensor
 * offsets, nothing for a blob). `path` is relative to the checkpoint folder,
 * or null for the one file of a single-file checkpoint.
 */
export interface CheckpointFile {
  kind: string;
  path: string | null;
  /** The file's tensors by name, in the kind's order. */
  tensors: string[];
  layout: unknown;
}

/**
 * A run of bytes in an open file: `length` bytes at `position` of the
 * descriptor `fd`. Descriptors are process-wide, so a worker thread can read
 * (or write) such a run itself: what lets the main thread hand out work
 * without touching its bytes.
 */
export interface FileRange {
  fd: number;
  position: number;
  length: number;
}

/**
 * An opened checkpoint (one adapter per input format, lib/formats/):
 * random access to its tensors, and the files they came from.
 */
export interface Checkpoint {
  /** The path given (for messages). */
  readonly path: string;
  /** Tensors in the order the container lists them. */
  readonly tensors: readonly TensorInfo[];
  readonly byName: ReadonlyMap<string, TensorInfo>;
  /** Bytes of all tensors together (the sum of their ranges). */
  readonly dataLength: number;
  readonly files: readonly CheckpointFile[];
  /** Extra information stored in the container header (e.g. a folder's parameter map), or null. */
  readonly info: Record<string, unknown> | null;
  /**
   * Bytes [start, end) of a tensor's data. With `into` (length end - start),
   * a reader may read into it and return it, so a caller can reuse buffers.
   */
  tensorBytes(info: TensorInfo, start: number, end: number, into?: Uint8Array): Promise<Uint8Array>;
  /**
   * Where bytes [start, end) of a tensor lie in files, in order (their
   * concatenation is what {@link tensorBytes} returns), so that another
   * thread can read them; valid until {@link close}. Absent (or null): the
   * bytes are not in files (a checkpoint in memory); read them with
   * tensorBytes.
   */
  tensorRanges?(info: TensorInfo, start: number, end: number): FileRange[] | null;
  close(): Promise<void>;
  /**
   * Set for a checkpoint read forward from a stream: each byte can be read
   * once, and bytes read out of file order wait in memory or on disk, so
   * readers should ask in file order where they can.
   */
  readonly sequential?: boolean;
  /** Announce the tensors a reader will ask for (a stream then skips the others). */
  expect?(names: Iterable<string>): void;
}

/** A file as the container header stores it: {@link CheckpointFile} with tensor indices. */
export interface FileSpec {
  kind: string;
  path: string | null;
  tensors: number[];
  layout: unknown;
}

/** The header: everything restore needs before the first record. */
export interface ContainerHeader {
  tool: string;
  options: CodecOptions;
  tensors: TensorSpec[];
  entries: EntrySpec[];
  files: FileSpec[];
  /** Extra information (e.g. the parameter map of a PyTorch folder). */
  info?: Record<string, unknown>;
  /** In memory only, set by readers: the format version the header came from (absent: the current one). */
  format?: number;
}

/** Per-entry results, written after the last record. */
export interface FooterEntry {
  /** Byte offsets of the entry's records, in chunk order. */
  offsets: number[];
  codedBytes: number;
  keptWeights: number;
  keptMoments: number;
  /** Empirical entropy of the entry's coded symbols, in bits (absent in older files). */
  entropyBits?: number;
  /** Bits of the entry's coded symbol streams, tables included (absent in older files). */
  symbolBits?: number;
  /**
   * Method 2's lossy entries (format 4 on): relative error of the restored
   * weight (of its update, for a residual; of the weight, for a keyframe),
   * m and v, as the encoder measured them; stored to about 2%.
   */
  errors?: { weight: number; m: number; v: number };
}

/** The footer: index and fingerprints. */
export interface ContainerFooter {
  entries: FooterEntry[];
  /**
   * Per tensor: hash of the restored bytes (over chunk digests). null: not
   * stored (a small container, where they would be a visible share of it;
   * see lib/stream/container.ts): restore then checks the fingerprint only.
   */
  tensorHashes: string[] | null;
  /** Per tensor with a base: hash of the base bytes used (null otherwise); null when tensorHashes is. */
  baseHashes: (string | null)[] | null;
  baseFingerprint: string | null;
  targetFingerprint: string;
}

/** A chunk record. */
export interface ChunkRecord {
  entry: number;
  chunk: number;
  payload: Uint8Array;
}
