/**
 * Recipes: a plan tuned on a small model, written for the tools that quantize big ones on GPU
 * servers. No model is read: roles and layers come from the plan's tensor names (HF naming).
 *
 * - llm-compressor: a recipe YAML with one modifier per method kind (QuantizationModifier for
 *   RTN, GPTQModifier, AWQModifier), each with `config_groups` {targets, weights: {num_bits,
 *   type: int, symmetric, strategy, group_size}} and `ignore`. Targets are `re:` patterns by
 *   role (`re:.*self_attn\.q_proj$`) where every layer of the role has the same scheme, per layer
 *   otherwise (those do not transfer to a model of another depth: the recipe says so).
 * - llama.cpp: `llama-quantize --tensor-type PATTERN=TYPE … IN.gguf OUT.gguf BASE`, with ggml
 *   types as planned, other methods at the ggml type nearest in bits (listed as such).
 * Methods a tool cannot express are listed in the recipe as comments, never silently dropped.
 */
import { classifyTensor } from '../model/logical-model'
import type { Plan } from '../plan/plan'
import { QUANT_METHODS } from '../quant/registry'
import { parseQuantParams } from '../quant/spec'

export type RecipeTarget = 'llama.cpp' | 'llm-compressor'

export interface Recipe {
  text: string
  /** Tensors the tool cannot express as planned: what was done with them. */
  warnings: string[]
}

interface PlannedModule {
  tensor: string
  module: string
  layer: number | null
  role: string | null
  methodId: string
  params: Record<string, unknown>
}

function plannedModules(plan: Plan): PlannedModule[] {
  const out: PlannedModule[] = []
  for (const [tensor, entry] of Object.entries(plan.tensors)) {
    if (entry === 'keep') continue
    const method = QUANT_METHODS.get(entry.method)
    const params = method ? parseQuantParams(method, entry.params, entry.method) : { ...entry.params }
    const c = classifyTensor(tensor)
    out.push({ tensor, module: tensor.replace(/\.weight$/, ''), layer: c.layer, role: c.role, methodId: entry.method, params })
  }
  return out
}

const escapeRe = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')

/** Groups modules by a key; a role whose every planned layer shares the key becomes one pattern. */
function patterns<T extends PlannedModule>(modules: T[], key: (m: T) => string, rolePattern: (m: T) => string, layerPattern: (m: T) => string): Map<string, { patterns: string[]; sample: T; perLayer: boolean }> {
  const layersOfRole = new Map<string, Set<number>>()
  const keysOfRole = new Map<string, Set<string>>()
  for (const m of modules) {
    if (m.layer === null || m.role === null) continue
    if (!layersOfRole.has(m.role)) layersOfRole.set(m.role, new Set())
    if (!keysOfRole.has(m.role)) keysOfRole.set(m.role, new Set())
    layersOfRole.get(m.role)!.add(m.layer)
    keysOfRole.get(m.role)!.add(key(m))
  }
  const layerCount = Math.max(0, ...modules.map((m) => (m.layer ?? -1) + 1))
  const out = new Map<string, { patterns: string[]; sample: T; perLayer: boolean }>()
  const emitted = new Set<string>()
  for (const m of modules) {
    const k = key(m)
    if (!out.has(k)) out.set(k, { patterns: [], sample: m, perLayer: false })
    const group = out.get(k)!
    const wholeRole = m.role !== null && m.layer !== null && keysOfRole.get(m.role)!.size === 1 && layersOfRole.get(m.role)!.size === layerCount
    if (wholeRole) {
      const p = rolePattern(m)
      if (!emitted.has(p)) group.patterns.push(p)
      emitted.add(p)
    } else {
      group.patterns.push(layerPattern(m))
      if (m.layer !== null) group.perLayer = true
    }
  }
  return out
}

/** A YAML flow mapping: `{num_bits: 4, type: int, group_size: null}`. */
function flowMapping(o: Record<string, unknown>): string {
  return `{${Object.entries(o).map(([k, v]) => `${k}: ${v === null ? 'null' : String(v)}`).join(', ')}}`
}

const MODIFIERS: Record<string, string> = { rtn: 'QuantizationModifier', gptq: 'GPTQModifier', awq: 'AWQModifier' }

