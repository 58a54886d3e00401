// The connection-table maps of one pinned datapath, seen from the agent: timeouts (ep_ct_cfg),
// per-generation flags and epochs (ep_gen_cfg), control endpoints (ep_ct_control and the bitmap
// of their ports, ep_ct_control_ports), counters
// (ep_ct_stats), reading ep_ct4 / ep_ct / ep_ct_new, the sweeper program (ep_ct_sweep) and
// ep_ct4's counter (ep_ct4_count).
// bpf/CONNTRACK.md is the contract.
import { encode, TypedMap, u32, u64, type BatchBuffers, type BpfMap, type CodecValue, type Program } from 'libbpf-ts';
import {
  CONNTRACK_STAT_NAMES,
  CT_NAT_FLAGS,
  conntrackTimeoutsNs,
  DEFAULT_CONNTRACK_CONFIG,
  decodeConnection,
  describeConnection,
  encodeControlEndpoints,
  type ConnectionEntry,
  type ConnectionTable,
  type ConntrackConfig,
  type ConntrackCounters,
  type ConntrackOccupancy,
  type ControlEndpoint,
} from './conntrack.js';
import { sumPerCpu } from './counters.js';
import { ct4Entry, CT4_LIVE } from './ct4-table.js';
import { epCt4Cold, epCt4Slot, epCtCfg, epCtControlKey, epCtEntry, epCtKey, epCtNat, epCtSweepArgs, epGenCfg } from './table-codecs.js';

/** The maps ConntrackTables borrows, by their names in the object. */
export interface ConntrackMaps {
  readonly ep_ct4: BpfMap;
  readonly ep_ct4_cold: BpfMap;
  readonly ep_ct: BpfMap;
  readonly ep_ct_new: BpfMap;
  readonly ep_ct_cfg: BpfMap;
  readonly ep_gen_cfg: BpfMap;
  readonly ep_ct_stats: BpfMap;
  readonly ep_ct_control: BpfMap;
  readonly ep_ct_control_ports: BpfMap;
}

/** Words of ep_ct_control_ports (EP_CT_CONTROL_PORT_WORDS): one bit per port. */
const CONTROL_PORT_WORDS = 65536 / 64;

/**
 * Entries read per batch syscall when walking a table, into buffers the tables keep (152 KiB:
 * keys and entries of 1,024 flows). Walks come every 30 s or more (occupancy) or on request
 * (list); buffers made per walk were ~2.4 MiB of garbage per read of both tables, which an idle
 * agent kept resident until a collection came.
 */
const CHUNK = 1024;
/** Offset of expires_ns in struct ep_ct_entry (its first field). */
const EXPIRES_OFFSET = epCtEntry.fields.find((field) => field.name === 'expiresNs')?.offset ?? 0;
/** The ep_ct4_cold of a line whose cold half cannot be read. */
const NO_COLD = { createdNs: 0n, ruleId: 0, pad: 0 };
/** Offset of expires_ns in struct ep_ct4_slot. */
const CT4_EXPIRES_OFFSET = epCt4Slot.fields.find((field) => field.name === 'expiresNs')?.offset ?? 0;
/** Offset of nat.flags in struct ep_ct_entry (layout 4). */
const NAT_FLAGS_OFFSET = (epCtEntry.fields.find((field) => field.name === 'nat')?.offset ?? 0) + (epCtNat.fields.find((field) => field.name === 'flags')?.offset ?? 0);

/**
 * The conntrack maps and the sweeper program of one pinned datapath. It borrows them (holds no
 * fd of its own) and is usable as long as they are open.
 */
export class ConntrackTables {
  readonly #maps: ConntrackMaps;
  /** What the table walks read into (CHUNK). */
  readonly #walk: BatchBuffers = { keys: new Uint8Array(0), values: new Uint8Array(0) };
  readonly #sweep: Program;
  readonly #count4: Program;
  readonly #cfg: TypedMap<number, CodecValue<typeof epCtCfg>>;
  readonly #genCfg: TypedMap<number, CodecValue<typeof epGenCfg>>;

  /**
   * @param maps the conntrack maps of the object.
   * @param sweep the ep_ct_sweep program (BPF_PROG_TYPE_SYSCALL).
   * @param count4 the ep_ct4_count program (BPF_PROG_TYPE_SYSCALL).
   * @throws RangeError if a map's value size differs from its codec.
   */
  constructor(maps: ConntrackMaps, sweep: Program, count4: Program) {
    for (const [map, size] of [
      [maps.ep_ct4, epCt4Slot.size],
      [maps.ep_ct4_cold, epCt4Cold.size],
      [maps.ep_ct, epCtEntry.size],
      [maps.ep_ct_new, epCtEntry.size],
      [maps.ep_ct_cfg, epCtCfg.size],
      [maps.ep_gen_cfg, epGenCfg.size],
    ] as const) {
      if (map.valueSize !== size) throw new RangeError(`map ${map.name}: value size ${map.valueSize}, its struct is ${size} bytes`);
    }
    this.#maps = maps;
    this.#sweep = sweep;
    this.#count4 = count4;
    this.#cfg = new TypedMap(maps.ep_ct_cfg, u32, epCtCfg);
    this.#genCfg = new TypedMap(maps.ep_gen_cfg, u32, epGenCfg);
  }

