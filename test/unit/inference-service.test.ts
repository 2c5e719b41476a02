import { describe, it, expect, beforeAll, afterAll } from 'vitest'
import { execFile } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import { promisify } from 'node:util'
import { ModelFormatError } from '../../worker/common/errors'
import { availableBackends, captureActivations, evalPerplexity, generate } from '../../worker/inference/inference-service'
import type { InferenceProgress } from '../../worker/inference/inference-protocol'
import { referenceForward, referencePerplexity } from '../helpers/reference-forward'
import { writeByteTokenizer } from '../helpers/byte-tokenizer'
import { writeTinyDecoder, type TinyDecoder } from '../helpers/tiny-decoder'

const run = promisify(execFile)
let root: string
let tiny: TinyDecoder
let textFile: string
const TEXT = 'The quick brown fox jumps over the lazy dog. '.repeat(4) // 180 bytes = 180 tokens

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'qs-inference-service-'))
  tiny = await writeTinyDecoder(join(root, 'model'), { seed: 51, vocab: 256, hidden: 32, layers: 2 })
  await writeByteTokenizer(tiny.dir)
  textFile = join(root, 'text.txt')
  await writeFile(textFile, TEXT)
})
afterAll(async () => {
  await rm(root, { recursive: true, force: true })
})

const ids = [...Buffer.from(TEXT)]

describe('inference service (worker thread)', () => {
  it('evalPerplexity on a text file: tokenizer, windows, progress, plain-JSON result', async () => {
    const progress: InferenceProgress[] = []
    const res = await evalPerplexity(tiny.dir, { file: textFile }, { ctx: 64, threads: 2 }, { onProgress: (p) => progress.push(p) })
    expect(res.windows).toBe(2)
    expect(res.textTokens).toBe(180)
    const ref = referencePerplexity(tiny.ref, tiny.values, ids, 64)
    expect(Math.abs(res.ppl / ref.ppl - 1)).toBeLessThan(1e-5)
    expect(JSON.parse(JSON.stringify(res))).toEqual(res)
    expect(progress.at(-1)).toMatchObject({ stage: 'evaluating', done: 2, total: 2 })
  })

  it('a text shorter than one window explains itself across the thread boundary', async () => {
    await expect(evalPerplexity(tiny.dir, { text: 'short' }, { ctx: 64 })).rejects.toMatchObject({
      name: 'InferenceInputError',
      message: 'the text has 5 tokens, fewer than one window of ctx = 64 tokens; use a longer text or a smaller context length',
    })
  })

  it('a broken model comes back as a ModelFormatError', async () => {
    const err = await evalPerplexity(join(root, 'nope'), { text: TEXT }).catch((e: unknown) => e)
    expect(err).toBeInstanceOf(ModelFormatError)
    expect((err as ModelFormatError).problem).toBe('no such file or folder')
  })

  it('cancels through the AbortSignal', async () => {
    const controller = new AbortController()
    const started = performance.now()
    const longText = { tokens: Array.from({ length: 64 * 200 }, (_, i) => (i * 31) % 256) }
    const job = evalPerplexity(tiny.dir, longText, { ctx: 64, threads: 1 }, {
      signal: controller.signal,
      onProgress: (p) => {
        if (p.stage === 'evaluating') controller.abort()
      },
    })
    const err = await job.catch((e: Error) => e)
    expect(err).toMatchObject({ name: 'AbortError' })
    // The worker stopped at its next window and said so (the service's fallback, terminating a
    // worker that does not answer, would say just 'cancelled').
    expect((err as Error).message).not.toBe('cancelled')
    expect(performance.now() - started).toBeLessThan(20_000)
  })

  it('generates side by side: the model and a variant from an overrides module, same prompt', async () => {
    const tokens: InferenceProgress[] = []
    const res = await generate(
      tiny.dir,
      'The quick',
      {
        maxTokens: 6,
        threads: 2,
        stopTokens: [],
        variants: [
          { label: 'base' },
          {
            label: 'scaled lm_head',
            overridesModule: { module: resolve('test/helpers/scale-overrides.ts'), options: { tensor: 'lm_head.weight', factor: -1 } },
          },
        ],
      },
      { onProgress: (p) => p.stage === 'token' && tokens.push(p) },
    )
    expect(res.promptIds).toEqual([...Buffer.from('The quick')])
    expect(res.variants.map((v) => v.label)).toEqual(['base', 'scaled lm_head'])
    // Greedy on the float64 reference: the base takes the argmax, the variant (lm_head × −1) the argmin.
    const seqMax = [...res.promptIds]
    const seqMin = [...res.promptIds]
    for (let i = 0; i < 6; i++) {
      const a = referenceForward(tiny.ref, tiny.values, seqMax).logits.at(-1)!
      const b = referenceForward(tiny.ref, tiny.values, seqMin).logits.at(-1)!
      seqMax.push(a.indexOf(Math.max(...a)))
      seqMin.push(b.indexOf(Math.min(...b)))
    }
    expect(res.variants[0]!.ids).toEqual(seqMax.slice(9))
    expect(res.variants[1]!.ids).toEqual(seqMin.slice(9))
    expect(res.variants[0]!.text).toBe(Buffer.from(res.variants[0]!.ids).toString('utf8'))
    expect(tokens.filter((t) => t.stage === 'token' && t.variant === 1)).toHaveLength(6)
  })

  it('captures activation statistics with Gram matrices through the worker', async () => {
    const res = await captureActivations(tiny.dir, { tokens: ids.slice(0, 64) }, { ctx: 64, gram: true, sites: ['o_in'], threads: 2 })
    expect(res.points.map((p) => p.id)).toEqual(['L0.o_in', 'L1.o_in'])
    const g = res.grams!['L1.o_in']!
    expect(g).toBeInstanceOf(Float64Array)
    expect(g.length).toBe(32 * 32)
    // Σx² per channel is the Gram diagonal.
    const p = res.points[1]!
    for (let c = 0; c < 32; c++) expect(g[c * 32 + c]! / 64).toBeCloseTo(p.stats.meanSq[c]!, 4)
  })
})

