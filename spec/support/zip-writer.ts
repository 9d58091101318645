/**
 * Writing zip archives the way PyTorch's writer lays them out (the layout is
 * described in zip.ts, next to the reader that checks it). Apart from the
 * reader because restore writes archives while compress only reads them.
 */
import { ExcpError } from '../../lib/core/errors.js';
import { ByteWriter, concatBytes } from '../../lib/core/bytes.js';
import { crc32 } from '../../lib/core/crc32.js';
import { CENTRAL_SIG, DESCRIPTOR_SIG, END64_SIG, END_SIG, LOCAL_SIG, LOCATOR64_SIG, U32_MAX } from '../../lib/formats/torch/zip.js';

/** Options of {@link ZipWriter}. */
export interface ZipWriterOptions {
  /** Data alignment in bytes, a power of two from 1 to 4096 (torch: 64). */
  alignment?: number;
}

interface WrittenEntry {
  name: Uint8Array;
  headerOffset: number;
  size: number;
  crc32: number;
  flags: number;
  zip64: boolean;
}

/**
 * Writes a STORED archive laid out byte for byte as PyTorch's writer does
 * (see the file header). Streaming: sizes are declared up front, the data
 * itself passes through the caller, and the CRC is only needed after the data
 * because torch's layout puts it in the data descriptor.
 *
 * Usage: for each entry write `beginEntry(name, size)`, then exactly `size`
 * data bytes, then `endEntry(crc)`; finally write `finish()`.
 */
export class ZipWriter {
  /** Invariant: the number of bytes the caller has written so far. */
  offset = 0;
  private readonly alignment: number;
  private readonly written: WrittenEntry[] = [];
  private open: WrittenEntry | null = null;
  private readonly names = new Set<string>();

  constructor(options: ZipWriterOptions = {}) {
    const alignment = options.alignment ?? 64;
    if (!Number.isInteger(alignment) || alignment < 1 || alignment > 4096 || (alignment & (alignment - 1)) !== 0) {
      throw new ExcpError('ERR_OUT_OF_RANGE', `zip: options.alignment ${alignment} is not a power of two in 1..4096`);
    }
    this.alignment = alignment;
  }

  /**
   * Start an entry.
   * @returns the local header bytes to write before the data
   */
  beginEntry(name: string, size: number): Uint8Array {
    if (this.open) throw new ExcpError('ERR_INVALID_ARG', `zip: beginEntry(${name}) before endEntry of the previous entry`);
    if (!Number.isSafeInteger(size) || size < 0) throw new ExcpError('ERR_INVALID_ARG', `zip: entry ${name} size ${size} is not a non-negative integer`);
    if (name.length === 0 || name.startsWith('/') || this.names.has(name)) throw new ExcpError('ERR_INVALID_ARG', `zip: entry name ${JSON.stringify(name)} is empty, absolute or repeated`);
    const nameBytes = new TextEncoder().encode(name);
    if (nameBytes.length > 0xffff) throw new ExcpError('ERR_INVALID_ARG', `zip: entry name of ${nameBytes.length} bytes is too long`);
    this.names.add(name);
    const headerOffset = this.offset;
    const bigSize = size >= U32_MAX;
    const bigOffset = headerOffset >= U32_MAX;
    const zip64 = bigSize || bigOffset;
    const zip64Length = zip64 ? 4 + (bigSize ? 16 : 0) + (bigOffset ? 8 : 0) : 0;
    // Same arithmetic as torch's getPadding: the FB field's 4 header bytes are always there.
    const start = headerOffset + 30 + nameBytes.length + zip64Length + 4;
    const padding = (this.alignment - (start % this.alignment)) % this.alignment;
    const flags = size > 0 ? 0x0808 : 0x0800;
    const w = new ByteWriter(30 + nameBytes.length + zip64Length + 4 + padding);
    w.u32(LOCAL_SIG);
    w.u16(0); // version needed: torch/miniz writes 0 for STORED
    w.u16(flags);
    w.u16(0); // method STORED
    w.u32(0); // time, date
    w.u32(0); // CRC: in the data descriptor
    w.u32(0);
    w.u32(0);
    w.u16(nameBytes.length);
    w.u16(zip64Length + 4 + padding);
    w.bytes(nameBytes);
    if (zip64) {
      w.u16(1);
      w.u16(zip64Length - 4);
      if (bigSize) {
        w.u64(size);
        w.u64(0); // miniz writes the compressed size as 0 here; the descriptor has the real one
      }
      if (bigOffset) w.u64(headerOffset);
    }
    w.u16(0x4246); // 'F' 'B'
    w.u16(padding);
    for (let i = 0; i < padding; i++) w.u8(0x5a); // 'Z'
    const header = w.finish();
    this.open = { name: nameBytes, headerOffset, size, crc32: 0, flags, zip64 };
    this.offset += header.length + size;
    return header;
  }

