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

/** Counts of a rule set's rules in slot order: ids[i]'s packets at sums[2i], its bytes at sums[2i + 1]. */
export interface PackedRuleCounts {
  readonly ids: readonly number[];
  readonly sums: Float64Array;
}

/** What the datapath counted, summed over CPUs and over every generation a rule lived in. */
export interface DatapathCounters {
  /** By rule id, for every rule of the live rule set (zero if never hit). */
  readonly rules: ReadonlyMap<number, Counter>;
  /**
   * By rule id, rules not in the live rule set whose counts the datapath still holds (at least
   * those of the rule set the latest apply replaced): what a rule removed by an apply counted up
   * to the switch, so a reader that last read before the switch misses none of it.
   */
  readonly retired?: ReadonlyMap<number, Counter>;
  /**
   * The same counts as `rules`, packed (the eBPF datapath: `rules` is then built only when
   * asked for): what a reader of every rule uses (rule-counts.ts eachMoved).
   */
  readonly packed?: PackedRuleCounts;
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

/** Enforces rule sets, and shadows a candidate beside them. */
export interface Datapath extends CounterReader, ConnectionReader, ShadowDatapath {
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

/**
 * One packet whose verdicts differed between the enforced rule set and the shadow candidate
 * (issue 18): a sample kept by the datapath, at most MAX_SHADOW_SAMPLES of them, newest last.
 */
export interface ShadowSample {
  readonly family: 4 | 6;
  /** IP protocol number (6, 17, 1, 58, ...). */
  readonly proto: number;
  readonly src: string;
  readonly dst: string;
  /** The destination port (TCP/UDP), else 0. */
  readonly port: number;
  /** 'wouldDrop': the enforced rule set passed it, the candidate would drop it; 'wouldAllow' the reverse. */
  readonly verdict: 'wouldDrop' | 'wouldAllow';
  /** The rule id (DEFAULT_RULE_ID for the default action) that decided it in the enforced rule set. */
  readonly enforcedRuleId: number;
  /** The rule id that would have decided it in the candidate. */
  readonly candidateRuleId: number;
}

/** What shadow classification counted since the candidate was installed (summed over CPUs). */
export interface ShadowCounters {
  /** The candidate's fingerprint as given to shadow(): which candidate these counters are of. */
  readonly candidate: string;
  /** By rule id of the candidate, for every rule of it (zero if never hit): what it would have counted. */
  readonly rules: ReadonlyMap<number, Counter>;
  /** Packets the candidate's default action would have decided. */
  readonly defaultAction: Counter;
  /** Packets the enforced rule set passed and the candidate would have dropped. */
  readonly wouldDrop: Counter;
  /** Packets the enforced rule set dropped and the candidate would have passed. */
  readonly wouldAllow: Counter;
  /** Packets classified by both (the denominator of the shares above). */
  readonly classified: Counter;
  /** Recent differing packets, newest last. */
  readonly samples: readonly ShadowSample[];
}

/**
 * Shadow classification (issue 18): a candidate rule set held beside the enforced one. Every
 * packet the enforced rule set classifies is also classified by the candidate; the enforced
 * verdict decides; the candidate's verdicts are only counted. Nothing when no candidate is set.
 */
export interface ShadowDatapath {
  /**
   * Installs `ruleSet` as the shadow candidate (replacing any earlier one and zeroing its
   * counters), under the fingerprint `candidate` (the caller's name for it, e.g. "rev:hash");
   * null removes the candidate. Survives an agent restart (pinned) like the enforced tables.
   * @throws RuleSetError, CapacityError (nothing touched); DatapathError.
   */
  setShadow(ruleSet: RuleSetSpec | null, candidate?: string): Promise<void>;
  /** The candidate's counters, or null when no candidate is installed. @throws DatapathError. */
  readShadow(): ShadowCounters | null;
}
