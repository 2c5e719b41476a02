/**
 * The WebAssembly JS API the engine uses, for `tsconfig.worker.json`, which compiles worker/
 * without the DOM library (so no DOM type can creep into the engine). Node provides these
 * globals; TypeScript only declares them in lib.dom. tsconfig.node.json (which has DOM)
 * excludes this file.
 */
declare namespace WebAssembly {
  type ImportValue = ((...args: never[]) => unknown) | number | Memory
  type Imports = Record<string, Record<string, ImportValue>>
  type Exports = Record<string, unknown>

  class Module {
    constructor(bytes: BufferSource)
  }
  class Instance {
    constructor(module: Module, imports?: Imports)
    readonly exports: Exports
  }
  class Memory {
    constructor(descriptor: { initial: number; maximum?: number; shared?: boolean })
    readonly buffer: ArrayBuffer
    grow(delta: number): number
  }
}
type BufferSource = ArrayBufferView | ArrayBuffer
