/**
 * Zip layer of torch checkpoints: CRC-32, the random-access reader, the
 * torch-identical writer and the carry-through rewriter.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import zlib from 'node:zlib';
import { crc32 } from '../lib/crc32.js';
import { ExcpError } from '../lib/errors.js';
import { type ReadAt, ZipWriter, concatBytes, readZipDirectory, rewriteZip, writeZip } from '../lib/zip.js';

const FIXTURES = new URL('./fixtures/torch/', import.meta.url);
const load = (path: string): Uint8Array => new Uint8Array(readFileSync(new URL(path, FIXTURES)));
const reader = (bytes: Uint8Array): ReadAt => (offset, length) => bytes.subarray(offset, offset + length);
const hex = (h: string): Uint8Array => new Uint8Array(Buffer.from(h, 'hex'));

/** Small seeded PRNG (mulberry32) so fuzz cases are reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof ExcpError, `expected ExcpError, got ${String(err)}`);
    return err.code;
  }
  return 'none';
}

// The non-data bytes of a file torch 1.13 wrote with a 4 GiB + 1000 byte uint8
// tensor (so: a zip64 entry, then entries whose header offsets exceed 2^32),
// captured by hand; the 4 GiB file itself is not committed.
const TORCH_ZIP64 = {
  size: 4294969355,
  entries: [
    { name: 'big/data.pkl', size: 255, crc32: 3619971940,
      header: '504b0304000008080000000000000000000000000000000000000c0016006269672f646174612e706b6c464212005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a',
      descriptor: '504b07086463c4d7ff000000ff000000' },
    { name: 'big/data/0', size: 4294968296, crc32: 355010125,
      header: '504b0304000008080000000000000000000000000000000000000a0049006269672f646174612f3001001000e8030000010000000000000000000000464231005a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a',
      descriptor: '504b07084dd4281500000000000000000000000000000000' },
  ],
  tail: '',
};
