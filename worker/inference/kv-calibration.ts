import { fileURLToPath } from 'node:url'
import type { OpenedModel } from '../formats/contract'
import { captureActivations } from './activation-capture'
import { InferenceInputError } from './errors'
import { checkKvSettings, kvAffineFromRange, type KvEvalOptions, type KvQuantSettings, type KvSmoothing } from './kv-quant'
import type { BackendKind } from './ort-backend'
import type { EvalHooks } from './perplexity'
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
}

export async function calibrateKvSmoothing(
  model: OpenedModel,
  ids: readonly number[],
  options: KvCalibrationOptions = {},
  hooks: EvalHooks = {},
): Promise<{ smoothing: KvSmoothing; tokens: number; windows: number }> {
  if (model.format === 'onnx') throw new InferenceInputError(`${model.files[0]}: KV smoothing needs the model's weights; an .onnx file is evaluated only as it is`)
  const capture = await captureActivations(
    model,
    ids,
    {
      ctx: options.ctx ?? KV_CALIBRATION_CTX,
      maxWindows: options.maxWindows ?? DEFAULT_KV_CALIBRATION_WINDOWS,
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
