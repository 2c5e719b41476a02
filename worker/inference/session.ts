import type { OpenedModel } from '../formats/contract'
import { resolveDecoder, type DecoderSpec } from './decoder-spec'
import { buildDecoderGraph, type DecoderGraphInfo, type DecoderGraphOptions } from './llama-graph'
import { createBackendSession, type BackendKind, type BackendSession, type RunTensor } from './ort-backend'
import { validateOverrides, type WeightOverrides } from './weights'

/**
 * A decoder model ready to run: graph built from the weights (+ overrides), loaded into one
 * backend. forward() runs one sequence (with the KV cache for generation); forwardWindows()
 * runs several independent evaluation windows in one call.
 */
export interface DecoderSessionOptions {
  backend?: BackendKind
  threads?: number
  overrides?: WeightOverrides
  graph: DecoderGraphOptions
  signal?: AbortSignal
  /** Weight tensors read so far / in all. */
  onLoadProgress?(done: number, total: number): void
}

/** Keys and values of every layer for the first `length` positions. */
export interface KvCache {
  length: number
  keys: RunTensor[]
  values: RunTensor[]
}

export interface ForwardInput {
  tokens: ArrayLike<number>
  /** Position of tokens[0]; must equal the cache length when a cache is given. */
  startPos?: number
  past?: KvCache
  /** Next-token targets for the `nll` output (same length as tokens). */
  targets?: ArrayLike<number>
  /** Base model log-probabilities [tokens, vocab] for the `kl` output. */
  refLogprobs?: Float32Array
}

export interface ForwardOutput {
  outputs: Record<string, RunTensor>
  /** The cache after these tokens (kvCache graphs only). */
  present?: KvCache
}

export class DecoderSession {
  private constructor(
    readonly spec: DecoderSpec,
    readonly info: DecoderGraphInfo,
    private readonly session: BackendSession,
  ) {}

  static async create(model: OpenedModel, options: DecoderSessionOptions): Promise<DecoderSession> {
    const spec = resolveDecoder(model)
    validateOverrides(model, options.overrides)
    const { builder, info } = await buildDecoderGraph(model, spec, options.graph, options.overrides, {
      signal: options.signal,
      onProgress: options.onLoadProgress,
    })
    options.signal?.throwIfAborted()
    const session = await createBackendSession(options.backend ?? 'wasm', builder, { threads: options.threads })
    return new DecoderSession(spec, info, session)
  }

  get backend(): BackendKind {
    return this.session.backend
  }

  get threads(): number {
    return this.session.threads
  }

  get vocab(): number {
    return this.spec.vocab
  }

  emptyCache(): KvCache {
    const c = this.spec.config
    const empty = (): RunTensor => ({ type: 'float32', data: new Float32Array(0), dims: [1, c.numKvHeads, 0, c.headDim] })
    return { length: 0, keys: this.spec.layers.map(empty), values: this.spec.layers.map(empty) }
  }

  /** Runs tokens (batch 1) and returns the requested graph outputs (default: all of them). */
  async forward(input: ForwardInput, fetch?: readonly string[]): Promise<ForwardOutput> {
    const T = input.tokens.length
    if (T === 0) throw new Error('forward: no tokens')
    const kv = this.info.kv
    const past = kv ? (input.past ?? this.emptyCache()) : null
    if (!kv && input.past) throw new Error('forward: this session was built without a KV cache')
    const start = input.startPos ?? past?.length ?? 0
    if (past && start !== past.length) throw new Error(`forward: tokens start at position ${start} but the cache holds ${past.length}`)
    // GroupQueryAttention derives positions from the cache length: 0 … without a cache.
    if (!past && start !== 0 && this.info.attention === 'gqa') {
      throw new Error('forward: without a KV cache this session evaluates from position 0')
    }
    if (start + T > this.info.options.maxPositions) {
      throw new RangeError(`positions up to ${start + T - 1} exceed the RoPE table of this session (${this.info.options.maxPositions} positions)`)
    }
    const ids = new BigInt64Array(T)
    const pos = new BigInt64Array(T)
    for (let i = 0; i < T; i++) {
      const id = input.tokens[i]!
      if (!Number.isInteger(id) || id < 0 || id >= this.spec.vocab) throw new RangeError(`token id ${id} at ${i} is outside the vocabulary [0, ${this.spec.vocab})`)
      ids[i] = BigInt(id)
      pos[i] = BigInt(start + i)
    }
    const feeds: Record<string, RunTensor> = {
      input_ids: { type: 'int64', data: ids, dims: [1, T] },
      position_ids: { type: 'int64', data: pos, dims: [1, T] },
    }
    if (kv && past) {
      kv.pastKey.forEach((name, l) => (feeds[name] = past.keys[l]!))
      kv.pastValue.forEach((name, l) => (feeds[name] = past.values[l]!))
    }
    if (this.info.options.nll) {
      if (!input.targets || input.targets.length !== T) throw new Error('forward: the nll output needs one target per token')
      const t = new BigInt64Array(T)
      for (let i = 0; i < T; i++) t[i] = BigInt(Math.max(0, Math.min(this.spec.vocab - 1, input.targets[i]!)))
      feeds.targets = { type: 'int64', data: t, dims: [1, T] }
    }
    if (this.info.options.kl) {
      if (!input.refLogprobs || input.refLogprobs.length !== T * this.spec.vocab) throw new Error('forward: the kl output needs reference log-probabilities [tokens, vocab]')
      feeds.ref_logprobs = { type: 'float32', data: input.refLogprobs, dims: [1, T, this.spec.vocab] }
    }
    const wanted = [...(fetch ?? this.info.outputs)]
    if (kv) for (const n of [...kv.presentKey, ...kv.presentValue]) if (!wanted.includes(n)) wanted.push(n)
    const outputs = await this.session.run(feeds, wanted)
    // onnxruntime may settle run() through microtasks only; without a macrotask turn a loop of
    // forwards would starve the thread's message port, and with it cancel requests.
    await new Promise<void>((r) => setImmediate(r))
    let present: KvCache | undefined
    if (kv) {
      present = {
        length: start + T,
        keys: kv.presentKey.map((n) => outputs[n]!),
        values: kv.presentValue.map((n) => outputs[n]!),
      }
    }
    return { outputs, present }
  }

