/**
 * `--format onnx`: the evaluation engine's decoder graph (buildDecoderGraph, io 'hf') as a
 * folder transformers.js and onnxruntime-genai load — `onnx/model.onnx` (the graph, small) with
 * every weight in `onnx/model.onnx_data`, config.json (with transformers.js_config
 * use_external_data_format so transformers.js fetches the data file), generation and tokenizer
 * files, and genai_config.json. Inputs input_ids, attention_mask, position_ids,
 * past_key_values.L.key/value; outputs logits, present.L.key/value.
 *
 * Weights stream tensor by tensor into the data file as the graph is built: a planned linear is
 * quantized, encoded (onnx-linears.ts), checked and written, then dropped. Linears are written
 * one per source tensor (q, k, v, gate, up each its own node, outputs concatenated), so every
 * tensor keeps its planned method. Kept matrices, norms and the embedding are float32 or
 * float16 (`dtype`; fp16 is widened by a Cast at load, the report gives the rounding).
 */
import { mkdir, readFile } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { ExternalDataWriter, bytesOf } from '../formats/onnx/external-data'
import type { ElemType, GraphBuilder } from '../formats/onnx/graph-builder'
import { emitQuantizedLinear, type StoreTensor } from '../formats/onnx/quantized-linear'
import { resolveDecoder, type DecoderSpec } from '../inference/decoder-spec'
import type { GraphWeights, LinearPart } from '../inference/graph-weights'
import { buildDecoderGraph } from '../inference/llama-graph'
import type { ResolvedEntry } from '../plan/plan'
import type { ExportContent, ExportedTensor, ExportFormat, ExportHooks, ExportJob, ExportOptions, TensorSupport } from './contract'
import { encodeFloats } from './float-encode'
import { hfSourceProblem, writeHfSidecars } from './hf-folder'
import { onnxLinear, onnxSupport } from './onnx-linears'
import { entrySpec, PlannedWeights, writtenError } from './planned-weights'

export const ONNX_MODEL_FILE = 'onnx/model.onnx'
export const ONNX_DATA_FILE = 'onnx/model.onnx_data'
/** RoPE table length when the config declares no context length. */
const DEFAULT_CONTEXT = 4096

function floatType(options: ExportOptions): 'fp16' | 'fp32' {
  if (options.dtype === 'bf16') return 'fp16'
  return options.dtype === 'fp16' ? 'fp16' : 'fp32'
}

function decoderProblem(model: OpenedModel): string | null {
  const hf = hfSourceProblem(model)
  if (hf) return hf
  try {
    resolveDecoder(model)
    return null
  } catch (err) {
    return (err as Error).message
  }
}

function support(model: OpenedModel, entry: ResolvedEntry): TensorSupport {
  let spec: DecoderSpec
  try {
    spec = resolveDecoder(model)
  } catch {
    return { kind: 'unsupported', reason: 'the model is not a decoder this build exports' }
  }
  const name = entry.tensor.name
  const linears = new Set(spec.layers.flatMap((l) => [l.q, l.k, l.v, l.o, l.gate, l.up, l.down]))
  if (!spec.tied) linears.add(spec.lmHead)
  if (linears.has(name)) return onnxSupport(entry)
  if (name === spec.embed) {
    return { kind: 'fallback', description: 'the embedding is looked up by Gather: its planned values are stored dequantised as floats' + (spec.tied ? ' (lm_head shares them)' : '') }
  }
  return { kind: 'unsupported', reason: 'not a weight of the decoder graph' }
}

/** Values per chunk of a kept float tensor (16 MB as float32). */
const KEPT_CHUNK_VALUES = 4 * 2 ** 20

interface Written {
  records: ExportedTensor[]
  sections: { quantized: number; kept: number }
}

