import { resolve } from 'node:path'
import { intFlag, UsageError, type ParsedArgs } from './args'
import { backendFlag } from './eval'
import { progressLine } from './format'
import { openModel } from '../formats/open-model'
import { DEFAULT_CTX } from '../inference/perplexity'
import { openTokenizer, tokensOf } from '../inference/text-source'
import { computeLayerImportance, DEFAULT_LSAQ_K } from '../importance/layer-importance'
import { spearman } from '../importance/rank-math'
import { measureSensitivity, type SensitivityResult } from '../importance/sensitivity'

export const IMPORTANCE_METHODS = ['lsaq', 'cosine', 'sensitivity'] as const
type Method = (typeof IMPORTANCE_METHODS)[number]

/**
 * `importance MODEL --text FILE --method lsaq|cosine|sensitivity [--k 10] [--no-final-norm]
 *  [--quant SPEC [--calib FILE]] [--ctx 256] [--max-windows N] [--backend wasm|native] [--threads N]
 *  [--tokenizer FILE] [--json]`
 * Per-block importance on the text. LSAQ and cosine always come from one pass (the cosine
 * costs one dot product per position), so every report gives the Spearman rank agreement
 * between the methods it has; sensitivity (ΔKLD with one block quantized by --quant SPEC)
 * adds one evaluation per block, cached. --json prints
 * { method, layers: [{ layer, importance, … }], spearman: { "a~b": ρ }, …details }.
 */
export async function runImportance(args: ParsedArgs): Promise<number> {
  const modelPath = args.positionals[0]
  if (!modelPath || args.positionals.length > 1) throw new UsageError('importance takes exactly one MODEL')
  const text = args.flags.get('text')
  if (typeof text !== 'string') throw new UsageError('importance needs --text FILE')
  const method = args.flags.get('method')
  if (typeof method !== 'string' || !(IMPORTANCE_METHODS as readonly string[]).includes(method)) {
    throw new UsageError(`--method must be one of ${IMPORTANCE_METHODS.join(', ')}, got '${String(method ?? '')}'`)
  }
  const m = method as Method
  if (m === 'cosine' && (args.flags.has('k') || args.flags.has('no-final-norm'))) throw new UsageError('--k and --no-final-norm go with --method lsaq (or sensitivity, for its LSAQ comparison)')
  const spec = args.flags.get('quant')
  if (m === 'sensitivity' && typeof spec !== 'string') throw new UsageError('--method sensitivity needs --quant SPEC (the method one block at a time is quantized with)')
  if (m !== 'sensitivity' && (args.flags.has('quant') || args.flags.has('calib'))) throw new UsageError('--quant and --calib go with --method sensitivity')
  const k = intFlag(args, 'k', DEFAULT_LSAQ_K, 1)
  const finalNorm = !args.flags.has('no-final-norm')
  const ctx = intFlag(args, 'ctx', DEFAULT_CTX, 2)
  const maxWindows = args.flags.has('max-windows') ? intFlag(args, 'max-windows', 1, 1) : undefined
  const backend = backendFlag(args)
  const threads = args.flags.has('threads') ? intFlag(args, 'threads', 1, 1) : undefined
  const tokenizer = args.flags.get('tokenizer')
  const tokenizerPath = typeof tokenizer === 'string' ? resolve(tokenizer) : undefined
  const calib = args.flags.get('calib')

  const controller = new AbortController()
  process.once('SIGINT', () => controller.abort())
  const hooks = {
    signal: controller.signal,
    onProgress: (p: { stage: string; done: number; total: number }) => progressLine(p.stage === 'evaluating' ? 'windows' : p.stage, p.done, p.total),
  }
  const model = await openModel(modelPath)
  try {
    const ids = await tokensOf({ file: resolve(text) }, () => openTokenizer(model, tokenizerPath ?? null))
    const r = await computeLayerImportance(model, ids, { lsaq: { k, finalNorm }, cosine: true, ctx, maxWindows, backend, threads }, hooks)
    let sens: SensitivityResult | null = null
    if (m === 'sensitivity') {
      sens = await measureSensitivity(
        model,
        ids,
        {
          spec: spec as string,
          ctx,
          maxWindows,
          backend,
          threads,
          calibration: typeof calib === 'string' ? { text: { file: resolve(calib) }, tokenizer: tokenizerPath } : tokenizerPath ? { tokenizer: tokenizerPath } : undefined,
        },
        { signal: controller.signal, onProgress: (p) => progressLine('blocks', p.done, p.total) },
      )
    }
    const series: Record<string, number[]> = { lsaq: r.lsaq!, cosine: r.cosine! }
    if (sens) series.sensitivity = sens.blocks.map((b) => b.deltaKld)
    const names = Object.keys(series)
    const agreement: Record<string, number | null> = {}
    for (let i = 0; i < names.length; i++) for (let j = i + 1; j < names.length; j++) agreement[`${names[i]}~${names[j]}`] = spearman(series[names[i]!]!, series[names[j]!]!)
    const layers = sens
      ? sens.blocks.map((b) => ({ layer: b.layer, importance: b.deltaKld, deltaKld: b.deltaKld, deltaPpl: b.deltaPpl, ppl: b.ppl }))
      : series[m]!.map((importance, layer) => ({ layer, importance }))
    const report: Record<string, unknown> = {
      method: m,
      layers,
      spearman: agreement,
      ...(m !== 'cosine' ? { k: r.k, finalNorm: r.finalNorm } : {}),
      ...(sens ? { spec: sens.spec, basePpl: sens.basePpl, cached: sens.cached, lsaq: r.lsaq, cosine: r.cosine } : m === 'lsaq' ? { cosine: r.cosine } : { lsaq: r.lsaq }),
      ctx: r.ctx,
      windows: r.windows,
      tokens: r.tokens,
      backend: r.backend,
      seconds: r.seconds + (sens?.seconds ?? 0),
    }
    if (args.flags.has('json')) process.stdout.write(JSON.stringify(report) + '\n')
    else process.stdout.write(renderImportance(m, layers.map((l) => l.importance), report, agreement))
    return 0
  } finally {
    await model.close()
  }
}

function renderImportance(method: Method, values: number[], report: Record<string, unknown>, agreement: Record<string, number | null>): string {
  const max = Math.max(...values, 1e-12)
  const title =
    method === 'lsaq'
      ? `LSAQ importance (1 − Jaccard of logit-lens top-${String(report.k)}, final norm ${report.finalNorm ? 'on' : 'off'})`
      : method === 'cosine'
        ? 'cosine importance (1 − cos of block input and output)'
        : `measured sensitivity (ΔKLD with one block quantized by ${String(report.spec)}; base ppl ${(report.basePpl as number).toFixed(4)}${report.cached ? ', cached' : ''})`
  const lines = [
    `${title} over ${String(report.windows)} windows × ${String(report.ctx)} tokens`,
    ...values.map((v, l) => `L${String(l).padEnd(4)} ${method === 'sensitivity' ? v.toExponential(3) : v.toFixed(4)}  ${'#'.repeat(Math.max(0, Math.round((40 * v) / max)))}`),
    ...Object.entries(agreement).map(([pair, rho]) => `Spearman ρ ${pair.replace('~', ' vs ')}: ${rho === null ? 'undefined (constant)' : rho.toFixed(3)}`),
  ]
  return lines.join('\n') + '\n'
}
