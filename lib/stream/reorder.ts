/**
 * RecordReorder: coded records back into container order. A checkpoint
 * read from a stream is coded in the order its bytes arrive (see
 * streamReadOrder), which is not always the container's: a record that
 * comes early waits here, coded (so a fiftieth of its raw size for a
 * residual), in memory and then in the spill file, until the records before
 * it have gone out. The container's bytes are then the same as for the
 * same checkpoint read by path.
 */
import { Transform, type TransformCallback } from 'node:stream';
import { RecordOrder } from '../container/framing.js';
import type { EncodedRecord } from '../container/assemble.js';
import { recordPayload } from '../container/format.js';
import { type SpillOptions, SpillStore } from '../io/spill.js';
import type { ContainerHeader } from '../model/checkpoint.js';

/** EncodedRecord (any order) -> EncodedRecord (container order). */
export class RecordReorder extends Transform {
  private readonly order: RecordOrder;
  private readonly held = new Map<string, Omit<EncodedRecord, 'payload' | 'framed'> & { framed: boolean }>();
  private readonly store: SpillStore;

  /**
   * @param header the container header (which records, in which order)
   * @param spill where early records wait
   */
  constructor(header: ContainerHeader, spill: SpillOptions = {}) {
    super({ objectMode: true, highWaterMark: 2 });
    this.order = new RecordOrder(header);
    this.store = new SpillStore(spill);
  }

  /** Bytes of early records that waited on disk. */
  get spilledBytes(): number {
    return this.store.spilledBytes;
  }

  override _transform(rec: EncodedRecord, _enc: BufferEncoding, callback: TransformCallback): void {
    try {
      // A record its worker framed waits whole (its payload is a view of it), so it is not framed again.
      const { payload, framed, ...rest } = rec;
      const key = `${rec.entry}:${rec.chunk}`;
      this.held.set(key, { ...rest, framed: framed !== undefined });
      this.store.put(key, framed ?? payload);
      this.release();
      callback();
    } catch (err) {
      callback(err as Error);
    }
  }

  /** Push every held record that is next in container order. */
  private release(): void {
    while (!this.order.done) {
      const { entry, chunk } = this.order.next;
      const key = `${entry}:${chunk}`;
      const rest = this.held.get(key);
      if (!rest) return;
      this.held.delete(key);
      const { framed, ...fields } = rest;
      const bytes = this.store.take(key)!;
      this.order.accept(entry, chunk);
      this.push(framed ? { ...fields, payload: recordPayload(bytes), framed: bytes } : { ...fields, payload: bytes });
    }
  }

  override _flush(callback: TransformCallback): void {
    this.store.dispose();
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.store.dispose();
    callback(error);
  }
}
