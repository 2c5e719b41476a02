import { dirname, join } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { FileAccessError, isRegularFile, readRegularTextFile } from '../io/regular-file'
import { hasGgufTokenizer, loadGgufTokenizer, UnsupportedGgufTokenizerError } from '../model/gguf-tokenizer'
import { loadTokenizer, type TextTokenizer } from '../model/tokenizer'
import { InferenceInputError } from './errors'

/** What to evaluate: a text, a text file, or token ids directly (no tokenizer needed). */
export type TextSource = { text: string } | { file: string } | { tokens: number[] }

/**
 * The tokenizer.json for a model: the explicit path, the one next to the weights (HF
 * folders), or a tokenizer.json in the folder of a GGUF file (for a GGUF whose own
 * tokenizer, see openTokenizer, is missing or of a kind not rebuilt).
 */
export async function resolveTokenizerPath(model: OpenedModel, explicit?: string | null): Promise<string> {
  if (explicit) return explicit
  if (model.tokenizerPath) return model.tokenizerPath
  const beside = model.files[0] ? join(dirname(model.files[0]), 'tokenizer.json') : null
  if (beside && (await isRegularFile(beside))) return beside
  throw new InferenceInputError(
    `no tokenizer.json found for ${model.files[0] ?? 'the model'}; give one with --tokenizer (the Hugging Face tokenizer.json of the model's family)`,
  )
}

export async function openTokenizer(model: OpenedModel, explicit?: string | null): Promise<TextTokenizer> {
  // A GGUF carries its tokenizer in metadata; an explicit tokenizer.json still overrides it,
  // and one beside the file stands in for a kind gguf-tokenizer.ts does not rebuild.
  if (!explicit && model.format === 'gguf' && model.files[0] && hasGgufTokenizer(model.metadata)) {
    try {
      return await loadGgufTokenizer(model.files[0])
    } catch (err) {
      if (!(err instanceof UnsupportedGgufTokenizerError)) throw err
      const beside = await resolveTokenizerPath(model).catch(() => null)
      if (!beside) throw err
      return loadTokenizer(beside)
    }
  }
  return loadTokenizer(await resolveTokenizerPath(model, explicit))
}

/** An evaluation text is read whole; WikiText-103's test split is 1.3 MB. */
const MAX_TEXT_BYTES = 1 << 30

/** Token ids of the source, without special tokens (the perplexity protocol). */
export async function tokensOf(source: TextSource, tokenizer: () => Promise<TextTokenizer>): Promise<number[]> {
  if ('tokens' in source) return source.tokens
  let text: string
  if ('file' in source) {
    try {
      text = await readRegularTextFile(source.file, MAX_TEXT_BYTES)
    } catch (err) {
      const problem = err instanceof FileAccessError ? err.problem : (err as Error).message
      throw new InferenceInputError(`cannot read the text file ${source.file}: ${problem}`)
    }
  } else text = source.text
  return (await tokenizer()).encode(text, { addSpecialTokens: false })
}
