/**
 * Recently opened models, remembered in a small JSON file (Electron: userData; browser mode:
 * $XDG_CONFIG_HOME/quantscope or a --state-dir). Newest first, one entry per model, entries
 * whose path has disappeared are dropped when listed. Paths are kept normalised (absolute,
 * `~` expanded, no `..`, no trailing slash), so one model typed two ways is one entry.
 */
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { dirname, join, resolve } from 'node:path'
import * as v from 'valibot'
import type { RecentModel } from '../worker/api/contract'
import type { RecentModelsBackend } from '../worker/api/engine-service'
import { describeIssue } from '../worker/api/parse-request'
import { recentModelSchema } from '../worker/api/schemas'
import { withFileLock } from '../worker/io/file-lock'

const MAX_RECENT = 12

export function defaultStateDir(): string {
  const base = process.env.XDG_CONFIG_HOME || join(homedir(), '.config')
  return join(base, 'quantscope')
}

/** '~/m', './m/', '/a/../m' → one absolute spelling of the path (symlinks are left alone). */
export function normaliseModelPath(path: string): string {
  const trimmed = path.trim()
  const expanded = trimmed === '~' ? homedir() : /^~[\\/]/.test(trimmed) ? join(homedir(), trimmed.slice(2)) : trimmed
  return resolve(expanded)
}

/** Normalised paths, first (newest) entry of each path kept. */
function normaliseEntries(entries: RecentModel[]): RecentModel[] {
  const seen = new Set<string>()
  const out: RecentModel[] = []
  for (const e of entries) {
    const path = normaliseModelPath(e.path)
    if (seen.has(path)) continue
    seen.add(path)
    out.push(path === e.path ? e : { ...e, path })
  }
  return out
}

export class RecentModelsFile implements RecentModelsBackend {
  /** Writes are chained so two quick opens never interleave a read-modify-write. */
  private queue: Promise<unknown> = Promise.resolve()

  constructor(
    readonly file: string,
    /** Where skipped entries are reported (stderr by default). */
    private readonly warn: (line: string) => void = (line) => console.warn(line),
  ) {}

  async list(): Promise<RecentModel[]> {
    // Files written before paths were normalised may hold one model under two spellings.
    const entries = normaliseEntries(await this.read())
    const alive: RecentModel[] = []
    for (const e of entries) {
      if (await stat(e.path).then(() => true, () => false)) alive.push(e)
    }
    return alive
  }

  add(entry: RecentModel): Promise<void> {
    const next = this.queue.then(async () => {
      await mkdir(dirname(this.file), { recursive: true })
      // Other processes (a second window's host, a browser host) share the file: lock across them.
      await withFileLock(this.file, async () => {
        const entries = normaliseEntries([{ ...entry, path: normaliseModelPath(entry.path) }, ...(await this.read())])
        await this.write(entries.slice(0, MAX_RECENT))
      })
    })
    this.queue = next.catch(() => {})
    return next
  }

  private async read(): Promise<RecentModel[]> {
    let text: string
    try {
      text = await readFile(this.file, 'utf8')
    } catch {
      return []
    }
    let json: unknown
    try {
      json = JSON.parse(text)
    } catch (err) {
      // A corrupt file only loses the list; it never stops the app from starting.
      this.warn(`quantscope: ${this.file} is not valid JSON (${(err as Error).message}); starting with no recent models`)
      return []
    }
    if (!Array.isArray(json)) {
      this.warn(`quantscope: ${this.file} does not hold a list; starting with no recent models`)
      return []
    }
    const entries: RecentModel[] = []
    json.forEach((item, i) => {
      const r = v.safeParse(recentModelSchema, item, { abortEarly: true })
      if (r.success) entries.push(r.output)
      else this.warn(`quantscope: ${this.file}: skipped entry ${i}: ${describeIssue(r.issues[0], 'the entry')}`)
    })
    return entries
  }

  private async write(entries: RecentModel[]): Promise<void> {
    await mkdir(dirname(this.file), { recursive: true })
    const tmp = `${this.file}.${process.pid}.tmp`
    await writeFile(tmp, JSON.stringify(entries, null, 2))
    await rename(tmp, this.file)
  }
}
