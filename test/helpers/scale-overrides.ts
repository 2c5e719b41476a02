import type { OpenedModel } from '../../worker/formats/contract'
import type { WeightOverrides } from '../../worker/inference/weights'

/**
 * An overrides module as a quantizer would ship one: the worker imports it and calls
 * `createOverrides(model, options)`. This one scales one tensor's rows by `factor`, through a
 * row producer (the function form of WeightOverrides).
 */
export function createOverrides(model: OpenedModel, options: { tensor: string; factor: number }): WeightOverrides {
  return new Map([
    [
      options.tensor,
      async (r0: number, r1: number) => {
        const rows = await model.readRows(options.tensor, r0, r1)
        return rows.map((x) => x * options.factor)
      },
    ],
  ])
}
