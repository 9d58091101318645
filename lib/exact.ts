/**
 * Lossless ("exact mode") coding of tensor bytes, optionally against a base.
 *
 * Idea: split the elements into byte planes (plane p = byte p of every
 * element, little-endian). Planes differ wildly: the top planes of trained
 * weights carry 2-4 bits per byte (sign, exponent), the low mantissa planes
 * are noise. Each plane is coded in one of these ways:
 *   raw       stored as is (noise: smallest and fastest);
 *   constant  one byte (zero tensors, int high bytes, bf16-upcast fp32);
 *   trees     the top m bits (1..8) through adaptive binary bit-trees and the
 *             range coder, the low 8 - m bits packed raw. Contexts:
 *               order0  one tree for the plane;
 *               upper   the same element's byte in the plane above (fp32
 *                       plane 2 given sign + exponent: predicts the exponent's
 *                       last bit and the top mantissa bits);
 *               prev    the previous element's byte (top plane only; row
 *                       structure, e.g. Adam's v).
 * Why m < 8: a near-uniform mantissa bit costs a coder decision (time) and
 * saves nothing, so only the bits that pay are modelled. For floats the top
 * plane is rotated left by one (sign to bit 0), so m = 7 models the exponent
 * bits and leaves the sign of zero-mean weights raw. The plan per plane comes
 * from empirical conditional entropies on a sample, plus (k-1)/2 log2(n)
 * learning bits per context and DECISION_COST per modelled bit; a coded plane
 * that ends up larger than raw is stored raw. bf16 is the top two planes of
 * fp32, so the same models serve both.
 *
 * With a base (the previous checkpoint's bytes) the planes come from a
 * transform of each element against its base element: XOR of the bit
 * patterns, or the zigzag-coded integer difference of the bit patterns
 * (little-endian, element width). The transform with the smallest estimate,
 * "none" included, is recorded.
 *
 * Byte data (U8, I8, BOOL: whole files and optimizer.pt skeletons of a
 * checkpoint folder, token ids) has no planes to split and is mostly
 * structured text or pickle: it is also tried through lib/lz.ts (LZ77 and
 * the adaptive range coder), alone or over the XOR against the base, and the
 * smallest result is kept.
 *
 * Format:
 *   u8   transform: 0 none, 1 xor, 2 zigzag difference, 3 stored (raw data follows; end),
 *        4 lz (an lz stream of the data follows; end), 5 lz of data XOR base (end)
 *   per plane from the top (p = width - 1) down to 0, a descriptor:
 *          0                         raw: n bytes in the payload
 *          128, u8 value             constant: nothing in the payload
 *          kind | m << 2 | 64 * z    kind 1 order0, 2 upper, 3 prev; m = 1..8 coded top
 *                                    bits; z: the trees first code "top bits are 0";
 *                                    then a varint: length of the range-coded bytes
 *   payloads in the same order (coded planes: coded bytes, then ceil(n * (8 - m) / 8)
 *   bytes of packed low bits, LSB first), then the byteLength % width tail bytes raw.
 *   Float top planes are in rotated form in all of the above.
 */
import { ByteReader, ByteWriter } from './bytes.js';
import { DTYPE_BYTES, isDType } from './dtype.js';
import { ExcpError } from './errors.js';
import { PROB_INIT, RangeDecoder, RangeEncoder } from './range-coder.js';
import { lzCompress, lzDecompress } from './lz.js';

/** Dtypes this module is tested on (every safetensors dtype works through its width). */
export type ExactDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

const T_NONE = 0;
const T_XOR = 1;
const T_SUB = 2;
const T_STORED = 3;
const T_LZ = 4;
const T_LZ_XOR = 5;
/** Byte data shorter than this is not worth an LZ attempt. */
const MIN_LZ_BYTES = 64;
const K_RAW = 0;
const K_ORDER0 = 1;
const K_UPPER = 2;
const K_PREV = 3;
/** Plane descriptor byte: kind | codedBits << 2 | ZERO_FLAG. */
const ZERO_FLAG = 64;
/** Plane descriptor of a plane whose bytes are all equal; the byte follows. */
const CONSTANT = 128;
const FLOATS = new Set(['F64', 'F32', 'F16', 'BF16', 'F8_E4M3', 'F8_E5M2']);
/**
 * Cost charged per coded bit per element, in bits: a shift-5 adaptive binary
 * model pays about 1/(2 * 63 * ln 2) = 0.0115 bits of estimator noise per
 * decision, and each decision costs time; a bit plane must save more to be coded.
 */
