/**
 * Lossless ("exact mode") coding of tensor bytes, optionally against a base.
 *
 * Idea: split the elements into byte planes (plane p = byte p of every
 * element, little-endian, so the top plane of a float holds the sign and the
 * high exponent bits). Planes differ wildly: the top planes of trained
 * weights carry 2-4 bits of information per byte, the low mantissa planes are
 * noise. So each plane is either stored raw (fast, and the smallest for
 * noise) or coded with adaptive binary bit-trees through the range coder, in
 * one of three contexts:
 *   order0  one tree for the plane;
 *   upper   the same element's byte in the plane above (for fp32 plane 2
 *           this is sign + exponent, which predicts the exponent's last bit
 *           and the top mantissa bits);
 *   prev    the previous element's byte in the same plane (top plane only;
 *           catches row/column structure, e.g. Adam's v).
 * The choice per plane comes from empirical conditional entropies of a
 * sample plus an adaptive-model learning penalty ((k-1)/2 log2 n bits per
 * context with k used values); a coded plane that turns out larger than raw
 * is stored raw. bf16 is exactly the top two planes of fp32, so the same
 * models serve both.
 *
 * With a base (the previous checkpoint's bytes), the planes are built from a
 * transform of each element against its base element: XOR of the bit
 * patterns, or the zigzag-coded integer difference of the bit patterns
 * (little-endian, element width). The transform with the smallest estimate
 * (including "none") is recorded.
 *
 * Format:
 *   u8      transform: 0 none, 1 xor, 2 zigzag difference, 3 stored (raw bytes follow, done)
 *   per plane, from the top (p = width-1) down to 0:
 *           u8 kind: 0 raw, 1 order0, 2 upper, 3 prev; for kinds 1-3 a varint coded length
 *   payloads in the same order (raw planes: n bytes), then the byteLength % width tail bytes raw.
 */
import { ByteReader, ByteWriter } from './bytes.js';
import { DTYPE_BYTES, isDType } from './dtype.js';
import { ExcpError } from './errors.js';
import { PROB_INIT, RangeDecoder, RangeEncoder } from './range-coder.js';

/** Dtypes this module is tested on (every safetensors dtype works through its width). */
export type ExactDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

const T_NONE = 0;
const T_XOR = 1;
const T_SUB = 2;
const T_STORED = 3;
const K_RAW = 0;
const K_ORDER0 = 1;
const K_UPPER = 2;
const K_PREV = 3;
const FLOATS = new Set(['F64', 'F32', 'F16', 'BF16', 'F8_E4M3', 'F8_E5M2']);
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

/** Elements [start, end) of up to SAMPLE_RUNS runs spread over n elements. */
function sampleRuns(n: number): [number, number][] {
  if (n <= SAMPLE_RUN * SAMPLE_RUNS) return [[0, n]];
  const runs: [number, number][] = [];
  const stride = Math.floor(n / SAMPLE_RUNS);
  for (let k = 0; k < SAMPLE_RUNS; k++) runs.push([k * stride, k * stride + SAMPLE_RUN]);
  return runs;
}

/** Estimated bits of an adaptive model over a joint histogram hist[ctx * 256 + value]. */
function modelBits(hist: Uint32Array, contexts: number): number {
  let bits = 0;
  for (let c = 0; c < contexts; c++) {
    let n = 0;
    let used = 0;
    let sumClogC = 0;
    for (let v = 0, at = c << 8; v < 256; v++, at++) {
      const k = hist[at]!;
      if (k === 0) continue;
      n += k;
      used++;
      sumClogC += k * Math.log2(k);
    }
    if (n === 0) continue;
    bits += n * Math.log2(n) - sumClogC + ((used - 1) / 2) * Math.log2(n) + 8;
  }
  return bits;
}

interface PlanePlan {
  kind: number;
  bits: number;
}

/** Best kind per plane (top first in the array index = plane index), from sample planes. */
function planPlanes(samples: Uint8Array[][], width: number, isFloatNone: boolean): PlanePlan[] {
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
        const mask = isFloatNone ? 0x7f : 0xff;
        let previous = 0;
        for (let i = 0; i < plane.length; i++) {
          joint[((previous & mask) << 8) | plane[i]!]!++;
          previous = plane[i]!;
        }
      } else {
        const upper = planes[p + 1]!;
        for (let i = 0; i < plane.length; i++) joint[(upper[i]! << 8) | plane[i]!]!++;
      }
    }
    const candidates: PlanePlan[] = [
      { kind: K_RAW, bits: 8 * n * 0.985 }, // adaptive coding must win clearly to be tried
      { kind: K_ORDER0, bits: modelBits(order0, 1) },
      { kind: p === width - 1 ? K_PREV : K_UPPER, bits: modelBits(joint, 256) },
    ];
    plans.push(candidates.reduce((a, b) => (b.bits < a.bits ? b : a)));
  }
  return plans;
}

