import { dirname, join } from 'node:path'
import { Tokenizer } from '@huggingface/tokenizers'
import { ModelFormatError } from '../common/errors'
import { FileAccessError, readRegularTextFile } from '../io/regular-file'

/**
 * A model's tokenizer, loaded from its `tokenizer.json` (+ `tokenizer_config.json`) through
 * the maintained @huggingface/tokenizers library — never a hand-written BPE, so ids match
 * Python `tokenizers` exactly.
 */
export interface TextTokenizer {
  readonly path: string
  /** Token ids of `text`; special tokens (BOS …) only when asked. */
  encode(text: string, options?: { addSpecialTokens?: boolean }): number[]
  decode(ids: number[], options?: { skipSpecialTokens?: boolean }): string
}

export async function loadTokenizer(tokenizerJsonPath: string): Promise<TextTokenizer> {
  const parse = async (path: string, required: boolean): Promise<object> => {
    let text: string
    try {
      // Never blocks on a FIFO; tokenizer.json files run to tens of MB, not GBs.
      text = await readRegularTextFile(path, 1 << 30)
    } catch (err) {
      if (!required) return {}
      throw new ModelFormatError(path, null, `cannot read tokenizer: ${err instanceof FileAccessError ? err.problem : (err as Error).message}`)
    }
    try {
      return JSON.parse(text) as object
    } catch (err) {
      throw new ModelFormatError(path, null, `not valid JSON: ${(err as Error).message}`)
    }
  }
  const tokenizerJson = await parse(tokenizerJsonPath, true)
  const config = await parse(join(dirname(tokenizerJsonPath), 'tokenizer_config.json'), false)
  return tokenizerFromJson(tokenizerJsonPath, tokenizerJson, config)
}

/**
 * A tokenizer from a tokenizer.json object (and its tokenizer_config); `path` names where it
 * came from (a tokenizer.json, or a GGUF whose metadata it was built from: gguf-tokenizer.ts).
 */
export function tokenizerFromJson(path: string, tokenizerJson: object, config: object): TextTokenizer {
  let tok: Tokenizer
  try {
    tok = new Tokenizer(tokenizerJson, config)
  } catch (err) {
    throw new ModelFormatError(path, null, `unsupported tokenizer: ${(err as Error).message}`)
  }
  return {
    path,
    encode: (text, options) => tok.encode(text, { add_special_tokens: options?.addSpecialTokens ?? false }).ids,
    decode: (ids, options) => tok.decode(ids, { skip_special_tokens: options?.skipSpecialTokens ?? false }),
  }
}
