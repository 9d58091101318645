/**
 * A keyed store for data that must wait: in memory up to a limit, then in an
 * anonymous temporary file. This is what keeps memory bounded when the order
 * of arrival differs from the order of output (a parameter's moments decoded
 * together with it but written far away in the file).
 */
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { ExcpError } from '../core/errors.js';
import { join } from 'node:path';

/** Bytes a SpillStore keeps in memory before it spills to disk, unless told otherwise. */
export const SPILL_MEMORY_BYTES = 16 * 1024 * 1024;

/** Where a SpillStore keeps what does not fit in memory, and what it is for (messages). */
export interface SpillOptions {
  /** Bytes kept in memory before spilling to disk (default {@link SPILL_MEMORY_BYTES}). */
  memoryBytes?: number | undefined;
  /** Folder of the temporary file (default: the system's temporary folder). */
  dir?: string | undefined;
  /** The stage, for messages (e.g. `compress`). */
  stage?: string | undefined;
}

/** Where a stored value lives; `packed`: the stored bytes are {@link pack}ed, `length` is the original length. */
type Slot = { memory: Uint8Array; packed: boolean; length: number } | { offset: number; stored: number; packed: boolean; length: number };

/** Memory-then-disk key/value store of byte buffers. */
export class SpillStore {
  private readonly slots = new Map<string, Slot>();
  private memoryBytes = 0;
  private readonly memoryLimit: number;
  private fd: number | null = null;
  /** The temporary folder while it still exists (where unlinking an open file fails). */
  private tempDir: string | null = null;
  private fileLength = 0;
  private readonly folder: string | undefined;
  private readonly stage: string;

  /** @param options memory limit (a number: the limit alone), folder of the temporary file, stage for messages */
  constructor(options: number | SpillOptions = {}) {
    const o = typeof options === 'number' ? { memoryBytes: options } : options;
    this.memoryLimit = o.memoryBytes ?? SPILL_MEMORY_BYTES;
    this.folder = o.dir;
    this.stage = o.stage ?? 'spill';
  }

  /** The folder the temporary file goes to. */
  get dir(): string {
    return this.folder ?? tmpdir();
  }

  /** Bytes written to the temporary file so far. */
  get spilledBytes(): number {
    return this.fileLength;
  }

  put(key: string, bytes: Uint8Array): void {
    if (this.memoryBytes + bytes.length <= this.memoryLimit) {
      this.slots.set(key, { memory: bytes, packed: false, length: bytes.length });
      this.memoryBytes += bytes.length;
      return;
    }
    // Packing costs a pass each way: only for what would not fit as it is.
    const packed = pack(bytes);
    const data = packed ?? bytes;
    if (this.memoryBytes + data.length <= this.memoryLimit) {
      this.slots.set(key, { memory: data, packed: packed !== null, length: bytes.length });
      this.memoryBytes += data.length;
      return;
    }
    if (this.fd === null) {
      try {
        this.tempDir = mkdtempSync(join(this.dir, 'excp-spill-'));
        this.fd = openSync(join(this.tempDir, 'spill'), 'w+');
      } catch (e) {
        throw this.failure(e);
      }
      // Unlinked at once (POSIX keeps an open file alive): nothing is left
      // behind however the process ends, SIGKILL included. Where unlinking an
      // open file fails (Windows), dispose() removes it.
      try {
        rmSync(this.tempDir, { recursive: true, force: true });
        this.tempDir = null;
      } catch {
        // keep this.tempDir for dispose()
      }
    }
    let done = 0;
    try {
      while (done < data.length) done += writeSync(this.fd, data, done, data.length - done, this.fileLength + done);
    } catch (e) {
      throw this.failure(e);
    }
    this.slots.set(key, { offset: this.fileLength, stored: data.length, packed: packed !== null, length: bytes.length });
    this.fileLength += data.length;
  }

  /** @returns whether a value is stored under key */
  has(key: string): boolean {
    return this.slots.has(key);
  }

  /** A spill-file failure as one line that names the folder (and what to do when it is full). */
  private failure(e: unknown): ExcpError {
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') {
      return new ExcpError('ERR_NO_SPACE', `${this.stage}: the temporary data in ${this.dir} ran out of space after ${this.fileLength} bytes (${code}); give --tmp DIR a folder with room`, { cause: e });
    }
    return new ExcpError('ERR_IO', `${this.stage}: cannot write temporary data in ${this.dir} (${code}); give --tmp DIR a writable folder`, { cause: e });
  }

  /** Remove and return a value, or null when absent. */
  take(key: string): Uint8Array | null {
    const data = this.get(key);
    if (data !== null) this.delete(key);
    return data;
  }

  /** Forget a value (its disk bytes stay until dispose()). */
  delete(key: string): void {
    const slot = this.slots.get(key);
    if (!slot) return;
    this.slots.delete(key);
    if ('memory' in slot) this.memoryBytes -= slot.memory.length;
  }

  /** A value without removing it, or null when absent. */
  get(key: string): Uint8Array | null {
    const slot = this.slots.get(key);
    if (!slot) return null;
    let data: Uint8Array;
    if ('memory' in slot) {
      data = slot.memory;
    } else {
      data = new Uint8Array(slot.stored);
      let done = 0;
      while (done < slot.stored) {
        const n = readSync(this.fd!, data, done, slot.stored - done, slot.offset + done);
        if (n === 0) throw new ExcpError('ERR_TRUNCATED', `${this.stage}: the spill file ended at byte ${slot.offset + done}, before the data written there`);
        done += n;
      }
    }
    return slot.packed ? unpack(data, slot.length) : data;
  }

  get size(): number {
    return this.slots.size;
  }

  /** Delete the temporary file (idempotent). */
  dispose(): void {
    if (this.fd !== null) closeSync(this.fd);
    if (this.tempDir) rmSync(this.tempDir, { recursive: true, force: true });
    this.fd = null;
    this.tempDir = null;
    this.slots.clear();
    this.memoryBytes = 0;
  }
}

