import { resolve } from 'node:path'
import { intFlag, UsageError, type ParsedArgs } from './args'
import { backendFlag } from './eval'
import { progressLine } from './format'
import { openModel } from '../formats/open-model'
import { DEFAULT_CTX } from '../inference/perplexity'
import { openTokenizer, tokensOf } from '../inference/text-source'
import { computeLayerImportance, DEFAULT_LSAQ_K } from '../importance/layer-importance'
import { spearman } from '../importance/rank-math'
import { DEFAULT_LOCAL_SPEC, localBlockImportance, type LocalImportanceResult } from '../importance/local-proxy'
import { measureSensitivity, type SensitivityResult } from '../importance/sensitivity'

export const IMPORTANCE_METHODS = ['lsaq', 'cosine', 'sensitivity', 'local'] as const
type Method = (typeof IMPORTANCE_METHODS)[number]

/**
 * `importance MODEL --text FILE --method lsaq|cosine|sensitivity|local [--k 10] [--no-final-norm]
 *  [--quant SPEC [--calib FILE]] [--ctx 256] [--max-windows N] [--backend wasm|native] [--threads N]
 *  [--tokenizer FILE] [--json]`
 * Per-block importance on the text. LSAQ and cosine always come from one pass (the cosine
 * costs one dot product per position), so every report gives the Spearman rank agreement
 * between the methods it has; sensitivity (ΔKLD with one block quantized by --quant SPEC)
 * adds one evaluation per block, cached; local (importance/local-proxy.ts) is the relative
 * error of each block's linear outputs on the calibration text (--calib, default
 * resources/eval/calibration.txt — never --text) with its weights quantized by --quant SPEC
 * (default rtn:bits=4,group=128): no forward pass per block. --json prints
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
  if (m !== 'sensitivity' && m !== 'local' && (args.flags.has('quant') || args.flags.has('calib'))) throw new UsageError('--quant and --calib go with --method sensitivity or local')
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
    let local: LocalImportanceResult | null = null
    if (m === 'local') {
      local = await localBlockImportance(
        model,
        typeof spec === 'string' ? spec : DEFAULT_LOCAL_SPEC,
        { calibration: { text: typeof calib === 'string' ? { file: resolve(calib) } : undefined, tokenizer: tokenizerPath, backend, threads } },
        { signal: controller.signal, onProgress: (p) => progressLine(p.stage === 'measuring' ? 'tensors' : p.stage, p.done, p.total) },
      )
    }
    const series: Record<string, number[]> = { lsaq: r.lsaq!, cosine: r.cosine! }
    if (sens) series.sensitivity = sens.blocks.map((b) => b.deltaKld)
    // Blocks the spec fits none of have no local figure; ρ is over the others.
    const localLayers = local ? local.layers.filter((l) => local.importance[l] !== null) : []
    if (local) series.local = localLayers.map((l) => local.importance[l]!)
    const at = (name: string): number[] => (name === 'local' ? series[name]! : localLayers.length ? localLayers.map((l) => series[name]![l]!) : series[name]!)
    const names = Object.keys(series)
    const agreement: Record<string, number | null> = {}
    for (let i = 0; i < names.length; i++) for (let j = i + 1; j < names.length; j++) agreement[`${names[i]}~${names[j]}`] = spearman(at(names[i]!), at(names[j]!))
    const layers = sens
      ? sens.blocks.map((b) => ({ layer: b.layer, importance: b.deltaKld, deltaKld: b.deltaKld, deltaPpl: b.deltaPpl, ppl: b.ppl }))
      : local
        ? localLayers.map((layer) => ({ layer, importance: local.importance[layer]! }))
        : series[m]!.map((importance, layer) => ({ layer, importance }))
    const report: Record<string, unknown> = {
      method: m,
      layers,
      spearman: agreement,
      ...(m !== 'cosine' ? { k: r.k, finalNorm: r.finalNorm } : {}),
      ...(sens
        ? { spec: sens.spec, basePpl: sens.basePpl, cached: sens.cached, lsaq: r.lsaq, cosine: r.cosine }
        : local
          ? { spec: local.spec, cached: local.cached, calibrationTokens: local.tokens, tensors: local.tensors, lsaq: r.lsaq, cosine: r.cosine }
          : m === 'lsaq'
            ? { cosine: r.cosine }
            : { lsaq: r.lsaq }),
      ctx: r.ctx,
      windows: r.windows,
      tokens: r.tokens,
      backend: r.backend,
      seconds: r.seconds + (sens?.seconds ?? 0) + (local?.seconds ?? 0),
    }
    if (args.flags.has('json')) process.stdout.write(JSON.stringify(report) + '\n')
    else process.stdout.write(renderImportance(m, layers, report, agreement))
    return 0
  } finally {
    await model.close()
  }
}

function renderImportance(method: Method, layers: { layer: number; importance: number }[], report: Record<string, unknown>, agreement: Record<string, number | null>): string {
  const max = Math.max(...layers.map((l) => l.importance), 1e-12)
  const title =
    method === 'lsaq'
      ? `LSAQ importance (1 − Jaccard of logit-lens top-${String(report.k)}, final norm ${report.finalNorm ? 'on' : 'off'})`
      : method === 'cosine'
        ? 'cosine importance (1 − cos of block input and output)'
        : method === 'local'
          ? `local error proxy (Σ‖(Ŵ − W)Xᵀ‖² / Σ‖WXᵀ‖² of the block's linears quantized by ${String(report.spec)}, on ${String(report.calibrationTokens)} calibration tokens${report.cached ? ', cached' : ''})`
          : `measured sensitivity (ΔKLD with one block quantized by ${String(report.spec)}; base ppl ${(report.basePpl as number).toFixed(4)}${report.cached ? ', cached' : ''})`
  const lines = [
    `${title} over ${String(report.windows)} windows × ${String(report.ctx)} tokens`,
    ...layers.map(({ layer, importance: v }) => `L${String(layer).padEnd(4)} ${method === 'sensitivity' || method === 'local' ? v.toExponential(3) : v.toFixed(4)}  ${'#'.repeat(Math.max(0, Math.round((40 * v) / max)))}`),
    ...Object.entries(agreement).map(([pair, rho]) => `Spearman ρ ${pair.replace('~', ' vs ')}: ${rho === null ? 'undefined (constant)' : rho.toFixed(3)}`),
  ]
  return lines.join('\n') + '\n'
}
