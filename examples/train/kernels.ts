/**
 * Hand-written fp32 kernels for the example trainer: dense layers, GELU,
 * LayerNorm and softmax cross-entropy, forward and backward.
 *
 * Layout: activations are row-major `[rows, features]`; a dense weight is
 * `[in, out]` row-major (the GPT-2 `Conv1D` layout). All three dense-layer
 * products go through one register-blocked kernel whose inner loop walks
 * contiguous memory. Summation order is fixed, so results are bit-identical
 * run to run. Nothing allocates per call (one shared scratch buffer grows to
 * the largest matrix once).
 */

/**
 * c += a · b, the one matrix product every dense-layer pass reduces to.
 * Register-blocked 4 rows of `a` × 4 rows of `b`: each loaded `b` value feeds
 * four rows and each `c` load/store carries four products, which doubles
 * throughput in V8 over a plain axpy loop. The four `b` rows (a few KB) stay
 * in L1 while all rows of `a` pass them.
 * @param a `[rows, inner]`
 * @param b `[inner, cols]`
 * @param c `[rows, cols]` (accumulated)
 */
export function accumulateProduct(
  a: Float32Array, b: Float32Array, c: Float32Array,
  rows: number, inner: number, cols: number,
): void {
  let k = 0;
  for (; k + 4 <= inner; k += 4) {
    const b0 = k * cols;
    const b1 = b0 + cols;
    const b2 = b1 + cols;
    const b3 = b2 + cols;
    let r = 0;
    for (; r + 4 <= rows; r += 4) {
      const i0 = r * inner + k;
      const i1 = i0 + inner;
      const i2 = i1 + inner;
      const i3 = i2 + inner;
      const p0 = a[i0]!, p1 = a[i0 + 1]!, p2 = a[i0 + 2]!, p3 = a[i0 + 3]!;
      const q0 = a[i1]!, q1 = a[i1 + 1]!, q2 = a[i1 + 2]!, q3 = a[i1 + 3]!;
      const s0 = a[i2]!, s1 = a[i2 + 1]!, s2 = a[i2 + 2]!, s3 = a[i2 + 3]!;
      const t0 = a[i3]!, t1 = a[i3 + 1]!, t2 = a[i3 + 2]!, t3 = a[i3 + 3]!;
      const o0 = r * cols;
      const o1 = o0 + cols;
      const o2 = o1 + cols;
      const o3 = o2 + cols;
      for (let n = 0; n < cols; n++) {
        const v0 = b[b0 + n]!, v1 = b[b1 + n]!, v2 = b[b2 + n]!, v3 = b[b3 + n]!;
        c[o0 + n] = c[o0 + n]! + p0 * v0 + p1 * v1 + p2 * v2 + p3 * v3;
        c[o1 + n] = c[o1 + n]! + q0 * v0 + q1 * v1 + q2 * v2 + q3 * v3;
        c[o2 + n] = c[o2 + n]! + s0 * v0 + s1 * v1 + s2 * v2 + s3 * v3;
        c[o3 + n] = c[o3 + n]! + t0 * v0 + t1 * v1 + t2 * v2 + t3 * v3;
      }
    }
    for (; r < rows; r++) {
      const i0 = r * inner + k;
      const p0 = a[i0]!, p1 = a[i0 + 1]!, p2 = a[i0 + 2]!, p3 = a[i0 + 3]!;
      const o0 = r * cols;
      for (let n = 0; n < cols; n++) {
        c[o0 + n] = c[o0 + n]! + p0 * b[b0 + n]! + p1 * b[b1 + n]! + p2 * b[b2 + n]! + p3 * b[b3 + n]!;
      }
    }
  }
  for (; k < inner; k++) {
    const b0 = k * cols;
    for (let r = 0; r < rows; r++) {
      const p0 = a[r * inner + k]!;
      const o0 = r * cols;
      for (let n = 0; n < cols; n++) c[o0 + n] = c[o0 + n]! + p0 * b[b0 + n]!;
    }
  }
}

