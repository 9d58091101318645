/**
 * Synthetic, model-shaped checkpoint pairs (the safetensors `gpt2_like`
 * idea): GPT-NeoX/Pythia layer shapes, Adam moments with realistic
 * relations, written as real safetensors files chunk by chunk so any size
 * can be generated in bounded memory.
 *
 * The statistics imitate a checkpoint interval of Adam training: per-row
 * gradient scales are log-normal; m is heavy-tailed around 0 with that
 * scale; v is about m^2 plus the gradient variance; the weight residual is
 * the Adam update direction -m/sqrt(v) times a learning-rate-like step, plus
 * noise. Deterministic: every (tensor, chunk) has its own seed.
 */
import { createWriteStream } from 'node:fs';
import { once } from 'node:events';
import { type DType, fromFloat32 } from '../lib/core/dtype.js';
import { buildSafetensorsHeader, serializeSafetensors, type TensorData } from '../lib/formats/safetensors.js';

/** A parameter of the synthetic model. */
export interface SyntheticParam {
  name: string;
  shape: number[];
}

/** Named model sizes for the benchmark (Pythia-like shapes). */
export const PRESETS: Record<string, { d: number; layers: number; vocab: number }> = {
  tiny: { d: 64, layers: 2, vocab: 512 },
  '1m': { d: 128, layers: 4, vocab: 1024 },
  '10m': { d: 256, layers: 10, vocab: 4096 },
  '160m': { d: 768, layers: 12, vocab: 50304 },
  '410m': { d: 1024, layers: 24, vocab: 50304 },
};

/**
 * Parameters of a GPT-NeoX-shaped model.
 * @param d hidden size
 * @param layers layer count
 * @param vocab vocabulary size
 */
export function neoxParams(d: number, layers: number, vocab: number): SyntheticParam[] {
  const p: SyntheticParam[] = [{ name: 'gpt_neox.embed_in.weight', shape: [vocab, d] }];
  for (let l = 0; l < layers; l++) {
    const pre = `gpt_neox.layers.${l}`;
    p.push(
      { name: `${pre}.input_layernorm.weight`, shape: [d] },
      { name: `${pre}.input_layernorm.bias`, shape: [d] },
      { name: `${pre}.attention.query_key_value.weight`, shape: [3 * d, d] },
      { name: `${pre}.attention.query_key_value.bias`, shape: [3 * d] },
      { name: `${pre}.attention.dense.weight`, shape: [d, d] },
      { name: `${pre}.attention.dense.bias`, shape: [d] },
      { name: `${pre}.post_attention_layernorm.weight`, shape: [d] },
      { name: `${pre}.post_attention_layernorm.bias`, shape: [d] },
      { name: `${pre}.mlp.dense_h_to_4h.weight`, shape: [4 * d, d] },
      { name: `${pre}.mlp.dense_h_to_4h.bias`, shape: [4 * d] },
      { name: `${pre}.mlp.dense_4h_to_h.weight`, shape: [d, 4 * d] },
      { name: `${pre}.mlp.dense_4h_to_h.bias`, shape: [d] },
    );
  }
  p.push({ name: 'gpt_neox.final_layer_norm.weight', shape: [d] }, { name: 'gpt_neox.final_layer_norm.bias', shape: [d] });
  p.push({ name: 'embed_out.weight', shape: [vocab, d] });
  return p;
}

/**
 * Fast deterministic generator: Marsaglia's xorshift128 on four 32-bit words
 * (period 2^128 - 1), table-based normals. (It replaced a 64-bit
 * xorshift128+ transcribed onto 32-bit words, whose period was 8190 draws:
 * the synthetic tensors repeated every ~1600 elements, which LZ coders found.)
 */
class FastRandom {
  private x: number;
  private y: number;
  private z: number;
  private w: number;
  private static table: Float32Array | null = null;

  constructor(seed: number) {
    // splitmix32 spreads the seed over the state (never all zero).
    let s = seed | 0;
    const next = (): number => {
      s = (s + 0x9e3779b9) | 0;
      let t = s ^ (s >>> 16);
      t = Math.imul(t, 0x21f0aaad);
      t ^= t >>> 15;
      t = Math.imul(t, 0x735a2d97);
      return (t ^ (t >>> 15)) | 0;
    };
    this.x = next();
    this.y = next();
    this.z = next();
    this.w = next() | 1;
  }

