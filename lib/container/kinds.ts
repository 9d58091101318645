/**
 * File kinds as the container sees them: the one plug-in point between the
 * container, which stores a format-neutral checkpoint (lib/model/), and the
 * input formats (lib/formats/), which know how a file lays its tensors out.
 *
 * A header's file table is a list of records, each a kind code byte then
 * the kind's own fields (spec/FORMAT.md, "Files"). The container writes the
 * code, checks what every file shares (paths, tensor indices) and leaves the
 * rest to the kind: its fields, its layout, its structural checks. The
 * caller hands the container the table of kinds it knows
 * (lib/formats/registry.ts), so the container imports no format.
 */
import type { ByteReader, ByteWriter } from '../core/bytes.js';
import { ExcpError } from '../core/errors.js';
import type { FileSpec, TensorSpec } from '../model/checkpoint.js';

/** A file kind's part of the container format. */
export interface FileKind {
  /** The name stored in {@link FileSpec.kind}, e.g. `safetensors`. */
  readonly name: string;
  /** The byte that stands for the kind in a version 2 header. Part of the format: never reuse one. */
  readonly code: number;
  /**
   * Write the file's record after its code byte (version 2).
   * @param w the header body
   * @param file the file
   * @param tensors the header's tensors (a layout may be derived from them)
   */
  write(w: ByteWriter, file: FileSpec, tensors: readonly TensorSpec[]): void;
  /**
   * Read a record written by {@link write}. A layout derived from the
   * tensors is completed by `complete`, which the reader calls once the
   * tensor table is read.
   * @throws ExcpError ERR_BAD_HEADER (through the reader) on malformed fields
   */
  read(r: ByteReader): { file: FileSpec; complete?: (tensors: readonly TensorSpec[]) => void };
  /**
   * A file object of a version 1 (JSON) header as a {@link FileSpec}.
   * @returns null when the object is not of this kind's version 1 form
   */
  fromJson(value: Record<string, unknown>): FileSpec | null;
  /**
   * Structural checks of an untrusted file (its tensor indices and path are
   * already checked): the layout is well formed and agrees with the tensors.
   * @param fail throws ERR_BAD_HEADER with the given reason
   */
  validate(file: FileSpec, tensors: readonly TensorSpec[], fail: (what: string) => never): void;
}

/** The kinds a reader or writer knows, by name and by code. */
export class FileKinds {
  private readonly byName = new Map<string, FileKind>();
  private readonly byCode = new Map<number, FileKind>();

  /** @param kinds each with a distinct name and code */
  constructor(kinds: readonly FileKind[]) {
    for (const k of kinds) {
      if (this.byName.has(k.name) || this.byCode.has(k.code)) throw new ExcpError('ERR_INVALID_ARG', `container: file kind ${k.name} (code ${k.code}) registered twice`);
      this.byName.set(k.name, k);
      this.byCode.set(k.code, k);
    }
  }

  /** The kind of a name, or undefined. */
  named(name: string): FileKind | undefined {
    return this.byName.get(name);
  }

  /** The kind of a code, or undefined. */
  coded(code: number): FileKind | undefined {
    return this.byCode.get(code);
  }

  /** Every kind. */
  all(): FileKind[] {
    return [...this.byName.values()];
  }
}
