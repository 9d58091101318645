/**
 * A small general-purpose byte compressor, for the container's header and
 * footer bodies and for byte data in exact mode (files of a checkpoint
 * folder, optimizer.pt skeletons): LZ77 with a hash-chain match finder
 * (lz-match.ts), coded by the adaptive binary range coder of range-coder.ts
 * in the style of LZMA (models and their coding: lz-models.ts).
 *
 * ============================== READ ME FIRST ==============================
 *
 * Stream. The output is one range-coder stream; the number of bytes it
 * decodes to is NOT in it (the container stores it, so the reader can check
 * it against its limit before allocating). Two variants; the container says
 * which (variant 1 is what format 2 wrote before variant 2 existed, and is
 * still read). Per step:
 *
 * Variant 2 (LZMA's step kinds, without its position states), `state` 0..11
 * as LZMA (after a literal: s < 4 ? 0 : s < 10 ? s - 3 : s - 6; after a
 * match s < 7 ? 7 : 10; a rep s < 7 ? 8 : 11; a short rep s < 7 ? 9 : 11),
 * four rep distances, all 1 at the start:
 *   isMatch[state]            0: a literal: if state < 7 an 8-bit bit tree,
 *                             context = previous byte >> 5; else coded against
 *                             the match byte (the byte rep0 back), LZMA's
 *                             "matched literal" (lz-models.ts)
 *   isRep[state]              0: a match: length, distance; reps shift down
 *                             and rep0 = the distance
 *   isRepG0[state]            0: rep0: isRep0Long[state] 0 = a short rep (one
 *                             byte, rep0 back), 1 = length (rep models)
 *                             1: isRepG1[state] 0 = rep1, else isRepG2[state]
 *                             0 = rep2, 1 = rep3; the one used moves to rep0;
 *                             then length (rep models)
 *
 * Variant 1, `state` = the kinds of the last two steps (bit 0: last was a
 * match, bit 1: the one before), one rep distance:
 *   isMatch[state]            0: a literal, 8-bit bit tree, context =
 *                             previous byte >> 5 (0 at the start)
 *   isRep[state]              1: the match reuses the last distance (rep0),
 *                             length (rep models); 0: length, distance
 *
 * Both: length (rep or normal models): choice bit 0 -> 3-bit tree, length
 * 2..9; else choice2: 0 -> 3-bit tree, 10..17; else 8-bit tree, 18..273.
 * Distance: d = distance - 1; slot = d for d < 4, else 2 * floor(log2 d) +
 * (second highest bit of d), a 6-bit tree with context min(length - 2, 3);
 * then e = slot / 2 - 1 extra bits below the top two: for e <= 5 a bit tree
 * per slot, else the high e - 4 bits equiprobable and the low 4 bits through
 * one shared 4-bit "align" tree.
 *
 * Encoder. Greedy parse with one step of lazy evaluation; a rep is preferred
 * when it is nearly as long as the best match (it costs no distance); a
 * short rep is used instead of a literal when the models price it lower.
 *
 * Decoder on hostile input. The output length is given and allocated by the
 * caller's limit; every step writes at least one byte, so the loop ends after
 * at most `length` steps. A distance reaching before the start or a length
 * running past the end is ERR_CORRUPT; reading more than 4 bytes past the end
 * of the stream (the range decoder reads zeros there) is ERR_TRUNCATED. A
 * valid stream is read to its last byte (the decoder reads 4 bytes ahead, the
 * flush writes at most 2 and drops trailing zeros), so bytes left unread are
 * ERR_CORRUPT (zeros the decoder reads ahead into cannot be told from the
 * dropped ones, and are accepted).
 * ===========================================================================
 */
import { ExcpError } from '../core/errors.js';
import { RangeDecoder, RangeEncoder, decodeBitTree, encodeBitTree } from './range-coder.js';
import { MAX_MATCH, MIN_MATCH, Models, afterLiteral, afterMatch, afterRep, afterShortRep, bitPrice, decodeDistance, decodeLength, decodeMatchedLiteral, encodeDistance, encodeLength, encodeMatchedLiteral, lastWasLiteral, literalPrice, moveRepToFront, pushRep } from './lz-models.js';
import { MatchFinder, distanceCost, matchLength } from './lz-match.js';

/** The variant lzCompress writes by default. */
const LZ_VARIANT = 2;

