/**
 * `--format safetensors`: a Hugging Face folder holding the plan's dequantised weights, so any
 * transformers-based harness (lm-evaluation-harness …) measures the plan: config.json (dtype
 * set to the written type, any quantization_config dropped), tokenizer and generation files,
 * and every weight in bf16/fp16/fp32 (`dtype`, default the model's). Quantized tensors hold
 * QuantizedTensor.dequantizeRows, exact in fp32; in bf16/fp16 they are rounded and the report
 * gives the largest rounding per tensor. Kept float tensors are copied bytewise when the type
 * is unchanged, converted otherwise; integer tensors are copied as stored.
 */
import type { OpenedModel, TensorEntry } from '../formats/contract'
import { decodePlain, isPlainDType } from '../formats/dtypes'
import type { ResolvedEntry } from '../plan/plan'
import type { ExportContent, ExportedTensor, ExportFloatType, ExportFormat, ExportHooks, ExportJob, ExportOptions, TensorSupport } from './contract'
import { declaredFloatType, encodeFloats, SAFETENSORS_DTYPE, TORCH_DTYPE } from './float-encode'
import { DEFAULT_SHARD_BYTES, hfSourceProblem, tensorsToWrite, writeHfSidecars, writeShardedSafetensors, type OutputTensor } from './hf-folder'
import { entrySpec, PlannedWeights } from './planned-weights'

const FLOAT_DTYPES = new Set(['F64', 'F32', 'F16', 'BF16', 'F8_E4M3', 'F8_E5M2'])

export function outputFloatType(model: OpenedModel, options: ExportOptions): ExportFloatType {
  return options.dtype ?? declaredFloatType(model.config?.dtype ?? null)
}

/** A kept float tensor converted to the output type (or copied when it already is that type). */
export async function keptTensor(model: OpenedModel, t: TensorEntry, type: ExportFloatType, record: (r: ExportedTensor) => void): Promise<OutputTensor> {
  const dtype = SAFETENSORS_DTYPE[type]
  // A virtual entry (a reopened packed weight) is written as the float values it decodes to.
  const isFloat = FLOAT_DTYPES.has(t.dtype) || t.derivedFrom !== undefined
  const outDtype = isFloat ? dtype : t.dtype
  return {
    spec: { name: t.name, dtype: outDtype, shape: t.shape },
    produce: async () => {
      if (!isFloat || t.dtype === dtype) {
        const raw = await model.readRaw(t.name)
        record({ name: t.name, source: t.name, method: null, writtenType: outDtype, bytes: raw.length, support: 'kept' })
        return raw
      }
      const rows = t.shape.length <= 1 ? 1 : t.shape.slice(0, -1).reduce((a, b) => a * b, 1)
      const values = t.derivedFrom || !isPlainDType(t.dtype) ? await model.readRows(t.name, 0, rows) : decodePlain(t.dtype, await model.readRaw(t.name), new Float32Array(t.shape.reduce((a, b) => a * b, 1)))
      const enc = encodeFloats(values, type)
      const note = enc.rounded ? `converted ${t.dtype} → ${outDtype}: ${enc.rounded} values rounded (max |error| ${enc.maxAbsError.toExponential(3)})${enc.overflowed ? `, ${enc.overflowed} overflowed to ±Inf` : ''}` : undefined
      record({ name: t.name, source: t.name, method: null, writtenType: outDtype, bytes: enc.bytes.length, support: 'kept', ...(note ? { note, maxAbsError: enc.maxAbsError, rmsError: Math.sqrt(enc.sumSqError / values.length) } : {}) })
      return enc.bytes
    },
  }
}