  u32(): number {
    const t = this.x ^ (this.x << 11);
    this.x = this.y;
    this.y = this.z;
    this.z = this.w;
    this.w = this.w ^ (this.w >>> 19) ^ (t ^ (t >>> 8));
    return this.w >>> 0;
  }

  /** Approximately standard normal (inverse CDF at 4096 points, plus jitter). */
  normal(): number {
    let t = FastRandom.table;
    if (!t) {
      t = new Float32Array(4096);
      for (let i = 0; i < 4096; i++) t[i] = inverseNormal((i + 0.5) / 4096);
      FastRandom.table = t;
    }
    const r = this.u32();
    return t[r >>> 20]! + ((r & 0xfffff) / 0x100000 - 0.5) * 0.0006;
  }
}

/** Acklam's rational approximation of the normal quantile. */
function inverseNormal(p: number): number {
  const a = [-39.69683028665376, 220.9460984245205, -275.9285104469687, 138.357751867269, -30.66479806614716, 2.506628277459239];
  const b = [-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572];
  const c = [-0.007784894002430293, -0.3223964580411365, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416];
  const q = Math.min(p, 1 - p);
  let x: number;
  if (q < 0.02425) {
    const u = Math.sqrt(-2 * Math.log(q));
    x = (((((c[0]! * u + c[1]!) * u + c[2]!) * u + c[3]!) * u + c[4]!) * u + c[5]!) / ((((d[0]! * u + d[1]!) * u + d[2]!) * u + d[3]!) * u + 1);
    x = p < 0.5 ? x : -x;
  } else {
    const u = p - 0.5;
    const r = u * u;
    x = ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * u) / (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1);
  }
  return x;
}

/** Values of one chunk of one parameter, in both checkpoints. */
export interface SyntheticChunk {
  previous: Float32Array;
  current: Float32Array;
  m: Float32Array;
  v: Float32Array;
}

