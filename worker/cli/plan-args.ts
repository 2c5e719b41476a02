import { resolve } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { assertRegularFile, readRegularTextFile } from '../io/regular-file'
import { resolvePlanFor } from '../plan/apply'
import { calibrationNeeds, DEFAULT_CALIBRATION_TEXT, DEFAULT_PROMPT_TEXT, type CalibrationOptions } from '../plan/calibration'
import { LLAMA_CPP_PRESETS, planFromLlamaCppPreset, type LlamaCppPreset } from '../plan/llama-cpp-presets'
import { parsePlan, planFromSpec, type Plan, type ResolvedEntry } from '../plan/plan'
import { UsageError, type ParsedArgs } from './args'

/** Plans are small JSON files; a multi-GB file given as a plan is refused before it is read. */
const MAX_PLAN_BYTES = 64 << 20

/** The three ways to give a plan, for usage lines and messages. */
export const PLAN_FLAGS = '--quant SPEC, --plan FILE or --preset NAME'

/** Whether the command line gives a plan (or a calibration text, which needs one). */
export function hasPlanArgument(args: ParsedArgs): boolean {
  return args.flags.has('quant') || args.flags.has('plan') || args.flags.has('preset') || args.flags.has('calib')
}

export interface PlanArgument {
  plan: Plan
  /** 'spec rtn:bits=4', 'preset Q4_K_M' or the plan file's path, for messages and reports. */
  source: string
  entries: ResolvedEntry[]
  calibration: CalibrationOptions
}

/** Which of the three plan flags the command line gives, checked without the model. */
export type PlanFlag = { kind: 'spec'; spec: string } | { kind: 'file'; file: string } | { kind: 'preset'; preset: LlamaCppPreset }

/**
 * The plan flag given (null for none), or a usage error: more than one, `--calib` without a
 * plan, an unknown preset name. Cheap, so commands call it before they open the model.
 */
export function planFlag(args: ParsedArgs): PlanFlag | null {
  const spec = args.flags.get('quant')
  const file = args.flags.get('plan')
  const preset = args.flags.get('preset')
  const given = [spec, file, preset].filter((v) => v !== undefined).length
  if (given === 0) {
    if (args.flags.has('calib')) throw new UsageError(`--calib goes with ${PLAN_FLAGS}`)
    return null
  }
  if (given > 1) throw new UsageError(`give one of ${PLAN_FLAGS}, not several`)
  if (typeof spec === 'string') return { kind: 'spec', spec }
  if (typeof file === 'string') return { kind: 'file', file }
  if (!(LLAMA_CPP_PRESETS as readonly unknown[]).includes(preset)) {
    throw new UsageError(`unknown --preset '${String(preset)}' (llama.cpp presets: ${LLAMA_CPP_PRESETS.join(', ')})`)
  }
  return { kind: 'preset', preset: preset as LlamaCppPreset }
}

/**
 * `--quant SPEC`, `--plan FILE` or `--preset NAME` (exactly one), checked against the model
 * before any work: methods, params, shapes, and the calibration texts the methods will read.
 * A preset is one of llama-quantize's mixes (Q4_K_M …): the ggml type it gives each tensor.
 */
export async function planArgument(model: OpenedModel, args: ParsedArgs, tokenizer?: string): Promise<PlanArgument | null> {
  const given = planFlag(args)
  if (given === null) return null
  let plan: Plan
  let source: string
  if (given.kind === 'spec') {
    source = `spec ${given.spec}`
    plan = planFromSpec(model, given.spec)
  } else if (given.kind === 'preset') {
    source = `preset ${given.preset}`
    plan = planFromLlamaCppPreset(model, given.preset)
  } else {
    source = resolve(given.file)
    plan = parsePlan(await readRegularTextFile(source, MAX_PLAN_BYTES), source)
  }
  const entries = resolvePlanFor(model, plan, source)
  const calib = args.flags.get('calib')
  const calibration: CalibrationOptions = { tokenizer, ...(typeof calib === 'string' ? { text: { file: resolve(calib) } } : {}) }
  // The texts the methods will read must exist now, not after minutes of work.
  const needs = new Set(calibrationNeeds(entries).values())
  const texts = typeof calib === 'string' ? [resolve(calib)] : [...(needs.has('gram') ? [DEFAULT_CALIBRATION_TEXT] : []), ...(needs.has('activation-stats') ? [DEFAULT_PROMPT_TEXT] : [])]
  if (needs.size > 0) for (const t of texts) await assertRegularFile(t)
  return { plan, source, entries, calibration }
}
