/**
 * What the activation and KV views draw, computed from the model on the calibration text
 * (resources/eval/calibration.txt, never the evaluated text). Runs in the activation/KV worker
 * (actkv-view.worker.ts); plain functions so tests can call them in-process.
 *
 * Activation view: the raw inputs of one layer's decoder linears are captured one batch of
 * windows at a time (the capture graph's raw taps, as plan/act-codebooks.ts fits codebooks),
 * split by the same Orizuru detector, normalised the same way, and
 * - fed to ActivationCodebookFitter, the streaming fit act-codebooks.ts runs, over the same
 *   windows by default (32 × 256 tokens): the centroids shown are those evaluation uses;
 * - counted into histograms in the two quantizers' own units: x/n (n = absmax of the token's
 *   non-outliers, k-means) and (x − min)/(max − min) over the non-outliers (INT, whose grid is
 *   then q/(2^b − 1) whatever the token);
 * - summed per channel (max |x|, mean |x|, how often the channel is an outlier) and for the
 *   outlier share of values and of energy Σx².
 * Normalised values are counted per fp16 bit pattern (65,536 counters, as the fitter does), so
 * the histogram's range is known only at the end and no activation is kept.
 *
 * KV view: K after RoPE and V of one layer on the first calibration window (capture sites
 * attn_k/attn_v, raw), one kv head's channels, raw and smoothed with the statistics
 * kv-calibration.ts computes for evaluation (same windows by default).
 */
import { f16ToF32, f32ToF16 } from '../formats/dtypes'
import type { OpenedModel } from '../formats/contract'
import type { CaptureSite } from '../inference/capture-points'
import { calibrateKvSmoothing, DEFAULT_KV_CALIBRATION_TEXT, DEFAULT_KV_CALIBRATION_WINDOWS, KV_CALIBRATION_CTX } from '../inference/kv-calibration'
import type { BackendKind } from '../inference/ort-backend'
import { planWindows, type EvalHooks } from '../inference/perplexity'
import { DecoderSession, windowsPerRun } from '../inference/session'
import { openTokenizer, tokensOf } from '../inference/text-source'
import { InferenceInputError } from '../inference/errors'
import { DEFAULT_ACT_CALIBRATION_WINDOWS } from '../plan/act-codebooks'
import { DEFAULT_CALIBRATION_TEXT } from '../plan/calibration'
import { kvCacheBytes } from '../plan/memory-model'
import { ActivationCodebookFitter } from '../quant/activations/codebook-fitter'
import { checkOutlierRoom } from '../quant/activations/kmeans-act'
import { markOutliers } from '../quant/activations/orizuru'
import { detectTopK } from '../quant/activations/orizuru-wasm'
import { parseActivationParams, type KMeansActParams } from '../quant/activations/spec'
import type { ActivationInputView, ActivationViewJob, ActivationViewResult, ActNorm, Histogram, KvHeatmap, KvViewJob, KvViewResult } from './actkv-protocol'

const LINEAR_INPUTS: CaptureSite[] = ['attn_in', 'o_in', 'mlp_in', 'down_in']
const ACT_CTX = 256
const F16_MAX = 65504

/** The k-means params the CLI's `kmeans:bits=B,outliers=K,norm=N` gives (defaults filled in). */
export function kmeansParams(bits: number, outliers: number, norm: ActNorm): KMeansActParams {
  const spec = parseActivationParams('kmeans', { bits, outliers, norm })
  return spec.params as KMeansActParams
}

function f16Index(v: number): number {
  const h = f32ToF16(Math.max(-F16_MAX, Math.min(F16_MAX, v)))
  return h === 0x8000 ? 0 : h
}

/** Counts per fp16 pattern → `bins` equal bins over [lo, hi] (values outside go to the edge bins). */
function binCounts(counts: Float64Array, lo: number, hi: number, bins: number): number[] {
  const out = new Array<number>(bins).fill(0)
  const width = hi > lo ? (hi - lo) / bins : 1
  for (let h = 0; h < 65536; h++) {
    const c = counts[h]!
    if (c === 0) continue
    const b = Math.floor((f16ToF32(h) - lo) / width)
    out[Math.max(0, Math.min(bins - 1, b))]! += c
  }
  return out
}

