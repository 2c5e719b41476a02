import { basename, dirname, join } from 'node:path'
import { ModelFormatError } from '../../common/errors'
import { isRegularFile, readRegularTextFile } from '../../io/regular-file'
import type { OpenedModel } from '../contract'
import { parseHfConfig } from '../hf/config'

/**
 * config.json and tokenizer.json of an ONNX decoder: beside the file, or one folder up when
 * the file sits in `onnx/` (the layout optimum, transformers.js and our export write:
 * `config.json`, `tokenizer.json`, `onnx/model.onnx`). They give the evaluation a tokenizer,
 * end-of-sequence ids and, for caches whose shape the graph leaves symbolic, the KV geometry.
 *
 * The file runs without them, so a config this engine cannot read (another family's keys) is
 * noted in the metadata (`configProblem`) instead of refusing to open an ONNX file that opened
 * before.
 */
export async function attachOnnxSidecars(model: OpenedModel): Promise<void> {
  const file = model.files[0]
  if (!file) return
  const dirs = [dirname(file)]
  if (basename(dirname(file)) === 'onnx') dirs.push(dirname(dirname(file)))
  for (const dir of dirs) {
    const configPath = join(dir, 'config.json')
    if (!(await isRegularFile(configPath))) continue
    try {
      model.config = parseHfConfig(JSON.parse(await readRegularTextFile(configPath, 64 * 1024 * 1024)), configPath)
      model.architecture ??= model.config.architecture
    } catch (err) {
      model.metadata.configProblem = err instanceof ModelFormatError ? err.message : `${configPath}: ${(err as Error).message}`
    }
    // Listed even when unparsed: eos ids are read from it, and it is part of the model's fingerprint.
    model.files.push(configPath)
    break
  }
  if (!model.tokenizerPath) {
    for (const dir of dirs) {
      const tokenizerPath = join(dir, 'tokenizer.json')
      if (await isRegularFile(tokenizerPath)) {
        model.tokenizerPath = tokenizerPath
        break
      }
    }
  }
}
