/**
 * Measured per-tensor sensitivity, the cost the greedy and optimal allocators minimise: for a
 * tensor and an option, quantize that tensor alone (everything else full precision) and take
 * the mean KL divergence of the model's next-token distribution against the base model over a
 * few windows of a text. Summed over tensors it is an additive proxy of a plan's KLD.
 *
 * Each figure is a full evaluation (a session with one weight overridden, the base log-probs
 * from the log-prob cache), so results are cached on disk per
 *   (model files' fingerprint, tensor, option spec, token ids' hash, ctx, windows, backend)
 * in the private cache folder (`<cache root>/sensitivity`, verified entries, bounded), and the
 * loop reports progress and stops between measurements when `signal` aborts.
 */
import { join } from 'node:path'
import type { OpenedModel, TensorEntry } from '../formats/contract'
import { DEFAULT_CTX, evaluatePerplexity } from '../inference/perplexity'
import type { BackendKind } from '../inference/ort-backend'
import { BoundedCacheDir } from '../io/bounded-cache-dir'
import { filesFingerprint } from '../io/file-fingerprint'
import { tokenIdsKey } from '../io/token-ids-key'
import { defaultCacheDir } from '../io/private-dir'
import { QuantParamError } from '../quant/contract'
import { QUANT_METHODS } from '../quant/registry'
import type { AllocOption } from './allocate'
import { createOverrides, orientedShape } from './apply'
import type { CalibrationOptions } from './calibration'
import { modelDisplayName, modelFingerprint, PLAN_FORMAT, PLAN_VERSION, type Plan } from './plan'

export interface SensitivityRequest {
  model: OpenedModel
  tensors: readonly TensorEntry[]
  /** 'keep' costs 0 and is not measured. */
  options: readonly AllocOption[]
  /** Token ids of the text. */
  ids: readonly number[]
  ctx?: number
  /** Windows of ctx tokens (default 4). */
  maxWindows?: number
  backend?: BackendKind
  threads?: number
  calibration?: CalibrationOptions
  /** Folder of the result cache; undefined: `<cache root>/sensitivity`; null: no disk cache. */
  cacheDir?: string | null
  /** Folder of the base log-prob cache (kld.ts); undefined: its default. */
  logprobCacheDir?: string
}

export interface SensitivityProgress {
  done: number
  total: number
  tensor: string
  option: string
  /** The figure came from the cache. */
  cached: boolean
  kld: number
}

export interface SensitivityHooks {
  signal?: AbortSignal
  onProgress?(p: SensitivityProgress): void
}

/** ΔKLD per tensor name and option spec ('keep' → 0). */
export type SensitivityTable = Map<string, Map<string, number>>

const KIND = 'sensitivity'
const VERSION = 1
const DEFAULT_WINDOWS = 4
const CACHE_BYTES = 64 << 20

export function defaultSensitivityCacheDir(): string {
  return join(defaultCacheDir(), 'sensitivity')
}

function onePlan(model: OpenedModel, tensor: TensorEntry, option: AllocOption & { kind: 'method' }): Plan {
  return {
    format: PLAN_FORMAT,
    version: PLAN_VERSION,
    model: { name: modelDisplayName(model), fingerprint: modelFingerprint(model) },
    tensors: { [tensor.name]: { method: option.methodId, params: option.params as Record<string, number | boolean | string> } },
  }
}

function fits(model: OpenedModel, tensor: TensorEntry, option: AllocOption & { kind: 'method' }): boolean {
  const [rows, cols] = orientedShape(model, tensor)
  try {
    QUANT_METHODS.get(option.methodId)!.storage(rows, cols, option.params)
    return true
  } catch (err) {
    if (err instanceof QuantParamError) return false
    throw err
  }
}

export async function measureSensitivity(req: SensitivityRequest, hooks: SensitivityHooks = {}): Promise<SensitivityTable> {
  const { model } = req
  const { signal } = hooks
  const ctx = req.ctx ?? DEFAULT_CTX
  const maxWindows = req.maxWindows ?? DEFAULT_WINDOWS
  const tokens = tokenIdsKey(req.ids)
  const files = await filesFingerprint(model.files)
  const dir = req.cacheDir === undefined ? defaultSensitivityCacheDir() : req.cacheDir
  const disk = dir === null ? null : new BoundedCacheDir(dir, { kind: KIND, version: VERSION, maxBytes: CACHE_BYTES })
  const table: SensitivityTable = new Map()
  const methods = req.options.filter((o): o is AllocOption & { kind: 'method' } => o.kind === 'method')
  // A shape an option does not fit is no measurement: the allocator skips that choice.
  const total = req.tensors.reduce((a, t) => a + methods.filter((o) => fits(model, t, o)).length, 0)
  let done = 0
  let baseReady = false
  const kldOptions = req.logprobCacheDir ? { cacheDir: req.logprobCacheDir } : {}
  for (const tensor of req.tensors) {
    const row = new Map<string, number>()
    table.set(tensor.name, row)
    if (req.options.some((o) => o.kind === 'keep')) row.set('keep', 0)
    for (const option of methods) {
      signal?.throwIfAborted()
      if (!fits(model, tensor, option)) continue
      const key = JSON.stringify({ files, tensor: tensor.name, spec: option.spec, tokens, ctx, maxWindows, backend: req.backend ?? 'wasm', calibration: req.calibration?.text ?? null })
      const hit = await disk?.get(key)
      let kld: number | null = null
      if (hit) {
        const value = (JSON.parse(new TextDecoder().decode(hit)) as { kld?: unknown }).kld
        if (typeof value === 'number' && Number.isFinite(value)) kld = value
      }
      const cached = kld !== null
      if (kld === null) {
        // The first evaluation writes the base log-probs to their cache (16-bit) and later ones
        // read them back: run the unquantized model once first, so every figure sees the same base.
        if (!baseReady) {
          await evaluatePerplexity(model, req.ids, { ctx, maxWindows, backend: req.backend, threads: req.threads, kld: kldOptions }, { signal })
          baseReady = true
        }
        const overrides = await createOverrides(model, { plan: onePlan(model, tensor, option), source: `sensitivity of ${tensor.name} at ${option.spec}`, calibration: req.calibration })
        const r = await evaluatePerplexity(model, req.ids, { ctx, maxWindows, backend: req.backend, threads: req.threads, overrides, kld: kldOptions }, { signal })
        kld = r.kld!.mean
        await disk?.set(key, new TextEncoder().encode(JSON.stringify({ kld })))
      }
      row.set(option.spec, kld)
      done++
      hooks.onProgress?.({ done, total, tensor: tensor.name, option: option.spec, cached, kld })
    }
  }
  return table
}
