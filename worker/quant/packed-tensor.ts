/**
 * The QuantizedTensor shape every method here shares: one packed n-bit code per weight plus
 * method-specific side data (scales, tables, outliers) that `decodeRow` applies.
 */
import { totalBytes, type QuantizedTensor, type StorageBreakdown } from './contract'
import { checkRowRange } from './common'
import { unpackCodes } from './packing'

export abstract class PackedCodesTensor implements QuantizedTensor {
  readonly bytes: number

  constructor(
    readonly method: string,
    readonly rows: number,
    readonly cols: number,
    /** Bits per code. */
    readonly codeBits: number,
    /** packCodes() output over all rows·cols codes. */
    readonly codes: Uint8Array,
    readonly storage: StorageBreakdown,
  ) {
    this.bytes = totalBytes(storage)
  }

  /** Row `row` from its unpacked codes into `out` (length cols). */
  protected abstract decodeRow(row: number, codes: Uint8Array, out: Float32Array): void

  abstract levels(row: number, col?: number): Float32Array

  dequantizeRows(r0: number, r1: number): Float32Array {
    checkRowRange(this.rows, r0, r1)
    const cols = this.cols
    const out = new Float32Array((r1 - r0) * cols)
    const rowCodes = new Uint8Array(cols)
    for (let r = r0; r < r1; r++) {
      unpackCodes(this.codes, this.codeBits, r * cols, cols, rowCodes)
      this.decodeRow(r, rowCodes, out.subarray((r - r0) * cols, (r - r0 + 1) * cols))
    }
    return out
  }

  /** The code of one weight (tests and inspectors). */
  code(row: number, col: number): number {
    return unpackCodes(this.codes, this.codeBits, row * this.cols + col, 1, new Uint8Array(1))[0]!
  }

  protected checkLevelsArgs(row: number, col: number): void {
    if (!Number.isInteger(row) || row < 0 || row >= this.rows) throw new RangeError(`levels: row ${row} is outside [0, ${this.rows})`)
    if (!Number.isInteger(col) || col < 0 || col >= this.cols) throw new RangeError(`levels: column ${col} is outside [0, ${this.cols})`)
  }
}
