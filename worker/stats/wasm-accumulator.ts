import { compileKernel } from '../kernels/load-wasm'
import {
  FINE_BINS,
  checkRowChunk,
  finalizeStats,
  heatmapGeometry,
  histogramScale,
  unpackTensorStats,
  type HeatmapGeometry,
  type PackedTensorStats,
  type StatsAccumulator,
} from './stats-accumulator'
import type { StatsOptions, TensorStats } from './stats-types'

/**
 * The WASM SIMD stats kernel (source: worker/kernels/assembly/stats.ts, loaded by kernels/load-wasm.ts), behind the same
 * StatsAccumulator interface as the TS reference. The module is compiled once per thread;
 * each accumulator borrows an instance (its own linear memory) from a small pool. JS owns the
 * memory layout: it grows the memory once per accumulator and hands the kernel pointers.
 */
interface StatsExports {
  memory: WebAssembly.Memory
  init(
    cols: number,
    rows: number,
    hr: number,
    hc: number,
    k: number,
    colMax: number,
    colSum: number,
    colAcc: number,
    colCell: number,
    cellSum: number,
    cellBad: number,
    fine: number,
    heapVal: number,
    heapIdx: number,
    rowMax: number,
  ): void
  addRows(ptr: number, rows: number, rowStart: number): void
  initRaw16(kind: number, counts: number, colMax16: number, distinct: number): void
  heatmapMeans(out: number): void
  addRaw16(src: number, rows: number, rowStart: number): void
  finishRows(): void
  rebinFine(lo: number, scale: number, bins: number, out: number): void
  histogramRows(ptr: number, n: number, lo: number, scale: number, bins: number, out: number): void
  readScalars(out: number): void
  decodeRaw(kind: number, src: number, dst: number, n: number): void
}

/** Stored types the kernel decodes itself from raw little-endian bytes. */
export const RAW_DTYPES = { F32: { kind: 0, bytes: 4 }, F16: { kind: 1, bytes: 2 }, BF16: { kind: 2, bytes: 2 } } as const
export type RawDType = keyof typeof RAW_DTYPES

export function isRawDType(dtype: string): dtype is RawDType {
  return Object.prototype.hasOwnProperty.call(RAW_DTYPES, dtype)
}

/** Floats per raw chunk (4 MB decoded): what one file read fills. */
const CHUNK_FLOATS = 1 << 20
/** Floats per kernel call (256 KB): decode, moments and the row pass share it in L2. */
const BLOCK_FLOATS = 1 << 16
/** Instances whose memory grew past this are dropped instead of pooled. */
const POOL_MEMORY_LIMIT = 256 << 20
const PAGE = 65536

let compiled: WebAssembly.Module | null = null
const pool: StatsExports[] = []

function statsModule(): WebAssembly.Module {
  return (compiled ??= compileKernel('stats'))
}

/** True when the WASM kernel can be loaded in this thread. */
export function wasmStatsAvailable(): boolean {
  try {
    statsModule()
    return true
  } catch {
    return false
  }
}

function borrowInstance(): StatsExports {
  const reused = pool.pop()
  if (reused) return reused
  const instance = new WebAssembly.Instance(statsModule(), { env: { abort: wasmAbort } })
  return instance.exports as unknown as StatsExports
}

function wasmAbort(): never {
  throw new Error('stats.wasm aborted')
}

interface Layout {
  scalars: number
  colMax: number
  colSum: number
  colAcc: number
  colCell: number
  cellSum: number
  cellBad: number
  fine: number
  heapVal: number
  heapIdx: number
  hist: number
  rowMax: number
  /** Raw F16/BF16 path only (else 0): u32 count per 16-bit pattern, u16 column absmax bits. */
  counts: number
  colMax16: number
  distinct: number
  heatmap: number
  data: number
  /** Two buffers of stored bytes: one is read into while the other is decoded. */
  raw: [number, number]
  end: number
}