function rangeOf(counts: Float64Array): [number, number] {
  let lo = Infinity
  let hi = -Infinity
  for (let h = 0; h < 65536; h++) {
    if (counts[h] === 0) continue
    const v = f16ToF32(h)
    if (v < lo) lo = v
    if (v > hi) hi = v
  }
  return lo <= hi ? [lo, hi] : [0, 0]
}

/** One linear input's streaming statistics for the activation view. */
export class ActivationViewAccumulator {
  readonly fitter: ActivationCodebookFitter
  private readonly inliers = new Float64Array(65536)
  private readonly outliersCounts = new Float64Array(65536)
  private readonly intCounts: Float64Array
  private readonly chanMax: Float64Array
  private readonly chanSumAbs: Float64Array
  private readonly chanOutlier: Float64Array
  tokens = 0
  values = 0
  outlierValues = 0
  energy = 0
  outlierEnergy = 0

  constructor(
    readonly id: string,
    readonly channels: number,
    readonly params: KMeansActParams,
    readonly bins: number,
  ) {
    this.fitter = new ActivationCodebookFitter(params, id)
    this.intCounts = new Float64Array(bins)
    this.chanMax = new Float64Array(channels)
    this.chanSumAbs = new Float64Array(channels)
    this.chanOutlier = new Float64Array(channels)
  }

  /** A batch [rows, channels] of the input (rows = tokens). */
  add(x: Float32Array, rows: number, signal?: AbortSignal): void {
    const cols = this.channels
    const k = this.params.outliers
    checkOutlierRoom(k, cols, this.id)
    this.fitter.add(x, rows, cols, { signal })
    const top = detectTopK(x, rows, cols, k, this.id)
    const mask = new Uint8Array(cols)
    const levels = this.bins
    for (let r = 0; r < rows; r++) {
      if (r % 256 === 0) signal?.throwIfAborted()
      const row = x.subarray(r * cols, (r + 1) * cols)
      markOutliers(top, r, mask)
      let absmax = 0
      let lo = Infinity
      let hi = -Infinity
      for (let j = 0; j < cols; j++) {
        const v = row[j]!
        const a = Math.abs(v)
        if (a > this.chanMax[j]!) this.chanMax[j] = a
        this.chanSumAbs[j]! += a
        this.energy += v * v
        if (mask[j]) {
          this.chanOutlier[j]!++
          this.outlierEnergy += v * v
          continue
        }
        if (a > absmax) absmax = a
        if (v < lo) lo = v
        if (v > hi) hi = v
      }
      // k-means units (a token whose inliers are all 0 codes them as 0; its outliers stay raw)
      const n = this.params.norm === 'none' ? 1 : absmax > 0 ? absmax : 1
      const span = hi - lo
      for (let j = 0; j < cols; j++) {
        const v = row[j]!
        if (mask[j]) {
          this.outliersCounts[f16Index(v / n)]!++
          continue
        }
        this.inliers[f16Index(v / n)]!++
        const t = span > 0 ? (v - lo) / span : 0
        this.intCounts[Math.min(levels - 1, Math.floor(t * levels))]!++
      }
    }
    this.tokens += rows
    this.values += rows * cols
    this.outlierValues += rows * 2 * k
  }

