// The source blocklist as the datapath holds it (bpf/include/ep_blocklist.h): per address family,
// LPM keys { u32 prefixlen; address } and values { u64 expiry in CLOCK_TAI ns (0 = never); u32
// prefixlen; u32 flags }, packed back to back so a list of a million prefixes is two buffers, not
// a million objects. Pure: no map, no clock.
import { cidrFamily, PackedKeyIndex, parseCidrInto, type Cidr } from '@edgeplane/proto';
import { bucketsLog2, chooseLengths, hashOf, type HashedShape } from './blocklist-hash.js';

/** Bytes of struct ep_blk4_key, ep_blk6_key and ep_blk_value. */
export const BLOCKLIST_SIZES = { key4: 8, key6: 20, value: 16 } as const;

/** ep_blk_value.flags: the entry comes from an emergency block (EP_BLK_F_BLOCK). */
export const BLOCKLIST_F_BLOCK = 1;

/** One family's entries, packed as the trie takes them (keys and values in the same order). */
export interface PackedBlocklist {
  readonly count: number;
  /** count * key size bytes. */
  readonly keys: Uint8Array;
  /** count * BLOCKLIST_SIZES.value bytes. */
  readonly values: Uint8Array;
}

/**
 * Permanent IPv4 entries of a few prefix lengths, for the hashed set (blocklist-hash.ts): the set
 * is filled where it will live (the map's mmap, fillHashed), in the order of the entries' first
 * buckets, so no buffer of buckets is made in the agent's heap.
 */
export interface HashedBlocklist {
  readonly shape: HashedShape;
  /** Pairs [address (host order), prefix length], by first bucket; a prefix may repeat. */
  readonly entries: Uint32Array;
  /** entries.length / 2. */
  readonly count: number;
}

/** Both families' entries, ready to be written into a pair of tries (and the IPv4 hashed set). */
export interface BlocklistSpec {
  readonly v4: PackedBlocklist;
  readonly v6: PackedBlocklist;
  /** Permanent IPv4 entries held apart from v4 (BlocklistPacker's `hashed` option). */
  readonly v4Hashed?: HashedBlocklist;
}

/** One entry of the blocklist: a prefix, until when it matches, and where it comes from. */
export interface BlocklistEntry {
  readonly cidr: Cidr;
  /** CLOCK_TAI nanoseconds at which it stops matching; 0n: never. */
  readonly expiresTaiNs: bigint;
  /** BLOCKLIST_F_* */
  readonly flags: number;
}

/**
 * Packs entries into the tries' layout, growing its buffers as it goes (amortized linear; give
 * the expected counts to allocate once). Prefix text is parsed straight into the packed key
 * (parseCidrInto): no object or string per prefix, so a million prefixes cost two buffers and a
 * table of int32s (PackedKeyIndex). A prefix added twice keeps the entry that matches longest: never expiring
 * beats expiring, a later expiry beats an earlier one (the datapath holds one value per prefix).
 *
 * With `hashed` (the source blocklist's datapath; not the rules' lists, whose trie values carry
 * more), the permanent IPv4 entries of the HASH_LENGTHS most common prefix lengths go to the
 * hashed set instead (spec.v4Hashed), which finds duplicates as it is filled: those entries are
 * neither indexed nor given a value, and the trie keeps the rest.
 */
export class BlocklistPacker {
  readonly #v4: Packer | Appended4;
  readonly #v6: Packer;
  /** With `hashed`: permanent IPv4 entries per prefix length, as added (duplicates included). */
  readonly #perLength: Uint32Array | undefined;

  /**
   * @param options.v4/v6 how many entries of each family to allocate room for at once (a hint).
   * @param options.hashed hold the most common lengths' permanent IPv4 entries in spec.v4Hashed.
   */
  constructor(options: { v4?: number; v6?: number; hashed?: boolean } = {}) {
    this.#perLength = options.hashed === true ? new Uint32Array(33) : undefined;
    this.#v4 = this.#perLength === undefined ? new Packer(BLOCKLIST_SIZES.key4, options.v4 ?? 0) : new Appended4(options.v4 ?? 0);
    this.#v6 = new Packer(BLOCKLIST_SIZES.key6, options.v6 ?? 0);
  }

