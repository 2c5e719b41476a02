import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'
import { fileURLToPath } from 'node:url'

/**
 * Finds and compiles one AssemblyScript kernel (worker/kernels/assembly/<name>.ts, built by
 * scripts/build-wasm.mjs into worker/kernels/build/<name>.wasm). The folder holds kernels
 * only; what a kernel computes is given meaning by its caller (stats/, quant/).
 */

/** Where <name>.wasm may be: $QUANTSCOPE_WASM_DIR, the source build dir, beside the bundle. */
export function kernelCandidates(name: string): string[] {
  const out: string[] = []
  const dir = process.env.QUANTSCOPE_WASM_DIR
  if (dir) out.push(join(dir, `${name}.wasm`))
  out.push(fileURLToPath(new URL(`./build/${name}.wasm`, import.meta.url)))
  // electron-vite copies the kernels next to the bundled chunks (see electron.vite.config.ts).
  out.push(fileURLToPath(new URL(`./${name}.wasm`, import.meta.url)))
  return out
}

/** Compiles the kernel; throws with the places it looked when it is missing. */
export function compileKernel(name: string): WebAssembly.Module {
  const candidates = kernelCandidates(name)
  const path = candidates.find((p) => existsSync(p))
  if (!path) throw new Error(`${name}.wasm not found (looked in ${candidates.join(', ')}); run \`npm run build:wasm\``)
  return new WebAssembly.Module(readFileSync(path))
}