/** The GraphWeights of an export: every tensor written to the data file as the graph asks for it. */
function exportWeights(job: ExportJob, planned: PlannedWeights, data: ExternalDataWriter, type: 'fp16' | 'fp32', hooks: ExportHooks, total: number, out: Written): GraphWeights {
  const seen = new Set<string>()
  const progress = (tensor: string) => {
    if (seen.has(tensor)) return
    seen.add(tensor)
    hooks.onProgress?.({ stage: 'writing', done: seen.size, total, tensor })
  }
  let g: GraphBuilder | null = null
  const store: StoreTensor = async (name, elem: ElemType, dims, bytes) => {
    hooks.signal?.throwIfAborted()
    await data.add(g!, name, elem, dims, bytes)
    return name
  }
  /** Writes float values (one array, or row chunks of a large tensor) in the export's float type. */
  const storeFloat = async (
    builder: GraphBuilder,
    name: string,
    dims: number[],
    values: Float32Array | AsyncIterable<Float32Array>,
    source: string,
    method: string | null,
  ): Promise<{ value: string; bytes: number }> => {
    g = builder
    hooks.signal?.throwIfAborted()
    let count = 0
    let bytes = 0
    let rounded = 0
    let overflowed = 0
    let maxAbsError = 0
    let sumSqError = 0
    async function* encoded(): AsyncGenerator<Uint8Array> {
      const chunks = values instanceof Float32Array ? [values] : values
      for await (const chunk of chunks) {
        const enc = encodeFloats(chunk, type)
        count += chunk.length
        bytes += enc.bytes.length
        rounded += enc.rounded
        overflowed += enc.overflowed
        maxAbsError = Math.max(maxAbsError, enc.maxAbsError)
        sumSqError += enc.sumSqError
        yield enc.bytes
      }
    }
    await data.addParts(builder, name, type === 'fp32' ? 'float32' : 'float16', dims, encoded())
    const value = type === 'fp32' ? name : builder.op('Cast', [name], { to: { int: 1 } })
    const note = rounded ? `rounded to fp16: ${rounded} of ${count} values changed (max |error| ${maxAbsError.toExponential(3)})${overflowed ? `, ${overflowed} overflowed` : ''}` : undefined
    out.records.push({
      name,
      source,
      method,
      writtenType: type === 'fp32' ? 'float32' : 'float16',
      bytes,
      support: method === null ? 'kept' : rounded ? 'fallback' : 'exact',
      ...(note ? { note, maxAbsError, rmsError: Math.sqrt(sumSqError / count) } : {}),
    })
    out.sections[method === null ? 'kept' : 'quantized'] += bytes
    return { value, bytes }
  }
  /** A 2-D kept tensor stored in the export's float type, copied as its stored bytes; null when it is not. */
  const storeStoredBytes = async (builder: GraphBuilder, name: string, dims: number[], source: string): Promise<string | null> => {
    const t = job.model.tensors.find((x) => x.name === source)
    const readRawRows = job.model.readRawRows?.bind(job.model)
    if (!t || !readRawRows || t.derivedFrom !== undefined || t.dtype !== (type === 'fp32' ? 'F32' : 'F16')) return null
    g = builder
    hooks.signal?.throwIfAborted()
    const [rows, cols] = [dims[0]!, dims[1]!]
    const step = Math.max(1, Math.floor(KEPT_CHUNK_VALUES / cols))
    let bytes = 0
    async function* chunks(): AsyncGenerator<Uint8Array> {
      for (let r = 0; r < rows; r += step) {
        const part = await readRawRows!(source, r, Math.min(rows, r + step))
        bytes += part.byteLength
        yield part
      }
    }
    await data.addParts(builder, name, type === 'fp32' ? 'float32' : 'float16', dims, chunks())
    out.records.push({ name, source, method: null, writtenType: type === 'fp32' ? 'float32' : 'float16', bytes, support: 'kept' })
    out.sections.kept += bytes
    return type === 'fp32' ? name : builder.op('Cast', [name], { to: { int: 1 } })
  }
  const storedShapes = new Map(job.model.tensors.map((t) => [t.name, t.shape]))
  /** Row chunks of a stored 2-D tensor (16 MB of float32 each): a 0.5B model's embedding is never decoded whole. */
  async function* storedRows(source: string, rows: number, cols: number): AsyncGenerator<Float32Array> {
    const step = Math.max(1, Math.floor(KEPT_CHUNK_VALUES / cols))
    for (let r = 0; r < rows; r += step) yield job.model.readRows(source, r, Math.min(rows, r + step))
  }
  /** A planned tensor's dequantised values (embedding) or the stored ones. */
  const floatValues = async (source: string, read: () => Promise<Float32Array>): Promise<{ values: Float32Array; method: string | null }> => {
    const entry = planned.entry(source)
    if (!entry) return { values: await read(), method: null }
    const { quantized } = await planned.quantize(entry)
    return { values: quantized.dequantizeRows(0, entry.rows), method: entrySpec(entry) }
  }
  const quantizedPart = async (builder: GraphBuilder, x: string, name: string, part: LinearPart, entry: ResolvedEntry): Promise<string> => {
    g = builder
    const { quantized } = await planned.quantize(entry)
    const encoded = onnxLinear(quantized)
    if (!encoded) throw new Error(`${part.tensor}: ${entry.methodId} has no ONNX encoding (support() should have refused it)`)
    const plannedValues = quantized.dequantizeRows(0, entry.rows)
    const error = writtenError(encoded.values, plannedValues, encoded.exact ? { tensor: part.tensor, encoding: `ONNX encoding (${encoded.writtenType})` } : undefined)
    const before = data.bytes
    const y = await emitQuantizedLinear(builder, store, x, name, encoded.linear)
    const bytes = data.bytes - before
    out.sections.quantized += bytes
    const fallbackNote = onnxSupport(entry).kind === 'fallback' ? (onnxSupport(entry) as { description: string }).description : undefined
    const note = [encoded.note, fallbackNote].filter(Boolean).join('; ')
    out.records.push({
      name,
      source: part.tensor,
      method: entrySpec(entry),
      writtenType: encoded.writtenType,
      bytes,
      support: encoded.exact ? 'exact' : 'fallback',
      ...error,
      ...(note ? { note } : {}),
    })
    return y
  }
  return {
    async float(builder, name, dims, source, read) {
      const stored = storedShapes.get(source)
      const plain = !planned.entry(source) && dims.length === 2 && stored !== undefined && stored.length === 2 && stored[0] === dims[0] && stored[1] === dims[1]
      if (plain) {
        // Kept as stored (the embedding, an untied lm_head): streamed by row chunks — as the
        // stored bytes when they already are the export's float type (an fp16 model to fp16).
        const value = (await storeStoredBytes(builder, name, dims, source)) ?? (await storeFloat(builder, name, dims, storedRows(source, dims[0]!, dims[1]!), source, null)).value
        progress(source)
        return value
      }
      const { values, method } = await floatValues(source, read)
      const { value } = await storeFloat(builder, name, dims, values, source, method)
      progress(source)
      return value
    },
    async linear(builder, x, name, parts, cols, bias) {
      const outs: string[] = []
      for (const part of parts) {
        const partName = parts.length === 1 ? name : `${name}.${part.tensor}`
        const entry = planned.entry(part.tensor)
        if (entry) outs.push(await quantizedPart(builder, x, partName, part, entry))
        else {
          const { value } = await storeFloat(builder, partName, [part.rows, cols], await part.read(), part.tensor, null)
          outs.push(builder.op('Gemm', [x, value], { transB: { int: 1 } }))
        }
        progress(part.tensor)
      }
      const y = outs.length === 1 ? outs[0]! : builder.op('Concat', outs, { axis: { int: 1 } })
      return bias ? builder.op('Add', [y, bias]) : y
    },
    async table(builder, name, dims, values) {
      g = builder
      // Tables stay float32 whatever the dtype: RoPE angles need its precision.
      return store(name, 'float32', dims, bytesOf(values))
    },
  }
}

