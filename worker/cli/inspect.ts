import { elementCount, type ModelFormatId, type OpenedModel } from '../formats/contract'
import { openModel } from '../formats/open-model'
import { classifyTensor } from '../model/logical-model'
import { StatsService } from '../stats/stats-service'
import type { TensorStats } from '../stats/stats-types'

/** The `inspect --json` contract (issue 3): field names are relied on by scripts. */
export interface InspectReport {
  format: ModelFormatId
  architecture: string | null
  params: number
  bytes: number
  files: string[]
  tensors: InspectTensor[]
}

export interface InspectTensor {
  name: string
  dtype: string
  shape: number[]
  bytes: number
  layer: number | null
  role: string | null
  stats?: InspectStats
}

/**
 * Moments of the finite values. A tensor with none (all NaN or ±Inf, or no elements at all)
 * has no moments: they are null, not a made-up 0 (README, `inspect --json`).
 */
export interface InspectStats {
  min: number | null
  max: number | null
  mean: number | null
  std: number | null
  absmax: number | null
  kurtosis: number | null
  nan: number
  inf: number
}

export interface InspectOptions {
  stats: boolean
  threads?: number
  onProgress?: (done: number, total: number) => void
  signal?: AbortSignal
}

export async function inspectModel(path: string, opts: InspectOptions): Promise<InspectReport> {
  const model = await openModel(path)
  try {
    const report = summarise(model)
    if (opts.stats) await attachStats(path, model, report, opts)
    return report
  } finally {
    await model.close()
  }
}

function summarise(model: OpenedModel): InspectReport {
  // Virtual (derived) entries are views of stored tensors: listing them would double-count.
  const stored = model.tensors.filter((t) => !t.derivedFrom)
  const tensors: InspectTensor[] = stored.map((t) => {
    const cls = classifyTensor(t.name)
    const byAlias = cls.role === null && t.alias ? classifyTensor(t.alias) : cls
    return { name: t.name, dtype: t.dtype, shape: t.shape, bytes: t.byteLength, layer: byAlias.layer, role: byAlias.role }
  })
  return {
    format: model.format,
    architecture: model.architecture,
    params: stored.reduce((s, t) => s + elementCount(t.shape), 0),
    bytes: stored.reduce((s, t) => s + t.byteLength, 0),
    files: model.files,
    tensors,
  }
}

async function attachStats(path: string, model: OpenedModel, report: InspectReport, opts: InspectOptions): Promise<void> {
  const decodable = new Set(model.tensors.filter((t) => t.decodable && !t.derivedFrom).map((t) => t.name))
  const names = report.tensors.map((t) => t.name).filter((n) => decodable.has(n))
  const service = new StatsService({ threads: opts.threads })
  let all: Map<string, TensorStats>
  try {
    // Workers reopen the model from the path the user gave (folder, index or file).
    all = await service.computeAll(path, names, {}, {
      onProgress: opts.onProgress,
      signal: opts.signal,
    })
  } finally {
    await service.close()
  }
  for (const t of report.tensors) {
    const s = all.get(t.name)
    if (s) t.stats = inspectStats(s)
  }
}

export function inspectStats(s: TensorStats): InspectStats {
  if (s.count - s.nan - s.inf === 0) {
    return { min: null, max: null, mean: null, std: null, absmax: null, kurtosis: null, nan: s.nan, inf: s.inf }
  }
  return { min: s.min, max: s.max, mean: s.mean, std: s.std, absmax: s.absmax, kurtosis: s.kurtosis, nan: s.nan, inf: s.inf }
}
