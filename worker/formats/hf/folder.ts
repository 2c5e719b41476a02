import { readdir, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { ModelFormatError } from '../../common/errors'
import { FileAccessError, isRegularFile, readRegularTextFile } from '../../io/regular-file'
import type { OpenedModel } from '../contract'
import { formatByFileName } from '../registry'
import { attachPackQuantized } from './compressed-tensors'
import { parseHfConfig } from './config'

/**
 * A Hugging Face model folder: config.json + safetensors weights (one file, or shards with a
 * `*.safetensors.index.json`) + tokenizer.json. Not a format of its own: this picks the
 * weights file (`weights`), or, in a folder without safetensors, the model file of another
 * format it holds (`other`, null when there is none).
 */
export async function resolveHfFolder(dir: string): Promise<{ weights: string } | { other: string | null }> {
  const names = await readdir(dir)
  const indexes = names.filter((n) => n.endsWith('.safetensors.index.json'))
  const singles = names.filter((n) => n.endsWith('.safetensors'))
  if (indexes.length === 1) return { weights: join(dir, indexes[0]!) }
  if (indexes.length > 1) {
    return { weights: join(dir, indexes.includes('model.safetensors.index.json') ? 'model.safetensors.index.json' : indexes.sort()[0]!) }
  }
  if (singles.length === 1) return { weights: join(dir, singles[0]!) }
  if (singles.includes('model.safetensors')) return { weights: join(dir, 'model.safetensors') }
  if (singles.length > 1) {
    throw new ModelFormatError(dir, null, `${singles.length} .safetensors files but no *.safetensors.index.json to say how they fit together`)
  }
  const other = names.sort().find((n) => formatByFileName(n) !== null)
  return { other: other ? join(dir, other) : null }
}

/** config.json → architecture/config; tokenizer.json → tokenizerPath; both optional. */
export async function attachHfSidecars(model: OpenedModel, dir: string): Promise<void> {
  const configPath = join(dir, 'config.json')
  const text = await readSidecarJson(configPath)
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
    // compressed-tensors pack-quantized weights become virtual plain weights.
    await attachPackQuantized(model, json, configPath)
  }
  const tokenizerPath = join(dir, 'tokenizer.json')
  // No tokenizer (or something other than a file under its name) is fine for inspection.
  if (await isRegularFile(tokenizerPath)) {
    model.tokenizerPath = tokenizerPath
    model.files.push(tokenizerPath)
  }
}

/** config.json and its kind are a few kB; a larger file under that name is not one. */
export const MAX_SIDECAR_JSON_BYTES = 64 * 1024 * 1024

/** The text of an optional JSON sidecar, null when absent; a FIFO, folder … under its name is an error. */
async function readSidecarJson(path: string): Promise<string | null> {
  try {
    await stat(path)
  } catch {
    return null
  }
  try {
    return await readRegularTextFile(path, MAX_SIDECAR_JSON_BYTES)
  } catch (err) {
    if (err instanceof FileAccessError) throw new ModelFormatError(path, null, err.problem)
    throw err
  }
}