const DECISION_COST = 0.015;
/** Below this many elements modelling cannot pay for its learning: store. */
const MIN_ELEMENTS = 64;
/** Estimates are taken on up to this many elements, in contiguous runs. */
const SAMPLE_RUN = 4096;
const SAMPLE_RUNS = 32;

function widthOf(dtype: string): number {
  if (!isDType(dtype)) throw new ExcpError('ERR_DTYPE', `exact: unknown dtype ${JSON.stringify(dtype)}`);
  return DTYPE_BYTES[dtype];
}

/**
 * Byte planes of the transformed elements [start, end): planes[p][i - start].
 * SUB: d = data - base as a little-endian integer, then zigzag (d << 1) ^ (d >> msb),
 * so small differences of either sign become small numbers.
 */
function splitPlanes(data: Uint8Array, base: Uint8Array | undefined, width: number, transform: number, start: number, end: number): Uint8Array[] {
  const count = end - start;
  const planes: Uint8Array[] = [];
  for (let p = 0; p < width; p++) planes.push(new Uint8Array(count));
  if (transform === T_NONE || base === undefined) {
    for (let p = 0; p < width; p++) {
      const plane = planes[p]!;
      for (let i = 0, at = start * width + p; i < count; i++, at += width) plane[i] = data[at]!;
    }
  } else if (transform === T_XOR) {
    for (let p = 0; p < width; p++) {
      const plane = planes[p]!;
      for (let i = 0, at = start * width + p; i < count; i++, at += width) plane[i] = data[at]! ^ base[at]!;
    }
  } else if (width <= 4) {
    // Same zigzag difference with 32-bit integer math (shift = 32 - 8 * width sign-extends).
    const shift = 32 - 8 * width;
    for (let i = 0, at = start * width; i < count; i++, at += width) {
      let x = 0;
      let y = 0;
      for (let p = width - 1; p >= 0; p--) {
        x = (x << 8) | data[at + p]!;
        y = (y << 8) | base[at + p]!;
      }
      const d = ((x - y) << shift) >> shift;
      const z = (d << 1) ^ (d >> 31);
      for (let p = 0; p < width; p++) planes[p]![i] = (z >>> (8 * p)) & 0xff;
    }
  } else {
    const diff = new Uint8Array(width);
    for (let i = 0, at = start * width; i < count; i++, at += width) {
      let borrow = 0;
      for (let p = 0; p < width; p++) {
        const v = data[at + p]! - base[at + p]! - borrow;
        borrow = v < 0 ? 1 : 0;
        diff[p] = v & 0xff;
      }
      const flip = diff[width - 1]! & 0x80 ? 0xff : 0;
      let carry = flip & 1;
      for (let p = 0; p < width; p++) {
        const x = diff[p]! ^ flip;
        planes[p]![i] = ((x << 1) | carry) & 0xff;
        carry = x >>> 7;
      }
    }
  }
  return planes;
}

/** Inverse of {@link splitPlanes} into out[0, n * width). */
function joinPlanes(planes: Uint8Array[], base: Uint8Array | undefined, width: number, transform: number, n: number, out: Uint8Array): void {
  if (transform === T_NONE || base === undefined) {
    for (let p = 0; p < width; p++) {
      const plane = planes[p]!;
      for (let i = 0, at = p; i < n; i++, at += width) out[at] = plane[i]!;
    }
  } else if (transform === T_XOR) {
    for (let p = 0; p < width; p++) {
      const plane = planes[p]!;
      for (let i = 0, at = p; i < n; i++, at += width) out[at] = plane[i]! ^ base[at]!;
    }
  } else if (width <= 4) {
    for (let i = 0, at = 0; i < n; i++, at += width) {
      let z = 0;
      let y = 0;
      for (let p = width - 1; p >= 0; p--) {
        z = (z << 8) | planes[p]![i]!;
        y = (y << 8) | base[at + p]!;
      }
      const x = y + ((z >>> 1) ^ -(z & 1)); // un-zigzag, add; only the low 8 * width bits matter
      for (let p = 0; p < width; p++) out[at + p] = (x >>> (8 * p)) & 0xff;
    }
  } else {
    for (let i = 0, at = 0; i < n; i++, at += width) {
      const flip = planes[0]![i]! & 1 ? 0xff : 0;
      let carry = 0;
      for (let p = 0; p < width; p++) {
        const high = p + 1 < width ? (planes[p + 1]![i]! & 1) << 7 : 0;
        const d = (((planes[p]![i]! >>> 1) | high) ^ flip) & 0xff;
        const v = base[at + p]! + d + carry;
        out[at + p] = v & 0xff;
        carry = v >>> 8;
      }
    }
  }
}

