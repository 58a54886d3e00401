// The source blocklist as the datapath holds it (bpf/include/ep_blocklist.h): per address family,
// LPM keys { u32 prefixlen; address } and values { u64 expiry in CLOCK_TAI ns (0 = never); u32
// prefixlen; u32 flags }, packed back to back so a list of a million prefixes is two buffers, not
// a million objects. Pure: no map, no clock.
import { cidrFamily, PackedKeyIndex, parseCidrInto, type Cidr } from '@edgeplane/proto';

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

/** Both families' entries, ready to be written into a pair of tries. */
export interface BlocklistSpec {
  readonly v4: PackedBlocklist;
  readonly v6: PackedBlocklist;
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
 */
export class BlocklistPacker {
  readonly #v4: Packer;
  readonly #v6: Packer;

  /** @param expected how many entries of each family to allocate room for at once (a hint). */
  constructor(expected: { v4?: number; v6?: number } = {}) {
    this.#v4 = new Packer(BLOCKLIST_SIZES.key4, expected.v4 ?? 0);
    this.#v6 = new Packer(BLOCKLIST_SIZES.key6, expected.v6 ?? 0);
  }

  /** Adds one entry (the cidr's address must have its host bits zero, as parseCidr returns it). */
  add(entry: BlocklistEntry): void {
    const packer = entry.cidr.family === 4 ? this.#v4 : this.#v6;
    const at = packer.slot();
    packer.keys.set(entry.cidr.address, at + 4);
    packer.commit(entry.cidr.prefixLength, entry.expiresTaiNs, entry.flags);
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
    return true;
  }

  /** @returns the packed entries; the packer must not be used afterwards. */
  finish(): BlocklistSpec {
    return { v4: this.#v4.finish(), v6: this.#v6.finish() };
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
    if (expiresTaiNs !== 0n || view.getBigUint64(at, true) !== 0n) view.setBigUint64(at, expiresTaiNs, true);
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
