/**
 * The exact size of a model under a plan, in bytes: every planned tensor at its method's
 * storage (codes, scales, zeros, tables, outliers — QuantMethod.storage, computed without
 * quantizing), every other tensor as stored. Bits per weight are reported over the planned
 * tensors and over the whole model.
 */
import type { OpenedModel } from '../formats/contract'
import { totalBytes, type StorageBreakdown } from '../quant/contract'
import { QUANT_METHODS } from '../quant/registry'
import type { ResolvedEntry } from './plan'

export interface PlanSize {
  /** Whole model as planned: planned tensors at their storage, the rest as stored. */
  bytes: number
  /** The model as stored (the same tensors). */
  storedBytes: number
  planned: { tensors: number; params: number; bytes: number; storedBytes: number; storage: StorageBreakdown }
  kept: { tensors: number; params: number; bytes: number }
  /** 8·bytes/params over the planned tensors (null when none is planned). */
  bitsPerWeight: number | null
  /** 8·bytes/params over the whole model. */
  modelBitsPerWeight: number
}

export function planSize(model: OpenedModel, entries: readonly ResolvedEntry[]): PlanSize {
  const planned = new Set(entries.map((e) => e.tensor.name))
  const storage: StorageBreakdown = { codes: 0, scales: 0, zeros: 0, tables: 0, outliers: 0 }
  let plannedParams = 0
  let plannedStored = 0
  for (const e of entries) {
    const s = QUANT_METHODS.get(e.methodId)!.storage(e.rows, e.cols, e.params)
    storage.codes += s.codes
    storage.scales += s.scales
    storage.zeros += s.zeros
    storage.tables += s.tables
    storage.outliers += s.outliers
    plannedParams += e.rows * e.cols
    plannedStored += e.tensor.byteLength
  }
  let keptTensors = 0
  let keptParams = 0
  let keptBytes = 0
  // Virtual tensors (dequantised views an ONNX reader derives) are not stored; counting them would count twice.
  for (const t of model.tensors) {
    if (t.derivedFrom || planned.has(t.name)) continue
    keptTensors++
    keptParams += t.shape.reduce((a, b) => a * b, 1)
    keptBytes += t.byteLength
  }
  const plannedBytes = totalBytes(storage)
  const bytes = plannedBytes + keptBytes
  return {
    bytes,
    storedBytes: plannedStored + keptBytes,
    planned: { tensors: entries.length, params: plannedParams, bytes: plannedBytes, storedBytes: plannedStored, storage },
    kept: { tensors: keptTensors, params: keptParams, bytes: keptBytes },
    bitsPerWeight: plannedParams > 0 ? (8 * plannedBytes) / plannedParams : null,
    modelBitsPerWeight: (8 * bytes) / Math.max(1, plannedParams + keptParams),
  }
}
