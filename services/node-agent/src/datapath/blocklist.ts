// The source blocklist as the datapath holds it (bpf/include/ep_blocklist.h): per address family,
// LPM keys { u32 prefixlen; address } and values { u64 expiry in CLOCK_TAI ns (0 = never); u32
// prefixlen; u32 flags }, packed back to back so a list of a million prefixes is two buffers, not
// a million objects. Pure: no map, no clock.
import type { Cidr } from '@edgeplane/proto';

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
 * Packs entries into the tries' layout, growing its buffers as it goes (amortized linear). A prefix
 * added twice keeps the entry that matches longest: never expiring beats expiring, a later expiry
 * beats an earlier one (the datapath holds one value per prefix).
 */
export class BlocklistPacker {
  readonly #v4 = new Packer(BLOCKLIST_SIZES.key4);
  readonly #v6 = new Packer(BLOCKLIST_SIZES.key6);

  /** Adds one entry (the cidr's address must have its host bits zero, as parseCidr returns it). */
  add(entry: BlocklistEntry): void {
    (entry.cidr.family === 4 ? this.#v4 : this.#v6).add(entry);
  }

  /** @returns the packed entries; the packer must not be used afterwards. */
  finish(): BlocklistSpec {
    return { v4: this.#v4.finish(), v6: this.#v6.finish() };
  }
}

class Packer {
  readonly #keySize: number;
  #keys: Uint8Array;
  #values: Uint8Array;
  #count = 0;
  // Index of each prefix already packed, by its key bytes as text: only consulted when the same
  // prefix comes again (lists overlapping each other or a block).
  // IPv4 prefixes are indexed by a number (length * 2^32 + address), cheaper than text.
  readonly #index = new Map<string | number, number>();

  constructor(keySize: number) {
    this.#keySize = keySize;
    this.#keys = new Uint8Array(keySize * 64);
    this.#values = new Uint8Array(BLOCKLIST_SIZES.value * 64);
  }

  add(entry: BlocklistEntry): void {
    const key = encodeBlocklistKey(entry.cidr);
    const a = entry.cidr.address;
    const id = entry.cidr.family === 4 ? entry.cidr.prefixLength * 2 ** 32 + (((a[0]! << 24) | (a[1]! << 16) | (a[2]! << 8) | a[3]!) >>> 0) : String.fromCharCode(...key);
    const at = this.#index.get(id);
    if (at !== undefined) {
      const view = new DataView(this.#values.buffer, at * BLOCKLIST_SIZES.value, BLOCKLIST_SIZES.value);
      const held = view.getBigUint64(0, true);
      if (held === 0n || (entry.expiresTaiNs !== 0n && entry.expiresTaiNs <= held)) return;
      this.#values.set(encodeBlocklistValue(entry), at * BLOCKLIST_SIZES.value);
      return;
    }
    if ((this.#count + 1) * this.#keySize > this.#keys.length) {
      this.#keys = grow(this.#keys);
      this.#values = grow(this.#values);
    }
    this.#keys.set(key, this.#count * this.#keySize);
    this.#values.set(encodeBlocklistValue(entry), this.#count * BLOCKLIST_SIZES.value);
    this.#index.set(id, this.#count);
    this.#count++;
  }

  finish(): PackedBlocklist {
    return { count: this.#count, keys: this.#keys.subarray(0, this.#count * this.#keySize), values: this.#values.subarray(0, this.#count * BLOCKLIST_SIZES.value) };
  }
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
