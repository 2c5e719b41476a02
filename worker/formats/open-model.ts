import { stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { ModelFormatError } from '../common/errors'
import { FileByteSource } from '../io/byte-source'
import { isRegularFile } from '../io/regular-file'
import type { OpenedModel } from './contract'
import { attachHfSidecars, resolveHfFolder } from './hf/folder'
import { attachOnnxSidecars } from './onnx/sidecars'
import { describeModelFiles, formatByContent, formatByFileName } from './registry'

/**
 * Opens a model from a path: a Hugging Face folder (config.json + safetensors, single or
 * sharded, + tokenizer.json), or a file of any format in the registry. Reads headers only.
 */
export async function openModel(path: string): Promise<OpenedModel> {
  const abs = resolve(path)
  let info
  try {
    info = await stat(abs)
  } catch {
    throw new ModelFormatError(abs, null, 'no such file or folder')
  }
  if (info.isDirectory()) {
    const found = await resolveHfFolder(abs)
    if ('weights' in found) return openFile(found.weights)
    if (found.other) return openFile(found.other)
    // optimum / transformers.js layout: config.json and tokenizer.json here, the graph in onnx/.
    const onnx = join(abs, 'onnx', 'model.onnx')
    if (await isRegularFile(onnx)) return openFile(onnx)
    throw new ModelFormatError(abs, null, `folder holds no model file (${describeModelFiles()})`)
  }
  return openFile(abs)
}

async function openFile(abs: string): Promise<OpenedModel> {
  // A known ending decides (so a corrupt .gguf gets the GGUF reader's error); bytes decide otherwise.
  let format = formatByFileName(abs)
  if (!format) {
    const src = await FileByteSource.open(abs)
    try {
      format = formatByContent(await src.read(0, Math.min(16, src.size)))
    } finally {
      await src.close()
    }
  }
  if (!format) throw new ModelFormatError(abs, null, `unrecognised model file (expected ${describeModelFiles()})`)
  const model = await format.open(abs)
  // A safetensors file or index inside an HF folder gets the folder's config and tokenizer.
  if (model.format === 'safetensors') await attachHfSidecars(model, resolve(abs, '..'))
  // An ONNX decoder gets config.json / tokenizer.json beside it or one folder up (onnx/model.onnx).
  if (model.format === 'onnx') await attachOnnxSidecars(model)
  return model
}
