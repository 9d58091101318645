/**
 * Random access to a safetensors file on disk: the header, and any byte
 * range of any tensor. Used for the checkpoint being compressed (so a
 * parameter and its moments can be read together wherever they sit in the
 * file) and for the base checkpoint (read chunk by chunk as it is needed).
 */
import { readSync } from 'node:fs';
import { open, type FileHandle } from 'node:fs/promises';
import { ExcpError } from '../core/errors.js';
import { type SafetensorsHeader, type TensorInfo, parseSafetensorsHeader, readHeaderLength } from './safetensors.js';

/** Random access to a checkpoint's tensors (a file, or bytes in memory). */
export interface TensorReader {
  readonly path: string;
  readonly header: SafetensorsHeader;
  readonly byName: Map<string, TensorInfo>;
  /**
   * Bytes [start, end) of a tensor's data. With `into` (length end - start),
   * a reader may read into it and return it, so a caller can reuse buffers.
   */
  tensorBytes(info: TensorInfo, start: number, end: number, into?: Uint8Array): Promise<Uint8Array>;
  close(): Promise<void>;
}

/** A whole safetensors file held in memory (the one-shot helpers use it). */
export class SafetensorsMemory implements TensorReader {
  readonly path: string;
  readonly header: SafetensorsHeader;
  readonly byName: Map<string, TensorInfo>;
  private readonly bytes: Uint8Array;

  /**
   * @param bytes the file
   * @param path name used in messages
   */
  constructor(bytes: Uint8Array, path = '<buffer>') {
    this.path = path;
    this.bytes = bytes;
    try {
      const n = readHeaderLength(bytes.subarray(0, 8), bytes.length);
      this.header = parseSafetensorsHeader(bytes.subarray(0, 8 + n), bytes.length - 8 - n);
    } catch (e) {
      if (e instanceof ExcpError) throw new ExcpError(e.code, `${path}: ${e.message}`);
      throw e;
    }
    this.byName = new Map(this.header.tensors.map((t) => [t.name, t]));
  }

  async tensorBytes(info: TensorInfo, start: number, end: number, into?: Uint8Array): Promise<Uint8Array> {
    const from = this.header.dataOffset + info.begin + start;
    const bytes = this.bytes.subarray(from, from + end - start);
    if (into && into.length === bytes.length) {
      into.set(bytes);
      return into;
    }
    return new Uint8Array(bytes);
  }

  async close(): Promise<void> {}
}

/** An open safetensors file. */
export class SafetensorsFile implements TensorReader {
  readonly path: string;
  readonly size: number;
  readonly header: SafetensorsHeader;
  readonly byName: Map<string, TensorInfo>;
  private readonly handle: FileHandle;

  private constructor(path: string, handle: FileHandle, size: number, header: SafetensorsHeader) {
    this.path = path;
    this.handle = handle;
    this.size = size;
    this.header = header;
    this.byName = new Map(header.tensors.map((t) => [t.name, t]));
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

  async close(): Promise<void> {
    await this.handle.close();
  }
}

/** Read exactly `length` bytes at `position` into `into` (when its length fits) or a fresh (aligned) buffer. */
export async function readExactly(handle: FileHandle, position: number, length: number, into?: Uint8Array): Promise<Uint8Array> {
  const out = into && into.length === length ? into : new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(out, done, length - done, position + done);
    if (bytesRead === 0) throw new ExcpError('ERR_TRUNCATED', `unexpected end of file at byte ${position + done}`);
    done += bytesRead;
  }
  return out;
}

/**
 * Synchronous {@link readExactly} on a descriptor, for the parsers that take
 * a synchronous `read(offset, length)` (zip, torch).
 * @param what prefix of the error message (the file)
 * @throws ExcpError ERR_TRUNCATED when the file ends first
 */
export function readExactlySync(fd: number, position: number, length: number, what: string): Uint8Array {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const n = readSync(fd, out, done, length - done, position + done);
    if (n === 0) throw new ExcpError('ERR_TRUNCATED', `${what}: unexpected end of file at byte ${position + done}`);
    done += n;
  }
  return out;
}
