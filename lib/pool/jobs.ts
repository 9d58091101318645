/**
 * What a pool thread does for one request, the same in a worker and in the
 * calling thread (threads 0): everything a chunk needs per byte, so that the
 * main thread only schedules.
 *
 *   encode  read the chunk's bytes from the checkpoint's files (positional
 *           reads into this thread's buffers), code it, and frame its
 *           container record (CRC included)
 *   decode  check the record's CRC, read the base bytes, decode, digest the
 *           restored bytes and write them to the output files (positional
 *           writes), sending back only the digests; or send the bytes back
 *           (a restore into a pipe)
 *   crc     the CRC-32 of file ranges (a torch.save zip's storages, at the
 *           end of a restore)
 *
 * Reads and writes are positional (pread/pwrite), so any number of threads
 * share the descriptors the main thread opened. The CRC is zlib's native
 * one where Node has it (20.15 and later: the same values, several times
 * faster than lib/core/crc32.ts, which is the fallback).
 */
import { readSync, writeSync } from 'node:fs';
import * as zlib from 'node:zlib';
import { crc32 } from '../core/crc32.js';
import { ExcpError } from '../core/errors.js';
import { Scratch } from '../core/scratch.js';
import type { CodecOptions } from '../core/options.js';
import type { FileRange } from '../model/checkpoint.js';
import { type ChunkInput, type ChunkLayout, type ChunkPosition, type DecodedChunk, type EncodedChunk, decodeChunk, encodeChunk } from '../method/codec.js';
import { type Crc32, encodeRecord, recordPayload } from '../container/format.js';
import { type RecordCheck, assertRecordCrc } from '../container/framing.js';
import type { ChunkBuffer } from '../container/verify.js';

/** The fastest CRC-32 this Node has (same values as lib/core/crc32.ts). */
export const fastCrc32: Crc32 = typeof (zlib as { crc32?: unknown }).crc32 === 'function'
  ? (bytes, seed = 0) => zlib.crc32(bytes, seed)
  : crc32;

/** Where each of a chunk's tensors is read from (one list of file ranges per tensor, concatenated). */
export interface ChunkReads {
  weight: FileRange[];
  base: FileRange[] | null;
  expAvg: FileRange[] | null;
  expAvgSq: FileRange[] | null;
}

/** Code one chunk: its bytes given (`input`), or read here (`reads`). */
export interface EncodeJob {
  kind: 'encode';
  entry: number;
  chunk: number;
  layout: ChunkLayout;
  options: CodecOptions;
  /** Where the chunk is (method 2 needs it). */
  position: ChunkPosition;
  input: ChunkInput | null;
  reads: ChunkReads | null;
}

/** A run of a restored chunk's buffer written to a file: bytes [at, at + length) of `buffer` go to `position` of `fd`. */
export interface PieceWrite {
  buffer: ChunkBuffer;
  at: number;
  length: number;
  fd: number;
  position: number;
}

/** Decode one chunk; write its bytes (`writes`), or send them back (`writes` null and `keep`). */
export interface DecodeJob {
  kind: 'decode';
  chunk: number;
  /** Where the chunk is (a method 2 chunk of format 3 and later needs it). */
  position: ChunkPosition;
  layout: ChunkLayout;
  count: number;
  /** The entry's tensor name, for messages. */
  what: string;
  payload: Uint8Array;
  /** The record's CRC, when the parser left it to the decoder. */
  check: RecordCheck | null;
  base: Uint8Array | null;
  baseReads: FileRange[] | null;
  writes: PieceWrite[] | null;
  /** Send the restored bytes back (false: only their digests, for a verify without output). */
  keep: boolean;
}

/** The CRC-32 of the concatenation of file ranges. */
export interface CrcJob {
  kind: 'crc';
  ranges: FileRange[];
}

export type Job = EncodeJob | DecodeJob | CrcJob;

/** What a job gives back. */
export type JobResult =
  | { kind: 'encode'; encoded: EncodedChunk; record: Uint8Array }
  | { kind: 'decode'; decoded: DecodedChunk; written: number | null }
  | { kind: 'crc'; crc: number };

/** Bytes read at a time by a CRC job. */
const CRC_STEP = 1 << 20;
const EMPTY = new Uint8Array(0);

