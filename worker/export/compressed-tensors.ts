/**
 * `--format compressed-tensors`: the `pack-quantized` layout llm-compressor writes and vLLM
 * loads (field names and packing: worker/formats/hf/compressed-tensors.ts, after
 * compressed_tensors/compressors/quantized_compressors/pack_quantized.py). Per quantized Linear:
 * weight_packed (int32, 32/bits codes each), weight_scale (fp16, exactly the plan's scales),
 * weight_zero_point (asymmetric only, int32 packed along rows), weight_shape; config.json gets
 * quantization_config { quant_method: 'compressed-tensors', format: 'pack-quantized',
 * config_groups, ignore }. Everything else is written as in the dequantised folder.
 *
 * What the layout represents of a plan (ŵ = (q − z)·scale, integer z):
 * - GPTQ (sym or asym), RTN symmetric, 4 or 8 bits: exact — same codes and fp16 scales.
 * - RTN asymmetric stores an fp16 minimum m (ŵ = q·s + m), not an integer zero point; AWQ
 *   divides by a per-input-column scale s_j. Neither has a field here, so both fall back onto
 *   the layout's grid: the source weight is rounded per group with llm-compressor's min-max rule
 *   (range including 0, fp16 scale, integer zero point, round half to even) — for AWQ this loses
 *   its search. The report gives each tensor's max and RMS difference from the plan's values.
 * - Other methods (tables, floats, ggml blocks) and other bit widths: unsupported.
 */
import type { OpenedModel } from '../formats/contract'
import { f16ToF32 } from '../formats/dtypes'
import { packFactor, packInt32 } from '../formats/hf/compressed-tensors'
import { classifyTensor, LINEAR_ROLES } from '../model/logical-model'
import type { ResolvedEntry } from '../plan/plan'
import type { QuantizedTensor } from '../quant/contract'
import { fitIntGrid, IntGroupTensor, newGroupGrid, quantizeToGrid } from '../quant/int-grid'
import { unpackCodes } from '../quant/packing'
import { RtnTensor } from '../quant/rtn'
import type { ExportContent, ExportedTensor, ExportFormat, ExportHooks, ExportJob, ExportOptions, TensorSupport } from './contract'
import { DEFAULT_SHARD_BYTES, hfSourceProblem, tensorsToWrite, writeHfSidecars, writeShardedSafetensors, type OutputTensor } from './hf-folder'
import { entrySpec, PlannedWeights, writtenError } from './planned-weights'
import { keptTensor, outputFloatType } from './safetensors'
import { TORCH_DTYPE } from './float-encode'

const PACKED_BITS = new Set([4, 8])

/** One tensor in the layout's terms: unsigned codes q + 2^(b−1), fp16 scale bits, unsigned zero points z + 2^(b−1). */
export interface PackedInt {
  bits: number
  symmetric: boolean
  groupCols: number
  codes: Uint8Array
  scaleBits: Uint16Array
  zeros: Uint8Array | null
}

function isLinearWeight(entry: ResolvedEntry): boolean {
  const role = classifyTensor(entry.tensor.alias ?? entry.tensor.name).role
  return entry.tensor.name.endsWith('.weight') && (role === 'lm_head' || (LINEAR_ROLES as readonly string[]).includes(role ?? ''))
}

function support(_model: OpenedModel, entry: ResolvedEntry): TensorSupport {
  if (!isLinearWeight(entry)) return { kind: 'unsupported', reason: 'compressed-tensors packs the weights of Linear modules only' }
  const bits = entry.params.bits as number
  const known = ['rtn', 'gptq', 'awq']
  if (!known.includes(entry.methodId)) {
    return { kind: 'unsupported', reason: `${entry.methodId} is not an integer grid; pack-quantized stores integer codes with a scale (and integer zero point) per group` }
  }
  if (!PACKED_BITS.has(bits)) return { kind: 'unsupported', reason: `${bits}-bit codes: vLLM's pack-quantized kernels take 4 or 8 bits` }
  if (entry.methodId === 'rtn' && entry.params.sym !== true) {
    return { kind: 'fallback', description: "RTN's fp16 group minimum has no field (the layout has integer zero points): the source weight is rounded per group onto the layout's min-max grid instead, difference measured" }
  }
  if (entry.methodId === 'awq') {
    return { kind: 'fallback', description: "AWQ's per-input-channel scale has no field: the source weight is rounded per group onto the layout's min-max grid instead (AWQ's search is lost; llm-compressor's AWQModifier, see `recipe`, folds its scales into the previous layer), difference measured" }
  }
  return { kind: 'exact' }
}

