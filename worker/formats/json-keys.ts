/**
 * JSON.parse keeps the last of two equal keys without a word, so a safetensors header or an
 * index that names a tensor twice would silently lose one. This scan finds such keys in text
 * that JSON.parse has already accepted (so it need not diagnose syntax): one pass, no tree.
 */

const QUOTE = 0x22
const BACKSLASH = 0x5c

interface Frame {
  /** Keys seen so far; null for arrays. */
  keys: Set<string> | null
  expectKey: boolean
  /** Key of the value being read in this object, for the path in messages. */
  current: string
}

/**
 * The path of the first key that occurs twice in one object, e.g. ['weight'] or
 * ['weight_map', 'lm_head.weight']; null when every object's keys are distinct.
 * `text` must be valid JSON.
 */
export function findDuplicateKey(text: string): string[] | null {
  const stack: Frame[] = []
  const n = text.length
  // Position of the next backslash at or after the cursor (-1: none left), kept up to date
  // lazily so strings are skipped with indexOf rather than character by character.
  let nextBackslash = text.indexOf('\\')
  for (let i = 0; i < n; i++) {
    const c = text.charCodeAt(i)
    if (c === QUOTE) {
      const start = i
      if (nextBackslash !== -1 && nextBackslash < start) nextBackslash = text.indexOf('\\', start)
      let end = text.indexOf('"', start + 1)
      const escaped = nextBackslash !== -1 && nextBackslash < end
      if (escaped) {
        // Walk this string to find its real end (an escaped quote does not close it).
        for (end = start + 1; end < n; end++) {
          const d = text.charCodeAt(end)
          if (d === BACKSLASH) end++
          else if (d === QUOTE) break
        }
        nextBackslash = text.indexOf('\\', end)
      }
      i = end
      const top = stack[stack.length - 1]
      if (top?.keys && top.expectKey) {
        const key = escaped ? (JSON.parse(text.slice(start, i + 1)) as string) : text.slice(start + 1, i)
        if (top.keys.has(key)) return [...stack.slice(0, -1).filter((f) => f.keys).map((f) => f.current), key]
        top.keys.add(key)
        top.current = key
        top.expectKey = false
      }
    } else if (c === 0x7b /* { */) {
      stack.push({ keys: new Set(), expectKey: true, current: '' })
    } else if (c === 0x5b /* [ */) {
      stack.push({ keys: null, expectKey: false, current: '' })
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop()
    } else if (c === 0x2c /* , */) {
      const top = stack[stack.length - 1]
      if (top?.keys) top.expectKey = true
    }
  }
  return null
}
