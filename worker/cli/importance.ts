import { resolve } from 'node:path'
import { intFlag, UsageError, type ParsedArgs } from './args'
import { backendFlag } from './eval'
import { progressLine } from './format'
import { openModel } from '../formats/open-model'
import { DEFAULT_CTX } from '../inference/perplexity'
import { openTokenizer, tokensOf } from '../inference/text-source'
import { computeLayerImportance, DEFAULT_LSAQ_K } from '../importance/layer-importance'
import { spearman } from '../importance/rank-math'

export const IMPORTANCE_METHODS = ['lsaq', 'cosine'] as const
type Method = (typeof IMPORTANCE_METHODS)[number]

/**
 * `importance MODEL --text FILE --method lsaq|cosine [--k 10] [--no-final-norm] [--ctx 256]
 *  [--max-windows N] [--backend wasm|native] [--threads N] [--tokenizer FILE] [--json]`
 * Per-block importance on the text. LSAQ and cosine come from the same pass (the cosine costs
 * one dot product per position), so the report also gives their Spearman rank agreement.
 * --json prints { method, layers: [{ layer, importance }], …details }.
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
  if (m !== 'lsaq' && (args.flags.has('k') || args.flags.has('no-final-norm'))) throw new UsageError('--k and --no-final-norm go with --method lsaq')
  const k = intFlag(args, 'k', DEFAULT_LSAQ_K, 1)
  const finalNorm = !args.flags.has('no-final-norm')
  const ctx = intFlag(args, 'ctx', DEFAULT_CTX, 2)
  const maxWindows = args.flags.has('max-windows') ? intFlag(args, 'max-windows', 1, 1) : undefined
  const backend = backendFlag(args)
  const threads = args.flags.has('threads') ? intFlag(args, 'threads', 1, 1) : undefined
  const tokenizer = args.flags.get('tokenizer')

  const controller = new AbortController()
  process.once('SIGINT', () => controller.abort())
  const model = await openModel(modelPath)
  try {
    const ids = await tokensOf({ file: resolve(text) }, () => openTokenizer(model, typeof tokenizer === 'string' ? resolve(tokenizer) : null))
    const r = await computeLayerImportance(
      model,
      ids,
      { lsaq: m === 'lsaq' ? { k, finalNorm } : null, cosine: true, ctx, maxWindows, backend, threads },
      {
        signal: controller.signal,
        onProgress: (p) => progressLine(p.stage === 'evaluating' ? 'windows' : p.stage, p.done, p.total),
      },
    )
    const values = m === 'lsaq' ? r.lsaq! : r.cosine!
    const report: Record<string, unknown> = {
      method: m,
      layers: values.map((importance, layer) => ({ layer, importance })),
      ...(m === 'lsaq' ? { k: r.k, finalNorm: r.finalNorm, cosine: r.cosine, spearmanVsCosine: spearman(r.lsaq!, r.cosine!) } : {}),
      ctx: r.ctx,
      windows: r.windows,
      tokens: r.tokens,
      backend: r.backend,
      seconds: r.seconds,
    }
    if (args.flags.has('json')) process.stdout.write(JSON.stringify(report) + '\n')
    else process.stdout.write(renderImportance(m, values, report))
    return 0
  } finally {
    await model.close()
  }
}

function renderImportance(method: Method, values: number[], report: Record<string, unknown>): string {
  const max = Math.max(...values, 1e-12)
  const lines = [
    `${method === 'lsaq' ? `LSAQ importance (1 − Jaccard of logit-lens top-${String(report.k)}, final norm ${report.finalNorm ? 'on' : 'off'})` : 'cosine importance (1 − cos of block input and output)'}` +
      ` over ${String(report.windows)} windows × ${String(report.ctx)} tokens`,
    ...values.map((v, l) => `L${String(l).padEnd(4)} ${v.toFixed(4)}  ${'#'.repeat(Math.round((40 * v) / max))}`),
  ]
  if (typeof report.spearmanVsCosine === 'number') lines.push(`Spearman ρ vs cosine importance: ${report.spearmanVsCosine.toFixed(3)}`)
  return lines.join('\n') + '\n'
}
