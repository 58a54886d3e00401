// The blocklist maps of one datapath, seen from the agent (bpf/include/ep_blocklist.h; bpf/README.md,
// "The blocklist"): a whole list is written into fresh tries (and a fresh hashed set for its
// permanent IPv4 entries) in the idle blocklist generation and switched in by one write of
// ep_blk_active[0]; single entries are added to and removed from the live ones in place. The clock the programs compare expiries with is CLOCK_TAI, read through the
// ep_blk_clock program.
import { BpfMap, type Program } from 'libbpf-ts';
import { BLOCKLIST_SIZES, encodeBlocklistKey, encodeBlocklistValue, inInsertOrder, type BlocklistEntry, type BlocklistSpec, type HashedBlocklist } from './blocklist.js';
import { fillHashed, fillPrefilter, HASH_BUCKET_BYTES, HASHED_MAP_FLAGS, HashedSet4, Prefilter, PREFILTER_MAP_FLAGS, PREFILTER_VALUE_BYTES, PREFILTER_WORDS, shapeBits, shapeOfWord, type HashedShape } from './blocklist-hash.js';
import { sumPerCpu } from './counters.js';
import type { Counter } from './datapath.js';
import { DatapathError } from './errors.js';
import type { Cidr } from '@edgeplane/proto';

/** The maps BlocklistTables borrows, by their names in the object. */
export interface BlocklistMaps {
  readonly ep_blk4: BpfMap;
  readonly ep_blk6: BpfMap;
  readonly ep_blk4h: BpfMap;
  readonly ep_blk4p: BpfMap;
  readonly ep_blk_active: BpfMap;
  readonly ep_blk_stats: BpfMap;
  readonly ep_blk_clock_out: BpfMap;
}

/** What the blocklist counted (enum ep_blk_stat), summed over CPUs. */
export interface BlocklistCounters {
  readonly dropped4: Counter;
  readonly dropped6: Counter;
  /** Lookups that met an expired entry (events, in `packets`). */
  readonly expiredSeen: Counter;
}

/** How a whole load took effect. */
export interface BlocklistLoad {
  /** The blocklist generation (0 or 1) now live. */
  readonly generation: number;
  readonly v4: number;
  readonly v6: number;
  /** Whether the entries went in with one bpf_map_update_batch per family. */
  readonly batched: boolean;
}

/** The room a trie has beyond the entries it was built with, for adds in place. */
function withRoom(count: number): number {
  return count + Math.max(1024, Math.ceil(count / 8));
}

const u32Bytes = (n: number): Uint8Array => new Uint8Array(new Uint32Array([n]).buffer);

/**
 * Bits of ep_blk_active[0] beside the live generation (bit 0): the live trie of that family holds
 * no entry, so the programs skip its lookup (EP_BLK_EMPTY4/6 in ep_blocklist.h). Set only where
 * emptiness is known; a word without them means "look", which is always right.
 */
const EMPTY4 = 0x2;
const EMPTY6 = 0x4;
const emptyBit = (family: 4 | 6): number => (family === 4 ? EMPTY4 : EMPTY6);
/** The marks of the families with no entry, by their entry counts. */
const emptyBits = (v4: number, v6: number): number => (v4 === 0 ? EMPTY4 : 0) | (v6 === 0 ? EMPTY6 : 0);

/** One LPM trie of a blocklist or a prefix list (ep_blk4/6's and ep_lst4/6's inner maps share a layout). */
export interface LiveTrie {
  map: BpfMap;
  count: number;
  capacity: number;
}

/** A pair of tries, one per address family. */
export interface TriePair {
  v4: LiveTrie;
  v6: LiveTrie;
}

/** The live hashed set of permanent IPv4 entries (ep_blk4h's inner map). */
interface LiveHashed {
  map: BpfMap;
  /** Its prefilter (ep_blk4p's inner map), when the shape says it has one. */
  prefilter: BpfMap | undefined;
  shape: HashedShape;
  /** Entries as this process wrote them (after an adoption: unknown, and never used). */
  count: number;
}


