/**
 * llama.cpp's perplexity of GGUF files on the held-out text with the app's windowing (ctx 256,
 * windows in order, no BOS): `npx tsx scripts/allocation-vs-llamacpp-eval.ts A.gguf B.gguf … [--max-windows N] [--base F16.gguf]`.
 * Prints one JSON line per file: { gguf, ppl, nll, windows, predicted, seconds, kld? } — kld: mean
 * KL(base ‖ file) per predicted token, the base's next-token distributions by llama.cpp too.
 */
import { readFile } from 'node:fs/promises'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'
import { loadTokenizer } from '../worker/model/tokenizer'
import { planWindows } from '../worker/inference/perplexity'
import { llamaCppNll, openLlama } from '../test/helpers/llama-cpp-perplexity'

const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..')

async function main(): Promise<void> {
  const argv = process.argv.slice(2)
  const i = argv.indexOf('--max-windows')
  const maxWindows = i >= 0 ? Number(argv[i + 1]) : undefined
  const b = argv.indexOf('--base')
  const basePath = b >= 0 ? argv[b + 1] : undefined
  const files = argv.filter((a, j) => !a.startsWith('--') && !(i >= 0 && j === i + 1) && !(b >= 0 && j === b + 1))
  const tok = await loadTokenizer(join(ROOT, 'resources/models/default/tokenizer.json'))
  const ids = tok.encode(await readFile(join(ROOT, 'resources/eval/heldout.txt'), 'utf8'))
  const windows = planWindows(ids, 256, maxWindows)
  const llama = await openLlama()
  const vocab = 8192 // the default model's vocabulary (config.json vocab_size); the helper checks llama.cpp returns exactly this many
  try {
    const base = basePath ? await llamaCppNll(llama, basePath, windows, { vocab, keepProbabilities: true }) : null
    if (base) process.stdout.write(JSON.stringify({ gguf: basePath, ppl: Math.exp(base.nll), nll: base.nll, windows: windows.length }) + '\n')
    for (const f of files) {
      const t0 = performance.now()
      const r = await llamaCppNll(llama, f, windows, base ? { vocab, base: base.probabilities } : {})
      process.stdout.write(JSON.stringify({ gguf: f, ppl: Math.exp(r.nll), nll: r.nll, windows: windows.length, predicted: r.predicted, seconds: (performance.now() - t0) / 1000, ...(r.kld !== undefined ? { kld: r.kld } : {}) }) + '\n')
    }
  } finally {
    await llama.dispose()
  }
}

void main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
