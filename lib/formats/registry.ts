/**
 * The formats excp reads and writes, in one place:
 *
 * - input formats, each one adapter (a file of this folder) that opens a
 *   path as a format-neutral {@link Checkpoint}: a safetensors file
 *   (safetensors-file.ts), a PyTorch distributed checkpoint folder
 *   (dcp/checkpoint.ts), a Hugging Face / PyTorch checkpoint folder
 *   (folder.ts), a torch.save file (torch-file.ts);
 * - file kinds, each one file of this folder, that lay a file's tensors out
 *   and rebuild the file at restore: `safetensors`, `blob`, `torch`,
 *   `distcp` (dcp/distcp-kind.ts).
 *
 * A new input format is one adapter (and, when its files are of a new
 * shape, one file kind) added to the lists below; nothing else changes.
 */
import { createReadStream, existsSync, readdirSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { ExcpError } from '../core/errors.js';
import type { SpillOptions } from '../io/spill.js';
import { FileKinds } from '../container/kinds.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { blobKind } from './blob.js';
import { DcpCheckpoint, METADATA_FILE } from './dcp/checkpoint.js';
import { distcpKind } from './dcp/distcp-kind.js';
import type { FileFormat } from './file-format.js';
import { FolderCheckpoint } from './folder.js';
import type { OptimizerOpenOptions, OptimizerSide, ParamPrior } from './optimizer-map.js';
import { SafetensorsFile, SafetensorsMemory } from './safetensors-file.js';
import { SafetensorsStream } from './safetensors-stream.js';
import { TorchFileCheckpoint, isTorchSaveFile } from './torch-file.js';
import { safetensorsKind } from './safetensors-kind.js';
import { torchKind } from './torch-kind.js';

/** Every file kind, by name. */
const FORMATS: ReadonlyMap<string, FileFormat> = new Map([safetensorsKind, blobKind, torchKind, distcpKind].map((k) => [k.name, k]));

/** The file kinds, as the container reads and writes them. */
export const FILE_KINDS = new FileKinds([...FORMATS.values()]);

/**
 * The file kind of a name.
 * @throws ExcpError ERR_BAD_HEADER for a kind this version does not know
 */
export function fileFormat(kind: string): FileFormat {
  const format = FORMATS.get(kind);
  if (!format) throw new ExcpError('ERR_BAD_HEADER', `container: unknown file kind '${kind}'`);
  return format;
}

/** How a checkpoint is opened. */
export interface OpenOptions {
  /**
   * `current`: the checkpoint being compressed (a folder names its optimizer
   * moments by parameter); `base`: a base or a checkpoint being compared
   * (moments stay unnamed).
   */
  role: 'current' | 'base';
  /** The base checkpoint, for the current one (a folder's parameter map uses its weights). */
  previous?: Checkpoint | null;
  /** Parameter names in optimizer order (settles a folder's parameter map). */
  paramMap?: readonly string[] | null;
  /** A DCP folder: read only this rank's files (and the shared ones). */
  rank?: number | null;
  /** A path that is a stream (a FIFO, `<(...)`): where what waits goes. */
  spill?: SpillOptions | undefined;
  /** One line about what was found (a folder without optimizer state, ...). */
  onNotice?: ((message: string) => void) | undefined;
  /** The parameter map carried from the previous step of a chain (optimizer-map.ts's priorOf). */
  paramPrior?: ParamPrior | null;
}

/** The previous checkpoint as the param map's statistics read it, when its format has an optimizer side. */
function optimizerSide(previous: Checkpoint | null | undefined): OptimizerSide | null {
  const p = previous as Partial<OptimizerSide> | null | undefined;
  return p && 'optimizer' in p && typeof p.weight === 'function' && typeof p.readOptimizer === 'function' ? p as OptimizerSide : null;
}

/** An input format: which paths it takes, and how it opens them. */
export interface InputFormat {
  readonly name: string;
  /** Whether the format takes this path (a folder, or a file). */
  accepts(path: string, isFolder: boolean): boolean;
  open(path: string, options: OpenOptions): Promise<Checkpoint>;
}

/** A folder that holds `.metadata`, or whose sub-folder does (accelerate's `pytorch_model_fsdp_0/`, `optimizer_0/`). */
function holdsDcpMetadata(dir: string): boolean {
  if (existsSync(join(dir, METADATA_FILE))) return true;
  try {
    return readdirSync(dir, { withFileTypes: true }).some((e) => e.isDirectory() && existsSync(join(dir, e.name, METADATA_FILE)));
  } catch {
    return false;
  }
}

const dcpFolder: InputFormat = {
  name: 'distributed checkpoint folder',
  accepts: (path, isFolder) => isFolder && holdsDcpMetadata(path),
  open: (path, options) => DcpCheckpoint.open(path, { rank: options.rank ?? null }),
};

/** --rank is for DCP folders only. */
function noRank(path: string, options: OpenOptions, what: string): void {
  if (options.rank !== undefined && options.rank !== null) {
    throw new ExcpError('ERR_USAGE', `${path}: --rank picks one rank's files of a PyTorch distributed checkpoint (a folder with .metadata); this is ${what}`);
  }
}

/** The open options of a format with an optimizer. */
function optimizerOptions(options: OpenOptions): OptimizerOpenOptions {
  return {
    mapMoments: options.role === 'current',
    previous: optimizerSide(options.previous),
    explicit: options.paramMap ?? null,
    prior: options.paramPrior ?? null,
    onNotice: options.onNotice,
  };
}

const hfFolder: InputFormat = {
  name: 'checkpoint folder',
  accepts: (_path, isFolder) => isFolder,
  open: (path, options) => (noRank(path, options, 'a checkpoint folder without .metadata'), FolderCheckpoint.open(path, optimizerOptions(options))),
};

const torchSaveFile: InputFormat = {
  name: 'torch.save file',
  accepts: (path, isFolder) => !isFolder && isTorchSaveFile(path),
  open: (path, options) => (noRank(path, options, 'a torch.save file'), TorchFileCheckpoint.open(path, optimizerOptions(options))),
};

const safetensorsFile: InputFormat = {
  name: 'safetensors file',
  accepts: (_path, isFolder) => !isFolder,
  open: (path, options) => (noRank(path, options, 'a file'), SafetensorsFile.open(path)),
};

/** Input formats, the first that accepts a path opens it. */
const INPUTS: readonly InputFormat[] = [dcpFolder, hfFolder, torchSaveFile, safetensorsFile];

/**
 * Open a checkpoint of any input format.
 * @param source a path, or a safetensors file's bytes
 * @param options what the checkpoint is for
 * @throws ExcpError ERR_IO, and the format's own errors
 */
export async function openCheckpoint(source: string | Uint8Array, options: OpenOptions): Promise<Checkpoint> {
  if (source instanceof Uint8Array) return new SafetensorsMemory(source, options.role === 'base' ? '<base>' : '<current>');
  const info = await stat(source).catch(() => null);
  // A FIFO, a process substitution `<(...)`, /dev/stdin: read once, forward.
  if (info && (info.isFIFO() || info.isCharacterDevice() || info.isSocket())) {
    return SafetensorsStream.open(createReadStream(source), source, options.spill);
  }
  const folder = info?.isDirectory() ?? false;
  const format = INPUTS.find((f) => f.accepts(source, folder));
  if (!format) throw new ExcpError('ERR_INVALID_ARG', `${source}: not a checkpoint excp can read`);
  return format.open(source, options);
}

/** True when a path names a directory. */
export async function isDirectory(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null))?.isDirectory() ?? false;
}
