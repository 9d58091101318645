/**
 * inspect and verify as library calls: what a container holds (a report
 * built from its header and footer, read by random access), and whether it
 * is intact (every record decoded and checked, nothing written).
 */
import { describeMethod } from '../core/options.js';
import { printable } from '../core/text.js';
import type { ContainerHeader } from '../model/checkpoint.js';
import { entryRawBytes } from '../model/pack.js';
import type { ParamMapInfo } from '../formats/optimizer-map.js';
import type { DcpRankInfo } from '../formats/dcp/checkpoint.js';
import { dcpInfoOf } from './ranks.js';
import { readContainerFile } from './open.js';
import { verifyContainerFile } from './restore.js';

/** One line of the inspect report. */
export interface InspectTensor {
  name: string;
  dtype: string;
  shape: number[];
  role: string;
  mode: string;
  keptPercent: number | null;
  originalBytes: number;
}

/** An entry (parameter + moments) in the report. */
export interface InspectEntry {
  name: string;
  mode: string;
  parameters: number;
  originalBytes: number;
  codedBytes: number;
  bitsPerParameter: number;
  ratio: number;
  keptWeightsPercent: number | null;
  keptMomentsPercent: number | null;
  /** Empirical entropy of the coded symbols, bits per parameter (null when the file does not record it). */
  entropyBitsPerParameter: number | null;
  /** Coded symbol streams (tables included), bits per parameter (null when not recorded). */
  symbolBitsPerParameter: number | null;
  /**
   * Relative errors of the restored streams as the encoder measured them
   * (method 2's lossy entries, format 4 on; null otherwise): the weight's
   * against its update for a residual (budget: options.updateError), against
   * the weight for a keyframe; m and v against themselves.
   */
  errors: { weight: number; m: number; v: number } | null;
}

/** The inspect report. */
export interface InspectReport {
  file: string;
  tool: string;
  options: ContainerHeader['options'];
  containerBytes: number;
  originalBytes: number;
  ratio: number;
  baseFingerprint: string | null;
  targetFingerprint: string;
  /** Folder containers: the files restore writes (path and kind). */
  files?: { path: string; kind: string }[];
  /** Folder containers: optimizer param id -> parameter name, with confidence (header.info.paramMap). */
  paramMap?: ParamMapInfo;
  /** One rank's container of a distributed checkpoint (header.info.dcp). */
  dcp?: DcpRankInfo;
  entries: InspectEntry[];
  /** Totals over lossy entries: empirical entropy of the coded symbols and their coded size, in bits (null when not recorded). */
  entropyBits: number | null;
  symbolBits: number | null;
}

/**
 * Per-entry sizes, kept fractions and ratios.
 * @param path container file
 */
export async function inspectContainer(path: string): Promise<InspectReport> {
  const { header, footer, size } = await readContainerFile(path);
  let originalBytes = 0;
  const entries = header.entries.map((e, i) => {
    const bytes = entryRawBytes(header.tensors, e);
    originalBytes += bytes;
    const f = footer.entries[i]!;
    const mode = e.kind === 'pack' ? 'exact (pack)' : e.kind === 'plain' ? (e.base ? 'exact (xor base)' : 'exact')
      : e.exactWeight ? (e.exactMoments ? 'lossless' : 'keyframe') : 'residual';
    const first = header.tensors[e.weight]!.name;
    return {
      name: e.kind === 'pack' ? `${e.members!.length} tensors: ${first}, ...` : first,
      mode,
      parameters: e.elements,
      originalBytes: bytes,
      codedBytes: f.codedBytes,
      bitsPerParameter: e.elements ? (8 * f.codedBytes) / e.elements : 0,
      ratio: f.codedBytes ? bytes / f.codedBytes : 0,
      keptWeightsPercent: e.kind === 'param' && !e.exactWeight && e.elements ? (100 * f.keptWeights) / e.elements : null,
      keptMomentsPercent: e.kind === 'param' && !e.exactMoments && e.elements ? (100 * f.keptMoments) / e.elements : null,
      entropyBitsPerParameter: f.entropyBits !== undefined && e.elements ? f.entropyBits / e.elements : null,
      symbolBitsPerParameter: f.symbolBits !== undefined && e.elements ? f.symbolBits / e.elements : null,
      errors: f.errors ?? null,
    };
  });
  const recorded = footer.entries.every((f) => f.entropyBits !== undefined && f.symbolBits !== undefined);
  return {
    file: path, tool: header.tool, options: header.options, containerBytes: size, originalBytes,
    ratio: originalBytes / size, baseFingerprint: footer.baseFingerprint, targetFingerprint: footer.targetFingerprint, entries,
    ...(header.files.some((f) => f.path !== null) ? { files: header.files.map((f) => ({ path: f.path ?? '', kind: f.kind })) } : {}),
    ...(header.info?.['paramMap'] ? { paramMap: header.info['paramMap'] as ParamMapInfo } : {}),
    ...(dcpInfoOf(header) ? { dcp: dcpInfoOf(header)! } : {}),
    entropyBits: recorded ? footer.entries.reduce((s, f) => s + (f.entropyBits ?? 0), 0) : null,
    symbolBits: recorded ? footer.entries.reduce((s, f) => s + (f.symbolBits ?? 0), 0) : null,
  };
}