/** The plan's own codes and scales, when the layout holds them exactly. */
function exactPacked(q: QuantizedTensor): PackedInt | null {
  if (q instanceof RtnTensor && q.mins === null) {
    const { bits } = q.params
    const codes = unpackCodes(q.codes, bits, 0, q.rows * q.cols, new Uint8Array(q.rows * q.cols))
    // RTN's symmetric codes are q + 2^(b−1) − 1 (q ∈ [−(2^(b−1) − 1), 2^(b−1) − 1]); the layout's are q + 2^(b−1).
    for (let i = 0; i < codes.length; i++) codes[i]! += 1
    return { bits, symmetric: true, groupCols: q.groupCols, codes, scaleBits: q.scales.bits, zeros: null }
  }
  if (q instanceof IntGroupTensor && q.columnScales === null) return intGroupPacked(q)
  return null
}

/**
 * GPTQ/AWQ codes and zero points unpacked (one byte each) with the fp16 scale bits; AWQ's
 * per-column scales are not included (the ONNX export applies them to the input).
 */
export function intGroupPacked(q: IntGroupTensor): PackedInt {
  // ŵ = scale·(code − zero) with code, zero ∈ [0, 2^b): the layout's unsigned q + 2^(b−1) and z + 2^(b−1) are the same numbers.
  const groups = q.rows * (q.cols / q.groupCols)
  const codes = unpackCodes(q.codes, q.bits, 0, q.rows * q.cols, new Uint8Array(q.rows * q.cols))
  const zeros = q.zeros ? unpackCodes(q.zeros, q.bits, 0, groups, new Uint8Array(groups)) : null
  return { bits: q.bits, symmetric: zeros === null, groupCols: q.groupCols, codes, scaleBits: q.scales.bits, zeros }
}

/** Re-quantizes dequantised values per group onto the layout's grid (fallback). */
function requantized(values: Float32Array, rows: number, cols: number, bits: number, groupCols: number, symmetric: boolean): PackedInt {
  const perRow = cols / groupCols
  const codes = new Uint8Array(rows * cols)
  const scaleBits = new Uint16Array(rows * perRow)
  const zeros = symmetric ? null : new Uint8Array(rows * perRow)
  const grid = newGroupGrid()
  const maxq = 2 ** bits - 1
  for (let gi = 0; gi < rows * perRow; gi++) {
    const start = Math.floor(gi / perRow) * cols + (gi % perRow) * groupCols
    let lo = Infinity
    let hi = -Infinity
    for (let j = start; j < start + groupCols; j++) {
      const w = values[j]!
      if (w < lo) lo = w
      if (w > hi) hi = w
    }
    fitIntGrid(lo, hi, bits, symmetric, 'gptq', grid)
    scaleBits[gi] = grid.scaleBits
    if (zeros) zeros[gi] = grid.zero
    for (let j = start; j < start + groupCols; j++) codes[j] = quantizeToGrid(values[j]!, grid.scale, grid.zero, maxq)
  }
  return { bits, symmetric, groupCols, codes, scaleBits, zeros }
}

/** ŵ the layout's consumers compute: (q − z)·scale, in float32 (what the reader gives back). */
function packedValues(p: PackedInt, rows: number, cols: number): Float32Array {
  const out = new Float32Array(rows * cols)
  const perRow = cols / p.groupCols
  const mid = 2 ** (p.bits - 1)
  for (let r = 0; r < rows; r++) {
    for (let k = 0; k < perRow; k++) {
      const gi = r * perRow + k
      const scale = f16ToF32(p.scaleBits[gi]!)
      const z = p.zeros ? p.zeros[gi]! : mid
      for (let c = k * p.groupCols; c < (k + 1) * p.groupCols; c++) out[r * cols + c] = scale * (p.codes[r * cols + c]! - z)
    }
  }
  return out
}