/** Float top planes are rotated left by 1 (sign to bit 0), so a tree coding only the top bits skips the sign. */
function rotateTop(plane: Uint8Array): void {
  for (let i = 0; i < plane.length; i++) plane[i] = ((plane[i]! << 1) | (plane[i]! >>> 7)) & 0xff;
}

function unrotateTop(plane: Uint8Array): void {
  for (let i = 0; i < plane.length; i++) plane[i] = ((plane[i]! >>> 1) | (plane[i]! << 7)) & 0xff;
}

/** The low (8 - codedBits) bits of every byte, packed LSB first. */
function packLowBits(plane: Uint8Array, lowBits: number): Uint8Array {
  const out = new Uint8Array(Math.ceil((plane.length * lowBits) / 8));
  const mask = (1 << lowBits) - 1;
  let acc = 0;
  let accBits = 0;
  let at = 0;
  for (let i = 0; i < plane.length; i++) {
    acc |= (plane[i]! & mask) << accBits;
    accBits += lowBits;
    if (accBits >= 8) {
      out[at++] = acc & 0xff;
      acc >>>= 8;
      accBits -= 8;
    }
  }
  if (accBits > 0) out[at] = acc;
  return out;
}

function unpackLowBits(packed: Uint8Array, lowBits: number, out: Uint8Array): void {
  const mask = (1 << lowBits) - 1;
  let acc = 0;
  let accBits = 0;
  let at = 0;
  for (let i = 0; i < out.length; i++) {
    if (accBits < lowBits) {
      acc |= packed[at++]! << accBits;
      accBits += 8;
    }
    out[i] = acc & mask;
    acc >>>= lowBits;
    accBits -= lowBits;
  }
}

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

interface PlanePlan {
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

function planesOf(data: Uint8Array, base: Uint8Array | undefined, width: number, transform: number, isFloat: boolean, start: number, end: number): Uint8Array[] {
  const planes = splitPlanes(data, base, width, transform, start, end);
  if (isFloat) rotateTop(planes[width - 1]!);
  return planes;
}

function estimate(data: Uint8Array, base: Uint8Array | undefined, width: number, transform: number, isFloat: boolean, n: number): { plans: PlanePlan[]; bits: number } {
  const samples = sampleRuns(n).map(([start, end]) => planesOf(data, base, width, transform, isFloat, start, end));
  const plans = planPlanes(samples, width, isFloat ? 0xfe : 0xff);
  return { plans, bits: plans.reduce((sum, plan) => sum + plan.bits, 0) };
}

function contextsFor(kind: number, planes: Uint8Array[], p: number): Uint8Array | null {
  return kind === K_UPPER ? planes[p + 1]! : null;
}

function maskFor(kind: number, isFloat: boolean): number {
  return kind === K_PREV ? (isFloat ? 0xfe : 0xff) : 0;
}

/**
 * Code tensor bytes losslessly.
 * @param data raw little-endian bytes of the elements
 * @param dtype a safetensors dtype name (see {@link ExactDtype})
 * @param base optional bytes of the same dtype and length to code against
 * @returns the coded bytes
 * @throws ExcpError ERR_DTYPE for an unknown dtype, ERR_BASE_MISMATCH when the base length differs
 */
export function encodeExact(data: Uint8Array, dtype: string, base?: Uint8Array): Uint8Array {
  const width = widthOf(dtype);
  if (base !== undefined && base.length !== data.length) {
    throw new ExcpError('ERR_BASE_MISMATCH', `exact: base has ${base.length} bytes, data ${data.length}`);
  }
  const planar = encodePlanes(data, dtype, width, base);
  if (width !== 1 || data.length < MIN_LZ_BYTES) return planar;
  let best = planar;
  for (const transform of base === undefined ? [T_LZ] : [T_LZ, T_LZ_XOR]) {
    const source = transform === T_LZ ? data : xorBytes(data, base!);
    const coded = lzCompress(source);
    if (coded.length + 1 < best.length) {
      best = new Uint8Array(coded.length + 1);
      best[0] = transform;
      best.set(coded, 1);
    }
  }
  return best;
}

function xorBytes(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length);
  for (let i = 0; i < a.length; i++) out[i] = a[i]! ^ b[i]!;
  return out;
}

