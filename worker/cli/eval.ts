import { resolve } from 'node:path'
import { intFlag, UsageError, type ParsedArgs } from './args'
import { progressLine } from './format'
import { evalPerplexity } from '../inference/inference-service'
import type { KldCacheMode } from '../inference/kld'
import type { BackendKind } from '../inference/ort-backend'
import { DEFAULT_CTX, type PerplexityResult } from '../inference/perplexity'
import { openModel } from '../formats/open-model'
import { engineModuleUrl } from '../jobs/spawn-worker'
import type { PlanOverridesOptions } from '../plan/apply'
import { planSize, type PlanSize } from '../plan/size'
import { hasPlanArgument, planArgument } from './plan-args'
import type { KvJobSettings } from '../inference/kv-calibration'
import type { ActGraphOptions } from '../inference/act-quant'
import { parseActivationSpec, type ActivationSpec } from '../quant/activations/spec'
import { kmeansActOptions } from '../plan/act-codebooks'
import { modelOpCounts, type ModelOpCounts } from '../quant/activations/op-counts'

/**
 * `eval MODEL --text FILE [--quant SPEC | --plan FILE | --preset NAME [--calib FILE]] [--ctx 256] [--max-windows N]
 *  [--backend wasm|native] [--threads N] [--kld [--base PATH] [--kld-cache auto|on|off]] [--tokenizer FILE] [--json]
 *  [--kv-bits N [--kv-group G] [--kv-smooth] [--kv-past-only]] [--act int:bits=B,outliers=K]`
 * Perplexity by the project protocol; with --kld also the KL divergence against the base
 * model (default: MODEL itself, which checks the pipeline: KL 0, top-1 agreement 1). With
 * --quant/--plan/--preset the evaluated variant is MODEL with the plan's tensors quantized and
 * dequantised (the KLD base stays MODEL as stored); the plan is checked before any work.
 * --kv-bits fake-quantizes the KV cache (inference/kv-quant.ts): naive unless --kv-past-only,
 * smoothed from resources/eval/calibration.txt with --kv-smooth. --act fake-quantizes every
 * decoder linear's input (inference/act-quant.ts; int, or k-means with codebooks fitted first).
 */
