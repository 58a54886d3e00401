// The blocklist's hashed set of permanent IPv4 prefixes (bpf/include/ep_blocklist.h, ep_blk4h;
// bpf/README.md, "The blocklist"): buckets of 8 u64 slots (64 bytes, one cache line): 7 entries,
// each the masked address (host order) << 32 | prefix length + 1, 0 = free, and a mark that some
// entry whose first bucket this is lives in its second (so a packet reads the second bucket only
// behind a marked first: one bucket per length for nearly every packet). An entry that fits in
// neither is left to the trie. Built here in a plain buffer and copied into the map whole, or
// written in place through the map's mmap one 8-byte store at a time. Beside it, its prefilter
// (Prefilter, below: two bits per /24 block), which spares a packet the buckets unless an entry
// longer than /24 lies in its block. Pure: no map.

/** Slots per bucket (EP_BLK_HASH_SLOTS), entries per bucket (the last slot is the mark), bytes per bucket. */
export const HASH_SLOTS = 8;
export const HASH_ENTRIES = HASH_SLOTS - 1;
export const HASH_BUCKET_BYTES = HASH_SLOTS * 8;
/** The mark's value (EP_BLK_HASH_MOVED): length + 1 = 255, never an entry's. */
export const HASH_MOVED = 0xff;
/** The set's map flags: BPF_F_MMAPABLE | BPF_F_INNER_MAP (written through mmap; its size varies by list). */
export const HASHED_MAP_FLAGS = 0x400 | 0x1000;
/** Length slots in ep_blk_active[0] (EP_BLK_HASH_LENS): an older agent's set holds up to four lengths. */
export const HASH_LENGTH_SLOTS = 4;
/** Prefix lengths a set holds at most: the fourth slot carries the prefilter's mark. */
export const HASH_LENGTHS = HASH_LENGTH_SLOTS - 1;
/** The fourth length slot's value when the set has a prefilter (EP_BLK_PRE_MARK): never a length + 1. */
const PREFILTER_MARK = 63;
/** Entries per bucket a whole load aims at, at most (4 of 7: about 4 % of buckets then overflow
 * into their entries' second buckets, and room is left to add in place). */
const LOAD_PER_BUCKET = 4;

/** murmur3's 32-bit finalizer (ep_blk_mix). */
export function mix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/** The hash of an entry (its buckets: this & mask, and mix32(this + 0x7f4a7c15) & mask), as ep_blk_hashed4 computes it. */
export function hashOf(address: number, prefixLength: number): number {
  return mix32((address ^ Math.imul(prefixLength + 1, 0x9e3779b9)) >>> 0);
}

/** @returns `address` (host order) with the bits past `prefixLength` cleared. */
export function maskAddress(address: number, prefixLength: number): number {
  return prefixLength === 0 ? 0 : (address & (0xffffffff << (32 - prefixLength))) >>> 0;
}

/**
 * The shape of a set: 2^log2 buckets, the prefix lengths it holds (longest first), and whether
 * it has a prefilter (every set this agent builds; an older agent's, adopted, has none).
 */
export interface HashedShape {
  readonly log2: number;
  readonly lengths: readonly number[];
  readonly prefilter: boolean;
}

/**
 * ep_blk_active[0]'s bits for a shape (EP_BLK_HASH_LOG2, EP_BLK_HASH_LEN1): log2 in bits 3-7,
 * each length + 1 in 6 bits from bit 8, and with a prefilter its mark in the fourth slot. No
 * lengths: 0 (no bucket is read).
 */
export function shapeBits(shape: HashedShape | undefined): number {
  if (shape === undefined || shape.lengths.length === 0) return 0;
  if (shape.lengths.length > (shape.prefilter ? HASH_LENGTHS : HASH_LENGTH_SLOTS)) throw new RangeError(`hashed set: ${shape.lengths.length} lengths do not fit the word`);
  let bits = shape.log2 << 3;
  shape.lengths.forEach((length, i) => (bits |= (length + 1) << (8 + 6 * i)));
  if (shape.prefilter) bits |= PREFILTER_MARK << (8 + 6 * HASH_LENGTHS);
  return bits >>> 0;
}