/** The byte-plane coder (transforms 0-3). */
function encodePlanes(data: Uint8Array, dtype: string, width: number, base: Uint8Array | undefined): Uint8Array {
  const n = Math.floor(data.length / width);
  if (n < MIN_ELEMENTS) return stored(data);
  const isFloat = FLOATS.has(dtype);
  let best = estimate(data, undefined, width, T_NONE, isFloat, n);
  let transform = T_NONE;
  if (base !== undefined) {
    for (const t of [T_XOR, T_SUB]) {
      const e = estimate(data, base, width, t, isFloat, n);
      if (e.bits < best.bits) {
        best = e;
        transform = t;
      }
    }
  }
  if (best.plans.every((plan) => plan.kind === K_RAW)) return stored(data);

  const planes = planesOf(data, base, width, transform, isFloat, 0, n);
  const w = new ByteWriter(16 + 2 * width);
  w.u8(transform);
  const payloads: Uint8Array[] = [];
  const probs = new Uint16Array(65536);
  for (let p = width - 1; p >= 0; p--) {
    const plan = best.plans[p]!;
    const constant = constantOf(planes[p]!);
    if (constant >= 0) {
      w.u8(CONSTANT);
      w.u8(constant);
      continue;
    }
    if (plan.kind !== K_RAW) {
      const enc = new RangeEncoder(Math.ceil(plan.bits / 8) + 64);
      probs.fill(PROB_INIT);
      enc.encodeByteTrees(planes[p]!, probs, contextsFor(plan.kind, planes, p), maskFor(plan.kind, isFloat), plan.codedBits, plan.zeroFlag);
      const coded = enc.finish();
      const packed = packLowBits(planes[p]!, 8 - plan.codedBits);
      if (coded.length + packed.length < n) {
        w.u8(plan.kind | (plan.codedBits << 2) | (plan.zeroFlag ? ZERO_FLAG : 0));
        w.varint(coded.length);
        payloads.push(coded, packed);
        continue;
      }
    }
    w.u8(K_RAW);
    payloads.push(p === width - 1 && isFloat ? unrotated(planes[p]!) : planes[p]!);
  }
  payloads.push(data.subarray(n * width));
  const header = w.finish();
  let total = header.length;
  for (const payload of payloads) total += payload.length;
  if (total >= data.length + 1) return stored(data);
  const out = new Uint8Array(total);
  out.set(header);
  let at = header.length;
  for (const payload of payloads) {
    out.set(payload, at);
    at += payload.length;
  }
  return out;
}

/** @returns the byte every element of the plane has, or -1 */
function constantOf(plane: Uint8Array): number {
  const first = plane[0]!;
  for (let i = 1; i < plane.length; i++) if (plane[i] !== first) return -1;
  return first;
}

function unrotated(plane: Uint8Array): Uint8Array {
  const copy = plane.slice();
  unrotateTop(copy);
  return copy;
}

function stored(data: Uint8Array): Uint8Array {
  const out = new Uint8Array(data.length + 1);
  out[0] = T_STORED;
  out.set(data, 1);
  return out;
}

/**
 * Decode bytes written by {@link encodeExact}.
 * @param coded the coded bytes
 * @param dtype the dtype given to the encoder
 * @param byteLength the original data length
 * @param base the base given to the encoder, if any
 * @returns the original bytes, bit for bit
 * @throws ExcpError ERR_CORRUPT / ERR_TRUNCATED on inconsistent input, ERR_BASE_MISSING / ERR_BASE_MISMATCH for a missing or wrong-sized base
 */
