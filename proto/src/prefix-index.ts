// A set of fixed-size keys packed back to back in a caller's buffer (prefixes as the datapath or
// a validator packs them), found by their bytes: open addressing over int32s (linear probing,
// at most half full), so a million prefixes are deduplicated with no object or string per
// prefix. Used by prefix list validation and by the agent's blocklist packer.

const EMPTY = 0; // a free slot (entries are stored as their number + 1)

/**
 * The index of the keys held in a packed buffer (entry i at bytes i * keySize). The buffer stays
 * the caller's and may be replaced by a larger copy between calls (pass the current one).
 */
export class PackedKeyIndex {
  readonly #keySize: number;
  #table: Int32Array;
  #count = 0;

  /** @param expected how many keys to make room for at once (a hint; it grows as needed). */
  constructor(keySize: number, expected = 0) {
    this.#keySize = keySize;
    let size = 128;
    while (size < expected * 2) size *= 2;
    this.#table = new Int32Array(size);
  }

  /** Keys held. */
  get size(): number {
    return this.#count;
  }

  /**
   * Looks up the key at entry number {@link size} of `keys` (written there by the caller); if no
   * held key has its bytes, it becomes held as that entry.
   * @returns the entry number of the equal key already held, or -1 when the key was added.
   */
  add(keys: Uint8Array): number {
    const size = this.#keySize;
    const at = this.#count * size;
    const table = this.#table;
    const mask = table.length - 1;
    let probe = hashKey(keys, at, size) & mask;
    for (let held = table[probe] as number; held !== EMPTY; held = table[probe] as number) {
      const other = (held - 1) * size;
      let same = true;
      for (let i = 0; i < size && same; i++) same = keys[other + i] === keys[at + i];
      if (same) return held - 1;
      probe = (probe + 1) & mask;
    }
    table[probe] = ++this.#count;
    if (this.#count * 2 > table.length) this.#rehash(keys);
    return -1;
  }

  #rehash(keys: Uint8Array): void {
    const table = new Int32Array(this.#table.length * 2);
    const mask = table.length - 1;
    const size = this.#keySize;
    for (let entry = 0; entry < this.#count; entry++) {
      let probe = hashKey(keys, entry * size, size) & mask;
      while (table[probe] !== EMPTY) probe = (probe + 1) & mask;
      table[probe] = entry + 1;
    }
    this.#table = table;
  }
}

/** FNV-1a of the key bytes at `at`, its high bits folded into the low ones the table uses. */
function hashKey(keys: Uint8Array, at: number, size: number): number {
  let h = 0x811c9dc5;
  for (let i = at; i < at + size; i++) h = Math.imul(h ^ (keys[i] as number), 0x01000193);
  return h ^ (h >>> 15);
}