/** Price of a short rep in `state`, in bits. */
function shortRepPrice(m: Models, state: number): number {
  return bitPrice(m.isMatch, state, 1) + bitPrice(m.isRep, state, 1) + bitPrice(m.isRepG0, state, 0) + bitPrice(m.isRep0Long, state, 0);
}

/**
 * Compress bytes.
 * @param input any bytes
 * @param variant stream variant, 1 or 2 (see READ ME FIRST)
 * @returns the coded stream (decode with {@link lzDecompress}, input.length and the variant)
 * @throws ExcpError ERR_OUT_OF_RANGE for another variant
 */
export function lzCompress(input: Uint8Array, variant = LZ_VARIANT): Uint8Array {
  // Models and the loop below treat any variant but 1 as 2 in places, 1 in others: refuse a mix.
  if (variant !== 1 && variant !== 2) throw new ExcpError('ERR_OUT_OF_RANGE', `lz: variant ${variant} is not 1 or 2`);
  const v2 = variant === 2;
  const enc = new RangeEncoder(Math.max(64, input.length >>> 1));
  const m = new Models(variant);
  const finder = new MatchFinder(input);
  const reps = [1, 1, 1, 1];
  const repCount = v2 ? 4 : 1;
  // Variant 1: state 0..3 (see READ ME FIRST); variant 2: 0..11. Either indexes the models directly.
  let state = 0;
  let i = 0;
  /** Position whose match the finder holds already (the lazy look-ahead of the step before), else -1. */
  let found = -1;
  while (i < input.length) {
    if (found !== i) {
      finder.insertUpTo(i);
      finder.find(i);
    }
    let length = finder.length;
    const distance = finder.distance;
    const limit = Math.min(MAX_MATCH, input.length - i);
    let repIndex = -1;
    let repLength = 0;
    for (let k = 0; k < repCount; k++) {
      const r = reps[k]!;
      if (i < r) continue;
      const n = matchLength(input, i - r, i, limit);
      if (n > repLength) {
        repLength = n;
        repIndex = k;
      }
    }
    const useRep = repLength >= MIN_MATCH && (repLength >= length || (repLength + 1 >= length && distanceCost(distance) > 4) || (repLength + 2 >= length && distanceCost(distance) > 12));
    if (useRep) length = repLength;
    if (!useRep && length === 3 && distance > 4096) length = 0;
    if (!useRep && length > 0 && length < 32 && i + 1 < input.length) {
      // one step of lazy evaluation: a literal now may buy a longer match next
      finder.insertUpTo(i + 1);
      finder.find(i + 1);
      found = i + 1;
      if (finder.length > length + 1 || (finder.length === length + 1 && distanceCost(finder.distance) <= distanceCost(distance))) length = 0;
    }
    if (length === 0) {
      const previous = i > 0 ? input[i - 1]! : 0;
      const base = m.literalBase(previous);
      const matchByte = v2 && !lastWasLiteral(state) ? input[i - reps[0]!]! : -1;
      if (v2 && i >= reps[0]! && input[i] === input[i - reps[0]!] && shortRepPrice(m, state) < bitPrice(m.isMatch, state, 0) + literalPrice(m.literal, base, input[i]!, matchByte)) {
        enc.encodeBit(m.isMatch, state, 1);
        enc.encodeBit(m.isRep, state, 1);
        enc.encodeBit(m.isRepG0, state, 0);
        enc.encodeBit(m.isRep0Long, state, 0);
        state = afterShortRep(state);
        i++;
        continue;
      }
      enc.encodeBit(m.isMatch, state, 0);
      if (matchByte >= 0) encodeMatchedLiteral(enc, m.literal, base, input[i]!, matchByte);
      else encodeBitTree(enc, m.literal, base, 8, input[i]!);
      state = v2 ? afterLiteral(state) : (state << 1) & 3;
      i++;
      continue;
    }
    enc.encodeBit(m.isMatch, state, 1);
    if (useRep) {
      enc.encodeBit(m.isRep, state, 1);
      if (v2) {
        enc.encodeBit(m.isRepG0, state, repIndex === 0 ? 0 : 1);
        if (repIndex === 0) enc.encodeBit(m.isRep0Long, state, 1);
        else {
          enc.encodeBit(m.isRepG1, state, repIndex === 1 ? 0 : 1);
          if (repIndex > 1) enc.encodeBit(m.isRepG2, state, repIndex === 2 ? 0 : 1);
          moveRepToFront(reps, repIndex);
        }
      }
      encodeLength(enc, m.lengths[1], length);
      state = v2 ? afterRep(state) : ((state << 1) | 1) & 3;
    } else {
      enc.encodeBit(m.isRep, state, 0);
      encodeLength(enc, m.lengths[0], length);
      encodeDistance(enc, m, distance, length);
      pushRep(reps, distance);
      state = v2 ? afterMatch(state) : ((state << 1) | 1) & 3;
    }
    i += length;
  }
  return enc.finish();
}

