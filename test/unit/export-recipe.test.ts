/**
 * Recipes: every planned tensor must be selected by the recipe with its own scheme, as the
 * tools select (llm-compressor: `re:` targets by regex match on module names; llama-quantize:
 * the first --tensor-type pattern found by regex search in the GGUF name). Checked by running
 * those selection rules over the plan's tensors and over a deeper model's names.
 */
import { resolve } from 'node:path'
import { beforeAll, afterAll, describe, expect, it } from 'vitest'
import type { OpenedModel } from '../../worker/formats/contract'
import { openModel } from '../../worker/formats/open-model'
import { llamaCppRecipe, llmCompressorRecipe } from '../../worker/export/recipe'
import { planFromSpec, type Plan } from '../../worker/plan/plan'

let model: OpenedModel
let uniform: Plan
let mixed: Plan
beforeAll(async () => {
  model = await openModel(resolve('resources/models/default'))
  uniform = planFromSpec(model, 'gptq:bits=4,group=128,sym=true')
  mixed = planFromSpec(model, 'gptq:bits=4,group=128')
  mixed.tensors['model.layers.3.mlp.down_proj.weight'] = { method: 'rtn', params: { bits: 8, group: 0, sym: true } }
  mixed.tensors['model.layers.5.self_attn.v_proj.weight'] = { method: 'nf4', params: {} }
})
afterAll(() => model.close())

/** config_groups of the recipe text: [modifier, targets, weights line] (the YAML written is line-oriented). */
function groups(text: string): { modifier: string; targets: string[]; weights: string }[] {
  const out: { modifier: string; targets: string[]; weights: string }[] = []
  let modifier = ''
  const lines = text.split('\n')
  lines.forEach((line, i) => {
    const m = /^ {4}(\w+Modifier):$/.exec(line)
    if (m) modifier = m[1]!
    const t = /^ {10}targets: (.*)$/.exec(line)
    if (t) out.push({ modifier, targets: JSON.parse(t[1]!), weights: lines[i + 1]!.trim() })
  })
  return out
}

function selectedBy(text: string, module: string) {
  return groups(text).filter((g) => g.targets.some((t) => new RegExp(t.slice(3)).test(module)))
}

describe('llm-compressor recipe', () => {
  it('a uniform plan is one group of role patterns that also select a deeper model\'s layers', () => {
    const text = llmCompressorRecipe(uniform).text
    const gs = groups(text)
    expect(gs).toHaveLength(1)
    expect(gs[0]!.modifier).toBe('GPTQModifier')
    expect(gs[0]!.targets).toHaveLength(7)
    expect(gs[0]!.weights).toBe('weights: {num_bits: 4, type: int, symmetric: true, strategy: group, group_size: 128, actorder: null}')
    for (const layer of [0, 7, 31]) for (const m of ['self_attn.q_proj', 'mlp.down_proj']) expect(selectedBy(text, `model.layers.${layer}.${m}`)).toHaveLength(1)
    expect(selectedBy(text, 'lm_head')).toHaveLength(0)
    expect(text).toContain('ignore: ["lm_head"]')
  })

  it('a mixed plan selects each planned module with its own scheme and lists what it cannot express', () => {
    const { text, warnings } = llmCompressorRecipe(mixed)
    for (const name of Object.keys(mixed.tensors)) {
      const module = name.replace(/\.weight$/, '')
      const sel = selectedBy(text, module)
      if (name === 'model.layers.5.self_attn.v_proj.weight') expect(sel).toHaveLength(0)
      else if (name === 'model.layers.3.mlp.down_proj.weight') expect(sel.map((g) => [g.modifier, g.weights])).toEqual([['QuantizationModifier', 'weights: {num_bits: 8, type: int, symmetric: true, strategy: channel, group_size: null}']])
      else expect(sel.map((g) => g.modifier), module).toEqual(['GPTQModifier'])
    }
    expect(warnings).toEqual(['model.layers.5.self_attn.v_proj.weight: nf4 has no llm-compressor modifier; left out of the recipe (kept unquantized there)'])
    expect(text).toContain('do not transfer to a model of another depth')
  })
})

describe('llama.cpp recipe', () => {
  /** llama-quantize's rule: the first --tensor-type whose pattern regex_search-es the name. */
  function typeOf(text: string, gguf: string): string | null {
    for (const line of text.split('\n')) {
      const m = /^--tensor-type (.*)=(\w+)$/.exec(line)
      if (m && new RegExp(m[1]!).test(gguf)) return m[2]!
    }
    return null
  }
  const ROLE: Record<string, string> = { q_proj: 'attn_q', k_proj: 'attn_k', v_proj: 'attn_v', o_proj: 'attn_output', gate_proj: 'ffn_gate', up_proj: 'ffn_up', down_proj: 'ffn_down' }
  const ggufName = (hf: string) => {
    const m = /layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.weight$/.exec(hf)!
    return `blk.${m[1]}.${ROLE[m[2]!]}.weight`
  }

  it('ggml types as planned, per layer where they differ, others at the nearest type in bits (said so)', () => {
    const plan = planFromSpec(model, 'ggml:type=Q4_K')
    plan.tensors['model.layers.2.mlp.down_proj.weight'] = { method: 'ggml', params: { type: 'Q6_K' } }
    plan.tensors['model.layers.4.self_attn.q_proj.weight'] = { method: 'rtn', params: { bits: 8, group: 128 } }
    const { text, warnings } = llamaCppRecipe(plan)
    for (const [name, entry] of Object.entries(plan.tensors)) {
      const expected = entry === 'keep' ? null : entry.method === 'ggml' ? String(entry.params!.type).toLowerCase() : 'q8_0'
      expect(typeOf(text, ggufName(name)), name).toBe(expected)
    }
    // Layer 12 of a deeper model: role-wide patterns apply, the layer-specific one does not.
    expect(typeOf(text, 'blk.12.ffn_down.weight')).toBe(null)
    expect(typeOf(text, 'blk.12.ffn_up.weight')).toBe('q4_k')
    expect(text).toMatch(/^llama-quantize .* MODEL-F16\.gguf MODEL-Q4_K-plan\.gguf Q4_K$/m)
    expect(warnings).toEqual(['rtn 8-bit has no ggml type: Q8_0, the nearest in bits (1 tensor)'])
  })
})
