/**
 * Recently opened models, remembered in a small JSON file (Electron: userData; browser mode:
 * $XDG_CONFIG_HOME/quantscope or a --state-dir). Newest first, one entry per path, entries
 * whose path has disappeared are dropped when listed.
 */
import { mkdir, readFile, rename, stat, writeFile } from 'node:fs/promises'
import { homedir } from 'node:os'
import { dirname, join } from 'node:path'
import type { RecentModel } from '../worker/api/contract'
import type { RecentModelsBackend } from '../worker/api/engine-service'

const MAX_RECENT = 12

export function defaultStateDir(): string {
  const base = process.env.XDG_CONFIG_HOME || join(homedir(), '.config')
  return join(base, 'quantscope')
}

export class RecentModelsFile implements RecentModelsBackend {
  /** Writes are chained so two quick opens never interleave a read-modify-write. */
  private queue: Promise<unknown> = Promise.resolve()

  constructor(readonly file: string) {}

  async list(): Promise<RecentModel[]> {
    const entries = await this.read()
    const alive: RecentModel[] = []
    for (const e of entries) {
      if (await stat(e.path).then(() => true, () => false)) alive.push(e)
    }
    return alive
  }

  add(entry: RecentModel): Promise<void> {
    const next = this.queue.then(async () => {
      const entries = (await this.read()).filter((e) => e.path !== entry.path)
      entries.unshift(entry)
      await this.write(entries.slice(0, MAX_RECENT))
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
    try {
      const json: unknown = JSON.parse(text)
      if (!Array.isArray(json)) return []
      return json.filter(isRecentModel)
    } catch {
      // A corrupt file only loses the list; it never stops the app from starting.
      return []
    }
  }

  private async write(entries: RecentModel[]): Promise<void> {
    await mkdir(dirname(this.file), { recursive: true })
    const tmp = `${this.file}.${process.pid}.tmp`
    await writeFile(tmp, JSON.stringify(entries, null, 2))
    await rename(tmp, this.file)
  }
}

function isRecentModel(v: unknown): v is RecentModel {
  if (!v || typeof v !== 'object') return false
  const e = v as Record<string, unknown>
  return typeof e.path === 'string' && typeof e.name === 'string' && typeof e.openedAt === 'number'
}
