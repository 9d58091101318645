/**
 * Synthetic Hugging Face Trainer checkpoint folders, any size, in bounded
 * memory: the weights of examples/synthetic.ts as sharded safetensors
 * (`model-0000k-of-0000n.safetensors` + `model.safetensors.index.json`) and
 * the Adam moments as a `torch.save` zip, `optimizer.pt`, laid out as torch
 * writes it (the layout of spec/fixtures/torch2/trainer/sharded: a protocol-2
 * `data.pkl` of `{'state': {id: {'step', 'exp_avg', 'exp_avg_sq'}},
 * 'param_groups': [...]}` and one STORED entry per storage, 64-byte
 * aligned), plus a small `trainer_state.json`.
 *
 * Used by examples/bench.ts for folder measurements; nothing here is
 * committed data. The parameter order of the optimizer is the model's, and
 * it is also written as a JSON list (pass it as --param-map), so compress
 * needs no inference.
 */
import { createWriteStream, mkdirSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import { crc32 } from '../lib/core/crc32.js';
import { fromFloat32 } from '../lib/core/dtype.js';
import { buildSafetensorsHeader } from '../lib/formats/safetensors.js';
import { ZipWriter } from '../spec/support/zip-writer.js';
import { type SyntheticParam, syntheticChunk } from './synthetic.js';

/** Options of {@link writeSyntheticFolder}. */
export interface SyntheticFolderOptions {
  seed?: number;
  /** Safetensors shards of the weights (default 2). */
  shards?: number;
  /** Elements generated at a time (default 2^20). */
  chunk?: number;
}

type Write = (bytes: Uint8Array) => Promise<void>;

async function withFile(path: string, body: (write: Write) => Promise<void>): Promise<void> {
  const out = createWriteStream(path);
  const write: Write = async (b) => {
    if (!out.write(b)) await once(out, 'drain');
  };
  await body(write);
  out.end();
  await once(out, 'finish');
}

function elements(p: SyntheticParam): number {
  return p.shape.reduce((a, b) => a * b, 1);
}

/** The chunks of one of a parameter's tensors at a step, as float32 bytes. */
function* tensorChunks(p: SyntheticParam, kind: 'w' | 'm' | 'v', seed: number, step: number, chunk: number): Generator<Uint8Array> {
  const n = elements(p);
  for (let s = 0; s < n; s += chunk) {
    const g = syntheticChunk(p, s, Math.min(chunk, n - s), seed, step);
    const values = kind === 'w' ? (step === 0 ? g.previous : g.current) : kind === 'm' ? g.m : g.v;
    yield fromFloat32(values, 'F32');
  }
}

/** Split the parameters into `shards` runs of about equal bytes. */
function shardsOf(params: SyntheticParam[], shards: number): SyntheticParam[][] {
  const total = params.reduce((s, p) => s + elements(p), 0);
  const out: SyntheticParam[][] = [[]];
  let acc = 0;
  for (const p of params) {
    if (acc >= (total * out.length) / shards && out.length < shards) out.push([]);
    out[out.length - 1]!.push(p);
    acc += elements(p);
  }
  return out;
}

/*
 * A minimal protocol-2 pickle writer: the opcodes torch's pickler emits for
 * an optimizer state_dict (no memo: the unpickler does not need one).
 */
class Pickle {
  private readonly parts: number[] = [];

  op(...bytes: number[]): this {
    this.parts.push(...bytes);
    return this;
  }

  str(s: string): this {
    const b = new TextEncoder().encode(s);
    this.op(0x58, b.length & 255, (b.length >>> 8) & 255, (b.length >>> 16) & 255, b.length >>> 24);
    for (const x of b) this.parts.push(x);
    return this;
  }

  int(v: number): this {
    if (v >= 0 && v < 256) return this.op(0x4b, v); // BININT1
    return this.op(0x4a, v & 255, (v >>> 8) & 255, (v >>> 16) & 255, (v >>> 24) & 255); // BININT
  }

  float(v: number): this {
    const b = new Uint8Array(8);
    new DataView(b.buffer).setFloat64(0, v, false);
    return this.op(0x47, ...b); // BINFLOAT
  }

  global(module: string, name: string): this {
    this.op(0x63);
    for (const x of new TextEncoder().encode(`${module}\n${name}\n`)) this.parts.push(x);
    return this;
  }

  tuple(items: number[]): this {
    this.op(0x28); // MARK
    for (const v of items) this.int(v);
    return this.op(0x74); // TUPLE
  }

  /** `_rebuild_tensor_v2(('storage', FloatStorage, key, 'cpu', numel), 0, shape, stride, False, OrderedDict())`. */
  tensor(key: string, shape: number[]): this {
    const numel = shape.reduce((a, b) => a * b, 1);
    const stride = shape.map((_, i) => shape.slice(i + 1).reduce((a, b) => a * b, 1));
    this.global('torch._utils', '_rebuild_tensor_v2').op(0x28); // MARK
    this.op(0x28).str('storage').global('torch', 'FloatStorage').str(key).str('cpu').int(numel).op(0x74, 0x51); // TUPLE, BINPERSID
    this.int(0).tuple(shape).tuple(stride).op(0x89); // NEWFALSE
    this.global('collections', 'OrderedDict').op(0x29, 0x52); // EMPTY_TUPLE, REDUCE
    return this.op(0x74, 0x52); // TUPLE, REDUCE
  }

  bytes(): Uint8Array {
    return Uint8Array.from([...this.parts, 0x2e]); // STOP
  }
}

/** data.pkl of an AdamW state_dict over `params`, storages 3i (step), 3i+1 (exp_avg), 3i+2 (exp_avg_sq). */
function optimizerPickle(params: SyntheticParam[]): Uint8Array {
  const p = new Pickle().op(0x80, 2, 0x7d, 0x28).str('state').op(0x7d, 0x28); // PROTO 2, EMPTY_DICT, MARK, 'state', EMPTY_DICT, MARK
  params.forEach((param, i) => {
    p.int(i).op(0x7d, 0x28); // id: {
    p.str('step').tensor(String(3 * i), []);
    p.str('exp_avg').tensor(String(3 * i + 1), param.shape);
    p.str('exp_avg_sq').tensor(String(3 * i + 2), param.shape);
    p.op(0x75); // SETITEMS
  });
  p.op(0x75).str('param_groups').op(0x5d, 0x28, 0x7d, 0x28); // SETITEMS, EMPTY_LIST, MARK, EMPTY_DICT, MARK
  p.str('lr').float(1e-4).str('betas').op(0x28).float(0.9).float(0.95).op(0x74).str('eps').float(1e-8).str('weight_decay').float(0);
  p.str('amsgrad').op(0x89).str('params').op(0x5d, 0x28);
  params.forEach((_, i) => p.int(i));
  p.op(0x65, 0x75, 0x65, 0x75); // APPENDS, SETITEMS, APPENDS, SETITEMS
  return p.bytes();
}

async function writeOptimizer(path: string, params: SyntheticParam[], seed: number, step: number, chunk: number): Promise<void> {
  const zip = new ZipWriter({ alignment: 64 });
  await withFile(path, async (write) => {
    const small = async (name: string, data: Uint8Array): Promise<void> => {
      await write(zip.beginEntry(name, data.length));
      await write(data);
      await write(zip.endEntry(crc32(data)));
    };
    await small('optimizer/data.pkl', optimizerPickle(params));
    await small('optimizer/byteorder', new TextEncoder().encode('little'));
    for (const [i, p] of params.entries()) {
      await small(`optimizer/data/${3 * i}`, new Uint8Array(new Float32Array([1000 * (step + 1)]).buffer));
      for (const [k, kind] of [[1, 'm'], [2, 'v']] as const) {
        await write(zip.beginEntry(`optimizer/data/${3 * i + k}`, 4 * elements(p)));
        let crc = 0;
        for (const bytes of tensorChunks(p, kind, seed, step, chunk)) {
          crc = crc32(bytes, crc);
          await write(bytes);
        }
        await write(zip.endEntry(crc));
      }
    }
    await small('optimizer/version', new TextEncoder().encode('3\n'));
    await write(zip.finish());
  });
}

async function writeShard(path: string, params: SyntheticParam[], seed: number, step: number, chunk: number): Promise<number> {
  const { raw, tensors } = buildSafetensorsHeader(params.map((p) => ({ name: p.name, dtype: 'F32', shape: p.shape })), { format: 'pt' });
  await withFile(path, async (write) => {
    await write(raw);
    for (const p of params) for (const bytes of tensorChunks(p, 'w', seed, step, chunk)) await write(bytes);
  });
  return tensors[tensors.length - 1]?.end ?? 0;
}

/**
 * Write one Trainer checkpoint folder of the synthetic run.
 * @param params the model
 * @param dir the folder (created)
 * @param step 0 for the previous checkpoint, 1 for the current one
 * @param options seed, shards, chunk
 */
export async function writeSyntheticFolder(params: SyntheticParam[], dir: string, step: number, options: SyntheticFolderOptions = {}): Promise<void> {
  const seed = options.seed ?? 1;
  const chunk = options.chunk ?? 1 << 20;
  const groups = shardsOf(params, Math.max(1, options.shards ?? 2));
  mkdirSync(dir, { recursive: true });
  const weightMap: Record<string, string> = {};
  let total = 0;
  for (const [k, group] of groups.entries()) {
    const file = `model-${String(k + 1).padStart(5, '0')}-of-${String(groups.length).padStart(5, '0')}.safetensors`;
    total += await writeShard(join(dir, file), group, seed, step, chunk);
    for (const p of group) weightMap[p.name] = file;
  }
  writeFileSync(join(dir, 'model.safetensors.index.json'), `${JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2)}\n`);
  await writeOptimizer(join(dir, 'optimizer.pt'), params, seed, step, chunk);
  writeFileSync(join(dir, 'trainer_state.json'), `${JSON.stringify({ global_step: 1000 * (step + 1), epoch: step }, null, 2)}\n`);
}

/**
 * The parameter names in optimizer order, as `--param-map` takes them.
 * @param params the model
 */
export function paramMapOf(params: SyntheticParam[]): string[] {
  return params.map((p) => p.name);
}
