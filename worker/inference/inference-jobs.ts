import { isAbsolute, resolve } from 'node:path'
import { pathToFileURL } from 'node:url'
import type { OpenedModel } from '../formats/contract'
import { openModel } from '../formats/open-model'
import type { TextTokenizer } from '../model/tokenizer'
import { captureActivations, type CaptureResult } from './activation-capture'
import { InferenceInputError } from './errors'
import { declaredStopTokens, generateTokens, generationGraph, DEFAULT_MAX_TOKENS } from './generate'
import { nativeBackendAvailable } from './ort-backend'
import type {
  AnyJobResult,
  CaptureJob,
  GenerateJob,
  GenerateJobResult,
  GeneratedVariant,
  InferenceJob,
  InferenceProgress,
  PerplexityJob,
  VariantSpec,
} from './inference-protocol'
import { evaluatePerplexity, type PerplexityResult } from './perplexity'
import { kvJobOptions } from './kv-calibration'
import { kvEchoOf, type KvEcho, type KvEvalOptions } from './kv-quant'
import { actEcho } from './act-quant'
import { openEvalSession } from './eval-session'
import { openTokenizer, tokensOf } from './text-source'
import type { WeightOverrides } from './weights'

/**
 * Runs one inference job from its plain description (what the worker receives): opens the
 * models, builds the variants' overrides, tokenizes, and calls the engine. Kept apart from
 * the worker's message handling so it can also run in-process.
 */
export interface JobHooks {
  onProgress?(p: InferenceProgress): void
  signal?: AbortSignal
}

export async function runInferenceJob(job: InferenceJob, hooks: JobHooks = {}): Promise<AnyJobResult> {
  const opened = new Map<string, Promise<OpenedModel>>()
  const open = (path: string): Promise<OpenedModel> => {
    const abs = resolve(path)
    let m = opened.get(abs)
    if (!m) {
      m = openModel(abs)
      opened.set(abs, m)
    }
    return m
  }
  try {
    switch (job.kind) {
      case 'perplexity':
        return await runPerplexity(job, open, hooks)
      case 'generate':
        return await runGenerate(job, open, hooks)
      case 'capture':
        return await runCapture(job, open, hooks)
      case 'backends':
        return { wasm: { available: true }, native: await nativeBackendAvailable() }
      default:
        throw new InferenceInputError(`unknown job kind '${(job as { kind: string }).kind}'`)
    }
  } finally {
    for (const m of opened.values()) await m.then((x) => x.close()).catch(() => {})
  }
}

type Opener = (path: string) => Promise<OpenedModel>

async function variantOverrides(model: OpenedModel, v: VariantSpec | undefined): Promise<WeightOverrides | undefined> {
  if (!v) return undefined
  if (model.format === 'onnx' && (v.overridesModule || Object.keys(v.overrides ?? {}).length > 0)) {
    // Plans rewrite weights in the graph built from them; an .onnx file runs as it is.
    throw new InferenceInputError(
      `${model.files[0]}: quantization plans need the model's weights (a Hugging Face folder, safetensors or GGUF); an .onnx file is evaluated only as it is`,
    )
  }
  const map = new Map<string, Float32Array | ((r0: number, r1: number) => Float32Array | Promise<Float32Array>)>()
  if (v.overridesModule) {
    const spec = v.overridesModule.module
    const url = spec.startsWith('file:') ? spec : pathToFileURL(isAbsolute(spec) ? spec : resolve(spec)).href
    const mod = (await import(url)) as Record<string, unknown>
    const fn = mod[v.overridesModule.exportName ?? 'createOverrides']
    if (typeof fn !== 'function') throw new InferenceInputError(`${spec} does not export a function '${v.overridesModule.exportName ?? 'createOverrides'}'`)
    const made = (await fn(model, v.overridesModule.options)) as WeightOverrides
    for (const [k, val] of made) map.set(k, val)
  }
  for (const [k, val] of Object.entries(v.overrides ?? {})) map.set(k, val)
  return map.size ? map : undefined
}

function lazyTokenizer(model: OpenedModel, explicit?: string): () => Promise<TextTokenizer> {
  let t: Promise<TextTokenizer> | null = null
  return () => (t ??= openTokenizer(model, explicit))
}

