import { resolve } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { assertRegularFile, readRegularTextFile } from '../io/regular-file'
import { resolvePlanFor } from '../plan/apply'
import { calibrationNeeds, DEFAULT_CALIBRATION_TEXT, DEFAULT_PROMPT_TEXT, type CalibrationOptions } from '../plan/calibration'
import { parsePlan, planFromSpec, type Plan, type ResolvedEntry } from '../plan/plan'
import { UsageError, type ParsedArgs } from './args'

/** Plans are small JSON files; a multi-GB file given as a plan is refused before it is read. */
const MAX_PLAN_BYTES = 64 << 20

export interface PlanArgument {
  plan: Plan
  /** 'spec rtn:bits=4' or the plan file's path, for messages and reports. */
  source: string
  entries: ResolvedEntry[]
  calibration: CalibrationOptions
}

/**
 * `--quant SPEC` or `--plan FILE` (exactly one), checked against the model before any work:
 * methods, params, shapes, and the calibration texts the methods will read.
 */
export async function planArgument(model: OpenedModel, args: ParsedArgs, tokenizer?: string): Promise<PlanArgument | null> {
  const spec = args.flags.get('quant')
  const file = args.flags.get('plan')
  if (spec === undefined && file === undefined) {
    if (args.flags.has('calib')) throw new UsageError('--calib goes with --quant or --plan')
    return null
  }
  if (spec !== undefined && file !== undefined) throw new UsageError('give --quant SPEC or --plan FILE, not both')
  let plan: Plan
  let source: string
  if (typeof spec === 'string') {
    source = `spec ${spec}`
    plan = planFromSpec(model, spec)
  } else {
    source = resolve(String(file))
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
