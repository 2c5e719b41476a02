/**
 * Absmax block quantization onto a fixed 16-value table (NF4, FP4 E2M1): per group of `group`
 * input columns one fp16 scale s = absmax / max|table|; each weight takes the code of the table
 * value nearest to w / s (against the stored s); ŵ = table[code] · s in float32.
 */
import * as v from 'valibot'
import { groupColumns, packedBytes, type QuantMethod, type QuantizeHooks, type StorageBreakdown } from './contract'
import { F16Array, checkShape, checkWeight, forEachRow, groupSchema, sortedUnique } from './common'
import { packCodes } from './packing'
import { PackedCodesTensor } from './packed-tensor'

export interface AbsmaxTable {
  id: string
  label: string
  /** Value of each 4-bit code, as float32 (index = code). */
  values: Float32Array
  /** Where w/s lies exactly halfway between two table values: the lower value, or the one whose code is even (IEEE round-half-even for a float format). */
  ties: 'lower' | 'even-code'
  defaultGroup: number
}

export const absmaxSchema = (defaultGroup: number) => v.strictObject({ group: groupSchema(defaultGroup) })
export type AbsmaxParams = { group: number }

/** Ascending distinct table values, the code each maps to, and the midpoints between neighbours. */
interface Grid {
  values: Float64Array
  codes: Uint8Array
  mids: Float64Array
  /** For a value exactly on mids[i]: take i + 1 (upper) instead of i. */
  tieUp: Uint8Array
}

function buildGrid(t: AbsmaxTable): Grid {
  const byValue = new Map<number, number>()
  t.values.forEach((x, code) => {
    const key = x === 0 ? 0 : x // −0 and +0 are one level; the first code listed wins
    if (!byValue.has(key)) byValue.set(key, code)
  })
  const values = Float64Array.from([...byValue.keys()].sort((a, b) => a - b))
  const codes = Uint8Array.from(values, (x) => byValue.get(x)!)
  const mids = new Float64Array(values.length - 1)
  const tieUp = new Uint8Array(values.length - 1)
  for (let i = 0; i < mids.length; i++) {
    mids[i] = (values[i]! + values[i + 1]!) / 2
    tieUp[i] = t.ties === 'even-code' && (codes[i + 1]! & 1) === 0 ? 1 : 0
  }
  return { values, codes, mids, tieUp }
}

/** Index into grid.values of the level nearest to x. */
function nearest(grid: Grid, x: number): number {
  let lo = 0
  let hi = grid.mids.length
  // First midpoint ≥ x: everything below it rounds down.
  while (lo < hi) {
    const m = (lo + hi) >>> 1
    if (grid.mids[m]! < x) lo = m + 1
    else hi = m
  }
  if (lo < grid.mids.length && grid.mids[lo] === x && grid.tieUp[lo]) return lo + 1
  return lo
}

export class AbsmaxTableTensor extends PackedCodesTensor {
  constructor(
    readonly table: AbsmaxTable,
    rows: number,
    cols: number,
    readonly groupCols: number,
    codes: Uint8Array,
    readonly scales: F16Array,
  ) {
    super(table.id, rows, cols, 4, codes, absmaxStorage(rows, cols, { group: groupCols }))
  }

  protected decodeRow(row: number, codes: Uint8Array, out: Float32Array): void {
    const g = this.groupCols
    const perRow = this.cols / g
    const t = this.table.values
    for (let k = 0; k < perRow; k++) {
      const s = this.scales.values[row * perRow + k]!
      for (let j = k * g; j < (k + 1) * g; j++) out[j] = t[codes[j]!]! * s
    }
  }

  levels(row: number, col = 0): Float32Array {
    this.checkLevelsArgs(row, col)
    const s = this.scales.values[row * (this.cols / this.groupCols) + Math.floor(col / this.groupCols)]!
    return sortedUnique(Array.from(this.table.values, (x) => Math.fround(x * s)))
  }
}

export function absmaxStorage(rows: number, cols: number, params: AbsmaxParams): StorageBreakdown {
  checkShape(rows, cols)
  const g = groupColumns(cols, params.group)
  return { codes: packedBytes(rows * cols, 4), scales: rows * (cols / g) * 2, zeros: 0, tables: 0, outliers: 0 }
}

export function quantizeAbsmaxTable(table: AbsmaxTable, weight: Float32Array, rows: number, cols: number, params: AbsmaxParams, hooks?: QuantizeHooks): AbsmaxTableTensor {
  checkWeight(weight, rows, cols)
  const g = groupColumns(cols, params.group)
  const perRow = cols / g
  const grid = buildGrid(table)
  let tmax = 0
  for (const x of table.values) tmax = Math.max(tmax, Math.abs(x))
  const zeroCode = grid.codes[nearest(grid, 0)]!
  const scales = new F16Array(rows * perRow)
  const codes = new Uint8Array(rows * cols)
  forEachRow(rows, hooks, (r) => {
    for (let k = 0; k < perRow; k++) {
      const start = r * cols + k * g
      let amax = 0
      for (let j = start; j < start + g; j++) amax = Math.max(amax, Math.abs(weight[j]!))
      const s = scales.set(r * perRow + k, amax / tmax, () => `scale of row ${r} group ${k}`)
      if (s === 0) {
        codes.fill(zeroCode, start, start + g)
        continue
      }
      for (let j = start; j < start + g; j++) codes[j] = grid.codes[nearest(grid, Math.fround(weight[j]! / s))]!
    }
  })
  return new AbsmaxTableTensor(table, rows, cols, g, packCodes(codes, 4), scales)
}

export function absmaxTableMethod(table: AbsmaxTable): QuantMethod<AbsmaxParams> {
  return {
    id: table.id,
    label: table.label,
    schema: absmaxSchema(table.defaultGroup),
    needs: () => 'none',
    bits: () => 4,
    storage: absmaxStorage,
    quantize: (weight, rows, cols, params, _calibration, hooks) => quantizeAbsmaxTable(table, weight, rows, cols, params, hooks),
  }
}
