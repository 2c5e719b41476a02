/**
 * The memory model: the bytes a model takes under a plan, exactly, in the layout a consumer
 * stores it — the app's own (QuantMethod.storage), or the file an exporter writes — plus a
 * KV-cache reserve for a context length and batch. Allocators (allocate.ts) budget with it, and
 * a test holds it equal to the exported files byte for byte.
 *
 * What is modelled, per format (the exporters live in worker/export, a higher layer: the GGUF
 * fallback rule is defined here and used by the exporter; the layouts are restated here and a
 * test keeps them equal to the written files byte for byte):
 * - `native`: every planned tensor at its method's storage() (codes, scales, zeros, tables,
 *   outliers), every other stored tensor as stored (embeddings, lm_head, norms, biases). No
 *   file overhead: this is what planSize counts.
 * - `gguf`: the data section of the GGUF export exactly — every tensor the converter writes
 *   (all stored ones but `rotary_emb.inv_freq`), planned ggml types as their blocks, other
 *   methods as the export's fallback type (nearest in bits or `ggufFallback`; K types fall back
 *   to 32-block types when rows are not whole 256-blocks), kept 1-D tensors F32, kept matrices
 *   F16 (or `dtype`), each tensor padded to the 32-byte alignment. NOT modelled: the header
 *   (magic, metadata with the tokenizer, tensor infos). It does not depend on the plan (a tensor
 *   info is the same size whatever its type), so file = header + this; the export report gives
 *   the header as `sections.metadata`.
 * - `safetensors` (dequantised folder): every weight file exactly — each tensor as the output
 *   float type (`dtype`, default the model's declared one; integer tensors as stored), split
 *   into shards of at most `shardBytes` as the exporter does, each shard's 8-byte length and
 *   JSON header (padded to 8), and `model.safetensors.index.json` when sharded. NOT modelled:
 *   config.json and the tokenizer/generation files copied beside them.
 * - `compressed-tensors` (pack-quantized): the weight files exactly as above, a planned Linear
 *   as weight_packed (int32, 32/bits codes each, per row), weight_scale (fp16 per group),
 *   weight_zero_point (asymmetric only, int32 packed along rows) and weight_shape (int64 ×2).
 *   Only RTN/GPTQ/AWQ at 4 or 8 bits are representable (as the exporter says); others are
 *   refused. NOT modelled: config.json (its quantization_config) and tokenizer files.
 */
import type { ModelConfig, OpenedModel, TensorEntry } from '../formats/contract'
import { isPlainDType, PLAIN_DTYPE_BYTES } from '../formats/dtypes'
import { ggmlByteSize, ggmlTypeByName } from '../formats/gguf/ggml-types'
import { classifyTensor, LINEAR_ROLES } from '../model/logical-model'
import { totalBytes } from '../quant/contract'
import type { GgmlQuantType } from '../quant/ggml'
import { QUANT_METHODS } from '../quant/registry'
import { PlanError, type ResolvedEntry } from './plan'

export type MemoryFormat = 'native' | 'gguf' | 'safetensors' | 'compressed-tensors'
export const MEMORY_FORMATS: readonly MemoryFormat[] = Object.freeze(['native', 'gguf', 'safetensors', 'compressed-tensors'])

export type FloatType = 'bf16' | 'fp16' | 'fp32'

export interface MemoryOptions {
  format: MemoryFormat
  /** Float type of kept (and, for safetensors, dequantised) tensors: the exporters' `--dtype`. */
  dtype?: FloatType
  /** GGUF: the ggml type written for methods GGUF cannot store (the export's `--gguf-fallback`). */
  ggufFallback?: string
  /** HF folders: largest shard (default 2 GB, as the exporters). */
  shardBytes?: number
  kv?: KvCacheSpec | null
}

/** A KV-cache reserve: K and V of every layer for `ctx` positions of `batch` sequences. */
export interface KvCacheSpec {
  ctx: number
  batch?: number
  /** Bits per cached value (16 = fp16, the default). */
  bits?: number
  /** Values sharing one fp16 scale and one fp16 zero point (quantized caches); 0 or unset = none. */
  group?: number
  /** Default: the model config's. */
  layers?: number
  kvHeads?: number
  headDim?: number
}

