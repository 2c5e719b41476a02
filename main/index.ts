/**
 * Electron main process: one window (context isolation, sandbox, no Node in the renderer),
 * the File menu (open model file or folder, recent models) and the IPC transport of the API.
 * The engine runs on its own worker thread (main/engine-thread.ts) and computes statistics on
 * its worker pool; this thread only routes calls, so the window never freezes.
 */
import { app, BrowserWindow, dialog, Menu, session, type IpcMainInvokeEvent, type MenuItemConstructorOptions } from 'electron'
import { ipcMain } from 'electron'
import { join } from 'node:path'
import { fileURLToPath, pathToFileURL } from 'node:url'
import type { ApiEvent } from '../worker/api/contract'
import { modelFileExtensions } from '../worker/formats/registry'
import { defaultCacheDir } from '../worker/io/private-dir'
import { resolveDefaultModel } from './default-model'
import { startEngineThread } from './engine-thread'
import { IPC_CHOOSE_MODEL_PATH, IPC_CHOOSE_SAVE_PATH } from './ipc-channels'
import { modelArgument } from './model-argument'
import { registerIpcTransport } from './ipc-transport'
import { RecentModelsFile } from './recent-models'

const here = fileURLToPath(new URL('.', import.meta.url))
const preloadPath = join(here, '../preload/preload.cjs')
const rendererIndex = join(here, '../renderer/index.html')

let mainWindow: BrowserWindow | null = null

/** A model path among the command-line arguments (`electron . PATH` or the packaged `app PATH`). */
function modelPathArgument(argv: string[]): string | null {
  return modelArgument(argv.slice(app.isPackaged ? 1 : 2))
}

function sendEvent(event: ApiEvent): void {
  if (mainWindow && !mainWindow.isDestroyed()) mainWindow.webContents.send('quantscope:event', event)
}

function requestOpen(path: string): void {
  sendEvent({ type: 'open-model-request', path })
}

async function chooseModelPath(kind: 'file' | 'folder'): Promise<string | null> {
  const options: Electron.OpenDialogOptions =
    kind === 'folder'
      ? { title: 'Open Model Folder', properties: ['openDirectory'] }
      : {
          title: 'Open Model File',
          properties: ['openFile'],
          filters: [
            // Dialog filters take the last extension only ('.safetensors.index.json' → 'json').
            { name: 'Models', extensions: [...new Set(modelFileExtensions().map((e) => e.split('.').pop()!))] },
            { name: 'All files', extensions: ['*'] },
          ],
        }
  const result = mainWindow ? await dialog.showOpenDialog(mainWindow, options) : await dialog.showOpenDialog(options)
  return result.canceled || result.filePaths.length === 0 ? null : result.filePaths[0]!
}

async function buildMenu(recent: RecentModelsFile): Promise<void> {
  const recentItems: MenuItemConstructorOptions[] = (await recent.list()).map((r) => ({
    label: `${r.name}  —  ${r.path}`,
    click: () => requestOpen(r.path),
  }))
  const template: MenuItemConstructorOptions[] = [
    {
      label: 'File',
      submenu: [
        { label: 'Open Model File…', accelerator: 'CmdOrCtrl+O', click: () => void chooseModelPath('file').then((p) => p && requestOpen(p)) },
        { label: 'Open Model Folder…', accelerator: 'CmdOrCtrl+Shift+O', click: () => void chooseModelPath('folder').then((p) => p && requestOpen(p)) },
        { label: 'Open Recent', submenu: recentItems.length ? recentItems : [{ label: 'No recent models', enabled: false }] },
        { type: 'separator' },
        { role: 'quit' },
      ],
    },
    { role: 'editMenu' },
    {
      label: 'View',
      submenu: [{ role: 'reload' }, { role: 'toggleDevTools' }, { type: 'separator' }, { role: 'resetZoom' }, { role: 'zoomIn' }, { role: 'zoomOut' }],
    },
    { role: 'windowMenu' },
  ]
  Menu.setApplicationMenu(Menu.buildFromTemplate(template))
}