/**
 * A fresh ep_blk4h inner map holding `hashed`'s entries and, if its shape has one, a fresh
 * ep_blk4p inner map with their prefilter, each filled through its mmap (the kernel's pages, not
 * a buffer in the agent's heap).
 * @returns the maps, how many entries the set holds, and those that fit in neither of their buckets.
 */
function buildHashed(hashed: HashedBlocklist): { map: BpfMap; prefilter: BpfMap | undefined; added: number; overflow: BlocklistEntry[] } {
  const map = BpfMap.create({ type: 'array', name: 'ep_blk4h_in', keySize: 4, valueSize: HASH_BUCKET_BYTES, maxEntries: 1 << hashed.shape.log2, flags: HASHED_MAP_FLAGS });
  let prefilter: BpfMap | undefined;
  try {
    const { added, overflow } = map.withMapped((bytes) => fillHashed(bytes, hashed.shape.log2, hashed.entries));
    if (hashed.shape.prefilter) {
      prefilter = BpfMap.create({ type: 'array', name: 'ep_blk4p_in', keySize: 4, valueSize: PREFILTER_VALUE_BYTES, maxEntries: PREFILTER_WORDS, flags: PREFILTER_MAP_FLAGS });
      prefilter.withMapped((bytes) => fillPrefilter(bytes, hashed.entries, overflow));
    }
    const entry = ([address, prefixLength]: [number, number]): BlocklistEntry => ({ cidr: { family: 4, address: new Uint8Array([address >>> 24, (address >>> 16) & 255, (address >>> 8) & 255, address & 255]), prefixLength }, expiresTaiNs: 0n, flags: 0 });
    return { map, prefilter, added, overflow: overflow.map(entry) };
  } catch (error) {
    map.close();
    prefilter?.close();
    throw error;
  }
}

/** The host-order IPv4 address of a cidr (its address bytes, network order). */
const hostAddress = (cidr: Cidr): number => new DataView(cidr.address.buffer, cidr.address.byteOffset, 4).getUint32(0, false);

/**
 * Fresh tries holding `spec` (with room for adds in place), each written with one batch update
 * in address order. The caller owns them (installs them into an outer map, then closes them).
 * @throws Error from the kernel (nothing made is left open).
 */
export function buildTries(spec: BlocklistSpec, name: string): TriePair & { batched: boolean } {
  const made: LiveTrie[] = [];
  try {
    let batched = true;
    for (const [family, packed] of [[4, spec.v4], [6, spec.v6]] as const) {
      const capacity = withRoom(packed.count);
      const map = BpfMap.create({ type: 'lpm_trie', name: `${name}${family}_in`, keySize: family === 4 ? BLOCKLIST_SIZES.key4 : BLOCKLIST_SIZES.key6, valueSize: BLOCKLIST_SIZES.value, maxEntries: capacity, flags: 1 /* BPF_F_NO_PREALLOC */ });
      made.push({ map, count: packed.count, capacity });
      const ordered = inInsertOrder(packed, family === 4 ? BLOCKLIST_SIZES.key4 : BLOCKLIST_SIZES.key6);
      batched = map.setBatchPacked(ordered.keys, ordered.values).batched && batched;
    }
    const [v4, v6] = made as [LiveTrie, LiveTrie];
    return { v4, v6, batched };
  } catch (error) {
    for (const trie of made) trie.map.close();
    throw error;
  }
}

/**
 * Adds or replaces entries in `live` in place (each LPM update is atomic for a concurrent lookup).
 * @returns false (nothing written) when the tries lack room.
 * @throws Error from the kernel.
 */
export function addToTries(live: TriePair, entries: readonly BlocklistEntry[]): boolean {
  const need4 = entries.filter((e) => e.cidr.family === 4).length;
  if (live.v4.count + need4 > live.v4.capacity || live.v6.count + entries.length - need4 > live.v6.capacity) return false;
  for (const entry of entries) {
    const trie = entry.cidr.family === 4 ? live.v4 : live.v6;
    const key = encodeBlocklistKey(entry.cidr);
    const isNew = trie.map.get(key) === undefined;
    trie.map.set(key, encodeBlocklistValue(entry));
    if (isNew) trie.count++;
  }
  return true;
}

/**
 * Deletes prefixes from `live` in place.
 * @returns those that were there.
 * @throws Error from the kernel.
 */
