/**
 * Real Trainer runs (transformers 5.18, torch 2.13; spec/fixtures/torch2/
 * trainer): excp's parameter map against the names the callback
 * (examples/python/excp_callback.py) recorded in optimizer_param_names.json,
 * with the file, without it (structure and statistics: never a wrong name),
 * and carried along a chain; the restored folders' torch files intact.
 */
import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { crc32 } from '../lib/core/crc32.js';
import { FolderCheckpoint } from '../lib/formats/folder.js';
import { NAMES_FILE, type ParamMapInfo } from '../lib/formats/optimizer-map.js';
import { readZipDirectory } from '../lib/formats/torch/zip.js';
import { createChain, readManifest } from '../lib/chain/chain.js';
import { inspectContainer } from '../lib/api/inspect.js';

const TRAINER = fileURLToPath(new URL('./fixtures/torch2/trainer/', import.meta.url));
const RUNS = ['llama-gqa', 'llama-bf16', 'gpt2-tied', 'qwen2', 'frozen', 'sharded'];
const work = mkdtempSync(join(tmpdir(), 'excp-trainer-spec-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

const truthOf = (run: string, ck: string): string[] => JSON.parse(readFileSync(join(TRAINER, run, 'reference.json'), 'utf8')).checkpoints[ck].param_order;

/** A copy of a checkpoint folder without the callback's names file. */
function withoutNames(run: string, ck: string): string {
  const dir = join(work, `${run}-${ck}-nonames`);
  cpSync(join(TRAINER, run, ck), dir, { recursive: true, filter: (src) => !src.endsWith(NAMES_FILE) });
  return dir;
}

async function mapOf(dir: string, prevDir: string | null): Promise<{ map: ParamMapInfo; notices: string[] }> {
  const base = prevDir ? await FolderCheckpoint.open(prevDir, { mapMoments: false }) : null;
  const notices: string[] = [];
  const folder = await FolderCheckpoint.open(dir, { mapMoments: true, previous: base, onNotice: (m) => notices.push(m) });
  try {
    return { map: folder.paramMap!, notices };
  } finally {
    await folder.close();
    await base?.close();
  }
}

describe('Trainer runs: the parameter map against the callback\'s names', () => {
  for (const run of RUNS) {
    it(`${run}: with optimizer_param_names.json every id is the callback's name, confidence 1`, async () => {
      for (const [ck, prev] of [['checkpoint-4', null], ['checkpoint-8', 'checkpoint-4']] as const) {
        const truth = truthOf(run, ck);
        const names: string[] = JSON.parse(readFileSync(join(TRAINER, run, ck, NAMES_FILE), 'utf8'));
        assert.deepEqual(names, truth, `${ck}: the callback wrote the truth`);
        const { map } = await mapOf(join(TRAINER, run, ck), prev && join(TRAINER, run, prev));
        assert.deepEqual(map.ids.map(([id, name]) => [id, name]), truth.map((n, id) => [id, n]), ck);
        assert.ok(map.ids.every(([, , c, m]) => c === 1 && m === 'names-file'));
        assert.deepEqual(map.unmapped, []);
      }
    });

    it(`${run}: without it, structure and statistics name ids only rightly; the rest are small, listed, and coded exactly`, async () => {
      const truth = truthOf(run, 'checkpoint-8');
      const { map, notices } = await mapOf(withoutNames(run, 'checkpoint-8'), join(TRAINER, run, 'checkpoint-4'));
      for (const [id, name, confidence, method] of map.ids) {
        assert.equal(name, truth[id], `id ${id} (${method})`);
        assert.ok(confidence >= 0.5, `id ${id}`);
      }
      assert.equal(map.ids.length + map.unmapped.length, truth.length);
      assert.ok(map.ids.length >= truth.length / 3, `${map.ids.length} of ${truth.length} named`);
      for (const [id, options] of map.ambiguous ?? []) assert.ok(options.includes(truth[id]!), `id ${id}`);
      assert.equal(notices.length, map.unmapped.length > 0 ? 1 : 0);
      if (notices.length) assert.match(notices[0]!, /left unmapped.*optimizer_param_names\.json.*named_parameters/);
    });
  }

  it('a chain carries the map: a step without the names file confirms the previous step\'s', async () => {
    const run = 'llama-gqa';
    const chain = join(work, 'chain');
    await createChain(chain, [join(TRAINER, run, 'checkpoint-4'), withoutNames(run, 'checkpoint-8')], { threads: 0, cache: chain });
    const manifest = await readManifest(chain);
    const truth = truthOf(run, 'checkpoint-8');
    const first = (await inspectContainer(join(chain, manifest.steps[0]!.file))).paramMap!;
    const second = (await inspectContainer(join(chain, manifest.steps[1]!.file))).paramMap!;
    assert.ok(first.ids.every(([, , , m]) => m === 'names-file'));
    assert.deepEqual(second.ids.map(([id, name]) => [id, name]), truth.map((n, id) => [id, n]));
    assert.ok(second.ids.every(([, , c, m]) => c === 1 && m === 'carried'));
    // The restored folder the chain keeps: its torch files are valid zips whose CRCs follow their data.
    const last = join(chain, manifest.last!);
    for (const f of readdirSync(last).filter((x) => x.endsWith('.pt') || x.endsWith('.pth') || x.endsWith('.bin'))) {
      const bytes = new Uint8Array(readFileSync(join(last, f)));
      const dir = readZipDirectory(bytes.length, (o, l) => bytes.subarray(o, o + l));
      for (const e of dir.entries) assert.equal(crc32(bytes.subarray(e.dataOffset, e.dataOffset + e.size)), e.crc32, `${f} ${e.name}`);
    }
  });
});
