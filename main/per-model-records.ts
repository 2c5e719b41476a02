/**
 * A small JSON file of records kept per model (evaluation runs, saved plans) in the engine's
 * state folder: { "version": 1, "models": { "/abs/model/path": [record, …] } }, keyed by the
 * model's absolute path so a model's records come back when it is opened again.
 *
 * Several processes may share the file (the app, a browser host, scripts): every change is a
 * read-modify-write under a lock file (worker/io/file-lock.ts), written to a temporary name
 * and renamed. Nothing is ever lost to a bad read:
 * - a record that fails its schema is not listed (a warning says so) but is written back
 *   unchanged with the others;
 * - a file that cannot be read, is not JSON or is not such a document (e.g. a newer version)
 *   lists nothing, and before the next change it is moved aside to `<file>.bad-<time>`
 *   instead of being overwritten.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import * as v from 'valibot'
import { describeIssue } from '../worker/api/parse-request'
import { withFileLock } from '../worker/io/file-lock'

// Files written before the version field existed have none; a newer version is not ours to rewrite.
const documentSchema = v.object({
  version: v.optional(v.literal(1)),
  models: v.record(v.string(), v.array(v.unknown(), 'must be a list'), 'must be an object'),
})

interface Loaded<T> {
  /** Valid records per model path. */
  models: Record<string, T[]>
  /** Records that failed the schema, per model path, kept as they were. */
  invalid: Record<string, unknown[]>
  /** Why the file as a whole could not be used (null: missing or fine). */
  unusable: string | null
}

export interface PerModelRecordsOptions<T> {
  file: string
  /** What one record is ('run', 'plan'), for warnings. */
  noun: string
  schema: v.GenericSchema<unknown, T>
  /** Newest first. */
  time(record: T): number
  id(record: T): string
  modelPath(record: T): string
  maxPerModel: number
  warn?(line: string): void
}

export class PerModelRecordsFile<T> {
  /** Writes are chained so two changes in this process never interleave. */
  private queue: Promise<unknown> = Promise.resolve()
  private readonly warn: (line: string) => void

  constructor(private readonly o: PerModelRecordsOptions<T>) {
    this.warn = o.warn ?? ((line) => console.warn(line))
  }

  get file(): string {
    return this.o.file
  }

  async list(modelPath: string): Promise<T[]> {
    // Wait for writes in flight, so a record is listed as soon as its call has returned.
    await this.queue
    const { models } = await this.load(true)
    return [...(models[resolve(modelPath)] ?? [])].sort((a, b) => this.o.time(b) - this.o.time(a))
  }

  /** Adds or replaces (same id) a record; the oldest beyond the limit are dropped. */
  put(record: T): Promise<void> {
    return this.update((models) => {
      const key = resolve(this.o.modelPath(record))
      const id = this.o.id(record)
      models[key] = [record, ...(models[key] ?? []).filter((r) => this.o.id(r) !== id)].slice(0, this.o.maxPerModel)
      return true
    }).then(() => {})
  }

  remove(modelPath: string, id: string): Promise<boolean> {
    return this.update((models) => {
      const key = resolve(modelPath)
      const records = models[key] ?? []
      const kept = records.filter((r) => this.o.id(r) !== id)
      if (kept.length === records.length) return false
      models[key] = kept
      return true
    })
  }

  private update(change: (models: Record<string, T[]>) => boolean): Promise<boolean> {
    const next = this.queue.then(async () => {
      await mkdir(dirname(this.o.file), { recursive: true })
      return withFileLock(this.o.file, async () => {
        const loaded = await this.load(false)
        if (loaded.unusable) {
          const aside = `${this.o.file}.bad-${Date.now()}`
          await rename(this.o.file, aside)
          this.warn(`quantscope: ${this.o.file} ${loaded.unusable}; moved it aside to ${aside} and started a new one`)
        }
        if (!change(loaded.models)) return false
        await this.write(loaded)
        return true
      })
    })
    this.queue = next.catch(() => {})
    return next
  }

  private async load(reportRecords: boolean): Promise<Loaded<T>> {
    const empty = (unusable: string | null): Loaded<T> => ({ models: {}, invalid: {}, unusable })
    let text: string
    try {
      text = await readFile(this.o.file, 'utf8')
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return empty(null)
      const unusable = `cannot be read (${(err as Error).message})`
      if (reportRecords) this.warn(`quantscope: ${this.o.file} ${unusable}; its ${this.o.noun}s are not listed`)
      return empty(unusable)
    }
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch (err) {
      const unusable = `is not valid JSON (${(err as Error).message})`
      if (reportRecords) this.warn(`quantscope: ${this.o.file} ${unusable}; its ${this.o.noun}s are not listed`)
      return empty(unusable)
    }
    const doc = v.safeParse(documentSchema, json, { abortEarly: true })
    if (!doc.success) {
      const unusable = `is not a ${this.o.noun}s file of this version: ${describeIssue(doc.issues[0], 'the document')}`
      if (reportRecords) this.warn(`quantscope: ${this.o.file} ${unusable}; its ${this.o.noun}s are not listed`)
      return empty(unusable)
    }
    const loaded = empty(null)
    for (const [path, records] of Object.entries(doc.output.models)) {
      loaded.models[path] = []
      records.forEach((record, i) => {
        const r = v.safeParse(this.o.schema, record, { abortEarly: true })
        if (r.success) loaded.models[path]!.push(r.output)
        else {
          ;(loaded.invalid[path] ??= []).push(record)
          if (reportRecords) this.warn(`quantscope: ${this.o.file}: skipped ${this.o.noun} ${i} of ${path}: ${describeIssue(r.issues[0], `the ${this.o.noun}`)}`)
        }
      })
    }
    return loaded
  }

  private async write(loaded: Loaded<T>): Promise<void> {
    const models: Record<string, unknown[]> = {}
    for (const path of new Set([...Object.keys(loaded.models), ...Object.keys(loaded.invalid)])) {
      const records = [...(loaded.models[path] ?? []), ...(loaded.invalid[path] ?? [])]
      if (records.length) models[path] = records
    }
    const tmp = `${this.o.file}.${process.pid}.tmp`
    await writeFile(tmp, JSON.stringify({ version: 1, models }, null, 1))
    await rename(tmp, this.o.file)
  }
}
