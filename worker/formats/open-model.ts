import { readdir, readFile, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { FileByteSource } from '../io/byte-source'
import type { ModelFormat, OpenedModel } from './contract'
import { ModelFormatError } from './errors'
import { parseHfConfig } from './hf-config'
import { safetensorsFormat } from './safetensors'
import { ggufFormat } from './gguf'
import { onnxFormat } from './onnx'

/** Every format the engine reads; open() tries them in this order. */
export const MODEL_FORMATS: readonly ModelFormat[] = [safetensorsFormat, ggufFormat, onnxFormat]

/**
 * Opens a model from a path: a Hugging Face folder (config.json + safetensors, single or
 * sharded, + tokenizer.json), a `.safetensors` file, a `*.safetensors.index.json`, a `.gguf`
 * or an `.onnx` file. Reads headers only.
 */
export async function openModel(path: string): Promise<OpenedModel> {
  const abs = resolve(path)
  let info
  try {
    info = await stat(abs)
  } catch {
    throw new ModelFormatError(abs, null, 'no such file or folder')
  }
  if (info.isDirectory()) return openHfFolder(abs)
  const model = await openFile(abs)
  // A bare safetensors file or index inside an HF folder still gets the folder's config.
  if (model.format === 'safetensors') await attachHfSidecars(model, resolve(abs, '..'))
  return model
}

async function openFile(abs: string): Promise<OpenedModel> {
  const src = await FileByteSource.open(abs)
  let head: Uint8Array
  try {
    head = await src.read(0, Math.min(16, src.size))
  } finally {
    await src.close()
  }
  const format = MODEL_FORMATS.find((f) => f.match(abs, head))
  if (!format) {
    throw new ModelFormatError(abs, null, 'unrecognised model file (expected .safetensors, .safetensors.index.json, .gguf or .onnx)')
  }
  return format.open(abs)
}

/** Picks the weights of an HF folder: the index if sharded, else the one .safetensors file. */
async function openHfFolder(dir: string): Promise<OpenedModel> {
  const names = await readdir(dir)
  const indexes = names.filter((n) => n.endsWith('.safetensors.index.json'))
  const singles = names.filter((n) => n.endsWith('.safetensors'))
  let weights: string
  if (indexes.length === 1) weights = indexes[0]!
  else if (indexes.length > 1) {
    weights = indexes.includes('model.safetensors.index.json') ? 'model.safetensors.index.json' : indexes.sort()[0]!
  } else if (singles.length === 1) weights = singles[0]!
  else if (singles.includes('model.safetensors')) weights = 'model.safetensors'
  else if (singles.length > 1) {
    throw new ModelFormatError(dir, null, `${singles.length} .safetensors files but no *.safetensors.index.json to say how they fit together`)
  } else {
    const other = names.find((n) => n.endsWith('.gguf') || n.endsWith('.onnx'))
    if (other) return openFile(join(dir, other))
    throw new ModelFormatError(dir, null, 'folder holds no .safetensors, .gguf or .onnx model')
  }
  const model = await safetensorsFormat.open(join(dir, weights))
  await attachHfSidecars(model, dir)
  return model
}

/** config.json → architecture/config; tokenizer.json → tokenizerPath; both optional. */
async function attachHfSidecars(model: OpenedModel, dir: string): Promise<void> {
  const configPath = join(dir, 'config.json')
  let text: string | null = null
  try {
    text = await readFile(configPath, 'utf8')
  } catch {
    text = null
  }
  if (text !== null) {
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch (err) {
      throw new ModelFormatError(configPath, null, `not valid JSON: ${(err as Error).message}`)
    }
    model.config = parseHfConfig(json, configPath)
    model.architecture = model.config.architecture
    model.files.push(configPath)
  }
  const tokenizerPath = join(dir, 'tokenizer.json')
  try {
    if ((await stat(tokenizerPath)).isFile()) {
      model.tokenizerPath = tokenizerPath
      model.files.push(tokenizerPath)
    }
  } catch {
    /* no tokenizer: fine for inspection */
  }
}
