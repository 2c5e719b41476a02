/**
 * GGUF export for llama.cpp: a Hugging Face llama/mistral/qwen2 model under a plan, written as
 * convert_hf_to_gguf.py + llama-quantize would write it (metadata in gguf-metadata.ts).
 *
 * - Tensors planned with a ggml type (`ggml:type=Q4_K`) are written as exactly the block bytes
 *   the app evaluated. q/k rows are moved into llama.cpp's order afterwards: ggml blocks run
 *   along a row, so quantizing then permuting rows gives the same bytes as permuting then
 *   quantizing (tested), and the written model is the evaluated one.
 * - A method GGUF cannot represent (RTN, NF4, FP4, anyN, k-means, GPTQ, AWQ) is written as a
 *   ggml type quantized from the original weight: the user's pick (formatOptions.fallback) or
 *   the nearest in bits (8 → Q8_0, 6 → Q6_K, 5 → Q5_K, 4 → Q4_K, 3 → Q3_K, 2 → Q2_K). Each
 *   such tensor is reported as a fallback with its difference to the planned values.
 * - Kept tensors: 1-D (norms, biases) as F32, as the converter does; matrices as F16
 *   (llama.cpp's default output type) unless options.dtype says otherwise.
 */
import { readFile } from 'node:fs/promises'
import { dirname, join } from 'node:path'
import type { OpenedModel, TensorEntry } from '../formats/contract'
import { ggmlTypeByName } from '../formats/gguf/ggml-types'
import { GGUF_DEFAULT_ALIGNMENT, GgufStreamWriter, u32, type GgufKv, type GgufTensorInfo } from '../formats/gguf/writer'
import { openOutputFile } from '../io/output-file'
import { readOrientedWeight, quantizeEntry } from '../plan/apply'
import { captureCalibration } from '../plan/calibration'
import type { ResolvedEntry } from '../plan/plan'
import { modelDisplayName } from '../plan/plan'
import { GGUF_LEGACY_FOR_K, nearestGgmlType } from '../plan/memory-model'
import { GGML_QUANT_TYPES, type GgmlQuantType, type GgmlQuantizedTensor } from '../quant/ggml'
import type { LayerCalibration } from '../quant/contract'
import { QUANT_METHODS } from '../quant/registry'
import { formatQuantSpec } from '../quant/spec'
import { encodeFloats } from './float-encode'
import { ExportError, type ExportContent, type ExportFloatType, type ExportedTensor, type ExportFormat, type ExportHooks, type ExportJob, type ExportOptions, type TensorSupport } from './contract'
import { architectureKv, bpeTokenizerKv, detectPreTokenizer, ggufArchitecture, ggufTensorNames, isSkippedHfTensor, permuteRowsToGguf, type HfTokenizerConfig, type HfTokenizerJson } from './gguf-metadata'
import { writtenError } from './planned-weights'

/** formatOptions keys of this format: the ggml type for unrepresentable methods, and tokenizer.ggml.pre. */
export const GGUF_FALLBACK_OPTION = 'fallback'
export const GGUF_PRE_OPTION = 'pre'

/** llama.cpp's LLAMA_FTYPE (llama.h) by the type most weights have; K types as their _S mix. */
const FILE_TYPE: Readonly<Record<string, number>> = Object.freeze({ F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q8_0: 7, Q5_0: 8, Q5_1: 9, Q2_K: 10, Q3_K: 11, Q4_K: 14, Q5_K: 16, Q6_K: 18, BF16: 32 })

interface TypeChoice {
  type: GgmlQuantType
  exact: boolean
  note?: string
}

function userFallback(options: ExportOptions): GgmlQuantType | null {
  const v = options.formatOptions?.[GGUF_FALLBACK_OPTION]
  if (v === undefined) return null
  if (typeof v !== 'string' || !(GGML_QUANT_TYPES as readonly string[]).includes(v)) {
    throw new ExportError('gguf', `the GGUF fallback type must be one of ${GGML_QUANT_TYPES.join(', ')}, got ${JSON.stringify(v)}`)
  }
  return v as GgmlQuantType
}

