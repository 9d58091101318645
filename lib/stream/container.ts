/**
 * ContainerWriter (encoded records -> bytes) and ContainerReader (bytes ->
 * header, chunk records, footer): the framing stage of spec/FORMAT.md as
 * thin Transforms over lib/container/assemble.ts and lib/container/framing.ts.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { ContainerAssembler, type EncodedRecord, type TensorHashes } from '../container/assemble.js';
import { ContainerParser, type ParserOptions } from '../container/framing.js';
import type { ContainerHeader } from '../model/checkpoint.js';
import { FILE_KINDS } from '../formats/registry.js';
import { otherThanContainer } from '../formats/sniff.js';

export type { EncodedRecord, TensorHashes } from '../container/assemble.js';
export type { ContainerEvent, ParserOptions } from '../container/framing.js';

/** EncodedRecord (object) -> container bytes. */
export class ContainerWriter extends Transform {
  private readonly assembler: ContainerAssembler;

  /**
   * @param header the container header, written first
   * @param hashes whether the footer keeps per-tensor hashes (see {@link TensorHashes})
   */
  constructor(header: ContainerHeader, hashes: TensorHashes = 'auto') {
    super({ writableObjectMode: true, readableObjectMode: false, writableHighWaterMark: 2 });
    this.assembler = new ContainerAssembler(header, FILE_KINDS, hashes);
  }

  override _transform(rec: EncodedRecord, _enc: BufferEncoding, callback: TransformCallback): void {
    try {
      for (const bytes of this.assembler.record(rec)) this.push(bytes);
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      for (const bytes of this.assembler.finish()) this.push(bytes);
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }
}

/** Container bytes -> ContainerEvent objects (header, chunks, footer). */
export class ContainerReader extends Transform {
  private readonly parser: ContainerParser;

  /** @param options see ParserOptions (deferRecordCrc: the decoder's workers check each record's CRC) */
  constructor(options: ParserOptions = {}) {
    super({ writableObjectMode: false, readableObjectMode: true, readableHighWaterMark: 2 });
    this.parser = new ContainerParser(FILE_KINDS, otherThanContainer, options);
  }

  override _transform(chunk: Uint8Array, _enc: BufferEncoding, callback: TransformCallback): void {
    try {
      for (const event of this.parser.push(chunk)) this.push(event);
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  override _flush(callback: TransformCallback): void {
    try {
      this.parser.end();
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }
}