/** genai_config.json after onnxruntime-genai's published schema (model.decoder + search). */
function genaiConfig(spec: DecoderSpec, config: Record<string, unknown>, generation: Record<string, unknown>, context: number): Record<string, unknown> {
  const c = spec.config
  const ids = (v: unknown, fallback: unknown) => v ?? fallback
  return {
    model: {
      bos_token_id: ids(generation.bos_token_id, config.bos_token_id ?? null),
      context_length: context,
      decoder: {
        session_options: { log_id: 'onnxruntime-genai', provider_options: [] },
        filename: 'model.onnx',
        head_size: c.headDim,
        hidden_size: c.hiddenSize,
        inputs: {
          input_ids: 'input_ids',
          attention_mask: 'attention_mask',
          position_ids: 'position_ids',
          past_key_names: 'past_key_values.%d.key',
          past_value_names: 'past_key_values.%d.value',
        },
        outputs: { logits: 'logits', present_key_names: 'present.%d.key', present_value_names: 'present.%d.value' },
        num_attention_heads: c.numHeads,
        num_hidden_layers: c.numLayers,
        num_key_value_heads: c.numKvHeads,
      },
      eos_token_id: ids(generation.eos_token_id, config.eos_token_id ?? null),
      pad_token_id: ids(generation.pad_token_id, config.pad_token_id ?? config.eos_token_id ?? null),
      type: spec.architecture,
      vocab_size: spec.vocab,
    },
    search: {
      diversity_penalty: 0.0,
      do_sample: false,
      early_stopping: true,
      length_penalty: 1.0,
      max_length: context,
      min_length: 0,
      no_repeat_ngram_size: 0,
      num_beams: 1,
      num_return_sequences: 1,
      past_present_share_buffer: false,
      repetition_penalty: 1.0,
      temperature: 1.0,
      top_k: 1,
      top_p: 1.0,
    },
  }
}

