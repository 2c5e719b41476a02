/**
 * The acceptance run of "beat llama.cpp's own mixes" (issue 11): per-tensor ΔKLD of every
 * tensor llama-quantize quantizes (embeddings and output included) at each K type, measured on
 * the calibration text, then the optimal allocator at exactly the GGUF data-section bytes of
 * llama.cpp's presets. Writes the fixtures test/unit/allocation-vs-llamacpp.test.ts checks:
 *   test/fixtures/allocation/sensitivity-ggml-k.json   the ΔKLD table and how it was measured
 *   test/fixtures/allocation/optimal-<PRESET>.plan.json the allocator's plan at the preset's size
 *   test/fixtures/allocation/presets.json               each preset's GGUF data-section bytes
 *
 *   npx tsx scripts/allocation-vs-llamacpp.ts [--presets Q3_K_M,Q2_K,Q4_K_M] [--windows 4] [--backend native]
 *
 * ΔKLD figures are cached (plan/sensitivity.ts), so a second run only re-solves.
 */
import { mkdir, writeFile } from 'node:fs/promises'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'
import { openModel } from '../worker/formats/open-model'
import { openTokenizer, tokensOf } from '../worker/inference/text-source'
import { allocate, allocationTargets, parseOptionSpecs } from '../worker/plan/allocate'
import { resolvePlanFor } from '../worker/plan/apply'
import { DEFAULT_CALIBRATION_TEXT } from '../worker/plan/calibration'
import { planFromLlamaCppPreset, type LlamaCppPreset } from '../worker/plan/llama-cpp-presets'
import { memoryModel } from '../worker/plan/memory-model'
import { measureSensitivity } from '../worker/plan/sensitivity'
import type { BackendKind } from '../worker/inference/ort-backend'

const ROOT = join(fileURLToPath(new URL('.', import.meta.url)), '..')
const MODEL = join(ROOT, 'resources/models/default')
const OUT = join(ROOT, 'test/fixtures/allocation')
export const K_OPTIONS = 'ggml:type=Q6_K;ggml:type=Q5_K;ggml:type=Q4_K;ggml:type=Q3_K;ggml:type=Q2_K'

function flag(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 && process.argv[i + 1] ? process.argv[i + 1]! : fallback
}

async function main(): Promise<void> {
  const presets = flag('presets', 'Q3_K_M,Q2_K,Q4_K_M').split(',') as LlamaCppPreset[]
  const windows = Number(flag('windows', '4'))
  const backend = flag('backend', 'native') as BackendKind
  const ctx = 256
  const model = await openModel(MODEL)
  try {
    const options = parseOptionSpecs(K_OPTIONS)
    const memory = { format: 'gguf' as const, kv: null }
    const sizes: Record<string, number> = {}
    for (const p of presets) sizes[p] = memoryModel(model, resolvePlanFor(model, planFromLlamaCppPreset(model, p), p), memory).total
    process.stderr.write(`preset GGUF data sections: ${JSON.stringify(sizes)}\n`)
    const ids = await tokensOf({ file: DEFAULT_CALIBRATION_TEXT }, () => openTokenizer(model))
    const t0 = performance.now()
    const costs = await measureSensitivity(
      { model, tensors: allocationTargets(model, true), options, ids, ctx, maxWindows: windows, backend, threads: 2 },
      { onProgress: (p) => process.stderr.write(`ΔKLD ${p.done}/${p.total} ${p.tensor} ${p.option} ${p.kld.toExponential(4)}${p.cached ? ' (cached)' : ''} ${((performance.now() - t0) / 1000).toFixed(0)} s\n`) },
    )
    await mkdir(OUT, { recursive: true })
    const table: Record<string, Record<string, number>> = {}
    for (const [t, row] of costs) table[t] = Object.fromEntries(row)
    const measuredOn = { model: relative(ROOT, MODEL), text: relative(ROOT, DEFAULT_CALIBRATION_TEXT), ctx, windows, backend, tokens: ids.length }
    await writeFile(
      join(OUT, 'sensitivity-ggml-k.json'),
      JSON.stringify({ what: 'mean KL (nats per predicted token) of the model with only that tensor quantized to that option vs the bf16 model, on the first windows of the calibration text (plan/sensitivity.ts measureSensitivity)', measuredOn, options: K_OPTIONS, table }, null, 1) + '\n',
    )
    await writeFile(join(OUT, 'presets.json'), JSON.stringify({ what: 'GGUF data-section bytes of llama.cpp presets (memory model gguf = the export data section)', model: relative(ROOT, MODEL), ggufDataBytes: sizes }, null, 1) + '\n')
    for (const p of presets) {
      const r = allocate({ model, allocator: 'optimal', budget: { kind: 'bytes', bytes: sizes[p]!, text: String(sizes[p]) }, options, memory, allTensors: true, costs })
      await writeFile(join(OUT, `optimal-${p}.plan.json`), JSON.stringify(r.plan, null, 2) + '\n')
      process.stderr.write(`${p}: budget ${sizes[p]} → ${r.bytes.total} bytes, ${r.bitsPerWeight.toFixed(4)} bpw, ΣΔKLD ${r.predictedKld?.toFixed(6)}, exact ${r.exact}, ${JSON.stringify(r.counts)}\n`)
    }
  } finally {
    await model.close()
  }
}

void main().catch((err: unknown) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`)
  process.exit(1)
})
