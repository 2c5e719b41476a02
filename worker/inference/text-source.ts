import { readFile, stat } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { loadTokenizer, type TextTokenizer } from '../model/tokenizer'
import { InferenceInputError } from './errors'

/** What to evaluate: a text, a text file, or token ids directly (no tokenizer needed). */
export type TextSource = { text: string } | { file: string } | { tokens: number[] }

/**
 * The tokenizer.json for a model: the explicit path, the one next to the weights (HF
 * folders), or a tokenizer.json in the folder of a GGUF file (GGUF keeps its vocabulary in
 * metadata, which the engine does not turn into a tokenizer).
 */
export async function resolveTokenizerPath(model: OpenedModel, explicit?: string | null): Promise<string> {
  if (explicit) return explicit
  if (model.tokenizerPath) return model.tokenizerPath
  const beside = model.files[0] ? join(dirname(model.files[0]), 'tokenizer.json') : null
  if (beside) {
    try {
      if ((await stat(beside)).isFile()) return beside
    } catch {
      /* not there */
    }
  }
  throw new InferenceInputError(
    `no tokenizer.json found for ${model.files[0] ?? 'the model'}; give one with --tokenizer (the Hugging Face tokenizer.json of the model's family)`,
  )
}

export async function openTokenizer(model: OpenedModel, explicit?: string | null): Promise<TextTokenizer> {
  return loadTokenizer(await resolveTokenizerPath(model, explicit))
}

/** Token ids of the source, without special tokens (the perplexity protocol). */
export async function tokensOf(source: TextSource, tokenizer: () => Promise<TextTokenizer>): Promise<number[]> {
  if ('tokens' in source) return source.tokens
  let text: string
  if ('file' in source) {
    try {
      text = await readFile(source.file, 'utf8')
    } catch (err) {
      throw new InferenceInputError(`cannot read the text file ${source.file}: ${(err as Error).message}`)
    }
  } else text = source.text
  return (await tokenizer()).encode(text, { addSpecialTokens: false })
}