async function exportOnnx(job: ExportJob, stage: string, hooks: ExportHooks): Promise<ExportContent> {
  const { model, options } = job
  const openOutput = hooks.openOutput!
  const type = floatType(options)
  const spec = resolveDecoder(model)
  const planned = await PlannedWeights.prepare(job, hooks)
  const context = spec.config.maxPositionEmbeddings ?? DEFAULT_CONTEXT
  await mkdir(join(stage, 'onnx'))
  const dataFile = await openOutput(join(stage, ONNX_DATA_FILE))
  const written: Written = { records: [], sections: { quantized: 0, kept: 0 } }
  // Source tensors in the order the graph asks for them (a layer's q/k/v biases count once).
  const total = 2 + spec.layers.length * 9 + (spec.tied ? 0 : 1) + spec.layers.filter((l) => l.qBias || l.kBias || l.vBias).length
  let modelBytes: Uint8Array
  const data = new ExternalDataWriter(dataFile, 'model.onnx_data')
  try {
    const weights = exportWeights(job, planned, data, type, hooks, total, written)
    const { builder } = await buildDecoderGraph(model, spec, { kvCache: true, logits: 'all', maxPositions: context, attention: 'ops', io: 'hf', weights }, undefined, { signal: hooks.signal })
    const serialized = builder.serialize('single-file')
    if (serialized.files.length > 0) throw new Error('onnx export: a weight bypassed the data file; this is a bug')
    modelBytes = serialized.model
  } finally {
    await dataFile.close()
  }
  hooks.signal?.throwIfAborted()
  hooks.onProgress?.({ stage: 'finishing', done: total, total })
  const modelFile = await openOutput(join(stage, ONNX_MODEL_FILE))
  try {
    await modelFile.write(modelBytes)
  } finally {
    await modelFile.close()
  }
  let configJson: Record<string, unknown> = {}
  const sidecars = await writeHfSidecars(model, stage, openOutput, (config) => {
    delete config.quantization_config
    const tjs = (config['transformers.js_config'] as Record<string, unknown> | undefined) ?? {}
    // transformers.js 4.x loads `<name>.onnx_data` only when this says the model has external data.
    config['transformers.js_config'] = { ...tjs, dtype: 'fp32', use_external_data_format: { 'model.onnx': 1 } }
    configJson = config
  })
  const generation = await readGenerationConfig(model)
  const genai = new TextEncoder().encode(JSON.stringify(genaiConfig(spec, configJson, generation, context), null, 2) + '\n')
  const genaiFile = await openOutput(join(stage, 'genai_config.json'))
  try {
    await genaiFile.write(genai)
  } finally {
    await genaiFile.close()
  }
  const quantizedRecords = written.records.filter((r) => r.method !== null)
  const fallbacks = quantizedRecords.filter((r) => r.support === 'fallback')
  const notes = [
    `graph: the app's decoder (standard-op attention, RoPE table of ${context} positions), weights in ${ONNX_DATA_FILE}; kept tensors in ${type === 'fp32' ? 'float32' : 'float16 (Cast to float32 at load)'}`,
  ]
  if (options.dtype === 'bf16') notes.push('bf16 was asked for: onnxruntime\'s CPU kernels have no bf16 weights, so kept tensors are float16')
  if (fallbacks.length > 0) {
    const max = fallbacks.reduce((a, r) => Math.max(a, r.maxAbsError ?? 0), 0)
    notes.push(`${fallbacks.length} of ${quantizedRecords.length} quantized tensors are written with a different rounding than the plan (max |written − planned| ${max.toExponential(3)})`)
  }
  return {
    tensors: written.records,
    // tables: the RoPE cos/sin tables and the alignment padding between tensors.
    sections: { quantized: written.sections.quantized, kept: written.sections.kept, tables: data.bytes - written.sections.quantized - written.sections.kept, graph: modelBytes.length, config: sidecars.config + genai.length, tokenizer: sidecars.tokenizer },
    notes,
  }
}

async function readGenerationConfig(model: OpenedModel): Promise<Record<string, unknown>> {
  const config = model.files.find((f) => basename(f) === 'config.json')
  if (!config) return {}
  try {
    return JSON.parse(await readFile(join(dirname(config), 'generation_config.json'), 'utf8')) as Record<string, unknown>
  } catch {
    return {}
  }
}

export const onnxExport: ExportFormat = {
  id: 'onnx',
  label: 'ONNX (onnxruntime, transformers.js, onnxruntime-genai)',
  output: 'folder',
  checkModel: decoderProblem,
  support: (model: OpenedModel, entry: ResolvedEntry, _options: ExportOptions) => support(model, entry),
  export: exportOnnx,
}