function hashName(name: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

/**
 * Generate elements [start, start + count) of a parameter.
 * @param param the parameter
 * @param start first element
 * @param count number of elements
 * @param seed run seed
 * @param step 0 for the previous checkpoint's moments, 1 for the current one's
 */
export function syntheticChunk(param: SyntheticParam, start: number, count: number, seed: number, step = 1): SyntheticChunk {
  const isNorm = param.shape.length === 1;
  const rowLength = param.shape.length > 1 ? param.shape[param.shape.length - 1]! : count + start;
  const rng = new FastRandom(hashName(param.name) ^ Math.imul(seed, 0x9e3779b1) ^ Math.imul(start + 1, 0x85ebca6b));
  const rowRng = new FastRandom(hashName(param.name) ^ seed);
  const previous = new Float32Array(count);
  const current = new Float32Array(count);
  const m = new Float32Array(count);
  const v = new Float32Array(count);
  const gradScale = 1e-3;
  let row = -1;
  let sigma = gradScale;
  for (let i = 0; i < count; i++) {
    const r = Math.floor((start + i) / rowLength);
    if (r !== row) {
      // Per-row scale: deterministic from the row index, log-normal.
      row = r;
      const rr = new FastRandom(hashName(param.name) ^ Math.imul(r + 7, 0x27d4eb2f) ^ seed);
      sigma = gradScale * Math.exp(0.7 * rr.normal());
    }
    const w0 = isNorm ? (param.name.endsWith('bias') ? 0.01 * rng.normal() : 1 + 0.05 * rng.normal()) : 0.02 * rng.normal();
    // Heavy-tailed m: normal / sqrt(chi-ish) mixture.
    const z = rng.normal();
    const tail = rng.u32() < 0x0a000000 ? 4 : 1;
    const mi = sigma * 0.3 * z * tail;
    const vi = sigma * sigma * (0.4 + 0.6 * Math.abs(rng.normal())) + mi * mi;
    const update = -1e-4 * 20 * (mi / (Math.sqrt(vi) + 1e-8)) + 2e-5 * rng.normal() * (rowRng.u32() < 0x80000000 ? 1 : 0.5);
    previous[i] = w0;
    current[i] = w0 + update;
    m[i] = step === 1 ? mi : mi * 0.7;
    v[i] = step === 1 ? vi : vi * 0.9;
  }
  return { previous, current, m, v };
}

/** Tensor list of a checkpoint in safetensors (sorted-name) order. */
function tensorList(params: SyntheticParam[], dtype: DType, momentDtype: DType): { name: string; dtype: DType; shape: number[]; param: SyntheticParam; kind: 'w' | 'm' | 'v' }[] {
  const list = params.flatMap((p) => [
    { name: p.name, dtype, shape: p.shape, param: p, kind: 'w' as const },
    { name: `${p.name}.exp_avg`, dtype: momentDtype, shape: p.shape, param: p, kind: 'm' as const },
    { name: `${p.name}.exp_avg_sq`, dtype: momentDtype, shape: p.shape, param: p, kind: 'v' as const },
  ]);
  return list.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
}

/** Options of the generator. */
export interface SyntheticOptions {
  seed?: number;
  /** Weight dtype (moments stay fp32 unless momentDtype says otherwise). */
  dtype?: DType;
  momentDtype?: DType;
  chunk?: number;
}

/**
 * Write the previous and current checkpoint of a synthetic run to files.
 * @param params the model
 * @param previousPath where the base checkpoint goes
 * @param currentPath where the checkpoint to compress goes
 * @param options seed and dtypes
 * @returns bytes written per file
 */
export async function writeSyntheticPair(params: SyntheticParam[], previousPath: string, currentPath: string, options: SyntheticOptions = {}): Promise<number> {
  const seed = options.seed ?? 1;
  const dtype = options.dtype ?? 'F32';
  const momentDtype = options.momentDtype ?? 'F32';
  const chunk = options.chunk ?? 1 << 20;
  const list = tensorList(params, dtype, momentDtype);
  const { raw, tensors } = buildSafetensorsHeader(list, { format: 'pt', step: '1000' });
  let size = 0;
  for (const [path, step] of [[previousPath, 0], [currentPath, 1]] as const) {
    const out = createWriteStream(path);
    const write = async (b: Uint8Array) => {
      if (!out.write(b)) await once(out, 'drain');
    };
    await write(raw);
    for (const t of list) {
      const n = t.shape.reduce((a, b) => a * b, 1);
      for (let s = 0; s < n; s += chunk) {
        const g = syntheticChunk(t.param, s, Math.min(chunk, n - s), seed, step);
        const values = t.kind === 'w' ? (step === 0 ? g.previous : g.current) : t.kind === 'm' ? g.m : g.v;
        await write(fromFloat32(values, t.dtype));
      }
    }
    out.end();
    await once(out, 'finish');
    size = raw.length + tensors[tensors.length - 1]!.end;
  }
  return size;
}

/**
 * A small synthetic pair in memory.
 * @param params the model
 * @param options seed and dtypes
 * @returns previous and current safetensors bytes
 */
export function syntheticPairBuffers(params: SyntheticParam[], options: SyntheticOptions = {}): { previous: Uint8Array; current: Uint8Array } {
  const seed = options.seed ?? 1;
  const dtype = options.dtype ?? 'F32';
  const momentDtype = options.momentDtype ?? 'F32';
  const list = tensorList(params, dtype, momentDtype);
  const make = (step: number): Uint8Array => serializeSafetensors(list.map((t): TensorData => {
    const n = t.shape.reduce((a, b) => a * b, 1);
    const g = syntheticChunk(t.param, 0, n, seed, step);
    const values = t.kind === 'w' ? (step === 0 ? g.previous : g.current) : t.kind === 'm' ? g.m : g.v;
    return { name: t.name, dtype: t.dtype, shape: t.shape, data: fromFloat32(values, t.dtype) };
  }), { format: 'pt', step: String(step * 1000) });
  return { previous: make(0), current: make(1) };
}
