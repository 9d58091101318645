/**
 * A character-level language model small enough to train in pure
 * TypeScript: an MLP over a window of previous characters (Bengio et al.
 * 2003 style) with pre-LayerNorm residual blocks, as in a transformer's MLP
 * half.
 *
 *   x   = concat(embed[c_1], ..., embed[c_C])             [C·E]
 *   h_0 = gelu(x · input.weight + input.bias)              [H]
 *   h_{l+1} = h_l + gelu(LN_l(h_l) · blocks.l.fc.weight + blocks.l.fc.bias)
 *   logits = LN_f(h_L) · head.weight + head.bias           [V]
 *
 * Dense weights are `[in, out]`. Tensor names follow PyTorch conventions so
 * the checkpoints look like real ones (`*.weight`, `*.bias`, norm gains).
 */
import { Prng } from '../../spec/support/prng.js';
import { geluBackward, geluForward, layerNormBackward, layerNormForward, linearBackwardInput, linearBackwardWeight, linearForward, softmaxCrossEntropy } from './kernels.js';

/** Shape of the model. */
export interface ModelShape {
  vocabSize: number;
  /** Characters of context per prediction. */
  contextLength: number;
  /** Embedding width per character. */
  embedDim: number;
  /** Width of the residual stream. */
  hiddenDim: number;
  /** Residual MLP blocks. */
  blocks: number;
}

/** One trainable tensor with its gradient. */
export interface Parameter {
  name: string;
  shape: number[];
  data: Float32Array;
  grad: Float32Array;
  /**
   * Whether AdamW's decoupled weight decay applies. Only dense matrices
   * decay: decaying biases and norm gains pulls them toward 0 for no
   * regularisation benefit, and embedding rows of rare characters would
   * shrink between their few updates (the GPT-2/nanoGPT convention).
   */
  decay: boolean;
}

/**
 * Number of parameters of a shape.
 * @param shape model shape
 * @returns total trainable scalars
 */
export function countParameters(shape: ModelShape): number {
  const { vocabSize: v, contextLength: c, embedDim: e, hiddenDim: h, blocks: l } = shape;
  return v * e + c * e * h + h + l * (h * h + 3 * h) + 2 * h + h * v + v;
}

/**
 * Hidden width (a multiple of 8) giving about `target` parameters.
 * @param target wanted parameter count
 * @param base the other dimensions
 * @returns the hidden width
 */
export function hiddenDimFor(target: number, base: Omit<ModelShape, 'hiddenDim'>): number {
  const { vocabSize: v, contextLength: c, embedDim: e, blocks: l } = base;
  // countParameters is l·h² + b·h + const; solve for h.
  const a = l;
  const b = c * e + 1 + 3 * l + 2 + v;
  const rest = v * e + v - target;
  const h = a > 0 ? (-b + Math.sqrt(b * b - 4 * a * rest)) / (2 * a) : -rest / b;
  return Math.max(8, Math.round(h / 8) * 8);
}

/** The model: parameters plus the activation buffers of one batch. */
export class CharMlp {
  readonly shape: ModelShape;
  readonly parameters: Parameter[] = [];
  readonly maxRows: number;
  private readonly embed: Parameter;
  private readonly inputLayer: { weight: Parameter; bias: Parameter };
  private readonly blockParams: Array<{ gain: Parameter; shift: Parameter; weight: Parameter; bias: Parameter }> = [];
  private readonly finalGain: Parameter;
  private readonly finalShift: Parameter;
  private readonly head: { weight: Parameter; bias: Parameter };
  // Activations saved for backward, each sized for maxRows.
  private readonly x0: Float32Array;
  private readonly inputPre: Float32Array;
  private readonly stream: Float32Array[]; // h_0 .. h_L
  private readonly normalized: Float32Array[]; // x̂ per LayerNorm (blocks, then final)
  private readonly rstd: Float32Array[];
  private readonly normOut: Float32Array[];
  private readonly blockPre: Float32Array[];
  private readonly logits: Float32Array;
  private readonly targets: Uint8Array;
  private readonly contexts: Uint8Array;
  // Backward scratch.
  private readonly gradStream: Float32Array;
  private readonly gradA: Float32Array;
  private readonly gradNorm: Float32Array;
  private readonly gradX0: Float32Array;

