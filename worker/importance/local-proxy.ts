/**
 * Local error proxy: how much a tensor's quantization disturbs what it computes, measured on
 * calibration activations without any forward pass per option — the cheap importance and
 * allocation cost for models too large to evaluate once per tensor and option.
 *
 * For a linear with weight W [out, in], its input activations X [tokens, in] on the
 * calibration text (resources/eval/calibration.txt by default — never the evaluated text)
 * and the quantized Ŵ, E = Ŵ − W:
 *   relative error = ‖X·Eᵀ‖² / ‖X·Wᵀ‖² = tr(E·G·Eᵀ) / tr(W·G·Wᵀ),   G = XᵀX,
 * so only the Gram matrix G of each linear input is needed. It is the same capture GPTQ and
 * AWQ read (plan/calibration.ts, cached by plan/calibration-cache.ts with the same key, so a
 * model calibrated once for GPTQ costs nothing more here).
 *
 * A block's figure is Σ over its linears of tr(E G Eᵀ) / Σ tr(W G Wᵀ): the relative error of
 * the block's *linear outputs* (q, k, v, o, gate, up, down, each fed the full-precision
 * activations), NOT of the whole attention/MLP block output — softmax, SiLU gating, the norms
 * and the residual are not propagated. It is the Gram proxy, additive over tensors.
 *
 * Tensors beyond the decoder linears (`--all-tensors`):
 * - lm_head: its input is the final norm's output, captured with its own Gram (lm_head_in);
 * - the embedding is a lookup: its "input" is one-hot token ids, so G is diagonal with the
 *   token counts of the calibration windows and the ratio is Σ_t n_t‖e_t‖² / Σ_t n_t‖w_t‖²;
 * - a tied embedding/lm_head has both uses; its cost is the sum of the two relative errors.
 *
 * Figures are cached per (model files, tensor, option spec, calibration tokens, ctx, windows,
 * backend) in `<cache root>/local-proxy` (verified, bounded entries).
 */
import { join } from 'node:path'
import type { OpenedModel, TensorEntry } from '../formats/contract'
import { captureActivations } from '../inference/activation-capture'
import type { CaptureSite } from '../inference/capture-points'
import type { BackendKind } from '../inference/ort-backend'
import { planWindows } from '../inference/perplexity'
import { openTokenizer, tokensOf } from '../inference/text-source'
import { BoundedCacheDir } from '../io/bounded-cache-dir'
import { filesFingerprint } from '../io/file-fingerprint'
import { tokenIdsKey } from '../io/token-ids-key'
import { defaultCacheDir } from '../io/private-dir'
import { classifyTensor } from '../model/logical-model'
import { QuantParamError, type LayerCalibration } from '../quant/contract'
import { QUANT_METHODS } from '../quant/registry'
import { optionEntry, parseOptionSpecs, type AllocOption } from '../plan/allocate'
import { quantizeEntry, readOrientedWeight } from '../plan/apply'
import { CALIBRATION_CTX, captureCalibration, DEFAULT_CALIBRATION_TEXT, type CalibrationOptions } from '../plan/calibration'
import { calibrationCacheFor, captureKey, defaultCalibrationCacheDir, reduceCapture, type CachedCapture, type CachedPoint } from '../plan/calibration-cache'
import { decoderLinearWeights, PlanError } from '../plan/plan'

/** The sites plan/calibration.ts captures for GPTQ/AWQ: the same list gives the same cache key. */
const DECODER_SITES: CaptureSite[] = ['attn_in', 'o_in', 'mlp_in', 'down_in']
const LM_HEAD_SITES: CaptureSite[] = ['lm_head_in']

/** The default spec of `importance --method local` (the 4-bit RTN in groups of 128). */
export const DEFAULT_LOCAL_SPEC = 'rtn:bits=4,group=128'

export interface LocalProxyOptions {
  /** Calibration text (default resources/eval/calibration.txt), windows, tokenizer, backend; its capture cache. */
  calibration?: CalibrationOptions
  /** Result cache folder; undefined: `<cache root>/local-proxy`, null: none. */
  cacheDir?: string | null
}

export interface LocalProxyProgress {
  stage: 'loading' | 'calibrating' | 'measuring'
  done: number
  total: number
}

export interface LocalProxyHooks {
  signal?: AbortSignal
  onProgress?(p: LocalProxyProgress): void
}

/** One tensor at one option: output error and output energy on the calibration tokens. */
export interface LocalErrorTerms {
  /** tr(E·G·Eᵀ) summed over the tensor's uses. */
  error: number
  /** tr(W·G·Wᵀ) summed over the tensor's uses. */
  energy: number
  /** Σ over uses of error/energy: the allocation cost. */
  relative: number
}