describe('backends', () => {
  it('reports WASM, and onnxruntime-node where it loads (it does on this project\'s machines)', async () => {
    const b = await availableBackends()
    expect(b.wasm.available).toBe(true)
    expect(b.native).toEqual({ available: true })
  })
})

describe('CLI', () => {
  it('eval --json prints exactly one JSON document with the contract fields', async () => {
    const { stdout } = await run('npx', ['tsx', 'worker/cli/main.ts', 'eval', tiny.dir, '--text', textFile, '--ctx', '32', '--max-windows', '3', '--kld', '--kld-cache', 'off', '--json'], {
      cwd: resolve('.'),
    })
    const doc = JSON.parse(stdout)
    expect(Object.keys(doc).slice(0, 6)).toEqual(['ppl', 'tokens', 'windows', 'ctx', 'seconds', 'kld'])
    expect(doc).toMatchObject({ tokens: 96, windows: 3, ctx: 32, kld: { top1: 1 } })
    const ref = referencePerplexity(tiny.ref, tiny.values, ids, 32, 3)
    expect(Math.abs(doc.ppl / ref.ppl - 1)).toBeLessThan(1e-5)
    expect(doc.kld.mean).toBeLessThan(1e-6)
  })

  it('eval explains a missing --text and a text shorter than a window (exit codes 2 and 1)', async () => {
    const usage = await run('npx', ['tsx', 'worker/cli/main.ts', 'eval', tiny.dir], { cwd: resolve('.') }).catch((e: { code: number; stderr: string }) => e)
    expect((usage as { code: number }).code).toBe(2)
    expect((usage as { stderr: string }).stderr).toContain('error: eval needs --text FILE')
    const short = await run('npx', ['tsx', 'worker/cli/main.ts', 'eval', tiny.dir, '--text', textFile, '--ctx', '256'], { cwd: resolve('.') }).catch(
      (e: { code: number; stderr: string }) => e,
    )
    expect((short as { code: number }).code).toBe(1)
    expect((short as { stderr: string }).stderr).toContain('error: the text has 180 tokens, fewer than one window of ctx = 256 tokens')
  })
})
