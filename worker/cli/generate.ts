import { resolve } from 'node:path'
import { intFlag, UsageError, type ParsedArgs } from './args'
import { progressLine } from './format'
import { actFlag, backendFlag, kvFlags } from './eval'
import { generate } from '../inference/inference-service'
import type { GenerateJobResult, VariantSpec } from '../inference/inference-protocol'
import type { ActGraphOptions } from '../inference/act-quant'
import { openModel } from '../formats/open-model'
import { kmeansActOptions } from '../plan/act-codebooks'

/**
 * `generate MODEL --prompt TEXT [--max-tokens N] [--temperature T] [--top-p P] [--seed S]
 *  [--compare MODEL2] [--backend wasm|native] [--threads N] [--tokenizer FILE] [--json]
 *  [--kv-bits N [--kv-group G] [--kv-smooth] [--kv-past-only]] [--act SPEC] [--no-calib-cache]`
 * Greedy by default; with --compare both models continue the same prompt with the same
 * sampling settings, side by side. --kv-bits quantizes the KV cache as eval does: with
 * --kv-past-only each step attends to its own K/V at full precision and they enter the cache
 * quantized after the step (WKVQuant's past-only); without it the step's own K/V are quantized
 * too. --act fake-quantizes every decoder linear's input (k-means codebooks fitted on
 * MODEL with the calibration text first, as eval does; cached).
 */
export async function runGenerate(args: ParsedArgs): Promise<number> {
  const model = args.positionals[0]
  if (!model || args.positionals.length > 1) throw new UsageError('generate takes exactly one MODEL')
  const prompt = args.flags.get('prompt')
  if (typeof prompt !== 'string' || prompt.length === 0) throw new UsageError('generate needs --prompt TEXT')
  const num = (key: string, fallback: number, ok: (v: number) => boolean, what: string): number => {
    const v = args.flags.get(key)
    if (v === undefined) return fallback
    const n = Number(v)
    if (v === true || !Number.isFinite(n) || !ok(n)) throw new UsageError(`--${key} must be ${what}, got '${String(v)}'`)
    return n
  }
  const temperature = num('temperature', 0, (n) => n >= 0, 'a number ≥ 0')
  const topP = num('top-p', 1, (n) => n > 0 && n <= 1, 'in (0, 1]')
  const seed = num('seed', 0, (n) => Number.isInteger(n), 'an integer')
  const maxTokens = intFlag(args, 'max-tokens', 64, 1)
  const compare = args.flags.get('compare')
  const tokenizer = args.flags.get('tokenizer')
  const variants: VariantSpec[] = [{ model: resolve(model), label: model }]
  if (typeof compare === 'string') variants.push({ model: resolve(compare), label: compare })
  const kv = kvFlags(args)
  const actSpec = actFlag(args)

  const controller = new AbortController()
  process.once('SIGINT', () => controller.abort())
  let act: ActGraphOptions | null = null
  if (actSpec?.kind === 'int') act = { kind: 'int', bits: actSpec.params.bits, outliers: actSpec.params.outliers }
  if (actSpec?.kind === 'kmeans') {
    const opened = await openModel(model)
    try {
      const { calibrationTokens, ...options } = await kmeansActOptions(
        opened,
        actSpec.params,
        {
          tokenizer: typeof tokenizer === 'string' ? resolve(tokenizer) : undefined,
          backend: backendFlag(args),
          threads: args.flags.has('threads') ? intFlag(args, 'threads', 1, 1) : undefined,
          ...(args.flags.has('no-calib-cache') ? { cacheDir: null } : {}),
        },
        { signal: controller.signal, onProgress: (p) => progressLine(p.stage === 'evaluating' ? 'activation codebooks' : p.stage, p.done, p.total) },
      )
      process.stderr.write(`activation codebooks from ${calibrationTokens} calibration tokens\n`)
      act = options
    } finally {
      await opened.close()
    }
  }
  const result = await generate(
    model,
    prompt,
    {
      variants,
      maxTokens,
      temperature,
      topP,
      seed,
      backend: backendFlag(args),
      threads: args.flags.has('threads') ? intFlag(args, 'threads', 1, 1) : undefined,
      tokenizer: typeof tokenizer === 'string' ? resolve(tokenizer) : undefined,
      kv,
      act,
    },
    {
      signal: controller.signal,
      onProgress: (p) => {
        if (p.stage === 'loading') progressLine('loading weights', p.done, p.total)
      },
    },
  )
  if (args.flags.has('json')) process.stdout.write(JSON.stringify(result) + '\n')
  else process.stdout.write(renderGenerate(result))
  return 0
}

function renderGenerate(r: GenerateJobResult): string {
  const out: string[] = []
  if (r.kv) {
    const cal = r.kv.calibration ? `, smoothing from ${r.kv.calibration.tokens} tokens of ${r.kv.calibration.source}` : ''
    out.push(`KV cache: ${r.kv.bits}-bit per token${r.kv.group ? `, groups of ${r.kv.group}` : ''}, ${r.kv.pastOnly ? 'past-only' : 'naive'}${r.kv.smooth ? ', smoothed' : ''}${cal}`)
  }
  if (r.act) out.push(`activations: ${String(r.act.kind)} ${String(r.act.bits)}-bit per token, ${String(r.act.outliers)} outliers per side kept`)
  for (const v of r.variants) {
    out.push(`── ${v.label} (${v.ids.length} tokens, ${v.tokensPerSecond.toFixed(1)} tokens/s, ${v.stopReason}) ──`)
    out.push(`${r.prompt ?? ''}${v.text}`)
    out.push('')
  }
  return out.join('\n')
}
