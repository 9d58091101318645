/**
 * The adaptive models of lib/lz.ts and how lengths, distances and literals
 * are coded with them (the stream layout is in lz.ts's READ ME FIRST). Kept
 * apart so lz.ts holds only the two loops, encoder and decoder, that must
 * mirror each other step for step.
 */
import { PROB_BITS, RangeDecoder, RangeEncoder, createBitModels, decodeBitTree, encodeBitTree } from './range-coder.js';

/** Shortest coded match. */
export const MIN_MATCH = 2;
/** Longest coded match: 2 + 8 + 8 + 256 - 1. */
export const MAX_MATCH = 273;
/** Literal contexts: previous byte >> LIT_SHIFT. */
const LIT_SHIFT = 5;
/** Distance slots with a per-slot bit tree for their extra bits. */
const TREE_SLOTS = 14;
const ALIGN_BITS = 4;
/** Variant 2: LZMA's 12 states (what the last steps were). */
const STATES = 12;
/** Variant 2: models per literal context (plain tree, then matched trees for match bit 0 and 1). */
const LITERAL_STRIDE = 0x300;

export class LengthModels {
  readonly choice = createBitModels(2);
  readonly low = createBitModels(7);
  readonly mid = createBitModels(7);
  readonly high = createBitModels(255);
}

/** Every adaptive model of one stream, fresh for each call. */
export class Models {
  readonly isMatch: Uint16Array;
  readonly isRep: Uint16Array;
  readonly isRepG0 = createBitModels(STATES);
  readonly isRepG1 = createBitModels(STATES);
  readonly isRepG2 = createBitModels(STATES);
  readonly isRep0Long = createBitModels(STATES);
  readonly literal: Uint16Array;
  /** Models per literal context. */
  readonly literalStride: number;
  readonly lengths = [new LengthModels(), new LengthModels()] as const;
  readonly slot = createBitModels(4 * 63);
  /** Per slot 4..13: 2^e - 1 models at EXTRA_BASE[slot]. */
  readonly extra = createBitModels(1024);
  readonly align = createBitModels((1 << ALIGN_BITS) - 1);

  /** @param variant 1 (4 states, plain literals) or 2 (LZMA's states, matched literals, four reps) */
  constructor(variant: number) {
    const states = variant === 1 ? 4 : STATES;
    this.isMatch = createBitModels(states);
    this.isRep = createBitModels(states);
    this.literalStride = variant === 1 ? 255 : LITERAL_STRIDE;
    this.literal = createBitModels(this.literalStride << (8 - LIT_SHIFT));
  }

  /** Base index of the literal models after byte `previous`. */
  literalBase(previous: number): number {
    return (previous >> LIT_SHIFT) * this.literalStride;
  }
}

/** Variant 2 state after a literal, a match, a rep match and a short rep (LZMA's). */
export const afterLiteral = (s: number): number => (s < 4 ? 0 : s < 10 ? s - 3 : s - 6);
export const afterMatch = (s: number): number => (s < 7 ? 7 : 10);
export const afterRep = (s: number): number => (s < 7 ? 8 : 11);
export const afterShortRep = (s: number): number => (s < 7 ? 9 : 11);
/** Variant 2: the last step was a literal (else the next literal is coded against the match byte). */
export const lastWasLiteral = (s: number): boolean => s < 7;

/** A normal match: rep3..rep1 = rep2..rep0, rep0 = distance (variant 1 reads only rep0). */
export function pushRep(reps: number[], distance: number): void {
  reps[3] = reps[2]!;
  reps[2] = reps[1]!;
  reps[1] = reps[0]!;
  reps[0] = distance;
}

/** A rep match with reps[k]: it moves to rep0, the ones before it move down one. */
export function moveRepToFront(reps: number[], k: number): void {
  const r = reps[k]!;
  for (; k > 0; k--) reps[k] = reps[k - 1]!;
  reps[0] = r;
}

/** Base index into Models.extra of each tree-coded slot's extra-bit tree. */
const EXTRA_BASE: number[] = [];
{
  let at = 0;
  for (let slot = 0; slot < TREE_SLOTS; slot++) {
    EXTRA_BASE.push(at);
    if (slot >= 4) at += (1 << ((slot >> 1) - 1)) - 1;
  }
}

function slotOf(d: number): number {
  if (d < 4) return d;
  const n = 31 - Math.clz32(d);
  return 2 * n + ((d >>> (n - 1)) & 1);
}

export function encodeLength(enc: RangeEncoder, m: LengthModels, length: number): void {
  const l = length - MIN_MATCH;
  if (l < 8) {
    enc.encodeBit(m.choice, 0, 0);
    encodeBitTree(enc, m.low, 0, 3, l);
  } else if (l < 16) {
    enc.encodeBit(m.choice, 0, 1);
    enc.encodeBit(m.choice, 1, 0);
    encodeBitTree(enc, m.mid, 0, 3, l - 8);
  } else {
    enc.encodeBit(m.choice, 0, 1);
    enc.encodeBit(m.choice, 1, 1);
    encodeBitTree(enc, m.high, 0, 8, l - 16);
  }
}