function planLayout(base: number, cols: number, cells: number, k: number, bins: number, blockRows: number, rawBytes: number, raw16: boolean): Layout {
  let at = Math.ceil(base / 16) * 16
  const take = (bytes: number) => {
    const p = at
    at += Math.ceil(bytes / 16) * 16
    return p
  }
  return {
    scalars: take(12 * 8),
    // First, at a fixed place: the kernel keeps it zeroed between tensors (see init).
    fine: take(FINE_BINS * 4),
    colMax: take(cols * 4),
    colSum: take(cols * 8),
    colAcc: take(cols * 4),
    colCell: take(cols * 4),
    cellSum: take(cells * 8),
    cellBad: take(cells * 8),
    heapVal: take(k * 4),
    heapIdx: take(k * 8),
    hist: take(bins * 8),
    rowMax: take(blockRows * 4),
    counts: raw16 ? take(65536 * 4) : 0,
    colMax16: raw16 ? take(cols * 2) : 0,
    distinct: raw16 ? take(65536 * 8) : 0,
    heatmap: take(cells * 8),
    // The raw 16-bit path never decodes into the data region.
    data: take(raw16 ? 0 : blockRows * cols * 4),
    raw: [take(rawBytes), take(rawBytes)],
    end: at,
  }
}

export class WasmStatsAccumulator implements StatsAccumulator {
  private wasm: StatsExports | null
  private readonly layout: Layout
  /** Rows per raw chunk (what a reader fills at once) and per kernel block (fits in L2). */
  private readonly capRows: number
  private readonly blockRows: number
  private readonly heat: HeatmapGeometry
  private readonly rowAbsmax: Float32Array
  private nextRow = 0
  private histRows = 0
  private histStarted = false
  private scalarsCache: Float64Array | null = null
  /** How pass 1 gets its values; fixed by the first call ('raw16': addRawRows of F16/BF16). */
  private mode: 'f32' | 'raw16' | null = null

  /**
   * `rawDType`: reserve two buffers for stored bytes of this type (see rawBuffer), so a
   * reader can fill them directly.
   */
  constructor(
    readonly rows: number,
    readonly cols: number,
    private readonly options: StatsOptions,
    private readonly rawDType: RawDType | null = null,
  ) {
    if (cols < 1 || rows < 1) throw new RangeError(`stats kernel needs a non-empty matrix, got ${rows}×${cols}`)
    const wasm = borrowInstance()
    this.wasm = wasm
    this.capRows = Math.min(rows, Math.max(1, Math.floor(CHUNK_FLOATS / cols)))
    this.blockRows = Math.min(this.capRows, Math.max(1, Math.floor(BLOCK_FLOATS / cols)))
    this.heat = heatmapGeometry(rows, cols, options.heatmapSize)
    this.rowAbsmax = new Float32Array(rows)
    const cells = this.heat.rows * this.heat.cols
    const rawBytes = rawDType ? this.capRows * cols * RAW_DTYPES[rawDType].bytes : 0
    // The kernel's own data (none today) would live in the first page; start above it.
    this.layout = planLayout(PAGE, cols, cells, options.topK, options.bins, this.blockRows, rawBytes, this.raw16)
    const have = wasm.memory.buffer.byteLength
    if (this.layout.end > have) wasm.memory.grow(Math.ceil((this.layout.end - have) / PAGE))
    const L = this.layout
    new Int32Array(wasm.memory.buffer, L.colCell, cols).set(this.heat.colCell)
    wasm.init(cols, rows, this.heat.rows, this.heat.cols, options.topK, L.colMax, L.colSum, L.colAcc, L.colCell, L.cellSum, L.cellBad, L.fine, L.heapVal, L.heapIdx, L.rowMax)
  }

  private get exports(): StatsExports {
    if (!this.wasm) throw new Error('stats accumulator was disposed')
    return this.wasm
  }

  /** True when raw chunks hold 16-bit floats, which the kernel counts by bit pattern. */
  private get raw16(): boolean {
    return this.rawDType === 'F16' || this.rawDType === 'BF16'
  }

  private setMode(mode: 'f32' | 'raw16'): void {
    if (this.mode === mode) return
    if (this.mode !== null) throw new Error('stats accumulator: pass 1 must use either addRows or addRawRows, not both')
    this.mode = mode
    if (mode === 'raw16') this.exports.initRaw16(RAW_DTYPES[this.rawDType!].kind, this.layout.counts, this.layout.colMax16, this.layout.distinct)
  }

