/** Desktop transport: the preload's `window.quantscope`, results unwrapped from ApiOutcome. */
import type { ApiMethod, ApiOutcome, ApiParams, ApiResult, QuantscopeBridge } from '../../../worker/api/contract'
import { ApiCallError, type ApiClient } from './client'

export function createElectronClient(bridge: QuantscopeBridge): ApiClient {
  return {
    mode: 'electron',
    async call<M extends ApiMethod>(method: M, params: ApiParams<M>): Promise<ApiResult<M>> {
      const fn = bridge[method] as (p: ApiParams<M>) => Promise<ApiOutcome<ApiResult<M>>>
      const outcome = await fn(params)
      if (!outcome.ok) throw new ApiCallError(outcome.error)
      return outcome.result
    },
    onEvent: (listener) => bridge.onEvent(listener),
    pathForFile: (file) => bridge.pathForFile(file),
    chooseModelPath: (kind) => bridge.chooseModelPath(kind),
    chooseSavePath: (defaultPath) => bridge.chooseSavePath(defaultPath),
  }
}