/** The ggml type a planned tensor is written as, or why none fits. */
function chooseType(entry: ResolvedEntry, options: ExportOptions): TypeChoice | { unsupported: string } {
  if (entry.methodId === 'ggml') return { type: entry.params.type as GgmlQuantType, exact: true }
  const method = QUANT_METHODS.get(entry.methodId)!
  const bits = method.bits(entry.params)
  const picked = userFallback(options)
  let type = picked ?? nearestGgmlType(bits)
  let why = picked ? 'the chosen fallback type' : `the ggml type nearest to its ${bits} bits`
  if (type.endsWith('_K') && entry.cols % 256 !== 0) {
    const legacy = GGUF_LEGACY_FOR_K[type]!
    why += `; rows of ${entry.cols} are not a multiple of 256, so ${legacy} instead of ${type} (llama-quantize's 32-block fallback, with Q4_0 where it would use IQ4_NL)`
    type = legacy
  }
  if (entry.cols % 32 !== 0) return { unsupported: `rows of ${entry.cols} values fit no ggml block type (blocks of 32 or 256)` }
  const spec = formatQuantSpec(entry.methodId, entry.params)
  return { type, exact: false, note: `GGUF cannot store ${spec}: written as ${type} (${why}), quantized from the original weights` }
}

function checkGgufModel(model: OpenedModel): string | null {
  if (model.format !== 'safetensors') return `exports Hugging Face safetensors models; this one is ${model.format}`
  if (!model.config) return 'the model has no config.json this build understands'
  try {
    ggufArchitecture(model.config, model.files[0] ?? 'model')
  } catch (err) {
    return (err as Error).message
  }
  if (!model.tokenizerPath) return 'the model folder has no tokenizer.json (GGUF files carry the tokenizer)'
  return null
}

type FloatType = 'F32' | 'F16' | 'BF16'

function keptMatrixType(options: ExportOptions): FloatType {
  return options.dtype === 'fp32' ? 'F32' : options.dtype === 'bf16' ? 'BF16' : 'F16'
}

const EXPORT_FLOAT: Readonly<Record<FloatType, ExportFloatType>> = Object.freeze({ F32: 'fp32', F16: 'fp16', BF16: 'bf16' })

/** Float values as F32/F16/BF16 bytes, with the rounding error against the float32 values. */
function floatBytes(values: Float32Array, type: FloatType, file: string, tensor: string): { bytes: Uint8Array; maxAbsError: number; rmsError: number } {
  const e = encodeFloats(values, EXPORT_FLOAT[type])
  if (e.overflowed > 0) throw new ExportError(file, `tensor '${tensor}': ${e.overflowed} value(s) beyond ${type}'s range; export with dtype fp32 or bf16`)
  return { bytes: e.bytes, maxAbsError: e.maxAbsError, rmsError: Math.sqrt(e.sumSqError / Math.max(1, values.length)) }
}

async function readJson<T>(path: string, required: boolean): Promise<T | null> {
  try {
    return JSON.parse(await readFile(path, 'utf8')) as T
  } catch (err) {
    if (!required && (err as NodeJS.ErrnoException).code === 'ENOENT') return null
    throw new ExportError(path, `cannot read it: ${(err as Error).message}`)
  }
}

/** One tensor of the file: where it comes from and how it is written. */
interface PlannedWrite {
  hf: TensorEntry
  info: GgufTensorInfo
  heads: number | null
  /** Set for planned tensors. */
  entry?: ResolvedEntry
  choice?: TypeChoice
  floatType?: FloatType
}

