/**
 * Errors of the engine's API layer (bad parameters, unknown ids, jobs); their `name` reaches
 * the UI through ApiError, so it says what kind of problem it was.
 */
export type EngineErrorName = 'NotFound' | 'BadRequest' | 'Unsupported'

export class EngineError extends Error {
  constructor(name: EngineErrorName, message: string) {
    super(message)
    this.name = name
  }
}
