import { workerData } from 'node:worker_threads'
import type { OpenedModel } from '../formats/contract'
import { openModel } from '../formats/open-model'
import { serveJobs, type JobContext } from '../jobs/job-worker'
import { packedTransferList, type PackedTensorStats, type StatsKernelKind } from './stats-accumulator'
import { modelFingerprint, type ComputeParams, type ComputeResult, type DescribedModel, type StatsJobs, type StatsModelSummary } from './stats-protocol'
import { computeTensorStatsPacked, FileHandleCache } from './tensor-stats'

/**
 * Stats worker thread: serves StatsJobs (stats-protocol.ts) through serveJobs, which runs them
 * one at a time and handles cancel. Models are opened by path and kept open for the next job
 * on the same model.
 */
const defaultKernel = (workerData?.kernel as StatsKernelKind | undefined) ?? undefined

interface OpenEntry {
  fingerprint: string
  model: OpenedModel
  files: FileHandleCache
  /** Stored bytes by tensor name (progress weights), built once per open model. */
  bytesByName: Map<string, number>
}

/** Open models by path; two at most, least recently used closed first. */
const open = new Map<string, Promise<OpenEntry>>()
const MAX_OPEN = 2

async function closeEntry(pending: Promise<OpenEntry>): Promise<void> {
  const e = await pending.catch(() => null)
  if (!e) return
  await e.files.close().catch(() => {})
  await e.model.close().catch(() => {})
}

async function openFresh(path: string): Promise<OpenEntry> {
  const model = await openModel(path)
  try {
    const bytesByName = new Map(model.tensors.map((t) => [t.name, t.byteLength]))
    return { model, fingerprint: await modelFingerprint(model.files), files: new FileHandleCache(), bytesByName }
  } catch (err) {
    await model.close()
    throw err
  }
}

/**
 * The open model for `path`, reopened when its files changed on disk (a rewritten file is a
 * new inode: the old handle would keep reading the old bytes) or when `expected` names other
 * bytes than the open ones.
 */
async function getModel(path: string, expected?: string): Promise<OpenEntry> {
  let pending = open.get(path)
  if (pending) {
    const entry = await pending.catch(() => null)
    const current = expected ?? (entry ? await modelFingerprint(entry.model.files).catch(() => null) : null)
    if (entry && entry.fingerprint === current) {
      open.delete(path)
      open.set(path, pending) // most recently used last
      return entry
    }
    if (open.get(path) === pending) open.delete(path)
    void closeEntry(pending)
  }
  pending = openFresh(path)
  open.set(path, pending)
  pending.catch(() => open.delete(path))
  while (open.size > MAX_OPEN) {
    const [oldPath, oldest] = open.entries().next().value as [string, Promise<OpenEntry>]
    open.delete(oldPath)
    void closeEntry(oldest)
  }
  return pending
}

async function describe({ path }: { path: string }): Promise<DescribedModel> {
  const { model, fingerprint } = await getModel(path)
  const tensors: StatsModelSummary['tensors'] = model.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.byteLength, decodable: t.decodable }))
  return { path, fingerprint, files: model.files, tensorsJson: JSON.stringify(tensors) }
}

async function compute(params: ComputeParams, ctx: JobContext): Promise<ComputeResult> {
  const { model, fingerprint, files, bytesByName } = await getModel(params.path, params.fingerprint)
  // Progress in stored bytes over the batch, like the service counts it.
  const weights = params.tensors.map((n) => Math.max(1, bytesByName.get(n) ?? 1))
  const totalBytes = weights.reduce((a, b) => a + b, 0)
  let before = 0
  const stats: PackedTensorStats[] = []
  for (let i = 0; i < params.tensors.length; i++) {
    const w = weights[i]!
    const one = await computeTensorStatsPacked(model, params.tensors[i]!, params.options, {
      kernel: params.kernel ?? defaultKernel,
      signal: ctx.signal,
      files,
      onProgress: (done, total) => ctx.progress(before + (total > 0 ? Math.floor((done / total) * w) : 0), totalBytes),
    })
    stats.push(one)
    ctx.transfer(packedTransferList(one))
    before += w
    ctx.progress(before, totalBytes)
  }
  return { stats, fingerprint }
}

serveJobs<StatsJobs>({ describe, compute })
