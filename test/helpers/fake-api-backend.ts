/**
 * An ApiBackend with canned answers and one job kind (tensorStats) that runs until cancelled,
 * for tests of the transports without the engine.
 */
import type { ApiEvent, ApiParams, ApiResult } from '../../worker/api/contract'
import type { ApiBackend } from '../../main/api-dispatcher'

export class FakeBackend implements ApiBackend {
  readonly listeners = new Set<(e: ApiEvent) => void>()
  readonly cancelled: string[] = []
  private readonly running = new Map<string, () => void>()

  onEvent(l: (e: ApiEvent) => void): () => void {
    this.listeners.add(l)
    return () => this.listeners.delete(l)
  }
  async openModel({ path }: ApiParams<'openModel'>): Promise<ApiResult<'openModel'>> {
    const err = Object.assign(new Error(`${path}: not a model`), { name: 'ModelFormatError', file: path, tensor: null, problem: 'not a model' })
    throw err
  }
  async closeModel(): Promise<ApiResult<'closeModel'>> {
    return { closed: false }
  }
  async listRecent(): Promise<ApiResult<'listRecent'>> {
    return [{ path: '/models/a', name: 'a', format: 'safetensors', openedAt: 1 }]
  }
  async defaultModelPath(): Promise<ApiResult<'defaultModelPath'>> {
    return { path: null, source: 'none', message: 'none' }
  }
  tensorStats({ jobId }: ApiParams<'tensorStats'>): Promise<ApiResult<'tensorStats'>> {
    for (const l of this.listeners) l({ type: 'job-progress', jobId, done: 1, total: 4 })
    return new Promise((_resolve, reject) => {
      this.running.set(jobId, () => reject(Object.assign(new Error('aborted'), { name: 'AbortError' })))
    })
  }
  async layerGridStats(): Promise<ApiResult<'layerGridStats'>> {
    throw new Error('not used')
  }
  async evaluate(): Promise<ApiResult<'evaluate'>> {
    throw new Error('not used')
  }
  async generate(): Promise<ApiResult<'generate'>> {
    throw new Error('not used')
  }
  async listBackends(): Promise<ApiResult<'listBackends'>> {
    return []
  }
  async listRuns(): Promise<ApiResult<'listRuns'>> {
    return []
  }
  async deleteRun(): Promise<ApiResult<'deleteRun'>> {
    return { deleted: false }
  }
  async listVariants(): Promise<ApiResult<'listVariants'>> {
    return []
  }
  async listQuantMethods(): Promise<ApiResult<'listQuantMethods'>> {
    return []
  }
  async planSize(): Promise<ApiResult<'planSize'>> {
    throw new Error('not used')
  }
  async quantizePreview(): Promise<ApiResult<'quantizePreview'>> {
    throw new Error('not used')
  }
  async listPlans(): Promise<ApiResult<'listPlans'>> {
    return []
  }
  async savePlan(): Promise<ApiResult<'savePlan'>> {
    throw new Error('not used')
  }
  async deletePlan(): Promise<ApiResult<'deletePlan'>> {
    return { deleted: false }
  }
  async llamaCppPresets(): Promise<ApiResult<'llamaCppPresets'>> {
    return ['Q4_K_M']
  }
  async llamaCppPresetPlan(): Promise<ApiResult<'llamaCppPresetPlan'>> {
    throw new Error('not used')
  }
  async exportFormats(): Promise<ApiResult<'exportFormats'>> {
    return []
  }
  async exportSupport(): Promise<ApiResult<'exportSupport'>> {
    throw new Error('not used')
  }
  async exportModel(): Promise<ApiResult<'exportModel'>> {
    throw new Error('not used')
  }
  async layerImportance(): Promise<ApiResult<'layerImportance'>> {
    throw new Error('not used')
  }
  async allocatePlan(): Promise<ApiResult<'allocatePlan'>> {
    throw new Error('not used')
  }
  async paretoSweep(): Promise<ApiResult<'paretoSweep'>> {
    throw new Error('not used')
  }
  async activationView(): Promise<ApiResult<'activationView'>> {
    throw new Error('not used')
  }
  async kvView(): Promise<ApiResult<'kvView'>> {
    throw new Error('not used')
  }
  async kvSweep(): Promise<ApiResult<'kvSweep'>> {
    throw new Error('not used')
  }
  async cancelJob({ jobId }: ApiParams<'cancelJob'>): Promise<ApiResult<'cancelJob'>> {
    this.cancelled.push(jobId)
    const stop = this.running.get(jobId)
    this.running.delete(jobId)
    stop?.()
    return { cancelled: stop !== undefined }
  }
}
