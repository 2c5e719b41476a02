import { mkdir, mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join, resolve } from 'node:path'
import type { BrowserContext, Page } from 'playwright-core'
import { startHostProcess, type HostProcess } from './browser-host-process'
import { launchChromiumPage } from './chromium-page'

export const REPO_ROOT = resolve(import.meta.dirname, '..', '..')
/** Screenshots the e2e tests leave for a human to look at. */
export const ARTIFACTS = join(REPO_ROOT, 'test-artifacts')
export const DEFAULT_MODEL = join(REPO_ROOT, 'resources', 'models', 'default')

export interface E2eSession {
  /** Private temp folder of this test file (state, cache, Chromium profile, outputs). */
  dir: string
  host: HostProcess
  browser: BrowserContext
  page: Page
  /** Page errors and console errors: a test asserts there were none. */
  problems: string[]
  close(): Promise<void>
}

/**
 * What most e2e files start with: a temp folder, the browser-mode host on `model` with its own
 * state and cache folders (nothing from the developer's home), and a fresh Chromium page.
 */
export async function openE2eSession(name: string, model: string = DEFAULT_MODEL): Promise<E2eSession> {
  const dir = await mkdtemp(join(tmpdir(), `qs-e2e-${name}-`))
  await mkdir(ARTIFACTS, { recursive: true })
  const problems: string[] = []
  let host: HostProcess | undefined
  try {
    host = await startHostProcess([model, '--state-dir', join(dir, 'state'), '--cache-dir', join(dir, 'cache')])
    const { browser, page } = await launchChromiumPage(join(dir, 'chromium'), problems)
    const h = host
    return {
      dir,
      host: h,
      browser,
      page,
      problems,
      async close() {
        await browser.close().catch(() => {})
        await h.stop()
        await rm(dir, { recursive: true, force: true })
      },
    }
  } catch (err) {
    await host?.stop()
    await rm(dir, { recursive: true, force: true })
    throw err
  }
}
