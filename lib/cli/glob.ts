/**
 * Checkpoint lists for `excp chain`: a quoted glob is expanded here (Node 20
 * has no fs.glob), in step order. Step order is natural order: runs of digits
 * compare as numbers, so `checkpoint-9` comes before `checkpoint-10`, which
 * a shell's (or a plain string) sort gets wrong.
 */
import { readdirSync, statSync } from 'node:fs';
import { join, sep } from 'node:path';
import { ExcpError } from '../core/errors.js';

/** Whether a path has glob characters (`*`, `?`, `[`). */
export function isGlob(pattern: string): boolean {
  return /[*?[]/.test(pattern);
}

/**
 * A regular expression for one path component: `*` any run of characters but
 * `/`, `?` one character, `[abc]`, `[a-z]`, `[!abc]` a class; everything else
 * literal. A leading `.` must be matched explicitly, as in shells.
 */
export function componentRegExp(component: string): RegExp {
  let re = '';
  for (let i = 0; i < component.length; i++) {
    const c = component[i]!;
    if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '[') {
      const close = component.indexOf(']', i + 2);
      if (close < 0) {
        re += '\\[';
        continue;
      }
      let body = component.slice(i + 1, close);
      const negate = body.startsWith('!') || body.startsWith('^');
      if (negate) body = body.slice(1);
      re += `[${negate ? '^' : ''}${body.replace(/[\\\]^]/g, '\\$&')}]`;
      i = close;
    } else re += c.replace(/[.+^${}()|\\]/g, '\\$&');
  }
  const hidden = component.startsWith('.') ? '' : '(?!\\.)';
  return new RegExp(`^${hidden}${re}$`);
}

/**
 * Natural order: digit runs compare by value, the rest by code unit.
 * @returns negative, 0 or positive, as for Array.prototype.sort
 */
export function naturalCompare(a: string, b: string): number {
  const ta = a.match(/\d+|\D+/g) ?? [];
  const tb = b.match(/\d+|\D+/g) ?? [];
  for (let i = 0; i < Math.min(ta.length, tb.length); i++) {
    const x = ta[i]!;
    const y = tb[i]!;
    if (x === y) continue;
    const dx = /^\d/.test(x);
    const dy = /^\d/.test(y);
    if (dx && dy) {
      const nx = BigInt(x);
      const ny = BigInt(y);
      if (nx !== ny) return nx < ny ? -1 : 1;
      return x.length - y.length;
    }
    return x < y ? -1 : 1;
  }
  return ta.length - tb.length;
}

/**
 * Expand a glob over the file system (every component may hold wildcards).
 * @param pattern e.g. `run/checkpoint-*` or `ckpts/step-*.safetensors`
 * @returns matching paths, in natural order
 * @throws ExcpError ERR_USAGE when nothing matches
 */
export function expandGlob(pattern: string): string[] {
  const absolute = pattern.startsWith('/');
  const parts = pattern.split('/').filter((p, i) => p !== '' || i === 0);
  let paths = [absolute ? '/' : '.'];
  let first = true;
  for (const part of parts) {
    if (part === '' && first) {
      first = false;
      continue;
    }
    first = false;
    const next: string[] = [];
    for (const dir of paths) {
      if (!isGlob(part)) {
        const p = dir === '.' && !absolute ? part : join(dir, part);
        if (exists(p)) next.push(p);
        continue;
      }
      const re = componentRegExp(part);
      let names: string[];
      try {
        names = readdirSync(dir);
      } catch {
        continue;
      }
      for (const name of names) if (re.test(name)) next.push(dir === '.' && !absolute ? name : join(dir, name));
    }
    paths = next;
  }
  if (paths.length === 0) throw new ExcpError('ERR_USAGE', `no checkpoint matches '${pattern}'`);
  return paths.sort(naturalCompare);
}

function exists(p: string): boolean {
  try {
    statSync(p);
    return true;
  } catch {
    return false;
  }
}

/**
 * The checkpoint list of a chain command: globs expanded in natural order,
 * other arguments kept in the order given.
 * @param args command-line arguments
 * @returns paths, and a warning when explicit paths are not in natural
 *   order (a shell expands `checkpoint-*` with 10 before 9)
 */
export function checkpointList(args: readonly string[]): { paths: string[]; warning: string | null } {
  const paths: string[] = [];
  for (const a of args) paths.push(...(isGlob(a) && !exists(a) ? expandGlob(a) : [a]));
  const sorted = [...paths].sort(naturalCompare);
  const outOfOrder = paths.findIndex((p, i) => p !== sorted[i]);
  const warning = outOfOrder < 0 || paths.length < 2 ? null
    : `the checkpoints are not in numeric order (${paths[outOfOrder]} is given before ${sorted[outOfOrder]}); they are chained in the order given. Quote a glob ('${sep === '/' ? 'run/checkpoint-*' : 'run\\checkpoint-*'}') to have excp sort it`;
  return { paths, warning };
}
