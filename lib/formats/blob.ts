/**
 * The file kind `blob` (code 1): a file carried byte for byte as one U8
 * tensor (a folder's scheduler.pt, trainer_state.json, ...; never parsed).
 * Header record: path, tensor index.
 */
import type { ByteReader, ByteWriter } from '../core/bytes.js';
import { readString, writeString } from '../container/fields.js';
import type { FileSpec, TensorSpec } from '../model/checkpoint.js';
import type { FileFormat, FilePlacement } from './file-format.js';

/** Is the tensor one U8 vector of plain bytes (a blob, or a torch.save file's skeleton)? */
export function isByteVector(t: TensorSpec | undefined): boolean {
  return t !== undefined && t.dtype === 'U8' && t.shape.length === 1 && t.role === 'plain';
}

/** The file kind `blob`. */
export const blobKind: FileFormat = {
  name: 'blob',
  code: 1,

  write(w: ByteWriter, file: FileSpec): void {
    writeString(w, file.path ?? '');
    w.varint(file.tensors[0]!);
  },

  read(r: ByteReader) {
    const path = readString(r, 'path');
    return { file: { kind: 'blob', path, tensors: [r.varint()], layout: null } };
  },

  fromJson(value: Record<string, unknown>): FileSpec | null {
    const { path, tensor } = value;
    if (typeof path !== 'string') return null;
    return { kind: 'blob', path, tensors: [tensor as number], layout: null };
  },

  validate(file: FileSpec, tensors: readonly TensorSpec[], fail: (what: string) => never): void {
    if (file.tensors.length !== 1 || !isByteVector(tensors[file.tensors[0]!])) fail('a blob is one U8 vector');
  },

  place(file: FileSpec, tensors: readonly TensorSpec[]): FilePlacement {
    const t = file.tensors[0]!;
    return { size: tensors[t]!.shape[0]!, fixed: [], targets: [{ tensor: t, target: { offset: 0 } }] };
  },
};
