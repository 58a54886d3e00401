// Reading and folding the eBPF datapath's counters. Each generation has one per-CPU counter slot
// per rule (slot 0: the default action) in ep_counters; before a generation is overwritten its
// non-zero counts are folded into ep_carry by rule id, so a rule's counters continue across
// applies and agent restarts. bpf/README.md, "Counters", describes the maps.
import { TypedMap, u32, u32KeyRange, type BpfMap, type CodecValue } from 'libbpf-ts';
import { RULE_SLOTS } from './compile-tables.js';
import type { Counter, DatapathCounters, PackedRuleCounts } from './datapath.js';
import { DEFAULT_RULE_ID } from './rule-set.js';
import { IdIndex } from './id-index.js';
import { epCounter } from './table-codecs.js';

/** Slots of ep_stats: enum ep_stat in bpf/include/ep_tables.h. */
export const STAT_SLOTS = { nonIp: 0, malformed: 1, unconfigured: 2, rateLimited: 3 } as const;
/** Values read per batch lookup of a generation, at most (4,096 slots on two CPUs). */
const READ_CHUNK_BYTES = 128 * 1024;

/** What ep_stats counts: frames that never reached a rule, and rate-limit drops. */
export type StatCounters = Pick<DatapathCounters, keyof typeof STAT_SLOTS>;

/** Packets and bytes by rule id. */
export type CounterTotals = Map<number, { packets: number; bytes: number }>;

/** A valid generation in a read: slot i + 1 counts for rule ids[i] (slot 0: the default action). */
export interface GenerationIds {
  readonly generation: number;
  readonly ids: readonly number[];
}

/** What {@link CounterTables.readTotals} returns. */
export interface RuleTotals {
  /** Every live rule, in slot order (zero if never hit). */
  readonly packed: PackedRuleCounts;
  /** Rules not live that the idle generation or the carry still count (non-zero ones only). */
  readonly retired: ReadonlyMap<number, Counter>;
  readonly defaultAction: Counter;
}

/** The buffers a generation read goes through, and a view of the values (read from offset 0). */
interface ReadScratch {
  readonly keys: Uint8Array;
  readonly values: Uint8Array;
  readonly view: DataView;
  /** Slots that fit in one read. */
  readonly slots: number;
}

/** The part of a read that only a write of this process changes: the idle generation's and the carry's counts, by live slot. */
interface FrozenPart {
  readonly version: number;
  readonly live: GenerationIds | undefined;
  readonly idle: GenerationIds | undefined;
  /** Indexed as a generation's sums: slot 0 the default action, slot i + 1 live rule ids[i]. */
  readonly base: Float64Array;
  readonly retired: ReadonlyMap<number, Counter>;
}

/**
 * The counter maps of one pinned datapath. It borrows the maps (holds no fd of its own) and is
 * usable as long as they are open. The shadow candidate's counters (ep_shadow_counters, one
 * slot set: generation 0) use it without a carry: they are zeroed and read, never folded.
 */
export class CounterTables {
  readonly #counters: BpfMap;
  readonly #stats: BpfMap;
  readonly #carryMap: TypedMap<number, CodecValue<typeof epCounter>> | undefined;
  readonly #carryRaw: BpfMap | undefined;
  /** Bumped by every write of this object to the counter slots or the carry. */
  #version = 0;
  /** The idle generation's and the carry's counts of the last read, while nothing wrote them. */
  #frozen: FrozenPart | undefined;
  /** What readTotals handed out last (the default action's two sums, then the packed ones). */
  #lastTotal: { ids: readonly number[]; total: Float64Array; sums: Float64Array } | undefined;
  /** The buffers of a generation read (#readScratch). */
  #scratch: ReadScratch | undefined;