/*
 * Packing. What waits here is mostly restored moments: float32 tensors of a
 * handful of distinct values (0, the fill, the k-means centers) and a few
 * exceptions. Packed to 4 bits an element they take an eighth of the memory
 * and of the temporary file, which is what restore spends most of its
 * system time on otherwise. Values are compared as bit patterns, so every
 * byte comes back exactly.
 *
 * Layout (u32 little-endian): d (<= 15), d dictionary values, e, e escape
 * positions, e escape values, then ceil(n / 2) bytes of 4-bit codes
 * (element 2i in the low nibble): code < 15 is dictionary[code]; 15 marks an
 * escape, whose value is in the escape list. Only whole, aligned buffers of
 * 32-bit words are packed.
 */

const ESCAPE = 15;
const LITTLE_ENDIAN = new Uint8Array(Uint32Array.of(1).buffer)[0] === 1;
/** Hash of a value to its code: 256 slots, linear probing (at most 15 keys). */
const hashKeys = new Uint32Array(256);
const hashCodes = new Int32Array(256);
let escapePositions = new Uint32Array(1024);
let escapeValues = new Uint32Array(1024);
let codeScratch = new Uint8Array(0);

/** Packing state of one call. */
const state = { d: 0, e: 0, maxEscapes: 0, dict: new Uint32Array(ESCAPE) };

/** The code of a value that missed its first hash slot: probe, insert, or escape (-1: too many escapes). */
function slowCode(v: number, i: number): number {
  let h = Math.imul(v, 0x9e3779b1) >>> 24;
  while (hashCodes[h]! >= 0) {
    if (hashKeys[h] === v) return hashCodes[h]!;
    h = (h + 1) & 255;
  }
  if (state.d < ESCAPE) {
    const code = state.d++;
    state.dict[code] = v;
    hashKeys[h] = v;
    hashCodes[h] = code;
    return code;
  }
  if (state.e === state.maxEscapes) return -1;
  escapePositions[state.e] = i;
  escapeValues[state.e++] = v;
  return ESCAPE;
}

/** @returns the code of words[i] (-1: give up) */
function codeOf(v: number, i: number): number {
  const h = Math.imul(v, 0x9e3779b1) >>> 24;
  const c = hashCodes[h]!;
  return c >= 0 && hashKeys[h] === v ? c : slowCode(v, i);
}

/** @returns the packed bytes, or null when packing would not pay (too many distinct values, unaligned, small) */
function pack(bytes: Uint8Array): Uint8Array | null {
  if (!LITTLE_ENDIAN || bytes.length < 4096 || bytes.length % 4 !== 0 || bytes.byteOffset % 4 !== 0) return null;
  const n = bytes.length >>> 2;
  const words = new Uint32Array(bytes.buffer, bytes.byteOffset, n);
  state.d = 0;
  state.e = 0;
  state.maxEscapes = n >>> 6;
  if (escapePositions.length < state.maxEscapes) {
    escapePositions = new Uint32Array(state.maxEscapes);
    escapeValues = new Uint32Array(state.maxEscapes);
  }
  hashCodes.fill(-1);
  const half = n >>> 1;
  if (codeScratch.length < half + 1) codeScratch = new Uint8Array(half + 1);
  const codes = codeScratch;
  for (let j = 0; j < half; j++) {
    const lo = codeOf(words[2 * j]!, 2 * j);
    const hi = codeOf(words[2 * j + 1]!, 2 * j + 1);
    if ((lo | hi) < 0) return null;
    codes[j] = lo | (hi << 4);
  }
  if (n & 1) {
    const lo = codeOf(words[n - 1]!, n - 1);
    if (lo < 0) return null;
    codes[half] = lo;
  }
  const { d, e, dict } = state;
  const codeBytes = (n + 1) >>> 1;
  const headWords = 2 + d + 2 * e;
  const out = new Uint8Array(4 * headWords + codeBytes);
  const head = new Uint32Array(out.buffer, 0, headWords);
  head[0] = d;
  head.set(dict.subarray(0, d), 1);
  head[1 + d] = e;
  head.set(escapePositions.subarray(0, e), 2 + d);
  head.set(escapeValues.subarray(0, e), 2 + d + e);
  out.set(codes.subarray(0, codeBytes), 4 * headWords);
  return out;
}

/** Inverse of {@link pack}. */
function unpack(data: Uint8Array, length: number): Uint8Array {
  const head = new Uint32Array(data.buffer, data.byteOffset, data.length >>> 2);
  const d = head[0]!;
  const table = new Uint32Array(16);
  table.set(head.subarray(1, 1 + d));
  const e = head[1 + d]!;
  const codes = data.subarray(4 * (2 + d + 2 * e));
  const out = new Uint8Array(length);
  const n = length >>> 2;
  const words = new Uint32Array(out.buffer, 0, n);
  const half = n >>> 1;
  for (let j = 0; j < half; j++) {
    const b = codes[j]!;
    words[2 * j] = table[b & 15]!;
    words[2 * j + 1] = table[b >>> 4]!;
  }
  if (n & 1) words[n - 1] = table[codes[half]! & 15]!;
  for (let k = 0; k < e; k++) words[head[2 + d + k]!] = head[2 + d + e + k]!;
  return out;
}