  /** Accumulates the block of `n` rows now in the data region (or at `raw16Ptr`). */
  private block(rowStart: number, n: number, raw16Ptr = 0): void {
    const wasm = this.exports
    if (raw16Ptr) wasm.addRaw16(raw16Ptr, n, rowStart)
    else wasm.addRows(this.layout.data, n, rowStart)
    this.rowAbsmax.set(new Float32Array(wasm.memory.buffer, this.layout.rowMax, n), rowStart)
    this.nextRow = rowStart + n
    if (this.nextRow === this.rows) wasm.finishRows()
  }

  addRows(values: Float32Array, rowStart: number): void {
    const wasm = this.exports
    const n = checkRowChunk(values, rowStart, this.nextRow, this.rows, this.cols)
    if (this.raw16) throw new Error('stats accumulator with 16-bit raw buffers takes addRawRows only')
    this.setMode('f32')
    const { cols, blockRows } = this
    for (let done = 0; done < n; done += blockRows) {
      const take = Math.min(blockRows, n - done)
      new Float32Array(wasm.memory.buffer, this.layout.data, take * cols).set(values.subarray(done * cols, (done + take) * cols))
      this.block(rowStart + done, take)
    }
  }

  /** Most rows one raw chunk holds. */
  get maxChunkRows(): number {
    return this.capRows
  }

  /**
   * A view of raw buffer `slot` (0 or 1) for `byteLength` stored bytes, to read a file range
   * into. Valid until dispose(); the memory never grows after construction.
   */
  rawBuffer(slot: 0 | 1, byteLength: number): Uint8Array {
    if (!this.rawDType) throw new Error('this accumulator was created without raw buffers')
    if (byteLength > this.capRows * this.cols * RAW_DTYPES[this.rawDType].bytes) throw new RangeError(`raw chunk of ${byteLength} bytes exceeds the buffer`)
    return new Uint8Array(this.exports.memory.buffer, this.layout.raw[slot], byteLength)
  }

  /** Decodes rows [r, r + n) of raw buffer `slot` into the data region. */
  private decodeBlock(slot: 0 | 1, r: number, n: number): void {
    const { kind, bytes } = RAW_DTYPES[this.rawDType!]
    this.exports.decodeRaw(kind, this.layout.raw[slot] + r * this.cols * bytes, this.layout.data, n * this.cols)
  }

  /** Pass 1 over `nRows` rows whose stored bytes are in raw buffer `slot`. */
  addRawRows(slot: 0 | 1, rowStart: number, nRows: number): void {
    if (rowStart !== this.nextRow) throw new RangeError(`stats rows must arrive in order: expected row ${this.nextRow}, got ${rowStart}`)
    if (nRows < 1 || nRows > this.capRows || rowStart + nRows > this.rows) throw new RangeError(`raw chunk of ${nRows} rows at ${rowStart} does not fit`)
    if (this.raw16) {
      // Counted by bit pattern straight from the stored bytes: no decode, no second pass.
      this.setMode('raw16')
      const rowBytes = this.cols * 2
      for (let r = 0; r < nRows; r += this.blockRows) {
        this.block(rowStart + r, Math.min(this.blockRows, nRows - r), this.layout.raw[slot] + r * rowBytes)
      }
      return
    }
    this.setMode('f32')
    // Block by block, so decode, moments and the row pass all find the block in L2.
    for (let r = 0; r < nRows; r += this.blockRows) {
      const take = Math.min(this.blockRows, nRows - r)
      this.decodeBlock(slot, r, take)
      this.block(rowStart + r, take)
    }
  }

  /** Pass 2 over `nRows` rows whose stored bytes are in raw buffer `slot`. */
  addRawHistogramRows(slot: 0 | 1, nRows: number): void {
    if (!this.needsHistogramPass()) throw new Error('histogram pass: this tensor needs none')
    for (let r = 0; r < nRows; r += this.blockRows) {
      const take = Math.min(this.blockRows, nRows - r)
      this.decodeBlock(slot, r, take)
      this.histogramFromData(take * this.cols)
    }
    this.histRows += nRows
  }