export interface TensorBytes {
  name: string
  /** Planned (the plan's method decides the bytes) or kept. */
  planned: boolean
  /** Bytes in this format (GGUF: with the padding after it; compressed-tensors: all parts). */
  bytes: number
}

export interface MemoryModel {
  format: MemoryFormat
  tensors: TensorBytes[]
  /** Sum over planned tensors. */
  planned: number
  /** Sum over kept tensors. */
  kept: number
  /** File overhead modelled: safetensors headers and index (0 for native and gguf). */
  overhead: number
  /** planned + kept + overhead: the modelled file bytes (gguf: the data section). */
  weights: number
  kvCache: number
  /** weights + kvCache. */
  total: number
}

const DEFAULT_SHARD_BYTES = 2 * 1000 ** 3
const GGUF_ALIGNMENT = 32
const FLOAT_DTYPES = new Set(['F64', 'F32', 'F16', 'BF16', 'F8_E4M3', 'F8_E5M2'])
const FLOAT_BYTES: Readonly<Record<FloatType, number>> = Object.freeze({ bf16: 2, fp16: 2, fp32: 4 })
const SAFETENSORS_NAME: Readonly<Record<FloatType, string>> = Object.freeze({ bf16: 'BF16', fp16: 'F16', fp32: 'F32' })

function elements(t: { shape: readonly number[] }): number {
  return t.shape.reduce((a, b) => a * b, 1)
}

/** Bytes of a KV cache: 2 (K and V) · layers · kv heads · head dim · ctx · batch · bits / 8, plus group scales. */
export function kvCacheBytes(spec: KvCacheSpec, config: ModelConfig | null): number {
  const layers = spec.layers ?? config?.numLayers
  const kvHeads = spec.kvHeads ?? config?.numKvHeads
  const headDim = spec.headDim ?? config?.headDim
  if (layers === undefined || kvHeads === undefined || headDim === undefined) throw new PlanError('kv cache', null, 'layers, kv heads and head dim are needed (the model has no config)')
  const batch = spec.batch ?? 1
  const bits = spec.bits ?? 16
  for (const [k, v] of Object.entries({ ctx: spec.ctx, batch, bits, layers, kvHeads, headDim })) {
    if (!Number.isInteger(v) || v < (k === 'ctx' ? 0 : 1)) throw new PlanError('kv cache', null, `${k} must be a positive integer, got ${v}`)
  }
  const vectors = 2 * layers * kvHeads * spec.ctx * batch
  let bytes = Math.ceil((vectors * headDim * bits) / 8)
  const group = spec.group ?? 0
  if (group > 0) {
    if (headDim % group !== 0) throw new PlanError('kv cache', null, `group ${group} does not divide the head dim ${headDim}`)
    bytes += vectors * (headDim / group) * 4
  }
  return bytes
}

/**
 * The GGUF export's fallback for a method GGUF cannot store: the ggml type nearest in bits to
 * the method's nominal bits. Defined here, below the exporter, so the memory model and the
 * export (export/gguf.ts chooseType) share one rule.
 */
export function nearestGgmlType(bits: number): GgmlQuantType {
  if (bits >= 7) return 'Q8_0'
  if (bits >= 5.5) return 'Q6_K'
  if (bits >= 4.5) return 'Q5_K'
  if (bits >= 3.5) return 'Q4_K'
  if (bits >= 2.5) return 'Q3_K'
  return 'Q2_K'
}

/**
 * Where a row is not a whole number of 256-value super-blocks, llama-quantize falls back to a
 * 32-block type (tensor_type_fallback in src/llama-quant.cpp; Q4_0 where it would use IQ4_NL).
 */
export const GGUF_LEGACY_FOR_K: Readonly<Partial<Record<GgmlQuantType, GgmlQuantType>>> = Object.freeze({ Q2_K: 'Q4_0', Q3_K: 'Q4_0', Q4_K: 'Q5_0', Q5_K: 'Q5_1', Q6_K: 'Q8_0' })

/** The ggml type the GGUF export writes a planned tensor as. */
export function ggufWrittenType(entry: Pick<ResolvedEntry, 'methodId' | 'params' | 'cols' | 'tensor'>, fallback?: string): string {
  if (entry.methodId === 'ggml') return entry.params.type as string
  const method = QUANT_METHODS.get(entry.methodId)!
  let type = fallback ?? nearestGgmlType(method.bits(entry.params))
  if (type.endsWith('_K') && entry.cols % 256 !== 0) type = GGUF_LEGACY_FOR_K[type as GgmlQuantType]!
  if (entry.cols % 32 !== 0) throw new PlanError(entry.tensor.file, entry.tensor.name, `rows of ${entry.cols} values fit no ggml block type (blocks of 32 or 256)`)
  return type
}

