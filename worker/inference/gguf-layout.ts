/**
 * llama.cpp's HF → GGUF converter (convert_hf_to_gguf.py, LlamaModel.permute) reorders the
 * rows of the q and k projections (and their biases) of every head so that its RoPE can
 * rotate adjacent pairs (GPT-J style) instead of HF's halves (rotate_half):
 *
 *   w.reshape(n_head, 2, head_dim / 2, cols).swapaxes(1, 2).reshape(w.shape)
 *
 * i.e. stored row h·d + 2i + j holds HF row h·d + j·d/2 + i (j ∈ {0, 1}). The graph uses HF's
 * convention, so those rows are put back here.
 */
export function unpermuteGgufRows(stored: Float32Array, heads: number, headDim: number, cols: number): Float32Array {
  const rows = heads * headDim
  if (stored.length !== rows * cols) {
    throw new Error(`unpermuteGgufRows: ${stored.length} values is not ${heads} heads × ${headDim} rows × ${cols} columns`)
  }
  const half = headDim / 2
  const out = new Float32Array(stored.length)
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const src = (h * headDim + 2 * i + j) * cols
        const dst = (h * headDim + j * half + i) * cols
        out.set(stored.subarray(src, src + cols), dst)
      }
    }
  }
  return out
}

/** The converter's permutation itself (HF rows → GGUF rows); tests use it to write GGUF files. */
export function permuteToGgufRows(hf: Float32Array, heads: number, headDim: number, cols: number): Float32Array {
  const half = headDim / 2
  const out = new Float32Array(hf.length)
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const dst = (h * headDim + 2 * i + j) * cols
        const src = (h * headDim + j * half + i) * cols
        out.set(hf.subarray(src, src + cols), dst)
      }
    }
  }
  return out
}
