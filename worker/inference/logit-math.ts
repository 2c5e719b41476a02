/**
 * What the evaluation needs from a window's logits [seq, vocab], computed in TypeScript for
 * models whose graph is not ours (an ONNX file run as it is), where the engine's graph computes
 * the same inside onnxruntime (llama-graph.ts: nll, logprobs, kl, argmax). Every sum over the
 * vocabulary is accumulated in float64; results are stored as the graph's outputs are
 * (float32, argmax int64) so the callers read both the same way.
 */
export interface WindowOutputs {
  /** [seq]: logsumexp(row) − row[target]. */
  nll?: Float32Array
  /** [seq, vocab]: row − logsumexp(row). */
  logprobs?: Float32Array
  /** [seq]: KL(ref ‖ this) = Σ exp(ref)·(ref − logprob). */
  kl?: Float32Array
  /** [seq]: index of the first largest logit (onnxruntime's ArgMax picks the first too). */
  argmax?: BigInt64Array
}

export interface WindowInputs {
  /** [seq], clamped into [0, vocab) as the graph's targets are. */
  targets?: ArrayLike<number>
  /** [seq, vocab] base log-probabilities for kl. */
  ref?: Float32Array
}

/**
 * Fills `out` (arrays already sized for the whole batch) at row offset `row0` from one window's
 * logits. NaN/Inf logits propagate into nll/kl as NaN, for the caller's finite checks to name.
 */
export function scoreWindow(logits: Float32Array, seq: number, vocab: number, inputs: WindowInputs, out: WindowOutputs, row0: number): void {
  for (let t = 0; t < seq; t++) {
    const base = t * vocab
    let max = -Infinity
    let arg = 0
    for (let j = 0; j < vocab; j++) {
      const v = logits[base + j]!
      if (v > max) {
        max = v
        arg = j
      }
    }
    let sum = 0
    // max = ±Inf or NaN: the row is broken; let NaN flow to the caller's check.
    const shift = Number.isFinite(max) ? max : 0
    for (let j = 0; j < vocab; j++) sum += Math.exp(logits[base + j]! - shift)
    const lse = shift + Math.log(sum)
    const r = row0 + t
    if (out.argmax) out.argmax[r] = BigInt(arg)
    if (out.nll) {
      const target = Math.max(0, Math.min(vocab - 1, inputs.targets![t]!))
      out.nll[r] = lse - logits[base + target]!
    }
    if (out.logprobs) {
      const o = r * vocab
      for (let j = 0; j < vocab; j++) out.logprobs[o + j] = logits[base + j]! - lse
    }
    if (out.kl) {
      const ref = inputs.ref!
      let kl = 0
      for (let j = 0; j < vocab; j++) {
        const p = ref[base + j]!
        // exp(-Inf) = 0 terms (a token the base never predicts) contribute nothing, not NaN.
        if (p === -Infinity) continue
        kl += Math.exp(p) * (p - (logits[base + j]! - lse))
      }
      out.kl[r] = kl
    }
  }
}
