/**
 * Plans as the API meets them: checked against the open model (PlanError → an ApiError that
 * keeps the file, tensor and problem), named for run labels, and turned into the inference
 * variant "base + dequantised plan" (plan/apply.ts createOverrides, loaded by the inference
 * worker as an engine module).
 */
import type { OpenedModel } from '../formats/contract'
import type { VariantSpec } from '../inference/inference-protocol'
import { engineModuleUrl } from '../jobs/spawn-worker'
import { resolvePlanFor, type PlanOverridesOptions } from '../plan/apply'
import type { CalibrationOptions } from '../plan/calibration'
import { PlanError, type Plan, type ResolvedEntry } from '../plan/plan'
import { planSize, type PlanSize } from '../plan/size'
import { formatQuantSpec } from '../quant/spec'

/** A PlanError as the API reports it: name 'PlanError', with file (the plan's source), tensor and problem. */
export function planApiError(err: PlanError): Error {
  return Object.assign(new Error(err.message), { name: 'PlanError', file: err.source, tensor: err.tensor, problem: err.problem })
}

/** resolvePlanFor with API errors; `allowOtherModel` skips the fingerprint check (single-tensor previews). */
export function resolveForApi(model: OpenedModel, plan: Plan, source: string, allowOtherModel = false): ResolvedEntry[] {
  try {
    return resolvePlanFor(model, plan, source, allowOtherModel)
  } catch (err) {
    throw err instanceof PlanError ? planApiError(err) : err
  }
}

/**
 * A label for a plan: the spec when every planned tensor has the same method and params
 * ('rtn:bits=4,group=128,sym=false,clip=none'), else a summary ('plan: 12 tensors, gptq + rtn').
 */
export function planLabel(entries: readonly ResolvedEntry[]): string {
  if (entries.length === 0) return 'plan: nothing quantized'
  const specs = new Set(entries.map((e) => formatQuantSpec(e.methodId, e.params)))
  if (specs.size === 1) return [...specs][0]!
  const methods = [...new Set(entries.map((e) => e.methodId))].sort()
  return `plan: ${entries.length} tensors, ${methods.join(' + ')}`
}

export interface PlanVariant {
  label: string
  spec: VariantSpec
  size: PlanSize
}

/** The inference variant of an inline plan, checked against the model before any work. */
export function planVariant(model: OpenedModel, plan: Plan, name: string | undefined, calibration?: CalibrationOptions): PlanVariant {
  const source = name ? `plan '${name}'` : 'plan'
  const entries = resolveForApi(model, plan, source)
  const label = name ?? planLabel(entries)
  const options: PlanOverridesOptions = { plan, source, ...(calibration ? { calibration } : {}) }
  return {
    label,
    size: planSize(model, entries),
    spec: { label, overridesModule: { module: engineModuleUrl('plan-overrides'), exportName: 'createOverrides', options } },
  }
}
