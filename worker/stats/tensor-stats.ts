import type { FileHandle } from 'node:fs/promises'
import { FileAccessError, openRegularFile } from '../io/regular-file'
import { matrixShape, type OpenedModel, type TensorEntry } from '../formats/contract'
import { ModelFormatError } from '../common/errors'
import { RAW_DTYPES, WasmStatsAccumulator, isRawDType, wasmStatsAvailable, type RawDType } from './wasm-accumulator'
import {
  finalizeStats,
  heatmapGeometry,
  resolveStatsOptions,
  unpackTensorStats,
  type PackedTensorStats,
  type StatsAccumulator,
  type StatsKernelKind,
} from './stats-accumulator'
import { ReferenceStatsAccumulator } from './stats-reference'
import type { StatsOptions, TensorStats } from './stats-types'

/** Decoded floats per readRows call: ~4 MB, so a tensor never sits in memory whole. */
export const STATS_CHUNK_FLOATS = 1 << 20

/**
 * Stored types whose decoded values are exact 16-bit floats, so pass 1 alone yields the
 * exact histogram (see stats-accumulator.ts). Only used to predict the progress total.
 */
const SINGLE_PASS_DTYPES = new Set(['F16', 'BF16', 'F8_E4M3', 'F8_E5M2', 'I8', 'U8', 'BOOL'])

export interface TensorStatsContext {
  /** 'wasm' (default when stats.wasm loads) or 'ts' (the reference kernel). */
  kernel?: StatsKernelKind
  signal?: AbortSignal
  /** Values processed so far and in total, across the one or two passes. */
  onProgress?(done: number, total: number): void
  /** Floats per read (tests use small chunks to exercise chunk borders). */
  chunkFloats?: number
  /**
   * Let the WASM kernel read F16/BF16/F32 bytes of safetensors and GGUF files itself instead
   * of going through readRows (default true). Same results, about twice the throughput.
   */
  direct?: boolean
  /** Open files to reuse across tensors (the direct path opens and closes one per tensor otherwise). */
  files?: FileHandleCache
}

/** File handles kept open across the tensors of one model; the owner closes them. */
export class FileHandleCache {
  private readonly handles = new Map<string, Promise<FileHandle>>()

  get(path: string): Promise<FileHandle> {
    let h = this.handles.get(path)
    if (!h) {
      // A model file swapped for a FIFO since it was opened must not block this open.
      h = openRegularFile(path).then((r) => r.handle)
      this.handles.set(path, h)
      h.catch(() => this.handles.delete(path))
    }
    return h
  }

  async close(): Promise<void> {
    const all = [...this.handles.values()]
    this.handles.clear()
    await Promise.all(all.map(async (h) => (await h.catch(() => null))?.close()))
  }
}

export function abortError(): Error {
  return new DOMException('statistics were cancelled', 'AbortError')
}

export function createStatsAccumulator(kind: StatsKernelKind | undefined, rows: number, cols: number, options: StatsOptions): StatsAccumulator {
  const useWasm = kind === 'wasm' || (kind === undefined && wasmStatsAvailable())
  return useWasm ? new WasmStatsAccumulator(rows, cols, options) : new ReferenceStatsAccumulator(rows, cols, options)
}

/** Tensors by name per open model: a linear find per tensor made a whole model cost O(n²). */
const tensorIndex = new WeakMap<OpenedModel, { of: readonly TensorEntry[]; byName: Map<string, TensorEntry> }>()

export function findTensor(model: OpenedModel, name: string): TensorEntry {
  let index = tensorIndex.get(model)
  if (index?.of !== model.tensors) {
    const byName = new Map<string, TensorEntry>()
    for (const t of model.tensors) if (!byName.has(t.name)) byName.set(t.name, t)
    tensorIndex.set(model, (index = { of: model.tensors, byName }))
  }
  const entry = index.byName.get(name)
  if (!entry) throw new ModelFormatError(model.files[0] ?? '(model)', name, 'no such tensor in this model')
  if (!entry.decodable) throw new ModelFormatError(entry.file, name, `stored type ${entry.dtype} cannot be decoded by this build`)
  return entry
}

/**
 * Statistics of one tensor, streamed in row chunks of ~4 MB of floats. The next chunk is
 * read while the current one is being accumulated. A second pass runs only when the values
 * are not exact 16-bit floats (F32 tensors, dequantised GGUF blocks …) and the histogram
 * therefore needs the final min/max.
 */
