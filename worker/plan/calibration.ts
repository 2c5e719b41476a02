/**
 * Calibration data for a plan's methods, captured from the full-precision model (the "fast
 * mode" of papers.md: activations of the unquantized model, not recomputed layer by layer):
 * - methods needing activation means (anyN) get them from a short prompt — any4's recipe, one
 *   diverse prompt (resources/eval/any4-prompt.txt) — or from the user's calibration text;
 * - methods needing XᵀX (GPTQ, AWQ) get it from the calibration text (resources/eval/
 *   calibration.txt, cut from the training corpus, disjoint from the held-out text: never
 *   calibrate on what you evaluate).
 * One capture pass per text; the Gram matrices only when a method needs them.
 */
import { fileURLToPath } from 'node:url'
import type { OpenedModel } from '../formats/contract'
import { captureActivations } from '../inference/activation-capture'
import type { CaptureSite } from '../inference/capture-points'
import type { EvalHooks } from '../inference/perplexity'
import type { BackendKind } from '../inference/ort-backend'
import { openTokenizer, tokensOf, type TextSource } from '../inference/text-source'
import type { CalibrationNeed, LayerCalibration } from '../quant/contract'
import { QUANT_METHODS } from '../quant/registry'
import type { ResolvedEntry } from './plan'
import { calibrationCacheFor, captureKey, defaultCalibrationCacheDir, reduceCapture, type CachedCapture } from './calibration-cache'

export const DEFAULT_CALIBRATION_TEXT = fileURLToPath(new URL('../../resources/eval/calibration.txt', import.meta.url))
export const DEFAULT_PROMPT_TEXT = fileURLToPath(new URL('../../resources/eval/any4-prompt.txt', import.meta.url))
export const CALIBRATION_CTX = 256

export interface CalibrationOptions {
  /** Text for XᵀX (and for means too, when given explicitly). Default: the shipped calibration text. */
  text?: TextSource
  /** Windows of the calibration text (default: all). */
  maxWindows?: number
  tokenizer?: string
  backend?: BackendKind
  threads?: number
  /**
   * Folder of the capture cache (calibration-cache.ts); undefined: `<cache root>/calibration`,
   * null: memory only. Captures are cached per model files, tokens, ctx and windows.
   */
  cacheDir?: string | null
}

const CAPTURE_SITES: CaptureSite[] = ['attn_in', 'o_in', 'mlp_in', 'down_in']

/** What a plan's entries need: the tensors wanting means, and those wanting XᵀX. */
export function calibrationNeeds(entries: readonly ResolvedEntry[]): Map<string, CalibrationNeed> {
  const needs = new Map<string, CalibrationNeed>()
  for (const e of entries) {
    const need = QUANT_METHODS.get(e.methodId)!.needs(e.params)
    if (need !== 'none') needs.set(e.tensor.name, need)
  }
  return needs
}

/** LayerCalibration per planned tensor that needs one (empty map when none does). */
export async function captureCalibration(
  model: OpenedModel,
  entries: readonly ResolvedEntry[],
  options: CalibrationOptions = {},
  hooks: EvalHooks = {},
): Promise<Map<string, LayerCalibration>> {
  const needs = calibrationNeeds(entries)
  const out = new Map<string, LayerCalibration>()
  if (needs.size === 0) return out
  const wantsGram = [...needs.values()].includes('gram')
  const wantsMeansOnly = [...needs.values()].includes('activation-stats')
  let tokenizer: Awaited<ReturnType<typeof openTokenizer>> | null = null
  const getTokenizer = async () => (tokenizer ??= await openTokenizer(model, options.tokenizer))
  const cache = calibrationCacheFor(options.cacheDir === undefined ? defaultCalibrationCacheDir() : options.cacheDir)
  const capture = async (source: TextSource, gram: boolean, whole: boolean): Promise<CachedCapture> => {
    const ids = await tokensOf(source, getTokenizer)
    // A prompt is one window of its own length; a calibration text is windows of 256 tokens.
    const ctx = whole ? Math.max(2, ids.length) : CALIBRATION_CTX
    const maxWindows = whole ? 1 : options.maxWindows
    const key = await captureKey(model, { ids, ctx, maxWindows: maxWindows ?? null, gram, sites: CAPTURE_SITES, backend: options.backend ?? 'wasm' })
    return cache.get(key, async () =>
      reduceCapture(await captureActivations(model, ids, { ctx, maxWindows, backend: options.backend, threads: options.threads, gram, sites: CAPTURE_SITES }, hooks)),
    )
  }
  const calibrationText = options.text ?? { file: DEFAULT_CALIBRATION_TEXT }
  const gramCapture = wantsGram ? await capture(calibrationText, true, false) : null
  // Means come from the prompt unless the user gave a calibration text (then from that text).
  const meansCapture = wantsMeansOnly ? (options.text ? (gramCapture ?? (await capture(options.text, false, false))) : await capture({ file: DEFAULT_PROMPT_TEXT }, false, true)) : null
  for (const [name, need] of needs) {
    const source = need === 'gram' ? gramCapture! : meansCapture!
    out.set(name, layerCalibration(source, name, need === 'gram'))
  }
  return out
}

function layerCalibration(capture: CachedCapture, tensor: string, withGram: boolean): LayerCalibration {
  const pointId = capture.linearInputs[tensor]
  const point = pointId === undefined ? undefined : capture.points.find((p) => p.id === pointId)
  if (!point) throw new Error(`calibration: the capture has no input activation for '${tensor}'`)
  const calib: LayerCalibration = { count: point.count, mean: point.mean, meanAbs: point.meanAbs, meanSq: point.meanSq }
  if (withGram) {
    if (!point.gram) throw new Error(`calibration: no XᵀX captured for '${tensor}'`)
    calib.gram = point.gram
  }
  return calib
}
