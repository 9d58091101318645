/**
 * The input format "a safetensors file": random access to the file on disk
 * (or in memory), its header and any byte range of any tensor, as a
 * {@link Checkpoint} of one file of kind `safetensors`. Used for the
 * checkpoint being compressed (so a parameter and its moments can be read
 * together wherever they sit in the file) and for the base checkpoint (read
 * chunk by chunk as it is needed).
 */
import { open, type FileHandle } from 'node:fs/promises';
import { ExcpError } from '../core/errors.js';
import { readExactly } from '../io/read.js';
import type { Checkpoint, CheckpointFile, FileRange, TensorInfo } from '../model/checkpoint.js';
import { type SafetensorsHeader, parseSafetensorsHeader, readHeaderLength } from './safetensors.js';

/** The one file of a safetensors checkpoint: its header bytes are its kind's layout. */
export function fileOf(header: SafetensorsHeader): CheckpointFile[] {
  return [{ kind: 'safetensors', path: null, tensors: header.tensors.map((t) => t.name), layout: header.raw }];
}

/**
 * What a safetensors checkpoint is, wherever its bytes are: its tensors
 * from the header, and one file of kind `safetensors` whose layout is the
 * header's exact bytes.
 */
abstract class SafetensorsCheckpoint implements Checkpoint {
  readonly path: string;
  readonly header: SafetensorsHeader;
  readonly byName: Map<string, TensorInfo>;
  readonly files: CheckpointFile[];
  readonly info = null;

  protected constructor(path: string, header: SafetensorsHeader) {
    this.path = path;
    this.header = header;
    this.byName = new Map(header.tensors.map((t) => [t.name, t]));
    this.files = fileOf(header);
  }

  get tensors(): readonly TensorInfo[] {
    return this.header.tensors;
  }

  get dataLength(): number {
    return this.header.dataLength;
  }

  abstract tensorBytes(info: TensorInfo, start: number, end: number, into?: Uint8Array): Promise<Uint8Array>;

  abstract close(): Promise<void>;
}

/** Parse a whole file's header, the path in any error. */
function headerOfBytes(bytes: Uint8Array, path: string): SafetensorsHeader {
  try {
    const n = readHeaderLength(bytes.subarray(0, 8), bytes.length);
    return parseSafetensorsHeader(bytes.subarray(0, 8 + n), bytes.length - 8 - n);
  } catch (e) {
    if (e instanceof ExcpError) throw new ExcpError(e.code, `${path}: ${e.message}`);
    throw e;
  }
}

/** A whole safetensors file held in memory (the one-shot helpers use it). */
export class SafetensorsMemory extends SafetensorsCheckpoint {
  private readonly bytes: Uint8Array;

  /**
   * @param bytes the file
   * @param path name used in messages
   */
  constructor(bytes: Uint8Array, path = '<buffer>') {
    super(path, headerOfBytes(bytes, path));
    this.bytes = bytes;
  }

  override async tensorBytes(info: TensorInfo, start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    const from = this.header.dataOffset + info.begin + start;
    const bytes = this.bytes.subarray(from, from + end - start);
    if (into && into.length === bytes.length) {
      into.set(bytes);
      return into;
    }
    return new Uint8Array(bytes);
  }

  override async close(): Promise<void> {}
}

/** An open safetensors file. */
export class SafetensorsFile extends SafetensorsCheckpoint {
  readonly size: number;
  private readonly handle: FileHandle;

  private constructor(path: string, handle: FileHandle, size: number, header: SafetensorsHeader) {
    super(path, header);
    this.handle = handle;
    this.size = size;
  }

  /**
   * Open and validate a file.
   * @param path file path
   * @returns the open file
   * @throws ExcpError with the path in the message
   */
  static async open(path: string): Promise<SafetensorsFile> {
    let handle: FileHandle;
    try {
      handle = await open(path, 'r');
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      throw new ExcpError('ERR_IO', `${path}: cannot open (${code ?? String(e)})`);
    }
    try {
      const size = (await handle.stat()).size;
      const first = await readExactly(handle, 0, Math.min(8, size));
      const n = readHeaderLength(first, size);
      const raw = await readExactly(handle, 0, 8 + n);
      const header = parseSafetensorsHeader(raw, size - 8 - n);
      return new SafetensorsFile(path, handle, size, header);
    } catch (e) {
      await handle.close();
      if (e instanceof ExcpError) throw new ExcpError(e.code, `${path}: ${e.message}`);
      throw e;
    }
  }

  /**
   * Bytes [start, end) of a tensor's data.
   * @param info the tensor
   * @param start first byte within the tensor
   * @param end one past the last byte within the tensor
   * @param into optional destination of length end - start (returned when given)
   */
  async tensorBytes(info: TensorInfo, start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    return readExactly(this.handle, this.header.dataOffset + info.begin + start, end - start, into);
  }

  /** The file range of bytes [start, end) of a tensor's data (see {@link Checkpoint.tensorRanges}). */
  tensorRanges(info: TensorInfo, start: number, end: number): FileRange[] {
    return [{ fd: this.handle.fd, position: this.header.dataOffset + info.begin + start, length: end - start }];
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