function estimate(data: Uint8Array, base: Uint8Array | undefined, width: number, transform: number, isFloat: boolean, n: number): { plans: PlanePlan[]; bits: number } {
  const samples = sampleRuns(n).map(([start, end]) => splitPlanes(data, base, width, transform, start, end));
  const plans = planPlanes(samples, width, isFloat && transform === T_NONE);
  return { plans, bits: plans.reduce((sum, plan) => sum + plan.bits, 0) };
}

function contextsFor(kind: number, planes: Uint8Array[], p: number): Uint8Array | null {
  return kind === K_UPPER ? planes[p + 1]! : null;
}

function maskFor(kind: number, isFloatNone: boolean): number {
  return kind === K_PREV ? (isFloatNone ? 0x7f : 0xff) : 0;
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

  const planes = splitPlanes(data, base, width, transform, 0, n);
  const payloads: Uint8Array[] = [];
  const kinds: number[] = [];
  const isFloatNone = isFloat && transform === T_NONE;
  const probs = new Uint16Array(65536);
  for (let p = width - 1; p >= 0; p--) {
    let kind = best.plans[p]!.kind;
    let payload = planes[p]!;
    if (kind !== K_RAW) {
      const enc = new RangeEncoder(Math.ceil(best.plans[p]!.bits / 8) + 64);
      probs.fill(PROB_INIT);
      enc.encodeByteTrees(planes[p]!, probs, contextsFor(kind, planes, p), maskFor(kind, isFloatNone));
      const coded = enc.finish();
      if (coded.length < n) payload = coded;
      else kind = K_RAW;
    }
    kinds.push(kind);
    payloads.push(payload);
  }
  const w = new ByteWriter(16 + 2 * width);
  w.u8(transform);
  for (let k = 0; k < width; k++) {
    w.u8(kinds[k]!);
    if (kinds[k] !== K_RAW) w.varint(payloads[k]!.length);
  }
  const header = w.finish();
  let total = header.length + data.length - n * width;
  for (const payload of payloads) total += payload.length;
  if (total >= data.length + 1) return stored(data);
  const out = new Uint8Array(total);
  out.set(header);
  let at = header.length;
  for (const payload of payloads) {
    out.set(payload, at);
    at += payload.length;
  }
  out.set(data.subarray(n * width), at);
  return out;
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
 * @throws ExcpError ERR_CORRUPT / ERR_TRUNCATED on inconsistent input, ERR_BASE_MISSING when a base is needed
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
  if (transform > T_STORED) throw new ExcpError('ERR_CORRUPT', `exact: unknown transform ${transform}`);
  if (transform !== T_NONE) {
    if (base === undefined) throw new ExcpError('ERR_BASE_MISSING', 'exact: data was coded against a base; none given');
    if (base.length !== byteLength) throw new ExcpError('ERR_BASE_MISMATCH', `exact: base has ${base.length} bytes, expected ${byteLength}`);
  }
  const n = Math.floor(byteLength / width);
  const kinds: number[] = [];
  const lengths: number[] = [];
  for (let k = 0; k < width; k++) {
    const kind = r.u8();
    if (kind > K_PREV || (kind === K_UPPER && k === 0) || (kind === K_PREV && k !== 0)) {
      throw new ExcpError('ERR_CORRUPT', `exact: plane ${width - 1 - k} has invalid kind ${kind}`);
    }
    kinds.push(kind);
    lengths.push(kind === K_RAW ? n : r.varint());
  }
  const tail = byteLength - n * width;
  const needed = lengths.reduce((a, b) => a + b, 0) + tail;
  if (needed !== r.remaining) throw new ExcpError('ERR_CORRUPT', `exact: payload has ${r.remaining} bytes, header describes ${needed}`);
  const planes: Uint8Array[] = new Array<Uint8Array>(width);
  const isFloatNone = FLOATS.has(dtype) && transform === T_NONE;
  const probs = new Uint16Array(65536);
  for (let k = 0; k < width; k++) {
    const p = width - 1 - k;
    const kind = kinds[k]!;
    const start = r.offset;
    r.bytesView(lengths[k]!);
    if (kind === K_RAW) {
      planes[p] = coded.subarray(start, start + n);
      continue;
    }
    const plane = new Uint8Array(n);
    const dec = new RangeDecoder(coded, start, start + lengths[k]!);
    probs.fill(PROB_INIT);
    dec.decodeByteTrees(plane, probs, contextsFor(kind, planes, p), maskFor(kind, isFloatNone));
    if (dec.overrun > 4 || dec.unread > 0) {
      throw new ExcpError('ERR_CORRUPT', `exact: plane ${p} does not decode to ${n} bytes (overrun ${dec.overrun}, unread ${dec.unread})`);
    }
    planes[p] = plane;
  }
  const out = new Uint8Array(byteLength);
  joinPlanes(planes, base, width, transform, n, out);
  out.set(r.bytesView(tail), n * width);
  return out;
}