  /**
   * Several equal-length windows in one run, each from position 0 and an empty cache (the
   * rows of the batch never attend to each other). Outputs are [windows, seq, …]. Larger Gemms
   * keep both WASM threads busier: 2 × 256 tokens per run ran ~25% faster than 1 × 256.
   */
  async forwardWindows(
    windows: readonly (readonly number[])[],
    extra: { targets?: readonly (readonly number[])[]; refLogprobs?: Float32Array } = {},
    fetch?: readonly string[],
  ): Promise<Record<string, RunTensor>> {
    const B = windows.length
    const T = windows[0]?.length ?? 0
    if (B === 0 || T === 0) throw new Error('forwardWindows: no tokens')
    if (windows.some((w) => w.length !== T)) throw new Error('forwardWindows: windows of different lengths')
    if (this.info.kv) throw new Error('forwardWindows: this session has a KV cache; use forward()')
    if (T > this.info.options.maxPositions) {
      throw new RangeError(`positions up to ${T - 1} exceed the RoPE table of this session (${this.info.options.maxPositions} positions)`)
    }
    const ids = new BigInt64Array(B * T)
    const pos = new BigInt64Array(B * T)
    for (let b = 0; b < B; b++) {
      for (let i = 0; i < T; i++) {
        const id = windows[b]![i]!
        if (!Number.isInteger(id) || id < 0 || id >= this.spec.vocab) throw new RangeError(`token id ${id} at ${i} is outside the vocabulary [0, ${this.spec.vocab})`)
        ids[b * T + i] = BigInt(id)
        pos[b * T + i] = BigInt(i)
      }
    }
    const feeds: Record<string, RunTensor> = {
      input_ids: { type: 'int64', data: ids, dims: [B, T] },
      position_ids: { type: 'int64', data: pos, dims: [B, T] },
    }
    if (this.info.options.nll) {
      if (!extra.targets || extra.targets.length !== B || extra.targets.some((t) => t.length !== T)) {
        throw new Error('forwardWindows: the nll output needs one target per token')
      }
      const t = new BigInt64Array(B * T)
      extra.targets.forEach((row, b) => row.forEach((v, i) => (t[b * T + i] = BigInt(Math.max(0, Math.min(this.spec.vocab - 1, v))))))
      feeds.targets = { type: 'int64', data: t, dims: [B, T] }
    }
    if (this.info.options.kl) {
      if (!extra.refLogprobs || extra.refLogprobs.length !== B * T * this.spec.vocab) {
        throw new Error('forwardWindows: the kl output needs reference log-probabilities [windows, tokens, vocab]')
      }
      feeds.ref_logprobs = { type: 'float32', data: extra.refLogprobs, dims: [B, T, this.spec.vocab] }
    }
    const outputs = await this.session.run(feeds, fetch ?? this.info.outputs)
    await new Promise<void>((r) => setImmediate(r))
    return outputs
  }

  release(): Promise<void> {
    return this.session.release()
  }
}

/**
 * Windows per run for window-by-window evaluation: about 512 tokens, as long as the logits
 * and their log-softmax ([windows·ctx, vocab] float32 each, plus a reference for KL) stay
 * under 256 MB, which matters inside the 4 GB WASM heap for 150k-token vocabularies.
 */
export function windowsPerRun(ctx: number, vocab: number, copies = 2): number {
  let b = Math.max(1, Math.floor(512 / ctx))
  while (b > 1 && b * ctx * vocab * 4 * copies > 256 * 2 ** 20) b--
  return b
}
