/**
 * CPU time by thread: what the main thread spends (the serial part of a run:
 * by Amdahl's law it bounds the speed-up any number of cores can give) and
 * what the pool's workers spend. examples/bench.ts reports both per GB and
 * projects the throughput of 4, 16 and 64 cores from them.
 *
 * A thread's own CPU time comes from Linux's /proc/thread-self/schedstat
 * (nanoseconds on the CPU) or, without it, /proc/thread-self/stat (clock
 * ticks); elsewhere it is unknown (null). Reading it is one small file read,
 * so a worker reports its total with every answer and the pool keeps the
 * latest; the totals of closed pools add up in this module, per process.
 */
import { readFileSync } from 'node:fs';

/** Clock ticks per second of /proc/.../stat (USER_HZ, 100 on every Linux port). */
const TICKS_PER_SECOND = 100;

let source: 'schedstat' | 'stat' | null | undefined;

/**
 * CPU seconds the calling thread has used so far.
 * @returns seconds, or null where the platform does not say
 */
export function threadCpuSeconds(): number | null {
  if (source === undefined || source === 'schedstat') {
    try {
      const ns = Number(readFileSync('/proc/thread-self/schedstat', 'latin1').split(' ')[0]);
      // schedstat reads 0 where the kernel keeps no scheduler statistics: use stat then.
      if (Number.isFinite(ns) && (ns > 0 || source === 'schedstat')) {
        source = 'schedstat';
        return ns / 1e9;
      }
    } catch {
      // not Linux, or no schedstat: try stat
    }
    if (source === 'schedstat') return null;
    source = 'stat';
  }
  if (source === 'stat') {
    try {
      const text = readFileSync('/proc/thread-self/stat', 'latin1');
      // Fields after the command name (which may hold spaces) start at ") "; utime and stime are the 12th and 13th.
      const fields = text.slice(text.lastIndexOf(')') + 2).split(' ');
      return (Number(fields[11]) + Number(fields[12])) / TICKS_PER_SECOND;
    } catch {
      source = null;
    }
  }
  return null;
}

/** CPU seconds of workers whose pools have closed, per process. */
let closedWorkerSeconds = 0;
/** Pools still open: their workers' latest totals. */
const openPools = new Set<{ workerCpuSeconds(): number }>();
/** The most workers one pool of this process started. */
let mostWorkers = 0;

/**
 * Track a pool's workers until it closes.
 * @param pool reports its workers' CPU seconds so far, and its size
 * @returns call when the pool has closed (adds its final total)
 */
export function trackWorkerCpu(pool: { workerCpuSeconds(): number; readonly size: number }): () => void {
  openPools.add(pool);
  mostWorkers = Math.max(mostWorkers, pool.size);
  return () => {
    if (!openPools.delete(pool)) return;
    closedWorkerSeconds += pool.workerCpuSeconds();
  };
}

/** CPU time of a process by thread, in seconds. */
export interface CpuReport {
  /** The calling (main) thread: the serial part. */
  main: number | null;
  /** Every worker of every pool, closed or open, as last reported. */
  workers: number;
  /** The most workers one pool started (0: every job ran in the main thread). */
  threads: number;
  /** The whole process (every thread: main, workers, libuv's I/O threads, V8's GC and compiler threads). */
  process: number;
}

/**
 * CPU seconds so far, by thread.
 * @returns main thread, workers and whole process
 */
export function cpuReport(): CpuReport {
  let workers = closedWorkerSeconds;
  for (const pool of openPools) workers += pool.workerCpuSeconds();
  const usage = process.cpuUsage();
  return { main: threadCpuSeconds(), workers, threads: mostWorkers, process: (usage.user + usage.system) / 1e6 };
}
