import { open } from 'node:fs/promises'

/**
 * A file being written, as the exporters and the safetensors writer see it. It is an
 * interface so a test can hand in one that fails part-way (a full disk) without filling one.
 */
export interface OutputFile {
  write(bytes: Uint8Array): Promise<void>
  close(): Promise<void>
}

export type OpenOutput = (path: string) => Promise<OutputFile>

/** Creates (or truncates) `path` for writing; every write is written in full. */
export const openOutputFile: OpenOutput = async (path) => {
  const fh = await open(path, 'w')
  return {
    async write(bytes) {
      let done = 0
      while (done < bytes.length) {
        const { bytesWritten } = await fh.write(bytes, done, bytes.length - done)
        done += bytesWritten
      }
    },
    close: () => fh.close(),
  }
}