export async function computeTensorStats(
  model: OpenedModel,
  name: string,
  options: Partial<StatsOptions> = {},
  ctx: TensorStatsContext = {},
): Promise<TensorStats> {
  return unpackTensorStats(await computeTensorStatsPacked(model, name, options, ctx))
}

/** computeTensorStats with typed arrays, for posting across threads (see PackedTensorStats). */
export async function computeTensorStatsPacked(
  model: OpenedModel,
  name: string,
  options: Partial<StatsOptions> = {},
  ctx: TensorStatsContext = {},
): Promise<PackedTensorStats> {
  const opts = resolveStatsOptions(options)
  const entry = findTensor(model, name)
  const { rows, cols } = matrixShape(entry.shape)
  if (rows === 0 || cols === 0) return emptyStats(name, rows, cols, opts)

  const chunkRows = Math.max(1, Math.floor((ctx.chunkFloats ?? STATS_CHUNK_FLOATS) / cols))
  const values = rows * cols
  let total = SINGLE_PASS_DTYPES.has(entry.dtype) ? values : 2 * values
  let done = 0
  const { signal, onProgress } = ctx
  const check = () => {
    if (signal?.aborted) throw abortError()
  }
  const reader = <T extends Float32Array | Float64Array>(readRows: (name: string, r0: number, r1: number) => Promise<T>) => async (r0: number): Promise<T> => {
    const r1 = Math.min(rows, r0 + chunkRows)
    const out = await readRows(name, r0, r1)
    if (out.length !== (r1 - r0) * cols) {
      throw new ModelFormatError(entry.file, name, `reader returned ${out.length} values for rows ${r0}..${r1}, expected ${(r1 - r0) * cols}`)
    }
    return out
  }
  /** Reads all rows in order with one chunk of read-ahead, handing each to `use`. */
  const streamWith = async <T extends Float32Array | Float64Array>(read: (r0: number) => Promise<T>, use: (chunk: T, r0: number) => void) => {
    let pending: Promise<T> | null = read(0)
    for (let r0 = 0; r0 < rows; r0 += chunkRows) {
      const chunk: T = await pending!
      check()
      pending = r0 + chunkRows < rows ? read(r0 + chunkRows) : null
      // An abandoned read-ahead must not surface as an unhandled rejection.
      pending?.catch(() => {})
      use(chunk, r0)
      done += chunk.length
      onProgress?.(done, total)
    }
  }

  check()
  // F64 values are counted in float64 (float32 would turn 1e300 into Infinity): reference kernel.
  if (entry.dtype === 'F64' && model.readRows64) {
    const read64 = reader(model.readRows64.bind(model))
    const acc = new ReferenceStatsAccumulator(rows, cols, opts, true)
    await streamWith(read64, (chunk, r0) => acc.addRows(chunk, r0))
    await streamWith(read64, (chunk) => acc.addHistogramRows(chunk))
    return acc.finishPacked(name)
  }
  const read = reader(model.readRows.bind(model))
  const stream = (use: (chunk: Float32Array, r0: number) => void) => streamWith(read, use)
  const direct = directSource(model, entry, rows * cols, ctx)
  if (direct) {
    const acc = new WasmStatsAccumulator(rows, cols, opts, direct)
    try {
      return await directStats(acc, entry, { ...ctx, chunkRows: Math.min(chunkRows, acc.maxChunkRows), total, check })
    } finally {
      acc.dispose()
    }
  }
  const acc = createStatsAccumulator(ctx.kernel, rows, cols, opts)
  try {
    await stream((chunk, r0) => acc.addRows(chunk, r0))
    if (acc.needsHistogramPass()) {
      total = 2 * values
      await stream((chunk) => acc.addHistogramRows(chunk))
    } else if (total !== values) {
      total = values
      onProgress?.(done, total)
    }
    return acc.finishPacked(name)
  } finally {
    acc.dispose()
  }
}

/**
 * A tensor with no elements costs nothing, whatever its other dims say (a [2^29, 0] header
 * must not allocate 2^29 per-row entries): its per-channel arrays and heatmap are empty.
 */
