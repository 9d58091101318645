/**
 * Hostile input: seeded mutation fuzzing of the safetensors reader, of the
 * container reader (restore, the ContainerReader stream, readContainerFile,
 * inspect, verify) and of distributed checkpoint folders (examples/fuzz-dcp.ts). Every case must end in an ExcpError or the correct result
 * within a time bound; a failure names the seed and case (replay with
 * `npm run fuzz -- --seed S --from CASE --iterations 1 --target T`).
 * The mutators live in examples/fuzz.ts, which runs them longer.
 * Set FUZZ_SEED to run another seed.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { crc32 } from '../lib/core/crc32.js';
import { ExcpError } from '../lib/core/errors.js';
import { inspectContainer, verifyContainer } from '../lib/api/inspect.js';
import { parseSafetensors } from '../lib/formats/safetensors.js';
import { SafetensorsMemory } from '../lib/formats/safetensors-file.js';
import { EXTREMES_U32, EXTREMES_U64, containerCorpus, runFuzz, safetensorsCorpus } from '../examples/fuzz.js';
import { readContainerFile } from '../lib/api/open.js';
import { restoreBuffer } from '../lib/api/restore.js';

const SEED = Number(process.env['FUZZ_SEED'] ?? 20261124);

function codeOf(fn: () => unknown): string {
  try {
    fn();
    return 'none';
  } catch (e) {
    assert.ok(e instanceof ExcpError, `expected ExcpError, got ${String(e)}`);
    return e.code;
  }
}

async function asyncCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'none';
  } catch (e) {
    assert.ok(e instanceof ExcpError, `expected ExcpError, got ${e instanceof Error ? e.stack : String(e)}`);
    return e.code;
  }
}

function setU64(b: Uint8Array, at: number, v: number): void {
  new DataView(b.buffer, b.byteOffset, b.length).setBigUint64(at, v >= 2 ** 64 ? 0xffffffffffffffffn : BigInt.asUintN(64, BigInt(v)), true);
}

describe('mutation fuzzing (seed ' + SEED + ')', () => {
  it('safetensors: 2000 mutated files end in an ExcpError or a consistent parse', { timeout: 40_000 }, async () => {
    const t0 = Date.now();
    const stats = await runFuzz({ seed: SEED, iterations: 2000, target: 'safetensors', fileEvery: 10, caseTimeoutMs: 5000 });
    assert.equal(stats.cases, 2000);
    const ok = Object.entries(stats.outcomes).filter(([k]) => k.endsWith(' ok')).reduce((s, [, v]) => s + v, 0);
    assert.ok(ok > 0 && ok < 2000, `outcomes ${JSON.stringify(stats.outcomes)}`);
    assert.ok(stats.slowestMs < 2000, `slowest case ${stats.slowestMs} ms: ${stats.slowestCase}`);
    assert.ok(Date.now() - t0 < 30_000);
  });

  it('distributed checkpoint folders: 200 mutated folders end in an ExcpError or open; accepted ones round-trip byte for byte', { timeout: 40_000 }, async () => {
    const stats = await runFuzz({ seed: SEED, iterations: 200, target: 'dcp', fileEvery: 4, caseTimeoutMs: 5000 });
    assert.equal(stats.cases, 200);
    // The mutations reach the pickle reader, the structure checks, the item reader and the CRC check.
    for (const code of ['ERR_BAD_PICKLE', 'ERR_BAD_ZIP', 'ERR_TRUNCATED', 'ERR_SHAPE', 'ERR_CRC']) {
      assert.ok(Object.keys(stats.outcomes).some((k) => k.endsWith(` ${code}`)), `no ${code}: ${JSON.stringify(stats.outcomes)}`);
    }
    assert.ok(Object.keys(stats.outcomes).some((k) => k.endsWith('ok (round trip)')), `no round trip: ${JSON.stringify(stats.outcomes)}`);
    assert.ok(stats.slowestMs < 4000, `slowest case ${stats.slowestMs} ms: ${stats.slowestCase}`);
  });

  it('containers: 3000 mutated containers end in an ExcpError or the exact clean restore', { timeout: 50_000 }, async () => {
    const stats = await runFuzz({ seed: SEED, iterations: 3000, target: 'container', fileEvery: 10, caseTimeoutMs: 5000 });
    assert.equal(stats.cases, 3000);
    // The re-sealed mutations reach the decoders behind the CRCs.
    for (const kind of ['bytes', 'field', 'header-json', 'footer-json', 'payload', 'records']) {
      assert.ok(Object.keys(stats.outcomes).some((k) => k.startsWith(`container/${kind} `)), `no ${kind} cases: ${JSON.stringify(stats.outcomes)}`);
    }
    assert.ok(stats.outcomes['container/payload ERR_CORRUPT'] !== undefined || stats.outcomes['container/payload ERR_TRUNCATED'] !== undefined,
      `payload decoder not reached: ${JSON.stringify(stats.outcomes)}`);
    assert.ok(stats.slowestMs < 3000, `slowest case ${stats.slowestMs} ms: ${stats.slowestCase}`);
  });

  it('a re-sealed payload of a small, hash-less container: restore --tensor checks the whole fingerprint (seed 2026, case 2470)', async () => {
    // Restoring one tensor of a container without per-tensor hashes used to
    // trust the CRCs alone, and returned other bytes for this case.
    const stats = await runFuzz({ seed: 2026, from: 2470, iterations: 1, target: 'container', fileEvery: 10, caseTimeoutMs: 5000 });
    assert.deepEqual(stats.outcomes, { 'container/payload ERR_FINGERPRINT': 1 });
  });

  it('a JSON footer whose entry errors are not numbers, a JSON header without a tool: refused as bad headers (seed 2026 case 48870, seed 7 case 19690)', async () => {
    // inspect printed both, and threw a TypeError on them.
    const footer = await runFuzz({ seed: 2026, from: 48870, iterations: 1, target: 'container', fileEvery: 10, caseTimeoutMs: 5000 });
    assert.deepEqual(footer.outcomes, { 'container/footer-json ERR_BAD_HEADER': 1 });
    const header = await runFuzz({ seed: 7, from: 19690, iterations: 1, target: 'container', fileEvery: 10, caseTimeoutMs: 5000 });
    assert.deepEqual(header.outcomes, { 'container/header-json ERR_BAD_HEADER': 1 });
  });
});

describe('length fields set to extremes', () => {
  it('safetensors header length: every extreme is refused with a code, before any allocation', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'excp-fuzz-'));
    try {
      for (const file of safetensorsCorpus()) {
        for (const v of EXTREMES_U64) {
          const bad = file.slice();
          setU64(bad, 0, v);
          const code = codeOf(() => parseSafetensors(bad));
          assert.notEqual(code, 'none', `header length ${v} accepted`);
          assert.equal(codeOf(() => new SafetensorsMemory(bad)), code);
          if (v > 100_000_000) assert.equal(code, 'ERR_HEADER_TOO_LARGE', `header length ${v}`);
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('container length, index and offset fields: every extreme gives an ExcpError or the clean result', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'excp-fuzz-'));
    try {
      const [sample] = await containerCorpus();
      const { container, base, restored, parts } = sample!;
      const fields: Array<[string, number, 4 | 8]> = [['header length', 12, 4], ['footer length', parts.footerAt + 1, 4], ['trailer offset', container.length - 16, 8]];
      for (const r of parts.records.slice(0, 3)) fields.push(['record entry', r.at + 1, 4], ['record chunk', r.at + 5, 4], ['record length', r.at + 9, 4]);
      const path = join(dir, 'c.excp');
      for (const [name, at, width] of fields) {
        for (const v of width === 4 ? EXTREMES_U32 : EXTREMES_U64) {
          const bad = container.slice();
          if (width === 4) new DataView(bad.buffer).setUint32(at, v >>> 0, true);
          else setU64(bad, at, v);
          const t0 = performance.now();
          const out = await restoreBuffer(bad, base).catch((e: unknown) => {
            assert.ok(e instanceof ExcpError, `${name} = ${v}: ${String(e)}`);
            return null;
          });
          if (out) assert.ok(Buffer.compare(out, restored) === 0, `${name} = ${v}: wrong result`);
          writeFileSync(path, bad);
          await asyncCode(readContainerFile(path));
          assert.ok(performance.now() - t0 < 2000, `${name} = ${v} took ${performance.now() - t0} ms`);
        }
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a container claiming a 64 MiB header, given 100 bytes, ends in ERR_TRUNCATED without waiting or allocating', async () => {
    const [sample] = await containerCorpus();
    const bad = sample!.container.slice(0, 100);
    new DataView(bad.buffer).setUint32(12, 64 * 1024 * 1024, true);
    const before = process.memoryUsage().arrayBuffers;
    assert.equal(await asyncCode(restoreBuffer(bad)), 'ERR_TRUNCATED');
    assert.ok(process.memoryUsage().arrayBuffers - before < 32 * 1024 * 1024);
  });
});

describe('regressions found by the fuzzer', () => {
  /** Re-seal a container whose header JSON was edited (length and CRC recomputed, records shifted). */
  function withHeader(container: Uint8Array, edit: (h: Record<string, unknown>) => void): Uint8Array {
    const view = new DataView(container.buffer, container.byteOffset);
    const length = view.getUint32(12, true);
    const header = JSON.parse(Buffer.from(container.subarray(16, 16 + length)).toString()) as Record<string, unknown>;
    edit(header);
    const json = Buffer.from(JSON.stringify(header));
    if (json.length > length) throw new Error('test edit must not grow the header');
    const padded = Buffer.concat([json, Buffer.alloc(length - json.length, 0x20)]); // JSON allows trailing spaces
    const out = container.slice();
    out.set(padded, 16);
    new DataView(out.buffer).setUint32(16 + length, crc32(padded), true);
    return out;
  }

  it('a header whose file entry lacks its tensor list is ERR_BAD_HEADER, not a TypeError', async () => {
    const [sample] = await containerCorpus();
    const bad = withHeader(sample!.container, (h) => { delete (h['files'] as Array<Record<string, unknown>>)[0]!['tensors']; });
    assert.equal(await asyncCode(restoreBuffer(bad, sample!.base)), 'ERR_BAD_HEADER');
  });

  it('a footer with malformed entries or hashes is ERR_BAD_HEADER for restore, inspect and verify', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'excp-fuzz-'));
    try {
      const [sample] = await containerCorpus();
      const { container, parts } = sample!;
      const edits: Array<(f: Record<string, unknown>) => void> = [
        (f) => { (f['entries'] as unknown[])[0] = null; },
        (f) => { (f['entries'] as Array<Record<string, unknown>>)[0]!['offsets'] = null; },
        (f) => { (f['entries'] as Array<Record<string, unknown>>)[0]!['codedBytes'] = 'x'; },
        (f) => { (f['tensorHashes'] as unknown[])[0] = 7; },
        (f) => { f['baseHashes'] = []; },
      ];
      const basePath = join(dir, 'base.safetensors');
      writeFileSync(basePath, sample!.base!);
      for (const [i, edit] of edits.entries()) {
        const footer = JSON.parse(parts.footerText) as Record<string, unknown>;
        edit(footer);
        const body = Buffer.from(JSON.stringify(footer));
        const prefix = Buffer.alloc(5);
        prefix[0] = 2;
        prefix.writeUInt32LE(body.length, 1);
        const crc = Buffer.alloc(4);
        crc.writeUInt32LE(crc32(body, crc32(prefix)));
        const trailer = Buffer.alloc(8);
        trailer.writeBigUInt64LE(BigInt(parts.footerAt));
        const trailerCrc = Buffer.alloc(4);
        trailerCrc.writeUInt32LE(crc32(trailer));
        const bad = Buffer.concat([container.subarray(0, parts.footerAt), prefix, body, crc, trailer, trailerCrc, Buffer.from('PCXE')]);
        const path = join(dir, `bad${i}.excp`);
        writeFileSync(path, bad);
        assert.equal(await asyncCode(restoreBuffer(bad, sample!.base)), 'ERR_BAD_HEADER', `edit ${i}: restore`);
        assert.equal(await asyncCode(inspectContainer(path)), 'ERR_BAD_HEADER', `edit ${i}: inspect`);
        assert.equal(await asyncCode(verifyContainer(path, basePath, 0)), 'ERR_BAD_HEADER', `edit ${i}: verify`);
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('after garbage, the next valid input still restores', async () => {
    const [sample] = await containerCorpus();
    await asyncCode(restoreBuffer(sample!.container.subarray(0, 50), sample!.base));
    const out = await restoreBuffer(sample!.container, sample!.base);
    assert.ok(Buffer.compare(out, sample!.restored) === 0);
  });
});
