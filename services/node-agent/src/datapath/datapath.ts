// The narrow interfaces the agent's logic takes, so it can run against the eBPF datapath or an
// in-memory one (the simulated fleet).
import type { RuleSetSpec } from './rule-set.js';

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
  /** The connection tables (bpf/CONNTRACK.md); absent where the datapath has none. */
  readonly conntrack?: ConntrackCounters;
}

/** What a datapath's connection tables hold now and counted since they were created (ep_ct_stats). */
export interface ConntrackCounters {
  /** Packets passed by an entry. */
  readonly established: Counter;
  /** ICMP errors passed because they are about a tracked flow. */
  readonly related: Counter;
  readonly created: Counter;
  readonly promoted: Counter;
  readonly insertFailed: Counter;
  readonly expired: Counter;
  readonly cut: Counter;
  /** Packets passed by the control bypass. */
  readonly control: Counter;
  /** Live (unexpired) entries in ep_ct and its capacity. */
  readonly entries: number;
  readonly capacity: number;
  /** Live entries in ep_ct_new and its capacity. */
  readonly newEntries: number;
  readonly newCapacity: number;
}

/** enum ep_ct_state of bpf/CONNTRACK.md, by name. */
export type ConnectionStateName = 'none' | 'syn_sent' | 'syn_recv' | 'established' | 'fin_wait' | 'closing' | 'closed' | 'udp' | 'icmp';

/** One entry of a connection table, decoded: the flow in its original direction. */
export interface ConnectionEntry {
  readonly family: 4 | 6;
  /** IP protocol number. */
  readonly proto: number;
  /** 4 or 16 bytes. */
  readonly src: Uint8Array;
  readonly sport: number;
  readonly dst: Uint8Array;
  readonly dport: number;
  readonly state: ConnectionStateName;
  /** EP_CT_F_* bits. */
  readonly flags: number;
  /** Time left before it idles out (0 if already expired). */
  readonly expiresInMs: number;
  /** [original, reply]. */
  readonly packets: readonly [number, number];
  readonly bytes: readonly [number, number];
  /** The rule that admitted it; EP_CT_RULE_EGRESS for egress tracking, DEFAULT_RULE_ID for the default action. */
  readonly ruleId: number;
  readonly table: 'new' | 'established';
}

/** The entries a {@link ConnectionReader} found. */
export interface ConnectionListing {
  /** At most the limit asked for. */
  readonly connections: ConnectionEntry[];
  /** Live entries the predicate accepted (also those past the limit). */
  readonly matched: number;
}

/** Reads the connection tables. */
export interface ConnectionReader {
  /**
   * Walks the live entries of both tables, counting those `accept` takes and keeping the first
   * `limit` of them.
   * @throws DatapathError if the kernel refuses a read.
   */
  listConnections(accept: (entry: ConnectionEntry) => boolean, limit: number): ConnectionListing;
}

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
  readonly ruleCount: number;
  /** Distinct field classes, LPM entries and class words of the compiled tables. */
  readonly classCount: number;
  readonly lpmEntries: number;
  readonly classWords: number;
}

/** Enforces rule sets. */
export interface Datapath extends CounterReader {
  /**
   * Makes `ruleSet` the enforced one, atomically: each packet is classified wholly by the old or
   * wholly by the new rule set. On failure the previous rule set stays in force.
   * @throws RuleSetError, CapacityError (nothing touched); DatapathError.
   */
  apply(ruleSet: RuleSetSpec): Promise<ApplyResult>;
  /** Releases resources; idempotent. Whether enforcement continues is the implementation's to say. */
  close(): void;
}
