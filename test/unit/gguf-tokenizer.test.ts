/**
 * A GGUF's own tokenizer (tokenizer.ggml.* metadata) rebuilt as a HF tokenizer: the default
 * model converted to GGUF the way convert_hf_to_gguf.py does tokenizes exactly like its
 * tokenizer.json; the gpt-2 / llama-bpe / qwen2 pre-tokenizers match tokenizer.json files
 * built with the split regexes Hugging Face publishes for those families; llama.cpp's
 * "default" cascade gives the pieces derived by hand; unsupported kinds fail naming the file
 * and key; and eval of the GGUF needs no --tokenizer and gives the safetensors perplexity.
 */
import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { Tokenizer } from '@huggingface/tokenizers'
import { openModel } from '../../worker/formats/open-model'
import { GGUF_PRE_TOKENIZERS, loadGgufTokenizer } from '../../worker/model/gguf-tokenizer'
import { loadTokenizer, type TextTokenizer } from '../../worker/model/tokenizer'
import { openTokenizer } from '../../worker/inference/text-source'
import { evalPerplexity } from '../../worker/inference/inference-service'
import { EngineService } from '../../worker/api/engine-service'
import { EvalRunsFile } from '../../main/runs-store'
import { bpeTokenizerKv, convertHfLlamaToGguf } from '../helpers/hf-to-gguf'
import { arr, str, writeGguf, type GgufKv } from '../helpers/gguf-writer'

const DEFAULT = resolve('resources/models/default')
const HELDOUT = resolve('resources/eval/heldout.txt')

/**
 * The Split patterns of the published tokenizer.json files (meta-llama/Meta-Llama-3-8B,
 * Qwen/Qwen2-7B), with their case-insensitive contractions, as HF ships them.
 */
const HF_LLAMA3_PATTERN = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
const HF_QWEN2_PATTERN = String.raw`(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`

/** Strings on which the three regexes disagree: digit runs, contractions, letters, spaces, newlines. */
const PROBES = [
  'In 1984, 12345678 people paid $3.14159 each; 7 of 10 agreed.',
  "I'm sure you'RE right, but they'LL say it's what we'd DONE and I've",
  'naïve café Привет мир 你好世界 ﬁne ǅemal',
  'a  b   c\t\td \u00a0e      f',
  'line one\n\nline two\r\n\r\n  indented\n\t\ttabbed  \n',
  '  leading and trailing  ',
  '...!!!??? —– «quotes» (paren) [br] {x}',
  '42abc abc42 4 2 a1b2c3 000 0001',
]

interface TokJson {
  pre_tokenizer: unknown
  model: { ignore_merges?: boolean }
}

