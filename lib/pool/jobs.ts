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
import { type ChunkInput, type ChunkLayout, type DecodedChunk, type EncodedChunk, decodeChunk, encodeChunk } from '../method/codec.js';
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

/*
 * This thread's read buffers, reused chunk after chunk: a chunk's inputs are
 * megabytes, and fresh buffers per chunk only wait for the garbage collector.
 */
const SLOT_WEIGHT = 0;
const SLOT_BASE = 1;
const SLOT_M = 2;
const SLOT_V = 3;
const SLOT_CRC = 4;
const buffers = new Scratch();
const EMPTY = new Uint8Array(0);
/** Bytes read at a time by a CRC job. */
const CRC_STEP = 1 << 20;

/**
 * Read the concatenation of file ranges into `into`.
 * @throws ExcpError ERR_TRUNCATED when a file ends first
 */
export function readRanges(ranges: readonly FileRange[], into: Uint8Array): Uint8Array {
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

function readSlot(slot: number, ranges: readonly FileRange[] | null): Uint8Array | null {
  if (!ranges) return null;
  return readRanges(ranges, buffers.u8(slot, rangesLength(ranges)));
}

/** Write all of `bytes` at `position`. */
export function writeFully(fd: number, bytes: Uint8Array, position: number): void {
  let done = 0;
  while (done < bytes.length) done += writeSync(fd, bytes, done, bytes.length - done, position + done);
}

function encode(job: EncodeJob): JobResult {
  const input: ChunkInput = job.input ?? {
    weight: readSlot(SLOT_WEIGHT, job.reads!.weight)!,
    base: readSlot(SLOT_BASE, job.reads!.base),
    expAvg: readSlot(SLOT_M, job.reads!.expAvg),
    expAvgSq: readSlot(SLOT_V, job.reads!.expAvgSq),
  };
  const encoded = encodeChunk(job.layout, input, job.options);
  const record = encodeRecord({ entry: job.entry, chunk: job.chunk, payload: encoded.payload }, fastCrc32);
  // The payload travels inside its record (one buffer, no second copy).
  return { kind: 'encode', encoded: { ...encoded, payload: recordPayload(record) }, record };
}

function decode(job: DecodeJob): JobResult {
  if (job.check) assertRecordCrc(job.what, job.chunk, job.check, job.payload, fastCrc32);
  const base = job.base ?? readSlot(SLOT_BASE, job.baseReads);
  const decoded = decodeChunk(job.layout, job.payload, job.count, base, job.what);
  if (job.writes) {
    let written = 0;
    for (const w of job.writes) {
      const bytes = decoded[w.buffer];
      if (!bytes || bytes.length < w.at + w.length) throw new ExcpError('ERR_CORRUPT', `restore: tensor '${job.what}' chunk ${job.chunk} is shorter than its place in the file`);
      writeFully(w.fd, bytes.subarray(w.at, w.at + w.length), w.position);
      written += w.length;
    }
    return { kind: 'decode', decoded: { weight: EMPTY, expAvg: null, expAvgSq: null, digests: decoded.digests }, written };
  }
  if (!job.keep) return { kind: 'decode', decoded: { weight: EMPTY, expAvg: null, expAvgSq: null, digests: decoded.digests }, written: 0 };
  return { kind: 'decode', decoded, written: null };
}

function crcOf(job: CrcJob): JobResult {
  let crc = 0;
  for (const r of job.ranges) {
    for (let at = 0; at < r.length; at += CRC_STEP) {
      const length = Math.min(CRC_STEP, r.length - at);
      crc = fastCrc32(readRanges([{ fd: r.fd, position: r.position + at, length }], buffers.u8(SLOT_CRC, length)), crc);
    }
  }
  return { kind: 'crc', crc };
}

/**
 * Run one job in this thread.
 * @param job the job
 * @returns its result (buffers of this thread's own, never the read buffers)
 * @throws ExcpError as the codec, the reads and the writes do
 */
export function runJob(job: Job): JobResult {
  switch (job.kind) {
    case 'encode': return encode(job);
    case 'decode': return decode(job);
    case 'crc': return crcOf(job);
  }
}
