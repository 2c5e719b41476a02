/**
 * llama.cpp's quantization mixes (plan/llama-cpp-presets.ts) as the API offers them: the preset
 * names, and a preset made into a plan for the open model, checked against it like any plan and
 * sized, so the plan editor can start from the mix a user knows and edit it from there.
 */
import { LLAMA_CPP_PRESETS, planFromLlamaCppPreset } from '../plan/llama-cpp-presets'
import { PlanError, type Plan } from '../plan/plan'
import { planSize } from '../plan/size'
import type { LlamaCppPresetPlan } from './contract'
import { EngineError } from './errors'
import { planApiError, resolveForApi } from './plan-variants'
import type { OpenedModelHandle } from './quant-api'

export function llamaCppPresetNames(): string[] {
  return [...LLAMA_CPP_PRESETS]
}

/** The preset's plan for the model; a preset that quantizes nothing of it is refused, naming why. */
export function llamaCppPresetPlan(handle: OpenedModelHandle, preset: string): LlamaCppPresetPlan {
  if (!(LLAMA_CPP_PRESETS as readonly string[]).includes(preset)) {
    throw new EngineError('BadRequest', `llamaCppPresetPlan: unknown llama.cpp preset '${preset}' (presets: ${LLAMA_CPP_PRESETS.join(', ')})`)
  }
  const { model } = handle
  const source = `llama.cpp preset ${preset}`
  let plan: Plan
  try {
    plan = planFromLlamaCppPreset(model, preset)
  } catch (err) {
    throw err instanceof PlanError ? planApiError(err) : err
  }
  // Checked like a saved plan: a stored type this build cannot decode, say, names its tensor.
  const entries = resolveForApi(model, plan, source)
  const kept = Object.entries(plan.tensors)
    .filter(([, e]) => e === 'keep')
    .map(([name]) => name)
  if (entries.length === 0) {
    const first = kept[0]
    const shape = first ? model.tensors.find((t) => t.name === first)?.shape : undefined
    throw planApiError(
      first
        ? new PlanError(source, first, `its rows of ${shape?.[1] ?? '?'} values are not whole 32-value ggml blocks, and neither are any other weight's: llama-quantize would keep every weight of ${handle.summary.name} as F16, so the preset quantizes nothing`)
        : new PlanError(source, null, `${handle.summary.name} has no weight llama-quantize quantizes (no token embedding, attention or MLP linear of a recognised decoder layout)`),
    )
  }
  const counts: Record<string, number> = {}
  for (const e of Object.values(plan.tensors)) {
    const type = e === 'keep' ? 'keep' : String(e.params?.type)
    counts[type] = (counts[type] ?? 0) + 1
  }
  return { preset, name: `llama.cpp ${preset}`, plan, size: planSize(model, entries), counts, kept }
}
