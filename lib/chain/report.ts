/**
 * `excp chain ls`, the pure part: the figures of a chain (per step, per
 * kind of step, and for the whole run against every byte it takes on disk)
 * and their text. files.ts lists the files ({@link DiskFile}).
 */
import { describeMethod } from '../core/options.js';
import type { ChainManifest } from './manifest.js';

/** What a file of a chain is for. */
export type DiskRole = 'container' | 'manifest' | 'cache' | 'other';

/** A file a chain takes on disk. */
export interface DiskFile {
  /** Relative to the chain folder, or absolute for a kept step outside it. */
  path: string;
  bytes: number;
  role: DiskRole;
}

/** Checkpoints against containers, for a set of steps. */
export interface StepFigures {
  steps: number;
  originalBytes: number;
  containerBytes: number;
  /** originalBytes / containerBytes; null without steps. */
  ratio: number | null;
  /** The lowest and highest ratio of one step; null without steps. */
  lowest: number | null;
  highest: number | null;
}

/** Every byte a chain takes on disk, by what it is for. */
export interface DiskFigures {
  containers: number;
  manifest: number;
  /** The kept restored last step (in the chain folder, or outside it with --cache DIR). */
  cache: number;
  /** Anything else in the chain folder: a held lock, leftovers of a killed run, files put there by hand. */
  other: number;
  total: number;
  /** Where the kept step is (absolute, or relative to the chain folder), or null when none is kept. */
  cachePath: string | null;
  /** Paths of the `other` files. */
  otherFiles: string[];
}

/** The figures `chain ls` prints. */
export interface ChainSummary {
  /** Bytes of every checkpoint of the run, as given. */
  originalBytes: number;
  keyframes: StepFigures;
  residuals: StepFigures;
  /** All steps: checkpoints against containers only. */
  steps: StepFigures;
  disk: DiskFigures;
  /** The run's ratio: every checkpoint against every byte on disk (disk.total); null when nothing is on disk. */
  ratio: number | null;
}

function ratioOf(original: number, coded: number): number | null {
  return coded > 0 ? original / coded : null;
}

function figures(steps: ChainManifest['steps']): StepFigures {
  const ratios = steps.map((s) => ratioOf(s.originalBytes, s.containerBytes)).filter((r): r is number => r !== null);
  const originalBytes = steps.reduce((n, s) => n + s.originalBytes, 0);
  const containerBytes = steps.reduce((n, s) => n + s.containerBytes, 0);
  return {
    steps: steps.length, originalBytes, containerBytes, ratio: steps.length ? ratioOf(originalBytes, containerBytes) : null,
    lowest: ratios.length ? Math.min(...ratios) : null, highest: ratios.length ? Math.max(...ratios) : null,
  };
}

/**
 * The figures of a chain.
 * @param manifest the chain
 * @param files every file it takes on disk (files.ts chainDiskFiles)
 * @param cachePath where chain.json says the kept step is, or null
 */
export function summarizeChain(manifest: ChainManifest, files: readonly DiskFile[], cachePath: string | null): ChainSummary {
  const sum = (role: DiskFile['role']): number => files.filter((f) => f.role === role).reduce((n, f) => n + f.bytes, 0);
  const disk: DiskFigures = {
    containers: sum('container'), manifest: sum('manifest'), cache: sum('cache'), other: sum('other'), total: 0,
    cachePath, otherFiles: files.filter((f) => f.role === 'other').map((f) => f.path),
  };
  disk.total = disk.containers + disk.manifest + disk.cache + disk.other;
  const steps = figures(manifest.steps);
  return {
    originalBytes: steps.originalBytes,
    keyframes: figures(manifest.steps.filter((s) => s.keyframe)),
    residuals: figures(manifest.steps.filter((s) => !s.keyframe)),
    steps, disk, ratio: ratioOf(steps.originalBytes, disk.total),
  };
}

function times(ratio: number | null): string {
  return ratio === null ? '-' : `${ratio.toFixed(1)}x`;
}

function stepLine(what: string, f: StepFigures): string {
  if (f.steps === 0) return `${what}: none`;
  const range = f.steps > 1 ? ` (${times(f.lowest)} to ${times(f.highest)} per step)` : '';
  return `${what}: ${f.steps} step${f.steps === 1 ? '' : 's'}, ${f.originalBytes} -> ${f.containerBytes} bytes, ${times(f.ratio)}${range}`;
}

function cacheText(manifest: ChainManifest, d: DiskFigures): string {
  if (manifest.cache === null && d.cache === 0) return 'kept last step 0 (none kept: an append replays from the last keyframe; --cache DIR keeps one)';
  const where = manifest.cache === '.' || manifest.cache === null ? ' in the chain folder' : '';
  if (d.cache === 0) return `kept last step 0 (${d.cachePath ?? 'none'}${where}: missing, the next append rebuilds it)`;
  return `kept last step ${d.cache} (${d.cachePath}${where})`;
}

/**
 * The text of `excp chain ls`.
 * @param manifest the chain
 * @param summary its figures ({@link summarizeChain})
 * @returns one line per step, the figures per kind of step, every byte on disk, and the run's ratio
 */
export function formatChain(manifest: ChainManifest, summary: ChainSummary): string {
  const lines = [['step', 'kind', 'source', 'original', 'container', 'ratio'].join('\t')];
  for (const s of manifest.steps) {
    lines.push([s.step, s.keyframe ? 'keyframe' : `residual of ${s.base}`, s.source, s.originalBytes, s.containerBytes,
      times(ratioOf(s.originalBytes, s.containerBytes))].join('\t'));
  }
  const o = manifest.options;
  const what = manifest.kind === 'folder' ? '; checkpoint folders' : '';
  const d = summary.disk;
  const others = d.otherFiles.length ? ` (${d.otherFiles.slice(0, 3).join(', ')}${d.otherFiles.length > 3 ? ', ...' : ''})` : '';
  lines.push('', `${manifest.steps.length} steps, keyframe every ${manifest.keyframeEvery}; ${describeMethod(o)}${what}`,
    stepLine('keyframes', summary.keyframes),
    stepLine('residuals', summary.residuals),
    `on disk: ${d.total} bytes = containers ${d.containers} + chain.json ${d.manifest} + ${cacheText(manifest, d)} + other ${d.other}${others}`,
    `run: ${summary.originalBytes} bytes of checkpoints -> ${d.total} bytes on disk, ratio ${times(summary.ratio)} (containers alone ${times(summary.steps.ratio)})`);
  return `${lines.join('\n')}\n`;
}
