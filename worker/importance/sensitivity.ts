import { createHash } from 'node:crypto'
import { join } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { filesFingerprint } from '../io/file-fingerprint'
import { defaultCacheDir, ensurePrivateDir } from '../io/private-dir'
import { readVerifiedFile, writeVerifiedFile, type EntryIdentity } from '../io/verified-file'
import type { KldCacheMode } from '../inference/kld'
import type { BackendKind } from '../inference/ort-backend'
import { DEFAULT_CTX, evaluatePerplexity, planWindows, type EvalHooks } from '../inference/perplexity'
import { classifyTensor } from '../model/logical-model'
import { createOverrides } from '../plan/apply'
import type { CalibrationOptions } from '../plan/calibration'
import { PlanError, planFromSpec } from '../plan/plan'

/**
 * Measured sensitivity: for each decoder block, the model with only that block's linear
 * weights quantized by one method spec (all else as stored) is evaluated against the base on
 * the same windows; its importance is the mean KL divergence from the base (ΔKLD, since the
 * base's own is 0), beside ΔPPL. The base log-probs come from the KL cache (inference/kld.ts:
 * computed once, then read per block), and each whole result is cached under the private cache
 * folder's `importance/`, keyed by the model's files, the spec, the tokens, ctx and windows,
 * and verified when read back (io/verified-file.ts).
 */
export interface SensitivityOptions {
  /** A quantization spec as in `--quant` (e.g. `rtn:bits=3,group=128`). */
  spec: string
  ctx?: number
  maxWindows?: number
  backend?: BackendKind
  threads?: number
  /** For methods that need activations (GPTQ, AWQ …). */
  calibration?: CalibrationOptions
  /** Result cache folder; undefined: `<cache root>/importance`, null: no result cache. */
  cacheDir?: string | null
  /** The base log-probs' cache (default 'auto'). */
  kldCache?: KldCacheMode
}

export interface BlockSensitivity {
  layer: number
  /** Mean KL(base ‖ block-quantized) per predicted token, nats. */
  deltaKld: number
  /** Perplexity of the block-quantized model minus the base's. */
  deltaPpl: number
  ppl: number
  tensors: number
}

export interface SensitivityResult {
  spec: string
  ctx: number
  windows: number
  basePpl: number
  blocks: BlockSensitivity[]
  /** True when the whole result came from the cache. */
  cached: boolean
  seconds: number
}

const IDENTITY = { kind: 'importance-sensitivity', version: 1 }

export async function measureSensitivity(model: OpenedModel, ids: readonly number[], options: SensitivityOptions, hooks: EvalHooks = {}): Promise<SensitivityResult> {
  const t0 = performance.now()
  const ctx = options.ctx ?? DEFAULT_CTX
  const windows = planWindows(ids, ctx, options.maxWindows)
  // Checked before any work: an unknown method or bad parameter fails here, naming the spec.
  const full = planFromSpec(model, options.spec)
  const byBlock = new Map<number, string[]>()
  for (const name of Object.keys(full.tensors)) {
    const layer = classifyTensor(name).layer
    if (layer === null) continue
    byBlock.set(layer, [...(byBlock.get(layer) ?? []), name])
  }
  const layers = [...byBlock.keys()].sort((a, b) => a - b)
  if (layers.length === 0) throw new PlanError(model.files[0] ?? 'model', null, 'no decoder block has linear weights to quantize')

  const idsBytes = new Uint8Array(Int32Array.from(ids.slice(0, windows.length * ctx)).buffer)
  const key = JSON.stringify({
    files: await filesFingerprint(model.files),
    spec: full.tensors[byBlock.get(layers[0]!)![0]!],
    calibration: options.calibration
      ? createHash('sha256').update(JSON.stringify({ text: options.calibration.text ?? null, maxWindows: options.calibration.maxWindows ?? null, tokenizer: options.calibration.tokenizer ?? null })).digest('hex')
      : null,
    tokens: createHash('sha256').update(idsBytes).digest('hex'),
    ctx,
    windows: windows.length,
  })
  const id: EntryIdentity = { ...IDENTITY, key }
  const dir = options.cacheDir === null ? null : (options.cacheDir ?? join(defaultCacheDir(), 'importance'))
  const file = dir ? join(dir, `${createHash('sha256').update(key).digest('hex').slice(0, 40)}.json`) : null
  if (file) {
    const read = await readVerifiedFile(file, id, 16 << 20).catch(() => ({ status: 'missing' as const }))
    if (read.status === 'ok') {
      const cached = JSON.parse(Buffer.from(read.payload).toString('utf8')) as Omit<SensitivityResult, 'cached' | 'seconds' | 'spec'>
      return { ...cached, spec: options.spec, cached: true, seconds: (performance.now() - t0) / 1000 }
    }
  }

  const blocks: BlockSensitivity[] = []
  let basePpl = NaN
  for (const [i, layer] of layers.entries()) {
    hooks.signal?.throwIfAborted()
    const names = byBlock.get(layer)!
    const plan = { ...full, tensors: Object.fromEntries(names.map((n) => [n, full.tensors[n]!])) }
    const overrides = await createOverrides(model, { plan, source: `spec ${options.spec} (block ${layer})`, calibration: options.calibration })
    const r = await evaluatePerplexity(
      model,
      ids,
      { ctx, maxWindows: windows.length, backend: options.backend, threads: options.threads, overrides, kld: { cache: options.kldCache ?? 'auto' } },
      { signal: hooks.signal },
    )
    basePpl = r.kld!.basePpl
    blocks.push({ layer, deltaKld: r.kld!.mean, deltaPpl: r.kld!.deltaPpl, ppl: r.ppl, tensors: names.length })
    hooks.onProgress?.({ stage: 'evaluating', done: i + 1, total: layers.length })
  }
  const result = { ctx, windows: windows.length, basePpl, blocks }
  if (dir && file) {
    try {
      await ensurePrivateDir(dir)
      await writeVerifiedFile(file, id, new TextEncoder().encode(JSON.stringify(result)))
    } catch {
      // An unwritable cache costs the next run time, never this result.
    }
  }
  return { ...result, spec: options.spec, cached: false, seconds: (performance.now() - t0) / 1000 }
}
