/**
 * What both Hugging Face folder exports (dequantised safetensors, compressed-tensors) share:
 * the source must be an HF model (safetensors + config.json), the config is rewritten (dtype,
 * quantization_config), tokenizer and generation files are copied, and the weights are written
 * as safetensors shards of at most `shardBytes` with a `model.safetensors.index.json` as
 * transformers writes them (`model-00001-of-00003.safetensors`, weight_map, total_size).
 */
import { readFile, stat } from 'node:fs/promises'
import { basename, dirname, join } from 'node:path'
import type { OpenedModel, TensorEntry } from '../formats/contract'
import { PLAIN_DTYPE_BYTES, isPlainDType } from '../formats/dtypes'
import { writeSafetensorsFile, type SafetensorsTensorSpec } from '../formats/safetensors/writer'
import type { OpenOutput } from '../io/output-file'
import { readRegularTextFile } from '../io/regular-file'

/** transformers' default max_shard_size is 5 GB nowadays; 2 GB keeps every shard loadable by 32-bit offsets and small downloads. */
export const DEFAULT_SHARD_BYTES = 2 * 1000 ** 3

/** Files of an HF folder that are not weights and travel unchanged with an export. */
export const HF_SIDECAR_FILES = [
  'generation_config.json',
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'added_tokens.json',
  'tokenizer.model',
  'vocab.json',
  'merges.txt',
  'chat_template.jinja',
  'chat_template.json',
] as const

/** Why the model is not an HF folder model an HF export can start from, or null. */
export function hfSourceProblem(model: OpenedModel): string | null {
  if (model.format !== 'safetensors') return `needs a Hugging Face model (safetensors weights + config.json); this model is ${model.format}`
  if (!model.config || !configPathOf(model)) return 'needs the model folder\'s config.json (the source has none)'
  return null
}

function configPathOf(model: OpenedModel): string | null {
  return model.files.find((f) => basename(f) === 'config.json') ?? null
}

/**
 * The stored tensors an HF export writes: every tensor as stored, except that virtual entries
 * derived by a reader (a reopened compressed-tensors weight) replace the stored parts they
 * come from.
 */
export function tensorsToWrite(model: OpenedModel): TensorEntry[] {
  const consumed = new Set(model.tensors.flatMap((t) => t.derivedFrom ?? []))
  return model.tensors.filter((t) => !consumed.has(t.name))
}

async function writeBytes(openOutput: OpenOutput, path: string, bytes: Uint8Array): Promise<void> {
  const fh = await openOutput(path)
  try {
    await fh.write(bytes)
  } finally {
    await fh.close()
  }
}

/**
 * config.json with `edit` applied, and the sidecar files copied; returns the bytes written per
 * kind ({ config, tokenizer }).
 */
export async function writeHfSidecars(
  model: OpenedModel,
  stage: string,
  openOutput: OpenOutput,
  edit: (config: Record<string, unknown>) => void,
): Promise<{ config: number; tokenizer: number }> {
  const configPath = configPathOf(model)!
  const config = JSON.parse(await readRegularTextFile(configPath, 64 << 20)) as Record<string, unknown>
  edit(config)
  const configBytes = new TextEncoder().encode(JSON.stringify(config, null, 2) + '\n')
  await writeBytes(openOutput, join(stage, 'config.json'), configBytes)
  let configTotal = configBytes.length
  let tokenizerTotal = 0
  const folder = dirname(configPath)
  for (const name of HF_SIDECAR_FILES) {
    const src = join(folder, name)
    const info = await stat(src).catch(() => null)
    if (!info?.isFile()) continue
    const bytes = await readFile(src)
    await writeBytes(openOutput, join(stage, name), bytes)
    if (name === 'generation_config.json') configTotal += bytes.length
    else tokenizerTotal += bytes.length
  }
  return { config: configTotal, tokenizer: tokenizerTotal }
}

/** One tensor to write: its spec and a producer called once, in order, when its turn comes. */
export interface OutputTensor {
  spec: SafetensorsTensorSpec
  produce(): Promise<Uint8Array>
}

export function specBytes(spec: SafetensorsTensorSpec): number {
  if (!isPlainDType(spec.dtype)) throw new Error(`tensor '${spec.name}': unknown dtype '${spec.dtype}'`)
  return spec.shape.reduce((a, b) => a * b, 1) * PLAIN_DTYPE_BYTES[spec.dtype]
}

/**
 * Writes the tensors in order as `model.safetensors`, or, past `shardBytes`, as shards plus
 * `model.safetensors.index.json`. Returns the bytes of headers and index (the rest is data).
 */
export async function writeShardedSafetensors(
  stage: string,
  tensors: OutputTensor[],
  options: { shardBytes: number; openOutput: OpenOutput; signal?: AbortSignal; metadata?: Record<string, string> },
): Promise<{ overhead: number; files: string[] }> {
  const shards: OutputTensor[][] = [[]]
  let current = 0
  let total = 0
  for (const t of tensors) {
    const size = specBytes(t.spec)
    total += size
    if (current > 0 && current + size > options.shardBytes) {
      shards.push([])
      current = 0
    }
    shards.at(-1)!.push(t)
    current += size
  }
  const names = shards.length === 1 ? ['model.safetensors'] : shards.map((_, i) => `model-${String(i + 1).padStart(5, '0')}-of-${String(shards.length).padStart(5, '0')}.safetensors`)
  let fileBytes = 0
  for (let s = 0; s < shards.length; s++) {
    const path = join(stage, names[s]!)
    const list = shards[s]!
    await writeSafetensorsFile(
      path,
      list.map((t) => t.spec),
      (_spec, i) => list[i]!.produce(),
      options.metadata ?? { format: 'pt' },
      { openOutput: options.openOutput, signal: options.signal },
    )
    fileBytes += (await stat(path)).size
  }
  let overhead = fileBytes - total
  if (shards.length > 1) {
    const weightMap: Record<string, string> = {}
    shards.forEach((list, s) => list.forEach((t) => (weightMap[t.spec.name] = names[s]!)))
    const index = new TextEncoder().encode(JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n')
    await writeBytes(options.openOutput, join(stage, 'model.safetensors.index.json'), index)
    overhead += index.length
    names.push('model.safetensors.index.json')
  }
  return { overhead, files: names }
}
