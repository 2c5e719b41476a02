import { resolve } from 'node:path'
import { ModelFormatError } from '../common/errors'
import { readGgufHeader, type GgufValue } from '../formats/gguf/header'
import { FileByteSource } from '../io/byte-source'
import { tokenizerFromJson, type TextTokenizer } from './tokenizer'

/**
 * The tokenizer a GGUF file carries in its metadata (tokenizer.ggml.*), turned into a
 * Hugging Face tokenizer.json object and loaded by the same library as a real tokenizer.json,
 * so ids match what llama.cpp and Python `tokenizers` produce for the model.
 *
 * Supported: byte-level BPE (`tokenizer.ggml.model` = "gpt2", what convert_hf_to_gguf.py
 * writes for GPT-2, Llama 3, Qwen2 … tokenizers) with the pre-tokenizers below. The pre-
 * tokenizer names, their regexes and the flags that go with them (ignore_merges, add_bos,
 * clean_spaces) are those of llama.cpp's src/llama-vocab.cpp (llama_vocab::impl::load and the
 * llm_tokenizer_bpe constructor); several regexes in one entry are applied one after another,
 * each to the pieces the previous one produced, as llama.cpp's unicode_regex_split does.
 */

const KEY = {
  model: 'tokenizer.ggml.model',
  pre: 'tokenizer.ggml.pre',
  tokens: 'tokenizer.ggml.tokens',
  types: 'tokenizer.ggml.token_type',
  merges: 'tokenizer.ggml.merges',
  bos: 'tokenizer.ggml.bos_token_id',
  eos: 'tokenizer.ggml.eos_token_id',
  unk: 'tokenizer.ggml.unknown_token_id',
  pad: 'tokenizer.ggml.padding_token_id',
  addBos: 'tokenizer.ggml.add_bos_token',
  addEos: 'tokenizer.ggml.add_eos_token',
} as const

/** gguf-py's TokenType (llama_token_type in llama.cpp). */
const TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const

