import { resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import type { OpenedModel } from '../formats/contract'
import type { TextTokenizer } from '../model/tokenizer'
import { captureActivations } from './activation-capture'
import { cachedStats, statsKey, type StatsCacheDir, type StatsEntry } from './calibration-stats-cache'
import { InferenceInputError } from './errors'
import { checkKvSettings, kvAffineFromRange, type KvChannelAffine, type KvEvalOptions, type KvQuantSettings, type KvSmoothing } from './kv-quant'
import type { BackendKind } from './ort-backend'
import type { EvalHooks } from './perplexity'
import { tokensOf, type TextSource } from './text-source'
import type { WeightOverrides } from './weights'

/**
 * The static half of WKVQuant's two-dimensional KV quantization: per layer, kv head and
 * channel, the range of K (after RoPE) and V over a calibration text, captured by the
 * activation-capture machinery (sites attn_k / attn_v, reduced in the graph to per-channel
 * min and max), turned into shift = midpoint and scale = half-range (kv-quant.ts).
 *
 * The calibration text is resources/eval/calibration.txt by default (cut from the training
 * corpus, disjoint from the held-out text), as for GPTQ/AWQ: never the evaluated text.
 */
export const DEFAULT_KV_CALIBRATION_TEXT = fileURLToPath(new URL('../../resources/eval/calibration.txt', import.meta.url))
/** Windows of 256 tokens; the range statistics settle well before the 64 of the text. */
export const DEFAULT_KV_CALIBRATION_WINDOWS = 32
export const KV_CALIBRATION_CTX = 256

export interface KvCalibrationOptions {
  ctx?: number
  maxWindows?: number
  backend?: BackendKind
  threads?: number
  /** The evaluated variant's weights: K/V ranges are those of the model being evaluated. */
  overrides?: WeightOverrides
  /**
   * Disk cache of the statistics (calibration-stats-cache.ts): undefined = `<cache root>/kv-smoothing`,
   * null = recompute every time. With overrides the statistics are cached only under a `variantKey`.
   */
  cacheDir?: StatsCacheDir
  /** Names the overrides' weights for the cache key (e.g. a hash of the plan). */
  variantKey?: string
}

const CACHE_KIND = 'kv-smoothing'
const CACHE_VERSION = 1

export interface KvCalibration {
  smoothing: KvSmoothing
  tokens: number
  windows: number
  /** Read from the disk cache rather than computed. */
  cached: boolean
}

export async function calibrateKvSmoothing(model: OpenedModel, ids: readonly number[], options: KvCalibrationOptions = {}, hooks: EvalHooks = {}): Promise<KvCalibration> {
  if (model.format === 'onnx') throw new InferenceInputError(`${model.files[0]}: KV smoothing needs the model's weights; an .onnx file is evaluated only as it is`)
  const ctx = options.ctx ?? KV_CALIBRATION_CTX
  const maxWindows = options.maxWindows ?? DEFAULT_KV_CALIBRATION_WINDOWS
  // Overrides without a name for them would be a key that says nothing about the weights.
  const dir = options.overrides?.size && !options.variantKey ? null : options.cacheDir
  const { entry, cached } = await cachedStats(
    CACHE_KIND,
    CACHE_VERSION,
    dir,
    () => statsKey(model, { ids, ctx, maxWindows, backend: options.backend ?? 'wasm', spec: { sites: ['attn_k', 'attn_v'] }, variantKey: options.variantKey }),
    async () => smoothingEntry(await measureKvSmoothing(model, ids, ctx, maxWindows, options, hooks)),
  )
  const c = smoothingFromEntry(entry)
  return { ...c, cached }
}

async function measureKvSmoothing(
  model: OpenedModel,
  ids: readonly number[],
  ctx: number,
  maxWindows: number,
  options: KvCalibrationOptions,
  hooks: EvalHooks,
): Promise<{ smoothing: KvSmoothing; tokens: number; windows: number }> {
  const capture = await captureActivations(
    model,
    ids,
    {
      ctx,
      maxWindows,
      backend: options.backend,
      threads: options.threads,
      overrides: options.overrides,
      sites: ['attn_k', 'attn_v'],
    },
    hooks,
  )
  const smoothing: KvSmoothing = { key: [], value: [] }
  const byId = new Map(capture.points.map((p) => [p.id, p]))
  for (let l = 0; byId.has(`L${l}.attn_k`); l++) {
    for (const [site, list] of [['attn_k', smoothing.key], ['attn_v', smoothing.value]] as const) {
      const p = byId.get(`L${l}.${site}`)
      if (!p?.stats.min || !p.stats.max) throw new Error(`KV calibration: no per-channel range captured for L${l}.${site}`)
      list.push(kvAffineFromRange(p.stats.min, p.stats.max, `KV calibration L${l}.${site}`))
    }
  }
  if (smoothing.key.length === 0) throw new Error('KV calibration: the capture returned no K/V points')
  return { smoothing, tokens: capture.tokens, windows: capture.windows }
}

function smoothingEntry(c: { smoothing: KvSmoothing; tokens: number; windows: number }): StatsEntry {
  const arrays: Record<string, Float32Array> = {}
  c.smoothing.key.forEach((a, l) => Object.assign(arrays, { [`L${l}.k.shift`]: a.shift, [`L${l}.k.scale`]: a.scale }))
  c.smoothing.value.forEach((a, l) => Object.assign(arrays, { [`L${l}.v.shift`]: a.shift, [`L${l}.v.scale`]: a.scale }))
  return { meta: { tokens: c.tokens, windows: c.windows, layers: c.smoothing.key.length }, arrays }
}

function smoothingFromEntry(e: StatsEntry): { smoothing: KvSmoothing; tokens: number; windows: number } {
  const layers = e.meta.layers
  if (typeof layers !== 'number' || typeof e.meta.tokens !== 'number' || typeof e.meta.windows !== 'number') throw new Error('KV smoothing cache entry: header is incomplete')
  const take = (l: number, which: 'k' | 'v'): KvChannelAffine => {
    const shift = e.arrays[`L${l}.${which}.shift`]
    const scale = e.arrays[`L${l}.${which}.scale`]
    if (!shift || !scale) throw new Error(`KV smoothing cache entry: layer ${l} ${which} is missing`)
    return { shift, scale }
  }
  const smoothing: KvSmoothing = { key: [], value: [] }
  for (let l = 0; l < layers; l++) {
    smoothing.key.push(take(l, 'k'))
    smoothing.value.push(take(l, 'v'))
  }
  return { smoothing, tokens: e.meta.tokens, windows: e.meta.windows }
}

/**
 * perplexity's kv option from the settings: with smooth, the statistics calibrated first on
 * `calibration.ids` (the calibration text's tokens, never the evaluated text's).
 */
export async function kvEvalOptions(
  model: OpenedModel,
  settings: KvQuantSettings,
  calibration: { ids: readonly number[]; maxWindows?: number; source?: string } | null,
  options: KvCalibrationOptions = {},
  hooks: EvalHooks = {},
): Promise<KvEvalOptions> {
  checkKvSettings(settings, model.config?.headDim ?? undefined)
  const kv: KvEvalOptions = { bits: settings.bits, group: settings.group ?? null, smooth: settings.smooth, pastOnly: settings.pastOnly }
  if (!settings.smooth) return kv
  if (!calibration) throw new InferenceInputError('KV smoothing needs calibration tokens (never the evaluated text)')
  const c = await calibrateKvSmoothing(model, calibration.ids, { ...options, maxWindows: calibration.maxWindows ?? options.maxWindows }, hooks)
  kv.smoothing = c.smoothing
  kv.calibration = { source: calibration.source ?? 'tokens', tokens: c.tokens, windows: c.windows }
  return kv
}

/** A job's kv request: the settings, and where smoothing calibrates (default resources/eval/calibration.txt). */
export type KvJobSettings = KvQuantSettings & {
  calibrationText?: TextSource
  calibrationWindows?: number
  /** false: compute the smoothing statistics even when the disk cache holds them (and do not store them). */
  calibrationCache?: boolean
}

/**
 * kvEvalOptions from a job's request: with smooth, the calibration text tokenized with the
 * model's tokenizer (refused when it is the evaluated text file).
 */
export async function kvJobOptions(
  model: OpenedModel,
  request: KvJobSettings,
  tokenizer: () => Promise<TextTokenizer>,
  options: KvCalibrationOptions & { evaluatedFile?: string } = {},
  hooks: EvalHooks = {},
): Promise<KvEvalOptions> {
  const { calibrationText, calibrationWindows, calibrationCache, ...settings } = request
  let calibration = null
  if (settings.smooth) {
    const source = calibrationText ?? { file: DEFAULT_KV_CALIBRATION_TEXT }
    if ('file' in source && options.evaluatedFile && resolve(source.file) === resolve(options.evaluatedFile)) {
      throw new InferenceInputError(`KV smoothing would calibrate on the evaluated text ${options.evaluatedFile}; give another calibration text`)
    }
    const ids = await tokensOf(source, tokenizer)
    calibration = { ids, maxWindows: calibrationWindows, source: 'file' in source ? source.file : 'text' in source ? 'text' : 'tokens' }
  }
  return kvEvalOptions(model, settings, calibration, calibrationCache === false ? { ...options, cacheDir: null } : options, hooks)
}
