/**
 * Worker thread entry: runs the chunk codec for the pool. The codec is pure,
 * so a worker only unpacks a message, calls it and posts the result back,
 * transferring (not copying) the large buffers.
 */
import { parentPort } from 'node:worker_threads';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { decodeChunk, encodeChunk } from './codec.js';
import { ExcpError } from './errors.js';
import type { WorkerRequest, WorkerResponse } from './pool.js';

/*
 * A worker's JS heap stays tiny while every chunk brings megabytes of
 * ArrayBuffers (transferred in) and makes more; V8 only collects them when
 * the external memory has grown by tens of MB, so each worker held 60-80 MB
 * of dead chunk buffers. A full GC after each chunk (a few milliseconds on
 * a heap of a few MB, against tens of milliseconds of coding) frees their
 * backing stores at once; a minor GC freed less, as the chunk's arrays are
 * often promoted while it is being coded.
 */
setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as ((options?: { type: 'minor' | 'major' }) => void) | undefined;

parentPort?.on('message', (request: WorkerRequest) => {
  let response: WorkerResponse;
  const transfer: ArrayBuffer[] = [];
  try {
    if (request.kind === 'encode') {
      const result = encodeChunk(request.layout, request.input, request.options);
      transfer.push(result.payload.buffer as ArrayBuffer);
      // The input buffers go back for reuse (see BufferRecycler).
      const { weight, base, expAvg, expAvgSq } = request.input;
      const inputs = [...new Set([weight, base, expAvg, expAvgSq].filter((b) => b !== null).map((b) => b.buffer as ArrayBuffer))]
        .filter((b) => b !== result.payload.buffer);
      transfer.push(...inputs);
      response = { id: request.id, encoded: result, inputs };
    } else {
      const result = decodeChunk(request.layout, request.payload, request.count, request.base, request.what);
      for (const b of [result.weight, result.expAvg, result.expAvgSq]) if (b) transfer.push(b.buffer as ArrayBuffer);
      response = { id: request.id, decoded: result };
    }
  } catch (e) {
    const err = e instanceof ExcpError ? e : new ExcpError('ERR_CORRUPT', `codec: ${(e as Error).message}`);
    response = { id: request.id, error: { code: err.code, message: err.message } };
  }
  parentPort!.postMessage(response, [...new Set(transfer)]);
  collect?.({ type: 'major' });
});
