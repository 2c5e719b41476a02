import type { OpenedModel } from '../formats/contract'
import { decodePlain } from '../formats/dtypes'
import { ModelFormatError } from '../common/errors'
import { InferenceInputError } from './errors'
import { scoreWindow, type WindowOutputs } from './logit-math'
import { checkDecoderTypes, cacheGeometry, matchDecoderIo, type DecoderIo } from './onnx-decoder-io'
import { createFileBackendSession, type BackendKind, type FileBackendSession, type RunTensor } from './ort-backend'
import type { DecoderSessionOptions, ForwardInput, ForwardOutput, KvCache } from './session'

/**
 * A decoder ONNX file run as it is — an export of ours, of optimum / transformers.js, or of
 * torch.onnx.export — behind the same interface as the graph the engine builds from weights
 * (session.ts), so perplexity, KL divergence and generation measure it like any model.
 *
 * The file computes logits only; nll, log-softmax, KL and argmax come from them in TypeScript
 * (logit-math.ts), one window at a time, so at most one window's [seq, vocab] logits are held
 * besides what the caller asked for. Inputs are fed as transformers feeds them: an attention
 * mask of ones over past + new tokens, positions from the cache length, and an empty cache
 * ([1, kv_heads, 0, head_dim]) to start from. A graph without cache inputs still generates:
 * its "cache" is the token history, and each step runs the whole sequence again.
 */
export class OnnxFileSession {
  private constructor(
    readonly file: string,
    readonly io: DecoderIo,
    private readonly session: FileBackendSession,
    readonly vocab: number,
    private readonly cache: { kvHeads: number; headDim: number; type: 'float32' | 'float16' } | null,
    private readonly fetchPresent: boolean,
  ) {}

  static async create(model: OpenedModel, options: DecoderSessionOptions): Promise<OnnxFileSession> {
    const file = model.files[0]
    if (model.format !== 'onnx' || !file) throw new Error('OnnxFileSession runs .onnx files only')
    if (options.overrides && options.overrides.size > 0) {
      throw new InferenceInputError(
        `${file}: a quantization plan changes weights, which needs the model's weights (a Hugging Face folder, safetensors or GGUF); an .onnx file runs only as it is`,
      )
    }
    const names = (key: string): string[] => (Array.isArray(model.metadata[key]) ? (model.metadata[key] as unknown[]).filter((v): v is string => typeof v === 'string') : [])
    // Names come from the file itself, so a non-decoder is refused before onnxruntime loads it.
    const io = matchDecoderIo(file, names('inputs'), names('outputs'))
    options.onLoadProgress?.(0, 1)
    options.signal?.throwIfAborted()
    const external = [...new Set(model.tensors.map((t) => t.file).filter((f) => f !== file))]
    const session = await createFileBackendSession(options.backend ?? 'wasm', file, external, { threads: options.threads })
    try {
      const cacheType = checkDecoderTypes(file, io, session.inputs, session.outputs)
      let cache: OnnxFileSession['cache'] = null
      if (io.pastKey.length > 0) {
        const geometry = cacheGeometry(io, session.inputs, model.config)
        if (!geometry) {
          throw new ModelFormatError(
            file,
            null,
            `'${io.pastKey[0]}' declares no numbers for kv_heads and head_dim ([batch, kv_heads, past, head_dim]) and there is no config.json beside the file (or one folder up) to give num_key_value_heads and head_dim`,
          )
        }
        cache = { ...geometry, type: cacheType }
      }
      const declared = session.outputs.find((o) => o.name === io.logits)?.shape.at(-1)
      const probe = new OnnxFileSession(file, io, session, typeof declared === 'number' && declared > 0 ? declared : 0, cache, false)
      // A symbolic vocabulary dimension: one token tells it (config.json's vocab_size may be unpadded).
      const vocab = probe.vocab > 0 ? probe.vocab : (await probe.runLogits([0], 0, probe.emptyCache(), false)).vocab
      options.signal?.throwIfAborted()
      options.onLoadProgress?.(1, 1)
      return new OnnxFileSession(file, io, session, vocab, cache, options.graph.kvCache === true)
    } catch (err) {
      await session.release()
      throw err
    }
  }

  get backend(): BackendKind {
    return this.session.backend
  }

  get threads(): number {
    return this.session.threads
  }

  emptyCache(): KvCache {
    if (!this.cache) return { length: 0, keys: [{ type: 'int64', data: new BigInt64Array(0), dims: [0] }], values: [] }
    const { kvHeads, headDim, type } = this.cache
    const empty = (): RunTensor => ({ type, data: type === 'float16' ? new Uint16Array(0) : new Float32Array(0), dims: [1, kvHeads, 0, headDim] })
    return { length: 0, keys: this.io.pastKey.map(empty), values: this.io.pastValue.map(empty) }
  }