export interface LocalProxyTable {
  /** Tensor name → option spec → terms ('keep' → zeros); an option that does not fit a shape is absent. */
  tensors: Map<string, Map<string, LocalErrorTerms>>
  /** Calibration tokens the Grams were reduced over (windows × ctx). */
  tokens: number
  windows: number
  /** Figures read from the result cache / computed. */
  cached: number
  computed: number
  seconds: number
}

const KIND = 'local-proxy'
const VERSION = 1
const CACHE_BYTES = 16 << 20

export function defaultLocalProxyCacheDir(): string {
  return join(defaultCacheDir(), 'local-proxy')
}

/** What feeds a tensor: a captured linear input (Gram), the token lookup (embedding), or both (tied). */
interface Uses {
  gramPoint: CachedPoint | null
  lookup: boolean
}

function fits(model: OpenedModel, tensor: TensorEntry, option: AllocOption & { kind: 'method' }): boolean {
  const e = optionEntry(model, tensor, option)
  try {
    QUANT_METHODS.get(option.methodId)!.storage(e.rows, e.cols, option.params)
    return true
  } catch (err) {
    if (err instanceof QuantParamError) return false
    throw err
  }
}

/**
 * tr(A·G·Aᵀ) for A [rows, cols] row-major, G symmetric [cols, cols] float64: Σ_rows a·G·aᵀ over
 * the upper triangle. Four rows share each pass over G (G outgrows the cache on wide inputs, so
 * reading it once per four rows instead of once per row is ~2× faster on these machines).
 */
export function gramTrace(a: ArrayLike<number>, rows: number, cols: number, gram: Float64Array, signal?: AbortSignal): number {
  if (gram.length !== cols * cols) throw new RangeError(`gramTrace: XᵀX has ${gram.length} values, [${cols} × ${cols}] needed`)
  const e0 = new Float64Array(cols)
  const e1 = new Float64Array(cols)
  const e2 = new Float64Array(cols)
  const e3 = new Float64Array(cols)
  const block = [e0, e1, e2, e3]
  let total = 0
  for (let r0 = 0; r0 < rows; r0 += 4) {
    if ((r0 & 63) === 0) signal?.throwIfAborted()
    for (let r = 0; r < 4; r++) {
      const e = block[r]!
      if (r0 + r >= rows) {
        e.fill(0)
        continue
      }
      const off = (r0 + r) * cols
      for (let j = 0; j < cols; j++) e[j] = a[off + j]!
    }
    for (let i = 0; i < cols; i++) {
      const gi = i * cols
      const d = 0.5 * gram[gi + i]!
      let a0 = d * e0[i]!
      let a1 = d * e1[i]!
      let a2 = d * e2[i]!
      let a3 = d * e3[i]!
      for (let j = i + 1; j < cols; j++) {
        const g = gram[gi + j]!
        a0 += g * e0[j]!
        a1 += g * e1[j]!
        a2 += g * e2[j]!
        a3 += g * e3[j]!
      }
      total += 2 * (a0 * e0[i]! + a1 * e1[i]! + a2 * e2[i]! + a3 * e3[i]!)
    }
  }
  return total
}

/** Σ_t n_t ‖A[t]‖² (the embedding's output energy, G = diag(token counts)). */
function lookupTrace(a: ArrayLike<number>, rows: number, cols: number, counts: Map<number, number>, tensor: TensorEntry): number {
  let total = 0
  for (const [t, n] of counts) {
    if (t >= rows) throw new PlanError(tensor.file, tensor.name, `the calibration text has token id ${t}, beyond the embedding's ${rows} rows`)
    let s = 0
    const off = t * cols
    for (let j = 0; j < cols; j++) s += a[off + j]! * a[off + j]!
    total += n * s
  }
  return total
}

/**
 * Per-tensor, per-option local error on the calibration text. 'keep' costs 0. Options whose
 * params do not fit a tensor's shape are left out (as measured sensitivity does), so the
 * allocator skips that choice.
 */
