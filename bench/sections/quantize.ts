import { matrixShape, type OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { WorkerPool } from '../../worker/jobs/pool'
import type { LayerCalibration } from '../../worker/quant/contract'
import type { QuantJobs } from '../../worker/quant/quant-jobs'
import type { AnyQuantMethod } from '../../worker/quant/registry'
import { parseQuantSpec } from '../../worker/quant/spec'
import { quantWasmAvailable, type QuantKernelKind } from '../../worker/quant/wasm-kernels'
import type { BenchReference, BenchRow, BenchSection } from '../bench-types'
import { FULL_SHAPE, ensureSyntheticModel, syntheticTensors } from '../synthetic-model'

const LINEAR = /_proj\.weight$/

const GB = 1e9

/**
 * Every quantizer over the linear weights of the synthetic 0.5B model: seconds for all of them
 * and GB/s of their fp16 bytes, plain TS next to WASM where a method has WASM kernels, each
 * against a memory copy of the same bytes measured in this run.
 *
 * Slow methods are timed on one tensor per distinct shape (every layer has the same four
 * shapes: q/o, k/v, gate/up, down) and the total is the sum over all tensors of their
 * shape's time — exact up to data differences, and said in the row's note. Where a shape is not
 * timed at all (--quick, and AWQ's widest shapes), it is estimated from timed shapes by the
 * method's cost model, and the note says "estimated". Calibration data (XᵀX, mean |x|) is
 * synthetic: a low-rank-plus-diagonal Gram per input width.
 */
export const section: BenchSection = {
  name: 'quantize',
  description: 'quantizers over all linear weights (s, GB/s of fp16 weights) TS vs WASM, vs memory copy; pool threads; peak RSS',
  async run(ctx) {
    const synth = await ensureSyntheticModel(ctx.quick, ctx.log)
    const model = await openModel(synth.dir)
    const rows: BenchRow[] = []
    try {
      const linear = model.tensors.filter((t) => LINEAR.test(t.name)).map((t) => ({ name: t.name, ...matrixShape(t.shape) }))
      const shapes = groupByShape(linear)
      // Totals are for the full model's linear weights (24 layers) even in --quick, whose model
      // has fewer layers of the same shapes: every figure compares with the targets.
      const full = groupByShape(syntheticTensors(FULL_SHAPE).filter((t) => LINEAR.test(t.name)).map((t) => ({ name: t.name, rows: t.shape[0]!, cols: t.shape[1]! })))
      const counts = shapes.map((s) => full.find((f) => f.rows === s.rows && f.cols === s.cols)?.names.length ?? s.names.length)
      const fp16Bytes = shapes.reduce((sum, s, i) => sum + s.rows * s.cols * 2 * counts[i]!, 0)
      ctx.log(`${linear.length} linear weights here; totals for ${counts.reduce((a, b) => a + b, 0)} (${(fp16Bytes / GB).toFixed(2)} GB fp16), shapes ${shapes.map((s, i) => `${s.rows}×${s.cols} ×${counts[i]}`).join(', ')}`)
      ctx.log('memory copy …')
      const ref: BenchReference = { name: 'Buffer.copy of the same bytes', value: memoryCopyGBps(fp16Bytes), unit: 'GB/s' }
      const wasm = quantWasmAvailable()
      const kernels: QuantKernelKind[] = wasm ? ['ts', 'wasm'] : ['ts']
      const calib = new CalibrationCache()

      for (const c of cases(ctx.quick)) {
        const { method, params } = parseQuantSpec(c.spec)
        for (const kernel of c.hasWasm ? kernels : (['ts'] as const)) {
          const plan = c.plan(ctx.quick, kernel)
          ctx.log(`${c.label}, ${kernel} …`)
          const r = await timeMethod(model, method, params, kernel, shapes, counts, plan, c.cost, calib, ctx.log)
          const secs = r.totalMs / 1000
          const row: BenchRow = {
            name: `${c.label}, ${c.hasWasm ? (kernel === 'ts' ? 'TS' : 'WASM SIMD') : 'TS (no WASM kernel)'}, 1 thread`,
            value: fp16Bytes / GB / secs,
            unit: 'GB/s',
            reference: ref,
            note: `${secs.toFixed(1)} s for all linear weights of the 24-layer model; ${r.how}; peak RSS ${peakRssMB()} MB`,
          }
          if (c.target && (kernel === 'wasm' || !c.hasWasm || !wasm)) Object.assign(row, { target: c.target.text, ok: c.target.ok(secs) })
          rows.push(row)
        }
      }

      // RTN int4 g32 sym through the worker pool: each thread reads, decodes and quantizes whole tensors.
      const spec = 'rtn:bits=4,group=32,sym=true'
      const names = ctx.quick ? linear.filter((t) => /layers\.[0-1]\./.test(t.name)).map((t) => t.name) : linear.map((t) => t.name)
      const bytes = linear.filter((t) => names.includes(t.name)).reduce((s, t) => s + t.rows * t.cols * 2, 0)
      for (const threads of [1, 2]) {
        ctx.log(`rtn int4 g32 sym through the quant worker pool, ${threads} thread(s) …`)
        const ms = await timePool(synth.dir, names, spec, threads, wasm ? 'wasm' : 'ts')
        const row: BenchRow = {
          name: `rtn int4 g32 sym, ${wasm ? 'WASM' : 'TS'}, quant worker pool, ${threads} thread${threads > 1 ? 's' : ''} (read + decode + quantize)`,
          value: bytes / GB / (ms / 1000),
          unit: 'GB/s',
          reference: ref,
          note: `${names.length} tensors, ${(ms / 1000).toFixed(1)} s`,
        }
        if (threads === 2) Object.assign(row, { target: '>= 1 GB/s', ok: row.value >= 1 })
        rows.push(row)
      }
      rows.push({ name: 'peak RSS of the bench process (whole section)', value: peakRssMB(), unit: 'MB', note: `largest tensor ${(Math.max(...linear.map((t) => t.rows * t.cols)) * 4e-6).toFixed(0)} MB as float32` })
    } finally {
      await model.close()
    }
    return rows
  },
}

// ---- methods ------------------------------------------------------------------------------------

/** How a method's time grows with a [rows, cols] shape (for shapes not timed). */
type CostModel = 'elements' | 'rows-cols2' | 'gptq'

interface Case {
  label: string
  spec: string
  /** Whether the method's hot loops have a WASM kernel (else only its TS time is shown). */
  hasWasm: boolean
  cost: CostModel
  /** Which tensors to time. */
  plan(quick: boolean, kernel: QuantKernelKind): TimingPlan
  target?: { text: string; ok(seconds: number): boolean }
}

/** 'all': every tensor; 'shapes': one per listed shape index (0 q/o, 1 k/v, 2 gate/up, 3 down, by size). */
type TimingPlan = { kind: 'all' } | { kind: 'shapes'; which: number[] }

const ALL_SHAPES: TimingPlan = { kind: 'shapes', which: [0, 1, 2, 3] }
const NARROW_SHAPES: TimingPlan = { kind: 'shapes', which: [0, 1] }

function cases(quick: boolean): Case[] {
  const perShape = () => (quick ? NARROW_SHAPES : ALL_SHAPES)
  return [
    { label: 'rtn int4 g32 sym', spec: 'rtn:bits=4,group=32,sym=true', hasWasm: true, cost: 'elements', plan: () => (quick ? NARROW_SHAPES : { kind: 'all' }) },
    { label: 'rtn int4 g128 asym', spec: 'rtn:bits=4,group=128,sym=false', hasWasm: true, cost: 'elements', plan: () => (quick ? NARROW_SHAPES : { kind: 'all' }) },
    { label: 'nf4 g64', spec: 'nf4:group=64', hasWasm: false, cost: 'elements', plan: perShape },
    { label: 'fp4 g64', spec: 'fp4:group=64', hasWasm: false, cost: 'elements', plan: perShape },
    {
      label: 'any4 g128 (weights weighting)',
      spec: 'any4:group=128,weighting=weights',
      hasWasm: false,
      cost: 'elements',
      plan: perShape,
      target: { text: '<= 60 s', ok: (s) => s <= 60 },
    },
    { label: 'kmeans 4-bit per row', spec: 'kmeans:bits=4,per=row', hasWasm: false, cost: 'elements', plan: perShape },
    {
      label: 'gptq 4-bit g128',
      spec: 'gptq:bits=4,group=128',
      hasWasm: true,
      cost: 'gptq',
      plan: perShape,
      target: { text: '<= 300 s', ok: (s) => s <= 300 },
    },
    // AWQ's α search costs rows·cols² per candidate: the 4864-wide shapes take minutes in TS.
    { label: 'awq 4-bit g128', spec: 'awq:bits=4,group=128', hasWasm: true, cost: 'rows-cols2', plan: () => (quick ? { kind: 'shapes', which: [1] } : NARROW_SHAPES) },
  ]
}

// ---- timing -------------------------------------------------------------------------------------

interface ShapeGroup {
  rows: number
  cols: number
  names: string[]
}

/** Distinct shapes, q/o first, then k/v, gate/up, down (ordered by cols, then rows descending within 896-wide). */
function groupByShape(tensors: { name: string; rows: number; cols: number }[]): ShapeGroup[] {
  const map = new Map<string, ShapeGroup>()
  for (const t of tensors) {
    const key = `${t.rows}x${t.cols}`
    let g = map.get(key)
    if (!g) map.set(key, (g = { rows: t.rows, cols: t.cols, names: [] }))
    g.names.push(t.name)
  }
  const order = (n: string) => (/q_proj|o_proj/.test(n) ? 0 : /k_proj|v_proj/.test(n) ? 1 : /gate_proj|up_proj/.test(n) ? 2 : 3)
  return [...map.values()].sort((a, b) => order(a.names[0]!) - order(b.names[0]!))
}

async function timeMethod(
  model: OpenedModel,
  method: AnyQuantMethod,
  params: object,
  kernel: QuantKernelKind,
  shapes: ShapeGroup[],
  /** Tensors of each shape in the full model. */
  counts: number[],
  plan: TimingPlan,
  cost: CostModel,
  calib: CalibrationCache,
  log: (m: string) => void,
): Promise<{ totalMs: number; how: string }> {
  const quantizeOne = async (name: string, rows: number, cols: number): Promise<number> => {
    const weight = await model.readRows(name, 0, rows)
    const calibration = method.needs(params) === 'none' ? undefined : calib.get(cols)
    const t0 = performance.now()
    method.quantize(weight, rows, cols, params, calibration, { kernel })
    return performance.now() - t0
  }
  // Warm-up (JIT, WASM tier-up) on the smallest shape, not billed.
  const warm = shapes[1]!
  for (let i = 0; i < 2; i++) await quantizeOne(warm.names[0]!, warm.rows, warm.cols)

  if (plan.kind === 'all') {
    let total = 0
    let extra = 0
    shapes.forEach((s, i) => (extra += counts[i]! - s.names.length))
    for (const s of shapes) for (const name of s.names) total += await quantizeOne(name, s.rows, s.cols)
    if (extra !== 0) throw new Error('plan "all" needs the full model')
    return { totalMs: total, how: 'every tensor timed' }
  }
  const timed = new Map<number, number>()
  for (const i of plan.which) {
    const s = shapes[i]!
    const ms = await quantizeOne(s.names[0]!, s.rows, s.cols)
    log(`  ${s.rows}×${s.cols}: ${(ms / 1000).toFixed(2)} s`)
    timed.set(i, ms)
  }
  let total = 0
  const estimated: string[] = []
  shapes.forEach((s, i) => {
    let ms = timed.get(i)
    if (ms === undefined) {
      ms = estimate(s, shapes, timed, cost)
      estimated.push(`${s.rows}×${s.cols}`)
    }
    total += ms * counts[i]!
  })
  const how =
    `one tensor per shape timed (${plan.which.length} of ${shapes.length} shapes), × tensors of that shape` +
    (estimated.length ? `; ${estimated.join(', ')} estimated (${cost === 'gptq' ? 'a·rows·cols² + b·cols³ fitted to the timed 896-wide shapes' : cost === 'rows-cols2' ? '∝ rows·cols²' : '∝ elements'})` : '')
  return { totalMs: total, how }
}

/** Time of an untimed shape from the timed ones, by the method's cost model. */
function estimate(s: ShapeGroup, shapes: ShapeGroup[], timed: Map<number, number>, cost: CostModel): number {
  const known = [...timed].map(([i, ms]) => ({ ...shapes[i]!, ms }))
  if (cost === 'gptq') {
    // t = a·R·C² + b·C³ from two timed shapes of one width (column updates, then the n³ factor).
    const same = known.filter((k) => k.cols === known[0]!.cols).sort((x, y) => x.rows - y.rows)
    if (same.length >= 2) {
      const lo = same[0]!
      const hi = same.at(-1)!
      const C = lo.cols
      const a = Math.max(0, (hi.ms - lo.ms) / (C * C * (hi.rows - lo.rows)))
      const b = Math.max(0, (lo.ms - a * lo.rows * C * C) / C ** 3)
      return a * s.rows * s.cols ** 2 + b * s.cols ** 3
    }
  }
  const unit = (k: { rows: number; cols: number }) => (cost === 'elements' ? k.rows * k.cols : k.rows * k.cols * k.cols)
  const biggest = known.sort((x, y) => unit(y) - unit(x))[0]!
  return (biggest.ms * unit(s)) / unit(biggest)
}

async function timePool(dir: string, names: string[], spec: string, threads: number, kernel: QuantKernelKind): Promise<number> {
  const pool = new WorkerPool<QuantJobs>({ worker: 'quant', threads })
  try {
    // Start every worker (tsx compiles the sources in each) outside the timed part.
    const warm = names.filter((n) => n.includes('k_proj')).slice(0, threads)
    await Promise.all(warm.map((tensor) => pool.run('quantize-tensor', { path: dir, tensor, spec, kernel })))
    const t0 = performance.now()
    await Promise.all(names.map((tensor) => pool.run('quantize-tensor', { path: dir, tensor, spec, kernel })))
    return performance.now() - t0
  } finally {
    await pool.close()
  }
}

// ---- synthetic calibration ----------------------------------------------------------------------

/**
 * A Gram matrix XᵀX of `count` synthetic tokens per input width: low rank (correlated channels)
 * plus a diagonal, with a few channels 10× larger (activation outliers), and mean |x| from its
 * diagonal. Positive definite by construction.
 */
class CalibrationCache {
  private readonly byCols = new Map<number, LayerCalibration>()

  get(cols: number): LayerCalibration {
    let c = this.byCols.get(cols)
    if (!c) this.byCols.set(cols, (c = syntheticCalibration(cols)))
    return c
  }
}

function syntheticCalibration(n: number): LayerCalibration {
  const count = 4096
  const rank = 16
  let seed = 0x2545f491 ^ n
  const rand = () => {
    seed ^= seed << 13
    seed ^= seed >>> 17
    seed ^= seed << 5
    return (seed >>> 0) / 4294967296
  }
  const gain = Float64Array.from({ length: n }, (_, j) => (j % 97 === 5 ? 10 : 0.5 + rand()))
  const A = new Float64Array(n * rank)
  for (let i = 0; i < A.length; i++) A[i] = (rand() - 0.5) * gain[Math.floor(i / rank)]!
  const gram = new Float64Array(n * n)
  for (let i = 0; i < n; i++) {
    for (let j = 0; j <= i; j++) {
      let s = 0
      for (let k = 0; k < rank; k++) s += A[i * rank + k]! * A[j * rank + k]!
      s *= count / rank
      gram[i * n + j] = s
      gram[j * n + i] = s
    }
    gram[i * n + i] += 0.05 * count * gain[i]! * gain[i]!
  }
  const meanSq = Float64Array.from({ length: n }, (_, j) => gram[j * n + j]! / count)
  return { count, mean: new Float64Array(n), meanAbs: meanSq.map((m) => Math.sqrt(m) * 0.8), meanSq, gram }
}

// ---- references ---------------------------------------------------------------------------------

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

function peakRssMB(): number {
  return Math.round(process.resourceUsage().maxRSS / 1024)
}