  /** Runs tokens (batch 1) after `past`; outputs as the engine's graph names them (logits, nll, logprobs, kl, argmax). */
  async forward(input: ForwardInput, fetch: readonly string[] = ['logits']): Promise<ForwardOutput> {
    const T = input.tokens.length
    if (T === 0) throw new Error('forward: no tokens')
    const past = input.past ?? this.emptyCache()
    const start = input.startPos ?? past.length
    if (start !== past.length) throw new Error(`forward: tokens start at position ${start} but the cache holds ${past.length}`)
    this.checkTokens(input.tokens)
    const { logits, present } = await this.runLogits(input.tokens, start, past, this.fetchPresent || input.past !== undefined)
    return { outputs: this.derive(logits, 1, T, fetch, input.targets ? [input.targets] : undefined, input.refLogprobs), present }
  }

  /** Windows each from position 0 and an empty cache, one runtime call per window. Outputs are [windows, seq, …]. */
  async forwardWindows(
    windows: readonly (readonly number[])[],
    extra: { targets?: readonly (readonly number[])[]; refLogprobs?: Float32Array } = {},
    fetch: readonly string[] = ['logits'],
  ): Promise<Record<string, RunTensor>> {
    const B = windows.length
    const T = windows[0]?.length ?? 0
    if (B === 0 || T === 0) throw new Error('forwardWindows: no tokens')
    if (windows.some((w) => w.length !== T)) throw new Error('forwardWindows: windows of different lengths')
    const V = this.vocab
    if (fetch.includes('nll') && (!extra.targets || extra.targets.length !== B || extra.targets.some((t) => t.length !== T))) {
      throw new Error('forwardWindows: the nll output needs one target per token')
    }
    if (fetch.includes('kl') && (!extra.refLogprobs || extra.refLogprobs.length !== B * T * V)) {
      throw new Error('forwardWindows: the kl output needs reference log-probabilities [windows, tokens, vocab]')
    }
    const out = this.allocate(B, T, fetch)
    for (let b = 0; b < B; b++) {
      this.checkTokens(windows[b]!)
      const { logits } = await this.runLogits(windows[b]!, 0, this.emptyCache(), false)
      this.score(logits, T, b, out, extra.targets?.[b], extra.refLogprobs?.subarray(b * T * V, (b + 1) * T * V))
    }
    return this.finish(out, B, T)
  }

  release(): Promise<void> {
    return this.session.release()
  }

  // ---- internals

  private checkTokens(tokens: ArrayLike<number>): void {
    for (let i = 0; i < tokens.length; i++) {
      const id = tokens[i]!
      if (!Number.isInteger(id) || id < 0 || (this.vocab > 0 && id >= this.vocab)) {
        throw new RangeError(`token id ${id} at ${i} is outside the vocabulary [0, ${this.vocab})`)
      }
    }
  }

