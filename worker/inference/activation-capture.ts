import type { OpenedModel } from '../formats/contract'
import type { CapturePoint, CaptureSite } from './capture-points'
import type { BackendKind } from './ort-backend'
import { DEFAULT_CTX, planWindows, type EvalHooks } from './perplexity'
import { DecoderSession, windowsPerRun } from './session'
import type { WeightOverrides } from './weights'

/**
 * Activation statistics over a text, windows as in the perplexity protocol: per channel the
 * mean, mean |x|, mean x² and max |x| of the residual stream around every block and of the
 * input of every linear layer, and on request the Gram matrix XᵀX of each linear input (the
 * Hessian GPTQ needs, up to the factor 2/n). The graph reduces each window to [channels]
 * sums (and [C, C] Grams); they accumulate here in float64, so no activation is ever kept.
 */
export interface CaptureOptions {
  ctx?: number
  maxWindows?: number
  backend?: BackendKind
  threads?: number
  overrides?: WeightOverrides
  /** Also accumulate XᵀX per linear input. */
  gram?: boolean
  /** Restrict to these sites (default: all). */
  sites?: CaptureSite[]
}

export interface ChannelStats {
  /** Rows (tokens) reduced. */
  count: number
  mean: number[]
  meanAbs: number[]
  meanSq: number[]
  maxAbs: number[]
  /** Per-channel min and max (the KV sites only). */
  min?: number[]
  max?: number[]
}

export interface CapturedPoint {
  id: string
  site: CaptureSite
  block: number | null
  channels: number
  /** Tensors of the linear layers fed by this activation. */
  linears: string[]
  stats: ChannelStats
}

export interface CaptureResult {
  ctx: number
  windows: number
  tokens: number
  seconds: number
  points: CapturedPoint[]
  /** Linear tensor name → id of the point holding its input. */
  linearInputs: Record<string, string>
  /** Point id → Σ xᵀx over all tokens, [channels × channels] row-major (only with gram). */
  grams?: Record<string, Float64Array>
}

class PointAccumulator {
  readonly sum: Float64Array
  readonly sumAbs: Float64Array
  readonly sumSq: Float64Array
  readonly maxAbs: Float64Array
  readonly gram: Float64Array | null
  readonly min: Float64Array | null
  readonly max: Float64Array | null
  count = 0

  constructor(
    readonly point: CapturePoint,
    gram: boolean,
  ) {
    const C = point.channels
    this.sum = new Float64Array(C)
    this.sumAbs = new Float64Array(C)
    this.sumSq = new Float64Array(C)
    this.maxAbs = new Float64Array(C)
    this.gram = gram && point.outputs.gram ? new Float64Array(C * C) : null
    this.min = point.outputs.min ? new Float64Array(C).fill(Infinity) : null
    this.max = point.outputs.max ? new Float64Array(C).fill(-Infinity) : null
  }

  add(outputs: Record<string, { data: unknown }>, rows: number): void {
    const o = this.point.outputs
    const acc = (dst: Float64Array, name: string): void => {
      const src = outputs[name]!.data as Float32Array
      for (let i = 0; i < dst.length; i++) dst[i]! += src[i]!
    }
    acc(this.sum, o.sum)
    acc(this.sumAbs, o.sumAbs)
    acc(this.sumSq, o.sumSq)
    const mx = outputs[o.maxAbs]!.data as Float32Array
    for (let i = 0; i < mx.length; i++) if (mx[i]! > this.maxAbs[i]!) this.maxAbs[i] = mx[i]!
    if (this.gram && o.gram) acc(this.gram, o.gram)
    if (this.min && o.min) {
      const lo = outputs[o.min]!.data as Float32Array
      for (let i = 0; i < lo.length; i++) if (lo[i]! < this.min[i]!) this.min[i] = lo[i]!
    }
    if (this.max && o.max) {
      const hi = outputs[o.max]!.data as Float32Array
      for (let i = 0; i < hi.length; i++) if (hi[i]! > this.max[i]!) this.max[i] = hi[i]!
    }
    this.count += rows
  }

  stats(): ChannelStats {
    const n = this.count
    const stats: ChannelStats = {
      count: n,
      mean: Array.from(this.sum, (v) => v / n),
      meanAbs: Array.from(this.sumAbs, (v) => v / n),
      meanSq: Array.from(this.sumSq, (v) => v / n),
      maxAbs: Array.from(this.maxAbs),
    }
    if (this.min && this.max) Object.assign(stats, { min: Array.from(this.min), max: Array.from(this.max) })
    return stats
  }
}

export async function captureActivations(model: OpenedModel, ids: readonly number[], options: CaptureOptions = {}, hooks: EvalHooks = {}): Promise<CaptureResult> {
  const t0 = performance.now()
  const ctx = options.ctx ?? DEFAULT_CTX
  const windows = planWindows(ids, ctx, options.maxWindows)
  const session = await DecoderSession.create(model, {
    backend: options.backend,
    threads: options.threads,
    overrides: options.overrides,
    signal: hooks.signal,
    onLoadProgress: (done, total) => hooks.onProgress?.({ stage: 'loading', done, total }),
    graph: { capture: { gram: options.gram ?? false, sites: options.sites }, maxPositions: ctx },
  })
  try {
    const points = session.info.capturePoints
    const accs = points.map((p) => new PointAccumulator(p, options.gram ?? false))
    const fetch = points.flatMap((p) => Object.values(p.outputs))
    // The capture graph has no logits, so only the activations bound the batch.
    const perRun = windowsPerRun(ctx, 0)
    for (let w0 = 0; w0 < windows.length; w0 += perRun) {
      hooks.signal?.throwIfAborted()
      const batch = windows.slice(w0, w0 + perRun)
      const outputs = await session.forwardWindows(batch, {}, fetch)
      for (const a of accs) a.add(outputs, batch.length * ctx)
      hooks.onProgress?.({ stage: 'evaluating', done: w0 + batch.length, total: windows.length })
    }
    const linearInputs: Record<string, string> = {}
    for (const p of points) for (const l of p.linears) linearInputs[l] = p.id
    const result: CaptureResult = {
      ctx,
      windows: windows.length,
      tokens: windows.length * ctx,
      seconds: (performance.now() - t0) / 1000,
      points: accs.map((a) => ({ id: a.point.id, site: a.point.site, block: a.point.block, channels: a.point.channels, linears: a.point.linears, stats: a.stats() })),
      linearInputs,
    }
    if (options.gram) {
      result.grams = {}
      for (const a of accs) if (a.gram) result.grams[a.point.id] = a.gram
    }
    return result
  } finally {
    await session.release()
  }
}