export function emptyStats(tensor: string, rows: number, cols: number, options: StatsOptions): PackedTensorStats {
  const heatmap = heatmapGeometry(0, 0, options.heatmapSize)
  return finalizeStats(tensor, {
    rows,
    cols,
    options,
    min: 0,
    max: 0,
    nan: 0,
    inf: 0,
    zeros: 0,
    moments: { n: 0, mean: 0, m2: 0, m3: 0, m4: 0 },
    histogram: new Float64Array(options.bins),
    rowAbsmax: new Float32Array(0),
    colAbsmax: new Float32Array(0),
    top: [],
    heatmap,
    cellSum: new Float64Array(0),
    cellBad: new Float64Array(0),
  })
}

/**
 * The stored type when the WASM kernel can read the tensor's bytes itself: formats whose
 * TensorEntry range holds plain little-endian row-major values (safetensors, GGUF F16/BF16/F32).
 */
function directSource(model: OpenedModel, entry: TensorEntry, count: number, ctx: TensorStatsContext): RawDType | null {
  if (ctx.direct === false || ctx.kernel === 'ts') return null
  if (model.format !== 'safetensors' && model.format !== 'gguf') return null
  // Virtual entries (dequantised views a reader derives) have no plain bytes of their own.
  if (entry.derivedFrom) return null
  if (!isRawDType(entry.dtype) || entry.byteLength !== count * RAW_DTYPES[entry.dtype].bytes) return null
  return ctx.kernel === 'wasm' || wasmStatsAvailable() ? entry.dtype : null
}

interface DirectContext extends TensorStatsContext {
  chunkRows: number
  total: number
  check(): void
}

/**
 * Streams the tensor's file range into the accumulator's two raw buffers, reading chunk k+1
 * (on the I/O thread pool) while chunk k is decoded and accumulated.
 */
async function directStats(acc: WasmStatsAccumulator, entry: TensorEntry, ctx: DirectContext): Promise<PackedTensorStats> {
  const { rows, cols } = acc
  const rowBytes = (entry.byteLength / rows) | 0
  const { chunkRows, check, onProgress } = ctx
  let total = ctx.total
  let done = 0
  let fh: FileHandle
  try {
    fh = await (ctx.files ? ctx.files.get(entry.file) : openRegularFile(entry.file).then((r) => r.handle))
  } catch (err) {
    throw new ModelFormatError(entry.file, entry.name, `cannot open file: ${err instanceof FileAccessError ? err.problem : (err as Error).message}`)
  }
  const readChunk = async (slot: 0 | 1, r0: number): Promise<number> => {
    const n = Math.min(chunkRows, rows - r0)
    const buf = acc.rawBuffer(slot, n * rowBytes)
    for (let got = 0; got < buf.length; ) {
      const { bytesRead } = await fh.read(buf, got, buf.length - got, entry.byteOffset + r0 * rowBytes + got)
      if (bytesRead === 0) {
        throw new ModelFormatError(entry.file, entry.name, `unexpected end of file at byte ${entry.byteOffset + r0 * rowBytes + got} (truncated?)`)
      }
      got += bytesRead
    }
    return n
  }
  // A read still writing into the kernel's memory must finish before the memory is reused.
  let pending: Promise<number> | null = null
  const pass = async (use: (slot: 0 | 1, r0: number, n: number) => void) => {
    let next = readChunk(0, 0)
    pending = next
    for (let r0 = 0, slot: 0 | 1 = 0; r0 < rows; r0 += chunkRows, slot = slot === 0 ? 1 : 0) {
      const n = await next
      pending = null
      check()
      if (r0 + n < rows) pending = next = readChunk(slot === 0 ? 1 : 0, r0 + n)
      use(slot, r0, n)
      done += n * cols
      onProgress?.(done, total)
    }
  }
  try {
    await pass((slot, r0, n) => acc.addRawRows(slot, r0, n))
    if (acc.needsHistogramPass()) {
      total = 2 * rows * cols
      await pass((slot, _r0, n) => acc.addRawHistogramRows(slot, n))
    } else if (total !== rows * cols) {
      total = rows * cols
      onProgress?.(done, total)
    }
    return acc.finishPacked(entry.name)
  } finally {
    await (pending as Promise<number> | null)?.catch(() => 0)
    if (!ctx.files) await fh.close()
  }
}
