// The blocklist's hashed set of permanent IPv4 prefixes (bpf/include/ep_blocklist.h, ep_blk4h;
// bpf/README.md, "The blocklist"): buckets of 8 u64 slots (64 bytes), each slot the masked address
// (host order) << 32 | prefix length + 1, 0 = free; an entry lives in the emptier of its two
// buckets, and one that fits in neither is left to the trie. Built here in a plain buffer and
// copied into the map whole, or written in place through the map's mmap one 8-byte store at a
// time. Pure: no map.

/** Slots per bucket (EP_BLK_HASH_SLOTS) and bytes per bucket. */
export const HASH_SLOTS = 8;
export const HASH_BUCKET_BYTES = HASH_SLOTS * 8;
/** The set's map flags: BPF_F_MMAPABLE | BPF_F_INNER_MAP (written through mmap; its size varies by list). */
export const HASHED_MAP_FLAGS = 0x400 | 0x1000;
/** Prefix lengths a set holds at most (EP_BLK_HASH_LENS): each costs a packet up to two bucket reads. */
export const HASH_LENGTHS = 4;
/** Entries per bucket a whole load aims at, at most (half the slots): room to add in place. */
const LOAD_PER_BUCKET = HASH_SLOTS / 2;

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

/** The shape of a set: 2^log2 buckets and the prefix lengths it holds (longest first). */
export interface HashedShape {
  readonly log2: number;
  readonly lengths: readonly number[];
}

/**
 * ep_blk_active[0]'s bits for a shape (EP_BLK_HASH_LOG2, EP_BLK_HASH_LEN1): log2 in bits 3-7,
 * each length + 1 in 6 bits from bit 8. No lengths: 0 (no bucket is read).
 */
export function shapeBits(shape: HashedShape | undefined): number {
  if (shape === undefined || shape.lengths.length === 0) return 0;
  let bits = shape.log2 << 3;
  shape.lengths.forEach((length, i) => (bits |= (length + 1) << (8 + 6 * i)));
  return bits >>> 0;
}

/** @returns the shape ep_blk_active[0] names (undefined: no lengths). */
export function shapeOfWord(word: number): HashedShape | undefined {
  const lengths: number[] = [];
  for (let i = 0; i < HASH_LENGTHS; i++) {
    const length1 = (word >>> (8 + 6 * i)) & 63;
    if (length1 === 0) break;
    lengths.push(length1 - 1);
  }
  return lengths.length === 0 ? undefined : { log2: (word >>> 3) & 31, lengths };
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
 * by two 4-byte stores.
 */
export class HashedSet4 {
  readonly log2: number;
  readonly #words: Uint32Array;
  readonly #slots: BigUint64Array | undefined;
  readonly #mask: number;
  /** Whether an entry may be in its second bucket while its first has a free slot. */
  #removed: boolean;

  /** @param fresh nothing was ever removed from these buckets (see insert). */
  constructor(bytes: Uint8Array, log2: number, atomic: boolean, fresh = false) {
    this.#removed = !fresh;
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

  /**
   * Adds `address`/`prefixLength` (host order, host bits cleared) to its first bucket if that has
   * a free slot, else to its second; when both are full, one entry of either moves to its own
   * other bucket if that has room, and the new one takes its slot (it is written there before it
   * leaves, so a concurrent reader finds it throughout). In a set nothing was ever removed from
   * (a whole load being built), an entry is in its second bucket only if its first is full, so a
   * first bucket with a free slot settles it without reading the second (one cache line per
   * entry, not two).
   * @param h hashOf(address, prefixLength), if the caller has it.
   * @returns 'added', 'present' (it was there already), or 'full' (no room: nothing written).
   */
  insert(address: number, prefixLength: number, h = hashOf(address, prefixLength)): 'added' | 'present' | 'full' {
    const length1 = prefixLength + 1;
    const firstBucket = h & this.#mask;
    const first = this.#scan(firstBucket, address, length1);
    if (first === PRESENT) return 'present';
    if (first >= 0 && !this.#removed) return this.#write(first, address, length1);
    const secondBucket = mix32((h + 0x7f4a7c15) >>> 0) & this.#mask;
    const second = this.#scan(secondBucket, address, length1);
    if (second === PRESENT) return 'present';
    if (first >= 0) return this.#write(first, address, length1);
    if (second >= 0) return this.#write(second, address, length1);
    for (const bucket of [firstBucket, secondBucket]) {
      const freed = this.#moveOne(bucket);
      if (freed >= 0) return this.#write(freed, address, length1);
    }
    return 'full';
  }

  /** Every entry: [address (host order), prefix length]. */
  *entries(): Generator<[number, number]> {
    const words = this.#words;
    for (let at = 0; at < words.length; at += 2) if (words[at] !== 0) yield [words[at + 1] as number, (words[at] as number) - 1];
  }

  /** Removes `address`/`prefixLength`. @returns whether it was there. */
  remove(address: number, prefixLength: number): boolean {
    const at = this.#find(address, prefixLength + 1);
    if (at < 0) return false;
    this.#removed = true;
    if (this.#slots !== undefined) Atomics.store(this.#slots, at / 2, 0n);
    else words0(this.#words, at);
    return true;
  }

  /** Whether `address`/`prefixLength` is in the set. */
  has(address: number, prefixLength: number): boolean {
    return this.#find(address, prefixLength + 1) >= 0;
  }

  /** @returns the word index of the bucket's first free slot, PRESENT if it holds the entry, or -1 (full). */
  #scan(bucket: number, address: number, length1: number): number {
    const words = this.#words;
    let free = -1;
    for (let k = 0, at = bucket * (HASH_SLOTS * 2); k < HASH_SLOTS; k++, at += 2) {
      const low = words[at] as number;
      if (low === length1 && words[at + 1] === address) return PRESENT;
      if (low === 0 && free < 0) free = at;
    }
    return free;
  }

  /** Moves one entry of `bucket` to its other bucket, if one has room there. @returns the freed slot's word index, or -1. */
  #moveOne(bucket: number): number {
    const words = this.#words;
    for (let k = 0, at = bucket * (HASH_SLOTS * 2); k < HASH_SLOTS; k++, at += 2) {
      const length1 = words[at] as number;
      const address = words[at + 1] as number;
      const h = hashOf(address, length1 - 1);
      const other = (h & this.#mask) === bucket ? mix32((h + 0x7f4a7c15) >>> 0) & this.#mask : h & this.#mask;
      if (other === bucket) continue;
      const free = this.#scan(other, address, length1);
      if (free < 0) continue;
      this.#write(free, address, length1);
      // Its first bucket is full now (the caller fills this slot at once): the fresh-set rule holds.
      if (this.#slots !== undefined) Atomics.store(this.#slots, at / 2, 0n);
      else words0(words, at);
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

  /** The first bucket of an entry whose hashOf() is `h`. */
  firstBucket(h: number): number {
    return h & this.#mask;
  }

  /** @returns the word index of the slot holding the entry, or -1. */
  #find(address: number, length1: number): number {
    const h = hashOf(address, length1 - 1);
    const words = this.#words;
    for (const bucket of [h & this.#mask, mix32((h + 0x7f4a7c15) >>> 0) & this.#mask]) {
      for (let k = 0, at = bucket * (HASH_SLOTS * 2); k < HASH_SLOTS; k++, at += 2) {
        if (words[at] === length1 && words[at + 1] === address) return at;
      }
    }
    return -1;
  }
}

const PRESENT = -2;

function words0(words: Uint32Array, at: number): void {
  words[at] = 0;
  words[at + 1] = 0;
}