export function llmCompressorRecipe(plan: Plan): Recipe {
  const warnings: string[] = []
  const modules = plannedModules(plan)
  const usable = modules.filter((m) => {
    if (!(m.methodId in MODIFIERS)) {
      warnings.push(`${m.tensor}: ${m.methodId} has no llm-compressor modifier; left out of the recipe (kept unquantized there)`)
      return false
    }
    return true
  })
  const lines = [
    `# llm-compressor recipe from Quantscope plan '${plan.model.name}'${plan.description ? `: ${plan.description}` : ''}`,
    '# Run (Python, GPU server):',
    '#   from llmcompressor import oneshot',
    '#   oneshot(model="MODEL", dataset="open_platypus", recipe="recipe.yaml",',
    '#           max_seq_length=2048, num_calibration_samples=512, output_dir="MODEL-quantized")',
    'quant_stage:',
    '  quant_modifiers:',
  ]
  for (const [methodId, modifier] of Object.entries(MODIFIERS)) {
    const mine = usable.filter((m) => m.methodId === methodId)
    if (mine.length === 0) continue
    const weightArgs = (m: PlannedModule) => {
      const group = m.params.group as number
      return JSON.stringify({ num_bits: m.params.bits, type: 'int', symmetric: m.params.sym === true, strategy: group === 0 ? 'channel' : 'group', group_size: group === 0 ? null : group, ...(methodId === 'gptq' ? { actorder: m.params.actorder === true ? 'weight' : null } : {}) })
    }
    const groups = patterns(mine, weightArgs, (m) => `re:.*${escapeRe(m.module.replace(/^.*layers\.\d+\./, ''))}$`, (m) => `re:.*${escapeRe(m.module.replace(/^.*?(layers\.\d+\.)/, '$1'))}$`)
    lines.push(`    ${modifier}:`)
    if (methodId === 'gptq') {
      const first = mine[0]!.params
      lines.push(`      dampening_frac: ${first.damp}`, `      block_size: ${first.blocksize}`)
    }
    if (methodId === 'rtn' && mine.some((m) => m.params.sym !== true)) {
      lines.push("      # asymmetric RTN: llm-compressor stores an integer zero point (Quantscope's rtn an fp16 minimum) — close, not identical")
    }
    lines.push('      ignore: ["lm_head"]', '      config_groups:')
    let i = 0
    for (const g of groups.values()) {
      if (g.perLayer) lines.push('        # per-layer targets: they name layers of the plan\'s model, and do not transfer to a model of another depth')
      lines.push(`        group_${i++}:`, `          targets: ${JSON.stringify(g.patterns)}`, `          weights: ${flowMapping(JSON.parse(weightArgs(g.sample)))}`)
    }
  }
  if (usable.length === 0) lines.push('    {}  # nothing in the plan has an llm-compressor modifier')
  for (const w of warnings) lines.push(`# not in the recipe: ${w}`)
  return { text: lines.join('\n') + '\n', warnings }
}

/** HF role → llama.cpp tensor name (convert_hf_to_gguf.py's tensor map for llama-like models). */
const GGUF_ROLE: Record<string, string> = { q: 'attn_q', k: 'attn_k', v: 'attn_v', o: 'attn_output', gate: 'ffn_gate', up: 'ffn_up', down: 'ffn_down' }
const NEAREST_GGML: Record<number, string> = { 2: 'Q2_K', 3: 'Q3_K', 4: 'Q4_K', 5: 'Q5_K', 6: 'Q6_K', 7: 'Q6_K', 8: 'Q8_0' }

export function llamaCppRecipe(plan: Plan): Recipe {
  const warnings: string[] = []
  const modules = plannedModules(plan).filter((m) => {
    if (m.role === 'lm_head' || m.role === 'embed' || (m.role !== null && m.role in GGUF_ROLE && m.layer !== null)) return true
    warnings.push(`${m.tensor}: no llama.cpp tensor name known for it; left to llama-quantize's default`)
    return false
  })
  let imatrix = false
  const nearest = new Map<string, number>()
  const typed = modules.map((m) => {
    let type: string
    if (m.methodId === 'ggml') {
      type = String(m.params.type)
      imatrix ||= m.params.imatrix === true
    } else {
      const method = QUANT_METHODS.get(m.methodId)
      const bits = method ? Math.round(method.bits(m.params)) : 4
      type = NEAREST_GGML[Math.min(8, Math.max(2, bits))]!
      const what = `${m.methodId} ${bits}-bit has no ggml type: ${type}, the nearest in bits`
      nearest.set(what, (nearest.get(what) ?? 0) + 1)
    }
    return { ...m, type: type.toLowerCase() }
  })
  for (const [what, n] of nearest) warnings.push(`${what} (${n} tensor${n === 1 ? '' : 's'})`)
  const gguf = (m: PlannedModule) => (m.role === 'lm_head' ? 'output' : m.role === 'embed' ? 'token_embd' : GGUF_ROLE[m.role!]!)
  const groups = patterns(typed, (m) => m.type, (m) => gguf(m), (m) => (m.layer === null ? gguf(m) : `blk\\.${m.layer}\\.${gguf(m)}`))
  const counts = new Map<string, number>()
  for (const m of typed) counts.set(m.type, (counts.get(m.type) ?? 0) + 1)
  const base = [...counts.entries()].sort((a, b) => b[1] - a[1])[0]?.[0] ?? 'q8_0'
  const overrides: string[] = []
  for (const [type, g] of groups) for (const p of g.patterns) overrides.push(`${p}=${type}`)
  const lines = [
    `# llama.cpp recipe from Quantscope plan '${plan.model.name}'${plan.description ? `: ${plan.description}` : ''}`,
    '# per-tensor type overrides (llama-quantize --tensor-type PATTERN=TYPE, PATTERN a regex on GGUF tensor names):',
    ...overrides.map((o) => `--tensor-type ${o}`),
    '# full command (MODEL-F16.gguf from convert_hf_to_gguf.py; tensors not named above get llama-quantize\'s choice for the base type):',
    `llama-quantize ${imatrix ? '--imatrix imatrix.dat ' : ''}${overrides.map((o) => `--tensor-type '${o}'`).join(' ')} MODEL-F16.gguf MODEL-${base.toUpperCase()}-plan.gguf ${base.toUpperCase()}`,
    ...warnings.map((w) => `# ${w}`),
  ]
  return { text: lines.join('\n') + '\n', warnings }
}

export function recipeFor(plan: Plan, target: RecipeTarget): Recipe {
  return target === 'llama.cpp' ? llamaCppRecipe(plan) : llmCompressorRecipe(plan)
}