export async function localProxyTable(
  model: OpenedModel,
  tensors: readonly TensorEntry[],
  options: readonly AllocOption[],
  opts: LocalProxyOptions = {},
  hooks: LocalProxyHooks = {},
): Promise<LocalProxyTable> {
  const t0 = performance.now()
  const { signal } = hooks
  const calibration = opts.calibration ?? {}
  const backend: BackendKind = calibration.backend ?? 'wasm'
  const ids = await tokensOf(calibration.text ?? { file: DEFAULT_CALIBRATION_TEXT }, () => openTokenizer(model, calibration.tokenizer))
  const windows = planWindows(ids, CALIBRATION_CTX, calibration.maxWindows)
  const tokens = tokenIdsKey(ids)
  const files = await filesFingerprint(model.files)
  const dir = opts.cacheDir === undefined ? defaultLocalProxyCacheDir() : opts.cacheDir
  const disk = dir === null ? null : new BoundedCacheDir(dir, { kind: KIND, version: VERSION, maxBytes: CACHE_BYTES })
  const methods = options.filter((o): o is AllocOption & { kind: 'method' } => o.kind === 'method')
  const keyOf = (tensor: TensorEntry, spec: string): string =>
    JSON.stringify({ files, tensor: tensor.name, spec, tokens, ctx: CALIBRATION_CTX, windows: windows.length, backend })

  // Cached figures first: a fully cached table needs no capture at all.
  const out = new Map<string, Map<string, LocalErrorTerms>>()
  const todo: { tensor: TensorEntry; option: AllocOption & { kind: 'method' } }[] = []
  let cached = 0
  for (const tensor of tensors) {
    const row = new Map<string, LocalErrorTerms>()
    out.set(tensor.name, row)
    if (options.some((o) => o.kind === 'keep')) row.set('keep', { error: 0, energy: 0, relative: 0 })
    for (const option of methods) {
      if (!fits(model, tensor, option)) continue
      const hit = await disk?.get(keyOf(tensor, option.spec))
      const terms = hit ? (JSON.parse(new TextDecoder().decode(hit)) as Partial<LocalErrorTerms>) : null
      if (terms && [terms.error, terms.energy, terms.relative].every((v) => typeof v === 'number' && Number.isFinite(v))) {
        row.set(option.spec, terms as LocalErrorTerms)
        cached++
      } else {
        todo.push({ tensor, option })
      }
    }
  }
  const result = (computed: number): LocalProxyTable => ({ tensors: out, tokens: windows.length * CALIBRATION_CTX, windows: windows.length, cached, computed, seconds: (performance.now() - t0) / 1000 })
  if (todo.length === 0) return result(0)

  // Which Gram each tensor needs; the lm_head capture only when lm_head is asked for.
  const uses = new Map<string, Uses>()
  const needTensors = [...new Set(todo.map((t) => t.tensor))]
  const decoderNames = new Set(decoderLinearWeights(model).map((t) => t.name))
  const captureCache = calibrationCacheFor(calibration.cacheDir === undefined ? defaultCalibrationCacheDir() : calibration.cacheDir)
  const capture = async (sites: CaptureSite[]): Promise<CachedCapture> => {
    const key = await captureKey(model, { ids, ctx: CALIBRATION_CTX, maxWindows: calibration.maxWindows ?? null, gram: true, sites, backend })
    return captureCache.get(key, async () =>
      reduceCapture(
        await captureActivations(
          model,
          ids,
          { ctx: CALIBRATION_CTX, maxWindows: calibration.maxWindows, backend: calibration.backend, threads: calibration.threads, gram: true, sites },
          { signal, onProgress: (p) => hooks.onProgress?.({ stage: p.stage === 'loading' ? 'loading' : 'calibrating', done: p.done, total: p.total }) },
        ),
      ),
    )
  }
  const decoderCapture = needTensors.some((t) => decoderNames.has(t.name)) ? await capture(DECODER_SITES) : null
  const nonDecoder = needTensors.filter((t) => !decoderNames.has(t.name))
  let headCapture: CachedCapture | null = null
  if (nonDecoder.length > 0) {
    const probe = await capture(LM_HEAD_SITES)
    if (nonDecoder.some((t) => probe.linearInputs[t.name] !== undefined)) headCapture = probe
  }
  const pointOf = (c: CachedCapture | null, name: string): CachedPoint | null => {
    const id = c?.linearInputs[name]
    return id === undefined ? null : (c!.points.find((p) => p.id === id) ?? null)
  }
  for (const t of needTensors) {
    const gramPoint = pointOf(decoderCapture, t.name) ?? pointOf(headCapture, t.name)
    const lookup = classifyTensor(t.alias ?? t.name).role === 'embed'
    if (gramPoint && !gramPoint.gram) throw new PlanError(t.file, t.name, 'the calibration capture has no XᵀX for its input')
    if (!gramPoint && !lookup) throw new PlanError(t.file, t.name, 'the calibration capture has no input activation for it (not a decoder linear, lm_head or embedding)')
    uses.set(t.name, { gramPoint, lookup })
  }
  const counts = new Map<number, number>()
  for (const w of windows) for (const t of w) counts.set(t, (counts.get(t) ?? 0) + 1)

  // One tensor at a time: its weight, its energy, then each option's quantized error.
  let done = 0
  hooks.onProgress?.({ stage: 'measuring', done, total: todo.length })
  for (const tensor of needTensors) {
    signal?.throwIfAborted()
    const use = uses.get(tensor.name)!
    const mine = todo.filter((t) => t.tensor === tensor)
    const first = optionEntry(model, tensor, mine[0]!.option)
    const { rows, cols } = first
    const weight = await readOrientedWeight(model, first, signal)
    const traces = (a: ArrayLike<number>): number[] => [
      ...(use.gramPoint ? [gramTrace(a, rows, cols, use.gramPoint.gram!, signal)] : []),
      ...(use.lookup ? [lookupTrace(a, rows, cols, counts, tensor)] : []),
    ]
    const energy = traces(weight)
    if (energy.some((e) => !(e > 0))) throw new PlanError(tensor.file, tensor.name, 'its output on the calibration tokens is zero (all-zero weight or activations): the relative error is undefined')
    for (const { option } of mine) {
      const entry = optionEntry(model, tensor, option)
      const need = QUANT_METHODS.get(option.methodId)!.needs(option.params)
      let layerCalibration: LayerCalibration | undefined
      if (need === 'gram' && use.gramPoint) {
        const p = use.gramPoint
        layerCalibration = { count: p.count, mean: p.mean, meanAbs: p.meanAbs, meanSq: p.meanSq, gram: p.gram! }
      } else if (need !== 'none') {
        layerCalibration = (await captureCalibration(model, [entry], calibration, { signal })).get(tensor.name)
      }
      const q = quantizeEntry(entry, weight, layerCalibration, { signal })
      const deq = q.dequantizeRows(0, rows)
      const diff = new Float64Array(rows * cols)
      for (let i = 0; i < diff.length; i++) diff[i] = deq[i]! - weight[i]!
      const errors = traces(diff)
      const terms: LocalErrorTerms = {
        error: errors.reduce((a, b) => a + b, 0),
        energy: energy.reduce((a, b) => a + b, 0),
        relative: errors.reduce((a, e, i) => a + e / energy[i]!, 0),
      }
      out.get(tensor.name)!.set(option.spec, terms)
      await disk?.set(keyOf(tensor, option.spec), new TextEncoder().encode(JSON.stringify(terms))).catch(() => {})
      hooks.onProgress?.({ stage: 'measuring', done: ++done, total: todo.length })
    }
  }
  return result(todo.length)
}

