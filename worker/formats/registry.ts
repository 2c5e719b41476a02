/**
 * The one list of model formats the engine reads. Everything that needs to know which files
 * are models (opening, folder scans, file dialogs, messages) asks here, so adding a format is
 * one entry in this array and a folder beside it.
 */
import type { ModelFormat } from './contract'
import { ggufFormat } from './gguf/reader'
import { onnxFormat } from './onnx/reader'
import { safetensorsFormat } from './safetensors/reader'

export const MODEL_FORMATS: readonly ModelFormat[] = Object.freeze([safetensorsFormat, ggufFormat, onnxFormat])

/** The format owning this file name by its ending (longest ending wins), or null. */
export function formatByFileName(path: string): ModelFormat | null {
  const lower = path.toLowerCase()
  let best: ModelFormat | null = null
  let bestLength = 0
  for (const format of MODEL_FORMATS) {
    for (const ext of format.extensions) {
      if (lower.endsWith(ext) && ext.length > bestLength) {
        best = format
        bestLength = ext.length
      }
    }
  }
  return best
}

/** The format recognised by a file's first bytes, or null. */
export function formatByContent(head: Uint8Array): ModelFormat | null {
  return MODEL_FORMATS.find((f) => f.match(head)) ?? null
}

/** Every file ending a model may have, e.g. for a file dialog: ['.safetensors', …]. */
export function modelFileExtensions(): string[] {
  return MODEL_FORMATS.flatMap((f) => [...f.extensions])
}

/** "a .safetensors, .safetensors.index.json, .gguf or .onnx file", for messages. */
export function describeModelFiles(): string {
  const exts = modelFileExtensions()
  return `${exts.slice(0, -1).join(', ')} or ${exts.at(-1)}`
}