  /** Writes the timeouts. @throws ConntrackInputError (nothing written); LibbpfError. */
  writeConfig(config: ConntrackConfig): void {
    this.#cfg.set(0, { timeoutNs: conntrackTimeoutsNs(config) });
  }

  /** @returns the timeouts in force (a zero slot means the default, which the programs use). */
  readConfig(): ConntrackConfig {
    const ns = this.#cfg.get(0)?.timeoutNs ?? [];
    const ms = (i: number, fallback: number): number => {
      const value = ns[i] ?? 0n;
      return value === 0n ? fallback : Number(value / 1_000_000n);
    };
    const d = DEFAULT_CONNTRACK_CONFIG;
    return { tcpSynMs: ms(0, d.tcpSynMs), tcpEstablishedMs: ms(1, d.tcpEstablishedMs), tcpClosingMs: ms(2, d.tcpClosingMs), udpMs: ms(3, d.udpMs), icmpMs: ms(4, d.icmpMs) };
  }

  /** @returns ep_gen_cfg[generation]: the generation's EP_GEN_F_* flags and epoch. */
  readGeneration(generation: number): { flags: number; epoch: number } {
    return this.#genCfg.get(generation) ?? { flags: 0, epoch: 0 };
  }

  /** Writes ep_gen_cfg[generation]. */
  writeGeneration(generation: number, flags: number, epoch: number): void {
    this.#genCfg.set(generation, { flags, epoch });
  }

  /**
   * Replaces the control endpoints. New ones are added before old ones are removed, so an
   * endpoint in both lists is never absent; the port bitmap holds every port of both lists
   * while the table changes (a set bit without an endpoint only costs the hash lookup), then
   * exactly the new ones.
   * @throws ConntrackInputError (nothing changed); LibbpfError.
   */
  setControlEndpoints(endpoints: readonly ControlEndpoint[]): void {
    const keys = encodeControlEndpoints(endpoints);
    const wanted = new Set(keys.map((key) => Buffer.from(key).toString('hex')));
    const present = [...this.#maps.ep_ct_control.keys()];
    const one = new Uint8Array(4);
    u32.encode(1, one);
    this.#writeControlPorts([...present, ...keys]);
    for (const key of keys) this.#maps.ep_ct_control.set(key, one);
    for (const key of present) if (!wanted.has(Buffer.from(key).toString('hex'))) this.#maps.ep_ct_control.delete(key);
    this.#writeControlPorts(keys);
  }

  /**
   * Rewrites the port bitmap from the endpoints in ep_ct_control (after an upgrade from a layout
   * without it, or a crash inside setControlEndpoints). Call before the programs run.
   * @throws LibbpfError.
   */
  syncControlPorts(): void {
    this.#writeControlPorts([...this.#maps.ep_ct_control.keys()]);
  }

  // Writes ep_ct_control_ports as the ports of `keys` (encoded ep_ct_control_key), changing
  // only the words that differ.
  #writeControlPorts(keys: readonly Uint8Array[]): void {
    const words = new Map<number, bigint>();
    for (const key of keys) {
      const port = epCtControlKey.decode(key).port;
      words.set(port >> 6, (words.get(port >> 6) ?? 0n) | (1n << BigInt(port & 63)));
    }
    const map = this.#maps.ep_ct_control_ports;
    const index = new Uint8Array(4);
    for (let word = 0; word < CONTROL_PORT_WORDS; word++) {
      u32.encode(word, index);
      const want = words.get(word) ?? 0n;
      const have = map.get(index);
      if (have !== undefined && u64.decode(have) === want) continue;
      map.set(index, encode(u64, want));
    }
  }

