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
 *        4 lz variant 1 (an lz stream of the data follows; end), 5 lz variant 1 of
 *        data XOR base (end), 6 and 7: as 4 and 5 with lz variant 2 (what the
 *        writer uses; 4 and 5 are still read)
 *   per plane from the top (p = width - 1) down to 0, a descriptor:
 *          0                         raw: n bytes in the payload
 *          128, u8 value             constant: nothing in the payload
 *          kind | m << 2 | 64 * z    kind 1 order0, 2 upper, 3 prev; m = 1..8 coded top
 *                                    bits; z: the trees first code "top bits are 0";
 *                                    then a varint: length of the range-coded bytes
 *   payloads in the same order (coded planes: coded bytes, then ceil(n * (8 - m) / 8)
 *   bytes of packed low bits, LSB first), then the byteLength % width tail bytes raw.
 *   Float top planes are in rotated form in all of the above.
 *
 * Split by job: exact-planes.ts cuts and joins byte planes, exact-plan.ts
 * estimates how each plane should be coded, and this module writes and reads
 * the stream.
 */
import { ByteReader, ByteWriter } from '../core/bytes.js';
import { DTYPE_BYTES, isDType } from '../core/dtype.js';
import { ExcpError } from '../core/errors.js';
import { PROB_INIT, RangeDecoder, RangeEncoder } from './range-coder.js';
import { lzCompress, lzDecompress } from './lz.js';
import { estimate, K_ORDER0, K_PREV, K_RAW, K_UPPER } from './exact-plan.js';
import { joinPlanes, packLowBits, planesOf, rotateTop, T_LZ, T_LZ2, T_LZ2_XOR, T_LZ_XOR, T_NONE, T_STORED, T_SUB, T_XOR, unpackLowBits, unrotateTop } from './exact-planes.js';

/** Dtypes this module is tested on (every safetensors dtype works through its width). */
export type ExactDtype = 'F32' | 'F16' | 'BF16' | 'F64' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

/** Byte data shorter than this is not worth an LZ attempt. */
const MIN_LZ_BYTES = 64;
/** Plane descriptor byte: kind | codedBits << 2 | ZERO_FLAG. */
const ZERO_FLAG = 64;
/** Plane descriptor of a plane whose bytes are all equal; the byte follows. */
const CONSTANT = 128;
const FLOATS = new Set(['F64', 'F32', 'F16', 'BF16', 'F8_E4M3', 'F8_E5M2']);
/** Below this many elements modelling cannot pay for its learning: store. */
const MIN_ELEMENTS = 64;

function widthOf(dtype: string): number {
  if (!isDType(dtype)) throw new ExcpError('ERR_DTYPE', `exact: unknown dtype ${JSON.stringify(dtype)}`);
  return DTYPE_BYTES[dtype];
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
  for (const transform of base === undefined ? [T_LZ2] : [T_LZ2, T_LZ2_XOR]) {
    const source = transform === T_LZ2 ? data : xorBytes(data, base!);
    const coded = lzCompress(source, 2); // transforms 6 and 7 are lz variant 2
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
  if (transform > T_LZ2_XOR) throw new ExcpError('ERR_CORRUPT', `exact: unknown transform ${transform}`);
  if (transform !== T_NONE && transform !== T_LZ && transform !== T_LZ2) {
    if (base === undefined) throw new ExcpError('ERR_BASE_MISSING', 'exact: data was coded against a base; none given');
    if (base.length !== byteLength) throw new ExcpError('ERR_BASE_MISMATCH', `exact: base has ${base.length} bytes, expected ${byteLength}`);
  }
  if (transform >= T_LZ) {
    // byteLength is the tensor's size from the validated header: bounded by the chunk.
    const variant = transform === T_LZ || transform === T_LZ_XOR ? 1 : 2;
    const out = lzDecompress(r.bytesView(r.remaining), byteLength, byteLength, variant);
    if (transform === T_LZ_XOR || transform === T_LZ2_XOR) for (let i = 0; i < out.length; i++) out[i] = out[i]! ^ base![i]!;
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
