/**
 * Evaluation runs, kept per model in one small JSON file in the engine's state folder
 * (Electron: userData; browser mode: $XDG_CONFIG_HOME/quantscope or --state-dir), beside
 * recent-models.json. Keyed by the model's absolute path, so a model's runs come back when
 * it is opened again, after a restart too. Newest first; the oldest beyond a limit are dropped.
 *
 * File: { "version": 1, "models": { "/abs/model/path": [EvalRun, …] } }
 *
 * Several processes may share the file (the app, a browser host, scripts): every change is a
 * read-modify-write under a lock file (worker/io/file-lock.ts), and writes go to a temporary
 * name renamed into place, so no writer loses another's records and no reader sees half a file.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import * as v from 'valibot'
import type { EvalRun } from '../worker/api/contract'
import type { EvalRunsBackend } from '../worker/api/evaluate-service'
import { withFileLock } from '../worker/io/file-lock'
import { describeIssue } from '../worker/api/parse-request'
import { evalRunSchema, runsDocumentSchema } from '../worker/api/schemas'

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
    /** Where skipped records are reported (stderr by default). */
    private readonly warn: (line: string) => void = (line) => console.warn(line),
  ) {}

  async list(modelPath: string): Promise<EvalRun[]> {
    // Wait for writes in flight, so a run is listed as soon as its evaluation has returned.
    await this.queue
    const doc = await this.read()
    return [...(doc.models[resolve(modelPath)] ?? [])].sort((a, b) => b.createdAt - a.createdAt)
  }

  add(run: EvalRun): Promise<void> {
    const next = this.queue.then(() =>
      this.locked(async () => {
        const doc = await this.read()
        const key = resolve(run.modelPath)
        doc.models[key] = [run, ...(doc.models[key] ?? []).filter((r) => r.id !== run.id)].slice(0, this.maxPerModel)
        await this.write(doc)
      }),
    )
    this.queue = next.catch(() => {})
    return next
  }

  remove(modelPath: string, id: string): Promise<boolean> {
    const next = this.queue.then(() =>
      this.locked(async () => {
        const doc = await this.read()
        const key = resolve(modelPath)
        const runs = doc.models[key] ?? []
        const kept = runs.filter((r) => r.id !== id)
        if (kept.length === runs.length) return false
        if (kept.length) doc.models[key] = kept
        else delete doc.models[key]
        await this.write(doc)
        return true
      }),
    )
    this.queue = next.catch(() => {})
    return next
  }

  private async locked<T>(body: () => Promise<T>): Promise<T> {
    await mkdir(dirname(this.file), { recursive: true })
    return withFileLock(this.file, body)
  }

  private async read(): Promise<RunsDocument> {
    let text: string
    try {
      text = await readFile(this.file, 'utf8')
    } catch {
      return { version: 1, models: {} }
    }
    // A corrupt file or record only loses those runs; it never stops an evaluation or the app.
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch (err) {
      this.warn(`quantscope: ${this.file} is not valid JSON (${(err as Error).message}); its runs are not listed`)
      return { version: 1, models: {} }
    }
    const doc = v.safeParse(runsDocumentSchema, json, { abortEarly: true })
    if (!doc.success) {
      this.warn(`quantscope: ${this.file} is not a runs file: ${describeIssue(doc.issues[0], 'the document')}; its runs are not listed`)
      return { version: 1, models: {} }
    }
    const models: Record<string, EvalRun[]> = {}
    for (const [path, records] of Object.entries(doc.output.models)) {
      models[path] = []
      records.forEach((record, i) => {
        const run = v.safeParse(evalRunSchema, record, { abortEarly: true })
        if (run.success) models[path]!.push(run.output)
        else this.warn(`quantscope: ${this.file}: skipped run ${i} of ${path}: ${describeIssue(run.issues[0], 'the run')}`)
      })
    }
    return { version: 1, models }
  }

  private async write(doc: RunsDocument): Promise<void> {
    await mkdir(dirname(this.file), { recursive: true })
    const tmp = `${this.file}.${process.pid}.tmp`
    await writeFile(tmp, JSON.stringify(doc, null, 1))
    await rename(tmp, this.file)
  }
}
