/**
 * A factored second moment (pure): Adam's v of a chunk estimated from its
 * row means and column means, v^[r][c] = row[r] * col[c] / mean, as
 * Adafactor keeps it (Shazeer and Stern, ICML 2018). A few floats per row
 * and per column instead of one per element, so a restored v costs almost
 * nothing and still follows the structure that matters to Adam's step size:
 * rows (output units) and columns (input features) that see large or small
 * gradients. An underestimated v makes the first steps after a resume
 * oversized, which a chunk mean does wherever v is above the mean.
 *
 * The tensor is seen as a matrix of `columns` columns (the product of its
 * dimensions after the first; a vector is one row). A chunk is a run of
 * that matrix in row-major order: whole rows, and possibly part of a row at
 * each end; its means are over the elements it holds.
 *
 * The factors are stored rounded to 4 significant bits (a float32 with the
 * low 20 mantissa bits cleared): the estimate is only as good as the rank-1
 * model anyway. Every step is float32 or exact integer arithmetic in a fixed
 * order, so encoder and decoder compute the same v^ bit for bit.
 */

/** Where a chunk lies in the tensor's matrix. */
export interface ChunkGrid {
  /** The first row it touches (of the tensor's matrix). */
  row0: number;
  /** Rows it touches. */
  rows: number;
  /** The first column of its columns (0 unless it lies within one row). */
  col0: number;
  /** Columns it has means for. */
  cols: number;
}

/**
 * The rows and columns a chunk touches.
 * @param start the chunk's first element in the tensor
 * @param n elements in the chunk (> 0)
 * @param columns columns of the tensor's matrix (>= 1)
 */
export function chunkGrid(start: number, n: number, columns: number): ChunkGrid {
  const row0 = Math.floor(start / columns);
  const rows = Math.floor((start + n - 1) / columns) + 1 - row0;
  if (rows === 1) return { row0, rows, col0: start - row0 * columns, cols: n };
  return { row0, rows, col0: 0, cols: columns };
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/**
 * A factor as stored: a non-negative float32 rounded to nearest on 4
 * significant bits (3 mantissa bits); 0 and subnormals below 2^-126 stay as
 * they round.
 * @param x a finite value >= 0
 * @returns the rounded value
 */
export function roundFactor(x: number): number {
  f32[0] = x;
  u32[0] = ((u32[0]! + 0x80000) & 0xfff00000) >>> 0;
  return f32[0]!;
}

/**
 * The row and column means of a chunk of v, rounded as stored. Values that
 * are not finite or are negative (Adam's v is >= 0; exceptions are stored
 * apart) count as 0.
 * @param v the chunk's v as float32
 * @param start the chunk's first element in the tensor
 * @param columns columns of the tensor's matrix
 * @returns one mean per row and per column of the chunk's grid
 */
export function rank1Factors(v: Float32Array, start: number, columns: number): { rows: Float32Array; cols: Float32Array } {
  const n = v.length;
  const grid = chunkGrid(start, n, columns);
  const rowSum = new Float64Array(grid.rows);
  const rowCount = new Float64Array(grid.rows);
  const colSum = new Float64Array(grid.cols);
  const colCount = new Float64Array(grid.cols);
  let r = 0;
  let c = (start - grid.row0 * columns) - grid.col0;
  for (let i = 0; i < n; i++) {
    const y = v[i]!;
    const x = y > 0 && y - y === 0 ? y : 0;
    rowSum[r]! += x;
    rowCount[r]!++;
    colSum[c]! += x;
    colCount[c]!++;
    if (++c === grid.cols) {
      c = 0;
      r++;
    }
  }
  const rows = new Float32Array(grid.rows);
  const cols = new Float32Array(grid.cols);
  for (let k = 0; k < grid.rows; k++) rows[k] = roundFactor(rowCount[k]! ? rowSum[k]! / rowCount[k]! : 0);
  for (let k = 0; k < grid.cols; k++) cols[k] = roundFactor(colCount[k]! ? colSum[k]! / colCount[k]! : 0);
  return { rows, cols };
}

/**
 * v^ from the stored factors: row[r] * col[c] / mean, the mean being that
 * of the row factors weighted by how many of the chunk's elements each row
 * holds (0 when it is 0).
 * @param rows the row factors
 * @param cols the column factors
 * @param start the chunk's first element in the tensor
 * @param columns columns of the tensor's matrix
 * @param out receives v^, one per element of the chunk
 * @returns `out`
 */
export function rank1Estimate(rows: Float32Array, cols: Float32Array, start: number, columns: number, out: Float32Array): Float32Array {
  const n = out.length;
  const grid = chunkGrid(start, n, columns);
  const lead = start - grid.row0 * columns - grid.col0;
  let weighted = 0;
  for (let k = 0; k < grid.rows; k++) {
    const first = k === 0 ? lead : 0;
    const last = Math.min(grid.cols, lead + n - k * grid.cols);
    weighted += rows[k]! * (last - first);
  }
  const mean = Math.fround(weighted / n);
  let r = 0;
  let c = lead;
  for (let i = 0; i < n; i++) {
    out[i] = mean > 0 ? Math.fround(Math.fround(rows[r]! * cols[c]!) / mean) : 0;
    if (++c === grid.cols) {
      c = 0;
      r++;
    }
  }
  return out;
}