/** Shared transpose buffer; grows to the largest matrix seen, then never reallocates. */
let scratch = new Float32Array(0);

/** Transpose `[rows, cols]` into the shared scratch buffer as `[cols, rows]`. */
function transposeToScratch(m: Float32Array, rows: number, cols: number): Float32Array {
  if (scratch.length < rows * cols) scratch = new Float32Array(rows * cols);
  const out = scratch;
  for (let r = 0; r < rows; r++) {
    const o = r * cols;
    for (let j = 0; j < cols; j++) out[j * rows + r] = m[o + j]!;
  }
  return out;
}

/**
 * y = x · w + bias.
 * @param x input `[rows, inDim]`
 * @param w weight `[inDim, outDim]`
 * @param bias `[outDim]`
 * @param y output `[rows, outDim]` (overwritten)
 */
export function linearForward(
  x: Float32Array, w: Float32Array, bias: Float32Array, y: Float32Array,
  rows: number, inDim: number, outDim: number,
): void {
  for (let r = 0; r < rows; r++) y.set(bias, r * outDim);
  accumulateProduct(x, w, y, rows, inDim, outDim);
}

/**
 * dx = dy · wᵀ (gradient with respect to the layer input). Transposing w
 * first (K·N copies against 2·rows·K·N flops) lets the blocked product run
 * instead of strided dot products.
 * @param dy output gradient `[rows, outDim]`
 * @param w weight `[inDim, outDim]`
 * @param dx input gradient `[rows, inDim]` (overwritten)
 */
export function linearBackwardInput(
  dy: Float32Array, w: Float32Array, dx: Float32Array,
  rows: number, inDim: number, outDim: number,
): void {
  const wT = transposeToScratch(w, inDim, outDim);
  dx.fill(0, 0, rows * inDim);
  accumulateProduct(dy, wT, dx, rows, outDim, inDim);
}

/**
 * dw += xᵀ · dy and dbias += Σ_rows dy (gradients of the layer's parameters).
 * @param x layer input `[rows, inDim]`
 * @param dy output gradient `[rows, outDim]`
 * @param dw weight gradient `[inDim, outDim]` (accumulated)
 * @param dbias bias gradient `[outDim]` (accumulated)
 */
export function linearBackwardWeight(
  x: Float32Array, dy: Float32Array, dw: Float32Array, dbias: Float32Array,
  rows: number, inDim: number, outDim: number,
): void {
  for (let r = 0; r < rows; r++) {
    const d0 = r * outDim;
    for (let n = 0; n < outDim; n++) dbias[n] = dbias[n]! + dy[d0 + n]!;
  }
  const xT = transposeToScratch(x, rows, inDim);
  accumulateProduct(xT, dy, dw, inDim, rows, outDim);
}

const GELU_C = Math.sqrt(2 / Math.PI);

/**
 * GELU (tanh approximation), elementwise: out[i] = gelu(pre[i]).
 * @param pre pre-activations
 * @param out activations (may not alias `pre`: backward needs `pre`)
 * @param count elements to process
 */
export function geluForward(pre: Float32Array, out: Float32Array, count: number): void {
  for (let i = 0; i < count; i++) {
    const x = pre[i]!;
    out[i] = 0.5 * x * (1 + Math.tanh(GELU_C * (x + 0.044715 * x * x * x)));
  }
}

/**
 * grad[i] *= gelu'(pre[i]), in place.
 * @param pre pre-activations saved by the forward pass
 * @param grad gradient with respect to the GELU output, becomes gradient with respect to `pre`
 * @param count elements to process
 */
export function geluBackward(pre: Float32Array, grad: Float32Array, count: number): void {
  for (let i = 0; i < count; i++) {
    const x = pre[i]!;
    const t = Math.tanh(GELU_C * (x + 0.044715 * x * x * x));
    const slope = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * GELU_C * (1 + 3 * 0.044715 * x * x);
    grad[i] = grad[i]! * slope;
  }
}

/** LayerNorm variance epsilon (PyTorch's default). */
export const LAYER_NORM_EPS = 1e-5;

