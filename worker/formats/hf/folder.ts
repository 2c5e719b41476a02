import { readdir, readFile, stat } from 'node:fs/promises'
import { join } from 'node:path'
import { ModelFormatError } from '../../common/errors'
import type { OpenedModel } from '../contract'
import { formatByFileName } from '../registry'
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
