import { it } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as Record<string, Record<string, string> | undefined>;

it('has no runtime dependencies', () => {
  assert.equal(pkg['dependencies'], undefined);
  assert.equal(pkg['optionalDependencies'], undefined);
  assert.equal(pkg['peerDependencies'], undefined);
});

it('has exactly typescript, tsx and @types/node as exact-pinned dev dependencies', () => {
  const dev = pkg['devDependencies'] ?? {};
  assert.deepEqual(Object.keys(dev).sort(), ['@types/node', 'tsx', 'typescript']);
  for (const [name, version] of Object.entries(dev)) assert.match(version, /^\d+\.\d+\.\d+$/, `${name} is not pinned exactly`);
});

it('has the scripts the README promises', () => {
  for (const s of ['prepare', 'test', 'demo', 'bench']) assert.ok(pkg['scripts']?.[s], `script ${s}`);
});