  result(meta: { site: string; linears: string[] }, intBits: number, topChannels: number): ActivationInputView {
    const [lo, hi] = rangeOf(this.inliers)
    const hist = (counts: Float64Array): Histogram => ({ lo, hi, counts: binCounts(counts, lo, hi, this.bins) })
    const order = Array.from({ length: this.channels }, (_, c) => c).sort((a, b) => this.chanMax[b]! - this.chanMax[a]!)
    const levels = 2 ** intBits - 1
    return {
      id: this.id,
      site: meta.site,
      linears: meta.linears,
      channels: this.channels,
      tokens: this.tokens,
      kmeans: { inliers: hist(this.inliers), outliers: hist(this.outliersCounts), centroids: Array.from(this.fitter.fit().centroids) },
      int: { inliers: { lo: 0, hi: 1, counts: Array.from(this.intCounts) }, levels: Array.from({ length: levels + 1 }, (_, q) => q / levels) },
      outlierShare: { values: this.values ? this.outlierValues / this.values : 0, energy: this.energy > 0 ? this.outlierEnergy / this.energy : 0 },
      topChannels: order.slice(0, topChannels).map((c) => ({
        channel: c,
        maxAbs: this.chanMax[c]!,
        meanAbs: this.tokens ? this.chanSumAbs[c]! / this.tokens : 0,
        outlierRate: this.tokens ? this.chanOutlier[c]! / this.tokens : 0,
      })),
    }
  }
}

function checkLayer(model: OpenedModel, layer: number): void {
  const layers = model.config?.numLayers
  if (layers !== undefined && layer >= layers) throw new InferenceInputError(`${model.files[0]}: layer ${layer} does not exist (the model has ${layers} layers, 0–${layers - 1})`)
}

export async function computeActivationView(
  model: OpenedModel,
  job: Omit<ActivationViewJob, 'kind' | 'modelPath'>,
  hooks: EvalHooks = {},
): Promise<ActivationViewResult> {
  const t0 = performance.now()
  checkLayer(model, job.layer)
  const params = kmeansParams(job.bits, job.outliers, job.norm)
  const ids = await tokensOf({ file: DEFAULT_CALIBRATION_TEXT }, () => openTokenizer(model))
  const windows = planWindows(ids, ACT_CTX, job.maxWindows ?? DEFAULT_ACT_CALIBRATION_WINDOWS)
  const session = await DecoderSession.create(model, {
    backend: job.backend,
    threads: job.threads,
    signal: hooks.signal,
    onLoadProgress: (done, total) => hooks.onProgress?.({ stage: 'loading', done, total }),
    graph: { capture: { sites: LINEAR_INPUTS, raw: true }, maxPositions: ACT_CTX },
  })
  try {
    const points = session.info.capturePoints.filter((p) => p.block === job.layer)
    if (points.length === 0) throw new InferenceInputError(`${model.files[0]}: layer ${job.layer} has no decoder linear inputs to capture`)
    const accs = points.map((p) => new ActivationViewAccumulator(p.id, p.channels, params, job.bins))
    const perRun = windowsPerRun(ACT_CTX, 0)
    for (let w0 = 0; w0 < windows.length; w0 += perRun) {
      hooks.signal?.throwIfAborted()
      const batch = windows.slice(w0, w0 + perRun)
      const out = await session.forwardWindows(batch, {}, points.map((p) => p.outputs.raw!))
      points.forEach((p, i) => accs[i]!.add(out[p.outputs.raw!]!.data as Float32Array, batch.length * ACT_CTX, hooks.signal))
      hooks.onProgress?.({ stage: 'evaluating', done: w0 + batch.length, total: windows.length })
    }
    return {
      layer: job.layer,
      bits: job.bits,
      outliers: job.outliers,
      norm: job.norm,
      windows: windows.length,
      ctx: ACT_CTX,
      inputs: points.map((p, i) => accs[i]!.result({ site: p.site, linears: p.linears }, Math.max(2, job.bits), job.topChannels)),
      seconds: (performance.now() - t0) / 1000,
    }
  } finally {
    await session.release()
  }
}

/** [tokens, Hkv·d] rows → one head's channels as [d][tokens], raw and (x − δ)/s. */
export function headHeatmap(rows: Float32Array, tokens: number, Hkv: number, d: number, head: number, shift: Float32Array, scale: Float32Array): KvHeatmap {
  const raw: number[][] = []
  const smoothed: number[][] = []
  const sh: number[] = []
  const sc: number[] = []
  for (let c = 0; c < d; c++) {
    const ch = head * d + c
    const r = new Array<number>(tokens)
    const s = new Array<number>(tokens)
    for (let t = 0; t < tokens; t++) {
      const v = rows[t * Hkv * d + ch]!
      r[t] = v
      s[t] = (v - shift[ch]!) / scale[ch]!
    }
    raw.push(r)
    smoothed.push(s)
    sh.push(shift[ch]!)
    sc.push(scale[ch]!)
  }
  return { raw, smoothed, shift: sh, scale: sc }
}

