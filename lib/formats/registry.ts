/**
 * The formats excp reads and writes, in one place:
 *
 * - input formats, each one adapter (a file of this folder) that opens a
 *   path as a format-neutral {@link Checkpoint}: a safetensors file
 *   (safetensors-file.ts), a Hugging Face / PyTorch checkpoint folder
 *   (folder.ts), a torch.save file (torch-file.ts);
 * - file kinds, each one file of this folder, that lay a file's tensors out
 *   and rebuild the file at restore: `safetensors`, `blob`, `torch`.
 *
 * A new input format is one adapter (and, when its files are of a new
 * shape, one file kind) added to the lists below; nothing else changes.
 */
import { stat } from 'node:fs/promises';
import { ExcpError } from '../core/errors.js';
import { FileKinds } from '../container/kinds.js';
import type { Checkpoint } from '../model/checkpoint.js';
import { blobKind } from './blob.js';
import type { FileFormat } from './file-format.js';
import { FolderCheckpoint } from './folder.js';
import type { OptimizerOpenOptions, OptimizerSide, ParamPrior } from './optimizer-map.js';
import { SafetensorsFile, SafetensorsMemory } from './safetensors-file.js';
import { TorchFileCheckpoint, isTorchSaveFile } from './torch-file.js';
import { safetensorsKind } from './safetensors-kind.js';
import { torchKind } from './torch-kind.js';

/** Every file kind, by name. */
const FORMATS: ReadonlyMap<string, FileFormat> = new Map([safetensorsKind, blobKind, torchKind].map((k) => [k.name, k]));

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
  /** The parameter map carried from the previous step of a chain (optimizer-map.ts's priorOf). */
  paramPrior?: ParamPrior | null;
  /** Where one-line notices go (what was carried as it is, and why). */
  onNotice?: ((message: string) => void) | undefined;
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
  open: (path, options) => FolderCheckpoint.open(path, optimizerOptions(options)),
};

const torchSaveFile: InputFormat = {
  name: 'torch.save file',
  accepts: (path, isFolder) => !isFolder && isTorchSaveFile(path),
  open: (path, options) => TorchFileCheckpoint.open(path, optimizerOptions(options)),
};

const safetensorsFile: InputFormat = {
  name: 'safetensors file',
  accepts: (_path, isFolder) => !isFolder,
  open: (path) => SafetensorsFile.open(path),
};

/** Input formats, the first that accepts a path opens it. */
const INPUTS: readonly InputFormat[] = [hfFolder, torchSaveFile, safetensorsFile];

/**
 * Open a checkpoint of any input format.
 * @param source a path, or a safetensors file's bytes
 * @param options what the checkpoint is for
 * @throws ExcpError ERR_IO, and the format's own errors
 */
export async function openCheckpoint(source: string | Uint8Array, options: OpenOptions): Promise<Checkpoint> {
  if (source instanceof Uint8Array) return new SafetensorsMemory(source, options.role === 'base' ? '<base>' : '<current>');
  const folder = await isDirectory(source);
  const format = INPUTS.find((f) => f.accepts(source, folder));
  if (!format) throw new ExcpError('ERR_INVALID_ARG', `${source}: not a checkpoint excp can read`);
  return format.open(source, options);
}

/** True when a path names a directory. */
export async function isDirectory(path: string): Promise<boolean> {
  return (await stat(path).catch(() => null))?.isDirectory() ?? false;
}