/** @returns the shape ep_blk_active[0] names (undefined: no lengths). */
export function shapeOfWord(word: number): HashedShape | undefined {
  const lengths: number[] = [];
  const prefilter = ((word >>> (8 + 6 * HASH_LENGTHS)) & 63) === PREFILTER_MARK;
  for (let i = 0; i < (prefilter ? HASH_LENGTHS : HASH_LENGTH_SLOTS); i++) {
    const length1 = (word >>> (8 + 6 * i)) & 63;
    if (length1 === 0) break;
    lengths.push(length1 - 1);
  }
  return lengths.length === 0 ? undefined : { log2: (word >>> 3) & 31, lengths, prefilter };
}

/** The log2 of the bucket count for `entries` entries (at most LOAD_PER_BUCKET per bucket). */
export function bucketsLog2(entries: number): number {
  let log2 = 0;
  while ((1 << log2) * LOAD_PER_BUCKET < entries) log2++;
  return log2;
}

/**
 * The prefix lengths to hash, given how many entries each length has (index = length, 0..32):
 * the HASH_LENGTHS lengths with the most, longest first. The rest stay in the trie.
 */
export function chooseLengths(perLength: ArrayLike<number>): number[] {
  const lengths: number[] = [];
  for (let length = 0; length <= 32; length++) if ((perLength[length] ?? 0) > 0) lengths.push(length);
  lengths.sort((a, b) => (perLength[b] as number) - (perLength[a] as number) || b - a);
  return lengths.slice(0, HASH_LENGTHS).sort((a, b) => b - a);
}

/**
 * A set over buckets held in `bytes` (a plain buffer being built, or the map's mmap). With
 * `atomic`, every slot is written by one 8-byte Atomics.store, so a program reading the bucket
 * meanwhile sees the slot's old value or its new one; without it (a buffer no program reads yet)
 * by two 4-byte stores. Every write is ordered so that a concurrent reader never misses an entry
 * that is in the set before and after it: a first bucket is marked before an entry goes into its
 * second one, and an entry that moves is written where it goes before its old slot is reused.
 */
export class HashedSet4 {
  readonly log2: number;
  readonly #words: Uint32Array;
  readonly #slots: BigUint64Array | undefined;
  readonly #mask: number;

  constructor(bytes: Uint8Array, log2: number, atomic: boolean) {
    if (bytes.byteLength < (HASH_BUCKET_BYTES << log2) || bytes.byteOffset % 8 !== 0) throw new RangeError(`hashed set: ${bytes.byteLength} bytes at ${bytes.byteOffset} cannot hold 2^${log2} buckets`);
    this.log2 = log2;
    this.#mask = (1 << log2) - 1;
    this.#words = new Uint32Array(bytes.buffer, bytes.byteOffset, (HASH_BUCKET_BYTES << log2) / 4);
    this.#slots = atomic ? new BigUint64Array(bytes.buffer, bytes.byteOffset, (HASH_BUCKET_BYTES << log2) / 8) : undefined;
  }

  /** A fresh, empty set's buffer of 2^log2 buckets. */
  static buffer(log2: number): Uint8Array {
    return new Uint8Array(HASH_BUCKET_BYTES << log2);
  }

  /** The first bucket of an entry whose hashOf() is `h`. */
  firstBucket(h: number): number {
    return h & this.#mask;
  }

