/**
 * Converts a Hugging Face llama folder (config.json, model.safetensors, tokenizer.json,
 * tokenizer_config.json) with a byte-level BPE tokenizer to GGUF, the way llama.cpp's
 * convert_hf_to_gguf.py does for such a model: the engine's GGUF export (worker/export/gguf.ts)
 * with an empty plan, matrices kept in bf16, 1-D norms as F32, q/k rows permuted for
 * llama.cpp's RoPE, and the tokenizer as tokenizer.ggml.* metadata.
 */
import { openModel } from '../../worker/formats/open-model'
import { runExport } from '../../worker/export/run-export'
import { PLAN_FORMAT, PLAN_VERSION, modelFingerprint, type Plan } from '../../worker/plan/plan'

export { bpeTokenizerKv, TOKEN_TYPE } from '../../worker/export/gguf-metadata'

/** Writes `dir` (an HF llama folder with bf16 weights) as a GGUF file at `out` (its export report beside it). */
export async function convertHfLlamaToGguf(dir: string, out: string, opts: { pre: string }): Promise<void> {
  const model = await openModel(dir)
  try {
    if (model.config?.architecture !== 'llama') throw new Error(`hf-to-gguf: ${dir} is not a llama model`)
    const plan: Plan = { format: PLAN_FORMAT, version: PLAN_VERSION, model: { name: 'default', fingerprint: modelFingerprint(model) }, tensors: {} }
    await runExport({ model, modelPath: dir, plan, planSource: 'empty plan', format: 'gguf', out, options: { dtype: 'bf16', formatOptions: { pre: opts.pre } } })
  } finally {
    await model.close()
  }
}
