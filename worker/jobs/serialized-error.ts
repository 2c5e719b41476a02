import { ModelFormatError } from '../common/errors'

/**
 * Errors crossing a worker-thread boundary. structuredClone drops an Error's class and own
 * fields, so workers post this plain shape and the main side rebuilds the same error type
 * (a ModelFormatError keeps its file / tensor / problem; an AbortError stays an AbortError).
 */
export interface SerializedError {
  name: string
  message: string
  stack?: string
  /** ModelFormatError fields, so the main side can rebuild the same error. */
  file?: string
  tensor?: string | null
  problem?: string
}

export function serializeError(err: unknown): SerializedError {
  if (err instanceof ModelFormatError) {
    return { name: err.name, message: err.message, stack: err.stack, file: err.file, tensor: err.tensor, problem: err.problem }
  }
  if (err instanceof Error || err instanceof DOMException) return { name: err.name, message: err.message, stack: err.stack }
  return { name: 'Error', message: String(err) }
}

/**
 * Rebuilds the error on this side. `where` names the worker in the stack trace; `known`
 * maps further error names of a worker to their constructors.
 */
export function deserializeError(e: SerializedError, where: string, known: Record<string, (message: string) => Error> = {}): Error {
  if (e.name === 'ModelFormatError' && e.file !== undefined && e.problem !== undefined) {
    return new ModelFormatError(e.file, e.tensor ?? null, e.problem)
  }
  if (e.name === 'AbortError') return new DOMException(e.message, 'AbortError')
  const make = known[e.name]
  if (make) return make(e.message)
  const err = e.name === 'RangeError' ? new RangeError(e.message) : e.name === 'TypeError' ? new TypeError(e.message) : new Error(e.message)
  if (err.name !== e.name) err.name = e.name
  if (e.stack) err.stack = `${e.stack}\n    (in ${where})`
  return err
}