  /**
   * Adds `address`/`prefixLength` (host order, host bits cleared) to its first bucket if that has
   * a free slot, else (the first bucket marked) to its second; when both are full, an entry of
   * either moves to its own other bucket if that has room, and the new one takes its slot.
   * Inserting a whole list in the order of the entries' first buckets writes the buckets front
   * to back (one cache line per entry).
   * @param h hashOf(address, prefixLength), if the caller has it.
   * @returns 'added', 'present' (it was there already), or 'full' (no room: nothing written).
   */
  insert(address: number, prefixLength: number, h = hashOf(address, prefixLength)): 'added' | 'present' | 'full' {
    const length1 = prefixLength + 1;
    const firstBucket = h & this.#mask;
    const first = this.#scan(firstBucket, address, length1);
    if (first === PRESENT) return 'present';
    const secondBucket = secondOf(h, this.#mask);
    const marked = this.#marked(firstBucket);
    const second = marked || first < 0 ? this.#scan(secondBucket, address, length1) : -1;
    if (second === PRESENT) return 'present';
    if (first >= 0) return this.#write(first, address, length1);
    this.#mark(firstBucket); // full: the entry goes to its second bucket (or the trie; the mark is only a hint to look)
    if (second >= 0) return this.#write(second, address, length1);
    for (const bucket of [firstBucket, secondBucket]) {
      const freed = this.#moveOne(bucket);
      if (freed >= 0) return this.#write(freed, address, length1);
    }
    return 'full';
  }

  /** Removes `address`/`prefixLength`. @returns whether it was there. */
  remove(address: number, prefixLength: number): boolean {
    const at = this.#find(address, prefixLength + 1);
    if (at < 0) return false;
    if (this.#slots !== undefined) Atomics.store(this.#slots, at / 2, 0n);
    else {
      this.#words[at] = 0;
      this.#words[at + 1] = 0;
    }
    return true;
  }

  /** Whether `address`/`prefixLength` is in the set. */
  has(address: number, prefixLength: number): boolean {
    return this.#find(address, prefixLength + 1) >= 0;
  }

  /** How many entries the set has slots for (a scan of every slot costs about this much). */
  get slots(): number {
    return HASH_ENTRIES << this.log2;
  }

  /** Every entry: [address (host order), prefix length]. */
  *entries(): Generator<[number, number]> {
    const words = this.#words;
    for (let at = 0; at < words.length; at += 2) {
      const low = words[at] as number;
      if (low !== 0 && low !== HASH_MOVED) yield [words[at + 1] as number, low - 1];
    }
  }

  /** @returns the word index of the bucket's first free slot, PRESENT if it holds the entry, or -1 (full). */
  #scan(bucket: number, address: number, length1: number): number {
    const words = this.#words;
    let free = -1;
    for (let k = 0, at = bucket * (HASH_SLOTS * 2); k < HASH_ENTRIES; k++, at += 2) {
      const low = words[at] as number;
      if (low === length1 && words[at + 1] === address) return PRESENT;
      if (low === 0 && free < 0) free = at;
    }
    return free;
  }

  #marked(bucket: number): boolean {
    return this.#words[bucket * (HASH_SLOTS * 2) + HASH_ENTRIES * 2] === HASH_MOVED;
  }

  #mark(bucket: number): void {
    const at = bucket * (HASH_SLOTS * 2) + HASH_ENTRIES * 2;
    if (this.#words[at] === HASH_MOVED) return;
    if (this.#slots !== undefined) Atomics.store(this.#slots, at / 2, BigInt(HASH_MOVED));
    else this.#words[at] = HASH_MOVED;
  }

  /**
   * Moves one entry of full `bucket` to its other bucket, if one has room there (marking its
   * first bucket first when it goes to its second). The old slot keeps it until the caller
   * writes over it. @returns the slot's word index, or -1.
   */
  #moveOne(bucket: number): number {
    const words = this.#words;
    for (let k = 0, at = bucket * (HASH_SLOTS * 2); k < HASH_ENTRIES; k++, at += 2) {
      const length1 = words[at] as number;
      const address = words[at + 1] as number;
      const h = hashOf(address, length1 - 1);
      const firstBucket = h & this.#mask;
      const other = firstBucket === bucket ? secondOf(h, this.#mask) : firstBucket;
      if (other === bucket) continue;
      const free = this.#scan(other, address, length1);
      if (free < 0) continue;
      if (other !== firstBucket) this.#mark(firstBucket);
      this.#write(free, address, length1);
      return at;
    }
    return -1;
  }

  #write(at: number, address: number, length1: number): 'added' {
    if (this.#slots !== undefined) Atomics.store(this.#slots, at / 2, (BigInt(address) << 32n) | BigInt(length1));
    else {
      this.#words[at + 1] = address;
      this.#words[at] = length1;
    }
    return 'added';
  }

  /** @returns the word index of the slot holding the entry, or -1. */
  #find(address: number, length1: number): number {
    const h = hashOf(address, length1 - 1);
    const first = h & this.#mask;
    const at = this.#slotOf(first, address, length1);
    return at >= 0 || !this.#marked(first) ? at : this.#slotOf(secondOf(h, this.#mask), address, length1);
  }