/** The allocators' cost table: relative local error per tensor and option spec. */
export function localCosts(table: LocalProxyTable): Map<string, Map<string, number>> {
  return new Map([...table.tensors].map(([name, row]) => [name, new Map([...row].map(([spec, t]) => [spec, t.relative]))]))
}

export interface LocalImportanceResult {
  spec: string
  /** Block indices ascending. */
  layers: number[]
  /** Per block Σ tr(E G Eᵀ) / Σ tr(W G Wᵀ) over its linears; null when the spec fits none of them. */
  importance: (number | null)[]
  /** Per decoder linear: its own relative error. */
  tensors: { name: string; layer: number; relative: number }[]
  tokens: number
  windows: number
  /** Every figure came from the result cache. */
  cached: boolean
  seconds: number
}

/** Per-block local error of the decoder linears quantized by one spec (importance method 'local'). */
export async function localBlockImportance(model: OpenedModel, spec: string, opts: LocalProxyOptions = {}, hooks: LocalProxyHooks = {}): Promise<LocalImportanceResult> {
  const options = parseOptionSpecs(spec)
  if (options.length !== 1 || options[0]!.kind !== 'method') throw new PlanError('spec', null, `local importance takes one method spec (e.g. ${DEFAULT_LOCAL_SPEC}), got '${spec}'`)
  const targets = decoderLinearWeights(model)
  if (targets.length === 0) throw new PlanError(model.files[0] ?? 'model', null, 'no decoder linear weights to quantize')
  const table = await localProxyTable(model, targets, options, opts, hooks)
  const L = Math.max(...targets.map((t) => classifyTensor(t.alias ?? t.name).layer!)) + 1
  const error = new Float64Array(L)
  const energy = new Float64Array(L)
  const has = new Array<boolean>(L).fill(false)
  const tensors: LocalImportanceResult['tensors'] = []
  for (const t of targets) {
    const layer = classifyTensor(t.alias ?? t.name).layer!
    const terms = table.tensors.get(t.name)?.get(options[0]!.spec)
    if (!terms) continue
    error[layer]! += terms.error
    energy[layer]! += terms.energy
    has[layer] = true
    tensors.push({ name: t.name, layer, relative: terms.relative })
  }
  return {
    spec: options[0]!.spec,
    layers: Array.from({ length: L }, (_, l) => l),
    importance: Array.from({ length: L }, (_, l) => (has[l] ? error[l]! / energy[l]! : null)),
    tensors,
    tokens: table.tokens,
    windows: table.windows,
    cached: table.computed === 0,
    seconds: table.seconds,
  }
}
