/**
 * What a file is, by its first bytes, when it is not what a command
 * expected: so a user who passes a torch.save zip to compress, or a
 * safetensors file to restore, is told what it is and what to do, not
 * "header length 578712552184433500 exceeds limit".
 */
import { MAGIC } from '../core/constants.js';
import { startsLikeZip } from './torch/zip.js';

function startsWith(head: Uint8Array, bytes: ArrayLike<number>): boolean {
  if (head.length < bytes.length) return false;
  for (let i = 0; i < bytes.length; i++) if (head[i] !== bytes[i]) return false;
  return true;
}

/**
 * What a file given as a checkpoint is instead of safetensors (null: unknown).
 * @param head the file's first bytes (8 or more)
 */
export function otherThanSafetensors(head: Uint8Array): string | null {
  if (startsLikeZip(head)) {
    return 'it is a zip file (PyTorch\'s torch.save format): compress it by its path (excp compress FILE), or the checkpoint folder that holds it';
  }
  if (startsWith(head, MAGIC)) return 'it is an .excp container: restore it with excp restore';
  const protocol = head[1] ?? 0;
  if (head[0] === 0x80 && protocol >= 2 && protocol <= 5) return 'it is a Python pickle (a legacy torch.save file?), which excp never loads';
  return null;
}

/**
 * What a file given as a container is instead (empty when unknown), as a
 * suffix for the bad-magic message.
 * @param head the file's first bytes (16 or more)
 */
export function otherThanContainer(head: Uint8Array): string {
  // safetensors: an 8-byte little-endian header length, then the JSON header's '{'.
  if (head.length >= 9 && head[8] === 0x7b && head[6] === 0 && head[7] === 0) return ': it looks like a safetensors checkpoint; compress it with excp compress';
  if (startsLikeZip(head)) return ': it is a zip file (torch.save?)';
  return '';
}