  #slotOf(bucket: number, address: number, length1: number): number {
    const words = this.#words;
    for (let k = 0, at = bucket * (HASH_SLOTS * 2); k < HASH_ENTRIES; k++, at += 2) if (words[at] === length1 && words[at + 1] === address) return at;
    return -1;
  }
}

const PRESENT = -2;

/** An entry's second bucket, from its hash (ep_blk_hashed4 alike). */
function secondOf(h: number, mask: number): number {
  return mix32((h + 0x7f4a7c15) >>> 0) & mask;
}

/**
 * Fills an empty set of 2^log2 buckets held in `bytes` (no program reads them yet: plain stores)
 * with `entries`, pairs [address (host order), prefix length], best in the order of their first
 * buckets (BlocklistPacker's).
 * @returns how many entries were added (a repeated one counts once) and those that fit in
 * neither of their buckets, for the trie.
 */
export function fillHashed(bytes: Uint8Array, log2: number, entries: Uint32Array): { added: number; overflow: [number, number][] } {
  const set = new HashedSet4(bytes, log2, false);
  let added = 0;
  const overflow: [number, number][] = [];
  for (let k = 0; k < entries.length; k += 2) {
    const address = entries[k] as number;
    const length = entries[k + 1] as number;
    const inserted = set.insert(address, length);
    if (inserted === 'added') added++;
    else if (inserted === 'full') overflow.push([address, length]);
  }
  return { added, overflow };
}

/**
 * The prefilter of a set (bpf/include/ep_blocklist.h, ep_blk4p): two bits per /24 block of the
 * IPv4 space in 2^19 u64 words, the block's bits at (block & 31) * 2 of word block >> 5.
 * PREFILTER_COVERED: an entry of the set of length <= 24 contains the block (kept exact: see
 * uncover()); PREFILTER_LONGER: an entry of length > 24 lies in it (a hint, never cleared in
 * place). Handled as 32-bit halves (little endian: word w is halves 2w and 2w + 1, block b's bits
 * in half b >> 4 at (b & 15) * 2); with `atomic` each half is written by one 4-byte
 * Atomics.store, so a program reading the word meanwhile sees each half old or new, and a bit
 * that stays set is never cleared on the way.
 */
export const PREFILTER_LENGTH = 24;
export const PREFILTER_WORDS = 1 << (PREFILTER_LENGTH - 5);
export const PREFILTER_VALUE_BYTES = 8;
/** The prefilter map's flags: BPF_F_MMAPABLE (one fixed size, so not BPF_F_INNER_MAP: the verifier inlines its lookup). */
export const PREFILTER_MAP_FLAGS = 0x400;
export const PREFILTER_COVERED = 1;
export const PREFILTER_LONGER = 2;
/** COVERED in each of a half's 16 blocks. */
const COVERED_HALF = 0x55555555;

export class Prefilter {
  readonly #halves: Uint32Array;
  readonly #atomic: boolean;

  constructor(bytes: Uint8Array, atomic: boolean) {
    if (bytes.byteLength < PREFILTER_WORDS * PREFILTER_VALUE_BYTES || bytes.byteOffset % 8 !== 0) throw new RangeError(`prefilter: ${bytes.byteLength} bytes at ${bytes.byteOffset} cannot hold ${PREFILTER_WORDS} words`);
    this.#halves = new Uint32Array(bytes.buffer, bytes.byteOffset, PREFILTER_WORDS * 2);
    this.#atomic = atomic;
  }

  /** A fresh, empty prefilter's buffer. */
  static buffer(): Uint8Array {
    return new Uint8Array(PREFILTER_WORDS * PREFILTER_VALUE_BYTES);
  }