  /**
   * @param shape dimensions
   * @param maxRows largest batch the buffers must hold
   * @param seed initialisation seed
   */
  constructor(shape: ModelShape, maxRows: number, seed: number) {
    this.shape = shape;
    this.maxRows = maxRows;
    const { vocabSize: v, contextLength: c, embedDim: e, hiddenDim: h, blocks: l } = shape;
    const add = (name: string, dims: number[], decay: boolean): Parameter => {
      const size = dims.reduce((p, d) => p * d, 1);
      const param = { name, shape: dims, data: new Float32Array(size), grad: new Float32Array(size), decay };
      this.parameters.push(param);
      return param;
    };
    this.embed = add('embed.weight', [v, e], false);
    this.inputLayer = { weight: add('input.weight', [c * e, h], true), bias: add('input.bias', [h], false) };
    for (let i = 0; i < l; i++) {
      this.blockParams.push({
        gain: add(`blocks.${i}.norm.weight`, [h], false),
        shift: add(`blocks.${i}.norm.bias`, [h], false),
        weight: add(`blocks.${i}.fc.weight`, [h, h], true),
        bias: add(`blocks.${i}.fc.bias`, [h], false),
      });
    }
    this.finalGain = add('final_norm.weight', [h], false);
    this.finalShift = add('final_norm.bias', [h], false);
    this.head = { weight: add('head.weight', [h, v], true), bias: add('head.bias', [v], false) };
    this.initialise(seed);

    const rows = maxRows;
    this.x0 = new Float32Array(rows * c * e);
    this.inputPre = new Float32Array(rows * h);
    this.stream = Array.from({ length: l + 1 }, () => new Float32Array(rows * h));
    this.normalized = Array.from({ length: l + 1 }, () => new Float32Array(rows * h));
    this.rstd = Array.from({ length: l + 1 }, () => new Float32Array(rows));
    this.normOut = Array.from({ length: l + 1 }, () => new Float32Array(rows * h));
    this.blockPre = Array.from({ length: l }, () => new Float32Array(rows * h));
    this.logits = new Float32Array(rows * v);
    this.targets = new Uint8Array(rows);
    this.contexts = new Uint8Array(rows * c);
    this.gradStream = new Float32Array(rows * h);
    this.gradA = new Float32Array(rows * h);
    this.gradNorm = new Float32Array(rows * h);
    this.gradX0 = new Float32Array(rows * c * e);
  }

  /** Gaussian init scaled by fan-in; residual branches and head start small (GPT-2 style). */
  private initialise(seed: number): void {
    const prng = new Prng(seed);
    const fill = (p: Parameter, std: number): void => {
      for (let i = 0; i < p.data.length; i++) p.data[i] = std * prng.normal();
    };
    const { contextLength: c, embedDim: e, hiddenDim: h, blocks: l } = this.shape;
    fill(this.embed, 1);
    fill(this.inputLayer.weight, 1 / Math.sqrt(c * e));
    for (const b of this.blockParams) {
      b.gain.data.fill(1);
      fill(b.weight, 1 / Math.sqrt(h) / Math.sqrt(2 * l));
    }
    this.finalGain.data.fill(1);
    fill(this.head.weight, 0.5 / Math.sqrt(h));
  }

  /**
   * Load a batch: row r predicts `text[positions[r]]` from the C symbols before it.
   * @param text symbol ids
   * @param positions target indices, each >= contextLength
   * @param rows batch rows to fill (<= maxRows)
   */
  setBatch(text: Uint8Array, positions: ArrayLike<number>, rows: number): void {
    const c = this.shape.contextLength;
    for (let r = 0; r < rows; r++) {
      const p = positions[r]!;
      this.contexts.set(text.subarray(p - c, p), r * c);
      this.targets[r] = text[p]!;
    }
  }