  /**
   * Finish the open entry.
   * @param crc CRC-32 of its data (see {@link crc32})
   * @returns the data descriptor to write after the data (empty for an empty entry)
   */
  endEntry(crc: number): Uint8Array {
    const e = this.open;
    if (!e) throw new ExcpError('ERR_INVALID_ARG', 'zip: endEntry without beginEntry');
    this.open = null;
    e.crc32 = crc >>> 0;
    this.written.push(e);
    if (e.size === 0) return new Uint8Array(0);
    const w = new ByteWriter(24);
    w.u32(DESCRIPTOR_SIG);
    w.u32(e.crc32);
    if (e.zip64) {
      w.u64(e.size);
      w.u64(e.size);
    } else {
      w.u32(e.size);
      w.u32(e.size);
    }
    const out = w.finish();
    this.offset += out.length;
    return out;
  }

  /** @returns the central directory, zip64 end record, locator and end record */
  finish(): Uint8Array {
    if (this.open) throw new ExcpError('ERR_INVALID_ARG', 'zip: finish with an entry still open');
    const w = new ByteWriter(128 + this.written.length * 96);
    const cdOffset = this.offset;
    for (const e of this.written) {
      const bigSize = e.size >= U32_MAX;
      const bigOffset = e.headerOffset >= U32_MAX;
      const extraLength = e.zip64 ? 4 + (bigSize ? 16 : 0) + (bigOffset ? 8 : 0) : 0;
      w.u32(CENTRAL_SIG);
      w.u16(0); // made by
      w.u16(0); // needed
      w.u16(e.flags);
      w.u16(0);
      w.u32(0); // time, date
      w.u32(e.crc32);
      w.u32(Math.min(e.size, U32_MAX));
      w.u32(Math.min(e.size, U32_MAX));
      w.u16(e.name.length);
      w.u16(extraLength);
      w.u16(0); // comment
      w.u16(0); // disk
      w.u16(0); // internal attributes
      w.u32(0); // external attributes
      w.u32(Math.min(e.headerOffset, U32_MAX));
      w.bytes(e.name);
      if (e.zip64) {
        w.u16(1);
        w.u16(extraLength - 4);
        if (bigSize) {
          w.u64(e.size);
          w.u64(e.size);
        }
        if (bigOffset) w.u64(e.headerOffset);
      }
    }
    const cdSize = w.length;
    const end64 = cdOffset + cdSize;
    w.u32(END64_SIG);
    w.u64(44);
    w.u16(0x031e);
    w.u16(0x002d);
    w.u32(0);
    w.u32(0);
    w.u64(this.written.length);
    w.u64(this.written.length);
    w.u64(cdSize);
    w.u64(cdOffset);
    w.u32(LOCATOR64_SIG);
    w.u32(0);
    w.u64(end64);
    w.u32(1);
    w.u32(END_SIG);
    w.u16(0);
    w.u16(0);
    w.u16(Math.min(this.written.length, 0xffff));
    w.u16(Math.min(this.written.length, 0xffff));
    w.u32(Math.min(cdSize, U32_MAX));
    w.u32(Math.min(cdOffset, U32_MAX));
    w.u16(0);
    const out = w.finish().slice();
    this.offset += out.length;
    return out;
  }
}

/**
 * One-shot: a whole archive in memory, laid out as torch.save lays it out.
 * @param entries names and contents, in archive order
 * @returns the archive bytes
 */
export function writeZip(entries: readonly { name: string; data: Uint8Array }[], options: ZipWriterOptions = {}): Uint8Array {
  const writer = new ZipWriter(options);
  const parts: Uint8Array[] = [];
  for (const e of entries) {
    parts.push(writer.beginEntry(e.name, e.data.length), e.data, writer.endEntry(crc32(e.data)));
  }
  parts.push(writer.finish());
  return concatBytes(parts);
}