export async function runEval(args: ParsedArgs): Promise<number> {
  const model = args.positionals[0]
  if (!model || args.positionals.length > 1) throw new UsageError('eval takes exactly one MODEL')
  const text = args.flags.get('text')
  if (typeof text !== 'string') throw new UsageError('eval needs --text FILE')
  const ctx = intFlag(args, 'ctx', DEFAULT_CTX, 2)
  const maxWindows = args.flags.has('max-windows') ? intFlag(args, 'max-windows', 1, 1) : undefined
  const backend = backendFlag(args)
  const threads = args.flags.has('threads') ? intFlag(args, 'threads', 1, 1) : undefined
  const kldOn = args.flags.has('kld')
  if (!kldOn && (args.flags.has('base') || args.flags.has('kld-cache'))) throw new UsageError('--base and --kld-cache go with --kld')
  const cache = args.flags.get('kld-cache') ?? 'auto'
  if (cache !== 'auto' && cache !== 'on' && cache !== 'off') throw new UsageError(`--kld-cache must be auto, on or off, got '${String(cache)}'`)
  const base = args.flags.get('base')
  const tokenizer = args.flags.get('tokenizer')

  const kv = kvFlags(args)
  const actSpec = actFlag(args)
  const tokenizerPath = typeof tokenizer === 'string' ? resolve(tokenizer) : undefined
  let planned: { size: PlanSize; options: PlanOverridesOptions } | null = null
  if (hasPlanArgument(args)) {
    const opened = await openModel(model)
    try {
      const p = await planArgument(opened, args, tokenizerPath)
      if (p) planned = { size: planSize(opened, p.entries), options: { plan: p.plan, source: p.source, calibration: p.calibration } }
    } finally {
      await opened.close()
    }
  }

  const controller = new AbortController()
  process.once('SIGINT', () => controller.abort())
  let act: ActGraphOptions | null = null
  let opCounts: ModelOpCounts | null = null
  if (actSpec?.kind === 'int') act = { kind: 'int', bits: actSpec.params.bits, outliers: actSpec.params.outliers }
  if (actSpec?.kind === 'kmeans') {
    // Codebooks per linear input from the full-precision model on the calibration text (never the evaluated one).
    const opened = await openModel(model)
    try {
      const { calibrationTokens, ...options } = await kmeansActOptions(opened, actSpec.params, { tokenizer: tokenizerPath, backend, threads, ...(args.flags.has('no-calib-cache') ? { cacheDir: null } : {}) }, {
        signal: controller.signal,
        onProgress: (p) => progressLine(p.stage === 'evaluating' ? 'activation codebooks' : p.stage, p.done, p.total),
      })
      process.stderr.write(`activation codebooks fitted on ${calibrationTokens} calibration tokens\n`)
      act = options
      // Dense vs index-based multiplies/adds per token at this WxAy (arithmetic counts, not speed).
      const weightBits = planned?.size.bitsPerWeight ? Math.round(planned.size.bitsPerWeight) : 16
      if (opened.config) opCounts = modelOpCounts(opened.config, weightBits, { bits: actSpec.params.bits, outliers: actSpec.params.outliers, normalised: actSpec.params.norm !== 'none' })
    } finally {
      await opened.close()
    }
  }
  const result = await evalPerplexity(
    model,
    { file: resolve(text) },
    {
      ctx,
      maxWindows,
      backend,
      threads,
      tokenizer: tokenizerPath,
      ...(planned
        ? { variant: { label: planned.options.source, overridesModule: { module: engineModuleUrl('plan-overrides'), exportName: 'createOverrides', options: planned.options } } }
        : {}),
      kld: kldOn ? { base: typeof base === 'string' ? { model: resolve(base) } : undefined, cache: cache as KldCacheMode } : null,
      kv,
      act,
    },
    {
      signal: controller.signal,
      onProgress: (p) => {
        if (p.stage === 'token') return
        progressLine(p.stage === 'evaluating' ? `windows${p.ppl ? ` (ppl ${p.ppl.toFixed(3)})` : ''}` : p.stage, p.done, p.total)
      },
    },
  )
  for (const warning of result.warnings) process.stderr.write(`warning: ${warning}\n`)
  if (args.flags.has('json')) {
    const report = evalReport(result, planned?.size)
    if (opCounts) report.opCounts = { label: opCounts.label, perToken: opCounts.total, silu: opCounts.silu }
    process.stdout.write(JSON.stringify(report) + '\n')
  } else process.stdout.write(renderEval(result, planned?.size))
  return 0
}

/** --act SPEC → the activation spec (null without it); k-means codebooks are fitted in runEval. */
export function actFlag(args: ParsedArgs): ActivationSpec | null {
  const raw = args.flags.get('act')
  if (raw === undefined) return null
  if (typeof raw !== 'string') throw new UsageError('--act needs a SPEC, e.g. int:bits=4,outliers=4')
  let spec
  try {
    spec = parseActivationSpec(raw)
  } catch (err) {
    throw new UsageError((err as Error).message)
  }
  return spec
}

/** --kv-bits N [--kv-group G] [--kv-smooth] [--kv-past-only] → the job's kv settings (null without --kv-bits). */
export function kvFlags(args: ParsedArgs): KvJobSettings | null {
  if (!args.flags.has('kv-bits')) {
    if (['kv-group', 'kv-smooth', 'kv-past-only'].some((f) => args.flags.has(f))) throw new UsageError('--kv-group, --kv-smooth and --kv-past-only go with --kv-bits')
    return null
  }
  const bits = intFlag(args, 'kv-bits', 8, 2)
  if (bits > 8) throw new UsageError(`--kv-bits must be 2 to 8, got ${bits}`)
  const group = args.flags.has('kv-group') ? intFlag(args, 'kv-group', 32, 2) : null
  const settings: KvJobSettings = { bits, group, smooth: args.flags.has('kv-smooth'), pastOnly: args.flags.has('kv-past-only') }
  // --no-calib-cache: smoothing statistics computed afresh (kv-calibration.ts caches them on disk otherwise).
  if (args.flags.has('no-calib-cache')) settings.calibrationCache = false
  return settings
}

