/// <reference types="vite/client" />
import type { QuantscopeBridge } from '../../worker/api/contract'

declare global {
  interface Window {
    /** Present only in the desktop app (main/preload.ts). */
    quantscope?: QuantscopeBridge
  }
}