  /** @returns every ep_ct_stats slot, each summed over CPUs. */
  readStats(): ConntrackCounters {
    const key = new Uint8Array(4);
    return Object.fromEntries(
      CONNTRACK_STAT_NAMES.map((name, index) => {
        u32.encode(index, key);
        return [name, sumPerCpu(this.#maps.ep_ct_stats.getPerCpu(key) ?? [])];
      }),
    ) as unknown as ConntrackCounters;
  }

  /**
   * Counts the unexpired entries of the tables: ep_ct4's in the kernel (ep_ct4_count), ep_ct's
   * and ep_ct_new's with batch lookups.
   * @param nowNs CLOCK_MONOTONIC now; default process.hrtime.bigint() (the clock of the entries: bpf_ktime_get_coarse_ns, CLOCK_MONOTONIC at tick resolution, at most a tick behind).
   */
  occupancy(nowNs: bigint = process.hrtime.bigint()): ConntrackOccupancy {
    const v4 = this.count4();
    const established = countLive(this.#maps.ep_ct, nowNs, this.#walk);
    const fresh = countLive(this.#maps.ep_ct_new, nowNs, this.#walk);
    return { established: v4 + established.flows, new: fresh.flows, reverseNat: established.reverse + fresh.reverse };
  }

  /** @returns the flows ep_ct4 holds (live, not expired), counted by one run of ep_ct4_count. @throws LibbpfError. */
  count4(): number {
    return this.#count4.testRun({ data: new Uint8Array(0), dataSizeOut: 0, repeat: 0 }).retval >>> 0;
  }

  /**
   * Up to `limit` unexpired entries that `match` accepts: ep_ct4 first (its lines read in
   * batches, a matching line's ep_ct4_cold by its index), then ep_ct and ep_ct_new.
   * @returns decoded entries; new objects.
   */
  list(match: (entry: ConnectionEntry) => boolean, limit: number, nowNs: bigint = process.hrtime.bigint()): ConnectionEntry[] {
    const out: ConnectionEntry[] = [];
    const index = new Uint8Array(4);
    for (const { count, keys, values } of this.#maps.ep_ct4.getBatches(CHUNK, this.#walk)) {
      const view = new DataView(values.buffer, values.byteOffset, values.byteLength);
      for (let i = 0; i < count; i++) {
        // A live tag (its top bit) and a deadline to come; most lines of a sparse table are neither.
        if ((view.getUint32(i * epCt4Slot.size, true) & CT4_LIVE) === 0) continue;
        if (view.getBigUint64(i * epCt4Slot.size + CT4_EXPIRES_OFFSET, true) <= nowNs) continue;
        index.set(keys.subarray(i * 4, i * 4 + 4));
        const cold = this.#maps.ep_ct4_cold.get(index);
        const line = ct4Entry(epCt4Slot.decode(values.subarray(i * epCt4Slot.size, (i + 1) * epCt4Slot.size)), cold === undefined ? NO_COLD : epCt4Cold.decode(cold));
        if (line === undefined) continue;
        const entry = describeConnection(line.key, line.entry, 'established', nowNs);
        if (!match(entry)) continue;
        out.push(entry);
        if (out.length >= limit) return out;
      }
    }
    const tables: [BpfMap, ConnectionTable][] = [
      [this.#maps.ep_ct, 'established'],
      [this.#maps.ep_ct_new, 'new'],
    ];
    for (const [map, table] of tables) {
      for (const { count, keys, values } of map.getBatches(CHUNK, this.#walk)) {
        const view = new DataView(values.buffer, values.byteOffset, values.byteLength);
        for (let i = 0; i < count; i++) {
          if (view.getBigUint64(i * epCtEntry.size + EXPIRES_OFFSET, true) <= nowNs) continue;
          // A load-balanced flow's reverse entry: its flow is listed by its service entry.
          if (((values[i * epCtEntry.size + NAT_FLAGS_OFFSET] ?? 0) & CT_NAT_FLAGS.revnat) !== 0) continue;
          const key = keys.subarray(i * epCtKey.size, (i + 1) * epCtKey.size);
          const entry = decodeConnection(key, values.subarray(i * epCtEntry.size, (i + 1) * epCtEntry.size), table, nowNs);
          if (!match(entry)) continue;
          out.push(entry);
          if (out.length >= limit) return out;
        }
      }
    }
    return out;
  }

  /**
   * Runs the ep_ct_sweep program once: it deletes up to `budget` expired entries of ep_ct, then
   * of ep_ct_new, in the kernel.
   * @returns how many it deleted (equal to `budget`: there may be more).
   * @throws LibbpfError.
   */
  sweep(budget: number): number {
    if (!Number.isInteger(budget) || budget < 1 || budget > 0xffff_ffff) throw new RangeError(`sweep budget must be an integer in 1..2^32-1, got ${budget}`);
    const args = encode(epCtSweepArgs, { budget, pad: 0 });
    return this.#sweep.testRun({ data: new Uint8Array(0), dataSizeOut: 0, repeat: 0, ctxIn: args }).retval >>> 0;
  }
}

// Live entries of `map`: flows, and load-balanced flows' reverse entries apart (they never expire by themselves).
function countLive(map: BpfMap, nowNs: bigint, walk: BatchBuffers): { flows: number; reverse: number } {
  let flows = 0;
  let reverse = 0;
  for (const { count, values } of map.getBatches(CHUNK, walk)) {
    const view = new DataView(values.buffer, values.byteOffset, values.byteLength);
    for (let i = 0; i < count; i++) {
      if (((values[i * epCtEntry.size + NAT_FLAGS_OFFSET] ?? 0) & CT_NAT_FLAGS.revnat) !== 0) reverse++;
      else if (view.getBigUint64(i * epCtEntry.size + EXPIRES_OFFSET, true) > nowNs) flows++;
    }
  }
  return { flows, reverse };
}
