/**
 * Format constants and hard limits.
 */

/** First 8 bytes of every container: high bit set and CR LF SUB LF catch text-mode mangling (the PNG trick). */
export const MAGIC = Uint8Array.from([0x89, 0x45, 0x58, 0x43, 0x50, 0x0d, 0x0a, 0x1a]);
/** Last 4 bytes of every container. */
export const END_MAGIC = Uint8Array.from([0x50, 0x43, 0x58, 0x45]);
/** Container format version this code writes (it reads 1 to 3). */
export const FORMAT_VERSION = 4;
/** Package version, written into containers. */
export const TOOL_VERSION = '0.1.0';

/** Record types. */
export const RECORD_CHUNK = 1;
export const RECORD_FOOTER = 2;

/** Largest header or footer body accepted, stored or decoded (version 1: its JSON). */
export const MAX_BODY_BYTES = 64 * 1024 * 1024;
/** Largest chunk accepted (elements). */
export const MAX_CHUNK_ELEMENTS = 1 << 26;
/** Smallest chunk accepted (elements). */
export const MIN_CHUNK_ELEMENTS = 64;
/**
 * Most tensors in one checkpoint (and container). Memory grows with the
 * count, about 2 KB a tensor at its peak (the header's JSON, the plan, the
 * footer): a header of 1M empty tensors (59 MB) took 2.0 GB to compress,
 * 1.9 GB to restore, 1.7 GB to inspect. 2^18 keeps that under 0.6 GB and
 * is well above the largest checkpoints there are (a 61-layer model with
 * 384 experts has about 70 000 tensors, 210 000 with both Adam moments).
 */
export const MAX_TENSORS = 262_144;
