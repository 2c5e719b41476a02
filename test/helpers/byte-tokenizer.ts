import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'

/**
 * A byte-level BPE tokenizer.json without merges: token id b is byte b (GPT-2's byte → unicode
 * alphabet), 256 tokens in all, so a tiny test model with vocab 256 has a real tokenizer and
 * a text's ids are simply its UTF-8 bytes.
 */
export function byteLevelAlphabet(): string[] {
  const printable: number[] = []
  for (let b = 33; b <= 126; b++) printable.push(b)
  for (let b = 161; b <= 172; b++) printable.push(b)
  for (let b = 174; b <= 255; b++) printable.push(b)
  const chars: string[] = new Array(256)
  let extra = 0
  for (let b = 0; b < 256; b++) chars[b] = printable.includes(b) ? String.fromCharCode(b) : String.fromCharCode(256 + extra++)
  return chars
}

export async function writeByteTokenizer(dir: string): Promise<string> {
  const vocab: Record<string, number> = {}
  byteLevelAlphabet().forEach((c, i) => (vocab[c] = i))
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: false, byte_fallback: false, vocab, merges: [] },
  }
  const path = join(dir, 'tokenizer.json')
  await writeFile(path, JSON.stringify(json))
  return path
}
