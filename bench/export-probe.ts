// Child process of the export bench: one export in a fresh process, so its peak resident memory
// (VmHWM) is the export's own and not whatever the bench did before. Does what `cli export`
// does (plan from a spec, runExport) and prints one JSON line; a failed export exits 1 with the
// reason on stderr, so the bench fails loudly instead of printing a figure for nothing.
// Usage: node --import tsx bench/export-probe.ts '{"model":…,"format":…,"spec":…|null,"out":…,"dtype"?:…}'
// spec null: a plan that keeps every tensor (e.g. the F16 GGUF llama-quantize starts from).
import { readFileSync } from 'node:fs'
import { openModel } from '../worker/formats/open-model'
import { runExport } from '../worker/export/run-export'
import type { ExportFloatType, ExportProgress } from '../worker/export/contract'
import { modelDisplayName, modelFingerprint, PLAN_FORMAT, PLAN_VERSION, planFromSpec, type Plan } from '../worker/plan/plan'

export interface ExportProbeRequest {
  model: string
  format: string
  spec: string | null
  out: string
  dtype?: ExportFloatType
}

export interface ExportProbeResult {
  /** runExport's own seconds (plan resolution, quantization, writing, rename, report). */
  seconds: number
  /** Bytes written (all files of the export). */
  bytes: number
  /** CPU seconds (user + system) of this process during the export: less sensitive than wall time to a busy machine. */
  cpuSeconds: number
  /** VmRSS after imports and opening the model, just before the export starts. */
  baselineRssMB: number
  /** VmHWM at the end: the process's peak resident memory. */
  peakRssMB: number
  /**
   * Highest RSS sampled (every 20 ms and at each progress event) between the first progress
   * event of layer 1 and the last of the second-to-last layer: the memory while streaming decoder
   * layers, apart from the embedding and output tensors at either end. Null without such events.
   */
  layersPeakRssMB: number | null
  quantized: number
  fallbacks: number
}

/** A field of /proc/self/status in MB (Linux; reported in kB there). */
function procStatusMB(field: 'VmRSS' | 'VmHWM'): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync('/proc/self/status', 'utf8'))
  if (!m) throw new Error(`export-probe: no ${field} in /proc/self/status (Linux only)`)
  return Number(m[1]) / 1024
}

async function main(): Promise<void> {
  const req = JSON.parse(process.argv[2] ?? 'null') as ExportProbeRequest | null
  if (!req?.model || !req.format || !req.out) throw new Error('usage: export-probe.ts \'{"model","format","spec","out","dtype"?}\'')
  const model = await openModel(req.model)
  try {
    const plan: Plan = req.spec
      ? planFromSpec(model, req.spec)
      : { format: PLAN_FORMAT, version: PLAN_VERSION, model: { name: modelDisplayName(model), fingerprint: modelFingerprint(model) }, tensors: {} }
    const baselineRssMB = procStatusMB('VmRSS')
    const lastMiddleLayer = (model.config?.numLayers ?? 0) - 2
    const samples: { t: number; rss: number }[] = []
    const sample = () => samples.push({ t: performance.now(), rss: process.memoryUsage.rss() })
    const timer = setInterval(sample, 20)
    let windowStart = Infinity
    let windowEnd = -Infinity
    const cpu0 = process.cpuUsage()
    const request = {
      model,
      modelPath: req.model,
      plan,
      planSource: req.spec ? `spec ${req.spec}` : 'keep every tensor',
      format: req.format,
      out: req.out,
      options: req.dtype ? { dtype: req.dtype } : {},
    }
    const onProgress = (p: ExportProgress) => {
      sample()
      const layer = /(?:^|\.)(?:layers|blk)\.(\d+)\./.exec(p.tensor ?? '')
      if (layer && Number(layer[1]) >= 1 && Number(layer[1]) <= lastMiddleLayer) {
        windowStart = Math.min(windowStart, performance.now())
        windowEnd = Math.max(windowEnd, performance.now())
      }
    }
    let report
    try {
      report = await runExport(request, { onProgress })
    } finally {
      clearInterval(timer)
    }
    const inWindow = samples.filter((s) => s.t >= windowStart && s.t <= windowEnd)
    const cpu = process.cpuUsage(cpu0)
    const result: ExportProbeResult = {
      seconds: report.seconds,
      cpuSeconds: (cpu.user + cpu.system) / 1e6,
      bytes: report.bytes,
      baselineRssMB,
      peakRssMB: procStatusMB('VmHWM'),
      layersPeakRssMB: inWindow.length ? Math.max(...inWindow.map((s) => s.rss)) / 2 ** 20 : null,
      quantized: report.plan.quantized,
      fallbacks: report.tensors.filter((t) => t.support === 'fallback').length,
    }
    process.stdout.write(JSON.stringify(result) + '\n')
  } finally {
    await model.close()
  }
}

main().catch((err: unknown) => {
  process.stderr.write(`export-probe: export failed: ${err instanceof Error ? err.message : String(err)}\n`)
  process.exit(1)
})