/**
 * Decompress a stream of {@link lzCompress}.
 * @param bytes the coded stream
 * @param length the number of bytes it decodes to
 * @param limit the largest length accepted (checked before allocating)
 * @param variant the stream's variant (1 or 2; the container says which)
 * @throws ExcpError ERR_HEADER_TOO_LARGE when length > limit; ERR_CORRUPT on an unknown
 *   variant, an impossible match or bytes left after the end; ERR_TRUNCATED when the stream ends early
 */
export function lzDecompress(bytes: Uint8Array, length: number, limit: number, variant: number): Uint8Array {
  if (!Number.isSafeInteger(length) || length < 0 || length > limit) {
    throw new ExcpError('ERR_HEADER_TOO_LARGE', `lz: decoded length ${length} exceeds limit ${limit}`);
  }
  if (variant !== 1 && variant !== 2) throw new ExcpError('ERR_CORRUPT', `lz: unknown variant ${variant}`);
  const v2 = variant === 2;
  const out = new Uint8Array(length);
  const dec = new RangeDecoder(bytes);
  const m = new Models(variant);
  const reps = [1, 1, 1, 1];
  let state = 0;
  let i = 0;
  while (i < length) {
    if (dec.overrun > 4) throw new ExcpError('ERR_TRUNCATED', `lz: stream of ${bytes.length} bytes ended after ${i} of ${length} bytes`);
    if (dec.decodeBit(m.isMatch, state) === 0) {
      const base = m.literalBase(i > 0 ? out[i - 1]! : 0);
      // State >= 7 only after a match, rep or short rep, each checked rep0 <= i below, so rep0 <= i here.
      out[i] = v2 && !lastWasLiteral(state) ? decodeMatchedLiteral(dec, m.literal, base, out[i - reps[0]!]!) : decodeBitTree(dec, m.literal, base, 8);
      i++;
      state = v2 ? afterLiteral(state) : (state << 1) & 3;
      continue;
    }
    let n: number;
    if (dec.decodeBit(m.isRep, state) === 1) {
      if (v2) {
        if (dec.decodeBit(m.isRepG0, state) === 0) {
          if (dec.decodeBit(m.isRep0Long, state) === 0) {
            if (reps[0]! > i) throw new ExcpError('ERR_CORRUPT', `lz: short rep distance ${reps[0]} at byte ${i} reaches before the start`);
            out[i] = out[i - reps[0]!]!;
            i++;
            state = afterShortRep(state);
            continue;
          }
        } else {
          moveRepToFront(reps, dec.decodeBit(m.isRepG1, state) === 0 ? 1 : dec.decodeBit(m.isRepG2, state) === 0 ? 2 : 3);
        }
        state = afterRep(state);
      } else {
        state = ((state << 1) | 1) & 3;
      }
      n = decodeLength(dec, m.lengths[1]);
    } else {
      n = decodeLength(dec, m.lengths[0]);
      pushRep(reps, decodeDistance(dec, m, n));
      state = v2 ? afterMatch(state) : ((state << 1) | 1) & 3;
    }
    const rep = reps[0]!;
    if (rep > i) throw new ExcpError('ERR_CORRUPT', `lz: match distance ${rep} at byte ${i} reaches before the start`);
    if (n > length - i) throw new ExcpError('ERR_CORRUPT', `lz: match of ${n} bytes at byte ${i} runs past the end (${length})`);
    for (let k = 0; k < n; k++, i++) out[i] = out[i - rep]!;
  }
  if (dec.overrun > 4) throw new ExcpError('ERR_TRUNCATED', `lz: stream of ${bytes.length} bytes is truncated`);
  if (dec.unread > 0) throw new ExcpError('ERR_CORRUPT', `lz: ${dec.unread} of ${bytes.length} bytes left unread after ${length} decoded bytes`);
  return out;
}
