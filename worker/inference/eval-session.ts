import type { OpenedModel } from '../formats/contract'
import { OnnxFileSession } from './onnx-file-session'
import type { BackendKind, RunTensor } from './ort-backend'
import { DecoderSession, type DecoderSessionOptions, type ForwardInput, type ForwardOutput, type KvCache } from './session'

/**
 * What perplexity, KL divergence and generation need of a model, whichever way it runs:
 * - weights (HF folder, safetensors, GGUF): the engine builds its own graph from them, with
 *   nll/kl/argmax computed inside onnxruntime (DecoderSession, session.ts);
 * - an .onnx decoder file: the file itself runs, and the same outputs are derived from its
 *   logits (OnnxFileSession, onnx-file-session.ts).
 * Outputs carry the graph's names either way: logits, nll, logprobs, kl, argmax.
 */
export interface EvalSession {
  readonly backend: BackendKind
  readonly threads: number
  readonly vocab: number
  emptyCache(): KvCache
  forward(input: ForwardInput, fetch?: readonly string[]): Promise<ForwardOutput>
  forwardWindows(
    windows: readonly (readonly number[])[],
    extra?: { targets?: readonly (readonly number[])[]; refLogprobs?: Float32Array },
    fetch?: readonly string[],
  ): Promise<Record<string, RunTensor>>
  release(): Promise<void>
}

/** The session for an opened model: its ONNX file as it is, or a graph built from its weights. */
export async function openEvalSession(model: OpenedModel, options: DecoderSessionOptions): Promise<EvalSession> {
  if (model.format === 'onnx') return OnnxFileSession.create(model, options)
  return DecoderSession.create(model, options)
}