function weightArgs(p: PackedInt, cols: number): Record<string, unknown> {
  const channel = p.groupCols === cols
  return {
    num_bits: p.bits,
    type: 'int',
    symmetric: p.symmetric,
    strategy: channel ? 'channel' : 'group',
    group_size: channel ? null : p.groupCols,
    dynamic: false,
    actorder: null,
    block_structure: null,
    observer: 'minmax',
    observer_kwargs: {},
  }
}

async function exportPacked(job: ExportJob, stage: string, hooks: ExportHooks): Promise<ExportContent> {
  const { model, options } = job
  const type = outputFloatType(model, options)
  const openOutput = hooks.openOutput!
  const planned = await PlannedWeights.prepare(job, hooks)
  const list = tensorsToWrite(model)
  const written: ExportedTensor[] = []
  let done = 0
  const record = (r: ExportedTensor) => {
    written.push(r)
    hooks.onProgress?.({ stage: 'writing', done: ++done, total: list.length, tensor: r.name })
  }
  // Args per module, known only once each tensor is quantized; the config is written last.
  const moduleArgs = new Map<string, Record<string, unknown>>()
  const outputs: OutputTensor[] = []
  for (const t of list) {
    const entry = planned.entry(t.name)
    if (!entry) {
      outputs.push(await keptTensor(model, t, type, record))
      continue
    }
    const prefix = t.name.slice(0, -'.weight'.length)
    const { rows, cols } = entry
    const bits = entry.params.bits as number
    const f = packFactor(bits)
    const groupCols = ((entry.params.group as number) || cols) as number
    const symmetric = entry.params.sym === true
    const perRow = cols / groupCols
    // One quantization per tensor, shared by its parts (written in this order, one after another).
    let current: { p: PackedInt; note?: string; maxAbsError: number; rmsError: number } | null = null
    const pack = async () => {
      const { weight, quantized } = await planned.quantize(entry)
      const exact = exactPacked(quantized)
      const plannedValues = quantized.dequantizeRows(0, rows)
      // Fallbacks round the source weight onto the layout's grid. Re-rounding the plan's values
      // rounds twice: on the default model (8 windows) that gave ppl 13.744 for RTN g128 asym
      // (in app 13.556) and 13.728 for AWQ (in app 13.641), against 13.587 from the source weight.
      const p = exact ?? requantized(weight, rows, cols, bits, groupCols, symmetric)
      const values = packedValues(p, rows, cols)
      const error = writtenError(values, plannedValues, exact ? { tensor: t.name, encoding: 'packed codes' } : undefined)
      moduleArgs.set(prefix, weightArgs(p, cols))
      current = { p, ...error, ...(exact ? {} : { note: (support(model, entry) as { description: string }).description }) }
      return current
    }
    const parts: { suffix: string; dtype: string; shape: number[]; bytes: (p: PackedInt) => Uint8Array }[] = [
      { suffix: 'weight_packed', dtype: 'I32', shape: [rows, Math.ceil(cols / f)], bytes: (p) => new Uint8Array(packInt32(p.codes, rows, cols, bits, 1).buffer) },
      { suffix: 'weight_scale', dtype: 'F16', shape: [rows, perRow], bytes: (p) => new Uint8Array(p.scaleBits.buffer, p.scaleBits.byteOffset, p.scaleBits.byteLength) },
      ...(symmetric ? [] : [{ suffix: 'weight_zero_point', dtype: 'I32', shape: [Math.ceil(rows / f), perRow], bytes: (p: PackedInt) => new Uint8Array(packInt32(p.zeros!, rows, perRow, bits, 0).buffer) }]),
      { suffix: 'weight_shape', dtype: 'I64', shape: [2], bytes: () => new Uint8Array(BigInt64Array.of(BigInt(rows), BigInt(cols)).buffer) },
    ]
    let bytes = 0
    parts.forEach((part, i) =>
      outputs.push({
        spec: { name: `${prefix}.${part.suffix}`, dtype: part.dtype, shape: part.shape },
        produce: async () => {
          const c = i === 0 ? await pack() : current!
          const out = part.bytes(c.p)
          bytes += out.length
          if (i === parts.length - 1) {
            record({
              name: `${prefix}.weight_packed`,
              source: t.name,
              method: entrySpec(entry),
              writtenType: `int${bits} ${moduleArgs.get(prefix)!.strategy === 'channel' ? 'per channel' : `g${groupCols}`} ${symmetric ? 'sym' : 'asym'} (pack-quantized, fp16 scales)`,
              bytes,
              support: c.note ? 'fallback' : 'exact',
              maxAbsError: c.maxAbsError,
              rmsError: c.rmsError,
              ...(c.note ? { note: c.note } : {}),
            })
            current = null
          }
          return out
        },
      }),
    )
  }
  // Tensor data first: the config's groups come from the quantized tensors.
  const { overhead } = await writeShardedSafetensors(stage, outputs, { shardBytes: options.shardBytes ?? DEFAULT_SHARD_BYTES, openOutput, signal: hooks.signal })
  const quantizationConfig = buildQuantizationConfig(model, moduleArgs)
  const sidecars = await writeHfSidecars(model, stage, openOutput, (config) => {
    config.dtype = TORCH_DTYPE[type]
    if ('torch_dtype' in config) config.torch_dtype = TORCH_DTYPE[type]
    config.quantization_config = quantizationConfig
  })
  const quantizedBytes = written.filter((w) => w.method !== null).reduce((a, w) => a + w.bytes, 0)
  const keptBytes = written.filter((w) => w.method === null).reduce((a, w) => a + w.bytes, 0)
  const fallbacks = written.filter((w) => w.support === 'fallback' && w.method !== null)
  const notes = [
    'weight_scale is stored in fp16 (the plan\'s scales exactly); vLLM casts scales to the model dtype on load' + (type === 'bf16' ? ' (bf16 here: scales rounded to 8 significant bits there)' : ''),
  ]
  if (fallbacks.length > 0) {
    const max = fallbacks.reduce((a, w) => Math.max(a, w.maxAbsError ?? 0), 0)
    notes.push(`${fallbacks.length} of ${job.entries.length} quantized tensors were re-quantized onto the layout's grid (fallback; max |written − planned| ${max.toExponential(3)}): evaluate the export to measure its perplexity`)
  }
  return {
    tensors: written,
    sections: { quantized: quantizedBytes, kept: keptBytes, headers: overhead, config: sidecars.config, tokenizer: sidecars.tokenizer },
    notes,
  }
}

