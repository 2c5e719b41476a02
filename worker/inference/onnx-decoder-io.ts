import { ModelFormatError } from '../common/errors'
import type { ValueInfo } from './ort-backend'

/**
 * Which inputs and outputs of an ONNX file make it a decoder Quantscope can run as it is:
 * `input_ids` → `logits` [batch, seq, vocab], optionally `attention_mask`, `position_ids`
 * and a KV cache. Two naming schemes are recognised:
 * - Hugging Face (optimum, transformers.js, torch.onnx.export of a transformers model):
 *   `past_key_values.N.key/value` → `present.N.key/value`, [batch, kv_heads, past, head_dim];
 * - the evaluation engine's own graphs: `past_key.N/past_value.N` → `present_key.N/present_value.N`.
 * Anything else the graph requires as input is refused here, with the file and the name,
 * before a session is made.
 */
export interface DecoderIo {
  inputIds: string
  attentionMask: string | null
  positionIds: string | null
  /** `logits_to_keep` / `num_logits_to_keep` (newer transformers exports): fed 0 = every position. */
  logitsToKeep: string | null
  /** optimum's merged decoders (`decoder_model_merged.onnx`): true once the cache holds tokens. */
  useCacheBranch: string | null
  logits: string
  /** Per layer, in layer order; empty when the graph has no KV cache. */
  pastKey: string[]
  pastValue: string[]
  presentKey: string[]
  presentValue: string[]
}

const PAST = [/^past_key_values\.(\d+)\.(key|value)$/, /^past_(key|value)\.(\d+)$/]
const PRESENT = [/^present\.(\d+)\.(key|value)$/, /^present_(key|value)\.(\d+)$/]
const LOGITS_TO_KEEP = ['logits_to_keep', 'num_logits_to_keep']

/** `{layer, kind}` of a cache tensor name, or null. */
function cacheSlot(name: string, patterns: RegExp[]): { layer: number; kind: 'key' | 'value' } | null {
  const hf = patterns[0]!.exec(name)
  if (hf) return { layer: Number(hf[1]), kind: hf[2] as 'key' | 'value' }
  const own = patterns[1]!.exec(name)
  if (own) return { layer: Number(own[2]), kind: own[1] as 'key' | 'value' }
  return null
}

/** Collects per-layer key/value names; every layer 0 … L−1 must have both. */
function cacheNames(file: string, names: readonly string[], patterns: RegExp[], what: string): { key: string[]; value: string[] } {
  const key: string[] = []
  const value: string[] = []
  for (const n of names) {
    const s = cacheSlot(n, patterns)
    if (!s) continue
    const list = s.kind === 'key' ? key : value
    if (list[s.layer] !== undefined) throw new ModelFormatError(file, null, `${what} of layer ${s.layer} appears twice ('${list[s.layer]}' and '${n}')`)
    list[s.layer] = n
  }
  const layers = Math.max(key.length, value.length)
  for (let l = 0; l < layers; l++) {
    if (key[l] === undefined || value[l] === undefined) {
      const missing = key[l] === undefined ? 'key' : 'value'
      throw new ModelFormatError(file, null, `${what}: layer ${l} has no ${missing} (the cache must hold a key and a value for every layer 0 … ${layers - 1})`)
    }
  }
  return { key, value }
}

/**
 * Matches the graph's input and output names (from the file, before any session exists)
 * against the decoder contract; the error names the file and what is missing or unexpected.
 */
