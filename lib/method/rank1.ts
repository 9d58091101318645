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

/** The column (within the grid) of a chunk's first element. */
function leadOf(grid: ChunkGrid, start: number, columns: number): number {
  return start - grid.row0 * columns - grid.col0;
}

/** Elements of the chunk in row k of its grid (the first and last rows may be partial). */
function rowLength(grid: ChunkGrid, lead: number, n: number, k: number): number {
  return Math.min(grid.cols, lead + n - k * grid.cols) - (k === 0 ? lead : 0);
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
 * @param exceptions if given, receives (in order) the positions whose v is not a finite value >= 0
 * @returns one mean per row and per column of the chunk's grid
 */
export function rank1Factors(v: Float32Array, start: number, columns: number, exceptions?: number[]): { rows: Float32Array; cols: Float32Array } {
  const n = v.length;
  const grid = chunkGrid(start, n, columns);
  const rowSum = new Float64Array(grid.rows);
  const colSum = new Float64Array(grid.cols);
  const lead = leadOf(grid, start, columns);
  let r = 0;
  let c = lead;
  for (let i = 0; i < n; i++) {
    const y = v[i]!;
    const x = y > 0 && y - y === 0 ? y : 0;
    if (exceptions && !(y >= 0 && y - y === 0)) exceptions.push(i);
    rowSum[r]! += x;
    colSum[c]! += x;
    if (++c === grid.cols) {
      c = 0;
      r++;
    }
  }
  // How many elements each row and column holds follows from where the chunk starts and ends.
  const rowCount = new Float64Array(grid.rows);
  const colCount = new Float64Array(grid.cols);
  for (let k = 0; k < grid.rows; k++) rowCount[k] = rowLength(grid, lead, n, k);
  // Every row but the first and the last holds every column; those two hold a run from their end.
  colCount.fill(Math.max(0, grid.rows - 2));
  const lastEnd = lead + n - (grid.rows - 1) * grid.cols;
  if (grid.rows === 1) {
    for (let j = lead; j < lastEnd; j++) colCount[j]!++;
  } else {
    for (let j = lead; j < grid.cols; j++) colCount[j]!++;
    for (let j = 0; j < lastEnd; j++) colCount[j]!++;
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
  const lead = leadOf(grid, start, columns);
  const mean = estimateMean(rows, grid, lead, n);
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

/**
 * v^ of a chunk as a table: per element, where its value sits in `values`.
 * The factors have 4 significant bits, so a chunk's rows take few distinct
 * row factors and its columns few distinct column factors, and v^ (their
 * product over the mean) one value per pair of them. What restore computes
 * from v^ per element (its square root, the dither's step scale: two
 * square roots and a division each) is then computed once per pair.
 */
export interface Rank1Table {
  /** Per element of the chunk: the position of its v^ in `values`. */
  index: Int32Array;
  /**
   * v^ per position: one per pair of distinct row and column factors, or
   * (where such pairs would not be fewer than half the chunk's elements)
   * one per element, in order.
   */
  values: Float32Array;
}

/**
 * rank1Estimate's values as a table: values[index[i]] is, bit for bit,
 * rank1Estimate's element i (each computed by the same float32 operations
 * from the same factors).
 * @param rows the row factors
 * @param cols the column factors
 * @param start the chunk's first element in the tensor
 * @param columns columns of the tensor's matrix
 * @param index receives the per-element positions (its length is the chunk's)
 * @param values room for the values (at least the chunk's length)
 * @returns the table (views of `index` and `values`)
 */
export function rank1Table(rows: Float32Array, cols: Float32Array, start: number, columns: number, index: Int32Array, values: Float32Array): Rank1Table {
  const n = index.length;
  const grid = chunkGrid(start, n, columns);
  const rowKey = distinctFactors(rows);
  const colKey = distinctFactors(cols);
  const pairs = rowKey.distinct.length * colKey.distinct.length;
  if (2 * pairs >= n) {
    // Few elements per pair (small chunks, factors all different): per element, as rank1Estimate.
    rank1Estimate(rows, cols, start, columns, values.subarray(0, n));
    for (let i = 0; i < n; i++) index[i] = i;
    return { index, values: values.subarray(0, n) };
  }
  const lead = leadOf(grid, start, columns);
  const mean = estimateMean(rows, grid, lead, n);
  const dc = colKey.distinct.length;
  const out = values.subarray(0, pairs);
  for (let a = 0; a < rowKey.distinct.length; a++) {
    for (let b = 0; b < dc; b++) {
      out[a * dc + b] = mean > 0 ? Math.fround(Math.fround(rowKey.distinct[a]! * colKey.distinct[b]!) / mean) : 0;
    }
  }
  const colAt = colKey.at;
  let r = 0;
  let c = lead;
  let rowBase = rowKey.at[0]! * dc;
  for (let i = 0; i < n; i++) {
    index[i] = rowBase + colAt[c]!;
    if (++c === grid.cols) {
      c = 0;
      r++;
      if (r < grid.rows) rowBase = rowKey.at[r]! * dc;
    }
  }
  return { index, values: out };
}

/** rank1Estimate's mean: of the row factors, weighted by the elements each row holds. */
function estimateMean(rows: Float32Array, grid: ChunkGrid, lead: number, n: number): number {
  let weighted = 0;
  for (let k = 0; k < grid.rows; k++) weighted += rows[k]! * rowLength(grid, lead, n, k);
  return Math.fround(weighted / n);
}

/** The distinct values of factors (told apart by their bits, so -0 is not 0) and which one each factor is. */
function distinctFactors(f: Float32Array): { distinct: Float32Array; at: Int32Array } {
  const bits = new Uint32Array(f.buffer, f.byteOffset, f.length);
  const seen = new Map<number, number>();
  const at = new Int32Array(f.length);
  const distinct: number[] = [];
  for (let k = 0; k < f.length; k++) {
    let j = seen.get(bits[k]!);
    if (j === undefined) {
      j = distinct.length;
      seen.set(bits[k]!, j);
      distinct.push(f[k]!);
    }
    at[k] = j;
  }
  return { distinct: Float32Array.from(distinct), at };
}
