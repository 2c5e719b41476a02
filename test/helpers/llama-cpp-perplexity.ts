/**
 * Perplexity by llama.cpp itself (node-llama-cpp 3.21.1, its CPU kernels) on the app's windows:
 * the same token ids (the GGUF carries our vocabulary, no BOS added), the same windows of ctx
 * tokens (planWindows), each window evaluated from an empty cache, NLL from the next-token
 * probabilities llama.cpp returns. Used by the allocation-vs-llama.cpp test and its script.
 */
import { getLlama, LlamaLogLevel, type ControlledEvaluateInputItem, type Llama, type Token } from 'node-llama-cpp'

export async function openLlama(): Promise<Llama> {
  return getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error })
}

// node-llama-cpp brands its token ids; ours are the same integers.
const asTokens = (ids: readonly number[]): Token[] => ids as Token[]

export interface LlamaCppEval {
  /** Mean NLL per predicted token (nats). */
  nll: number
  perWindow: number[]
  predicted: number
  /** With keepProbabilities: per window, the next-token distributions, (length − 1) × vocab. */
  probabilities?: Float32Array[]
  /** With base: mean KL(base ‖ this) per predicted token over the base's distributions. */
  kld?: number
}

export interface LlamaCppEvalOptions {
  threads?: number
  /** Vocabulary size: needed for keepProbabilities and base. */
  vocab?: number
  keepProbabilities?: boolean
  /** Distributions of the reference model on the same windows (keepProbabilities of its run). */
  base?: Float32Array[]
}

/** Mean NLL per predicted token and per window (nats) of a GGUF over the windows; KLD against a base run. */
export async function llamaCppNll(llama: Llama, path: string, windows: readonly (readonly number[])[], options: LlamaCppEvalOptions = {}): Promise<LlamaCppEval> {
  const threads = options.threads ?? 2
  const ctx = Math.max(...windows.map((w) => w.length))
  const m = await llama.loadModel({ modelPath: path })
  const context = await m.createContext({ contextSize: ctx, threads, batchSize: ctx })
  try {
    const seq = context.getSequence()
    let sum = 0
    let count = 0
    const perWindow: number[] = []
    const vocab = options.vocab ?? 0
    if ((options.keepProbabilities || options.base) && !(vocab > 0)) throw new Error('llamaCppNll: distributions need options.vocab')
    const probabilities: Float32Array[] = []
    let kl = 0
    for (const [wi, w] of windows.entries()) {
      await seq.clearHistory()
      const items: ControlledEvaluateInputItem[] = asTokens(w).map((id, i) => (i < w.length - 1 ? [id, { generateNext: { probabilities: true } }] : id))
      const res = await seq.controlledEvaluate(items)
      let ws = 0
      const dist = options.keepProbabilities || options.base ? new Float32Array((w.length - 1) * vocab) : null
      for (let i = 0; i < w.length - 1; i++) {
        const probs = res[i]?.next.probabilities
        const p = probs?.get(asTokens(w)[i + 1]!)
        if (!(p !== undefined && p > 0)) throw new Error(`${path}: llama.cpp gave no probability for token ${i + 1} of a window`)
        ws -= Math.log(p)
        if (dist) {
          if (probs!.size !== vocab) throw new Error(`${path}: llama.cpp gave ${probs!.size} probabilities, not the whole vocabulary of ${vocab}`)
          for (const [id, q] of probs!) dist[i * vocab + id] = q
        }
      }
      if (dist && options.keepProbabilities) probabilities.push(dist)
      if (dist && options.base) {
        const b = options.base[wi]!
        if (b.length !== dist.length) throw new Error(`${path}: the base distributions do not match window ${wi}`)
        // KL(base ‖ this) in float64; a token the base gives mass and this run none would be infinite.
        for (let i = 0; i < b.length; i++) if (b[i]! > 0) kl += b[i]! * (Math.log(b[i]!) - Math.log(dist[i]!))
      }
      perWindow.push(ws / (w.length - 1))
      sum += ws
      count += w.length - 1
    }
    return { nll: sum / count, perWindow, predicted: count, ...(options.keepProbabilities ? { probabilities } : {}), ...(options.base ? { kld: kl / count } : {}) }
  } finally {
    await context.dispose()
    await m.dispose()
  }
}
