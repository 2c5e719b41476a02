import { chromium, type BrowserContext, type Page } from 'playwright-core'

/** Flags for Debian's Chromium on these machines (shared/toolchain.md): no sandbox as root, no network chatter. */
export const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']

/**
 * Headless Debian Chromium with a fresh profile in `userDataDir`, and its first page. Page
 * errors and console errors are appended to `problems`, so a test can assert there were none.
 */
export async function launchChromiumPage(userDataDir: string, problems: string[]): Promise<{ browser: BrowserContext; page: Page }> {
  const browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: CHROMIUM_ARGS,
    viewport: { width: 1440, height: 1100 },
  })
  const page = browser.pages()[0] ?? (await browser.newPage())
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`))
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`)
  })
  return { browser, page }
}
