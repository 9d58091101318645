/**
 * Worker thread entry: runs the pool's jobs (lib/pool/jobs.ts). A worker
 * unpacks a message, runs the job and posts the result back, transferring
 * (not copying) the large buffers, with its thread's CPU time so far
 * (lib/pool/cpu.ts).
 */
import { parentPort } from 'node:worker_threads';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { ExcpError } from '../core/errors.js';
import { threadCpuSeconds } from './cpu.js';
import { type JobResult, runJob } from './jobs.js';
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

parentPort?.on('message', (request: WorkerRequest) => {
  let response: WorkerResponse;
  let transfer: ArrayBuffer[] = [];
  try {
    const result = runJob(request.job);
    const outputs = resultBuffers(result);
    const inputs = requestBuffers(request).filter((b) => !outputs.includes(b));
    transfer = [...new Set([...outputs, ...inputs])];
    response = { id: request.id, result, inputs, cpu: threadCpuSeconds() };
  } catch (e) {
    const err = e instanceof ExcpError ? e : new ExcpError('ERR_CORRUPT', `codec: ${(e as Error).message}`);
    response = { id: request.id, error: { code: err.code, message: err.message }, cpu: threadCpuSeconds() };
  }
  parentPort!.postMessage(response, transfer);
  collect?.({ type: 'major' });
});
