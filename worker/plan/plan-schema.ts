/**
 * The plan file's schema alone (valibot only, no Node): plan.ts builds, parses and resolves
 * plans with it, and the API's parameter schemas (worker/api/schemas.ts) check inline plans
 * with it, so the UI's type-only view of the contract never pulls in the engine.
 * See plan.ts for the format.
 */
import * as v from 'valibot'

export const PLAN_FORMAT = 'quantscope-plan'
export const PLAN_VERSION = 1

const MethodEntrySchema = v.strictObject({
  method: v.pipe(v.string(), v.minLength(1)),
  params: v.optional(v.record(v.string(), v.union([v.number(), v.boolean(), v.string()])), {}),
})

export const PlanEntrySchema = v.union([v.literal('keep'), MethodEntrySchema])

export const PlanSchema = v.strictObject({
  format: v.literal(PLAN_FORMAT),
  version: v.literal(PLAN_VERSION),
  model: v.strictObject({ name: v.string(), fingerprint: v.pipe(v.string(), v.minLength(1)) }),
  /** Optional free text: what the plan is for. */
  description: v.optional(v.string()),
  tensors: v.record(v.pipe(v.string(), v.minLength(1)), PlanEntrySchema),
})

export type PlanEntry = v.InferOutput<typeof PlanEntrySchema>
export type Plan = v.InferOutput<typeof PlanSchema>