function plannedTensor(planned: PlannedWeights, entry: ResolvedEntry, type: ExportFloatType, record: (r: ExportedTensor) => void): OutputTensor {
  const dtype = SAFETENSORS_DTYPE[type]
  const t = entry.tensor
  return {
    spec: { name: t.name, dtype, shape: t.shape },
    produce: async () => {
      const { quantized } = await planned.quantize(entry)
      const values = quantized.dequantizeRows(0, entry.rows)
      const enc = encodeFloats(values, type)
      const note = enc.rounded
        ? `dequantised values rounded to ${dtype}: ${enc.rounded} of ${values.length} changed, max |error| ${enc.maxAbsError.toExponential(3)}${enc.overflowed ? `, ${enc.overflowed} overflowed to ±Inf` : ''}`
        : undefined
      record({
        name: t.name,
        source: t.name,
        method: entrySpec(entry),
        writtenType: dtype,
        bytes: enc.bytes.length,
        support: enc.rounded ? 'fallback' : 'exact',
        ...(note ? { note, maxAbsError: enc.maxAbsError, rmsError: Math.sqrt(enc.sumSqError / values.length) } : { maxAbsError: 0 }),
      })
      return enc.bytes
    },
  }
}

async function exportDequantised(job: ExportJob, stage: string, hooks: ExportHooks): Promise<ExportContent> {
  const { model, options } = job
  const type = outputFloatType(model, options)
  const openOutput = hooks.openOutput!
  const planned = await PlannedWeights.prepare(job, hooks)
  const written: ExportedTensor[] = []
  const list = tensorsToWrite(model)
  let done = 0
  const record = (r: ExportedTensor) => {
    written.push(r)
    hooks.onProgress?.({ stage: 'writing', done: ++done, total: list.length, tensor: r.name })
  }
  const tensors: OutputTensor[] = []
  for (const t of list) {
    const entry = planned.entry(t.name)
    tensors.push(entry ? plannedTensor(planned, entry, type, record) : await keptTensor(model, t, type, record))
  }
  const sidecars = await writeHfSidecars(model, stage, openOutput, (config) => {
    config.dtype = TORCH_DTYPE[type]
    if ('torch_dtype' in config) config.torch_dtype = TORCH_DTYPE[type]
    delete config.quantization_config
  })
  const { overhead } = await writeShardedSafetensors(stage, tensors, { shardBytes: options.shardBytes ?? DEFAULT_SHARD_BYTES, openOutput, signal: hooks.signal })
  const quantizedBytes = written.filter((w) => w.method !== null).reduce((a, w) => a + w.bytes, 0)
  const keptBytes = written.filter((w) => w.method === null).reduce((a, w) => a + w.bytes, 0)
  const notes: string[] = []
  const rounded = written.filter((w) => w.method !== null && w.support === 'fallback')
  if (rounded.length > 0) {
    const max = rounded.reduce((a, w) => Math.max(a, w.maxAbsError ?? 0), 0)
    notes.push(`${rounded.length} of ${job.entries.length} quantized tensors were rounded to ${SAFETENSORS_DTYPE[type]} (max |error| ${max.toExponential(3)}); --dtype fp32 writes the quantized values exactly`)
  } else if (job.entries.length > 0) {
    notes.push(`the ${job.entries.length} quantized tensors hold exactly the dequantised values the app evaluates (${SAFETENSORS_DTYPE[type]})`)
  }
  return {
    tensors: written,
    sections: { quantized: quantizedBytes, kept: keptBytes, headers: overhead, config: sidecars.config, tokenizer: sidecars.tokenizer },
    notes,
  }
}

export const safetensorsExport: ExportFormat = {
  id: 'safetensors',
  label: 'Dequantised safetensors (Hugging Face folder)',
  output: 'folder',
  checkModel: hfSourceProblem,
  support(model: OpenedModel, _entry: ResolvedEntry, options: ExportOptions): TensorSupport {
    const type = outputFloatType(model, options)
    if (type === 'fp32') return { kind: 'exact' }
    return { kind: 'fallback', description: `dequantised values rounded to ${SAFETENSORS_DTYPE[type]} (the report gives the largest rounding; fp32 is exact)` }
  },
  export: exportDequantised,
}
