/**
 * Worker thread entry: runs the chunk codec for the pool. The codec is pure,
 * so a worker only unpacks a message, calls it and posts the result back,
 * transferring (not copying) the large buffers.
 */
import { parentPort } from 'node:worker_threads';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { decodeChunk, encodeChunk } from '../method/codec.js';
import { ExcpError } from '../core/errors.js';
import { type WorkerRequest, type WorkerResponse, inputBuffers } from './pool.js';

/*
 * A worker's JS heap stays tiny while every chunk brings megabytes of
 * ArrayBuffers (transferred in) and makes more; V8 only collects them when
 * the external memory has grown by tens of MB, so each worker held 60-80 MB
 * of dead chunk buffers. A full GC after each chunk (a few milliseconds on
 * a heap of a few MB, against tens of milliseconds of coding) frees their
 * backing stores at once; a minor GC freed less, as the chunk's arrays are
 * often promoted while it is being coded. (The large inputs go back to the
 * main thread with the answer, so what is left is the decoded symbols.)
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

parentPort?.on('message', (request: WorkerRequest) => {
  let response: WorkerResponse;
  const transfer: ArrayBuffer[] = [];
  try {
    if (request.kind === 'encode') {
      const result = encodeChunk(request.layout, request.input, request.options, request.position);
      transfer.push(result.payload.buffer as ArrayBuffer);
      // The input buffers go back for reuse (see BufferRecycler).
      const inputs = inputBuffers(request.input).filter((b) => b !== result.payload.buffer);
      transfer.push(...inputs);
      response = { id: request.id, encoded: result, inputs };
    } else {
      const result = decodeChunk(request.layout, request.payload, request.count, request.base, request.what, request.position);
      const outputs = [result.weight, result.expAvg, result.expAvgSq].filter((b) => b !== null).map((b) => b.buffer as ArrayBuffer);
      transfer.push(...outputs);
      // The payload and base buffers go back too (the base for reuse, see BufferRecycler).
      const inputs = [...new Set([request.payload, request.base].filter((b) => b !== null).map((b) => b.buffer as ArrayBuffer))]
        .filter((b) => !outputs.includes(b));
      transfer.push(...inputs);
      response = { id: request.id, decoded: result, inputs };
    }
  } catch (e) {
    const err = e instanceof ExcpError ? e : new ExcpError('ERR_CORRUPT', `codec: ${(e as Error).message}`);
    response = { id: request.id, error: { code: err.code, message: err.message } };
  }
  parentPort!.postMessage(response, [...new Set(transfer)]);
  collect?.({ type: 'major' });
});
