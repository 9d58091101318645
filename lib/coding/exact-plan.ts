/**
 * Planning exact mode (format and rationale in exact.ts): how each byte
 * plane should be coded, from empirical conditional entropies on a sample of
 * the tensor. Kept apart from the coder because it is pure estimation (no
 * bytes are written here) and is what one tunes; the coder only follows the
 * plan it is given.
 */
import { planesOf } from './exact-planes.js';

/** Plane kinds (the low two bits of a plane descriptor). */
export const K_RAW = 0;
export const K_ORDER0 = 1;
export const K_UPPER = 2;
export const K_PREV = 3;
/**
 * Cost charged per coded bit per element, in bits: a shift-5 adaptive binary
 * model pays about 1/(2 * 63 * ln 2) = 0.0115 bits of estimator noise per
 * decision, and each decision costs time; a bit plane must save more to be coded.
 */
const DECISION_COST = 0.015;
/** Estimates are taken on up to this many elements, in contiguous runs. */
const SAMPLE_RUN = 4096;
const SAMPLE_RUNS = 32;

/** Elements [start, end) of up to SAMPLE_RUNS runs spread over n elements. */
function sampleRuns(n: number): [number, number][] {
  if (n <= SAMPLE_RUN * SAMPLE_RUNS) return [[0, n]];
  const runs: [number, number][] = [];
  const stride = Math.floor(n / SAMPLE_RUNS);
  for (let k = 0; k < SAMPLE_RUNS; k++) runs.push([k * stride, k * stride + SAMPLE_RUN]);
  return runs;
}

/**
 * Estimated bits per sampled element of adaptive trees over the top m bits,
 * for m = 1..8 (index m), from a joint histogram hist[ctx * 256 + value]:
 * empirical conditional entropy + (k-1)/2 log2(n) learning cost per context
 * + DECISION_COST per coded bit (adaptive-estimator noise, and time) + raw low bits.
 */
function treeBits(hist: Uint32Array, contexts: number, n: number): Float64Array {
  const bits = new Float64Array(9);
  const merged = new Float64Array(256);
  for (let c = 0; c < contexts; c++) {
    let rowTotal = 0;
    for (let v = 0; v < 256; v++) rowTotal += hist[(c << 8) | v]!;
    if (rowTotal === 0) continue;
    for (let v = 0; v < 256; v++) merged[v] = hist[(c << 8) | v]!;
    const logTotal = Math.log2(rowTotal);
    for (let m = 8, size = 256; m >= 1; m--, size >>= 1) {
      if (m < 8) for (let v = 0; v < size; v++) merged[v] = merged[2 * v]! + merged[2 * v + 1]!;
      let used = 0;
      let sumClogC = 0;
      for (let v = 0; v < size; v++) {
        const k = merged[v]!;
        if (k > 0) {
          used++;
          sumClogC += k * Math.log2(k);
        }
      }
      bits[m] = bits[m]! + rowTotal * logTotal - sumClogC + ((used - 1) / 2) * logTotal + 16;
    }
  }
  for (let m = 1; m <= 8; m++) bits[m] = bits[m]! + n * ((8 - m) + m * DECISION_COST);
  return bits;
}

/** How one plane is coded, and its estimated cost in bits on the sample. */
export interface PlanePlan {
  kind: number;
  /** Top bits coded by the trees (1..8); 0 for a raw plane. */
  codedBits: number;
  /** Code "top bits are 0" first (pays off in time when most are). */
  zeroFlag: boolean;
  bits: number;
}

/** Best kind and coded bit count per plane (array index = plane index), from sample planes. */
function planPlanes(samples: Uint8Array[][], width: number, prevMask: number): PlanePlan[] {
  const plans: PlanePlan[] = [];
  const order0 = new Uint32Array(256);
  const joint = new Uint32Array(65536);
  for (let p = 0; p < width; p++) {
    let n = 0;
    order0.fill(0);
    joint.fill(0);
    for (const planes of samples) {
      const plane = planes[p]!;
      n += plane.length;
      for (let i = 0; i < plane.length; i++) order0[plane[i]!]!++;
      if (p === width - 1) {
        let previous = 0;
        for (let i = 0; i < plane.length; i++) {
          joint[((previous & prevMask) << 8) | plane[i]!]!++;
          previous = plane[i]!;
        }
      } else {
        const upper = planes[p + 1]!;
        for (let i = 0; i < plane.length; i++) joint[(upper[i]! << 8) | plane[i]!]!++;
      }
    }
    let best: PlanePlan = { kind: K_RAW, codedBits: 0, zeroFlag: false, bits: 8 * n };
    const contextKind = p === width - 1 ? K_PREV : K_UPPER;
    for (const [kind, bits] of [[K_ORDER0, treeBits(order0, 1, n)], [contextKind, treeBits(joint, 256, n)]] as const) {
      for (let m = 1; m <= 8; m++) if (bits[m]! < best.bits) best = { kind, codedBits: m, zeroFlag: false, bits: bits[m]! };
    }
    let zeros = 0;
    for (let v = 0; v < 1 << (8 - best.codedBits); v++) zeros += order0[v]!;
    best.zeroFlag = best.kind !== K_RAW && best.codedBits > 1 && zeros > 0.5 * n;
    plans.push(best);
  }
  return plans;
}

/**
 * Plans for every plane of a tensor under one transform, from a sample.
 * @param data the tensor bytes
 * @param base the base bytes, for a transform against it
 * @param width element width in bytes
 * @param transform T_NONE, T_XOR or T_SUB
 * @param isFloat whether the top plane is rotated
 * @param n element count
 * @returns per plane (index = plane) the plan, and the estimated total bits
 */
export function estimate(data: Uint8Array, base: Uint8Array | undefined, width: number, transform: number, isFloat: boolean, n: number): { plans: PlanePlan[]; bits: number } {
  const samples = sampleRuns(n).map(([start, end]) => planesOf(data, base, width, transform, isFloat, start, end));
  const plans = planPlanes(samples, width, isFloat ? 0xfe : 0xff);
  return { plans, bits: plans.reduce((sum, plan) => sum + plan.bits, 0) };
}
