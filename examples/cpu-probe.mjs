// A preload for measuring the CLI (examples/bench.ts): when the process
// exits it writes one JSON line to the file named by $EXCP_CPU_REPORT with
// the CPU seconds of the main thread, of the pool's workers and of the
// whole process (lib/pool/cpu.ts), and the peak resident memory (VmHWM of
// /proc/self/status, in KiB).
//
//   EXCP_CPU_REPORT=out.json node --import ./examples/cpu-probe.mjs dist/lib/cli.js compress ...
//
// Plain JavaScript so that it preloads without a TypeScript loader (which
// would add its own memory to what is measured); it needs `npm run build`.
import { appendFileSync, readFileSync } from 'node:fs';

const { cpuReport } = await import(new URL('../dist/lib/pool/cpu.js', import.meta.url).href);
const target = process.env.EXCP_CPU_REPORT;

process.on('exit', () => {
  if (!target) return;
  let peakKb = null;
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'latin1'));
    if (m) peakKb = Number(m[1]);
  } catch {
    // not Linux: no peak
  }
  appendFileSync(target, `${JSON.stringify({ ...cpuReport(), peakKb })}\n`);
});
