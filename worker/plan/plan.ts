/**
 * A quantization plan: plain JSON that maps tensors of one model to a method of the library
 * ({ method, params }) or 'keep'. Tensors a plan does not name are kept as stored. The CLI
 * (`--plan FILE`), the UI's plan editor and scripts read and write the same file; the schema
 * below is the only definition of it.
 *
 *   { "format": "quantscope-plan", "version": 1,
 *     "model": { "name": "default", "fingerprint": "…" },
 *     "tensors": { "model.layers.0.self_attn.q_proj.weight": { "method": "rtn", "params": { "bits": 4, … } }, … } }
 *
 * The fingerprint identifies the model's tensor layout (names, shapes, dtypes, architecture),
 * not its file bytes, so a plan follows a model that is copied or re-saved unchanged.
 */
import { createHash } from 'node:crypto'
import * as v from 'valibot'
import type { OpenedModel, TensorEntry } from '../formats/contract'
import { classifyTensor, LINEAR_ROLES } from '../model/logical-model'
import { QuantParamError } from '../quant/contract'
import { QUANT_METHODS } from '../quant/registry'
import { parseQuantParams, parseQuantSpec } from '../quant/spec'
import { PLAN_FORMAT, PLAN_VERSION, PlanSchema, type Plan, type PlanEntry } from './plan-schema'

export { PLAN_FORMAT, PLAN_VERSION, PlanEntrySchema, PlanSchema, type Plan, type PlanEntry } from './plan-schema'

/** A plan or a plan file that does not fit the model or the library; names the file and tensor. */
export class PlanError extends Error {
  constructor(
    readonly source: string,
    readonly tensor: string | null,
    readonly problem: string,
  ) {
    super(`${source}${tensor ? `: tensor '${tensor}'` : ''}: ${problem}`)
    this.name = 'PlanError'
  }
}

/** Identity of a model's tensor layout (architecture, names, dtypes, shapes). */
export function modelFingerprint(model: OpenedModel): string {
  const h = createHash('sha256')
  h.update(`${model.architecture ?? ''}\n`)
  const tensors = model.tensors.filter((t) => !t.derivedFrom).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))
  for (const t of tensors) h.update(`${t.name}\u0000${t.dtype}\u0000${t.shape.join(',')}\n`)
  return h.digest('hex').slice(0, 32)
}

export function modelDisplayName(model: OpenedModel): string {
  const first = model.files[0] ?? 'model'
  const parts = first.split(/[\\/]/)
  return parts.length >= 2 ? parts[parts.length - 2]! : parts[0]!
}

/** The decoder blocks' linear weights (q k v o gate up down), 2-D and decodable: what a uniform spec quantizes. */
export function decoderLinearWeights(model: OpenedModel): TensorEntry[] {
  const roles = new Set<string>(LINEAR_ROLES)
  return model.tensors.filter((t) => {
    if (t.shape.length !== 2 || !t.decodable) return false
    const c = classifyTensor(t.alias ?? t.name)
    return c.layer !== null && c.role !== null && roles.has(c.role)
  })
}

/** A plan applying one spec (`rtn:bits=4,group=128`) to every decoder linear weight. */
export function planFromSpec(model: OpenedModel, spec: string): Plan {
  const { method, params } = parseQuantSpec(spec)
  const targets = decoderLinearWeights(model)
  if (targets.length === 0) throw new PlanError(model.files[0] ?? 'model', null, 'no decoder linear weights found to quantize')
  const tensors: Record<string, PlanEntry> = {}
  for (const t of targets) tensors[t.name] = { method: method.id, params: params as Record<string, number | boolean | string> }
  return { format: PLAN_FORMAT, version: PLAN_VERSION, model: { name: modelDisplayName(model), fingerprint: modelFingerprint(model) }, tensors }
}

/** Parses plan JSON (text or value) against the schema; `source` names it in errors. */
export function parsePlan(json: unknown, source: string): Plan {
  let value = json
  if (typeof json === 'string') {
    try {
      value = JSON.parse(json)
    } catch (err) {
      throw new PlanError(source, null, `not valid JSON: ${(err as Error).message}`)
    }
  }
  const res = v.safeParse(PlanSchema, value)
  if (res.success) return res.output
  const issue = res.issues[0]
  const path = issue.path?.map((p) => String(p.key)).join('.') ?? ''
  throw new PlanError(source, null, `${path ? `${path}: ` : ''}${issue.message}`)
}

/** One planned tensor, checked against the model and the method's schema. */
export interface ResolvedEntry {
  tensor: TensorEntry
  methodId: string
  params: Record<string, unknown>
  /** HF orientation [out, in] of the weight the method sees. */
  rows: number
  cols: number
}

/**
 * Checks a plan against a model before any work: every tensor exists, is a decodable 2-D
 * weight, every method and param is valid, and the shape fits the params (e.g. the group
 * divides the row). Returns the quantized entries in model order; 'keep' entries drop out.
 * `orientedShape` gives the [out, in] shape the quantizer sees (ONNX stores MatMul weights
 * transposed); by default the stored shape.
 */
export function resolvePlan(
  model: OpenedModel,
  plan: Plan,
  source: string,
  options: { orientedShape?(t: TensorEntry): [number, number]; allowOtherModel?: boolean } = {},
): ResolvedEntry[] {
  if (!options.allowOtherModel && plan.model.fingerprint !== modelFingerprint(model)) {
    throw new PlanError(source, null, `made for another model ('${plan.model.name}', fingerprint ${plan.model.fingerprint}); this one is ${modelFingerprint(model)}`)
  }
  const byName = new Map(model.tensors.map((t) => [t.name, t]))
  const out: ResolvedEntry[] = []
  for (const [name, entry] of Object.entries(plan.tensors)) {
    const tensor = byName.get(name)
    if (!tensor) throw new PlanError(source, name, 'the model has no such tensor')
    if (entry === 'keep') continue
    if (tensor.shape.length !== 2) throw new PlanError(source, name, `only 2-D weights can be quantized; this one is [${tensor.shape.join(', ')}]`)
    if (!tensor.decodable) throw new PlanError(source, name, `stored type ${tensor.dtype} cannot be decoded by this build`)
    const method = QUANT_METHODS.get(entry.method)
    if (!method) throw new PlanError(source, name, `unknown method '${entry.method}' (methods: ${[...QUANT_METHODS.keys()].join(', ')})`)
    const [rows, cols] = options.orientedShape?.(tensor) ?? (tensor.shape as [number, number])
    let params: Record<string, unknown>
    try {
      params = parseQuantParams(method, entry.params, entry.method)
      method.storage(rows, cols, params)
    } catch (err) {
      if (err instanceof QuantParamError) throw new PlanError(source, name, err.problem)
      throw err
    }
    out.push({ tensor, methodId: method.id, params, rows, cols })
  }
  const order = new Map(model.tensors.map((t, i) => [t.name, i]))
  return out.sort((a, b) => order.get(a.tensor.name)! - order.get(b.tensor.name)!)
}
