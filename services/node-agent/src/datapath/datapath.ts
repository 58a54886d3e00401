// The narrow interfaces the agent's logic takes, so it can run against the eBPF datapath or an
// in-memory one (the simulated fleet).
import type { ConnectionEntry, ConnectionFilter, ConntrackCounters, ConntrackOccupancy, ControlEndpoint } from './conntrack.js';
import type { RuleSetSpec } from './rule-set.js';
import type { LbSpec } from './service-compile.js';

/** Packets and bytes. */
export interface Counter {
  readonly packets: number;
  readonly bytes: number;
}

/** What the datapath counted, summed over CPUs and over every generation a rule lived in. */
export interface DatapathCounters {
  /** By rule id, for every rule of the live rule set (zero if never hit). */
  readonly rules: ReadonlyMap<number, Counter>;
  /** Packets no rule matched. */
  readonly defaultAction: Counter;
  /** Frames passed without classification (not IPv4/IPv6). */
  readonly nonIp: Counter;
  /** Frames dropped for truncated or malformed headers. */
  readonly malformed: Counter;
  /** Frames passed because no rule set was installed yet. */
  readonly unconfigured: Counter;
  /** Packets a rate_limit rule matched and dropped (also counted under that rule). */
  readonly rateLimited: Counter;
  /** What connection tracking counted (bpf/CONNTRACK.md, enum ep_ct_stat). */
  readonly conntrack: ConntrackCounters;
  /** What load balancing counted (bpf/LB.md, enum ep_lb_stat); absent where there is none. */
  readonly lb?: LbCounters;
}

/** Load-balancing counters (ep_lb_stats), summed over CPUs: packets and bytes, or events in `packets`. */
export interface LbCounters {
  /** New flows to a VIP given a backend (the packets that created them). */
  readonly selected: Counter;
  /** New flows to a VIP without a backend of positive weight: dropped (LB_NO_BACKEND). */
  readonly noBackend: Counter;
  /** Replies whose source was rewritten to the VIP (uplink egress). */
  readonly reverseNat: Counter;
  /** Reverse entries deleted because their service entry was gone (events). */
  readonly orphaned: Counter;
  /** DSR packets encapsulated towards their backend (layout 5). */
  readonly encapsulated: Counter;
  /** New full-NAT flows dropped for want of a free source port (layout 5). */
  readonly snatFailed: Counter;
  /** DSR packets too big once encapsulated: answered with ICMP too-big at XDP, dropped at TC (layout 5). */
  readonly tooBig: Counter;
}

/** enum ep_lb_stat order. */
export const LB_STAT_NAMES = ['selected', 'noBackend', 'reverseNat', 'orphaned', 'encapsulated', 'snatFailed', 'tooBig'] as const satisfies readonly (keyof LbCounters)[];

/** Reads counters. */
export interface CounterReader {
  /** @throws DatapathError if the kernel refuses a read. */
  readCounters(): DatapathCounters;
}

/** How an apply took effect. */
export interface ApplyResult {
  /** The generation (0 or 1) now live. */
  readonly generation: number;
  /**
   * 'installed': new tables were built in the idle generation and switched in; 'switched': the
   * idle generation already held exactly these tables (a rollback), so only the switch ran;
   * 'unchanged': they are already live.
   */
  readonly mode: 'installed' | 'switched' | 'unchanged';
  /**
   * ('installed' by the eBPF datapath.) 'updated': the idle generation held tables this process
   * wrote, and only their difference to the new ones was written (entries added, changed and
   * removed; the load-balancing tables left alone when they are the same); 'rebuilt': its
   * tables were written whole, in fresh inner maps.
   */
  readonly write?: 'updated' | 'rebuilt';
  /**
   * ('installed' by the eBPF datapath.) Policy table entries written or deleted: inner-map
   * entries, rule slots, wildcard vectors, counter slots moved. An update writes in proportion
   * to the change; a rebuild writes every entry.
   */
  readonly written?: number;
  readonly ruleCount: number;
  /** Distinct field classes, LPM entries and class words of the compiled tables. */
  readonly classCount: number;
  readonly lpmEntries: number;
  readonly classWords: number;
  /** Services (VIP entries) of the load-balancing spec now live (0 without one). */
  readonly services: number;
}

/** Reads the connection table. */
export interface ConnectionReader {
  /**
   * Live (unexpired) entries per table.
   * @throws DatapathError if the kernel refuses a read.
   */
  readConntrackOccupancy(): ConntrackOccupancy;
  /**
   * Up to `limit` unexpired entries matching `filter`, ep_ct first, then ep_ct_new, in table order.
   * @returns new objects the caller owns.
   * @throws ConntrackInputError for a bad filter or limit (1..MAX_LIST_CONNECTIONS); DatapathError.
   */
  listConnections(filter: ConnectionFilter, limit: number): ConnectionEntry[];
}

/** Enforces rule sets. */
export interface Datapath extends CounterReader, ConnectionReader {
  /**
   * Replaces the control endpoints: packets from them pass whatever the rule set and however
   * full the connection table (bpf/CONNTRACK.md step 2).
   * @throws ConntrackInputError (nothing changed); DatapathError.
   */
  setControlEndpoints(endpoints: readonly ControlEndpoint[]): void;
  /**
   * Makes `ruleSet` and the load-balancing spec `lb` (bpf/LB.md; absent: no services) the
   * enforced ones, atomically and together: each packet meets wholly the old pair or wholly the
   * new one. On failure the previous pair stays in force.
   * @throws RuleSetError, CapacityError (nothing touched); DatapathError.
   */
  apply(ruleSet: RuleSetSpec, lb?: LbSpec): Promise<ApplyResult>;
  /** Releases resources; idempotent. Whether enforcement continues is the implementation's to say. */
  close(): void;
}
