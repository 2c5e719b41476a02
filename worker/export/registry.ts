/**
 * The one map of export formats this build writes. A format not in the map (yet) is named in
 * EXPORT_FORMAT_IDS and refused with "not available in this build". Adding a format is one
 * line here and a file in this folder (its writer lives with its format in worker/formats/).
 */
import { compressedTensorsExport } from './compressed-tensors'
import { safetensorsExport } from './safetensors'
import { EXPORT_FORMAT_IDS, ExportError, type ExportFormat, type ExportFormatId } from './contract'
import { ggufExportFormat } from './gguf'
import { onnxExport } from './onnx'

export const EXPORT_FORMATS: ReadonlyMap<ExportFormatId, ExportFormat> = new Map<ExportFormatId, ExportFormat>([
  ['gguf', ggufExportFormat],
  ['safetensors', safetensorsExport],
  ['compressed-tensors', compressedTensorsExport],
  ['onnx', onnxExport],
])

export function isExportFormatId(id: string): id is ExportFormatId {
  return (EXPORT_FORMAT_IDS as readonly string[]).includes(id)
}

/** The format's entry; a clear error for unknown formats and for those this build lacks. */
export function exportFormat(id: string, outPath = '(export)'): ExportFormat {
  if (!isExportFormatId(id)) throw new ExportError(outPath, `unknown export format '${id}' (formats: ${EXPORT_FORMAT_IDS.join(', ')})`)
  const format = EXPORT_FORMATS.get(id)
  if (!format) {
    const built = [...EXPORT_FORMATS.keys()].join(', ')
    throw new ExportError(outPath, `export to ${id} is not available in this build (available: ${built})`)
  }
  return format
}