  /**
   * @param counters ep_counters (per-CPU array, EP_GENERATIONS * EP_RULE_SLOTS slots), or
   * ep_shadow_counters (EP_RULE_SLOTS).
   * @param stats ep_stats (per-CPU array indexed by enum ep_stat), or ep_shadow_stats.
   * @param carry ep_carry (hash: rule id -> struct ep_counter); without it the methods that fold
   * or read carried counts throw.
   * @throws RangeError if a map's key or value size differs from struct ep_counter's codec.
   */
  constructor(counters: BpfMap, stats: BpfMap, carry?: BpfMap) {
    for (const map of [counters, stats]) {
      if (map.valueSize !== epCounter.size) throw new RangeError(`map ${map.name}: value size ${map.valueSize}, struct ep_counter is ${epCounter.size} bytes`);
    }
    this.#counters = counters;
    this.#stats = stats;
    this.#carryMap = carry === undefined ? undefined : new TypedMap(carry, u32, epCounter);
    this.#carryRaw = carry;
  }

  get #carry(): TypedMap<number, CodecValue<typeof epCounter>> {
    return this.#carryMap ?? this.#noCarry();
  }

  #noCarry(): never {
    throw new Error(`counter tables of ${this.#counters.name}: no carry`);
  }

  /** Zeroes the slots of `generation` that a rule set of `ruleCount` rules uses (batch writes, zeroSlots). */
  zero(generation: number, ruleCount: number): void {
    this.#version++;
    zeroSlots(this.#counters, generation * RULE_SLOTS, ruleCount + 1);
  }

  /**
   * Moves what the given slots of `generation` counted into ep_carry under their rule ids
   * (`ruleIds` as in {@link fold}) and zeroes them: for the few slots whose rule changes when a
   * generation is updated in place (the others keep counting for the same rule). One lookup per
   * slot; for many slots, fold() and zero() read and write the generation in batches.
   */
  moveSlots(generation: number, ruleIds: readonly number[], slots: readonly number[]): void {
    this.#version++;
    const entries: [number, CodecValue<typeof epCounter>][] = [];
    const zero = new Uint8Array(epCounter.size);
    for (const slot of slots) {
      const key = u32Bytes(generation * RULE_SLOTS + slot);
      const perCpu = this.#counters.getPerCpu(key) ?? [];
      const counted = sumPerCpu(perCpu);
      // Rule ids are unique within a generation: one carry entry per slot at most.
      if (counted.packets !== 0 || counted.bytes !== 0) {
        const id = slotRuleId(ruleIds, slot);
        const previous = this.#carry.get(id) ?? { packets: 0n, bytes: 0n };
        entries.push([id, { packets: previous.packets + BigInt(counted.packets), bytes: previous.bytes + BigInt(counted.bytes) }]);
      }
      this.#counters.setPerCpu(key, perCpu.map(() => zero));
    }
    if (entries.length > 0) this.#carry.setBatch(entries);
  }

  /**
   * Counters of slots 0..count-1 of `generation`, summed over CPUs, read with batch lookups.
   * @returns one Counter per slot (slot 0: the default action).
   */
  readGeneration(generation: number, count: number): Counter[] {
    const out: Counter[] = [];
    this.#eachSum(generation, count, (_slot, packets, bytes) => void out.push({ packets, bytes }));
    return out;
  }

  /**
   * Calls `fn` with each of slots 0..count-1 of `generation`, in order, summed over CPUs. Batch
   * lookups of up to READ_CHUNK_BYTES into the same buffers, no object per slot or CPU and no
   * array of sums: at 65,536 rules a read per generation every counter interval would otherwise
   * allocate ~50 MiB of short-lived objects (an array and a view per slot, a decoded struct and
   * bigints per CPU), and an array of sums kept for the next read was 1 MiB per datapath. Sums
   * are exact while a counter stays below 2^53, as Counter's numbers are.
   * @returns the slots read (fewer than `count` only if the map ends first).
   */
  #eachSum(generation: number, count: number, fn: (slot: number, packets: number, bytes: number) => void): number {
    const first = generation * RULE_SLOTS;
    const scratch = this.#readScratch();
    let slot = 0;
    while (slot < count) {
      const read = this.#counters.getPerCpuBatchPacked(Math.min(scratch.slots, count - slot), u32BytesOrNone(first + slot - 1), scratch);
      if (read.count === 0) break;
      const view = scratch.view;
      for (let i = 0; i < read.count; i++, slot++) {
        let packets = 0;
        let bytes = 0;
        for (let cpu = 0, at = i * read.cpus * read.stride; cpu < read.cpus; cpu++, at += read.stride) {
          packets += u64At(view, at);
          bytes += u64At(view, at + 8);
        }
        fn(slot, packets, bytes);
      }
    }
    return slot;
  }

  /**
   * The buffers every generation read goes through, READ_CHUNK_BYTES of values at most: at 65,536
   * rules a read in one piece took 2.3 MiB of buffers (and the sums 1 MiB) per read, garbage that
   * an idle agent's V8 left resident until its external memory had grown by ~64 MiB.
   */
  #readScratch(): ReadScratch {
    if (this.#scratch !== undefined) return this.#scratch;
    const { cpus, stride } = this.#counters.perCpuLayout();
    const slots = Math.max(1, Math.floor(READ_CHUNK_BYTES / (cpus * stride)));
    const values = new Uint8Array(slots * cpus * stride);
    return (this.#scratch = { keys: new Uint8Array(slots * 4), values, view: new DataView(values.buffer), slots });
  }

  /** @returns every ep_stats slot, each summed over CPUs. */
  readStats(): StatCounters {
    const stat = (name: keyof typeof STAT_SLOTS): Counter => this.readStat(STAT_SLOTS[name]);
    return { nonIp: stat('nonIp'), malformed: stat('malformed'), unconfigured: stat('unconfigured'), rateLimited: stat('rateLimited') };
  }

  /** @returns slot `index` of the stats map, summed over CPUs. */
  readStat(index: number): Counter {
    return sumPerCpu(this.#stats.getPerCpu(u32Bytes(index)) ?? []);
  }

  /** Zeroes the stats map's slots 0..count-1 on every CPU (batch writes, zeroSlots). */
  zeroStats(count: number): void {
    zeroSlots(this.#stats, 0, count);
  }

  /**
   * Adds what `generation` counted into ep_carry by rule id (`ruleIds[i]` is slot i + 1; slot 0
   * is DEFAULT_RULE_ID), before that generation is overwritten. Slots that counted nothing are
   * skipped; the carry is written with one batch.
   */
  fold(generation: number, ruleIds: readonly number[]): void {
    this.#version++;
    const entries: [number, CodecValue<typeof epCounter>][] = [];
    this.#eachSum(generation, ruleIds.length + 1, (slot, packets, bytes) => {
      if (packets === 0 && bytes === 0) return;
      const id = slotRuleId(ruleIds, slot);
      const previous = this.#carry.get(id) ?? { packets: 0n, bytes: 0n };
      entries.push([id, { packets: previous.packets + BigInt(packets), bytes: previous.bytes + BigInt(bytes) }]);
    });
    this.#carry.setBatch(entries);
  }

  /**
   * Totals by rule id over the live generation, the idle one and the carry (what readCounters
   * reports), packed by the live generation's slots: one batch lookup of the live generation
   * and typed-array sums, no object per rule. With `idleFrozen` (no packet can count in the idle
   * generation any more: the barrier ran after the switch away from it), the idle generation's
   * and the carry's part is kept and reused by later reads until this object writes either, or
   * either generation's ids change (a new array). At 65,536 rules a read is then one 20 ms
   * syscall and a 131,072-number add instead of two lookups, a carry walk and ~200,000 objects.
   * @param live the active generation, if valid; @param idle the other one, if valid.
   */
  readTotals(live: GenerationIds | undefined, idle: GenerationIds | undefined, idleFrozen: boolean): RuleTotals {
    const ids = live?.ids ?? [];
    const frozen = this.#frozenPart(live, idle, idleFrozen);
    const base = frozen.base;
    // Nothing counted since the last read (an idle node): its totals again, not a copy. The
    // arrays handed out are never written after, so a reader may keep one as long as it likes.
    // Compared slot by slot as the live generation is read: a new array only from the first
    // slot that differs (the slots before it are the last read's), none while all are the same.
    const last = this.#lastTotal;
    const previous = last !== undefined && last.ids === ids && last.total.length === base.length ? last.total : undefined;
    let out = previous === undefined ? new Float64Array(base.length) : undefined;
    const put = (slot: number, packets: number, bytes: number): void => {
      const packetsTotal = (base[2 * slot] as number) + packets;
      const bytesTotal = (base[2 * slot + 1] as number) + bytes;
      if (out === undefined) {
        if (packetsTotal === previous![2 * slot] && bytesTotal === previous![2 * slot + 1]) return;
        out = previous!.slice();
      }
      out[2 * slot] = packetsTotal;
      out[2 * slot + 1] = bytesTotal;
    };
    let slot = live === undefined ? 0 : this.#eachSum(live.generation, ids.length + 1, put);
    // Slots the live generation did not give (none, or a map that ended first): the base alone.
    for (; 2 * slot < base.length; slot++) put(slot, 0, 0);
    if (out !== undefined) this.#lastTotal = { ids, total: out, sums: out.subarray(2) };
    const { total, sums } = this.#lastTotal!;
    return { packed: { ids, sums }, retired: frozen.retired, defaultAction: { packets: total[0]!, bytes: total[1]! } };
  }

  #frozenPart(live: GenerationIds | undefined, idle: GenerationIds | undefined, idleFrozen: boolean): FrozenPart {
    const kept = this.#frozen;
    const same = (a: GenerationIds | undefined, b: GenerationIds | undefined): boolean => a?.generation === b?.generation && a?.ids === b?.ids;
    if (idleFrozen && kept !== undefined && kept.version === this.#version && same(kept.live, live) && same(kept.idle, idle)) return kept;
    const ids = live?.ids ?? [];
    const base = new Float64Array(2 * (ids.length + 1));
    const retired: CounterTotals = new Map();
    const add = (id: number, packets: number, bytes: number): void => {
      if (packets === 0 && bytes === 0) return;
      // The index is built only if a count belongs to a rule at another slot than in the live generation.
      const slot = id === DEFAULT_RULE_ID ? 0 : slotOf(ids, id);
      if (slot === undefined) addTo(retired, id, { packets, bytes });
      else {
        base[2 * slot]! += packets;
        base[2 * slot + 1]! += bytes;
      }
    };
    if (idle !== undefined) {
      this.#eachSum(idle.generation, idle.ids.length + 1, (slot, packets, bytes) => {
        // An update keeps most rules at their slots in both generations.
        if (slot > 0 && idle.ids[slot - 1] === ids[slot - 1]) {
          base[2 * slot]! += packets;
          base[2 * slot + 1]! += bytes;
        } else add(slotRuleId(idle.ids, slot), packets, bytes);
      });
    }
    this.#eachCarried(add);
    const part: FrozenPart = { version: this.#version, live, idle, base, retired };
    this.#frozen = idleFrozen ? part : undefined;
    return part;
  }

  /** Calls `fn` for every carry entry, read in batches (packed, no object per entry). */
  #eachCarried(fn: (id: number, packets: number, bytes: number) => void): void {
    const carry = this.#carryRaw ?? this.#noCarry();
    for (const chunk of carry.getBatches()) {
      const keys = new DataView(chunk.keys.buffer, chunk.keys.byteOffset, chunk.keys.byteLength);
      const values = new DataView(chunk.values.buffer, chunk.values.byteOffset, chunk.values.byteLength);
      for (let i = 0; i < chunk.count; i++) fn(keys.getUint32(4 * i, true), u64At(values, i * carry.valueSize), u64At(values, i * carry.valueSize + 8));
    }
  }

  /** Adds every carried count into `totals`. */
  addCarry(totals: CounterTotals): void {
    this.#eachCarried((id, packets, bytes) => addTo(totals, id, { packets, bytes }));
  }

  /** Adds what `generation` counts now into `totals`, by rule id. */
  addGeneration(totals: CounterTotals, generation: number, ruleIds: readonly number[]): void {
    this.#eachSum(generation, ruleIds.length + 1, (slot, packets, bytes) => {
      const id = slotRuleId(ruleIds, slot);
      const total = totals.get(id);
      if (total === undefined) totals.set(id, { packets, bytes });
      else {
        total.packets += packets;
        total.bytes += bytes;
      }
    });
  }

  /** Deletes carried counts of rule ids not in `keep`. */
  pruneCarry(keep: ReadonlySet<number>): void {
    this.#version++;
    for (const id of [...this.#carry.keys()]) if (!keep.has(id)) this.#carry.delete(id);
  }

  /** Deletes the carry entries of `ids` (those it has). */
  dropCarry(ids: readonly number[]): void {
    this.#version++;
    for (const id of ids) if (this.#carry.get(id) !== undefined) this.#carry.delete(id);
  }
}

/** @returns the sum over CPUs of per-CPU `struct ep_counter` values. */
export function sumPerCpu(perCpu: readonly Uint8Array[]): Counter {
  let packets = 0n;
  let bytes = 0n;
  for (const value of perCpu) {
    const counter = epCounter.decode(value);
    packets += counter.packets;
    bytes += counter.bytes;
  }
  return { packets: Number(packets), bytes: Number(bytes) };
}

/** Adds `counter` to the total of rule `id`. */
export function addTo(totals: CounterTotals, id: number, counter: Counter): void {
  const total = totals.get(id) ?? { packets: 0, bytes: 0 };
  total.packets += counter.packets;
  total.bytes += counter.bytes;
  totals.set(id, total);
}

/** The little-endian u64 at `offset` of `view`, as a number (exact below 2^53). */
function u64At(view: DataView, offset: number): number {
  return view.getUint32(offset, true) + view.getUint32(offset + 4, true) * 2 ** 32;
}

/** Rule id -> slot (ids[i] is slot i + 1), built once per ids array. */
const slotIndexes = new WeakMap<readonly number[], IdIndex>();
function slotOf(ids: readonly number[], id: number): number | undefined {
  let index = slotIndexes.get(ids);
  if (index === undefined) slotIndexes.set(ids, (index = new IdIndex(ids)));
  const at = index.positionOf(id);
  return at === undefined ? undefined : at + 1;
}

function slotRuleId(ruleIds: readonly number[], index: number): number {
  return index === 0 ? DEFAULT_RULE_ID : (ruleIds[index - 1] as number);
}

/**
 * Zeroes slots first..first+count-1 of a per-CPU array on every CPU: batch writes of packed keys
 * and one buffer of zeros, READ_CHUNK_BYTES of values each (a buffer and a view per slot made
 * ~400,000 objects of garbage for a 65,536-rule write).
 */
export function zeroSlots(map: BpfMap, first: number, count: number): void {
  const { cpus, stride } = map.perCpuLayout();
  const chunk = Math.max(1, Math.floor(READ_CHUNK_BYTES / (cpus * stride)));
  const zeros = new Uint8Array(Math.min(chunk, count) * cpus * stride);
  const keys = new Uint8Array(Math.min(chunk, count) * 4);
  for (let done = 0; done < count; done += chunk) {
    const n = Math.min(chunk, count - done);
    map.setPerCpuBatchPacked(u32KeyRange(first + done, n, keys), zeros.subarray(0, n * cpus * stride));
  }
}

/** The batch cursor before index `value`: none before index 0. */
function u32BytesOrNone(value: number): Uint8Array | undefined {
  return value < 0 ? undefined : u32Bytes(value);
}

function u32Bytes(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  u32.encode(value, bytes);
  return bytes;
}
