/**
 * Stage 2 (pure): the weight residual against the base checkpoint.
 *
 * ExCP (Li et al., ICML 2024, arXiv 2406.11257), section 3.1: the residual is
 * taken against the *reconstructed* previous checkpoint, so quantisation
 * errors never accumulate along a chain. Arithmetic is float32 (Math.fround)
 * so that JavaScript doubles give the same bits as a float32 implementation.
 *
 * Non-finite values: where the current weight, the base weight or their
 * difference is NaN or infinite, the position becomes an *exception*: its
 * residual is set to 0 (it takes no part in the statistics) and the exact
 * current bits are stored aside, so the restore is exact there.
 */

/**
 * dW = fround(current - base), with exceptions recorded.
 * @param current current weights (float32)
 * @param base base weights (float32), same length
 * @param out destination for dW, same length
 * @returns positions whose residual is not finite, ascending
 */
export function computeResidual(current: Float32Array, base: Float32Array, out: Float32Array): number[] {
  const exceptions: number[] = [];
  const n = current.length;
  for (let i = 0; i < n; i++) {
    const d = Math.fround(current[i]! - base[i]!);
    if (d - d !== 0) {
      exceptions.push(i);
      out[i] = 0;
    } else {
      out[i] = d;
    }
  }
  return exceptions;
}

/**
 * W = fround(base + dW): the exact inverse used by restore for kept positions.
 * @param base base weights
 * @param residual dW values
 * @param out destination
 * @returns `out`
 */
export function applyResidual(base: Float32Array, residual: Float32Array, out: Float32Array): Float32Array {
  const n = base.length;
  for (let i = 0; i < n; i++) out[i] = base[i]! + residual[i]!;
  return out;
}

/**
 * Replace non-finite values by 0 and report where they were.
 * Used for the moment streams, whose exceptions are stored exactly.
 * @param values modified in place
 * @returns positions of NaN and infinities, ascending
 */
export function extractNonFinite(values: Float32Array): number[] {
  const exceptions: number[] = [];
  const n = values.length;
  for (let i = 0; i < n; i++) {
    const x = values[i]!;
    if (x - x !== 0) {
      exceptions.push(i);
      values[i] = 0;
    }
  }
  return exceptions;
}
