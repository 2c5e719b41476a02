import { randomBytes } from 'node:crypto'
import { open, readFile, rename, rm, stat } from 'node:fs/promises'

/**
 * A lock file beside a file that several processes read-modify-write (the runs file, the
 * recent-models list): `<file>.lock`, created with O_EXCL, holding the owner's pid. Within
 * one process callers should still chain their writes; this orders writes between processes
 * (an app and a CLI, two browser hosts), where two unlocked writers lost each other's
 * records (150 + 150 appends left 173).
 *
 * A lock whose owner is gone (pid not running) or that is older than `staleMs` is taken over,
 * so a crash never blocks the file for good.
 */
export interface FileLockOptions {
  /** Give up after this long (default 10 s). */
  timeoutMs?: number
  /** A lock older than this is stale (default 30 s: far longer than any write it guards). */
  staleMs?: number
}

export class FileLockTimeoutError extends Error {
  constructor(readonly file: string) {
    super(`${file}: could not take the lock ${file}.lock (another Quantscope process holds it)`)
    this.name = 'FileLockTimeoutError'
  }
}

export async function withFileLock<T>(file: string, body: () => Promise<T>, options: FileLockOptions = {}): Promise<T> {
  const lock = `${file}.lock`
  const deadline = Date.now() + (options.timeoutMs ?? 10_000)
  const staleMs = options.staleMs ?? 30_000
  // pid (for staleness) and a nonce (so we only ever remove our own lock).
  const mine = `${process.pid} ${randomBytes(8).toString('hex')}`
  let wait = 2
  for (;;) {
    try {
      const fh = await open(lock, 'wx', 0o600)
      try {
        await fh.writeFile(mine)
      } finally {
        await fh.close()
      }
      break
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err
      if (await isStale(lock, staleMs)) {
        // Rename, not remove: of two waiters judging the same stale lock, only one rename
        // succeeds, so the other can never delete the fresh lock the first one then takes.
        const grave = `${lock}.stale-${randomBytes(6).toString('hex')}`
        if (await rename(lock, grave).then(() => true, () => false)) await rm(grave, { force: true })
        continue
      }
      if (Date.now() > deadline) throw new FileLockTimeoutError(file)
      await new Promise((r) => setTimeout(r, wait))
      wait = Math.min(50, wait * 2)
    }
  }
  try {
    return await body()
  } finally {
    // Only our own lock: if it was taken over as stale meanwhile, the new holder's stays.
    if ((await readFile(lock, 'utf8').catch(() => null)) === mine) await rm(lock, { force: true })
  }
}

async function isStale(lock: string, staleMs: number): Promise<boolean> {
  try {
    const [info, text] = await Promise.all([stat(lock), readFile(lock, 'utf8')])
    if (Date.now() - info.mtimeMs > staleMs) return true
    const pid = Number(text.split(' ')[0])
    // An empty file is a lock being written right now, not a stale one.
    if (!Number.isInteger(pid) || pid <= 0) return false
    if (pid === process.pid) return false
    try {
      process.kill(pid, 0)
      return false
    } catch (err) {
      return (err as NodeJS.ErrnoException).code === 'ESRCH'
    }
  } catch {
    // Gone between our attempts: not stale, just free.
    return false
  }
}
