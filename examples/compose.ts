/**
 * The stages composed by hand with stream.pipeline(): what compress() and
 * restore() do inside, spelled out.
 *
 *   npx tsx examples/compose.ts CURRENT.safetensors BASE.safetensors OUT.excp
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { ChunkDecoder, ChunkEncoder, ChunkSource, ContainerReader, ContainerWriter, SafetensorsFile, StreamWriter, planHeader, resolveOptions } from '../lib/index.js';

const [currentPath, basePath, outPath] = process.argv.slice(2);
if (!currentPath || !basePath || !outPath) {
  console.error('usage: npx tsx examples/compose.ts CURRENT.safetensors BASE.safetensors OUT.excp');
  process.exit(2);
}
const current = await SafetensorsFile.open(currentPath);
const base = await SafetensorsFile.open(basePath);
const header = planHeader(current, base.byName, resolveOptions({ bits: 4 }));

// compress: read chunks (with base bytes) -> residual, prune, quantize, entropy -> frame into a container
const encoder = new ChunkEncoder(header, { threads: 2 });
await pipeline(new ChunkSource(header, current, base), encoder, new ContainerWriter(header), createWriteStream(outPath));
await encoder.close();

// restore: parse the container -> decode chunks against the base -> safetensors bytes (counted here)
let bytes = 0;
const decoder = new ChunkDecoder(base, { threads: 2 });
await pipeline(createReadStream(outPath), new ContainerReader(), decoder, new StreamWriter(),
  new Writable({ write(chunk: Uint8Array, _e, cb) { bytes += chunk.length; cb(); } }));
await decoder.close();
console.log(`${currentPath}: ${current.size} bytes -> ${outPath}; restore produced ${bytes} bytes with matching fingerprints`);
await current.close();
await base.close();
