/**
 * Worker thread entry: runs the chunk codec for the pool. The codec is pure,
 * so a worker only unpacks a message, calls it and posts the result back,
 * transferring (not copying) the large buffers.
 */
import { parentPort } from 'node:worker_threads';
import { decodeChunk, encodeChunk } from './codec.js';
import { ExcpError } from './errors.js';
import type { WorkerRequest, WorkerResponse } from './pool.js';

parentPort?.on('message', (request: WorkerRequest) => {
  let response: WorkerResponse;
  const transfer: ArrayBuffer[] = [];
  try {
    if (request.kind === 'encode') {
      const result = encodeChunk(request.layout, request.input, request.options);
      transfer.push(result.payload.buffer as ArrayBuffer);
      response = { id: request.id, encoded: result };
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
});
