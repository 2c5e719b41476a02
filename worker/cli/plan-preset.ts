import { rename, writeFile } from 'node:fs/promises'
import { resolve } from 'node:path'
import { openModel } from '../formats/open-model'
import { LLAMA_CPP_PRESETS, planFromLlamaCppPreset } from '../plan/llama-cpp-presets'
import { UsageError, type ParsedArgs } from './args'

/** Flags of the budget allocation that have no meaning for a preset. */
const ALLOCATION_FLAGS = ['budget', 'allocator', 'options', 'all-tensors', 'importance-file', 'kv-ctx', 'kv-batch', 'kv-bits']

export interface PresetPlanReport {
  out: string
  preset: string
  description: string
  /** Planned tensors per ggml type ('keep' where llama-quantize leaves a matrix in F16). */
  counts: Record<string, number>
}

/**
 * `plan MODEL --preset NAME --out plan.json [--json]`: llama-quantize's mix of that name as a
 * plan file, to edit, or to hand to `eval/export --plan` and `recipe --plan`.
 */
export async function runPresetPlan(args: ParsedArgs): Promise<number> {
  const modelPath = args.positionals[0]
  if (!modelPath || args.positionals.length > 1) throw new UsageError('plan takes exactly one MODEL')
  const preset = args.flags.get('preset')
  if (!(LLAMA_CPP_PRESETS as readonly unknown[]).includes(preset)) {
    throw new UsageError(`unknown --preset '${String(preset)}' (llama.cpp presets: ${LLAMA_CPP_PRESETS.join(', ')})`)
  }
  const allocation = ALLOCATION_FLAGS.filter((f) => args.flags.has(f))
  if (allocation.length > 0) throw new UsageError(`plan --preset writes llama.cpp's mix as it is; --${allocation[0]} belongs to a budget allocation (give one or the other)`)
  const out = args.flags.get('out')
  if (typeof out !== 'string') throw new UsageError('plan needs --out plan.json')
  const model = await openModel(modelPath)
  try {
    const plan = planFromLlamaCppPreset(model, String(preset))
    const path = resolve(out)
    // Staged and renamed, as the allocating plan command writes its file.
    const tmp = `${path}.partial-${process.pid}`
    await writeFile(tmp, JSON.stringify(plan, null, 2) + '\n', { flag: 'wx' })
    await rename(tmp, path)
    const counts: Record<string, number> = {}
    for (const e of Object.values(plan.tensors)) {
      const key = e === 'keep' ? 'keep' : String((e.params as { type?: unknown }).type)
      counts[key] = (counts[key] ?? 0) + 1
    }
    const report: PresetPlanReport = { out: path, preset: String(preset), description: plan.description ?? '', counts }
    if (args.flags.has('json')) process.stdout.write(JSON.stringify(report) + '\n')
    else process.stdout.write([`plan          ${path}`, `preset        ${report.description}`, ...Object.entries(counts).map(([t, n]) => `  ${String(n).padStart(4)} × ${t}`)].join('\n') + '\n')
    return 0
  } finally {
    await model.close()
  }
}