export function matchDecoderIo(file: string, inputs: readonly string[], outputs: readonly string[]): DecoderIo {
  const fail = (problem: string): never => {
    throw new ModelFormatError(file, null, problem)
  }
  const contract = "a decoder needs input_ids → logits (optionally attention_mask, position_ids, past_key_values.N.key/value → present.N.key/value)"
  if (!outputs.includes('logits')) fail(`no 'logits' output (outputs: ${list(outputs)}); ${contract}`)
  if (!inputs.includes('input_ids')) fail(`no 'input_ids' input (inputs: ${list(inputs)}); ${contract}`)
  const known = new Set(['input_ids', 'attention_mask', 'position_ids', 'use_cache_branch', ...LOGITS_TO_KEEP])
  const unexpected = inputs.filter((n) => !known.has(n) && !cacheSlot(n, PAST))
  if (unexpected.length > 0) {
    fail(`unexpected input${unexpected.length > 1 ? 's' : ''} ${list(unexpected)}, which Quantscope cannot feed; ${contract}`)
  }
  const past = cacheNames(file, inputs, PAST, 'past key/value inputs')
  const present = cacheNames(file, outputs, PRESENT, 'present key/value outputs')
  if (past.key.length > 0 && present.key.length !== past.key.length) {
    fail(`${past.key.length} layers of past key/value inputs but ${present.key.length} of present outputs; generation passes each present back as the next past`)
  }
  return {
    inputIds: 'input_ids',
    attentionMask: inputs.includes('attention_mask') ? 'attention_mask' : null,
    positionIds: inputs.includes('position_ids') ? 'position_ids' : null,
    logitsToKeep: LOGITS_TO_KEEP.find((n) => inputs.includes(n)) ?? null,
    useCacheBranch: inputs.includes('use_cache_branch') ? 'use_cache_branch' : null,
    logits: 'logits',
    pastKey: past.key,
    pastValue: past.value,
    presentKey: past.key.length > 0 ? present.key : [],
    presentValue: past.key.length > 0 ? present.value : [],
  }
}

function list(names: readonly string[]): string {
  if (names.length === 0) return 'none'
  const shown = names.slice(0, 6).map((n) => `'${n}'`)
  return shown.join(', ') + (names.length > 6 ? ` and ${names.length - 6} more` : '')
}

/** Element types the session feeds and reads; the error says what the file declares instead. */
export function checkDecoderTypes(file: string, io: DecoderIo, inputs: readonly ValueInfo[], outputs: readonly ValueInfo[]): 'float32' | 'float16' {
  const byName = new Map([...inputs, ...outputs].map((v) => [v.name, v]))
  const typeOf = (n: string): string | null => byName.get(n)?.type ?? null
  const expect = (n: string | null, allowed: string[]): void => {
    if (n === null) return
    const t = typeOf(n)
    // Unknown (no metadata): onnxruntime will say so at the first run.
    if (t !== null && !allowed.includes(t)) throw new ModelFormatError(file, null, `'${n}' is ${t}; Quantscope feeds and reads ${allowed.join(' or ')} there`)
  }
  expect(io.inputIds, ['int64'])
  expect(io.attentionMask, ['int64'])
  expect(io.positionIds, ['int64'])
  expect(io.logitsToKeep, ['int64'])
  expect(io.useCacheBranch, ['bool'])
  expect(io.logits, ['float32', 'float16'])
  const cacheType = io.pastKey[0] ? typeOf(io.pastKey[0]) : null
  for (const n of [...io.pastKey, ...io.pastValue, ...io.presentKey, ...io.presentValue]) expect(n, [cacheType === 'float16' ? 'float16' : 'float32'])
  return cacheType === 'float16' ? 'float16' : 'float32'
}

/**
 * [kv_heads, head_dim] of the cache: from the past input's declared shape [batch, kv_heads,
 * past, head_dim] where it has numbers there, else from config.json; null when neither says.
 */
export function cacheGeometry(
  io: DecoderIo,
  inputs: readonly ValueInfo[],
  config: { numKvHeads: number; headDim: number } | null,
): { kvHeads: number; headDim: number } | null {
  const first = io.pastKey[0] ? inputs.find((v) => v.name === io.pastKey[0]) : undefined
  const dim = (i: number): number | null => {
    const d = first?.shape.length === 4 ? first.shape[i] : undefined
    return typeof d === 'number' && d > 0 ? d : null
  }
  const kvHeads = dim(1) ?? config?.numKvHeads ?? null
  const headDim = dim(3) ?? config?.headDim ?? null
  return kvHeads !== null && headDim !== null ? { kvHeads, headDim } : null
}