async function runPerplexity(job: PerplexityJob, open: Opener, hooks: JobHooks): Promise<PerplexityResult> {
  const model = await open(job.variant?.model ?? job.model)
  const ids = await tokensOf(job.text, lazyTokenizer(model, job.tokenizer))
  const overrides = await variantOverrides(model, job.variant)
  let kld = null
  if (job.kld) {
    const base = await open(job.kld.base?.model ?? job.model)
    kld = {
      base,
      baseOverrides: await variantOverrides(base, job.kld.base),
      cache: job.kld.cache,
      cacheDir: job.kld.cacheDir,
      cacheBudgetBytes: job.kld.cacheBudgetBytes,
    }
  }
  let kv: KvEvalOptions | null = null
  if (job.kv) {
    kv = await kvJobOptions(model, job.kv, lazyTokenizer(model, job.tokenizer), { backend: job.backend, threads: job.threads, overrides, evaluatedFile: 'file' in job.text ? job.text.file : undefined }, {
      signal: hooks.signal,
      onProgress: (p) => hooks.onProgress?.({ ...p, stage: 'loading' }),
    })
  }
  return evaluatePerplexity(
    model,
    ids,
    { ctx: job.ctx, maxWindows: job.maxWindows, backend: job.backend, threads: job.threads, overrides, kld, kv, act: job.act ?? null },
    { onProgress: hooks.onProgress, signal: hooks.signal },
  )
}

async function runCapture(job: CaptureJob, open: Opener, hooks: JobHooks): Promise<CaptureResult> {
  const model = await open(job.variant?.model ?? job.model)
  const ids = await tokensOf(job.text, lazyTokenizer(model, job.tokenizer))
  return captureActivations(
    model,
    ids,
    {
      ctx: job.ctx,
      maxWindows: job.maxWindows,
      backend: job.backend,
      threads: job.threads,
      overrides: await variantOverrides(model, job.variant),
      gram: job.gram,
      sites: job.sites,
    },
    { onProgress: hooks.onProgress, signal: hooks.signal },
  )
}

async function runGenerate(job: GenerateJob, open: Opener, hooks: JobHooks): Promise<GenerateJobResult> {
  const main = await open(job.model)
  const tokenizer = lazyTokenizer(main, job.tokenizer)
  const promptIds = typeof job.prompt === 'string' ? (await tokenizer()).encode(job.prompt, { addSpecialTokens: false }) : job.prompt.tokens
  if (promptIds.length === 0) throw new InferenceInputError('the prompt is empty (no tokens)')
  // Token-id prompts may come without a tokenizer; the output is then shown as ids.
  const tok = typeof job.prompt === 'string' ? await tokenizer() : await tokenizer().catch(() => null)
  const decode = (ids: number[]): string => (tok ? tok.decode(ids) : ids.join(' '))
  const maxTokens = job.maxTokens ?? DEFAULT_MAX_TOKENS
  const variants = job.variants?.length ? job.variants : [{}]
  const results: GeneratedVariant[] = []
  let backend = job.backend ?? 'wasm'
  let kvEcho: KvEcho | undefined
  for (let vi = 0; vi < variants.length; vi++) {
    hooks.signal?.throwIfAborted()
    const v = variants[vi]!
    const path = v.model ?? job.model
    const model = await open(path)
    const overrides = await variantOverrides(model, v)
    if ((job.kv || job.act) && model.format === 'onnx') {
      throw new InferenceInputError(`${model.files[0]}: KV-cache and activation quantization are built into the graph made from the weights; an .onnx file runs only as it is`)
    }
    // Smoothing ranges are those of this variant's weights (calibrated on the calibration text, never the prompt).
    const kv = job.kv
      ? await kvJobOptions(model, job.kv, lazyTokenizer(model, job.tokenizer), { backend: job.backend, threads: job.threads, overrides }, {
          signal: hooks.signal,
          onProgress: (p) => hooks.onProgress?.({ ...p, stage: 'loading' }),
        })
      : null
    if (kv && !kvEcho) kvEcho = kvEchoOf(kv)
    const session = await openEvalSession(model, {
      backend: job.backend,
      threads: job.threads,
      overrides,
      signal: hooks.signal,
      onLoadProgress: (done, total) => hooks.onProgress?.({ stage: 'loading', done, total }),
      graph: generationGraph(promptIds.length, maxTokens, { kv, act: job.act ?? null }),
    })
    backend = session.backend
    try {
      const stops = job.stopTokens === undefined || job.stopTokens === 'model' ? await declaredStopTokens(model) : job.stopTokens
      const ids: number[] = []
      const res = await generateTokens(
        session,
        promptIds,
        { maxTokens, temperature: job.temperature, topP: job.topP, seed: job.seed, stopTokens: stops },
        {
          signal: hooks.signal,
          onToken: (id, index) => {
            ids.push(id)
            // The progress carries the decoded text so far (a UI shows it as it grows).
            hooks.onProgress?.({ stage: 'token', variant: vi, index, id, text: decode(ids) })
          },
        },
      )
      const text = decode(res.ids)
      results.push({ ...res, label: v.label ?? (variants.length > 1 ? `variant ${vi + 1}` : 'model'), model: resolve(path), text })
    } finally {
      await session.release()
    }
  }
  const out: GenerateJobResult = { prompt: typeof job.prompt === 'string' ? job.prompt : null, promptIds, variants: results, backend }
  if (kvEcho) out.kv = kvEcho
  if (job.act) out.act = actEcho(job.act)
  return out
}
