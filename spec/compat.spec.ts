/**
 * Containers written by earlier versions still restore: spec/fixtures/v1/
 * holds containers made by excp at commit 6a8e29d (container format 1, whose
 * symbol streams used the range coder before format 2's rANS), and
 * spec/fixtures/format2/ folder containers made at commit 76b6094 (format 2
 * before packs and lz variant 2), and spec/fixtures/format2/final/ containers
 * as format 2 was last written (commit bbaef7c), spec/fixtures/format3/ as
 * format 3 was written (commit 9177032, before the drift gain), spec/fixtures/format4/
 * as format 4 is written, each with the SHA-256 of what
 * that version restored them to.
 */
import { test } from 'node:test';
import { PRESETS, neoxParams, writeSyntheticPair } from '../examples/synthetic.js';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { layoutOf, readPreambleInfo } from '../lib/container/format.js';
import { DTYPE_BYTES } from '../lib/core/dtype.js';
import { decodePayload } from '../lib/method/payload/payload.js';
import { ContainerReader } from '../lib/stream/container.js';
import type { RestoreEvent } from '../lib/stream/codec.js';
import { restoreBuffer, restoreToFolder } from '../lib/api/restore.js';
import { compressBuffer, compressTo } from '../lib/api/compress.js';
import { FORMAT_VERSION } from '../lib/core/constants.js';

const dir = new URL('./fixtures/v1/', import.meta.url);
const expected = JSON.parse(readFileSync(new URL('expected.json', dir), 'utf8')) as Record<string, { restoresTo: string; bytes: number; base: string | null } | string>;

function bytes(name: string): Uint8Array {
  return new Uint8Array(readFileSync(new URL(name, dir)));
}

for (const name of ['prev.excp', 'cur.excp']) {
  test(`format 1 container ${name} restores to the bytes the old version gave, in the calling thread and on workers`, async () => {
    const want = expected[name] as { restoresTo: string; bytes: number; base: string | null };
    const container = bytes(name);
    assert.equal(readPreambleInfo(container.subarray(0, 16)).version, 1);
    const base = want.base === null ? undefined : bytes(want.base);
    for (const threads of [0, 2]) {
      const restored = await restoreBuffer(container, base, { threads });
      assert.equal(restored.length, want.bytes);
      assert.equal(createHash('sha256').update(restored).digest('hex'), want.restoresTo, `threads ${threads}`);
    }
  });
}

test('format 1 symbol streams need the format 1 coder: the same payloads do not decode as rANS', async () => {
  const events: RestoreEvent[] = [];
  await pipeline(Readable.from([bytes('cur.excp')]), new ContainerReader(), new Writable({
    objectMode: true,
    write(e: RestoreEvent, _enc, cb) {
      events.push(e);
      cb();
    },
  }));
  const first = events[0]!;
  assert.ok(first.type === 'header' && first.header.format === 1, 'the reader marks the header as format 1');
  const header = first.header;
  const lossy = events.filter((e): e is Extract<RestoreEvent, { type: 'chunk' }> => e.type === 'chunk' && !header.entries[e.entry]!.exactWeight);
  assert.ok(lossy.length > 0, 'the fixture has lossy chunks');
  let failedAsRans = 0;
  for (const r of lossy) {
    const layout = layoutOf(header, r.entry);
    assert.equal(layout.legacySymbols, true);
    const n = Math.min(header.options.chunkElements, header.entries[r.entry]!.elements - r.chunk * header.options.chunkElements);
    const decode = (legacySymbols: boolean) => decodePayload(r.payload, n, { weight: DTYPE_BYTES[layout.weightDtype], moments: layout.momentDtype ? DTYPE_BYTES[layout.momentDtype] : 1 }, layout.momentDtype !== null, legacySymbols);
    assert.ok(decode(true).weight, 'decodes as format 1');
    try {
      decode(false);
    } catch {
      failedAsRans++;
    }
  }
  assert.equal(failedAsRans, lossy.length);
});

const format2 = new URL('./fixtures/format2/', import.meta.url);
const expected2 = JSON.parse(readFileSync(new URL('expected.json', format2), 'utf8')) as Record<string, { base: string | null; restoresTo: Record<string, string> } | string>;