export function decodeExact(coded: Uint8Array, dtype: string, byteLength: number, base?: Uint8Array): Uint8Array {
  const width = widthOf(dtype);
  if (!(Number.isSafeInteger(byteLength) && byteLength >= 0)) throw new ExcpError('ERR_OUT_OF_RANGE', `exact: byteLength ${byteLength} is invalid`);
  const r = new ByteReader(coded, 'exact');
  const transform = r.u8();
  if (transform === T_STORED) {
    if (r.remaining !== byteLength) throw new ExcpError('ERR_CORRUPT', `exact: stored ${r.remaining} bytes, expected ${byteLength}`);
    return coded.slice(1);
  }
  if (transform > T_LZ_XOR) throw new ExcpError('ERR_CORRUPT', `exact: unknown transform ${transform}`);
  if (transform !== T_NONE && transform !== T_LZ) {
    if (base === undefined) throw new ExcpError('ERR_BASE_MISSING', 'exact: data was coded against a base; none given');
    if (base.length !== byteLength) throw new ExcpError('ERR_BASE_MISMATCH', `exact: base has ${base.length} bytes, expected ${byteLength}`);
  }
  if (transform === T_LZ || transform === T_LZ_XOR) {
    // byteLength is the tensor's size from the validated header: bounded by the chunk.
    const out = lzDecompress(r.bytesView(r.remaining), byteLength, byteLength);
    if (transform === T_LZ_XOR) for (let i = 0; i < out.length; i++) out[i] = out[i]! ^ base![i]!;
    return out;
  }
  const n = Math.floor(byteLength / width);
  const isFloat = FLOATS.has(dtype);
  const descriptors: number[] = [];
  const lengths: number[] = [];
  const constants: number[] = [];
  for (let p = width - 1; p >= 0; p--) {
    const d = r.u8();
    if (d === CONSTANT) {
      descriptors.push(d);
      lengths.push(0);
      constants.push(r.u8());
      continue;
    }
    constants.push(0);
    const kind = d & 3;
    const codedBits = (d >>> 2) & 15;
    if (d >= 128 || (kind === K_RAW && d !== 0)) throw new ExcpError('ERR_CORRUPT', `exact: plane ${p} has invalid descriptor ${d}`);
    const valid = kind === K_RAW ? codedBits === 0 : codedBits >= 1 && codedBits <= 8 && (kind === K_ORDER0 || kind === (p === width - 1 ? K_PREV : K_UPPER));
    if (!valid) throw new ExcpError('ERR_CORRUPT', `exact: plane ${p} has invalid descriptor ${d}`);
    descriptors.push(d);
    lengths.push(kind === K_RAW ? n : r.varint());
  }
  const planes: Uint8Array[] = new Array<Uint8Array>(width);
  const probs = new Uint16Array(65536);
  for (let k = 0; k < width; k++) {
    const p = width - 1 - k;
    const kind = descriptors[k]! & 3;
    const codedBits = (descriptors[k]! >>> 2) & 15;
    const zeroFlag = (descriptors[k]! & ZERO_FLAG) !== 0;
    if (descriptors[k] === CONSTANT) {
      planes[p] = new Uint8Array(n).fill(constants[k]!);
      continue;
    }
    const start = r.offset;
    r.bytesView(lengths[k]!);
    if (kind === K_RAW) {
      planes[p] = coded.slice(start, start + n);
      if (p === width - 1 && isFloat) rotateTop(planes[p]!);
      continue;
    }
    const plane = new Uint8Array(n);
    unpackLowBits(r.bytesView(Math.ceil((n * (8 - codedBits)) / 8)), 8 - codedBits, plane);
    const dec = new RangeDecoder(coded, start, start + lengths[k]!);
    probs.fill(PROB_INIT);
    dec.decodeByteTrees(plane, probs, contextsFor(kind, planes, p), maskFor(kind, isFloat), codedBits, zeroFlag);
    if (dec.overrun > 4 || dec.unread > 0) {
      throw new ExcpError('ERR_CORRUPT', `exact: plane ${p} does not decode to ${n} bytes (overrun ${dec.overrun}, unread ${dec.unread})`);
    }
    planes[p] = plane;
  }
  const tail = byteLength - n * width;
  if (r.remaining !== tail) throw new ExcpError('ERR_CORRUPT', `exact: ${r.remaining} bytes left, expected a tail of ${tail}`);
  if (isFloat && n > 0) unrotateTop(planes[width - 1]!);
  const out = new Uint8Array(byteLength);
  joinPlanes(planes, base, width, transform, n, out);
  out.set(r.bytesView(tail), n * width);
  return out;
}