  /** Logits [T, vocab] in float32 for `tokens` after `past`, and the cache after them. */
  private async runLogits(
    tokens: ArrayLike<number>,
    start: number,
    past: KvCache,
    wantPresent: boolean,
  ): Promise<{ logits: Float32Array; vocab: number; present: KvCache | undefined }> {
    const T = tokens.length
    // Without cache inputs the past is the token history: the whole sequence runs again.
    const history = this.cache ? null : (past.keys[0]!.data as BigInt64Array)
    const all = T + (history?.length ?? 0)
    const ids = new BigInt64Array(all)
    if (history) ids.set(history)
    for (let i = 0; i < T; i++) ids[all - T + i] = BigInt(tokens[i]!)
    const first = history ? 0 : start
    const feeds: Record<string, RunTensor> = { [this.io.inputIds]: { type: 'int64', data: ids, dims: [1, all] } }
    if (this.io.attentionMask) feeds[this.io.attentionMask] = { type: 'int64', data: new BigInt64Array(start + T).fill(1n), dims: [1, start + T] }
    if (this.io.positionIds) {
      const pos = new BigInt64Array(all)
      for (let i = 0; i < all; i++) pos[i] = BigInt(first + i)
      feeds[this.io.positionIds] = { type: 'int64', data: pos, dims: [1, all] }
    }
    if (this.io.logitsToKeep) feeds[this.io.logitsToKeep] = { type: 'int64', data: new BigInt64Array(1), dims: [] }
    if (this.io.useCacheBranch) feeds[this.io.useCacheBranch] = { type: 'bool', data: Uint8Array.of(start > 0 ? 1 : 0), dims: [1] }
    if (this.cache) {
      this.io.pastKey.forEach((n, l) => (feeds[n] = past.keys[l]!))
      this.io.pastValue.forEach((n, l) => (feeds[n] = past.values[l]!))
    }
    const fetches = [this.io.logits]
    if (wantPresent && this.cache) fetches.push(...this.io.presentKey, ...this.io.presentValue)
    const outputs = await this.session.run(feeds, fetches)
    // As in session.ts: a macrotask turn per run keeps the thread's message port (cancel) alive.
    await new Promise<void>((r) => setImmediate(r))
    const raw = outputs[this.io.logits]!
    const dims = raw.dims
    const vocab = dims.at(-1) ?? 0
    const rows = dims.slice(0, -1).reduce((a, d) => a * d, 1)
    if (dims.length !== 3 || dims[0] !== 1 || rows !== all || (this.vocab > 0 && vocab !== this.vocab)) {
      throw new ModelFormatError(
        this.file,
        null,
        `'${this.io.logits}' came back as [${dims.join(', ')}] for ${all} tokens; evaluation needs logits [1, ${all}, ${this.vocab || 'vocab'}] (one row per position)`,
      )
    }
    let logits = raw.type === 'float16' ? halfToFloat(raw.data as Uint16Array) : (raw.data as Float32Array)
    if (history) logits = logits.subarray((all - T) * vocab)
    let present: KvCache | undefined
    if (history) present = { length: all, keys: [{ type: 'int64', data: ids, dims: [all] }], values: [] }
    else if (wantPresent && this.cache) {
      present = { length: start + T, keys: this.io.presentKey.map((n) => outputs[n]!), values: this.io.presentValue.map((n) => outputs[n]!) }
    }
    return { logits, vocab, present }
  }

  private allocate(B: number, T: number, fetch: readonly string[]): WindowOutputs & { logits?: Float32Array } {
    const V = this.vocab
    const out: WindowOutputs & { logits?: Float32Array } = {}
    for (const name of fetch) {
      if (name === 'nll') out.nll = new Float32Array(B * T)
      else if (name === 'kl') out.kl = new Float32Array(B * T)
      else if (name === 'argmax') out.argmax = new BigInt64Array(B * T)
      else if (name === 'logprobs') out.logprobs = new Float32Array(B * T * V)
      else if (name === 'logits') out.logits = new Float32Array(B * T * V)
      else throw new Error(`${this.file}: no output '${name}' (an ONNX file session gives logits, nll, logprobs, kl and argmax)`)
    }
    return out
  }

  private score(logits: Float32Array, T: number, b: number, out: WindowOutputs & { logits?: Float32Array }, targets?: ArrayLike<number>, ref?: Float32Array): void {
    const V = this.vocab
    out.logits?.set(logits, b * T * V)
    if (out.nll || out.kl || out.argmax || out.logprobs) scoreWindow(logits, T, V, { targets, ref }, out, b * T)
  }

  private finish(out: WindowOutputs & { logits?: Float32Array }, B: number, T: number): Record<string, RunTensor> {
    const V = this.vocab
    const result: Record<string, RunTensor> = {}
    if (out.nll) result.nll = { type: 'float32', data: out.nll, dims: [B, T] }
    if (out.kl) result.kl = { type: 'float32', data: out.kl, dims: [B, T] }
    if (out.argmax) result.argmax = { type: 'int64', data: out.argmax, dims: [B, T] }
    if (out.logprobs) result.logprobs = { type: 'float32', data: out.logprobs, dims: [B, T, V] }
    if (out.logits) result.logits = { type: 'float32', data: out.logits, dims: [B, T, V] }
    return result
  }

  private derive(logits: Float32Array, B: number, T: number, fetch: readonly string[], targets?: readonly ArrayLike<number>[], ref?: Float32Array): Record<string, RunTensor> {
    if (fetch.includes('nll') && (!targets?.[0] || targets[0].length !== T)) throw new Error('forward: the nll output needs one target per token')
    if (fetch.includes('kl') && (!ref || ref.length !== T * this.vocab)) throw new Error('forward: the kl output needs reference log-probabilities [tokens, vocab]')
    if (fetch.length === 1 && fetch[0] === 'logits') return { logits: { type: 'float32', data: logits, dims: [B, T, this.vocab] } }
    const out = this.allocate(B, T, fetch)
    this.score(logits, T, 0, out, targets?.[0], ref)
    return this.finish(out, B, T)
  }
}

function halfToFloat(h: Uint16Array): Float32Array {
  return decodePlain('F16', new Uint8Array(h.buffer, h.byteOffset, h.byteLength), new Float32Array(h.length))
}
