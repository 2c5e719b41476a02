/**
 * Where an export is written while it is incomplete, and the checks before any byte is:
 * the destination is not the source model (nor a folder holding it, nor inside an HF model
 * folder), it does not exist yet, and its folder does. The output is staged as
 * `<out>.partial-<pid>` beside the destination (same file system, so the final rename is
 * atomic) and removed whenever the export fails or is cancelled.
 */
import { mkdir, readdir, realpath, rm, stat } from 'node:fs/promises'
import { basename, dirname, extname, isAbsolute, join, relative, resolve } from 'node:path'
import type { OpenedModel } from '../formats/contract'
import { ExportError } from './contract'

async function realOrResolved(path: string): Promise<string> {
  try {
    return await realpath(path)
  } catch {
    // Not there yet: resolve its folder (which must exist) and keep the name.
    try {
      return join(await realpath(dirname(path)), basename(path))
    } catch {
      return resolve(path)
    }
  }
}

function isInside(child: string, parent: string): boolean {
  const rel = relative(parent, child)
  return rel === '' || (!rel.startsWith('..') && !isAbsolute(rel))
}

/** The report's path beside the export: `<name>.report.json` (name without a file extension). */
export function reportPathFor(out: string, output: 'file' | 'folder'): string {
  const ext = output === 'file' ? extname(out) : ''
  return `${ext ? out.slice(0, -ext.length) : out}.report.json`
}

/**
 * Refuses a destination that would write over or into the source model: equal to one of its
 * files, a folder holding one of them, or (for a model folder with config/tokenizer files)
 * any path inside that folder. Also refuses an existing destination or report and a missing
 * parent folder. Returns the absolute destination.
 */
export async function checkDestination(model: OpenedModel, outPath: string, output: 'file' | 'folder'): Promise<string> {
  const out = await realOrResolved(resolve(outPath))
  const report = await realOrResolved(reportPathFor(out, output))
  const files = await Promise.all(model.files.map(realOrResolved))
  for (const f of files) {
    if (f === out || f === report) throw new ExportError(out, `is a file of the source model (${f}); the source model is never written`)
    if (isInside(f, out)) throw new ExportError(out, `holds the source model's file ${f}; the source model is never written`)
  }
  // An HF folder is one model: writing anything into it would change what it holds.
  if (files.length > 1) {
    const folders = new Set(files.map((f) => dirname(f)))
    for (const folder of folders) {
      if (isInside(out, folder)) throw new ExportError(out, `is inside the source model's folder ${folder}; choose a destination outside it`)
    }
  }
  let parent
  try {
    parent = await stat(dirname(out))
  } catch {
    throw new ExportError(out, `its folder ${dirname(out)} does not exist`)
  }
  if (!parent.isDirectory()) throw new ExportError(out, `${dirname(out)} is not a folder`)
  for (const p of [out, report]) {
    const exists = await stat(p).then(
      () => true,
      () => false,
    )
    if (exists) throw new ExportError(out, `${p} already exists; remove it or choose another destination`)
  }
  return out
}

/** The temporary name of an export in progress, beside its destination. */
export function stagePathFor(out: string): string {
  return `${out}.partial-${process.pid}`
}

/** Creates the staging folder (folder formats) or clears a stale staging file of this process. */
export async function prepareStage(stage: string, output: 'file' | 'folder'): Promise<void> {
  await rm(stage, { recursive: true, force: true })
  if (output === 'folder') await mkdir(stage)
}

/** Removes a staged export; never throws (it runs while another error is on its way). */
export async function discardStage(stage: string): Promise<void> {
  await rm(stage, { recursive: true, force: true }).catch(() => {})
}

/** Every file of a finished export (a file, or a folder's files recursively), with sizes. */
export async function listOutputFiles(path: string): Promise<{ path: string; bytes: number }[]> {
  const info = await stat(path)
  if (!info.isDirectory()) return [{ path, bytes: info.size }]
  const out: { path: string; bytes: number }[] = []
  for (const name of (await readdir(path)).sort()) out.push(...(await listOutputFiles(join(path, name))))
  return out
}