function createWindow(): BrowserWindow {
  const win = new BrowserWindow({
    width: 1440,
    height: 920,
    minWidth: 960,
    minHeight: 600,
    show: false,
    backgroundColor: '#f6f7f9',
    title: 'Quantscope',
    webPreferences: {
      preload: preloadPath,
      contextIsolation: true,
      sandbox: true,
      nodeIntegration: false,
      webSecurity: true,
      spellcheck: false,
    },
  })
  win.once('ready-to-show', () => win.show())
  const devUrl = process.env.ELECTRON_RENDERER_URL
  if (!app.isPackaged && devUrl) void win.loadURL(devUrl)
  else void win.loadFile(rendererIndex)
  return win
}

/** Only our own page, in the top frame, may call the API. */
function isTrustedSender(event: IpcMainInvokeEvent): boolean {
  if (!mainWindow || event.sender !== mainWindow.webContents) return false
  const frame = event.senderFrame
  if (!frame || frame.parent !== null) return false
  const devUrl = process.env.ELECTRON_RENDERER_URL
  if (!app.isPackaged && devUrl && frame.url.startsWith(devUrl)) return true
  return frame.url.startsWith(pathToFileURL(rendererIndex).href)
}

async function main(): Promise<void> {
  if (!app.requestSingleInstanceLock()) {
    app.quit()
    return
  }
  await app.whenReady()

  // The renderer needs no camera, notifications, etc.: deny every permission request.
  session.defaultSession.setPermissionRequestHandler((_wc, _permission, callback) => callback(false))
  app.on('web-contents-created', (_e, contents) => {
    contents.on('will-navigate', (event) => event.preventDefault())
    contents.setWindowOpenHandler(() => ({ action: 'deny' }))
    contents.on('will-attach-webview', (event) => event.preventDefault())
  })

  const userData = app.getPath('userData')
  const recentFile = join(userData, 'recent-models.json')
  const recent = new RecentModelsFile(recentFile)
  // The engine runs on its own thread (and stats on its pool): this thread only routes.
  const engine = startEngineThread({
    recentFile,
    // Same cache root as browser mode and the CLI (worker/io/private-dir.ts), made private on first use.
    cacheDir: join(defaultCacheDir(), 'stats'),
    statsThreads: null,
    defaultModel: await resolveDefaultModel(app.getAppPath(), modelPathArgument(process.argv)),
    // Keep File → Open Recent current.
    onModelOpened: () => void buildMenu(recent),
  })
  const transport = registerIpcTransport(engine, () => mainWindow?.webContents ?? null, isTrustedSender)
  ipcMain.handle(IPC_CHOOSE_MODEL_PATH, (event, kind: unknown) => {
    if (!isTrustedSender(event) || (kind !== 'file' && kind !== 'folder')) return null
    return chooseModelPath(kind)
  })
  // The engine checks the chosen destination again (absolute, free, not the source model).
  ipcMain.handle(IPC_CHOOSE_SAVE_PATH, async (event, defaultPath: unknown) => {
    if (!isTrustedSender(event) || typeof defaultPath !== 'string' || defaultPath.length > 4096) return null
    const options = { title: 'Export model', defaultPath, properties: ['createDirectory' as const, 'showOverwriteConfirmation' as const] }
    const result = mainWindow ? await dialog.showSaveDialog(mainWindow, options) : await dialog.showSaveDialog(options)
    return result.canceled || !result.filePath ? null : result.filePath
  })

  await buildMenu(recent)

  mainWindow = createWindow()
  mainWindow.webContents.on('did-start-navigation', (details) => {
    if (details.isMainFrame && !details.isSameDocument) transport.cancelRunningJobs()
  })
  mainWindow.on('closed', () => {
    transport.cancelRunningJobs()
    mainWindow = null
  })

  app.on('second-instance', (_e, argv) => {
    if (!mainWindow) return
    if (mainWindow.isMinimized()) mainWindow.restore()
    mainWindow.focus()
    const path = modelPathArgument(argv)
    if (path) requestOpen(path)
  })
  app.on('window-all-closed', () => app.quit())
  app.on('will-quit', () => {
    transport.dispose()
    void engine.close()
  })
}

void main()