/** Text form of an inspect report. */
export function formatInspect(r: InspectReport): string {
  const pct = (x: number | null) => (x === null ? '-' : `${x.toFixed(2)}%`);
  const lines = [
    `${printable(r.file)}: ${printable(r.tool)}, ${describeMethod(r.options)}`,
    `base fingerprint ${r.baseFingerprint ?? '(none: keyframe)'}, restores to ${r.targetFingerprint}`,
    '',
    ['tensor', 'mode', 'params', 'kept dW', 'kept m,v', 'bits/param', 'entropy bits/param', 'ratio', 'W err', 'm err', 'v err'].join('\t'),
  ];
  const bits = (x: number | null) => (x === null ? '-' : x.toFixed(3));
  const err = (x: number | undefined) => (x === undefined ? '-' : x.toPrecision(2));
  for (const e of r.entries) {
    lines.push([printable(e.name), e.mode, e.parameters, pct(e.keptWeightsPercent), pct(e.keptMomentsPercent), e.bitsPerParameter.toFixed(3), bits(e.entropyBitsPerParameter), `${e.ratio.toFixed(1)}x`,
      err(e.errors?.weight), err(e.errors?.m), err(e.errors?.v)].join('\t'));
  }
  lines.push('', `total: ${r.originalBytes} bytes -> ${r.containerBytes} bytes, ratio ${r.ratio.toFixed(1)}x`);
  lines.push(...errorLines(r));
  if (r.files) lines.push('', `folder: ${r.files.length} files: ${r.files.map((f) => `${printable(f.path)} (${f.kind})`).join(', ')}`);
  if (r.dcp) lines.push(`distributed checkpoint: rank ${r.dcp.rank}'s files, of ranks ${r.dcp.ranks.join(', ')} (.metadata fingerprint ${r.dcp.metadata})`);
  if (r.paramMap) {
    const m = r.paramMap;
    const methods = new Map<string, number>();
    for (const [, , , method] of m.ids) methods.set(method, (methods.get(method) ?? 0) + 1);
    lines.push(`param map (${printable(m.file)}): ${m.ids.length} ids named, ${m.unmapped.length} unmapped (moments coded exactly), lowest confidence ${m.minConfidence}; by ${[...methods].map(([k, n]) => `${k} ${n}`).join(', ')}`);
    for (const [id, name, confidence, method] of m.ids) lines.push(`  id ${id}\t${printable(name)}\t${confidence}\t${printable(method)}`);
    for (const [id, options] of m.ambiguous ?? []) lines.push(`  id ${id}\tunmapped: nothing told apart ${options.map(printable).join(' | ')}`);
  }
  if (r.entropyBits !== null && r.symbolBits !== null && r.entropyBits > 0) {
    lines.push(`coded symbols: ${r.symbolBits} bits against an empirical entropy of ${r.entropyBits} bits (+${(100 * (r.symbolBits / r.entropyBits - 1)).toFixed(2)}%)`);
  }
  return `${lines.join('\n')}\n`;
}

/**
 * Check every CRC, the base, and the restored fingerprint without writing anything.
 * @param path container file
 * @param base base checkpoint path, when the container needs one
 * @param threads worker threads (default 'auto')
 * @param tmp folder for what waits when the base is a stream
 * @param memory memory budget (default 256M)
 */
export async function verifyContainer(path: string, base: string | undefined, threads?: number | 'auto', tmp?: string, memory?: number | string): Promise<{ chunks: number; base: boolean; target: string }> {
  const { header, footer } = await readContainerFile(path);
  await verifyContainerFile(path, { base, threads, tmp, memory });
  const chunks = footer.entries.reduce((s, e) => s + e.offsets.length, 0);
  return { chunks, base: header.entries.some((e) => e.base), target: footer.targetFingerprint };
}

/**
 * One line per kind of lossy entry (residual, keyframe): the range of each
 * stream's relative error over the tensors, and its parameter-weighted rms.
 */
function errorLines(r: InspectReport): string[] {
  const out: string[] = [];
  for (const mode of ['residual', 'keyframe']) {
    const rows = r.entries.filter((e) => e.mode === mode && e.errors !== null);
    if (!rows.length) continue;
    const params = rows.reduce((s, e) => s + e.parameters, 0);
    const stream = (k: 'weight' | 'm' | 'v'): string => {
      const xs = rows.map((e) => e.errors![k]);
      const rms = Math.sqrt(rows.reduce((s, e) => s + e.parameters * e.errors![k] ** 2, 0) / params);
      return `${rms.toPrecision(2)} (${Math.min(...xs).toPrecision(2)} to ${Math.max(...xs).toPrecision(2)})`;
    };
    const w = mode === 'residual' ? `weight update ${stream('weight')}${r.options.updateError !== undefined ? `, budget ${r.options.updateError}` : ''}` : `weight ${stream('weight')}`;
    out.push(`relative error, ${rows.length} ${mode} tensors (parameter-weighted rms, range): ${w}; m ${stream('m')}; v ${stream('v')}`);
  }
  return out;
}