// The split regexes of llama-vocab.cpp (llm_tokenizer_bpe), in the syntax HF tokenizer.json uses.
const GPT2_REGEX = String.raw`'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)`
/** Llama 3's (?i:'s|…) contractions written case by case, as llama.cpp adapted them. */
const LLAMA3_REGEX = String.raw`(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/** Llama 3's with single digits. */
const QWEN2_REGEX = String.raw`(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

interface PreTokenizerSpec {
  regexes: string[]
  /** A pre-token that is itself in the vocabulary is taken whole, merges or not (Llama 3). */
  ignoreMerges?: boolean
  /** BOS is added unless tokenizer.ggml.add_bos_token says otherwise. */
  addBos?: boolean
  /** HF's clean_up_tokenization_spaces on decode (llama.cpp's clean_spaces). */
  cleanSpaces: boolean
}

const GPT2: PreTokenizerSpec = { regexes: [GPT2_REGEX], cleanSpaces: true }
const LLAMA3: PreTokenizerSpec = { regexes: [LLAMA3_REGEX], ignoreMerges: true, addBos: true, cleanSpaces: true }
const QWEN2: PreTokenizerSpec = { regexes: [QWEN2_REGEX], cleanSpaces: false }
const STARCODER: PreTokenizerSpec = { regexes: [String.raw`\p{N}`, GPT2_REGEX], cleanSpaces: true }

/** tokenizer.ggml.pre → how llama.cpp pre-tokenizes; names that only differ in other ways are left out. */
const PRE_TOKENIZERS: Readonly<Record<string, PreTokenizerSpec>> = {
  // llama.cpp's LLAMA_VOCAB_PRE_TYPE_DEFAULT, also used when tokenizer.ggml.pre is missing.
  default: {
    regexes: [String.raw`[\p{P}\$\+<=>\^~\|]+`, GPT2_REGEX, String.raw`\p{N}+`, '[0-9][0-9][0-9]'],
    cleanSpaces: true,
  },
  'gpt-2': GPT2,
  'phi-2': GPT2,
  mpt: GPT2,
  olmo: GPT2,
  llama3: LLAMA3,
  'llama-v3': LLAMA3,
  'llama-bpe': LLAMA3,
  falcon3: LLAMA3,
  pixtral: LLAMA3,
  dbrx: { regexes: [LLAMA3_REGEX], cleanSpaces: true },
  'smaug-bpe': { regexes: [LLAMA3_REGEX], cleanSpaces: true },
  qwen2: QWEN2,
  'deepseek-r1-qwen': QWEN2,
  stablelm2: { regexes: [QWEN2_REGEX], cleanSpaces: true },
  starcoder: STARCODER,
  refact: STARCODER,
  codeshell: STARCODER,
  smollm: { ...STARCODER, cleanSpaces: false },
  falcon: { regexes: ['[\\p{P}\\$\\+<=>\\^~\\|`]+', GPT2_REGEX, '[0-9][0-9][0-9]'], cleanSpaces: true },
}

/** The pre-tokenizer names this build turns into a tokenizer (for messages and tests). */
export const GGUF_PRE_TOKENIZERS: readonly string[] = Object.keys(PRE_TOKENIZERS)

/** Raised for a GGUF tokenizer kind this build does not rebuild (a tokenizer.json can stand in). */
export class UnsupportedGgufTokenizerError extends ModelFormatError {
  constructor(file: string, problem: string) {
    super(file, null, `${problem}; give the model's tokenizer.json with --tokenizer FILE`)
    this.name = 'UnsupportedGgufTokenizerError'
  }
}

/** Whether GGUF metadata (as the reader returns it, long arrays summarised) names a tokenizer. */
export function hasGgufTokenizer(metadata: Record<string, unknown>): boolean {
  return typeof metadata[KEY.model] === 'string'
}

/** A tokenizer.json object and the tokenizer_config it goes with. */
export interface SynthesisedTokenizer {
  tokenizerJson: Record<string, unknown>
  tokenizerConfig: Record<string, unknown>
}

/**
 * The HF tokenizer.json equivalent of a GGUF's tokenizer metadata, which must hold the full
 * arrays (tokens, token_type, merges), not the reader's summaries.
 */
export function ggufTokenizerJson(file: string, meta: Record<string, GgufValue>): SynthesisedTokenizer {
  const fail = (problem: string): never => {
    throw new ModelFormatError(file, null, problem)
  }
  const kind = meta[KEY.model]
  if (kind === undefined) fail(`no ${KEY.model} in the metadata: the file carries no tokenizer; give one with --tokenizer FILE`)
  if (kind !== 'gpt2') {
    const what = kind === 'llama' ? ' (SentencePiece)' : ''
    throw new UnsupportedGgufTokenizerError(file, `${KEY.model} is ${JSON.stringify(kind)}${what}; only byte-level BPE ("gpt2") GGUF tokenizers are rebuilt`)
  }
  const preName = meta[KEY.pre] ?? 'default'
  const pre = typeof preName === 'string' && Object.prototype.hasOwnProperty.call(PRE_TOKENIZERS, preName) ? PRE_TOKENIZERS[preName]! : null
  if (!pre) {
    throw new UnsupportedGgufTokenizerError(file, `${KEY.pre} is ${JSON.stringify(preName)}, a pre-tokenizer this build does not know (known: ${GGUF_PRE_TOKENIZERS.join(', ')})`)
  }

  const tokens = stringArray(file, meta, KEY.tokens)
  const types = meta[KEY.types] === undefined ? null : numberArray(file, meta, KEY.types)
  if (types && types.length !== tokens.length) fail(`${KEY.types} has ${types.length} entries but ${KEY.tokens} has ${tokens.length}`)
  const tokenId = (key: string): number | null => {
    const v = meta[key]
    if (v === undefined) return null
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v >= tokens.length) fail(`${key} is ${JSON.stringify(v)}, not a token id below ${tokens.length}`)
    return v as number
  }
  const flag = (key: string, fallback: boolean): boolean => {
    const v = meta[key]
    if (v === undefined) return fallback
    if (typeof v !== 'boolean') fail(`${key} is ${JSON.stringify(v)}, not a boolean`)
    return v as boolean
  }

  // llama.cpp: token_to_id[text] = i for every i, so a later duplicate wins; empty texts get a name.
  const vocab = new Map<string, number>()
  const texts = tokens.map((t, i) => (t === '' ? `[EMPTY_${i}]` : t))
  texts.forEach((t, i) => vocab.set(t, i))

  const merges = stringArray(file, meta, KEY.merges).map((m, i): [string, string] => {
    // llama.cpp splits at the first space after the first character.
    const at = m.indexOf(' ', 1)
    if (at < 0) fail(`${KEY.merges}[${i}] is ${JSON.stringify(m)}, not two tokens separated by a space`)
    return [m.slice(0, at), m.slice(at + 1)]
  })

  // CONTROL and USER_DEFINED tokens are matched in the raw text before BPE, as llama.cpp and
  // HF added tokens both do; CONTROL ones are the special ones (skipped on decode on request).
  const added: Record<string, unknown>[] = []
  if (types) {
    for (let id = 0; id < tokens.length; id++) {
      const type = types[id]
      if (type !== TOKEN_TYPE.CONTROL && type !== TOKEN_TYPE.USER_DEFINED) continue
      if (tokens[id] === '') continue
      const special = type === TOKEN_TYPE.CONTROL
      added.push({ id, content: tokens[id], single_word: false, lstrip: false, rstrip: false, normalized: false, special })
    }
  }

  const bos = tokenId(KEY.bos)
  const eos = tokenId(KEY.eos)
  const unk = tokenId(KEY.unk)
  const pad = tokenId(KEY.pad)
  const addBos = flag(KEY.addBos, pre.addBos ?? false)
  const addEos = flag(KEY.addEos, false)
  if (addBos && bos === null) fail(`${KEY.addBos} is true (or implied by ${KEY.pre}), but ${KEY.bos} is not set`)
  if (addEos && eos === null) fail(`${KEY.addEos} is true, but ${KEY.eos} is not set`)

  const tokenizerJson: Record<string, unknown> = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        ...pre.regexes.map((regex) => ({ type: 'Split', pattern: { Regex: regex }, behavior: 'Isolated', invert: false })),
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: addBos || addEos ? templateProcessing(texts, addBos ? bos : null, addEos ? eos : null) : null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: unk === null ? null : texts[unk],
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: pre.ignoreMerges ?? false,
      vocab: Object.fromEntries(vocab),
      merges,
    },
  }
  const tokenizerConfig: Record<string, unknown> = {
    clean_up_tokenization_spaces: pre.cleanSpaces,
    add_bos_token: addBos,
    add_eos_token: addEos,
    bos_token: bos === null ? null : texts[bos],
    eos_token: eos === null ? null : texts[eos],
    unk_token: unk === null ? null : texts[unk],
    pad_token: pad === null ? null : texts[pad],
  }
  return { tokenizerJson, tokenizerConfig }
}