export function backendFlag(args: ParsedArgs): BackendKind {
  const b = args.flags.get('backend') ?? 'wasm'
  if (b !== 'wasm' && b !== 'native') throw new UsageError(`--backend must be wasm or native, got '${String(b)}'`)
  return b
}

/** The --json document: the contract's fields first, then details. */
export function evalReport(r: PerplexityResult, size?: PlanSize): Record<string, unknown> {
  const out: Record<string, unknown> = { ppl: r.ppl, tokens: r.tokens, windows: r.windows, ctx: r.ctx, seconds: r.seconds }
  // With a plan: the whole model's exact bytes as planned, and bits per weight over the quantized tensors.
  if (size) Object.assign(out, { bytes: size.bytes, bitsPerWeight: size.bitsPerWeight })
  if (r.kld) {
    const k = r.kld
    out.kld = { mean: k.mean, median: k.median, p99: k.p99, top1: k.top1, deltaPpl: k.deltaPpl, basePpl: k.basePpl, baseSource: k.baseSource }
  }
  Object.assign(out, {
    nll: r.nll,
    predicted: r.predicted,
    textTokens: r.textTokens,
    backend: r.backend,
    threads: r.threads,
    evalSeconds: r.evalSeconds,
    tokensPerSecond: r.tokensPerSecond,
  })
  if (r.kv) out.kv = r.kv
  if (r.act) out.act = r.act
  if (r.warnings.length > 0) out.warnings = r.warnings
  return out
}

function renderEval(r: PerplexityResult, size?: PlanSize): string {
  const lines = [
    ...(size ? [`model size    ${size.bytes} bytes as planned (${size.bitsPerWeight?.toFixed(3) ?? '–'} bits per quantized weight, ${size.planned.tensors} tensors)`] : []),
    `perplexity    ${r.ppl.toFixed(4)}  (mean NLL ${r.nll.toFixed(5)} nats)`,
    `windows       ${r.windows} × ${r.ctx} tokens (${r.predicted} predicted; text has ${r.textTokens} tokens)`,
    `backend       ${r.backend}, ${r.threads} threads`,
    `time          ${r.seconds.toFixed(2)} s (${r.tokensPerSecond.toFixed(0)} tokens/s evaluating)`,
  ]
  if (r.kv) {
    const kv = r.kv
    const cal = kv.calibration ? `, smoothing from ${kv.calibration.tokens} tokens of ${kv.calibration.source}` : ''
    lines.push(`KV cache      ${kv.bits}-bit per token${kv.group ? `, groups of ${kv.group}` : ''}, ${kv.pastOnly ? 'past-only' : 'naive'}${kv.smooth ? ', smoothed' : ''}${cal}`)
  }
  if (r.act) lines.push(`activations   ${r.act.kind} ${r.act.bits}-bit per token, ${r.act.outliers} outliers per side kept`)
  if (r.kld) {
    const k = r.kld
    lines.push(
      `KL divergence mean ${k.mean.toExponential(4)}, median ${k.median.toExponential(4)}, p99 ${k.p99.toExponential(4)} nats`,
      `top-1 agree   ${(100 * k.top1).toFixed(2)} %`,
      `base ppl      ${k.basePpl.toFixed(4)} (Δppl ${signed(k.deltaPpl, 4)}; base log-probs: ${k.baseSource})`,
    )
  }
  return lines.join('\n') + '\n'
}

/** '+0.1234' / '-0.1234', and '0.0000' rather than '-0.0000'. */
function signed(v: number, digits: number): string {
  const text = Math.abs(v).toFixed(digits)
  if (Number(text) === 0) return text
  return `${v < 0 ? '-' : '+'}${text}`
}
