/**
 * A hand-written SVG chart of the fidelity experiment: the loss curves of
 * both runs overlaid (top) and checkpoint sizes per step on a log scale
 * (bottom). No dependencies; the output opens in any browser.
 */
import type { CompressedRun, RunCurve } from './experiment.js';

const WIDTH = 900;
const LEFT = 70;
const RIGHT = 40;
const TOP_PANEL = { y: 70, height: 300 };
const BOTTOM_PANEL = { y: 440, height: 200 };
const HEIGHT = 700;
const COLORS = { baseline: '#1f77b4', compressed: '#d62728', original: '#9e9e9e', grid: '#e0e0e0' };

function escapeXml(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** About `count` round tick values covering [low, high]. */
function niceTicks(low: number, high: number, count: number): number[] {
  const span = high - low || 1;
  const raw = span / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? raw;
  const ticks: number[] = [];
  for (let v = Math.ceil(low / step) * step; v <= high + 1e-9 * span; v += step) ticks.push(Number(v.toPrecision(12)));
  return ticks;
}

/** Exponential moving average (bias-corrected), to see the trend through batch noise. */
function smooth(values: Float64Array, decay: number): number[] {
  const out: number[] = [];
  let average = 0;
  values.forEach((v, i) => {
    average = decay * average + (1 - decay) * v;
    out.push(average / (1 - decay ** (i + 1)));
  });
  return out;
}

function formatBytes(bytes: number): string {
  if (bytes >= 1e6) return `${(bytes / 1e6).toPrecision(3)} MB`;
  if (bytes >= 1e3) return `${(bytes / 1e3).toPrecision(3)} kB`;
  return `${bytes} B`;
}

/**
 * Render the chart.
 * @param baseline the uncompressed run
 * @param compressed the compressed-in-the-loop run
 * @param title heading lines (settings, headline numbers)
 * @returns SVG document text
 */
export function renderFidelityChart(baseline: RunCurve, compressed: CompressedRun, title: readonly string[]): string {
  const steps = baseline.stepLosses.length;
  const plotWidth = WIDTH - LEFT - RIGHT;
  const xOf = (step: number): number => LEFT + (plotWidth * step) / Math.max(1, steps);
  const parts: string[] = [];
  const text = (x: number, y: number, body: string, extra = ''): void => {
    parts.push(`<text x="${x.toFixed(1)}" y="${y.toFixed(1)}" ${extra}>${escapeXml(body)}</text>`);
  };

  // Top panel: losses.
  const decay = 0.9;
  const curves = [
    { name: 'baseline', color: COLORS.baseline, smooth: smooth(baseline.stepLosses, decay), evals: baseline.evals },
    { name: 'compressed in the loop', color: COLORS.compressed, smooth: smooth(compressed.stepLosses, decay), evals: compressed.evals },
  ];
  // Skip the first few steps: the initial loss would flatten the interesting part.
  const from = Math.min(steps - 1, Math.floor(steps * 0.05));
  const shown = curves.flatMap((c) => [...c.smooth.slice(from), ...c.evals.flatMap((e) => [e.train, e.validation])]);
  const lossLow = Math.min(...shown);
  const lossHigh = Math.max(...shown);
  const pad = (lossHigh - lossLow) * 0.05 || 0.1;
  const yLoss = (v: number): number => TOP_PANEL.y + TOP_PANEL.height * (1 - (v - (lossLow - pad)) / (lossHigh - lossLow + 2 * pad));
  for (const t of niceTicks(lossLow - pad, lossHigh + pad, 6)) {
    const y = yLoss(t);
    parts.push(`<line x1="${LEFT}" x2="${WIDTH - RIGHT}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="${COLORS.grid}"/>`);
    text(LEFT - 8, y + 4, t.toString(), 'text-anchor="end"');
  }
  for (const e of compressed.evals) {
    parts.push(`<line x1="${xOf(e.step).toFixed(1)}" x2="${xOf(e.step).toFixed(1)}" y1="${TOP_PANEL.y}" y2="${TOP_PANEL.y + TOP_PANEL.height}" stroke="${COLORS.grid}" stroke-dasharray="3 3"/>`);
  }
  for (const c of curves) {
    const points = c.smooth.map((v, i) => [i + 1, v] as const).filter(([s]) => s > from);
    parts.push(`<polyline fill="none" stroke="${c.color}" stroke-width="1.5" stroke-opacity="0.8" points="${points.map(([s, v]) => `${xOf(s).toFixed(1)},${yLoss(v).toFixed(1)}`).join(' ')}"/>`);
    parts.push(`<polyline fill="none" stroke="${c.color}" stroke-width="2" stroke-dasharray="6 3" points="${c.evals.map((e) => `${xOf(e.step).toFixed(1)},${yLoss(e.validation).toFixed(1)}`).join(' ')}"/>`);
    for (const e of c.evals) parts.push(`<circle cx="${xOf(e.step).toFixed(1)}" cy="${yLoss(e.validation).toFixed(1)}" r="3.5" fill="${c.color}"/>`);
  }
  text(LEFT, TOP_PANEL.y - 10, 'loss (nats/char): solid = training batch loss (EMA 0.9), dashed + dots = validation loss at checkpoints', 'font-size="12"');
  curves.forEach((c, i) => {
    const x = WIDTH - RIGHT - 200;
    const y = TOP_PANEL.y + 18 + 18 * i;
    parts.push(`<line x1="${x}" x2="${x + 24}" y1="${y - 4}" y2="${y - 4}" stroke="${c.color}" stroke-width="3"/>`);
    text(x + 30, y, c.name);
  });

  // Bottom panel: sizes on a log scale.
  const sizes = compressed.checkpoints.flatMap((r) => [r.originalBytes, r.compressedBytes]);
  const logLow = Math.floor(Math.log10(Math.max(1, Math.min(...sizes))));
  const logHigh = Math.ceil(Math.log10(Math.max(...sizes)));
  const ySize = (bytes: number): number =>
    BOTTOM_PANEL.y + BOTTOM_PANEL.height * (1 - (Math.log10(bytes) - logLow) / Math.max(1, logHigh - logLow));
  for (let p = logLow; p <= logHigh; p++) {
    const y = ySize(10 ** p);
    parts.push(`<line x1="${LEFT}" x2="${WIDTH - RIGHT}" y1="${y.toFixed(1)}" y2="${y.toFixed(1)}" stroke="${COLORS.grid}"/>`);
    text(LEFT - 8, y + 4, formatBytes(10 ** p), 'text-anchor="end"');
  }
  const barWidth = Math.max(4, Math.min(24, (plotWidth / Math.max(1, compressed.checkpoints.length)) * 0.3));
  const baseY = BOTTOM_PANEL.y + BOTTOM_PANEL.height;
  for (const r of compressed.checkpoints) {
    const x = xOf(r.step);
    const yo = ySize(r.originalBytes);
    const yc = ySize(r.compressedBytes);
    parts.push(`<rect x="${(x - barWidth).toFixed(1)}" y="${yo.toFixed(1)}" width="${barWidth.toFixed(1)}" height="${(baseY - yo).toFixed(1)}" fill="${COLORS.original}"/>`);
    parts.push(`<rect x="${x.toFixed(1)}" y="${yc.toFixed(1)}" width="${barWidth.toFixed(1)}" height="${(baseY - yc).toFixed(1)}" fill="${COLORS.compressed}"/>`);
    text(x + barWidth / 2, yc - 4, `${r.ratio.toFixed(0)}x`, 'text-anchor="middle" font-size="10"');
  }
  text(LEFT, BOTTOM_PANEL.y - 10, 'checkpoint size per step (log scale): grey = original safetensors, red = compressed (label: ratio; first = keyframe)', 'font-size="12"');

  // Shared x axis ticks under both panels.
  for (const t of niceTicks(0, steps, 10)) {
    text(xOf(t), TOP_PANEL.y + TOP_PANEL.height + 16, String(t), 'text-anchor="middle"');
    text(xOf(t), baseY + 16, String(t), 'text-anchor="middle"');
  }
  text(WIDTH / 2, baseY + 36, 'step', 'text-anchor="middle"');
  for (const panel of [TOP_PANEL, BOTTOM_PANEL]) {
    parts.push(`<rect x="${LEFT}" y="${panel.y}" width="${plotWidth}" height="${panel.height}" fill="none" stroke="#444"/>`);
  }
  title.forEach((line, i) => text(LEFT, 22 + 18 * i, line, i === 0 ? 'font-size="15" font-weight="bold"' : 'font-size="13"'));
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${HEIGHT}" viewBox="0 0 ${WIDTH} ${HEIGHT}" font-family="sans-serif" font-size="11">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="white"/>`,
    ...parts,
    '</svg>',
    '',
  ].join('\n');
}
