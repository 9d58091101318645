/**
 * The match finder of lib/lz.ts's encoder (not part of the format): hash of
 * 3 bytes -> most recent position (head), previous position with the same
 * hash (prev, a ring of WINDOW entries, so memory is bounded whatever the
 * input size). Up to MAX_CHAIN candidates are tried per position.
 */
import { MAX_MATCH } from './lz-models.js';

/** Farthest a match reaches back (and the size of the hash-chain ring). */
export const WINDOW = 1 << 20;
/** Candidates tried per position. */
const MAX_CHAIN = 48;
const HASH_BITS = 16;

function hash3(input: Uint8Array, i: number): number {
  return (Math.imul((input[i]! << 16) | (input[i + 1]! << 8) | input[i + 2]!, 0x9e3779b1) >>> (32 - HASH_BITS));
}

/** Length of the common run of input[a..] and input[b..] (a < b), at most `limit`. */
export function matchLength(input: Uint8Array, a: number, b: number, limit: number): number {
  let n = 0;
  while (n < limit && input[a + n] === input[b + n]) n++;
  return n;
}

/** Rough cost in bits of a distance, to compare a match with a rep. */
export function distanceCost(distance: number): number {
  return 32 - Math.clz32(distance);
}

/** Hash-chain match finder. */
export class MatchFinder {
  private readonly head = new Int32Array(1 << HASH_BITS).fill(-1);
  private readonly prev: Int32Array;
  /** Positions below this are in the chains. */
  private inserted = 0;
  length = 0;
  distance = 0;

  constructor(private readonly input: Uint8Array) {
    this.prev = new Int32Array(Math.min(WINDOW, Math.max(1, input.length)));
  }

  /** Put every position below `end` into the chains. */
  insertUpTo(end: number): void {
    const input = this.input;
    const stop = Math.min(end, input.length - 2);
    for (let i = this.inserted; i < stop; i++) {
      const h = hash3(input, i);
      this.prev[i % WINDOW] = this.head[h]!;
      this.head[h] = i;
    }
    if (end > this.inserted) this.inserted = end;
  }

  /** Longest match at i (positions below i must be inserted); sets length and distance. */
  find(i: number): void {
    const input = this.input;
    const limit = Math.min(MAX_MATCH, input.length - i);
    this.length = 0;
    this.distance = 0;
    if (limit < 3) return;
    let candidate = this.head[hash3(input, i)]!;
    for (let tries = 0; candidate >= 0 && i - candidate <= WINDOW && tries < MAX_CHAIN; tries++) {
      if (input[candidate + this.length] === input[i + this.length]) {
        const n = matchLength(input, candidate, i, limit);
        if (n > this.length) {
          this.length = n;
          this.distance = i - candidate;
          if (n === limit) break;
        }
      }
      const next = this.prev[candidate % WINDOW]!;
      if (next >= candidate) break; // the ring slot was reused by a newer position
      candidate = next;
    }
    if (this.length < 3) this.length = 0;
  }
}
