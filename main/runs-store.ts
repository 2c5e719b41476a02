/**
 * Evaluation runs, kept per model in one small JSON file in the engine's state folder
 * (Electron: userData; browser mode: $XDG_CONFIG_HOME/quantscope or --state-dir), beside
 * recent-models.json. Keyed by the model's absolute path, so a model's runs come back when
 * it is opened again, after a restart too. Newest first; the oldest beyond a limit are dropped.
 *
 * File: { "version": 1, "models": { "/abs/model/path": [EvalRun, …] } }
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import type { EvalRun } from '../worker/api/contract'
import type { EvalRunsBackend } from '../worker/api/evaluate-service'

export const RUNS_FILE_NAME = 'eval-runs.json'
const MAX_RUNS_PER_MODEL = 200

interface RunsDocument {
  version: 1
  models: Record<string, EvalRun[]>
}

export class EvalRunsFile implements EvalRunsBackend {
  /** Writes are chained so two runs finishing together never interleave a read-modify-write. */
  private queue: Promise<unknown> = Promise.resolve()

  constructor(
    readonly file: string,
    private readonly maxPerModel = MAX_RUNS_PER_MODEL,
  ) {}

  async list(modelPath: string): Promise<EvalRun[]> {
    // Wait for writes in flight, so a run is listed as soon as its evaluation has returned.
    await this.queue
    const doc = await this.read()
    return [...(doc.models[resolve(modelPath)] ?? [])].sort((a, b) => b.createdAt - a.createdAt)
  }

  add(run: EvalRun): Promise<void> {
    const next = this.queue.then(async () => {
      const doc = await this.read()
      const key = resolve(run.modelPath)
      doc.models[key] = [run, ...(doc.models[key] ?? []).filter((r) => r.id !== run.id)].slice(0, this.maxPerModel)
      await this.write(doc)
    })
    this.queue = next.catch(() => {})
    return next
  }

  private async read(): Promise<RunsDocument> {
    let text: string
    try {
      text = await readFile(this.file, 'utf8')
    } catch {
      return { version: 1, models: {} }
    }
    try {
      const json = JSON.parse(text) as { models?: unknown }
      const models: Record<string, EvalRun[]> = {}
      if (json && typeof json.models === 'object' && json.models !== null && !Array.isArray(json.models)) {
        for (const [path, runs] of Object.entries(json.models as Record<string, unknown>)) {
          if (Array.isArray(runs)) models[path] = runs.filter(isEvalRun)
        }
      }
      return { version: 1, models }
    } catch {
      // A corrupt file only loses the runs; it never stops an evaluation or the app.
      return { version: 1, models: {} }
    }
  }

  private async write(doc: RunsDocument): Promise<void> {
    await mkdir(dirname(this.file), { recursive: true })
    const tmp = `${this.file}.${process.pid}.tmp`
    await writeFile(tmp, JSON.stringify(doc, null, 1))
    await rename(tmp, this.file)
  }
}

/** Enough of an EvalRun that the runs table can show it (older or hand-edited entries are skipped). */
function isEvalRun(v: unknown): v is EvalRun {
  if (!v || typeof v !== 'object') return false
  const r = v as Record<string, unknown>
  return (
    typeof r.id === 'string' &&
    typeof r.modelPath === 'string' &&
    typeof r.createdAt === 'number' &&
    typeof r.ppl === 'number' &&
    typeof r.ctx === 'number' &&
    typeof r.tokens === 'number' &&
    typeof r.variantLabel === 'string' &&
    typeof r.variant === 'object' &&
    r.variant !== null &&
    typeof r.text === 'object' &&
    r.text !== null
  )
}
