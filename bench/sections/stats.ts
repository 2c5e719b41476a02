import { matrixShape, type OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { wasmStatsAvailable } from '../../worker/stats/wasm-accumulator'
import type { StatsKernelKind } from '../../worker/stats/stats-accumulator'
import { StatsService } from '../../worker/stats/stats-service'
import { FileHandleCache, STATS_CHUNK_FLOATS, computeTensorStats } from '../../worker/stats/tensor-stats'
import type { BenchReference, BenchRow, BenchSection } from '../bench-types'
import { ensureSyntheticModel } from '../synthetic-model'

const GB = 1e9

/**
 * Per-tensor statistics over every weight of the synthetic model, in GB/s of stored (fp16)
 * bytes, each next to a plain memory copy of the same number of bytes measured in this run.
 */
export const section: BenchSection = {
  name: 'stats',
  description: 'per-tensor statistics over all weights (GB/s of stored bytes) vs memory copy',
  async run(ctx) {
    const synth = await ensureSyntheticModel(ctx.quick, ctx.log)
    const bytes = synth.weightBytes
    const names = synth.tensors.map((t) => t.name)
    const gbps = (ms: number) => bytes / GB / (ms / 1000)

    ctx.log(`memory copy of ${(bytes / GB).toFixed(2)} GB …`)
    const copy = memoryCopyGBps(bytes)
    const ref: BenchReference = { name: 'Buffer.copy of the same bytes', value: copy, unit: 'GB/s' }
    const rows: BenchRow[] = []

    const model = await openModel(synth.dir)
    try {
      ctx.log('read + decode only …')
      rows.push({ name: 'read + decode only (readRows, 1 thread)', value: gbps(await timeReadOnly(model, names)), unit: 'GB/s', reference: ref })
      const kernels: StatsKernelKind[] = wasmStatsAvailable() ? ['ts', 'wasm'] : ['ts']
      for (const kernel of kernels) {
        ctx.log(`stats, ${kernel} kernel, 1 thread …`)
        const ms = await timeInProcess(model, names, kernel)
        rows.push({ name: `stats, ${kernel === 'ts' ? 'TS reference' : 'WASM SIMD'} kernel, 1 thread`, value: gbps(ms), unit: 'GB/s', reference: ref })
      }
      if (!kernels.includes('wasm')) rows.at(-1)!.note = 'stats.wasm missing: run npm run build:wasm'
    } finally {
      await model.close()
    }

    for (const threads of [1, 2]) {
      ctx.log(`stats service, ${threads} thread(s) …`)
      const ms = await timeService(synth.dir, names, threads)
      const row: BenchRow = { name: `stats service (worker pool), ${threads} thread${threads > 1 ? 's' : ''}`, value: gbps(ms), unit: 'GB/s', reference: ref }
      if (threads === 2) Object.assign(row, { target: '>= 1 GB/s', ok: row.value >= 1 })
      rows.push(row)
    }
    return rows
  },
}

/** Copies `total` bytes through two 256 MB buffers (larger than any cache); best of 3. */
function memoryCopyGBps(total: number): number {
  const size = Math.min(total, 256 << 20)
  const src = Buffer.alloc(size, 1)
  const dst = Buffer.alloc(size)
  let best = Infinity
  for (let rep = 0; rep < 3; rep++) {
    const t0 = performance.now()
    for (let done = 0; done < total; done += size) src.copy(dst, 0, 0, Math.min(size, total - done))
    best = Math.min(best, performance.now() - t0)
  }
  return total / GB / (best / 1000)
}

/** The reader alone, chunked like computeTensorStats: the floor for any kernel. */
async function timeReadOnly(model: OpenedModel, names: string[]): Promise<number> {
  const warm = names.find((n) => n.includes('k_proj'))!
  await model.readRows(warm, 0, matrixShape(model.tensors.find((t) => t.name === warm)!.shape).rows)
  const t0 = performance.now()
  for (const name of names) {
    const { rows, cols } = matrixShape(model.tensors.find((t) => t.name === name)!.shape)
    const step = Math.max(1, Math.floor(STATS_CHUNK_FLOATS / cols))
    for (let r = 0; r < rows; r += step) await model.readRows(name, r, Math.min(rows, r + step))
  }
  return performance.now() - t0
}

async function timeInProcess(model: OpenedModel, names: string[], kernel: StatsKernelKind): Promise<number> {
  const files = new FileHandleCache()
  try {
    // Warm the kernel up on one small tensor so JIT tier-up is not billed to the big ones.
    await computeTensorStats(model, names.find((n) => n.includes('k_proj'))!, {}, { kernel, files })
    const t0 = performance.now()
    for (const name of names) await computeTensorStats(model, name, {}, { kernel, files })
    return performance.now() - t0
  } finally {
    await files.close()
  }
}

async function timeService(dir: string, names: string[], threads: number): Promise<number> {
  const svc = new StatsService({ threads })
  try {
    // Start the workers (tsx in source mode takes a moment) outside the timed part; other
    // options than the timed call, so nothing is served from the cache.
    await svc.computeAll(
      dir,
      names.filter((n) => n.includes('layers.0.self_attn')),
      { bins: 8 },
    )
    const t0 = performance.now()
    await svc.computeAll(dir, names)
    return performance.now() - t0
  } finally {
    await svc.close()
  }
}
