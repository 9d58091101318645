/**
 * A keyed store for data that must wait: in memory up to a limit, then in an
 * anonymous temporary file. This is what keeps memory bounded when the order
 * of arrival differs from the order of output (a parameter's moments decoded
 * together with it but written far away in the file).
 */
import { closeSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Where a stored value lives. */
type Slot = { memory: Uint8Array } | { offset: number; length: number };

/** Memory-then-disk key/value store of byte buffers. */
export class SpillStore {
  private readonly slots = new Map<string, Slot>();
  private memoryBytes = 0;
  private readonly memoryLimit: number;
  private fd: number | null = null;
  private dir: string | null = null;
  private fileLength = 0;

  /** @param memoryLimit bytes kept in memory before spilling to disk */
  constructor(memoryLimit = 16 * 1024 * 1024) {
    this.memoryLimit = memoryLimit;
  }

  /** Bytes written to the temporary file so far. */
  get spilledBytes(): number {
    return this.fileLength;
  }

  put(key: string, bytes: Uint8Array): void {
    if (this.memoryBytes + bytes.length <= this.memoryLimit) {
      this.slots.set(key, { memory: bytes });
      this.memoryBytes += bytes.length;
      return;
    }
    if (this.fd === null) {
      this.dir = mkdtempSync(join(tmpdir(), 'excp-spill-'));
      this.fd = openSync(join(this.dir, 'spill'), 'w+');
    }
    let done = 0;
    while (done < bytes.length) done += writeSync(this.fd, bytes, done, bytes.length - done, this.fileLength + done);
    this.slots.set(key, { offset: this.fileLength, length: bytes.length });
    this.fileLength += bytes.length;
  }

  /** @returns whether a value is stored under key */
  has(key: string): boolean {
    return this.slots.has(key);
  }

  /** Remove and return a value, or null when absent. */
  take(key: string): Uint8Array | null {
    const slot = this.slots.get(key);
    if (!slot) return null;
    this.slots.delete(key);
    if ('memory' in slot) {
      this.memoryBytes -= slot.memory.length;
      return slot.memory;
    }
    const out = new Uint8Array(slot.length);
    let done = 0;
    while (done < slot.length) {
      const n = readSync(this.fd!, out, done, slot.length - done, slot.offset + done);
      if (n === 0) break;
      done += n;
    }
    return out;
  }

  get size(): number {
    return this.slots.size;
  }

  /** Delete the temporary file (idempotent). */
  dispose(): void {
    if (this.fd !== null) closeSync(this.fd);
    if (this.dir) rmSync(this.dir, { recursive: true, force: true });
    this.fd = null;
    this.dir = null;
    this.slots.clear();
    this.memoryBytes = 0;
  }
}