  addHistogramRows(values: Float32Array): void {
    const wasm = this.exports
    const cap = this.blockRows * this.cols
    for (let done = 0; done < values.length; done += cap) {
      const take = Math.min(cap, values.length - done)
      new Float32Array(wasm.memory.buffer, this.layout.data, take).set(values.subarray(done, done + take))
      this.histogramFromData(take)
    }
    this.histRows += values.length / this.cols
  }

  private histogramFromData(n: number): void {
    const wasm = this.exports
    if (this.nextRow !== this.rows) throw new Error('histogram pass: pass 1 is not complete')
    if (!this.needsHistogramPass()) throw new Error('histogram pass: this tensor needs none')
    const L = this.layout
    const { bins } = this.options
    if (!this.histStarted) {
      new Float64Array(wasm.memory.buffer, L.hist, bins).fill(0)
      this.histStarted = true
    }
    const s = this.scalars()
    wasm.histogramRows(L.data, n, s[0]!, histogramScale(s[0]!, s[1]!, bins), bins, L.hist)
  }

  private scalars(): Float64Array {
    if (this.scalarsCache) return this.scalarsCache
    const wasm = this.exports
    wasm.readScalars(this.layout.scalars)
    const s = new Float64Array(wasm.memory.buffer, this.layout.scalars, 12).slice()
    if (this.nextRow === this.rows) this.scalarsCache = s
    return s
  }

  needsHistogramPass(): boolean {
    return this.scalars()[5] !== 0
  }

  finish(tensor: string): TensorStats {
    return unpackTensorStats(this.finishPacked(tensor))
  }

  finishPacked(tensor: string): PackedTensorStats {
    const wasm = this.exports
    if (this.nextRow !== this.rows) throw new Error(`stats of '${tensor}': only ${this.nextRow} of ${this.rows} rows were added`)
    const s = this.scalars()
    const L = this.layout
    const { bins, topK } = this.options
    if (this.needsHistogramPass()) {
      if (this.histRows !== this.rows) throw new Error(`stats of '${tensor}': histogram pass saw ${this.histRows} of ${this.rows} rows`)
    } else {
      new Float64Array(wasm.memory.buffer, L.hist, bins).fill(0)
      wasm.rebinFine(s[0]!, histogramScale(s[0]!, s[1]!, bins), bins, L.hist)
    }
    const mem = wasm.memory.buffer
    const heapSize = topK > 0 ? s[11]! : 0
    const heapVal = new Float32Array(mem, L.heapVal, heapSize)
    const heapIdx = new Float64Array(mem, L.heapIdx, heapSize)
    const top = new Array<{ value: number; index: number }>(heapSize)
    for (let i = 0; i < heapSize; i++) top[i] = { value: heapVal[i]!, index: heapIdx[i]! }
    const cells = this.heat.rows * this.heat.cols
    wasm.heatmapMeans(L.heatmap)
    return finalizeStats(tensor, {
      rows: this.rows,
      cols: this.cols,
      options: this.options,
      min: s[0]!,
      max: s[1]!,
      nan: s[2]!,
      inf: s[3]!,
      zeros: s[4]!,
      moments: { n: s[6]!, mean: s[7]!, m2: s[8]!, m3: s[9]!, m4: s[10]! },
      histogram: new Float64Array(mem, L.hist, bins).slice(),
      rowAbsmax: this.rowAbsmax.slice(),
      colAbsmax: new Float32Array(mem, L.colMax, this.cols).slice(),
      top,
      heatmap: this.heat,
      cellSum: new Float64Array(mem, L.cellSum, cells),
      cellBad: new Float64Array(mem, L.cellBad, cells),
      heatmapMeans: new Float64Array(mem, L.heatmap, cells).slice(),
    })
  }

  dispose(): void {
    const wasm = this.wasm
    this.wasm = null
    if (wasm && wasm.memory.buffer.byteLength <= POOL_MEMORY_LIMIT && pool.length < 4) pool.push(wasm)
  }
}
