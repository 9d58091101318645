/**
 * Worker thread entry: runs the pool's jobs (lib/pool/jobs.ts). A worker
 * reads a job's bytes, codes it, writes what it restored and posts the
 * result back, transferring (not copying) the large buffers, with its
 * thread's CPU time so far (lib/pool/cpu.ts).
 */
import { read } from 'node:fs';
import { parentPort } from 'node:worker_threads';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { type ErrorCode, ExcpError } from '../core/errors.js';
import { threadCpuSeconds } from './cpu.js';
import { type FileIo, type JobInputs, type JobResult, SYNC_IO, codeJob, readJobInputs } from './jobs.js';
import type { WorkerRequest, WorkerResponse } from './pool.js';

/*
 * A worker's JS heap stays tiny while every chunk brings megabytes of
 * ArrayBuffers (transferred in) and makes more; V8 only collects them when
 * the external memory has grown by tens of MB, so each worker held 60-80 MB
 * of dead chunk buffers. A full GC after each chunk (a few milliseconds on
 * a heap of a few MB, against tens of milliseconds of coding) frees their
 * backing stores at once; a minor GC freed less, as the chunk's arrays are
 * often promoted while it is being coded. (The large inputs go back to the
 * main thread with the answer, or are read into this thread's reused
 * buffers, so what is left is the decoded symbols.)
 *
 * The gc function comes from a context created while --expose-gc is on; the
 * flag is process-wide (V8 flags are shared by all isolates), so it is
 * switched off again at once: contexts created later, in this thread or in
 * the application that uses excp, do not get a global `gc`.
 */
function internalGc(): ((options?: { type: 'minor' | 'major' }) => void) | undefined {
  const given = (globalThis as { gc?: (options?: { type: 'minor' | 'major' }) => void }).gc;
  if (typeof given === 'function') return given; // the process runs with --expose-gc already: leave the flag alone
  try {
    setFlagsFromString('--expose-gc');
    return runInNewContext('gc') as ((options?: { type: 'minor' | 'major' }) => void) | undefined;
  } catch {
    return undefined;
  } finally {
    setFlagsFromString('--no-expose-gc');
  }
}
const collect = internalGc();

/** The buffers of a result that go back to the main thread. */
function resultBuffers(result: JobResult): ArrayBuffer[] {
  if (result.kind === 'encode') return [result.record.buffer as ArrayBuffer];
  if (result.kind === 'decode') {
    const { weight, expAvg, expAvgSq } = result.decoded;
    return [weight, expAvg, expAvgSq].filter((b) => b !== null && b.length > 0).map((b) => b!.buffer as ArrayBuffer);
  }
  return [];
}

/** The buffers the main thread sent with a request (returned for reuse, see BufferRecycler). */
function requestBuffers(request: WorkerRequest): ArrayBuffer[] {
  const job = request.job;
  const views = job.kind === 'encode' ? (job.input ? [job.input.weight, job.input.base, job.input.expAvg, job.input.expAvgSq] : [])
    : job.kind === 'decode' ? [job.payload, job.base] : [];
  return [...new Set(views.filter((v) => v !== null).map((v) => v!.buffer as ArrayBuffer))];
}

/*
 * Two jobs at a time: the pool sends a worker its next job while it codes
 * one, and the worker reads that job's bytes (libuv's threads) meanwhile,
 * so the reads overlap the coding as they did when the main thread read
 * (one worker compresses as fast as before: 160m, --threads 1, 11.6-12.7 s
 * against 13.6-17.8 s for the main thread's reads, in turns on a loaded
 * machine). The coding is one job at a time, in arrival order. Restored
 * bytes are written at once, blocking: written through libuv while the
 * next chunk decodes, they stayed alive longer, and peak RSS grew by 70-120
 * MB per worker (160m restore: 214 and 331 MB at 1 and 2 workers, against
 * 142 and 175).
 */

/** Reads through libuv's thread pool (the worker codes meanwhile); writes at once. */
const WORKER_IO: FileIo = {
  read: (fd, into, offset, length, position) => new Promise((resolve, reject) => read(fd, into, offset, length, position, (e, n) => (e ? reject(e) : resolve(n)))),
  write: SYNC_IO.write,
};

interface Pending {
  request: WorkerRequest;
  inputs: JobInputs | null;
  error: unknown;
  ready: boolean;
}

const queue: Pending[] = [];
let coding = false;

function failure(id: number, e: unknown): WorkerResponse {
  const err = e instanceof ExcpError ? e : new ExcpError(ioCode(e), `${ioCode(e) === 'ERR_CORRUPT' ? 'codec' : 'pool'}: ${(e as Error).message}`);
  return { id, error: { code: err.code, message: err.message }, cpu: threadCpuSeconds() };
}

/** A full disk (or quota, or file size limit) from a worker's write reads as it would from the main thread's (lib/io/output.ts). */
function ioCode(e: unknown): ErrorCode {
  const code = (e as NodeJS.ErrnoException).code;
  if (code === 'ENOSPC' || code === 'EDQUOT' || code === 'EFBIG') return 'ERR_NO_SPACE';
  return code ? 'ERR_IO' : 'ERR_CORRUPT';
}

function code(): void {
  if (coding) return;
  const head = queue[0];
  if (!head?.ready) return;
  queue.shift();
  coding = true;
  // Let messages that came meanwhile start their reads before this thread is busy.
  setImmediate(() => {
    const { request } = head;
    let written: Promise<WorkerResponse>;
    try {
      if (head.error !== null) throw head.error;
      const { result, written: done } = codeJob(request.job, head.inputs!, WORKER_IO);
      const outputs = resultBuffers(result);
      const inputs = requestBuffers(request).filter((b) => !outputs.includes(b));
      const response: WorkerResponse = { id: request.id, result, inputs, cpu: null };
      written = done.then(() => response);
    } catch (e) {
      written = Promise.resolve(failure(request.id, e));
    }
    coding = false;
    collect?.({ type: 'major' });
    code();
    written.then((response) => {
      if ('result' in response) response.cpu = threadCpuSeconds();
      const transfer = 'result' in response ? [...new Set([...resultBuffers(response.result), ...response.inputs])] : [];
      parentPort!.postMessage(response, transfer);
    }, (e: unknown) => parentPort!.postMessage(failure(request.id, e)));
  });
}

parentPort?.on('message', (request: WorkerRequest) => {
  const pending: Pending = { request, inputs: null, error: null, ready: false };
  queue.push(pending);
  readJobInputs(request.job, WORKER_IO).then((inputs) => {
    pending.inputs = inputs;
  }, (e: unknown) => {
    pending.error = e;
  }).finally(() => {
    pending.ready = true;
    code();
  });
});