/**
 * This thread's read buffers, reused chunk after chunk: a chunk's inputs are
 * megabytes, and fresh buffers per chunk only wait for the garbage
 * collector. A worker holds two jobs (it reads the next while it codes
 * one, lib/pool/worker.ts), and takes them in order, so two sets of buffers
 * used in turn never overlap.
 */
const SETS = [new Scratch(), new Scratch()];
let turn = 0;
const SLOT_WEIGHT = 0;
const SLOT_BASE = 1;
const SLOT_M = 2;
const SLOT_V = 3;
const SLOT_CRC = 4;

/** How a thread moves file bytes: at once (the calling thread), or through libuv's threads while it codes (a worker). */
export interface FileIo {
  read(fd: number, into: Uint8Array, offset: number, length: number, position: number): Promise<number> | number;
  write(fd: number, bytes: Uint8Array, offset: number, length: number, position: number): Promise<number> | number;
}

/** Blocking reads and writes. */
export const SYNC_IO: FileIo = {
  read: (fd, into, offset, length, position) => readSync(fd, into, offset, length, position),
  write: (fd, bytes, offset, length, position) => writeSync(fd, bytes, offset, length, position),
};

/**
 * Read the concatenation of file ranges into `into`.
 * @throws ExcpError ERR_TRUNCATED when a file ends first
 */
export async function readRanges(ranges: readonly FileRange[], into: Uint8Array, io: FileIo = SYNC_IO): Promise<Uint8Array> {
  let at = 0;
  for (const r of ranges) {
    let done = 0;
    while (done < r.length) {
      const n = await io.read(r.fd, into, at + done, r.length - done, r.position + done);
      if (n === 0) throw new ExcpError('ERR_TRUNCATED', `unexpected end of file at byte ${r.position + done}`);
      done += n;
    }
    at += r.length;
  }
  if (at !== into.length) throw new ExcpError('ERR_INVALID_ARG', `pool: ranges of ${at} bytes read into ${into.length}`);
  return into;
}

/** {@link readRanges} with blocking reads. */
function readRangesSync(ranges: readonly FileRange[], into: Uint8Array): Uint8Array {
  let at = 0;
  for (const r of ranges) {
    let done = 0;
    while (done < r.length) {
      const n = readSync(r.fd, into, at + done, r.length - done, r.position + done);
      if (n === 0) throw new ExcpError('ERR_TRUNCATED', `unexpected end of file at byte ${r.position + done}`);
      done += n;
    }
    at += r.length;
  }
  if (at !== into.length) throw new ExcpError('ERR_INVALID_ARG', `pool: ranges of ${at} bytes read into ${into.length}`);
  return into;
}

function rangesLength(ranges: readonly FileRange[]): number {
  let n = 0;
  for (const r of ranges) n += r.length;
  return n;
}

/** What a job read before it is coded. */
export interface JobInputs {
  input: ChunkInput | null;
  base: Uint8Array | null;
}

/** Bytes a decode job writes once it is decoded. */
interface PendingWrite {
  fd: number;
  bytes: Uint8Array;
  position: number;
}

/**
 * Read a job's inputs (a compress job's chunk, a decode job's base).
 * @param job the job
 * @param io how to read
 * @returns the inputs, in this thread's buffers until {@link runReadJob} gives them back
 */
export async function readJobInputs(job: Job, io: FileIo): Promise<JobInputs> {
  const set = SETS[turn++ % SETS.length]!;
  const read = async (slot: number, ranges: readonly FileRange[] | null): Promise<Uint8Array | null> => (ranges ? readRanges(ranges, set.u8(slot, rangesLength(ranges)), io) : null);
  if (job.kind === 'encode') {
    if (job.input) return { input: job.input, base: null };
    const r = job.reads!;
    const [weight, base, expAvg, expAvgSq] = await Promise.all([read(SLOT_WEIGHT, r.weight), read(SLOT_BASE, r.base), read(SLOT_M, r.expAvg), read(SLOT_V, r.expAvgSq)]);
    return { input: { weight: weight!, base, expAvg, expAvgSq }, base: null };
  }
  if (job.kind === 'decode') return { input: null, base: job.base ?? (await read(SLOT_BASE, job.baseReads)) };
  return { input: null, base: null };
}

