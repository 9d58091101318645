/**
 * `excp compare`: per-tensor differences between an original and a restored
 * checkpoint (lib/compare.ts), the diagnostic for a loss jump after resuming.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { accumulate, compareCheckpoints, emptySums, relativeError, worstRelativeError } from '../lib/api/compare.js';
import { parseSafetensors, serializeSafetensors } from '../lib/formats/safetensors.js';
import { codeOf, randomCheckpointPair } from './helpers.js';
import { compressBuffer } from '../lib/api/compress.js';
import { restoreBuffer } from '../lib/api/restore.js';

const root = fileURLToPath(new URL('..', import.meta.url));
const cli = join(root, 'dist', 'lib', 'cli.js');
const fixture = join(root, 'spec', 'fixtures', 'torch', 'fp32');

describe('compare', () => {
  let dir = '';
  let original = '';
  let restored = '';
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'excp-compare-'));
    const pair = randomCheckpointPair(5, { params: 4, maxElements: 4000, extras: true });
    original = join(dir, 'cur.safetensors');
    restored = join(dir, 'restored.safetensors');
    writeFileSync(join(dir, 'prev.safetensors'), pair.previous);
    writeFileSync(original, pair.current);
    writeFileSync(restored, await restoreBuffer(await compressBuffer(pair.current, pair.previous, {}), pair.previous));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('finds a checkpoint identical to itself', async () => {
    const r = await compareCheckpoints(original, original);
    assert.equal(r.identical, true);
    assert.ok(r.tensors.length > 0);
    assert.ok(r.tensors.every((t) => t.changed === 0 && (t.relError === null || t.relError === 0)));
    assert.equal(worstRelativeError(r), 0);
  });

  it('measures a lossy restore: small weight error, pruned moments, exact extras', async () => {
    const r = await compareCheckpoints(original, restored);
    assert.equal(r.identical, false);
    assert.ok(r.byRole.weight.tensors > 0 && r.byRole.exp_avg.tensors === r.byRole.weight.tensors);
    const w = r.byRole.weight.relError!;
    assert.ok(w > 0 && w < 0.2, `weight error ${w}`);
    assert.ok(r.byRole.exp_avg.relError! > w, 'moments are pruned much harder than weights');
    assert.equal(r.steps.length, r.byRole.weight.tensors);
    // Tensors without moments and integer tensors are coded exactly.
    const params = new Set(r.steps.map((s) => s.name));
    const extras = r.tensors.filter((t) => !t.name.includes('.exp_avg') && !params.has(t.name));
    assert.ok(extras.length > 0);
    for (const t of extras) assert.equal(t.changed, 0, t.name);
  });

  it('computes the relative error and counts changed bits, NaN payloads included', () => {
    const a = new Float32Array([3, 4, NaN, -0]);
    const b = new Float32Array([3, 0, NaN, 0]);
    const s = emptySums();
    accumulate(s, a, b, new Uint8Array(a.buffer), new Uint8Array(b.buffer), 4);
    assert.equal(s.changed, 2); // 4 -> 0 and -0 -> 0
    assert.equal(relativeError(s.sumSqDiff, s.sumSqA), 4 / 5);
    assert.equal(s.maxAbs, 4);
    const c = new Float32Array([3, 4, Infinity, -0]);
    const t = emptySums();
    accumulate(t, a, c, new Uint8Array(a.buffer), new Uint8Array(c.buffer), 4);
    assert.equal(t.nonFiniteMismatch, 1);
    assert.equal(relativeError(0, 0), 0);
    assert.equal(relativeError(1, 0), Infinity);
  });

  it('reports tensors present on one side only, and refuses a threshold over them', async () => {
    const st = parseSafetensors(new Uint8Array(readFileSync(original)));
    const fewer = join(dir, 'fewer.safetensors');
    writeFileSync(fewer, serializeSafetensors(st.tensors.slice(1), st.metadata ?? undefined));
    const r = await compareCheckpoints(original, fewer);
    assert.deepEqual(r.onlyInA, [st.tensors[0]!.name]);
    assert.equal(codeOf(() => worstRelativeError(r)), 'ERR_MISMATCH');
  });

  it('compares checkpoint folders, moments by optimizer id', async () => {
    const copy = join(dir, 'copy');
    cpSync(join(fixture, 'checkpoint-8'), copy, { recursive: true });
    const same = await compareCheckpoints(join(fixture, 'checkpoint-8'), copy);
    assert.equal(same.identical, true);
    const r = await compareCheckpoints(join(fixture, 'checkpoint-4'), join(fixture, 'checkpoint-8'));
    assert.ok(r.byRole.weight.tensors > 0 && r.byRole.exp_avg.tensors > 0 && r.steps.length > 0);
    assert.ok(r.byRole.weight.relError! > 0);
  });

  it('command: report, --json, --max-error exit codes', () => {
    const run = (args: string[]) => spawnSync(process.execPath, [cli, 'compare', ...args], { encoding: 'utf8' });
    const ok = run([original, restored, '--top', '3']);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stdout, /weight +\d/);
    assert.match(ok.stdout, /most changed tensors/);
    const json = JSON.parse(run([original, restored, '--json']).stdout) as { tensors: unknown[] };
    assert.ok(json.tensors.length > 0);
    assert.equal(run([original, restored, '--max-error', '10']).status, 0);
    const tight = run([original, restored, '--max-error', '0']);
    assert.equal(tight.status, 3, 'above the threshold: its own exit status');
    assert.match(tight.stderr, /^excp: compare: (weight|exp_avg|exp_avg_sq|tensor) '[^']+' (has a relative error of|differs in) .*, above --max-error 0\n$/);
    // Per role: the moments' error is large by design, the weights' small.
    const moments = run([original, restored, '--max-moment-error', '0.01']);
    assert.equal(moments.status, 3);
    assert.match(moments.stderr, /^excp: compare: exp_avg(_sq)? '[^']+\.exp_avg(_sq)?' has a relative error of [\d.]+, above --max-moment-error 0\.01\n$/);
    assert.equal(run([original, restored, '--max-weight-error', '0.5', '--max-step-error', '100']).status, 0);
    const weights = run([original, restored, '--max-weight-error', '0']);
    assert.equal(weights.status, 3);
    assert.match(weights.stderr, /^excp: compare: weight '[^']+' has a relative error/);
    const step = run([original, restored, '--max-step-error', '0']);
    assert.equal(step.status, 3);
    assert.match(step.stderr, /^excp: compare: the first Adam step of '[^']+' has a relative error .*, above --max-step-error 0\n$/);
    const missing = run([original]);
    assert.equal(missing.status, 2);
    assert.match(missing.stderr, /compare: needs two checkpoints/);
    const bad = run([original, join(dir, 'nope.safetensors')]);
    assert.equal(bad.status, 1);
    assert.doesNotMatch(bad.stderr, /at .*\.js/);
  });
});