/** BOS/EOS around the text, as HF's Llama 3 tokenizer.json writes it. */
function templateProcessing(texts: string[], bos: number | null, eos: number | null): Record<string, unknown> {
  const special = (id: number | null) => (id === null ? [] : [{ SpecialToken: { id: texts[id], type_id: 0 } }])
  const specialTokens: Record<string, unknown> = {}
  for (const id of [bos, eos]) if (id !== null) specialTokens[texts[id]!] = { id: texts[id], ids: [id], tokens: [texts[id]] }
  return {
    type: 'TemplateProcessing',
    single: [...special(bos), { Sequence: { id: 'A', type_id: 0 } }, ...special(eos)],
    pair: [...special(bos), { Sequence: { id: 'A', type_id: 0 } }, ...special(eos), ...special(bos), { Sequence: { id: 'B', type_id: 1 } }, ...special(eos)],
    special_tokens: specialTokens,
  }
}

function stringArray(file: string, meta: Record<string, GgufValue>, key: string): string[] {
  const v = meta[key]
  if (v === undefined) throw new ModelFormatError(file, null, `no ${key} in the metadata (needed to rebuild the tokenizer)`)
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'string')) {
    throw new ModelFormatError(file, null, `${key} must be an array of strings, got ${describe(v)}`)
  }
  return v as string[]
}

function numberArray(file: string, meta: Record<string, GgufValue>, key: string): number[] {
  const v = meta[key]
  if (!Array.isArray(v) || v.some((x) => typeof x !== 'number')) {
    throw new ModelFormatError(file, null, `${key} must be an array of integers, got ${describe(v)}`)
  }
  return v as number[]
}

function describe(v: GgufValue | undefined): string {
  if (Array.isArray(v)) return `an array with items of type ${[...new Set(v.map((x) => (Array.isArray(x) ? 'array' : typeof x)))].join(' and ')}`
  if (v && typeof v === 'object') return `a summarised array of ${v.itemType}`
  return JSON.stringify(v)
}

/** Reads the tokenizer metadata of a GGUF file (whole arrays) and loads it as a tokenizer. */
export async function loadGgufTokenizer(path: string): Promise<TextTokenizer> {
  const file = resolve(path)
  const src = await FileByteSource.open(file)
  let meta: Record<string, GgufValue>
  try {
    meta = (await readGgufHeader(src, file, { keepArrays: (key) => key.startsWith('tokenizer.ggml.') })).metadata
  } finally {
    await src.close()
  }
  const { tokenizerJson, tokenizerConfig } = ggufTokenizerJson(file, meta)
  return tokenizerFromJson(file, tokenizerJson, tokenizerConfig)
}
