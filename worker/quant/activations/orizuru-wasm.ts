/**
 * The Orizuru detector's WASM SIMD kernel (source: worker/kernels/assembly/orizuru.ts, built by
 * `npm run build:wasm`, loaded by kernels/load-wasm.ts). Same arrays as topKOutliers() in
 * orizuru.ts, element for element (test/unit/quant-activations.test.ts); the kernel only makes
 * the scan four values at a time. One instance per thread; JS owns its memory: each call lays
 * out its regions from PAGE upwards, copies a chunk of rows in, runs, copies the outputs out.
 */
import { compileKernel } from '../../kernels/load-wasm'
import { ActivationValueError, allocTopK, checkTopKArgs, topKOutliers, type TopKOutliers } from './orizuru'

interface OrizuruExports {
  memory: WebAssembly.Memory
  topK(src: number, rows: number, cols: number, k: number, maxV: number, maxC: number, minV: number, minC: number, scratch: number): number
  nanRow: { value: number }
  nanCol: { value: number }
}

const PAGE = 65536
/** Input floats per chunk (4 MB): the copy in stays in cache, the memory stays small. */
const CHUNK_FLOATS = 1 << 20

let compiled: WebAssembly.Module | null | undefined
let instance: OrizuruExports | null = null

function orizuruModule(): WebAssembly.Module | null {
  if (compiled === undefined) {
    try {
      compiled = compileKernel('orizuru')
    } catch {
      compiled = null
    }
  }
  return compiled
}

/** True when orizuru.wasm can be loaded in this thread. */
export function orizuruWasmAvailable(): boolean {
  return orizuruModule() !== null
}

function wasm(): OrizuruExports {
  if (instance) return instance
  const module = orizuruModule() ?? compileKernel('orizuru') // throws, naming where it looked
  const inst = new WebAssembly.Instance(module, { env: { abort: () => { throw new Error('orizuru.wasm aborted') } } })
  return (instance = inst.exports as unknown as OrizuruExports)
}

const align = (n: number) => Math.ceil(n / 16) * 16

/** topKOutliers() in WASM SIMD; same arguments, same result, same errors. */
export function topKOutliersWasm(x: Float32Array, rows: number, cols: number, k: number, tensor: string | null = null): TopKOutliers {
  checkTopKArgs(x, rows, cols, k)
  if (k === 0) return topKOutliers(x, rows, cols, 0, tensor) // nothing to keep: the NaN scan only
  const res = allocTopK(rows, k)
  const e = wasm()
  const chunkRows = Math.max(1, Math.min(rows, Math.floor(CHUNK_FLOATS / cols)))
  const src = PAGE
  const maxV = src + align(chunkRows * cols * 4)
  const maxC = maxV + align(chunkRows * k * 4)
  const minV = maxC + align(chunkRows * k * 4)
  const minC = minV + align(chunkRows * k * 4)
  const scratch = minC + align(chunkRows * k * 4)
  const end = scratch + 16 * k
  const have = e.memory.buffer.byteLength
  if (end > have) e.memory.grow(Math.ceil((end - have) / PAGE))
  const mem = e.memory.buffer
  for (let r0 = 0; r0 < rows; r0 += chunkRows) {
    const n = Math.min(chunkRows, rows - r0)
    new Float32Array(mem, src, n * cols).set(x.subarray(r0 * cols, (r0 + n) * cols))
    if (e.topK(src, n, cols, k, maxV, maxC, minV, minC, scratch) !== 0) {
      throw new ActivationValueError(tensor, r0 + e.nanRow.value, e.nanCol.value, 'NaN in the activations (the top-k outlier detector cannot rank it)')
    }
    res.maxValues.set(new Float32Array(mem, maxV, n * k), r0 * k)
    res.maxCols.set(new Int32Array(mem, maxC, n * k), r0 * k)
    res.minValues.set(new Float32Array(mem, minV, n * k), r0 * k)
    res.minCols.set(new Int32Array(mem, minC, n * k), r0 * k)
  }
  return res
}

export type OrizuruKernel = 'ts' | 'wasm'

/**
 * The detector by speed only (both give the same arrays): 'ts' forces the TS heaps, 'wasm' the
 * kernel (an error when orizuru.wasm is missing), unset takes WASM when it loads.
 */
export function detectTopK(x: Float32Array, rows: number, cols: number, k: number, tensor: string | null = null, kernel?: OrizuruKernel): TopKOutliers {
  const useWasm = kernel === 'wasm' || (kernel === undefined && orizuruWasmAvailable())
  return useWasm ? topKOutliersWasm(x, rows, cols, k, tensor) : topKOutliers(x, rows, cols, k, tensor)
}
