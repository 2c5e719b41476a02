import { parentPort } from 'node:worker_threads'
import { runInferenceJob } from './inference-jobs'
import { serializeError, type InferenceMessage, type InferenceRequest } from './inference-protocol'

/**
 * Inference worker thread: runs jobs (perplexity, KL divergence, generation, activation
 * capture) and posts progress, result or error; 'cancel' aborts a job at its next window or
 * token. onnxruntime runs here, never on the caller's thread.
 */
if (!parentPort) throw new Error('inference.worker must run in a worker thread')
const port = parentPort

// A worker's stdout is the process's stdout, which carries the CLI's --json document: any
// library chatter (onnxruntime warnings) goes to stderr instead.
console.log = console.error
console.info = console.error
console.warn = console.error

const running = new Map<number, AbortController>()

function post(msg: InferenceMessage, transfer: ArrayBuffer[] = []): void {
  port.postMessage(msg, transfer)
}

async function run(msg: Extract<InferenceRequest, { type: 'run' }>): Promise<void> {
  const controller = new AbortController()
  running.set(msg.jobId, controller)
  try {
    let lastPost = 0
    const result = await runInferenceJob(msg.job, {
      signal: controller.signal,
      onProgress(progress) {
        // Tokens always go out (a UI streams them); other progress at most ~20 per second.
        const now = performance.now()
        const final = progress.stage === 'token' || progress.done >= progress.total
        if (!final && now - lastPost < 50) return
        lastPost = now
        post({ type: 'progress', jobId: msg.jobId, progress })
      },
    })
    // Gram matrices are large: move their buffers instead of copying them.
    const transfer = 'grams' in result && result.grams ? Object.values(result.grams).map((g) => g.buffer as ArrayBuffer) : []
    post({ type: 'result', jobId: msg.jobId, result }, transfer)
  } finally {
    running.delete(msg.jobId)
  }
}

port.on('message', (msg: InferenceRequest) => {
  switch (msg.type) {
    case 'run':
      run(msg).catch((err) => post({ type: 'error', jobId: msg.jobId, error: serializeError(err) }))
      break
    case 'cancel':
      running.get(msg.jobId)?.abort()
      break
  }
})