async function exportGguf(job: ExportJob, stagePath: string, hooks: ExportHooks): Promise<ExportContent> {
  const { model, options } = job
  const problem = checkGgufModel(model)
  if (problem) throw new ExportError(stagePath, problem)
  const config = model.config!
  const { arch, permuteQK } = ggufArchitecture(config, model.files[0]!)
  const names = ggufTensorNames(config, permuteQK)
  const byName = new Map(model.tensors.map((t) => [t.name, t]))
  const mapped = new Set(names.map((n) => n.hf))
  const unmapped = model.tensors.filter((t) => !t.derivedFrom && !mapped.has(t.name) && !isSkippedHfTensor(t.name)).map((t) => t.name)
  if (unmapped.length > 0) throw new ExportError(stagePath, `no llama.cpp name for tensor(s) ${unmapped.slice(0, 5).join(', ')}${unmapped.length > 5 ? ' …' : ''}`)

  const planned = new Map(job.entries.map((e) => [e.tensor.name, e]))
  const keptType = keptMatrixType(options)
  const writes: PlannedWrite[] = names.map((n) => {
    const hf = byName.get(n.hf)
    if (!hf) throw new ExportError(stagePath, `the model has no tensor '${n.hf}', which llama.cpp's ${arch} needs`)
    const ne = [...hf.shape].reverse()
    const entry = planned.get(n.hf)
    if (entry) {
      const choice = chooseType(entry, options)
      if ('unsupported' in choice) throw new ExportError(stagePath, `tensor '${n.hf}': ${choice.unsupported}`)
      return { hf, heads: n.heads, entry, choice, info: { name: n.gguf, ne, type: ggmlTypeByName(choice.type)!.id } }
    }
    const floatType: FloatType = hf.shape.length === 1 ? 'F32' : keptType
    return { hf, heads: n.heads, floatType, info: { name: n.gguf, ne, type: ggmlTypeByName(floatType)!.id } }
  })

  // Exact tensors need what their ggml method needs; fallbacks need what the planned method
  // needs, to measure the difference to the values the app evaluates.
  const calibrationEntries = job.entries
  hooks.onProgress?.({ stage: 'calibrating', done: 0, total: 1 })
  const calibration = await captureCalibration(model, calibrationEntries, options.calibration, {
    signal: hooks.signal,
    onProgress: (p) => hooks.onProgress?.({ stage: 'calibrating', done: p.done, total: p.total }),
  })

  const tokenizerPath = model.tokenizerPath!
  const tok = (await readJson<HfTokenizerJson>(tokenizerPath, true))!
  const tokCfg = (await readJson<HfTokenizerConfig>(join(dirname(tokenizerPath), 'tokenizer_config.json'), false)) ?? {}
  const preOption = options.formatOptions?.[GGUF_PRE_OPTION]
  const pre = typeof preOption === 'string' ? preOption : detectPreTokenizer(tok, tokenizerPath)

  const kv: Array<[string, GgufKv]> = [
    ...architectureKv(config, arch, modelDisplayName(model)),
    ['general.file_type', u32(fileType(writes))],
    // ggml's GGML_QNT_VERSION: the block layouts of 2023 onwards (written by llama-quantize).
    ['general.quantization_version', u32(2)],
    ...bpeTokenizerKv(tok, tokCfg, config.vocabSize, pre, tokenizerPath),
  ]

  const out = await (hooks.openOutput ?? openOutputFile)(stagePath)
  let writer: GgufStreamWriter
  try {
    writer = await GgufStreamWriter.begin(out, kv, writes.map((w) => w.info), { file: stagePath })
  } catch (err) {
    await out.close().catch(() => {})
    throw err
  }
  const tensors: ExportedTensor[] = []
  const sections = { metadata: writer.headerBytes, quantized: 0, fallback: 0, kept: 0 }
  try {
    for (let i = 0; i < writes.length; i++) {
      hooks.signal?.throwIfAborted()
      const w = writes[i]!
      hooks.onProgress?.({ stage: 'writing', done: i, total: writes.length, tensor: w.hf.name })
      let record: Omit<ExportedTensor, 'bytes'>
      if (w.entry) {
        const q = await quantizedData(model, w, calibration.get(w.hf.name), hooks.signal)
        await writer.writeTensor(w.info.name, q.data)
        record = q.record
      } else {
        record = await writeKept(model, w, stagePath, writer)
      }
      const bytes = writer.tensorBytes[i]!
      sections[w.entry ? (w.choice!.exact ? 'quantized' : 'fallback') : 'kept'] += Math.ceil(bytes / GGUF_DEFAULT_ALIGNMENT) * GGUF_DEFAULT_ALIGNMENT
      tensors.push({ ...record, bytes })
    }
    hooks.onProgress?.({ stage: 'finishing', done: writes.length, total: writes.length })
    await writer.end()
  } catch (err) {
    await out.close().catch(() => {})
    throw err
  }
  return { tensors, sections, notes: exportNotes(tensors, keptType) }
}

function fileType(writes: readonly PlannedWrite[]): number {
  const params = new Map<string, number>()
  for (const w of writes) {
    if (w.hf.shape.length < 2) continue
    const type = w.choice?.type ?? w.floatType!
    params.set(type, (params.get(type) ?? 0) + w.hf.shape.reduce((a, b) => a * b, 1))
  }
  let best = 'F16'
  let most = -1
  for (const [t, n] of params) if (n > most) [best, most] = [t, n]
  return FILE_TYPE[best] ?? 1
}

async function quantizedData(model: OpenedModel, w: PlannedWrite, calibration: LayerCalibration | undefined, signal?: AbortSignal): Promise<{ data: Uint8Array; record: Omit<ExportedTensor, 'bytes'> }> {
  const entry = w.entry!
  const choice = w.choice!
  const weight = await readOrientedWeight(model, entry, signal)
  const ggmlEntry: ResolvedEntry = choice.exact ? entry : { ...entry, methodId: 'ggml', params: { type: choice.type, imatrix: false } }
  const q = quantizeEntry(ggmlEntry, weight, calibration, { signal }) as GgmlQuantizedTensor
  let error: { maxAbsError: number; rmsError: number } | null = null
  if (!choice.exact) {
    const plannedValues = quantizeEntry(entry, weight, calibration, { signal }).dequantizeRows(0, entry.rows)
    error = writtenError(q.dequantizeRows(0, entry.rows), plannedValues)
  }
  const data = w.heads === null ? q.blocks : permuteRowsToGguf(q.blocks, w.heads, entry.rows, q.rowBytes, entry.tensor.name)
  return {
    data,
    record: {
      name: w.info.name,
      source: w.hf.name,
      method: formatQuantSpec(entry.methodId, entry.params),
      writtenType: choice.type,
      support: choice.exact ? 'exact' : 'fallback',
      ...(choice.note ? { note: choice.note } : {}),
      ...(error ?? {}),
    },
  }
}

