/**
 * Where a restored distributed checkpoint folder (DCP) differs from the
 * original, byte by byte:
 *
 *   npx tsx examples/dcp-diff.ts ORIGINAL RESTORED
 *
 * Every file but the `.distcp` ones must be byte-identical; a `.distcp` file
 * must have the same size, may differ only inside the data records of its
 * tensor items and in those records' zip CRC fields, and every zip entry of
 * every item must have the CRC its data has. Prints one line per DCP folder
 * and exits 1 on any other difference.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { crc32 } from '../lib/core/crc32.js';
import { parseDcpMetadata } from '../lib/formats/dcp/metadata.js';
import { listFiles } from '../lib/formats/folder.js';
import { readZipDirectory } from '../lib/formats/torch/zip.js';

/** What changed in one DCP folder of the tree. */
export interface DcpDiff {
  /** Bytes that differ in its .distcp files. */
  changed: number;
  /** Bytes of the tensor items' data records. */
  data: number;
  /** Changed bytes outside tensor data records and their CRC fields (must be 0). */
  outside: number;
  /** Zip entries of the restored items whose CRC is not their data's (must be 0). */
  badCrc: number;
}

/**
 * Compare a restored DCP tree with the original.
 * @returns every difference that is not allowed (empty: none), and per DCP folder what changed
 */
export async function diffRestoredDcp(original: string, restored: string): Promise<{ problems: string[]; folders: Map<string, DcpDiff> }> {
  const problems: string[] = [];
  const folders = new Map<string, DcpDiff>();
  const files = await listFiles(original);
  const other = await listFiles(restored);
  if (JSON.stringify(files) !== JSON.stringify(other)) return { problems: [`file lists differ: ${JSON.stringify(files)} vs ${JSON.stringify(other)}`], folders };
  for (const rel of files) {
    const a = new Uint8Array(readFileSync(join(original, rel)));
    const b = new Uint8Array(readFileSync(join(restored, rel)));
    const dir = dirname(rel) === '.' ? '' : dirname(rel);
    if (!rel.endsWith('.distcp') || !files.includes(dir ? `${dir}/.metadata` : '.metadata')) {
      if (Buffer.compare(a, b) !== 0) problems.push(`${rel}: differs (it must be byte-identical)`);
      continue;
    }
    const r = folders.get(dir) ?? { changed: 0, data: 0, outside: 0, badCrc: 0 };
    folders.set(dir, r);
    if (a.length !== b.length) {
      problems.push(`${rel}: ${b.length} bytes, the original has ${a.length}`);
      continue;
    }
    const md = parseDcpMetadata(new Uint8Array(readFileSync(join(original, dir, '.metadata'))));
    const name = dir ? rel.slice(dir.length + 1) : rel;
    const allowed = new Uint8Array(a.length);
    for (const s of md.storage.filter((x) => x.path === name)) {
      const reader = (x: Uint8Array) => (o: number, l: number) => x.subarray(s.offset + o, s.offset + o + l);
      for (const e of readZipDirectory(s.length, reader(b)).entries) {
        if (crc32(b.subarray(s.offset + e.dataOffset, s.offset + e.dataOffset + e.size)) !== e.crc32) r.badCrc++;
      }
      if (!s.chunk) continue;
      for (const e of readZipDirectory(s.length, reader(a)).entries.filter((x) => x.name.includes('/data/'))) {
        allowed.fill(1, s.offset + e.dataOffset, s.offset + e.dataOffset + e.size);
        r.data += e.size;
        allowed.fill(1, s.offset + e.centralOffset + 16, s.offset + e.centralOffset + 20);
        const d = s.offset + e.dataOffset + e.size + (e.descriptorLength === 16 || e.descriptorLength === 24 ? 4 : 0);
        if (e.descriptorLength > 0) allowed.fill(1, d, d + 4);
      }
    }
    for (let i = 0; i < a.length; i++) {
      if (a[i] === b[i]) continue;
      r.changed++;
      if (!allowed[i]) r.outside++;
    }
  }
  for (const [dir, r] of folders) {
    if (r.outside > 0) problems.push(`${dir || '.'}: ${r.outside} bytes changed outside tensor data and CRC fields`);
    if (r.badCrc > 0) problems.push(`${dir || '.'}: ${r.badCrc} zip entries with a wrong CRC`);
  }
  return { problems, folders };
}

async function main(): Promise<number> {
  const [original, restored] = process.argv.slice(2);
  if (!original || !restored) {
    process.stderr.write('usage: npx tsx examples/dcp-diff.ts ORIGINAL RESTORED\n');
    return 2;
  }
  const { problems, folders } = await diffRestoredDcp(original, restored);
  for (const [dir, r] of folders) {
    process.stdout.write(`${dir || '.'}: ${r.changed} bytes changed in ${r.data} bytes of tensor data records; ${r.outside} outside tensor data and CRC fields; ${r.badCrc} zip entries with a wrong CRC\n`);
  }
  for (const p of problems) process.stdout.write(`${p}\n`);
  return problems.length ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().then((status) => {
    process.exitCode = status;
  }, (e: unknown) => {
    process.stderr.write(`${e instanceof Error ? e.message : String(e)}\n`);
    process.exitCode = 1;
  });
}