function encode(job: EncodeJob, inputs: JobInputs): JobResult {
  const encoded = encodeChunk(job.layout, inputs.input!, job.options, job.position);
  const record = encodeRecord({ entry: job.entry, chunk: job.chunk, payload: encoded.payload }, fastCrc32);
  // The payload travels inside its record (one buffer, no second copy).
  return { kind: 'encode', encoded: { ...encoded, payload: recordPayload(record) }, record };
}

function decode(job: DecodeJob, inputs: JobInputs, writes: PendingWrite[], writtenAtOnce: boolean): JobResult {
  if (job.check) assertRecordCrc(job.what, job.chunk, job.check, job.payload, fastCrc32);
  // Bytes written before the next job decodes can live in the codec's scratch.
  const decoded = decodeChunk(job.layout, job.payload, job.count, inputs.base, job.what, job.position, writtenAtOnce && job.writes !== null);
  const digestsOnly: DecodedChunk = { weight: EMPTY, expAvg: null, expAvgSq: null, digests: decoded.digests };
  if (job.writes) {
    let written = 0;
    for (const w of job.writes) {
      const bytes = decoded[w.buffer];
      if (!bytes || bytes.length < w.at + w.length) throw new ExcpError('ERR_CORRUPT', `restore: tensor '${job.what}' chunk ${job.chunk} is shorter than its place in the file`);
      writes.push({ fd: w.fd, bytes: bytes.subarray(w.at, w.at + w.length), position: w.position });
      written += w.length;
    }
    return { kind: 'decode', decoded: digestsOnly, written };
  }
  if (!job.keep) return { kind: 'decode', decoded: digestsOnly, written: 0 };
  return { kind: 'decode', decoded, written: null };
}

function crcOf(job: CrcJob): JobResult {
  let crc = 0;
  for (const r of job.ranges) {
    for (let at = 0; at < r.length; at += CRC_STEP) {
      const length = Math.min(CRC_STEP, r.length - at);
      crc = fastCrc32(readRangesSync([{ fd: r.fd, position: r.position + at, length }], SETS[0]!.u8(SLOT_CRC, length)), crc);
    }
  }
  return { kind: 'crc', crc };
}

/**
 * Code a job whose inputs are read (the CPU part, in this thread), and write
 * what it restored.
 * @param job the job
 * @param inputs from {@link readJobInputs}
 * @param io how to write: the returned promise settles once every byte is written
 * @returns the result, and the writes still in flight
 * @throws ExcpError as the codec does
 */
export function codeJob(job: Job, inputs: JobInputs, io: FileIo): { result: JobResult; written: Promise<void> } {
  const writes: PendingWrite[] = [];
  let result: JobResult;
  const sync = io.write === SYNC_IO.write;
  result = job.kind === 'encode' ? encode(job, inputs) : job.kind === 'decode' ? decode(job, inputs, writes, sync) : crcOf(job);
  if (sync) {
    for (const w of writes) writeFully(w.fd, w.bytes, w.position);
    return { result, written: Promise.resolve() };
  }
  const written = Promise.all(writes.map(async (w) => {
    let done = 0;
    while (done < w.bytes.length) done += await io.write(w.fd, w.bytes, done, w.bytes.length - done, w.position + done);
  })).then(() => undefined);
  return { result, written };
}

/** Write all of `bytes` at `position`, blocking. */
export function writeFully(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}

/**
 * Run one job in this thread.
 * @param job the job
 * @returns its result (buffers of this thread's own, never the read buffers)
 * @throws ExcpError as the codec, the reads and the writes do
 */
export function runJob(job: Job): JobResult {
  const r = job.kind === 'encode' && job.reads ? job.reads : null;
  const set = SETS[0]!;
  const read = (slot: number, ranges: readonly FileRange[] | null): Uint8Array | null => (ranges ? readRangesSync(ranges, set.u8(slot, rangesLength(ranges))) : null);
  const inputs: JobInputs = job.kind === 'encode'
    ? { input: job.input ?? { weight: read(SLOT_WEIGHT, r!.weight)!, base: read(SLOT_BASE, r!.base), expAvg: read(SLOT_M, r!.expAvg), expAvgSq: read(SLOT_V, r!.expAvgSq) }, base: null }
    : job.kind === 'decode' ? { input: null, base: job.base ?? read(SLOT_BASE, job.baseReads) } : { input: null, base: null };
  // Blocking writes: done when codeJob returns.
  return codeJob(job, inputs, SYNC_IO).result;
}
