/** The error every cancelled job rejects with (name 'AbortError', like fetch and streams). */
export function abortError(message = 'the job was cancelled'): Error {
  return new DOMException(message, 'AbortError')
}

export function isAbortError(err: unknown): boolean {
  return (err as { name?: unknown } | null)?.name === 'AbortError'
}

/** Rejects with an AbortError as soon as `signal` fires; `p` itself keeps running. */
export function withAbort<T>(p: Promise<T>, signal: AbortSignal | undefined, message?: string): Promise<T> {
  if (!signal) return p
  if (signal.aborted) return Promise.reject(abortError(message))
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortError(message))
    signal.addEventListener('abort', onAbort, { once: true })
    p.then(
      (v) => {
        signal.removeEventListener('abort', onAbort)
        resolve(v)
      },
      (e) => {
        signal.removeEventListener('abort', onAbort)
        reject(e)
      },
    )
  })
}