for (const name of ['bf16-ckpt8-lossless.excp', 'fp32-ckpt8-vs-4.excp']) {
  test(`format 2 folder container ${name}, written before packs and lz variant 2, restores to the files the old version gave`, async () => {
    const want = expected2[name] as { base: string | null; restoresTo: Record<string, string> };
    const work = mkdtempSync(join(tmpdir(), 'excp-compat-'));
    try {
      const out = join(work, 'out');
      const base = want.base === null ? undefined : fileURLToPath(new URL(want.base, format2));
      await restoreToFolder(fileURLToPath(new URL(name, format2)), out, { base, threads: 0 });
      const got = Object.fromEntries(readdirSync(out).sort().map((f) => [f, createHash('sha256').update(readFileSync(join(out, f))).digest('hex')]));
      assert.deepEqual(got, want.restoresTo);
    } finally {
      rmSync(work, { recursive: true, force: true });
    }
  });
}


/**
 * The same three containers of each later format: the fp32 fixture folder
 * (a residual and a keyframe) and the tiny synthetic pair, each with the
 * SHA-256 of what the version that wrote them restored. The format being
 * written must also still be written byte for byte.
 */
const GENERATIONS = [
  { dir: new URL('./fixtures/format2/final/', import.meta.url), version: 2, what: 'as format 2 was last written (commit bbaef7c)' },
  { dir: new URL('./fixtures/format3/', import.meta.url), version: 3, what: 'format 3 (commit 9177032: method 2 without the drift gain)' },
  { dir: new URL('./fixtures/format4/', import.meta.url), version: 4, what: 'format 4' },
];

type Want = { base: string | null; restoresTo: Record<string, string> };

async function inWork<T>(use: (work: string) => Promise<T>): Promise<T> {
  const work = mkdtempSync(join(tmpdir(), 'excp-compat-'));
  try {
    return await use(work);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

for (const { dir, version, what } of GENERATIONS) {
  const expectedOf = JSON.parse(readFileSync(new URL('expected.json', dir), 'utf8')) as Record<string, Want | string>;
  const pinned = version === FORMAT_VERSION;

  for (const name of ['fp32-ckpt8-vs-4.excp', 'fp32-ckpt4-keyframe.excp']) {
    test(`format ${version} folder container ${name}, ${what}, restores to the files that version gave${pinned ? '; the writer still writes these bytes' : ''}`, () => inWork(async (work) => {
      const want = expectedOf[name] as Want;
      const out = join(work, 'out');
      const base = want.base === null ? undefined : fileURLToPath(new URL(want.base, dir));
      const container = fileURLToPath(new URL(name, dir));
      assert.equal(readPreambleInfo(new Uint8Array(readFileSync(container)).subarray(0, 16)).version, version);
      await restoreToFolder(container, out, { base, threads: 0 });
      const got = Object.fromEntries(readdirSync(out).sort().map((f) => [f, createHash('sha256').update(readFileSync(join(out, f))).digest('hex')]));
      assert.deepEqual(got, want.restoresTo);
      if (pinned) {
        const current = fileURLToPath(new URL(`../torch/fp32/${name === 'fp32-ckpt4-keyframe.excp' ? 'checkpoint-4' : 'checkpoint-8'}`, dir));
        const parts: Buffer[] = [];
        await compressTo(current, new Writable({ write(c: Buffer, _e, cb) { parts.push(c); cb(); } }), { base, threads: 0, onNotice: () => {} });
        assert.ok(Buffer.concat(parts).equals(readFileSync(container)), `format ${version} is still written byte for byte as pinned`);
      }
    }));
  }

  test(`format ${version} file container (the tiny synthetic pair), ${what}, restores to the bytes that version gave, in the calling thread and on workers${pinned ? '; still written as pinned' : ''}`, () => inWork(async (work) => {
    const want = expectedOf['tiny-residual.excp'] as Want;
    const p = PRESETS['tiny']!;
    await writeSyntheticPair(neoxParams(p.d, p.layers, p.vocab), join(work, 'a.safetensors'), join(work, 'b.safetensors'), { seed: 7 });
    const container = new Uint8Array(readFileSync(new URL('tiny-residual.excp', dir)));
    const base = new Uint8Array(readFileSync(join(work, 'a.safetensors')));
    assert.equal(readPreambleInfo(container.subarray(0, 16)).version, version);
    for (const threads of [0, 2]) {
      const restored = await restoreBuffer(container, base, { threads });
      assert.equal(createHash('sha256').update(restored).digest('hex'), want.restoresTo[''], `threads ${threads}`);
    }
    if (pinned) {
      const again = await compressBuffer(new Uint8Array(readFileSync(join(work, 'b.safetensors'))), base, { threads: 0 });
      assert.ok(Buffer.from(again).equals(Buffer.from(container)), `format ${version} is still written byte for byte as pinned`);
    }
  }));
}
