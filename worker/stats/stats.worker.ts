import { parentPort, workerData } from 'node:worker_threads'
import type { OpenedModel } from '../formats/contract'
import { openModel } from '../formats/open-model'
import { packedTransferList, type StatsKernelKind } from './stats-accumulator'
import {
  modelFingerprint,
  serializeError,
  type ModelSummary,
  type StatsWorkerMessage,
  type StatsWorkerRequest,
} from './stats-protocol'
import { abortError, computeTensorStatsPacked, FileHandleCache } from './tensor-stats'

/**
 * Stats worker thread: opens models by path (kept open for the next job on the same model),
 * runs 'describe' and 'compute' jobs one at a time in arrival order and posts progress,
 * result or error. 'cancel' drops a queued job or aborts the running one at its next chunk.
 */
if (!parentPort) throw new Error('stats.worker must run in a worker thread')
const port = parentPort
const defaultKernel = (workerData?.kernel as StatsKernelKind | undefined) ?? undefined

interface OpenEntry {
  fingerprint: string
  model: OpenedModel
  files: FileHandleCache
}

/** Open models by path; two at most, least recently used closed first. */
const open = new Map<string, Promise<OpenEntry>>()
const MAX_OPEN = 2

type Job = Extract<StatsWorkerRequest, { type: 'describe' } | { type: 'compute' }>
const queue: Job[] = []
let running: { jobId: number; controller: AbortController } | null = null

function post(msg: StatsWorkerMessage, transfer: ArrayBuffer[] = []): void {
  port.postMessage(msg, transfer)
}

async function closeEntry(pending: Promise<OpenEntry>): Promise<void> {
  const e = await pending.catch(() => null)
  if (!e) return
  await e.files.close().catch(() => {})
  await e.model.close().catch(() => {})
}

async function openFresh(path: string): Promise<OpenEntry> {
  const model = await openModel(path)
  try {
    return { model, fingerprint: await modelFingerprint(model.files), files: new FileHandleCache() }
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

async function describe(jobId: number, path: string): Promise<void> {
  const { model, fingerprint } = await getModel(path)
  const summary: ModelSummary = {
    path,
    fingerprint,
    files: model.files,
    tensors: model.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, byteLength: t.byteLength, decodable: t.decodable })),
  }
  post({ type: 'described', jobId, model: summary })
}

async function compute(msg: Extract<Job, { type: 'compute' }>, signal: AbortSignal): Promise<void> {
  const { model, fingerprint, files } = await getModel(msg.path, msg.fingerprint)
  let lastPost = 0
  const stats = await computeTensorStatsPacked(model, msg.tensor, msg.options, {
    kernel: msg.kernel ?? defaultKernel,
    signal,
    files,
    onProgress(done, total) {
      // At most ~20 messages a second per job; the last one always goes out.
      const now = performance.now()
      if (done < total && now - lastPost < 50) return
      lastPost = now
      post({ type: 'progress', jobId: msg.jobId, done, total })
    },
  })
  post({ type: 'result', jobId: msg.jobId, stats, fingerprint }, packedTransferList(stats))
}

let draining = false
async function drain(): Promise<void> {
  if (draining) return
  draining = true
  try {
    for (let job = queue.shift(); job; job = queue.shift()) {
      const controller = new AbortController()
      running = { jobId: job.jobId, controller }
      try {
        if (job.type === 'describe') await describe(job.jobId, job.path)
        else await compute(job, controller.signal)
      } catch (err) {
        post({ type: 'error', jobId: job.jobId, error: serializeError(err) })
      } finally {
        running = null
      }
    }
  } finally {
    draining = false
  }
}

port.on('message', (msg: StatsWorkerRequest) => {
  switch (msg.type) {
    case 'describe':
    case 'compute':
      queue.push(msg)
      void drain()
      break
    case 'cancel': {
      const i = queue.findIndex((j) => j.jobId === msg.jobId)
      if (i >= 0) {
        queue.splice(i, 1)
        post({ type: 'error', jobId: msg.jobId, error: serializeError(abortError()) })
      } else if (running?.jobId === msg.jobId) running.controller.abort()
      break
    }
  }
})
