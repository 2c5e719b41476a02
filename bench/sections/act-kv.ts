import { readFile, stat } from 'node:fs/promises'
import { join, resolve } from 'node:path'
import { openModel } from '../../worker/formats/open-model'
import type { OpenedModel } from '../../worker/formats/contract'
import { loadTokenizer } from '../../worker/model/tokenizer'
import { DecoderSession, windowsPerRun } from '../../worker/inference/session'
import type { ActGraphOptions } from '../../worker/inference/act-quant'
import { DEFAULT_KV_CALIBRATION_TEXT, kvEvalOptions } from '../../worker/inference/kv-calibration'
import { kvGraphFromEval, type KvGraphOptions } from '../../worker/inference/kv-quant'
import { fitActivationCodebooks } from '../../worker/plan/act-codebooks'
import { parseActivationSpec, type KMeansActParams } from '../../worker/quant/activations/spec'
import type { BenchReference, BenchRow, BenchSection } from '../bench-types'

/**
 * The cost of simulating KLLM activation quantization and WKVQuant KV-cache quantization in
 * the evaluation graph: perplexity-evaluation throughput (tokens/s, windows of 256 tokens of
 * the held-out text, the eval graph's nll output, WASM, 2 threads) on the default model with
 * the fake-quant ops on, each next to the same graph without them, measured in this run.
 * The configurations run round-robin (one batch of windows each per round, best round kept),
 * so a busy moment of the shared machine hits them all alike. One-off costs are separate rows:
 * fitting the k-means codebooks and calibrating the KV smoothing (the pass of the
 * full-precision model over the calibration text, 16 windows here (eval: 32), computed
 * without the disk cache that eval and generate use).
 */
const CTX = 256
const THREADS = 2

interface Config {
  name: string
  act?: ActGraphOptions
  kv?: KvGraphOptions
}

export const section: BenchSection = {
  name: 'act-kv',
  description: 'eval tokens/s with activation (int, k-means) and KV-cache (4-bit past-only smoothed) fake quantization vs without',
  async run(ctx) {
    const dir = resolve('resources/models/default')
    if (!(await stat(join(dir, 'config.json')).then(() => true, () => false))) {
      ctx.log('resources/models/default is missing: skipped')
      return []
    }
    const model = await openModel(dir)
    try {
      return await benchActKv(ctx, model)
    } finally {
      await model.close()
    }
  },
}

async function benchActKv(ctx: { quick: boolean; log(m: string): void }, model: OpenedModel): Promise<BenchRow[]> {
  const tok = await loadTokenizer(model.tokenizerPath!)
  const heldout = tok.encode(await readFile(resolve('resources/eval/heldout.txt'), 'utf8'), { addSpecialTokens: false })
  const calib = tok.encode(await readFile(DEFAULT_KV_CALIBRATION_TEXT, 'utf8'), { addSpecialTokens: false })
  // eval uses 32 windows; 16 keep the section under 2 minutes (both fits scale with the tokens).
  const calibWindows = ctx.quick ? 4 : 16
  const rows: BenchRow[] = []

  ctx.log(`k-means codebooks (4 bits, 4 outliers per side) on ${calibWindows} calibration windows …`)
  const params = parseActivationSpec('kmeans:bits=4,outliers=4').params as KMeansActParams
  let t0 = performance.now()
  const fitted = await fitActivationCodebooks(model, calib, params, { maxWindows: calibWindows, threads: THREADS, cacheDir: null })
  const fitSeconds = (performance.now() - t0) / 1000
  ctx.log(`KV smoothing statistics on ${calibWindows} calibration windows …`)
  t0 = performance.now()
  const kvEval = await kvEvalOptions(model, { bits: 4, group: null, smooth: true, pastOnly: true }, { ids: calib, maxWindows: calibWindows }, { threads: THREADS, cacheDir: null })
  const smoothSeconds = (performance.now() - t0) / 1000

  const kmeans: ActGraphOptions = { kind: 'kmeans', bits: 4, outliers: 4, norm: params.norm, codebooks: fitted.codebooks }
  const kv = kvGraphFromEval(kvEval)
  const configs: Config[] = [
    { name: 'no activation/KV quantization' },
    { name: 'act int:bits=4,outliers=4', act: { kind: 'int', bits: 4, outliers: 4 } },
    { name: 'act kmeans:bits=4,outliers=4', act: kmeans },
    { name: 'KV 4-bit past-only smoothed', kv },
    { name: 'act kmeans 4/4 + KV 4-bit past-only smoothed', act: kmeans, kv },
  ]
  const sessions: DecoderSession[] = []
  try {
    for (const c of configs) {
      ctx.log(`session: ${c.name} …`)
      sessions.push(await DecoderSession.create(model, { threads: THREADS, graph: { nll: true, maxPositions: CTX, ...(c.act ? { act: c.act } : {}), ...(c.kv ? { kv: c.kv } : {}) } }))
    }
    const perRun = windowsPerRun(CTX, sessions[0]!.vocab)
    const batch = Array.from({ length: perRun }, (_, w) => heldout.slice(w * CTX, (w + 1) * CTX))
    const targets = batch.map((t) => t.slice(1).concat([0]))
    const best = configs.map(() => Infinity)
    const nll = configs.map(() => 0)
    const rounds = ctx.quick ? 2 : 3
    // Round 0 warms every session up (first-run allocations) and is not timed.
    for (let round = 0; round <= rounds; round++) {
      ctx.log(`round ${round}/${rounds} (${perRun} × ${CTX} tokens per configuration) …`)
      for (let i = 0; i < configs.length; i++) {
        const t = performance.now()
        const out = await sessions[i]!.forwardWindows(batch, { targets }, ['nll'])
        const ms = performance.now() - t
        if (round > 0) best[i] = Math.min(best[i]!, ms)
        const v = out.nll!.data as Float32Array
        let s = 0
        for (let b = 0; b < perRun; b++) for (let p = 0; p < CTX - 1; p++) s += v[b * CTX + p]!
        nll[i] = s / (perRun * (CTX - 1))
      }
    }
    const tokensPerSecond = (ms: number) => (perRun * CTX) / (ms / 1000)
    const ref: BenchReference = { name: `eval, ${configs[0]!.name}`, value: tokensPerSecond(best[0]!), unit: 'tokens/s' }
    rows.push({ ...ref, name: ref.name, note: `ppl ${Math.exp(nll[0]!).toFixed(3)} on these ${perRun} windows` })
    for (let i = 1; i < configs.length; i++) {
      rows.push({ name: `eval, ${configs[i]!.name}`, value: tokensPerSecond(best[i]!), unit: 'tokens/s', reference: ref, note: `ppl ${Math.exp(nll[i]!).toFixed(3)}` })
    }
  } finally {
    for (const s of sessions) await s.release()
  }
  rows.push({ name: `k-means codebook fit (${Object.keys(fitted.codebooks).length} linear inputs, ${fitted.tokens} calibration tokens)`, value: fitSeconds, unit: 's' })
  rows.push({ name: `KV smoothing calibration (${kvEval.calibration!.tokens} calibration tokens)`, value: smoothSeconds, unit: 's' })
  return rows
}
