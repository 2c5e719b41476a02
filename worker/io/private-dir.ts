import { chmod, lstat, mkdir } from 'node:fs/promises'
import { homedir } from 'node:os'
import { isAbsolute, join, resolve } from 'node:path'

/**
 * Per-user private folders for caches. A cache that lives where another local user can plant
 * a symlink or a file gets followed or trusted (issue 8: a tampered log-prob cache gave a mean
 * KL of 7.84 for a model against itself), so every cache folder is made and checked here:
 * owned by this user, mode 0700, not a symlink.
 */

/** A cache folder that cannot be made private: a symlink, or owned by another user. */
export class PrivateDirError extends Error {
  constructor(
    readonly path: string,
    readonly problem: string,
  ) {
    super(`cache folder ${path}: ${problem}`)
    this.name = 'PrivateDirError'
  }
}

/**
 * Quantscope's cache root: `$XDG_CACHE_HOME/quantscope`, else `~/.cache/quantscope`.
 * Caches take a subfolder each (`stats`, `logprobs`). Nothing is created here; callers pass
 * the folder they use to ensurePrivateDir. A relative XDG_CACHE_HOME is ignored, as the XDG
 * spec asks.
 */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const xdg = env.XDG_CACHE_HOME
  const base = xdg && isAbsolute(xdg) ? xdg : join(homedir(), '.cache')
  return join(base, 'quantscope')
}

/**
 * Creates `path` (and missing parents) with mode 0700, or checks an existing folder:
 * - a symlink, or not a folder → PrivateDirError (never followed: it may point anywhere);
 * - owned by another user → PrivateDirError;
 * - ours but with group/other permission bits → repaired to 0700.
 * Returns the absolute path. On Windows (no POSIX modes) only the symlink and type checks apply.
 */
export async function ensurePrivateDir(path: string): Promise<string> {
  const dir = resolve(path)
  // mkdir's mode applies to every folder it creates, parents included, before any file exists.
  const made = await mkdir(dir, { recursive: true, mode: 0o700 }).then(
    () => null,
    (err: NodeJS.ErrnoException) => err,
  )
  // EEXIST (a file, a dangling symlink) gets its own message below.
  const info = await lstat(dir).catch(() => {
    throw made ?? new PrivateDirError(dir, 'cannot be created')
  })
  if (info.isSymbolicLink()) throw new PrivateDirError(dir, 'is a symbolic link; refusing to follow it (remove it or choose another folder)')
  if (!info.isDirectory()) throw new PrivateDirError(dir, 'exists and is not a folder')
  if (process.platform === 'win32') return dir
  const uid = process.getuid?.()
  if (uid !== undefined && info.uid !== uid) throw new PrivateDirError(dir, `is owned by user id ${info.uid}, not by this user (${uid})`)
  if ((info.mode & 0o077) !== 0) {
    await chmod(dir, 0o700)
    // Re-check: chmod follows symlinks, so make sure the folder was not swapped meanwhile.
    const after = await lstat(dir)
    if (after.isSymbolicLink() || after.ino !== info.ino || (after.mode & 0o077) !== 0) {
      throw new PrivateDirError(dir, 'changed while its permissions were being repaired')
    }
  }
  return dir
}
