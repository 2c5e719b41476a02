import { inject, type InjectionKey } from 'vue'
import type { Workbench } from './workbench'

export const WORKBENCH: InjectionKey<Workbench> = Symbol('workbench')

export function useWorkbench(): Workbench {
  const wb = inject(WORKBENCH)
  if (!wb) throw new Error('useWorkbench() outside the App')
  return wb
}