export function decodeLength(dec: RangeDecoder, m: LengthModels): number {
  if (dec.decodeBit(m.choice, 0) === 0) return MIN_MATCH + decodeBitTree(dec, m.low, 0, 3);
  if (dec.decodeBit(m.choice, 1) === 0) return MIN_MATCH + 8 + decodeBitTree(dec, m.mid, 0, 3);
  return MIN_MATCH + 16 + decodeBitTree(dec, m.high, 0, 8);
}

export function encodeDistance(enc: RangeEncoder, m: Models, distance: number, length: number): void {
  const d = distance - 1;
  const slot = slotOf(d);
  encodeBitTree(enc, m.slot, Math.min(length - MIN_MATCH, 3) * 63, 6, slot);
  if (slot < 4) return;
  const e = (slot >> 1) - 1;
  const rest = d - ((2 | (slot & 1)) << e);
  if (slot < TREE_SLOTS) {
    encodeBitTree(enc, m.extra, EXTRA_BASE[slot]!, e, rest);
    return;
  }
  let high = Math.floor(rest / (1 << ALIGN_BITS));
  let bits = e - ALIGN_BITS;
  if (bits > 16) {
    enc.encodeDirect(Math.floor(high / 65536), bits - 16);
    high %= 65536;
    bits = 16;
  }
  enc.encodeDirect(high, bits);
  encodeBitTree(enc, m.align, 0, ALIGN_BITS, rest & ((1 << ALIGN_BITS) - 1));
}

export function decodeDistance(dec: RangeDecoder, m: Models, length: number): number {
  const slot = decodeBitTree(dec, m.slot, Math.min(length - MIN_MATCH, 3) * 63, 6);
  if (slot < 4) return slot + 1;
  const e = (slot >> 1) - 1;
  const base = (2 | (slot & 1)) * 2 ** e;
  if (slot < TREE_SLOTS) return base + decodeBitTree(dec, m.extra, EXTRA_BASE[slot]!, e) + 1;
  let bits = e - ALIGN_BITS;
  let high = 0;
  if (bits > 16) {
    high = dec.decodeDirect(bits - 16) * 65536;
    bits = 16;
  }
  high += dec.decodeDirect(bits);
  return base + high * (1 << ALIGN_BITS) + decodeBitTree(dec, m.align, 0, ALIGN_BITS) + 1;
}

/**
 * A literal coded against the match byte (the byte one rep0 distance back),
 * as in LZMA: while the bits so far equal the match byte's, each bit has
 * models for "the match byte's bit is 0 / 1"; after the first difference
 * the plain tree goes on. Data that repeats with small edits (records of a
 * pickle, rows of a table) then costs little even where a match ends.
 */
export function encodeMatchedLiteral(enc: RangeEncoder, probs: Uint16Array, base: number, value: number, matchByte: number): void {
  let node = 1;
  let same = true;
  for (let k = 7; k >= 0; k--) {
    const bit = (value >> k) & 1;
    if (same) {
      const matchBit = (matchByte >> k) & 1;
      enc.encodeBit(probs, base + 0x100 + (matchBit << 8) + node - 1, bit);
      same = bit === matchBit;
    } else {
      enc.encodeBit(probs, base + node - 1, bit);
    }
    node = (node << 1) | bit;
  }
}

export function decodeMatchedLiteral(dec: RangeDecoder, probs: Uint16Array, base: number, matchByte: number): number {
  let node = 1;
  let same = true;
  for (let k = 7; k >= 0; k--) {
    let bit: number;
    if (same) {
      const matchBit = (matchByte >> k) & 1;
      bit = dec.decodeBit(probs, base + 0x100 + (matchBit << 8) + node - 1);
      same = bit === matchBit;
    } else {
      bit = dec.decodeBit(probs, base + node - 1);
    }
    node = (node << 1) | bit;
  }
  return node & 0xff;
}

/** -log2 of each 12-bit probability: the price in bits of coding a bit with that model. */
const PRICE = new Float64Array(1 << PROB_BITS).map((_, p) => (p === 0 ? PROB_BITS : -Math.log2(p / (1 << PROB_BITS))));

/** Price in bits of coding `bit` with model probs[i] as it stands. */
export function bitPrice(probs: Uint16Array, i: number, bit: number): number {
  const p = probs[i]!;
  return PRICE[bit ? (1 << PROB_BITS) - p : p]!;
}

/** Price of a literal as the encoder would code it now (plain, or against the match byte when matchByte >= 0). */
export function literalPrice(probs: Uint16Array, base: number, value: number, matchByte: number): number {
  let price = 0;
  let node = 1;
  let same = matchByte >= 0;
  for (let k = 7; k >= 0; k--) {
    const bit = (value >> k) & 1;
    if (same) {
      const matchBit = (matchByte >> k) & 1;
      price += bitPrice(probs, base + 0x100 + (matchBit << 8) + node - 1, bit);
      same = bit === matchBit;
    } else {
      price += bitPrice(probs, base + node - 1, bit);
    }
    node = (node << 1) | bit;
  }
  return price;
}
