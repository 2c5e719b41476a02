/**
 * Errors about what the user asked for (text too short for one window, no tokenizer, a
 * prompt longer than the model's positions …), as opposed to a broken model file
 * (ModelFormatError). Their message is meant to be shown as it is.
 */
export class InferenceInputError extends Error {
  constructor(message: string) {
    super(message)
    this.name = 'InferenceInputError'
  }
}

/**
 * A result that is not a number: the model produced NaN or ±Inf (NaN/Inf weights, an invalid
 * config value that slipped through, an overflow). Names the first place it appeared, so the
 * user can tell a broken model from a broken window.
 */
export class NonFiniteResultError extends Error {
  constructor(
    readonly quantity: string,
    /** Where, e.g. "window 3, position 17". */
    readonly where: string,
    readonly value: number,
  ) {
    super(`${quantity} is ${value} at ${where} (the model's output is not finite there: check the weights for NaN/Inf and the config's values)`)
    this.name = 'NonFiniteResultError'
  }
}

/**
 * onnxruntime failed. Its messages carry the paths of its build machine and C++ status codes;
 * this keeps the part a user can act on and says which backend and step failed.
 */
export class InferenceRuntimeError extends Error {
  constructor(
    readonly backend: string,
    readonly step: string,
    cause: unknown,
  ) {
    super(`onnxruntime (${backend}) failed while ${step}: ${describeRuntimeFailure(cause)}`)
    this.name = 'InferenceRuntimeError'
  }
}

/** The message of an onnxruntime error without source paths, line numbers and status prefixes. */
export function describeRuntimeFailure(cause: unknown): string {
  const raw = cause instanceof Error ? cause.message : String(cause)
  const cleaned = raw
    // "/onnxruntime_src/onnxruntime/core/providers/cpu/math/matmul.cc:42 " and "C:\a\_work\…\x.cc:42 "
    .replace(/(?:[A-Za-z]:)?[\\/][^\s'"]*\.(?:cc|cpp|h|hpp|c)(?::\d+)?(?:\s+\S+\(\))?\s*/g, '')
    .replace(/\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*/g, '')
    .replace(/\s+/g, ' ')
    .trim()
  return cleaned.length > 0 ? cleaned : 'unknown error'
}
