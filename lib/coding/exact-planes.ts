/**
 * The byte-plane layout of exact mode (format and rationale in exact.ts):
 * the transforms against a base, splitting elements into planes and joining
 * them back, the rotation of float top planes, and the packing of the low
 * bits a plane's trees leave uncoded. Kept apart because both the planner
 * (exact-plan.ts, on samples) and the coder (exact.ts, on whole tensors) cut
 * planes, and the two must cut them the same way.
 */

/** Transform byte of an exact stream (the first byte). */
export const T_NONE = 0;
export const T_XOR = 1;
export const T_SUB = 2;
export const T_STORED = 3;
export const T_LZ = 4;
export const T_LZ_XOR = 5;
/** As T_LZ and T_LZ_XOR with lz variant 2 (T_LZ/T_LZ_XOR are variant 1, still read). */
export const T_LZ2 = 6;
export const T_LZ2_XOR = 7;

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
export function joinPlanes(planes: Uint8Array[], base: Uint8Array | undefined, width: number, transform: number, n: number, out: Uint8Array): void {
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
export function rotateTop(plane: Uint8Array): void {
  for (let i = 0; i < plane.length; i++) plane[i] = ((plane[i]! << 1) | (plane[i]! >>> 7)) & 0xff;
}

/** Inverse of {@link rotateTop}. */
export function unrotateTop(plane: Uint8Array): void {
  for (let i = 0; i < plane.length; i++) plane[i] = ((plane[i]! >>> 1) | (plane[i]! << 7)) & 0xff;
}

/** The low (8 - codedBits) bits of every byte, packed LSB first. */
export function packLowBits(plane: Uint8Array, lowBits: number): Uint8Array {
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

/** Inverse of {@link packLowBits} into `out` (its length is the element count). */
export function unpackLowBits(packed: Uint8Array, lowBits: number, out: Uint8Array): void {
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

/** The planes of elements [start, end) as the coder sees them: transformed, float top plane rotated. */
export function planesOf(data: Uint8Array, base: Uint8Array | undefined, width: number, transform: number, isFloat: boolean, start: number, end: number): Uint8Array[] {
  const planes = splitPlanes(data, base, width, transform, start, end);
  if (isFloat) rotateTop(planes[width - 1]!);
  return planes;
}