describe('GGUF tokenizer from tokenizer.ggml.* metadata', () => {
  let dir: string
  let gguf: string
  let tokJson: TokJson & Parameters<typeof bpeTokenizerKv>[0]
  let tokConfig: Record<string, unknown>
  let reference: TextTokenizer
  let heldout: string

  /** A tokenizer-only GGUF (no tensors) holding the default model's vocabulary. */
  const tokenizerGguf = async (name: string, pre: string | null, config: Record<string, unknown> = tokConfig, extra: Array<[string, GgufKv]> = []) =>
    writeGguf(dir, name, { kv: [...bpeTokenizerKv(tokJson, config, 8192, pre), ...extra] })

  /** The default tokenizer.json with another pre-tokenizer (and ignore_merges). */
  const referenceWith = (preTokenizer: unknown, ignoreMerges = false): Tokenizer => {
    const j = structuredClone(tokJson)
    j.pre_tokenizer = preTokenizer
    j.model.ignore_merges = ignoreMerges
    return new Tokenizer(j, tokConfig)
  }
  const splitThenBytes = (pattern: string) => ({
    type: 'Sequence',
    pretokenizers: [
      { type: 'Split', pattern: { Regex: pattern }, behavior: 'Isolated', invert: false },
      { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
    ],
  })
  const ids = (t: Tokenizer, s: string) => t.encode(s, { add_special_tokens: false }).ids

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'qs-gguf-tok-'))
    gguf = join(dir, 'default-bf16.gguf')
    tokJson = JSON.parse(await readFile(join(DEFAULT, 'tokenizer.json'), 'utf8')) as typeof tokJson
    tokConfig = JSON.parse(await readFile(join(DEFAULT, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>
    // This tokenizer.json pre-tokenizes with ByteLevel(use_regex) = GPT-2's regex, which
    // convert_hf_to_gguf.py records as "gpt-2".
    expect(tokJson.pre_tokenizer).toMatchObject({ type: 'ByteLevel', use_regex: true })
    await convertHfLlamaToGguf(DEFAULT, gguf, { pre: 'gpt-2' })
    reference = await loadTokenizer(join(DEFAULT, 'tokenizer.json'))
    heldout = await readFile(HELDOUT, 'utf8')
  })

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true })
  })

  it('the converted default model tokenizes the whole held-out text exactly as its tokenizer.json', async () => {
    const tok = await loadGgufTokenizer(gguf)
    expect(tok.path).toBe(gguf)
    const want = reference.encode(heldout)
    const got = tok.encode(heldout)
    expect(want.length).toBeGreaterThan(50_000)
    const firstDiff = got.findIndex((id, i) => id !== want[i])
    expect({ firstDiff, length: got.length }).toEqual({ firstDiff: -1, length: want.length })
    for (const p of PROBES) expect(tok.encode(p)).toEqual(reference.encode(p))
    // <|endoftext|> (CONTROL) is matched in the text and is special on decode.
    const withEos = tok.encode('end.<|endoftext|>Next')
    expect(withEos).toEqual(reference.encode('end.<|endoftext|>Next'))
    expect(withEos).toContain(0)
    expect(tok.decode(withEos, { skipSpecialTokens: true })).toBe('end.Next')
    expect(tok.decode(tok.encode('Hello wörld\n  x'))).toBe('Hello wörld\n  x')
    // add_bos_token false in tokenizer_config.json → false in the GGUF → no BOS.
    expect(tok.encode('Hello', { addSpecialTokens: true })).toEqual(reference.encode('Hello'))
  })

  it('openTokenizer picks the GGUF tokenizer without --tokenizer; --tokenizer still overrides', async () => {
    const model = await openModel(gguf)
    try {
      const own = await openTokenizer(model)
      expect(own.path).toBe(gguf)
      expect(own.encode(PROBES[0]!)).toEqual(reference.encode(PROBES[0]!))
      const explicit = await openTokenizer(model, join(DEFAULT, 'tokenizer.json'))
      expect(explicit.path).toBe(join(DEFAULT, 'tokenizer.json'))
    } finally {
      await model.close()
    }
  })

  it('gpt-2, llama-bpe and qwen2 pre-tokenize like tokenizer.json files with the published regexes', async () => {
    const refs = {
      'gpt-2': referenceWith({ type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true }),
      'llama-bpe': referenceWith(splitThenBytes(HF_LLAMA3_PATTERN), true),
      qwen2: referenceWith(splitThenBytes(HF_QWEN2_PATTERN)),
    }
    const sample = heldout.slice(0, 60_000)
    for (const [pre, ref] of Object.entries(refs)) {
      const tok = await loadGgufTokenizer(await tokenizerGguf(`${pre}.gguf`, pre))
      for (const p of PROBES) expect(tok.encode(p), `${pre}: ${JSON.stringify(p)}`).toEqual(ids(ref, p))
      expect(tok.encode(sample), pre).toEqual(ids(ref, sample))
    }
    // With this small vocabulary only digit runs and newlines change the ids: see the next test.
    const same = (a: Tokenizer, b: Tokenizer, p: string) => JSON.stringify(ids(a, p)) === JSON.stringify(ids(b, p))
    expect(same(refs['gpt-2'], refs['llama-bpe'], PROBES[0]!) || same(refs['llama-bpe'], refs.qwen2, PROBES[0]!)).toBe(false)
    expect(same(refs['gpt-2'], refs['llama-bpe'], PROBES[4]!)).toBe(false)
  })

  it('the split regexes differ where they should (a vocabulary whose merges cross piece boundaries)', async () => {
    // Merges that build each word whole: a word becomes one token only when a pre-tokenizer
    // leaves it in one piece, so the ids show where each regex splits.
    const words = ["'RE", "'LL", "'S", '«Привет', 'Привет', '$hello', 'hello', ' 12345', '12345', '123', ' 123', '  \n\n', '\n\n', ' \n', '  ', ' 1', '1']
    const { vocab, merges } = wordBpe(words)
    const synthJson = (preTokenizer: unknown, ignoreMerges = false) => ({
      version: '1.0',
      truncation: null,
      padding: null,
      added_tokens: [{ id: vocab.length - 1, content: '<|endoftext|>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true }],
      normalizer: null,
      pre_tokenizer: preTokenizer,
      post_processor: null,
      decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
      model: { type: 'BPE', dropout: null, unk_token: null, fuse_unk: false, byte_fallback: false, ignore_merges: ignoreMerges, vocab: Object.fromEntries(vocab.map((t, i) => [t, i])), merges },
    })
    const refs = {
      'gpt-2': new Tokenizer(synthJson({ type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true }), {}),
      'llama-bpe': new Tokenizer(synthJson(splitThenBytes(HF_LLAMA3_PATTERN), true), {}),
      qwen2: new Tokenizer(synthJson(splitThenBytes(HF_QWEN2_PATTERN)), {}),
    }
    const probes = {
      contractions: "They'RE here, I'LL go; it'S fine",
      unicodeLetters: '«Привет» and $hello world',
      digits: 'Call 12345 or 1234567 now',
      whitespace: 'end  \n\n  start\n\nnext \n x   y',
    }
    const differ = (a: Tokenizer, b: Tokenizer, p: string) => JSON.stringify(ids(a, p)) !== JSON.stringify(ids(b, p))
    expect(differ(refs['gpt-2'], refs['llama-bpe'], probes.contractions)).toBe(true)
    expect(differ(refs['gpt-2'], refs['llama-bpe'], probes.unicodeLetters)).toBe(true)
    expect(differ(refs['gpt-2'], refs['llama-bpe'], probes.whitespace)).toBe(true)
    expect(differ(refs['gpt-2'], refs['llama-bpe'], probes.digits)).toBe(true)
    expect(differ(refs['llama-bpe'], refs.qwen2, probes.digits)).toBe(true)
    expect(differ(refs['gpt-2'], refs.qwen2, probes.digits)).toBe(true)

    const kv = (pre: string): Array<[string, GgufKv]> => [
      ['tokenizer.ggml.model', str('gpt2')],
      ['tokenizer.ggml.pre', str(pre)],
      ['tokenizer.ggml.tokens', arr('STRING', vocab)],
      ['tokenizer.ggml.token_type', arr('INT32', vocab.map((_, i) => (i === vocab.length - 1 ? 3 : 1)))],
      ['tokenizer.ggml.merges', arr('STRING', merges.map((m) => m.join(' ')))],
      ['tokenizer.ggml.add_bos_token', { type: 'BOOL', value: false }],
    ]
    for (const [pre, ref] of Object.entries(refs)) {
      const tok = await loadGgufTokenizer(await writeGguf(dir, `synth-${pre}.gguf`, { kv: kv(pre) }))
      for (const p of [...Object.values(probes), ...PROBES]) expect(tok.encode(p), `${pre}: ${JSON.stringify(p)}`).toEqual(ids(ref, p))
    }
  })

  it("'default' (and a missing tokenizer.ggml.pre) cascades llama.cpp's four regexes", async () => {
    const gpt2 = referenceWith({ type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true })
    // Punctuation runs first, then GPT-2's regex, then digit runs, then groups of three digits;
    // each piece below is a single GPT-2 pre-token, so its ids are GPT-2's ids of the piece.
    const text = "Hi, you're 12345 a+b"
    const pieces = ['Hi', ',', ' you', "'", 're', ' ', '123', '45', ' a', '+', 'b']
    const want = pieces.flatMap((p) => ids(gpt2, p))
    expect(want).not.toEqual(ids(gpt2, text))
    for (const pre of ['default', null]) {
      const tok = await loadGgufTokenizer(await tokenizerGguf(`default-${pre}.gguf`, pre))
      expect(tok.encode(text), String(pre)).toEqual(want)
    }
  })

  it('every pre-tokenizer name it knows compiles and round-trips text', async () => {
    const text = 'Hello world 12345, naïve «Привет»\n\n\tx+y=z $5 I\'M'
    expect(GGUF_PRE_TOKENIZERS).toEqual(expect.arrayContaining(['gpt-2', 'llama-bpe', 'llama3', 'qwen2', 'default']))
    for (const pre of GGUF_PRE_TOKENIZERS) {
      const tok = await loadGgufTokenizer(await tokenizerGguf(`known-${pre}.gguf`, pre, { ...tokConfig, add_bos_token: false }))
      expect(tok.decode(tok.encode(text)), pre).toBe(text)
    }
  })

  it('adds BOS as llama-bpe implies and tokenizer.ggml.add_bos_token overrides', async () => {
    const noFlag = { ...tokConfig, add_bos_token: undefined }
    const implied = await loadGgufTokenizer(await tokenizerGguf('bos-implied.gguf', 'llama-bpe', noFlag))
    const plain = implied.encode('Hello there')
    expect(implied.encode('Hello there', { addSpecialTokens: true })).toEqual([0, ...plain])
    const off = await loadGgufTokenizer(await tokenizerGguf('bos-off.gguf', 'llama-bpe', { ...tokConfig, add_bos_token: false }))
    expect(off.encode('Hello there', { addSpecialTokens: true })).toEqual(plain)
    const gpt2On = await loadGgufTokenizer(await tokenizerGguf('bos-on.gguf', 'gpt-2', { ...tokConfig, add_bos_token: true }))
    expect(gpt2On.encode('Hello there', { addSpecialTokens: true })[0]).toBe(0)
  })

  it('an unsupported model or pre-tokenizer fails naming the file and the key, suggesting --tokenizer', async () => {
    const spm = await writeGguf(dir, 'spm.gguf', { kv: [['tokenizer.ggml.model', str('llama')]] })
    await expect(loadGgufTokenizer(spm)).rejects.toThrow(new RegExp(`^${escape(spm)}: tokenizer\\.ggml\\.model is "llama" \\(SentencePiece\\).*--tokenizer`))
    const unknownPre = await tokenizerGguf('mystery.gguf', 'mystery-pre')
    await expect(loadGgufTokenizer(unknownPre)).rejects.toThrow(new RegExp(`^${escape(unknownPre)}: tokenizer\\.ggml\\.pre is "mystery-pre".*--tokenizer`))
    const noMerges = await writeGguf(dir, 'no-merges.gguf', {
      kv: bpeTokenizerKv(tokJson, tokConfig, 8192, 'gpt-2').filter(([k]) => k !== 'tokenizer.ggml.merges'),
    })
    await expect(loadGgufTokenizer(noMerges)).rejects.toThrow(/no-merges\.gguf: no tokenizer\.ggml\.merges/)
    // openTokenizer: the SPM file with nothing beside it gives that error; --tokenizer works.
    const model = await openModel(spm)
    try {
      await expect(openTokenizer(model)).rejects.toThrow(/tokenizer\.ggml\.model is "llama"/)
      expect((await openTokenizer(model, join(DEFAULT, 'tokenizer.json'))).encode('Hi')).toEqual(reference.encode('Hi'))
    } finally {
      await model.close()
    }
  })

  it('eval of the GGUF (CLI engine and app engine) without --tokenizer gives the safetensors perplexity', async () => {
    const opts = { maxWindows: 4, backend: 'wasm' as const, threads: 2 }
    const base = await evalPerplexity(DEFAULT, { file: HELDOUT }, opts)
    const fromGguf = await evalPerplexity(gguf, { file: HELDOUT }, opts)
    expect(fromGguf.windows).toBe(4)
    expect(fromGguf.textTokens).toBe(base.textTokens)
    expect(fromGguf.tokens).toBe(base.tokens)
    expect(Math.abs(fromGguf.ppl - base.ppl) / base.ppl).toBeLessThan(1e-4)

    const engine = new EngineService({ statsThreads: 1, inferenceThreads: 2, runs: new EvalRunsFile(join(dir, 'runs.json')), variants: () => [] })
    try {
      const { modelId } = await engine.openModel({ path: gguf })
      const run = await engine.evaluate({ jobId: 'gguf-1', modelId, text: { kind: 'heldout' }, ctx: base.ctx, maxWindows: 4, backend: 'wasm' })
      expect(Math.abs(run.ppl - base.ppl) / base.ppl).toBeLessThan(1e-4)
    } finally {
      await engine.close()
    }
  }, 120_000)
})

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
}

/** GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest map to U+0100…. */
const BYTE_CHARS: string[] = (() => {
  const printable = (b: number) => (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)
  let next = 256
  return Array.from({ length: 256 }, (_, b) => String.fromCharCode(printable(b) ? b : next++))
})()

/** A byte-level BPE: the 256 byte tokens, then left-to-right merges building each word, then <|endoftext|>. */
function wordBpe(words: string[]): { vocab: string[]; merges: [string, string][] } {
  const vocab = [...BYTE_CHARS]
  const known = new Set(vocab)
  const merges: [string, string][] = []
  for (const w of words) {
    const chars = [...new TextEncoder().encode(w)].map((b) => BYTE_CHARS[b]!)
    let cur = chars[0]!
    for (const c of chars.slice(1)) {
      if (!known.has(cur + c)) {
        merges.push([cur, c])
        vocab.push(cur + c)
        known.add(cur + c)
      }
      cur += c
    }
  }
  vocab.push('<|endoftext|>')
  return { vocab, merges }
}