function padded(n: number, alignment: number): number {
  return Math.ceil(n / alignment) * alignment
}

/** Bytes of one planned tensor in a format (all its parts; GGUF padded). The allocators' cost. */
export function plannedTensorBytes(model: OpenedModel, entry: ResolvedEntry, options: MemoryOptions): number {
  switch (options.format) {
    case 'native':
      return totalBytes(QUANT_METHODS.get(entry.methodId)!.storage(entry.rows, entry.cols, entry.params))
    case 'gguf': {
      const type = ggmlTypeByName(ggufWrittenType(entry, options.ggufFallback))!
      return padded(ggmlByteSize(type, entry.rows * entry.cols), GGUF_ALIGNMENT)
    }
    case 'safetensors':
      return entry.rows * entry.cols * FLOAT_BYTES[outputFloatType(model, options)]
    case 'compressed-tensors':
      return packedParts(entry).reduce((a, p) => a + p.bytes, 0)
  }
}

/** Bytes of one kept tensor in a format; null when the format does not write it. */
export function keptTensorBytes(model: OpenedModel, t: TensorEntry, options: MemoryOptions): number | null {
  switch (options.format) {
    case 'native':
      return t.byteLength
    case 'gguf': {
      if (t.name.endsWith('.rotary_emb.inv_freq')) return null
      const perValue = t.shape.length === 1 ? 4 : FLOAT_BYTES[options.dtype ?? 'fp16']
      return padded(elements(t) * perValue, GGUF_ALIGNMENT)
    }
    case 'safetensors':
    case 'compressed-tensors':
      return elements(t) * keptDtypeBytes(model, t, options)
  }
}

function outputFloatType(model: OpenedModel, options: MemoryOptions): FloatType {
  if (options.dtype) return options.dtype
  const d = model.config?.dtype
  return d === 'bfloat16' ? 'bf16' : d === 'float16' ? 'fp16' : 'fp32'
}

function keptDtype(model: OpenedModel, t: TensorEntry, options: MemoryOptions): string {
  const isFloat = FLOAT_DTYPES.has(t.dtype) || t.derivedFrom !== undefined
  return isFloat ? SAFETENSORS_NAME[outputFloatType(model, options)] : t.dtype
}

function keptDtypeBytes(model: OpenedModel, t: TensorEntry, options: MemoryOptions): number {
  const d = keptDtype(model, t, options)
  if (!isPlainDType(d)) throw new PlanError(t.file, t.name, `stored type ${d} has no safetensors size`)
  return PLAIN_DTYPE_BYTES[d]
}

interface SpecPart {
  name: string
  dtype: string
  shape: number[]
  bytes: number
}

/** compressed-tensors pack-quantized parts of one planned Linear (compressed-tensors.ts exportPacked). */
function packedParts(entry: ResolvedEntry): SpecPart[] {
  const { rows, cols, params } = entry
  const role = classifyTensor(entry.tensor.alias ?? entry.tensor.name).role
  const linear = entry.tensor.name.endsWith('.weight') && (role === 'lm_head' || (LINEAR_ROLES as readonly string[]).includes(role ?? ''))
  if (!linear) throw new PlanError(entry.tensor.file, entry.tensor.name, 'compressed-tensors packs the weights of Linear modules only')
  const bits = params.bits as number
  if (!['rtn', 'gptq', 'awq'].includes(entry.methodId) || (bits !== 4 && bits !== 8)) {
    throw new PlanError(entry.tensor.file, entry.tensor.name, `${entry.methodId} ${bits ?? '?'}-bit has no pack-quantized layout (RTN/GPTQ/AWQ at 4 or 8 bits only)`)
  }
  const f = Math.floor(32 / bits)
  const groupCols = ((params.group as number) || cols) as number
  const perRow = cols / groupCols
  const prefix = entry.tensor.name.slice(0, -'.weight'.length)
  const parts: SpecPart[] = [
    { name: `${prefix}.weight_packed`, dtype: 'I32', shape: [rows, Math.ceil(cols / f)], bytes: rows * Math.ceil(cols / f) * 4 },
    { name: `${prefix}.weight_scale`, dtype: 'F16', shape: [rows, perRow], bytes: rows * perRow * 2 },
  ]
  if (params.sym !== true) parts.push({ name: `${prefix}.weight_zero_point`, dtype: 'I32', shape: [Math.ceil(rows / f), perRow], bytes: Math.ceil(rows / f) * perRow * 4 })
  parts.push({ name: `${prefix}.weight_shape`, dtype: 'I64', shape: [2], bytes: 16 })
  return parts
}

