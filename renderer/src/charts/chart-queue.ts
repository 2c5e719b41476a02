/**
 * Chart work (ECharts init, setOption) queued one item per macrotask: when a tensor arrives,
 * its three charts draw in three short tasks instead of one long one, so the page keeps
 * answering input (and no task reaches the 200 ms the e2e test allows).
 */
const queue: (() => void)[] = []
let scheduled = false
const channel = typeof MessageChannel === 'undefined' ? null : new MessageChannel()

function runOne(): void {
  scheduled = false
  const work = queue.shift()
  try {
    work?.()
  } finally {
    if (queue.length) schedule()
  }
}

function schedule(): void {
  if (scheduled) return
  scheduled = true
  // A message, not setTimeout(0): no 4 ms clamping between charts, still a separate task.
  if (channel) channel.port2.postMessage(null)
  else setTimeout(runOne, 0)
}

if (channel) channel.port1.onmessage = runOne

export function queueChartWork(work: () => void): void {
  queue.push(work)
  schedule()
}