export const KV_MEMORY_CONTEXTS = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
export const KV_MEMORY_BITS = [16, 8, 4, 3, 2]

export async function computeKvView(model: OpenedModel, job: Omit<KvViewJob, 'kind' | 'modelPath'>, hooks: EvalHooks = {}): Promise<KvViewResult> {
  const t0 = performance.now()
  checkLayer(model, job.layer)
  const cfg = model.config
  const Hkv = cfg?.numKvHeads
  const d = cfg?.headDim
  if (!cfg || !Hkv || !d) throw new InferenceInputError(`${model.files[0]}: the KV view needs the model's config (kv heads, head dim)`)
  if (job.kvHead >= Hkv) throw new InferenceInputError(`${model.files[0]}: kv head ${job.kvHead} does not exist (the model has ${Hkv} kv heads, 0–${Hkv - 1})`)
  const ids = await tokensOf({ file: DEFAULT_KV_CALIBRATION_TEXT }, () => openTokenizer(model))
  if (ids.length < job.tokens) throw new InferenceInputError(`the calibration text has ${ids.length} tokens, fewer than the ${job.tokens} asked for`)
  if (cfg.maxPositionEmbeddings && job.tokens > cfg.maxPositionEmbeddings) throw new InferenceInputError(`${job.tokens} tokens exceed the model's max_position_embeddings (${cfg.maxPositionEmbeddings})`)
  // The smoothing statistics evaluation uses (kv-calibration.ts, same windows by default).
  const cal = await calibrateKvSmoothing(
    model,
    ids,
    { ctx: KV_CALIBRATION_CTX, maxWindows: job.calibrationWindows ?? DEFAULT_KV_CALIBRATION_WINDOWS, backend: job.backend, threads: job.threads },
    hooks,
  )
  const session = await DecoderSession.create(model, {
    backend: job.backend,
    threads: job.threads,
    signal: hooks.signal,
    graph: { capture: { sites: ['attn_k', 'attn_v'], raw: true }, maxPositions: job.tokens },
  })
  try {
    const k = session.info.capturePoints.find((p) => p.id === `L${job.layer}.attn_k`)
    const v = session.info.capturePoints.find((p) => p.id === `L${job.layer}.attn_v`)
    if (!k?.outputs.raw || !v?.outputs.raw) throw new Error(`KV view: no K/V capture for layer ${job.layer}`)
    const out = await session.forwardWindows([ids.slice(0, job.tokens)], {}, [k.outputs.raw, v.outputs.raw])
    const key = cal.smoothing.key[job.layer]!
    const value = cal.smoothing.value[job.layer]!
    const layers = cfg.numLayers ?? cal.smoothing.key.length
    return {
      layer: job.layer,
      kvHead: job.kvHead,
      headDim: d,
      numKvHeads: Hkv,
      numLayers: layers,
      tokens: job.tokens,
      key: headHeatmap(out[k.outputs.raw]!.data as Float32Array, job.tokens, Hkv, d, job.kvHead, key.shift, key.scale),
      value: headHeatmap(out[v.outputs.raw]!.data as Float32Array, job.tokens, Hkv, d, job.kvHead, value.shift, value.scale),
      calibration: { tokens: cal.tokens, windows: cal.windows },
      memory: {
        contexts: KV_MEMORY_CONTEXTS,
        bits: KV_MEMORY_BITS,
        bytes: KV_MEMORY_BITS.map((bits) => KV_MEMORY_CONTEXTS.map((ctx) => kvCacheBytes({ ctx, bits }, cfg))),
      },
      seconds: (performance.now() - t0) / 1000,
    }
  } finally {
    await session.release()
  }
}