export function removeFromTries(live: TriePair, prefixes: readonly Cidr[]): Set<Cidr> {
  const removed = new Set<Cidr>();
  for (const cidr of prefixes) {
    const trie = cidr.family === 4 ? live.v4 : live.v6;
    if (trie.map.delete(encodeBlocklistKey(cidr))) {
      trie.count--;
      removed.add(cidr);
    }
  }
  return removed;
}

/** The tries installed at `slot` of two outer maps, adopted with their count unknown (taken as full). */
export function adoptTries(outer4: BpfMap, outer6: BpfMap, slot: number): TriePair | undefined {
  if (outer4.get(u32Bytes(slot)) === undefined || outer6.get(u32Bytes(slot)) === undefined) return undefined;
  const adopt = (outer: BpfMap): LiveTrie => {
    const map = outer.getInnerMap(u32Bytes(slot))!;
    return { map, count: map.maxEntries, capacity: map.maxEntries };
  };
  return { v4: adopt(outer4), v6: adopt(outer6) };
}

/**
 * The blocklist tries. Owns the inner maps it opened; close() releases them (the outer maps keep
 * the tries alive and enforcing: closing never detaches or empties anything).
 */
export class BlocklistTables {
  readonly #maps: BlocklistMaps;
  readonly #clock: Program;
  #live: TriePair | undefined;
  /** With #live: its hashed set, if the live generation has one. */
  #hashed: LiveHashed | undefined;
  /** #live was adopted from the outer maps (entry counts unknown): adds load the whole list. */
  #adopted = false;
  #closed = false;

  /**
   * @param maps borrowed from the datapath's object (or pinned); the caller keeps them open.
   * @param clock the ep_blk_clock program.
   */
  constructor(maps: BlocklistMaps, clock: Program) {
    this.#maps = maps;
    this.#clock = clock;
  }

  /** The live blocklist generation (0 or 1). */
  get generation(): number {
    return this.#activeWord() & 1;
  }

