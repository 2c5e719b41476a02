import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/unit/**/*.test.ts'],
    testTimeout: 60_000,
    // Two cores: keep the pool small so worker-thread tests are not starved.
    maxWorkers: 2,
  },
})