  /** Adds one entry (the cidr's address must have its host bits zero, as parseCidr returns it). */
  add(entry: BlocklistEntry): void {
    const packer = entry.cidr.family === 4 ? this.#v4 : this.#v6;
    const at = packer.slot();
    packer.keys.set(entry.cidr.address, at + 4);
    packer.commit(entry.cidr.prefixLength, entry.expiresTaiNs, entry.flags);
    if (entry.expiresTaiNs === 0n && packer === this.#v4 && this.#perLength !== undefined) this.#perLength[entry.cidr.prefixLength]! += 1;
  }

  /**
   * Adds the prefix `text` (parseCidr's grammar; host bits cleared), parsed into its packed key.
   * @returns false (nothing added) when `text` is not a prefix.
   */
  addText(text: string, expiresTaiNs = 0n, flags = 0): boolean {
    const packer = cidrFamily(text) === 4 ? this.#v4 : this.#v6;
    const at = packer.slot();
    const prefixLength = parseCidrInto(text, packer.keys, at + 4);
    if (prefixLength < 0) return false;
    packer.commit(prefixLength, expiresTaiNs, flags);
    if (expiresTaiNs === 0n && packer === this.#v4 && this.#perLength !== undefined) this.#perLength[prefixLength]! += 1;
    return true;
  }

  /** @returns the packed entries; the packer must not be used afterwards. */
  finish(): BlocklistSpec {
    const v6 = this.#v6.finish();
    const raw = this.#v4;
    if (raw instanceof Packer) return { v4: raw.finish(), v6 };
    const perLength = this.#perLength!;
    const lengths = chooseLengths(perLength);
    const hashedLength = new Uint8Array(33);
    let room = 0;
    for (const length of lengths) {
      hashedLength[length] = 1;
      room += perLength[length] as number;
    }
    const log2 = bucketsLog2(room);
    const mask = (1 << log2) - 1;
    const { keys, count: total, extra } = raw;
    // Expiring IPv4 entries of the set's lengths: to the trie, unless the same prefix is also
    // permanent (permanent beats expiring, as when both are indexed).
    const expiring = new Set<number>();
    for (const i of extra.keys()) {
      const at = i * BLOCKLIST_SIZES.key4;
      if (hashedLength[keys[at] as number] === 1) expiring.add(keyAddress(keys, at) * 64 + (keys[at] as number));
    }
    const superseded = new Set<number>();
    // The rest (other lengths, expiring entries) into the trie's entries, indexed: duplicates
    // merge there as without `hashed`.
    const rest = new Packer(BLOCKLIST_SIZES.key4, 0);
    // The set's entries in the order of their first bucket, so the set is filled front to back
    // (a random write into 16 MiB of buckets cost ~500 ns here, mostly TLB and cache misses):
    // a counting sort in two passes over the keys (the hash computed in each rather than kept:
    // fewer buffers in the heap), moving each entry's address and length into place.
    const perBucket = new Uint32Array(mask + 2);
    let inSet = 0;
    for (let i = 0, at = 0; i < total; i++, at += BLOCKLIST_SIZES.key4) {
      const length = keys[at] as number;
      if (hashedLength[length] !== 1) {
        const value = extra.get(i);
        rest.copy(keys, at, value?.expiresTaiNs ?? 0n, value?.flags ?? 0);
      } else if (extra.size === 0 || !extra.has(i)) {
        const address = keyAddress(keys, at);
        perBucket[(hashOf(address, length) & mask) + 1]! += 1;
        inSet++;
        if (expiring.size > 0 && expiring.has(address * 64 + length)) superseded.add(address * 64 + length);
      }
    }
    for (const [i, value] of extra) {
      const at = i * BLOCKLIST_SIZES.key4;
      if (hashedLength[keys[at] as number] === 1 && !superseded.has(keyAddress(keys, at) * 64 + (keys[at] as number))) rest.copy(keys, at, value.expiresTaiNs, value.flags);
    }
    for (let b = 1; b < perBucket.length; b++) perBucket[b]! += perBucket[b - 1] as number;
    const entries = new Uint32Array(inSet * 2);
    for (let i = 0, at = 0; i < total; i++, at += BLOCKLIST_SIZES.key4) {
      const length = keys[at] as number;
      if (hashedLength[length] !== 1 || (extra.size > 0 && extra.has(i))) continue;
      const address = keyAddress(keys, at);
      const to = perBucket[hashOf(address, length) & mask]!++ * 2;
      entries[to] = address;
      entries[to + 1] = length;
    }
    return { v4: rest.finish(), v6, v4Hashed: inSet === 0 ? undefined : { shape: { log2, lengths, prefilter: true }, entries, count: inSet } };
  }
}

// The IPv4 entries of a hashed packer as they come: keys only (most entries are permanent and
// have no value to keep), the values of the others by entry number.
class Appended4 {
  keys: Uint8Array;
  count = 0;
  readonly extra = new Map<number, { expiresTaiNs: bigint; flags: number }>();

  constructor(expected: number) {
    this.keys = new Uint8Array(BLOCKLIST_SIZES.key4 * Math.max(64, expected));
  }

  slot(): number {
    if ((this.count + 1) * BLOCKLIST_SIZES.key4 > this.keys.length) this.keys = grow(this.keys);
    return this.count * BLOCKLIST_SIZES.key4;
  }

  commit(prefixLength: number, expiresTaiNs: bigint, flags: number): void {
    const at = this.count * BLOCKLIST_SIZES.key4;
    this.keys[at] = prefixLength;
    this.keys[at + 1] = this.keys[at + 2] = this.keys[at + 3] = 0;
    if (expiresTaiNs !== 0n || flags !== 0) this.extra.set(this.count, { expiresTaiNs, flags });
    this.count++;
  }
}

// One family's packed entries, and the index that finds a prefix already packed by its key bytes.
class Packer {
  readonly #keySize: number;
  keys: Uint8Array;
  #values: Uint8Array;
  #view: DataView;
  readonly #index: PackedKeyIndex;
  #count = 0;

  constructor(keySize: number, expected: number) {
    this.#keySize = keySize;
    const room = Math.max(64, expected);
    this.keys = new Uint8Array(keySize * room);
    this.#values = new Uint8Array(BLOCKLIST_SIZES.value * room);
    this.#view = new DataView(this.#values.buffer);
    this.#index = new PackedKeyIndex(keySize, expected);
  }

  /** @returns the byte offset of the next entry's key, with room made for it. */
  slot(): number {
    if ((this.#count + 1) * this.#keySize > this.keys.length) {
      this.keys = grow(this.keys);
      this.#values = grow(this.#values);
      this.#view = new DataView(this.#values.buffer);
    }
    return this.#count * this.#keySize;
  }

  /** Takes the key written at slot() (its address; the prefix length is written here) as an entry. */
  commit(prefixLength: number, expiresTaiNs: bigint, flags: number): void {
    const keys = this.keys;
    const size = this.#keySize;
    const at = this.#count * size;
    // struct ep_blk*_key.prefixlen: host order (little-endian here, as everywhere we load BPF).
    keys[at] = prefixLength;
    keys[at + 1] = keys[at + 2] = keys[at + 3] = 0;
    const held = this.#index.add(keys);
    if (held >= 0) return this.#merge(held, expiresTaiNs, flags);
    this.#write(this.#count, prefixLength, expiresTaiNs, flags);
    this.#count++;
  }

  /** Takes the key packed at `keyAt` of `keys` (of this key size) with its expiry and flags. */
  copy(keys: Uint8Array, keyAt: number, expiresTaiNs: bigint, flags: number): void {
    const at = this.slot();
    this.keys.set(keys.subarray(keyAt + 4, keyAt + this.#keySize), at + 4);
    this.commit(keys[keyAt] as number, expiresTaiNs, flags);
  }

  finish(): PackedBlocklist {
    return { count: this.#count, keys: this.keys.subarray(0, this.#count * this.#keySize), values: this.#values.subarray(0, this.#count * BLOCKLIST_SIZES.value) };
  }

  #merge(entry: number, expiresTaiNs: bigint, flags: number): void {
    const held = this.#view.getBigUint64(entry * BLOCKLIST_SIZES.value, true);
    if (held === 0n || (expiresTaiNs !== 0n && expiresTaiNs <= held)) return;
    this.#write(entry, this.#view.getUint32(entry * BLOCKLIST_SIZES.value + 8, true), expiresTaiNs, flags);
  }

  // struct ep_blk_value; the buffers start zeroed, so a permanent entry writes its length only.
  #write(entry: number, prefixLength: number, expiresTaiNs: bigint, flags: number): void {
    const at = entry * BLOCKLIST_SIZES.value;
    const view = this.#view;
    if (expiresTaiNs !== 0n || view.getUint32(at, true) !== 0 || view.getUint32(at + 4, true) !== 0) view.setBigUint64(at, expiresTaiNs, true);
    view.setUint32(at + 8, prefixLength, true);
    view.setUint32(at + 12, flags, true);
  }
}

/**
 * Entries in the order the kernel's LPM trie takes them fastest: by the first 32 bits of their
 * address (IPv6 keys alike), so consecutive inserts walk the same, cache-hot path of the trie
 * (trie_update_elem in kernel/bpf/lpm_trie.c walks from the root for every insert). Measured on
 * a million prefixes: a shuffled list costs about three times the kernel time of a sorted one.
 * A radix sort (two stable passes of 16 bits: linear) then one copy, when more than a third of
 * consecutive entries descend (about half do in a random order; an ordered feed, or a few ordered
 * ranges interleaved, have few): the sort's own cost (~1 s of JavaScript for a shuffled million
 * on the loaded bench machine, most of it cache misses) is paid only where it saves more (~2.5 s
 * of kernel time there; BENCHMARKS.md).
 * @returns `packed`, or a copy in that order.
 */
export function inInsertOrder(packed: PackedBlocklist, keySize: number): PackedBlocklist {
  const { count, keys, values } = packed;
  const address = new Uint32Array(count);
  let descents = 0;
  for (let i = 0, at = 4; i < count; i++, at += keySize) {
    address[i] = (((keys[at] as number) << 24) | ((keys[at + 1] as number) << 16) | ((keys[at + 2] as number) << 8) | (keys[at + 3] as number)) >>> 0;
    if (i > 0 && (address[i] as number) < (address[i - 1] as number)) descents++;
  }
  if (descents * 3 <= count) return packed;
  let order = new Uint32Array(count);
  for (let i = 0; i < count; i++) order[i] = i;
  let next = new Uint32Array(count);
  const starts = new Uint32Array(65_537);
  for (const shift of [0, 16]) {
    starts.fill(0);
    for (let i = 0; i < count; i++) starts[((address[i] as number) >>> shift) & 0xffff]! += 1;
    let sum = 0;
    for (let d = 0; d < 65_536; d++) {
      const n = starts[d] as number;
      starts[d] = sum;
      sum += n;
    }
    for (let k = 0; k < count; k++) {
      const i = order[k] as number;
      next[starts[((address[i] as number) >>> shift) & 0xffff]!++] = i;
    }
    [order, next] = [next, order];
  }
  const valueSize = BLOCKLIST_SIZES.value;
  const outKeys = new Uint8Array(keys.length);
  const outValues = new Uint8Array(values.length);
  for (let j = 0; j < count; j++) {
    const i = order[j] as number;
    for (let b = 0; b < keySize; b++) outKeys[j * keySize + b] = keys[i * keySize + b] as number;
    for (let b = 0; b < valueSize; b++) outValues[j * valueSize + b] = values[i * valueSize + b] as number;
  }
  return { count, keys: outKeys, values: outValues };
}

/** The host-order IPv4 address of the packed struct ep_blk4_key at `at`. */
function keyAddress(keys: Uint8Array, at: number): number {
  return (((keys[at + 4] as number) << 24) | ((keys[at + 5] as number) << 16) | ((keys[at + 6] as number) << 8) | (keys[at + 7] as number)) >>> 0;
}

function grow(bytes: Uint8Array): Uint8Array {
  const next = new Uint8Array(bytes.length * 2);
  next.set(bytes);
  return next;
}

/** @returns struct ep_blk4_key or ep_blk6_key of `cidr` (its prefix length in host order, as the kernel reads it). */
export function encodeBlocklistKey(cidr: Cidr): Uint8Array {
  const key = new Uint8Array(cidr.family === 4 ? BLOCKLIST_SIZES.key4 : BLOCKLIST_SIZES.key6);
  new DataView(key.buffer).setUint32(0, cidr.prefixLength, true);
  key.set(cidr.address, 4);
  return key;
}

/** @returns struct ep_blk_value of `entry`. */
export function encodeBlocklistValue(entry: BlocklistEntry): Uint8Array {
  const value = new Uint8Array(BLOCKLIST_SIZES.value);
  const view = new DataView(value.buffer);
  view.setBigUint64(0, entry.expiresTaiNs, true);
  view.setUint32(8, entry.cidr.prefixLength, true);
  view.setUint32(12, entry.flags, true);
  return value;
}

/** @returns the expiry (CLOCK_TAI ns, 0n = never) and flags of a struct ep_blk_value. */
export function decodeBlocklistValue(value: Uint8Array): { expiresTaiNs: bigint; prefixLength: number; flags: number } {
  const view = new DataView(value.buffer, value.byteOffset, value.byteLength);
  return { expiresTaiNs: view.getBigUint64(0, true), prefixLength: view.getUint32(8, true), flags: view.getUint32(12, true) };
}
