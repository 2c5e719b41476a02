import { dirname, join } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { readRegularTextFile } from '../io/regular-file'
import { InferenceInputError, NonFiniteResultError } from './errors'
import { sampleToken, seededRandom, type SamplingOptions } from './sampler'
import type { EvalSession } from './eval-session'
import type { DecoderGraphOptions } from './llama-graph'
import { kvGraphFromEval, type KvEvalOptions } from './kv-quant'
import { checkActOptions, type ActGraphOptions } from './act-quant'

/**
 * Text generation with the KV cache: one prefill of the prompt, then one token per step.
 * Greedy by default; temperature/top-p sampling from a seeded generator, so two variants
 * given the same prompt and seed can be compared side by side.
 */
export interface GenerateOptions {
  maxTokens?: number
  /** 0 (default) = greedy. */
  temperature?: number
  topP?: number
  seed?: number
  /** Generation stops after any of these (end-of-sequence ids). */
  stopTokens?: number[]
}

export interface GenerationResult {
  promptTokens: number
  /** Generated ids (the stop token included, when one ended the generation). */
  ids: number[]
  stopReason: 'stop-token' | 'max-tokens'
  prefillSeconds: number
  decodeSeconds: number
  /** Generated tokens per second of decoding (prefill excluded). */
  tokensPerSecond: number
}

export interface GenerateHooks {
  onToken?(id: number, index: number): void
  /**
   * The logits each step sampled from (a view, valid during the call), and the position they
   * were computed at: they predict the token at position + 1.
   */
  onLogits?(logits: Float32Array, position: number): void
  signal?: AbortSignal
}

export const DEFAULT_MAX_TOKENS = 64

/** Positions a generation session needs: prompt + new tokens. */
export function generationPositions(promptTokens: number, maxTokens: number): number {
  return promptTokens + maxTokens
}

/** Fake quantization a generation runs with (the eval options: kv-quant.ts, act-quant.ts). */
export interface GenerationQuant {
  /** KV cache; with smooth, the statistics already calibrated (kv-calibration.ts kvEvalOptions). */
  kv?: KvEvalOptions | null
  act?: ActGraphOptions | null
}

/**
 * The decode graph: KV cache in and out, last-position logits. With `kv`, the graph's
 * attention (kv-quant.ts) makes a token enter the cache quantized after its step: past-only
 * attends to the dequantised cache for j < t and the step's own full-precision K/V at j = t
 * (WKVQuant's POQ); naive attends to its own K/V quantized too. The prompt's prefill is the
 * same teacher-forced computation as the perplexity graph's with the same settings.
 */
export function generationGraph(promptTokens: number, maxTokens: number, quant: GenerationQuant = {}): DecoderGraphOptions {
  const graph: DecoderGraphOptions = { kvCache: true, logits: 'last', maxPositions: generationPositions(promptTokens, maxTokens) }
  if (quant.kv) graph.kv = kvGraphFromEval(quant.kv)
  if (quant.act) {
    checkActOptions(quant.act, Infinity)
    graph.act = quant.act
  }
  return graph
}

export async function generateTokens(session: EvalSession, prompt: readonly number[], options: GenerateOptions = {}, hooks: GenerateHooks = {}): Promise<GenerationResult> {
  if (prompt.length === 0) throw new InferenceInputError('the prompt is empty (no tokens)')
  const maxTokens = options.maxTokens ?? DEFAULT_MAX_TOKENS
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new InferenceInputError(`maxTokens must be an integer ≥ 1, got ${maxTokens}`)
  const sampling: SamplingOptions = { temperature: options.temperature ?? 0, topP: options.topP ?? 1 }
  if (!(sampling.temperature >= 0)) throw new InferenceInputError(`temperature must be ≥ 0, got ${sampling.temperature}`)
  if (!(sampling.topP > 0 && sampling.topP <= 1)) throw new InferenceInputError(`top-p must be in (0, 1], got ${sampling.topP}`)
  const random = seededRandom(options.seed ?? 0)
  const stops = new Set(options.stopTokens ?? [])
  const V = session.vocab
  const lastRow = (data: Float32Array, position: number): Float32Array => {
    const row = data.subarray(data.length - V)
    // argmax over NaNs would quietly pick token 0; say where the model broke instead.
    for (let j = 0; j < V; j++) if (!Number.isFinite(row[j]!)) throw new NonFiniteResultError('a logit', `position ${position} (vocabulary id ${j})`, row[j]!)
    hooks.onLogits?.(row, position)
    return row
  }

  const t0 = performance.now()
  let step = await session.forward({ tokens: prompt }, ['logits'])
  const prefillSeconds = (performance.now() - t0) / 1000
  const ids: number[] = []
  let stopReason: GenerationResult['stopReason'] = 'max-tokens'
  const t1 = performance.now()
  for (let i = 0; i < maxTokens; i++) {
    hooks.signal?.throwIfAborted()
    const id = sampleToken(lastRow(step.outputs.logits!.data as Float32Array, prompt.length - 1 + i), sampling, random)
    ids.push(id)
    hooks.onToken?.(id, i)
    if (stops.has(id)) {
      stopReason = 'stop-token'
      break
    }
    if (i === maxTokens - 1) break
    step = await session.forward({ tokens: [id], past: step.present }, ['logits'])
  }
  const decodeSeconds = (performance.now() - t1) / 1000
  return { promptTokens: prompt.length, ids, stopReason, prefillSeconds, decodeSeconds, tokensPerSecond: ids.length / Math.max(decodeSeconds, 1e-9) }
}

/**
 * End-of-sequence ids the model declares: `eos_token_id` of config.json / generation_config.json
 * (HF folders) or `tokenizer.ggml.eos_token_id` (GGUF).
 */
export async function declaredStopTokens(model: OpenedModel): Promise<number[]> {
  const out = new Set<number>()
  const add = (v: unknown): void => {
    if (typeof v === 'number' && Number.isInteger(v)) out.add(v)
    else if (Array.isArray(v)) v.forEach(add)
  }
  add(model.metadata['tokenizer.ggml.eos_token_id'])
  const configFile = model.files.find((f) => f.endsWith('config.json'))
  const dir = configFile ? dirname(configFile) : null
  if (dir) {
    for (const name of ['config.json', 'generation_config.json']) {
      try {
        // Regular files only: a FIFO under this name would block the open forever.
        add((JSON.parse(await readRegularTextFile(join(dir, name), 64 * 1024 * 1024)) as Record<string, unknown>).eos_token_id)
      } catch {
        /* absent or unreadable: no stop tokens from it */
      }
    }
  }
  return [...out]
}