/**
 * LayerNorm over the last dimension: out = (x - mean) / std * gain + bias.
 * @param x input `[rows, dim]`
 * @param gain `[dim]`
 * @param bias `[dim]`
 * @param normalized saved x̂ `[rows, dim]` for backward
 * @param rstd saved 1/std `[rows]` for backward
 * @param out output `[rows, dim]`
 */
export function layerNormForward(
  x: Float32Array, gain: Float32Array, bias: Float32Array,
  normalized: Float32Array, rstd: Float32Array, out: Float32Array,
  rows: number, dim: number,
): void {
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let mean = 0;
    for (let i = 0; i < dim; i++) mean += x[o + i]!;
    mean /= dim;
    let variance = 0;
    for (let i = 0; i < dim; i++) {
      const d = x[o + i]! - mean;
      variance += d * d;
    }
    const inv = 1 / Math.sqrt(variance / dim + LAYER_NORM_EPS);
    rstd[r] = inv;
    for (let i = 0; i < dim; i++) {
      const xh = (x[o + i]! - mean) * inv;
      normalized[o + i] = xh;
      out[o + i] = xh * gain[i]! + bias[i]!;
    }
  }
}

/**
 * LayerNorm backward. Accumulates parameter gradients and ADDS the input
 * gradient into `dx` (callers use it on a residual stream that already holds
 * the skip-path gradient).
 * @param dy gradient of the LayerNorm output `[rows, dim]`
 * @param normalized x̂ saved by forward
 * @param rstd 1/std saved by forward
 * @param gain `[dim]`
 * @param dgain gain gradient (accumulated)
 * @param dbias bias gradient (accumulated)
 * @param dx input gradient (accumulated)
 */
export function layerNormBackward(
  dy: Float32Array, normalized: Float32Array, rstd: Float32Array, gain: Float32Array,
  dgain: Float32Array, dbias: Float32Array, dx: Float32Array,
  rows: number, dim: number,
): void {
  for (let r = 0; r < rows; r++) {
    const o = r * dim;
    let meanG = 0;
    let meanGx = 0;
    for (let i = 0; i < dim; i++) {
      const g = dy[o + i]!;
      const xh = normalized[o + i]!;
      dgain[i] = dgain[i]! + g * xh;
      dbias[i] = dbias[i]! + g;
      const gh = g * gain[i]!;
      meanG += gh;
      meanGx += gh * xh;
    }
    meanG /= dim;
    meanGx /= dim;
    const inv = rstd[r]!;
    for (let i = 0; i < dim; i++) {
      const gh = dy[o + i]! * gain[i]!;
      dx[o + i] = dx[o + i]! + inv * (gh - meanG - normalized[o + i]! * meanGx);
    }
  }
}

/**
 * Softmax cross-entropy. With `gradScale > 0`, overwrites `logits` by
 * gradScale · (softmax − onehot), the gradient of the scaled loss.
 * @param logits `[rows, classes]`
 * @param targets class index per row
 * @param gradScale 0 for evaluation (logits kept), else the loss weight (1/rows for a mean)
 * @returns the summed (not averaged) negative log-likelihood in nats
 */
export function softmaxCrossEntropy(
  logits: Float32Array, targets: Uint8Array, rows: number, classes: number, gradScale: number,
): number {
  let total = 0;
  for (let r = 0; r < rows; r++) {
    const o = r * classes;
    let max = -Infinity;
    for (let c = 0; c < classes; c++) if (logits[o + c]! > max) max = logits[o + c]!;
    let sum = 0;
    for (let c = 0; c < classes; c++) sum += Math.exp(logits[o + c]! - max);
    const target = targets[r]!;
    total += Math.log(sum) - (logits[o + target]! - max);
    if (gradScale > 0) {
      const inv = 1 / sum;
      for (let c = 0; c < classes; c++) logits[o + c] = gradScale * Math.exp(logits[o + c]! - max) * inv;
      logits[o + target] = logits[o + target]! - gradScale;
    }
  }
  return total;
}