  /** The bits of the block holding `address` (host order): PREFILTER_COVERED | PREFILTER_LONGER. */
  bits(address: number): number {
    const block = address >>> (32 - PREFILTER_LENGTH);
    return ((this.#halves[block >>> 4] as number) >>> ((block & 15) * 2)) & 3;
  }

  /** Sets the bits an entry of the set (host order, host bits cleared) calls for. */
  add(address: number, prefixLength: number): void {
    const block = address >>> (32 - PREFILTER_LENGTH);
    if (prefixLength > PREFILTER_LENGTH) this.#or(block >>> 4, PREFILTER_LONGER << ((block & 15) * 2));
    else this.#cover(block, 2 ** (PREFILTER_LENGTH - prefixLength), (i, v) => this.#or(i, v));
  }

  /**
   * After `address`/`prefixLength` (length <= 24) left `set`: clears COVERED in its blocks
   * but where another entry of the set of a length in `lengths` still contains them. An entry
   * containing the whole range (a shorter one) leaves everything as it is; entries inside it are
   * found by probing each of their prefixes in the range, or by a scan of the set when those
   * outnumber its slots. The new value of each half is computed first and stored once.
   */
  uncover(address: number, prefixLength: number, set: HashedSet4, lengths: readonly number[]): void {
    if (prefixLength > PREFILTER_LENGTH) return;
    const covering = lengths.filter((length) => length <= PREFILTER_LENGTH);
    if (covering.some((length) => length <= prefixLength && set.has(maskAddress(address, length), length))) return;
    const first = address >>> (32 - PREFILTER_LENGTH);
    const count = 2 ** (PREFILTER_LENGTH - prefixLength);
    // The range's halves as they will be: COVERED cleared, LONGER kept, then what still covers.
    const from = first >>> 4;
    const next = this.#halves.slice(from, from + Math.max(1, count / 16));
    this.#cover(first, count, (i, v) => (next[i - from] = (next[i - from] as number) & ~v));
    const cover = (sub: number, length: number): void => this.#cover(sub >>> (32 - PREFILTER_LENGTH), 2 ** (PREFILTER_LENGTH - length), (i, v) => (next[i - from] = (next[i - from] as number) | v));
    for (const length of covering) {
      if (length <= prefixLength) continue;
      const subs = 2 ** (length - prefixLength);
      if (subs > set.slots) {
        for (const [a, l] of set.entries()) if (l === length && maskAddress(a, prefixLength) === address) cover(a, l);
      } else {
        const step = 2 ** (32 - length);
        for (let k = 0; k < subs; k++) {
          const sub = (address + k * step) >>> 0;
          if (set.has(sub, length)) cover(sub, length);
        }
      }
    }
    for (let k = 0; k < next.length; k++) if (next[k] !== this.#halves[from + k]) this.#store(from + k, next[k] as number);
  }

  /** Calls `apply(half, bits)` with the COVERED bits of `count` blocks from `first` (aligned), per half. */
  #cover(first: number, count: number, apply: (half: number, bits: number) => void): void {
    if (count >= 16) for (let i = first >>> 4, end = (first + count) >>> 4; i < end; i++) apply(i, COVERED_HALF);
    else {
      const shift = (first & 15) * 2;
      apply(first >>> 4, ((2 ** (count * 2) - 1) & COVERED_HALF) << shift);
    }
  }

  #or(half: number, bits: number): void {
    const old = this.#halves[half] as number;
    const next = (old | bits) >>> 0;
    if (next !== old) this.#store(half, next);
  }

  #store(half: number, value: number): void {
    if (this.#atomic) Atomics.store(this.#halves, half, value);
    else this.#halves[half] = value;
  }
}

/**
 * Fills an empty prefilter held in `bytes` (no program reads it yet) for the entries a fill put
 * in the set: `entries` as fillHashed was given them, less its `overflow`.
 */
export function fillPrefilter(bytes: Uint8Array, entries: Uint32Array, overflow: readonly [number, number][]): void {
  const pre = new Prefilter(bytes, false);
  const left = new Set(overflow.map(([address, length]) => address * 64 + length));
  for (let k = 0; k < entries.length; k += 2) {
    const address = entries[k] as number;
    const length = entries[k + 1] as number;
    if (left.size === 0 || !left.has(address * 64 + length)) pre.add(address, length);
  }
}
