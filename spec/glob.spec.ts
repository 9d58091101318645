/**
 * Checkpoint lists for chains (lib/glob.ts): globs and step order.
 */
import { describe, it, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { checkpointList, componentRegExp, expandGlob, isGlob, naturalCompare } from '../lib/cli/glob.js';
import { codeOf, randomCheckpointPair } from './helpers.js';

const root = fileURLToPath(new URL('..', import.meta.url));

describe('glob', () => {
  let dir = '';
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'excp-glob-'));
    for (const step of [10, 2, 9, 100, 1]) mkdirSync(join(dir, 'run', `checkpoint-${step}`), { recursive: true });
    mkdirSync(join(dir, 'run', 'logs'));
    writeFileSync(join(dir, 'run', '.checkpoint-hidden'), '');
    for (const step of [3, 20]) writeFileSync(join(dir, `step-${step}.safetensors`), '');
    writeFileSync(join(dir, 'step-3.txt'), '');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('orders digit runs by value', () => {
    const names = ['checkpoint-10', 'checkpoint-9', 'checkpoint-100', 'checkpoint-1', 'a', 'checkpoint-09'];
    assert.deepEqual([...names].sort(naturalCompare), ['a', 'checkpoint-1', 'checkpoint-9', 'checkpoint-09', 'checkpoint-10', 'checkpoint-100']);
    assert.equal(naturalCompare('x2y', 'x2y'), 0);
    assert.ok(naturalCompare('step-99999999999999999999', 'step-100000000000000000000') < 0);
  });

  it('matches one component like a shell', () => {
    assert.ok(componentRegExp('checkpoint-*').test('checkpoint-12'));
    assert.ok(!componentRegExp('checkpoint-*').test('checkpoint-12/x'));
    assert.ok(!componentRegExp('*').test('.hidden'));
    assert.ok(componentRegExp('.*').test('.hidden'));
    assert.ok(componentRegExp('step-?.st').test('step-3.st'));
    assert.ok(!componentRegExp('step-?.st').test('step-3xst'));
    assert.ok(componentRegExp('s[0-4]').test('s3') && !componentRegExp('s[0-4]').test('s5'));
    assert.ok(componentRegExp('s[!0-4]').test('s5') && !componentRegExp('s[!0-4]').test('s3'));
    assert.ok(componentRegExp('a(b)+[').test('a(b)+['));
    assert.ok(isGlob('a/*') && !isGlob('a/b'));
  });

  it('expands a glob in natural order, in any component', () => {
    assert.deepEqual(expandGlob(join(dir, 'run', 'checkpoint-*')), [1, 2, 9, 10, 100].map((s) => join(dir, 'run', `checkpoint-${s}`)));
    assert.deepEqual(expandGlob(join(dir, 'step-*.safetensors')), [join(dir, 'step-3.safetensors'), join(dir, 'step-20.safetensors')]);
    assert.deepEqual(expandGlob(join(dir, 'r?n', 'checkpoint-1*')), [1, 10, 100].map((s) => join(dir, 'run', `checkpoint-${s}`)));
    assert.equal(codeOf(() => expandGlob(join(dir, 'nothing-*'))), 'ERR_USAGE');
  });

  it('keeps explicit lists in the order given and warns when it is not numeric', () => {
    const shellOrder = [1, 10, 100, 2, 9].map((s) => join(dir, 'run', `checkpoint-${s}`));
    const r = checkpointList(shellOrder);
    assert.deepEqual(r.paths, shellOrder);
    assert.match(r.warning ?? '', /not in numeric order/);
    const natural = checkpointList([join(dir, 'run', 'checkpoint-*')]);
    assert.equal(natural.paths.length, 5);
    assert.equal(natural.warning, null);
    assert.equal(checkpointList([join(dir, 'step-3.safetensors')]).warning, null);
  });

  it('excp chain takes a quoted glob in step order, and warns about a shell-ordered list', () => {
    const run = join(dir, 'st');
    mkdirSync(run);
    const pair = randomCheckpointPair(3, { params: 3, maxElements: 2000 });
    writeFileSync(join(run, 'step-1.safetensors'), pair.previous);
    writeFileSync(join(run, 'step-2.safetensors'), pair.current);
    // A third checkpoint: another content (a chain refuses the same one twice), the same model.
    const third = pair.current.slice();
    third[third.length - 2]! ^= 1;
    writeFileSync(join(run, 'step-10.safetensors'), third);
    const cli = (...args: string[]) => spawnSync(process.execPath, ['--import', 'tsx', join(root, 'lib', 'cli.ts'), ...args, ...(args[1] === 'ls' ? [] : ['--threads', '0'])], { cwd: root, encoding: 'utf8' });
    const made = cli('chain', join(dir, 'c1'), join(run, 'step-*.safetensors'), '--quiet');
    assert.equal(made.status, 0, made.stderr);
    const ls = JSON.parse(cli('chain', 'ls', join(dir, 'c1'), '--json').stdout) as { steps: { source: string }[] };
    assert.deepEqual(ls.steps.map((s) => s.source), ['step-1.safetensors', 'step-2.safetensors', 'step-10.safetensors']);
    const shell = cli('chain', join(dir, 'c2'), ...['step-1', 'step-10', 'step-2'].map((n) => join(run, `${n}.safetensors`)));
    assert.equal(shell.status, 0, shell.stderr);
    assert.match(shell.stderr, /warning: the checkpoints are not in numeric order/);
    const none = cli('chain', join(dir, 'c3'), join(run, 'nothing-*'));
    assert.equal(none.status, 2);
    assert.match(none.stderr, /^excp: no checkpoint matches/);
  });
});
