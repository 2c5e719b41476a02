import { resolve } from 'node:path'
import { openModel } from '../formats/open-model'
import { EXPORT_FORMAT_IDS, type ExportFloatType, type ExportReport } from '../export/contract'
import { exportFormat } from '../export/registry'
import { runExport } from '../export/run-export'
import { GGUF_FALLBACK_OPTION } from '../export/gguf'
import { GGML_QUANT_TYPES } from '../quant/ggml'
import { UsageError, type ParsedArgs } from './args'
import { formatBytes, progressLine } from './format'
import { PLAN_FLAGS, planArgument, planFlag } from './plan-args'

const FLOAT_TYPES: readonly ExportFloatType[] = ['bf16', 'fp16', 'fp32']

/**
 * `export MODEL (--plan FILE | --quant SPEC | --preset NAME) --format gguf|onnx|safetensors|compressed-tensors
 *  --out PATH [--dtype bf16|fp16|fp32] [--gguf-fallback TYPE] [--calib FILE] [--tokenizer FILE] [--json]`
 * Writes the model as planned in the target format (staged beside PATH, renamed when
 * complete) and its report beside it as <name>.report.json; prints the path, bytes per
 * section and seconds.
 */
export async function runExportCommand(args: ParsedArgs): Promise<number> {
  const modelPath = args.positionals[0]
  if (!modelPath || args.positionals.length > 1) throw new UsageError('export takes exactly one MODEL')
  const formatId = args.flags.get('format')
  if (typeof formatId !== 'string') throw new UsageError(`export needs --format ${EXPORT_FORMAT_IDS.join('|')}`)
  const out = args.flags.get('out')
  if (typeof out !== 'string') throw new UsageError('export needs --out PATH')
  // The plan flags (one of three, a known preset name) are checked before the model is read.
  if (planFlag(args) === null) throw new UsageError(`export needs ${PLAN_FLAGS}`)
  const dtype = args.flags.get('dtype')
  if (dtype !== undefined && !FLOAT_TYPES.includes(dtype as ExportFloatType)) {
    throw new UsageError(`--dtype must be ${FLOAT_TYPES.join(', ')}, got '${String(dtype)}'`)
  }
  const ggufFallback = args.flags.get('gguf-fallback')
  if (ggufFallback !== undefined && formatId !== 'gguf') throw new UsageError('--gguf-fallback is an option of --format gguf')
  if (ggufFallback !== undefined && !(GGML_QUANT_TYPES as readonly string[]).includes(String(ggufFallback))) {
    throw new UsageError(`--gguf-fallback must be one of ${GGML_QUANT_TYPES.join(', ')}, got '${String(ggufFallback)}'`)
  }
  // Unknown or unbuilt formats fail before the model is read.
  exportFormat(formatId, resolve(out))
  const tokenizer = args.flags.get('tokenizer')
  const tokenizerPath = typeof tokenizer === 'string' ? resolve(tokenizer) : undefined

  const model = await openModel(modelPath)
  try {
    const planned = await planArgument(model, args, tokenizerPath)
    if (!planned) throw new UsageError(`export needs ${PLAN_FLAGS}`)
    const controller = new AbortController()
    process.once('SIGINT', () => controller.abort())
    const report = await runExport(
      {
        model,
        modelPath: resolve(modelPath),
        plan: planned.plan,
        planSource: planned.source,
        format: formatId,
        out,
        options: {
          calibration: planned.calibration,
          ...(dtype ? { dtype: dtype as ExportFloatType } : {}),
          ...(typeof ggufFallback === 'string' ? { formatOptions: { [GGUF_FALLBACK_OPTION]: ggufFallback } } : {}),
        },
      },
      {
        signal: controller.signal,
        onProgress: (p) => progressLine(p.stage, p.done, p.total),
      },
    )
    for (const note of report.notes) process.stderr.write(`note: ${note}\n`)
    if (args.flags.has('json')) process.stdout.write(JSON.stringify(report) + '\n')
    else process.stdout.write(renderExport(report))
    return 0
  } finally {
    await model.close()
  }
}

function renderExport(r: ExportReport): string {
  const fallbacks = r.tensors.filter((t) => t.support === 'fallback').length
  const lines = [
    `path          ${r.path}`,
    `format        ${r.label}`,
    `plan          ${r.plan.source} (${r.plan.quantized} quantized tensors${fallbacks ? `, ${fallbacks} written by fallback` : ''})`,
    `bytes         ${r.bytes} (${formatBytes(r.bytes)}) in ${r.files.length} file(s)`,
    ...Object.entries(r.sections).map(([k, v]) => `  ${k.padEnd(12)}${String(v).padStart(14)}  ${formatBytes(v)}`),
    `time          ${r.seconds.toFixed(2)} s`,
    `report        ${r.reportPath}`,
  ]
  return lines.join('\n') + '\n'
}
