/**
 * Pass 5 of the encoder (lib/method/encode.ts): the digests of the bytes
 * restore will produce for an F32 chunk, made block by block from the
 * gather's slots and hashed while in cache. Apart from the gathering passes
 * because it mirrors the decoder (reconstructInto) rather than the pruning
 * rules, and must be checked against it on its own terms.
 */
import { Hasher } from '../core/hash.js';

const BLOCK = 4096;
const blockW = new Float32Array(BLOCK);
const blockWBits = new Int32Array(blockW.buffer);
const blockM = new Int32Array(BLOCK);
const blockV = new Int32Array(BLOCK);
const oneF32 = new Float32Array(1);
const oneI32 = new Int32Array(oneF32.buffer);

function bitsOf(x: number): number {
  oneF32[0] = x;
  return oneI32[0]!;
}

/**
 * Digests of the bytes restore will produce for this chunk (weight, m, v),
 * without making them whole: the words are made block by block, exceptions
 * patched in, and each block hashed while it is in cache. The same values
 * as reconstructInto: w = fround(base + center) where dW was kept, else the
 * base bits; m and v are their centers where coded, 0 at a symbol 0, and 0
 * (m) or vFill (v) where not coded; exceptions are the original bits.
 *
 * Each block starts as a copy of the base (w), zeros (m) and vFill (v), and
 * only the kept positions are written: the gather's slots say where they are
 * (slotW[t] is the position of the t-th kept dW, slotW[slotM[u]] that of
 * the u-th kept moment), and the t-th nonzero symbol of each stream is its
 * symbol there.
 */
export function restoredDigestsF32(
  n: number, bas: Float32Array, slotW: Int32Array, slotM: Int32Array, nw: number, nm: number,
  wOrdered: Uint8Array, wCenters: Float32Array, mSym: Uint8Array, mCenters: Float32Array, vSym: Uint8Array, vCenters: Float32Array, vFill: number,
  cur: Float32Array, m: Float32Array, v: Float32Array, wExc: number[], mExc: number[], vExc: number[],
): string[] {
  const wAdd = new Float64Array(wCenters.length + 1);
  for (let s = 0; s < wCenters.length; s++) wAdd[s + 1] = wCenters[s]!;
  const mWords = new Int32Array(mCenters.length + 1);
  for (let s = 0; s < mCenters.length; s++) mWords[s + 1] = bitsOf(mCenters[s]!);
  const vWords = new Int32Array(vCenters.length + 1);
  for (let s = 0; s < vCenters.length; s++) vWords[s + 1] = bitsOf(vCenters[s]!);
  const fillBits = bitsOf(vFill);
  const basBits = new Int32Array(bas.buffer, bas.byteOffset, n);
  const curBits = new Int32Array(cur.buffer, cur.byteOffset, n);
  const mBits = new Int32Array(m.buffer, m.byteOffset, n);
  const vBits = new Int32Array(v.buffer, v.byteOffset, n);
  const hw = new Hasher();
  const hm = new Hasher();
  const hv = new Hasher();
  const wBytes = new Uint8Array(blockW.buffer);
  const mBytes = new Uint8Array(blockM.buffer);
  const vBytes = new Uint8Array(blockV.buffer);
  let t = 0;
  let u = 0;
  let ew = 0;
  let em = 0;
  let ev = 0;
  for (let start = 0; start < n; start += BLOCK) {
    const end = Math.min(n, start + BLOCK);
    blockWBits.set(basBits.subarray(start, end));
    blockM.fill(0);
    blockV.fill(fillBits);
    // Kept dW in this block: w = fround(base + center); m at its m symbol.
    for (; t < nw; t++) {
      const i = slotW[t]!;
      if (i >= end) break;
      blockW[i - start] = bas[i]! + wAdd[wOrdered[t]!]!;
      blockM[i - start] = mWords[mSym[t]!]!;
    }
    // Kept moments in this block: v at its v symbol (0 is the value 0).
    for (; u < nm; u++) {
      const i = slotW[slotM[u]!]!;
      if (i >= end) break;
      blockV[i - start] = vWords[vSym[u]!]!;
    }
    for (; ew < wExc.length && wExc[ew]! < end; ew++) blockWBits[wExc[ew]! - start] = curBits[wExc[ew]!]!;
    for (; em < mExc.length && mExc[em]! < end; em++) blockM[mExc[em]! - start] = mBits[mExc[em]!]!;
    for (; ev < vExc.length && vExc[ev]! < end; ev++) blockV[vExc[ev]! - start] = vBits[vExc[ev]!]!;
    const bytes = 4 * (end - start);
    hw.update(wBytes.subarray(0, bytes));
    hm.update(mBytes.subarray(0, bytes));
    hv.update(vBytes.subarray(0, bytes));
  }
  return [hw.digest(), hm.digest(), hv.digest()];
}
