/**
 * Saved quantization plans, kept per model in one small JSON file in the engine's state folder
 * (beside eval-runs.json and recent-models.json), keyed by the model's absolute path, so a
 * model's plans come back when it is opened again. Several processes may share the file: every
 * change is a read-modify-write under a lock file (worker/io/file-lock.ts), written atomically
 * (temporary file, then rename); it is read through the schema plan by plan, so a corrupt
 * record loses only itself.
 *
 * File: { "version": 1, "models": { "/abs/model/path": [SavedPlan, …] } }
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import * as v from 'valibot'
import type { SavedPlan } from '../worker/api/contract'
import { describeIssue } from '../worker/api/parse-request'
import { withFileLock } from '../worker/io/file-lock'
import type { SavedPlansBackend } from '../worker/api/saved-plans'
import { plansDocumentSchema, savedPlanSchema } from '../worker/api/schemas'

export const PLANS_FILE_NAME = 'plans.json'
const MAX_PLANS_PER_MODEL = 500

interface PlansDocument {
  version: 1
  models: Record<string, SavedPlan[]>
}

export class SavedPlansFile implements SavedPlansBackend {
  /** Writes are chained so two saves never interleave a read-modify-write. */
  private queue: Promise<unknown> = Promise.resolve()

  constructor(
    readonly file: string,
    private readonly maxPerModel = MAX_PLANS_PER_MODEL,
    /** Where skipped records are reported (stderr by default). */
    private readonly warn: (line: string) => void = (line) => console.warn(line),
  ) {}

  async list(modelPath: string): Promise<SavedPlan[]> {
    await this.queue
    const doc = await this.read()
    return [...(doc.models[resolve(modelPath)] ?? [])].sort((a, b) => b.savedAt - a.savedAt)
  }

  save(plan: SavedPlan): Promise<void> {
    return this.update(async (doc) => {
      const key = resolve(plan.modelPath)
      doc.models[key] = [plan, ...(doc.models[key] ?? []).filter((p) => p.id !== plan.id)].slice(0, this.maxPerModel)
      return true
    }).then(() => {})
  }

  remove(modelPath: string, id: string): Promise<boolean> {
    return this.update(async (doc) => {
      const key = resolve(modelPath)
      const plans = doc.models[key] ?? []
      const kept = plans.filter((p) => p.id !== id)
      if (kept.length === plans.length) return false
      if (kept.length) doc.models[key] = kept
      else delete doc.models[key]
      return true
    })
  }

  /** Read, change, write (only when `change` says it changed something), one at a time. */
  private update(change: (doc: PlansDocument) => Promise<boolean>): Promise<boolean> {
    const next = this.queue.then(async () => {
      await mkdir(dirname(this.file), { recursive: true })
      return withFileLock(this.file, async () => {
        const doc = await this.read()
        const changed = await change(doc)
        if (changed) await this.write(doc)
        return changed
      })
    })
    this.queue = next.catch(() => {})
    return next
  }

  private async read(): Promise<PlansDocument> {
    let text: string
    try {
      text = await readFile(this.file, 'utf8')
    } catch {
      return { version: 1, models: {} }
    }
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch (err) {
      this.warn(`quantscope: ${this.file} is not valid JSON (${(err as Error).message}); its plans are not listed`)
      return { version: 1, models: {} }
    }
    const doc = v.safeParse(plansDocumentSchema, json, { abortEarly: true })
    if (!doc.success) {
      this.warn(`quantscope: ${this.file} is not a plans file: ${describeIssue(doc.issues[0], 'the document')}; its plans are not listed`)
      return { version: 1, models: {} }
    }
    const models: Record<string, SavedPlan[]> = {}
    for (const [path, records] of Object.entries(doc.output.models)) {
      models[path] = []
      records.forEach((record, i) => {
        const plan = v.safeParse(savedPlanSchema, record, { abortEarly: true })
        if (plan.success) models[path]!.push(plan.output)
        else this.warn(`quantscope: ${this.file}: skipped plan ${i} of ${path}: ${describeIssue(plan.issues[0], 'the plan')}`)
      })
    }
    return { version: 1, models }
  }

  private async write(doc: PlansDocument): Promise<void> {
    await mkdir(dirname(this.file), { recursive: true })
    const tmp = `${this.file}.${process.pid}.tmp`
    await writeFile(tmp, JSON.stringify(doc, null, 1))
    await rename(tmp, this.file)
  }
}