/** quantization_config: one config group per distinct weight args, `ignore` for every other Linear. */
function buildQuantizationConfig(model: OpenedModel, moduleArgs: Map<string, Record<string, unknown>>): Record<string, unknown> {
  const byArgs = new Map<string, { args: Record<string, unknown>; modules: string[] }>()
  for (const [module, args] of moduleArgs) {
    const key = JSON.stringify(args)
    if (!byArgs.has(key)) byArgs.set(key, { args, modules: [] })
    byArgs.get(key)!.modules.push(module)
  }
  const linears = tensorsToWrite(model)
    .filter((t) => t.shape.length === 2 && t.name.endsWith('.weight'))
    .filter((t) => {
      const role = classifyTensor(t.alias ?? t.name).role
      return role === 'lm_head' || (LINEAR_ROLES as readonly string[]).includes(role ?? '')
    })
    .map((t) => t.name.slice(0, -'.weight'.length))
  const ignore = linears.filter((m) => !moduleArgs.has(m))
  const single = byArgs.size === 1
  const configGroups: Record<string, unknown> = {}
  ;[...byArgs.values()].forEach((g, i) => {
    // One scheme for all: the conventional ['Linear'] with the rest ignored; several: module names.
    configGroups[`group_${i}`] = { targets: single ? ['Linear'] : g.modules, weights: g.args, input_activations: null, output_activations: null }
  })
  return {
    quant_method: 'compressed-tensors',
    format: 'pack-quantized',
    quantization_status: 'compressed',
    config_groups: configGroups,
    ignore,
    kv_cache_scheme: null,
    global_compression_ratio: null,
  }
}

export const compressedTensorsExport: ExportFormat = {
  id: 'compressed-tensors',
  label: 'compressed-tensors pack-quantized (vLLM, llm-compressor)',
  output: 'folder',
  checkModel: hfSourceProblem,
  support: (model: OpenedModel, entry: ResolvedEntry, _options: ExportOptions) => support(model, entry),
  export: exportPacked,
}
