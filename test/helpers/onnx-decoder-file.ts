import { copyFile, mkdir, open, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { OpenedModel } from '../../worker/formats/contract'
import { resolveDecoder } from '../../worker/inference/decoder-spec'
import { buildDecoderGraph } from '../../worker/inference/llama-graph'

/**
 * Writes the engine's own decoder graph of `model` (float32 weights, logits for every position,
 * a KV cache) as an ONNX file with its weights in `weights.bin` beside it, in the Hugging Face
 * layout `dir/onnx/model.onnx` with config.json and tokenizer.json copied to `dir` — what an
 * export of the model looks like, to be reopened as an .onnx model. `io` picks the engine's
 * names (past_key.L …) or the Hugging Face ones (past_key_values.L.key …, attention_mask).
 */
export async function writeDecoderOnnx(model: OpenedModel, dir: string, io: 'engine' | 'hf', maxPositions = 512): Promise<string> {
  const spec = resolveDecoder(model)
  const { builder } = await buildDecoderGraph(model, spec, { kvCache: true, logits: 'all', maxPositions, io, attention: 'ops' })
  const serialized = builder.serialize('single-file')
  const onnxDir = join(dir, 'onnx')
  await mkdir(onnxDir, { recursive: true })
  const path = join(onnxDir, 'model.onnx')
  await writeFile(path, serialized.model)
  for (const f of serialized.files) {
    const fh = await open(join(onnxDir, f.path), 'w')
    try {
      for (const part of f.parts) await fh.write(new Uint8Array(part.data.buffer, part.data.byteOffset, part.data.byteLength), 0, part.data.byteLength, part.offset)
    } finally {
      await fh.close()
    }
  }
  const source = model.files.find((f) => f.endsWith('config.json'))
  if (source) await copyFile(source, join(dir, 'config.json'))
  if (model.tokenizerPath) await copyFile(model.tokenizerPath, join(dir, 'tokenizer.json'))
  return path
}
