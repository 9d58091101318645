/**
 * A tiny seeded PRNG (xoshiro128**, Blackman & Vigna, https://prng.di.unimi.it/).
 *
 * Why not Math.random: the codec must be deterministic by construction (same
 * input + same options => byte-identical output), and spec generators must be
 * reproducible from a printed seed. xoshiro128** has a 128-bit state, passes
 * BigCrush, and needs only 32-bit integer ops, which JS does exactly with
 * `| 0`, `>>> 0` and `Math.imul`.
 */

/** splitmix32 step: spreads a 32-bit seed over the 128-bit state (never all zero). */
function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

/** Deterministic pseudo-random numbers from a 32-bit seed. */
export class Prng {
  /** Invariant: the four words are uint32 and not all zero. */
  private s0: number;
  private s1: number;
  private s2: number;
  private s3: number;
  /** Second Box-Muller value, or NaN when none is cached. */
  private spareNormal = Number.NaN;

  /**
   * @param seed any number; only its low 32 bits are used
   */
  constructor(seed: number) {
    const st = { s: seed >>> 0 };
    this.s0 = splitmix32(st);
    this.s1 = splitmix32(st);
    this.s2 = splitmix32(st);
    this.s3 = splitmix32(st);
    if ((this.s0 | this.s1 | this.s2 | this.s3) === 0) this.s0 = 1;
  }

  /** @returns a uniform uint32 */
  nextU32(): number {
    const s1 = this.s1;
    const result = Math.imul(rotl(Math.imul(s1, 5), 7), 9) >>> 0;
    const t = s1 << 9;
    this.s2 ^= this.s0;
    this.s3 ^= s1;
    this.s1 ^= this.s2;
    this.s0 ^= this.s3;
    this.s2 ^= t;
    this.s3 = rotl(this.s3, 11);
    return result;
  }

  /** @returns a uniform double in [0, 1) with 32 random bits */
  next(): number {
    return this.nextU32() / 4294967296;
  }

  /**
   * @param n exclusive upper bound, 1 <= n <= 2^32
   * @returns a uniform integer in [0, n) (tiny modulo bias is fine for tests and seeding)
   */
  int(n: number): number {
    return Math.floor(this.next() * n);
  }

  /** @returns a standard normal deviate (Box-Muller; deterministic on a given platform) */
  normal(): number {
    if (!Number.isNaN(this.spareNormal)) {
      const v = this.spareNormal;
      this.spareNormal = Number.NaN;
      return v;
    }
    // 1 - next() is in (0, 1], so the log is finite.
    const radius = Math.sqrt(-2 * Math.log(1 - this.next()));
    const angle = 2 * Math.PI * this.next();
    this.spareNormal = radius * Math.sin(angle);
    return radius * Math.cos(angle);
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