  /**
   * Marks each family whose live slot holds no trie at all (a datapath no list was ever loaded
   * into) as empty, so its packets skip the lookup; a trie present is left to be looked up until
   * the next load says what it holds. Idempotent; the datapath calls it when it opens.
   * @throws DatapathError if the kernel refuses the read or the write.
   */
  markUnloadedEmpty(): void {
    try {
      const word = this.#activeWord();
      const slot = u32Bytes(word & 1);
      let bits = 0;
      if (this.#maps.ep_blk4.get(slot) === undefined) bits |= EMPTY4;
      if (this.#maps.ep_blk6.get(slot) === undefined) bits |= EMPTY6;
      if ((word | bits) !== word) this.#maps.ep_blk_active.set(u32Bytes(0), u32Bytes(word | bits));
    } catch (cause) {
      throw new DatapathError('mark unloaded blocklist empty', { cause });
    }
  }

  /**
   * The kernel's CLOCK_TAI and the wall clock (UTC) read around it: TAI - UTC is the offset an
   * expiry in UTC (as the log carries it) is moved by before it goes into a trie. Their
   * difference is the kernel's TAI offset (37 s with a time daemon that sets it, 0 without),
   * give or take the time between the two reads (well under a millisecond).
   * @throws DatapathError if the program cannot run.
   */
  readClock(): { taiNs: bigint; utcNs: bigint } {
    try {
      const before = wallNs();
      this.#clock.testRun({ data: new Uint8Array(0), dataSizeOut: 0, repeat: 0, ctxIn: new Uint8Array(8) });
      const after = wallNs();
      const bytes = this.#maps.ep_blk_clock_out.get(u32Bytes(0));
      if (bytes === undefined) throw new Error('ep_blk_clock_out[0] is missing');
      const taiNs = new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true);
      return { taiNs, utcNs: (before + after) / 2n };
    } catch (cause) {
      throw new DatapathError('read blocklist clock', { cause });
    }
  }

  /** @returns `utcMs` (milliseconds since the epoch, UTC) on CLOCK_TAI in ns; 0 stays 0 (never). */
  taiFromUtcMs(utcMs: number): bigint {
    if (utcMs === 0) return 0n;
    const { taiNs, utcNs } = this.readClock();
    return BigInt(utcMs) * 1_000_000n + (taiNs - utcNs);
  }

  /**
   * Writes `spec` whole into fresh tries in the idle generation and switches to it with one
   * write: a packet meets the old list or the new one, never part of either. The previous
   * generation's tries, set and prefilter are then freed (#dropPrevious).
   * @throws DatapathError (the live list stays in force).
   */
  load(spec: BlocklistSpec): BlocklistLoad {
    this.#open();
    const idle = 1 - this.generation;
    const hashed = spec.v4Hashed;
    let made: (TriePair & { batched: boolean }) | undefined;
    let hashedMap: BpfMap | undefined;
    let prefilterMap: BpfMap | undefined;
    let inSet = 0;
    try {
      made = buildTries(spec, 'ep_blk');
      if (hashed !== undefined) {
        const built = buildHashed(hashed);
        hashedMap = built.map;
        prefilterMap = built.prefilter;
        inSet = built.added;
        // Entries that fit in neither bucket (rare: an entry of a full bucket moves aside first).
        if (built.overflow.length > 0 && !addToTries(made, built.overflow)) throw new Error(`${built.overflow.length} entries fit in neither of their buckets nor in the trie's room`);
      }
      const { v4, v6, batched } = made;
      // Installing an inner map returns after synchronize_rcu() (maybe_wait_bpf_programs in
      // kernel/bpf/syscall.c), so no packet still reads the idle slot's previous tries once the
      // switch below names it live again.
      this.#maps.ep_blk4.setInnerMap(u32Bytes(idle), v4.map);
      this.#maps.ep_blk6.setInnerMap(u32Bytes(idle), v6.map);
      // A generation without a set: the word names no length, so no bucket is read; the
      // previous set is dropped rather than kept idle. The same for the prefilter, which the
      // word's mark names.
      if (hashedMap !== undefined) this.#maps.ep_blk4h.setInnerMap(u32Bytes(idle), hashedMap);
      else this.#maps.ep_blk4h.delete(u32Bytes(idle));
      if (prefilterMap !== undefined) this.#maps.ep_blk4p.setInnerMap(u32Bytes(idle), prefilterMap);
      else this.#maps.ep_blk4p.delete(u32Bytes(idle));
      this.#maps.ep_blk_active.set(u32Bytes(0), u32Bytes(idle | emptyBits(v4.count, v6.count) | shapeBits(hashed?.shape)));
      this.#closeLive();
      this.#live = { v4, v6 };
      this.#hashed = hashedMap === undefined ? undefined : { map: hashedMap, prefilter: prefilterMap, shape: hashed!.shape, count: inSet };
      this.#dropPrevious(idle, v4.map);
      return { generation: idle, v4: v4.count + inSet, v6: v6.count, batched };
    } catch (cause) {
      if (made !== undefined && this.#live?.v4 !== made.v4) {
        made.v4.map.close();
        made.v6.map.close();
        hashedMap?.close();
        prefilterMap?.close();
      }
      throw new DatapathError(`load blocklist v4=${spec.v4.count} v4-hashed=${hashed?.count ?? 0} v6=${spec.v6.count}`, { cause });
    }
  }

  /**
   * Adds or replaces entries in the live tries and hashed set, in place (each LPM update is
   * atomic for a concurrent lookup; each slot of the set is one 8-byte store). A permanent IPv4
   * entry of a length the set holds goes into the set (into the trie if both its buckets are
   * full); any other into the trie. An entry that moves between them (a block made permanent by
   * a list, or the reverse) is written where it goes before it leaves where it was, so it never
   * stops matching meanwhile.
   * @returns false (nothing written) when the live tries may lack room, or there are none yet,
   * or they were adopted: load the whole list instead.
   * @throws DatapathError if the kernel refuses an update.
   */
  add(entries: readonly BlocklistEntry[]): boolean {
    const live = this.#liveTries();
    if (live === undefined || this.#adopted) return false;
    const hashed = this.#hashed;
    const inSet = (entry: BlocklistEntry): boolean => hashed !== undefined && entry.cidr.family === 4 && hashed.shape.lengths.includes(entry.cidr.prefixLength);
    const toSet = new Set(entries.filter((entry) => entry.expiresTaiNs === 0n && inSet(entry)));
    // Room for the worst case (every entry for the set overflowing into the trie), checked first.
    const need4 = entries.filter((entry) => entry.cidr.family === 4).length;
    if (live.v4.count + need4 > live.v4.capacity || live.v6.count + entries.length - need4 > live.v6.capacity) return false;
    try {
      const toTries = entries.filter((entry) => !toSet.has(entry));
      if (hashed !== undefined && toSet.size > 0) {
        const inBuckets: BlocklistEntry[] = [];
        hashed.map.withMapped((bytes) => {
          const set = new HashedSet4(bytes, hashed.shape.log2, true);
          for (const entry of toSet) {
            const done = set.insert(hostAddress(entry.cidr), entry.cidr.prefixLength);
            if (done === 'added') hashed.count++;
            if (done === 'full') toTries.push(entry);
            else inBuckets.push(entry);
          }
        });
        // Its prefilter's bits after the entry is in its bucket: a source the bits send there finds it.
        hashed.prefilter?.withMapped((bytes) => {
          const pre = new Prefilter(bytes, true);
          for (const entry of inBuckets) pre.add(hostAddress(entry.cidr), entry.cidr.prefixLength);
        });
        // Permanent now: an expiring entry of the same prefix leaves the trie.
        const overflowed = new Set(toTries);
        removeFromTries(live, [...toSet].filter((entry) => !overflowed.has(entry)).map((entry) => entry.cidr));
      }
      if (!addToTries(live, toTries)) throw new Error('the tries have no room after the check');
      // Expiring now: out of the set, after the trie has it.
      const leaving = toTries.filter((entry) => entry.expiresTaiNs !== 0n && inSet(entry));
      if (hashed !== undefined && leaving.length > 0) this.#removeFromSet(hashed, leaving.map((entry) => entry.cidr));
      // The entries are in their tries; a family marked empty is looked up from this write on.
      let clear = 0;
      for (const entry of toTries) clear |= emptyBit(entry.cidr.family);
      const word = this.#activeWord();
      if ((word & clear) !== 0) this.#maps.ep_blk_active.set(u32Bytes(0), u32Bytes(word & ~clear));
      return true;
    } catch (cause) {
      throw new DatapathError(`add blocklist entries count=${entries.length}`, { cause });
    }
  }

  /**
   * Deletes prefixes from the live tries in place.
   * @returns how many were there.
   * @throws DatapathError if the kernel refuses a delete.
   */
  remove(prefixes: readonly Cidr[]): number {
    const live = this.#liveTries();
    if (live === undefined) return 0;
    try {
      const hashed = this.#hashed;
      const fromSet = hashed === undefined ? new Set<Cidr>() : this.#removeFromSet(hashed, prefixes.filter((cidr) => cidr.family === 4 && hashed.shape.lengths.includes(cidr.prefixLength)));
      const fromTries = removeFromTries(live, prefixes);
      const removed = prefixes.filter((cidr) => fromTries.has(cidr) || fromSet.has(cidr)).length;
      if (removed === 0) return 0;
      // A trie this process knows to be empty now (an adopted one's count is its capacity).
      const set = emptyBits(live.v4.count, live.v6.count);
      const word = this.#activeWord();
      if ((word | set) !== word) this.#maps.ep_blk_active.set(u32Bytes(0), u32Bytes(word | set));
      return removed;
    } catch (cause) {
      throw new DatapathError(`remove blocklist entries count=${prefixes.length}`, { cause });
    }
  }

  /** @returns the live entry counts (as this process wrote them, or the tries' capacity after an adoption). */
  get size(): { v4: number; v6: number } {
    const live = this.#liveTries();
    return { v4: (live?.v4.count ?? 0) + (this.#hashed?.count ?? 0), v6: live?.v6.count ?? 0 };
  }

  /** @throws DatapathError if the kernel refuses the read. */
  readCounters(): BlocklistCounters {
    try {
      const read = (i: number): Counter => sumPerCpu(this.#maps.ep_blk_stats.getPerCpu(u32Bytes(i)) ?? []);
      return { dropped4: read(0), dropped6: read(1), expiredSeen: read(2) };
    } catch (cause) {
      throw new DatapathError('read blocklist counters', { cause });
    }
  }

  /** Releases the inner maps this object opened; idempotent. The tries keep enforcing. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#closeLive();
  }

  #open(): void {
    if (this.#closed) throw new DatapathError('blocklist tables: closed');
  }

  /** ep_blk_active[0]: the live generation (bit 0) and the EMPTY4/EMPTY6 bits. */
  #activeWord(): number {
    const bytes = this.#maps.ep_blk_active.get(u32Bytes(0));
    return bytes === undefined ? 0 : new DataView(bytes.buffer, bytes.byteOffset).getUint32(0, true);
  }

  #closeLive(): void {
    this.#live?.v4.map.close();
    this.#live?.v6.map.close();
    this.#hashed?.map.close();
    this.#hashed?.prefilter?.close();
    this.#live = undefined;
    this.#hashed = undefined;
    this.#adopted = false;
  }

  /**
   * Empties the slot of the generation a load has just replaced, so its tries, set and prefilter
   * are freed at once instead of held idle until the next load (a million prefixes: ~16 MiB of
   * buckets and 4 MiB of prefilter per datapath). First the live slot's IPv4 trie is installed
   * again (the same map: nothing changes for a reader), a map-in-map write, which returns after
   * synchronize_rcu() (maybe_wait_bpf_programs in kernel/bpf/syscall.c): no program that read
   * the word before the switch still runs, so none looks into the slot being emptied. Best
   * effort: a failure leaves the previous generation where it was (memory only; the next load
   * replaces it).
   */
  #dropPrevious(live: number, liveTrie4: BpfMap): void {
    try {
      this.#maps.ep_blk4.setInnerMap(u32Bytes(live), liveTrie4);
      const previous = u32Bytes(1 - live);
      for (const outer of [this.#maps.ep_blk4p, this.#maps.ep_blk4h, this.#maps.ep_blk4, this.#maps.ep_blk6]) outer.delete(previous);
    } catch {
      // Kept: see above.
    }
  }

  /**
   * Removes `prefixes` from the set in place, then from its prefilter the COVERED bits no entry
   * left holds (a packet in between is still dropped, as before the remove). @returns those that were there.
   */
  #removeFromSet(hashed: LiveHashed, prefixes: readonly Cidr[]): Set<Cidr> {
    const removed = new Set<Cidr>();
    if (prefixes.length === 0) return removed;
    hashed.map.withMapped((bytes) => {
      const set = new HashedSet4(bytes, hashed.shape.log2, true);
      for (const cidr of prefixes) if (set.remove(hostAddress(cidr), cidr.prefixLength)) removed.add(cidr);
      if (removed.size > 0)
        hashed.prefilter?.withMapped((preBytes) => {
          const pre = new Prefilter(preBytes, true);
          for (const cidr of removed) pre.uncover(hostAddress(cidr), cidr.prefixLength, set, hashed.shape.lengths);
        });
    });
    hashed.count -= removed.size;
    return removed;
  }

  // The live tries and set: those this process loaded, or those the outer maps hold (a restarted
  // agent adopting a pinned datapath), whose counts are unknown: an add after an adoption loads
  // the whole list once; removes work in place.
  #liveTries(): TriePair | undefined {
    this.#open();
    if (this.#live !== undefined) return this.#live;
    const word = this.#activeWord();
    this.#live = adoptTries(this.#maps.ep_blk4, this.#maps.ep_blk6, word & 1);
    if (this.#live === undefined) return undefined;
    this.#adopted = true;
    const shape = shapeOfWord(word);
    const set = shape === undefined ? undefined : this.#maps.ep_blk4h.getInnerMap(u32Bytes(word & 1));
    if (set !== undefined) this.#hashed = { map: set, prefilter: shape!.prefilter ? this.#maps.ep_blk4p.getInnerMap(u32Bytes(word & 1)) : undefined, shape: shape!, count: 0 };
    return this.#live;
  }
}

/** The wall clock (UTC) in ns, to the microsecond. */
function wallNs(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000)) * 1000n;
}