  /**
   * Forward pass over the loaded batch; with `train`, also backward
   * (gradients of the mean loss are ADDED to each parameter's `grad`).
   * @param rows batch rows loaded by setBatch
   * @param train whether to compute gradients
   * @returns summed negative log-likelihood (nats) over the rows
   */
  run(rows: number, train: boolean): number {
    const { vocabSize: v, contextLength: c, embedDim: e, hiddenDim: h, blocks: l } = this.shape;
    const embed = this.embed.data;
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < c; j++) {
        const id = this.contexts[r * c + j]!;
        this.x0.set(embed.subarray(id * e, id * e + e), (r * c + j) * e);
      }
    }
    const n = rows * h;
    linearForward(this.x0, this.inputLayer.weight.data, this.inputLayer.bias.data, this.inputPre, rows, c * e, h);
    geluForward(this.inputPre, this.stream[0]!, n);
    for (let i = 0; i < l; i++) {
      const b = this.blockParams[i]!;
      const hIn = this.stream[i]!;
      const hOut = this.stream[i + 1]!;
      layerNormForward(hIn, b.gain.data, b.shift.data, this.normalized[i]!, this.rstd[i]!, this.normOut[i]!, rows, h);
      linearForward(this.normOut[i]!, b.weight.data, b.bias.data, this.blockPre[i]!, rows, h, h);
      geluForward(this.blockPre[i]!, hOut, n);
      for (let k = 0; k < n; k++) hOut[k] = hOut[k]! + hIn[k]!;
    }
    layerNormForward(this.stream[l]!, this.finalGain.data, this.finalShift.data, this.normalized[l]!, this.rstd[l]!, this.normOut[l]!, rows, h);
    linearForward(this.normOut[l]!, this.head.weight.data, this.head.bias.data, this.logits, rows, h, v);
    const loss = softmaxCrossEntropy(this.logits, this.targets, rows, v, train ? 1 / rows : 0);
    if (train) this.backward(rows);
    return loss;
  }

  /** Backward pass; `logits` holds dLoss/dlogits on entry. */
  private backward(rows: number): void {
    const { vocabSize: v, contextLength: c, embedDim: e, hiddenDim: h, blocks: l } = this.shape;
    const n = rows * h;
    const dStream = this.gradStream;
    linearBackwardWeight(this.normOut[l]!, this.logits, this.head.weight.grad, this.head.bias.grad, rows, h, v);
    linearBackwardInput(this.logits, this.head.weight.data, this.gradNorm, rows, h, v);
    dStream.fill(0, 0, n);
    layerNormBackward(this.gradNorm, this.normalized[l]!, this.rstd[l]!, this.finalGain.data,
      this.finalGain.grad, this.finalShift.grad, dStream, rows, h);
    for (let i = l - 1; i >= 0; i--) {
      const b = this.blockParams[i]!;
      // Residual: dStream already is dL/dh_i through the skip path; add the branch.
      this.gradA.set(dStream.subarray(0, n));
      geluBackward(this.blockPre[i]!, this.gradA, n);
      linearBackwardWeight(this.normOut[i]!, this.gradA, b.weight.grad, b.bias.grad, rows, h, h);
      linearBackwardInput(this.gradA, b.weight.data, this.gradNorm, rows, h, h);
      layerNormBackward(this.gradNorm, this.normalized[i]!, this.rstd[i]!, b.gain.data, b.gain.grad, b.shift.grad, dStream, rows, h);
    }
    geluBackward(this.inputPre, dStream, n);
    linearBackwardWeight(this.x0, dStream, this.inputLayer.weight.grad, this.inputLayer.bias.grad, rows, c * e, h);
    linearBackwardInput(dStream, this.inputLayer.weight.data, this.gradX0, rows, c * e, h);
    const dEmbed = this.embed.grad;
    for (let r = 0; r < rows; r++) {
      for (let j = 0; j < c; j++) {
        const id = this.contexts[r * c + j]!;
        const src = (r * c + j) * e;
        for (let k = 0; k < e; k++) dEmbed[id * e + k] = dEmbed[id * e + k]! + this.gradX0[src + k]!;
      }
    }
  }
}