/** Values per chunk of a kept tensor (16 MB as float32): a large embedding is never in memory whole. */
const KEPT_CHUNK_VALUES = 4 * 2 ** 20

/** Writes a tensor the plan keeps, converted to its float type, in row chunks where no row permutation applies. */
async function writeKept(model: OpenedModel, w: PlannedWrite, file: string, writer: GgufStreamWriter): Promise<Omit<ExportedTensor, 'bytes'>> {
  const shape = w.hf.shape
  const rows = shape.length === 1 ? 1 : shape.slice(0, -1).reduce((a, b) => a * b, 1)
  const cols = shape.length === 0 ? 1 : shape[shape.length - 1]!
  const type = w.floatType!
  let maxAbsError = 0
  let sumSq = 0
  const encode = (values: Float32Array): Uint8Array => {
    const e = floatBytes(values, type, file, w.hf.name)
    maxAbsError = Math.max(maxAbsError, e.maxAbsError)
    sumSq += e.rmsError * e.rmsError * values.length
    return e.bytes
  }
  if (w.heads !== null) {
    // q/k rows move between heads: permuted whole (one layer's tensor). A 1-D bias is
    // permuted value by value, a matrix row by row: shape[0] rows either way.
    const bytes = encode(await model.readRows(w.hf.name, 0, rows))
    const n = shape[0]!
    await writer.writeTensor(w.info.name, permuteRowsToGguf(bytes, w.heads, n, bytes.length / n, w.hf.name))
  } else {
    const step = Math.max(1, Math.floor(KEPT_CHUNK_VALUES / Math.max(1, cols)))
    // Stored in the written type already (an F16 model's matrices written F16): the stored
    // bytes are the written bytes, so copy them instead of decoding and re-encoding.
    const readRawRows = w.hf.dtype === type && w.hf.derivedFrom === undefined ? model.readRawRows?.bind(model) : undefined
    async function* chunks(): AsyncGenerator<Uint8Array> {
      for (let r = 0; r < rows; r += step) {
        const r1 = Math.min(rows, r + step)
        yield readRawRows ? await readRawRows(w.hf.name, r, r1) : encode(await model.readRows(w.hf.name, r, r1))
      }
    }
    await writer.writeTensorParts(w.info.name, chunks())
  }
  const rmsError = Math.sqrt(sumSq / Math.max(1, rows * cols))
  return {
    name: w.info.name,
    source: w.hf.name,
    method: null,
    writtenType: type,
    support: 'kept',
    ...(maxAbsError > 0 ? { note: `${w.hf.dtype} values rounded to ${type}`, maxAbsError, rmsError } : {}),
  }
}

function exportNotes(tensors: readonly ExportedTensor[], keptType: FloatType): string[] {
  const notes: string[] = []
  const fallbacks = tensors.filter((t) => t.support === 'fallback')
  if (fallbacks.length > 0) {
    const byType = new Map<string, number>()
    for (const t of fallbacks) byType.set(`${t.method} → ${t.writtenType}`, (byType.get(`${t.method} → ${t.writtenType}`) ?? 0) + 1)
    notes.push(
      `${fallbacks.length} planned tensor(s) use a method GGUF cannot store and were written as a ggml type instead: ` +
        [...byType].map(([k, n]) => `${k} (${n})`).join(', ') +
        '; the exported model is not the evaluated plan — evaluate the export itself for its perplexity',
    )
  }
  const rounded = tensors.filter((t) => t.support === 'kept' && (t.maxAbsError ?? 0) > 0)
  if (rounded.length > 0) notes.push(`${rounded.length} kept matri${rounded.length === 1 ? 'x' : 'ces'} rounded to ${keptType} (llama.cpp's usual type; choose dtype fp32 or bf16 to keep more)`)
  return notes
}

export const ggufExportFormat: ExportFormat = {
  id: 'gguf',
  label: 'GGUF (llama.cpp)',
  output: 'file',
  checkModel: checkGgufModel,
  support(_model: OpenedModel, entry: ResolvedEntry, options: ExportOptions): TensorSupport {
    const choice = chooseType(entry, options)
    if ('unsupported' in choice) return { kind: 'unsupported', reason: choice.unsupported }
    return choice.exact ? { kind: 'exact' } : { kind: 'fallback', description: choice.note! }
  },
  export: exportGguf,
}