/** The stored tensors an HF export writes (hf-folder.ts tensorsToWrite): derived views replace their parts. */
function hfTensors(model: OpenedModel): TensorEntry[] {
  const consumed = new Set(model.tensors.flatMap((t) => t.derivedFrom ?? []))
  return model.tensors.filter((t) => !consumed.has(t.name))
}

/** Bytes of the safetensors files (headers included) and the index, sharded as writeShardedSafetensors does. */
function safetensorsFilesOverhead(specs: readonly SpecPart[], shardBytes: number): number {
  const shards: SpecPart[][] = [[]]
  let current = 0
  let total = 0
  for (const s of specs) {
    total += s.bytes
    if (current > 0 && current + s.bytes > shardBytes) {
      shards.push([])
      current = 0
    }
    shards.at(-1)!.push(s)
    current += s.bytes
  }
  let overhead = 0
  for (const list of shards) {
    const header: Record<string, unknown> = { __metadata__: { format: 'pt' } }
    let offset = 0
    for (const s of list) {
      header[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [offset, offset + s.bytes] }
      offset += s.bytes
    }
    const json = JSON.stringify(header)
    const jsonBytes = Buffer.byteLength(json)
    overhead += 8 + jsonBytes + ((8 - ((jsonBytes + 8) % 8)) % 8)
  }
  if (shards.length > 1) {
    const names = shards.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`)
    const weightMap: Record<string, string> = {}
    shards.forEach((list, i) => list.forEach((s) => (weightMap[s.name] = names[i]!)))
    overhead += Buffer.byteLength(JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n')
  }
  return overhead
}

/** The model under a plan (entries from resolvePlanFor) in one format, plus the KV reserve. */
export function memoryModel(model: OpenedModel, entries: readonly ResolvedEntry[], options: MemoryOptions): MemoryModel {
  const byName = new Map(entries.map((e) => [e.tensor.name, e]))
  const tensors: TensorBytes[] = []
  const specs: SpecPart[] = []
  const hf = options.format === 'safetensors' || options.format === 'compressed-tensors'
  const list = hf ? hfTensors(model) : model.tensors.filter((t) => !t.derivedFrom)
  for (const t of list) {
    const entry = byName.get(t.name)
    if (entry) {
      const bytes = plannedTensorBytes(model, entry, options)
      tensors.push({ name: t.name, planned: true, bytes })
      if (options.format === 'compressed-tensors') specs.push(...packedParts(entry))
      else if (options.format === 'safetensors') specs.push({ name: t.name, dtype: SAFETENSORS_NAME[outputFloatType(model, options)], shape: [...t.shape], bytes })
      continue
    }
    const bytes = keptTensorBytes(model, t, options)
    if (bytes === null) continue
    tensors.push({ name: t.name, planned: false, bytes })
    if (hf) specs.push({ name: t.name, dtype: keptDtype(model, t, options), shape: [...t.shape], bytes })
  }
  for (const e of entries) if (!list.includes(e.tensor)) throw new PlanError(e.tensor.file, e.tensor.name, `the ${options.format} layout does not write this tensor`)
  const planned = tensors.filter((t) => t.planned).reduce((a, t) => a + t.bytes, 0)
  const kept = tensors.filter((t) => !t.planned).reduce((a, t) => a + t.bytes, 0)
  const overhead = hf ? safetensorsFilesOverhead(specs, options.shardBytes ?? DEFAULT_SHARD_BYTES) : 0
  const weights = planned + kept + overhead
  const kvCache = options.kv ? kvCacheBytes(options.kv, model.config) : 0
  return { format: options.format, tensors, planned, kept, overhead, weights, kvCache, total: weights + kvCache }
}
