import { MAX_COUNTED_RULES_PER_NODE, MAX_COUNTER_INTERFACES, MAX_COUNTER_MARKS, type BlocklistStatus, type ConntrackStatus, type CounterMark, type CounterReport, type InterfaceCounters, type LoadBalancerStatus, type RuleCounters, type ShadowReport } from '@edgeplane/proto';

/** A node's newest shadow counters (ShadowReport), and when this controller first heard it shadow that candidate. */
export interface NodeShadow {
  readonly report: ShadowReport;
  readonly since: Date;
}

const key = (policy: string, priority: number): string => `${policy}\u0000${priority}`;

/** Adds `c` into `into`; returns false (and adds nothing) if that would create a key past `cap`. */
function addRule(into: Map<string, RuleCounters>, c: RuleCounters, cap = Infinity): boolean {
  const policy = c.rule?.policy ?? '';
  const priority = c.rule?.priority ?? 0;
  const k = key(policy, priority);
  const have = into.get(k);
  if (!have) {
    if (into.size >= cap) return false;
    into.set(k, { rule: { policy, priority }, ruleName: c.ruleName, packets: c.packets, bytes: c.bytes, rateLimitedPackets: c.rateLimitedPackets });
    return true;
  }
  have.packets += c.packets;
  have.bytes += c.bytes;
  have.rateLimitedPackets += c.rateLimitedPackets;
  if (c.ruleName) have.ruleName = c.ruleName;
  return true;
}

/** What a node counted since it enforced a revision, and before. */
export interface CountedSince {
  /** The node's totals before its first counter report under the revision (or a later one). */
  before: { packets: bigint; dropped: bigint };
  /** What it counted since (reports under that revision or later). */
  since: { packets: bigint; dropped: bigint };
}

function sortRules(list: Iterable<RuleCounters>): RuleCounters[] {
  return [...list].sort((a, b) => (a.rule!.policy === b.rule!.policy ? a.rule!.priority - b.rule!.priority : a.rule!.policy < b.rule!.policy ? -1 : 1));
}

/**
 * Counters agents report, summed from their deltas: per node and rule, and per node and
 * interface. Status cost grows with nodes, not nodes x policies x revisions: one entry per
 * (node, rule) that ever counted something. Deltas are folded in place into the node's entries
 * and, at the same time, into fleet-wide per-rule totals, so a report allocates nothing for
 * rules the node counted before, and the fleet's totals are read without walking every node.
 */
export class CounterStore {
  #rules = new Map<string, Map<string, RuleCounters>>();
  /** Per rule: the sum over every node, and how many nodes have an entry for it. */
  #fleet = new Map<string, { sum: RuleCounters; nodes: number }>();
  #interfaces = new Map<string, Map<string, InterfaceCounters>>();
  /** The newest conntrack status per node and role (levels and totals: replaced, not summed). */
  #conntrack = new Map<string, Map<string, ConntrackStatus>>();
  /** The newest source-blocklist status per node and role (levels and totals: replaced, not summed). */
  #blocklists = new Map<string, Map<string, BlocklistStatus>>();
  /** The newest load-balancer counters per node (totals: replaced, not summed). */
  #lb = new Map<string, LoadBalancerStatus>();
  /** The newest shadow counters per node (totals since its candidate was installed: replaced, not summed). */
  #shadow = new Map<string, NodeShadow>();
  /** Per node: its interface totals before its first report under each of its latest applied revisions, oldest first. */
  #marks = new Map<string, CounterMark[]>();
  #listeners = new Set<(node: string) => void>();
  #dropped = 0;

  /**
   * Calls `listener(node)` after every report added for a node (and every replace from another
   * replica), so a rollout gate judges the reading as it arrives; returns the remover.
   */
  watch(listener: (node: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #told(node: string): void {
    for (const l of this.#listeners) l(node);
  }

  /** The node's interface totals now: packets (passed and dropped) and dropped. */
  totals(node: string): { packets: bigint; dropped: bigint } {
    let packets = 0n;
    let dropped = 0n;
    for (const i of this.#interfaces.get(node)?.values() ?? []) {
      packets += i.passedPackets + i.droppedPackets;
      dropped += i.droppedPackets;
    }
    return { packets, dropped };
  }

  /**
   * What `node` counted since it enforced `revision`: from the first of its counter reports
   * whose applied revision is `revision` or later (the agent flushes the outgoing rule set's
   * counts with the revision before, at the switch, so that report holds nothing from before),
   * and its totals before that report. Undefined while no such report arrived (or when the
   * node has reported under more than MAX_COUNTER_MARKS revisions since).
   */
  since(node: string, revision: bigint): CountedSince | undefined {
    const mark = this.#marks.get(node)?.find((m) => m.revision >= revision);
    if (!mark) return undefined;
    const now = this.totals(node);
    return { before: { packets: mark.packets, dropped: mark.droppedPackets }, since: { packets: now.packets - mark.packets, dropped: now.dropped - mark.droppedPackets } };
  }

  /** The node's counter marks (copies), oldest first: what replicas share. */
  nodeMarks(node: string): CounterMark[] {
    return (this.#marks.get(node) ?? []).map((m) => ({ ...m }));
  }

  /** Marks the node's totals before a report under a revision newer than its newest mark. */
  #mark(node: string, appliedRevision: bigint): void {
    let marks = this.#marks.get(node);
    if (marks && (marks.at(-1)?.revision ?? 0n) >= appliedRevision) return;
    if (!marks) this.#marks.set(node, (marks = []));
    const t = this.totals(node);
    marks.push({ revision: appliedRevision, packets: t.packets, droppedPackets: t.dropped });
    if (marks.length > MAX_COUNTER_MARKS) marks.shift();
  }

  /** Entries dropped because a node already had counters for MAX_COUNTED_RULES_PER_NODE rules (or MAX_COUNTER_INTERFACES interfaces). */
  get dropped(): number {
    return this.#dropped;
  }

  /**
   * Adds one report's deltas for a node. Per node at most MAX_COUNTED_RULES_PER_NODE rules and
   * MAX_COUNTER_INTERFACES interfaces are kept: entries for new keys past that are dropped
   * (and counted in {@link dropped}), so memory stays bounded whatever agents send. A shadow
   * report is kept under `node` whatever node it names: the caller checks that it describes the
   * node that sent it (AgentSessions, by the stream's authenticated node).
   */
  add(node: string, report: CounterReport, now = new Date()): void {
    this.#add(node, report, now);
    this.#told(node);
  }

  #add(node: string, report: CounterReport, now: Date): void {
    if (report.interfaces.length > 0 && report.appliedRevision > 0n) this.#mark(node, report.appliedRevision);
    if (report.loadBalancer) this.#lb.set(node, { ...report.loadBalancer });
    if (report.shadow) {
      const have = this.#shadow.get(node);
      this.#shadow.set(node, { report: report.shadow, since: have?.report.candidate === report.shadow.candidate ? have.since : now });
    }
    if (report.conntrack.length > 0) {
      let ct = this.#conntrack.get(node);
      if (!ct) this.#conntrack.set(node, (ct = new Map()));
      // Validated upstream: at most one entry per role, so at most two per node.
      for (const c of report.conntrack) ct.set(c.role, { ...c });
    }
    if (report.blocklists.length > 0) {
      let blk = this.#blocklists.get(node);
      if (!blk) this.#blocklists.set(node, (blk = new Map()));
      // Validated upstream as conntrack is: at most one entry per role.
      for (const b of report.blocklists) blk.set(b.role, { ...b });
    }
    let rules = this.#rules.get(node);
    if (!rules) this.#rules.set(node, (rules = new Map()));
    for (const c of report.rules) {
      const size = rules.size;
      if (!addRule(rules, c, MAX_COUNTED_RULES_PER_NODE)) {
        this.#dropped++;
        continue;
      }
      const k = key(c.rule?.policy ?? '', c.rule?.priority ?? 0);
      const f = this.#fleet.get(k);
      if (!f) this.#fleet.set(k, { sum: { ...rules.get(k)!, rule: { ...rules.get(k)!.rule! } }, nodes: 1 });
      else {
        if (rules.size > size) f.nodes++;
        f.sum.packets += c.packets;
        f.sum.bytes += c.bytes;
        f.sum.rateLimitedPackets += c.rateLimitedPackets;
        if (c.ruleName) f.sum.ruleName = c.ruleName;
      }
    }
    let ifaces = this.#interfaces.get(node);
    if (!ifaces) this.#interfaces.set(node, (ifaces = new Map()));
    for (const c of report.interfaces) {
      const have = ifaces.get(c.interface);
      if (!have) {
        if (ifaces.size >= MAX_COUNTER_INTERFACES) {
          this.#dropped++;
          continue;
        }
        ifaces.set(c.interface, { ...c });
        continue;
      }
      have.passedPackets += c.passedPackets;
      have.droppedPackets += c.droppedPackets;
      have.passedBytes += c.passedBytes;
      have.droppedBytes += c.droppedBytes;
      have.defaultActionPackets += c.defaultActionPackets;
      have.nonIpPackets += c.nonIpPackets;
      have.malformedPackets += c.malformedPackets;
    }
  }

  /**
   * Replaces one node's totals with another replica's (its agent is connected there): what
   * `add` would hold after summing the same reports, kept within the same per-node bounds.
   */
  replace(node: string, totals: { rules: RuleCounters[]; interfaces: InterfaceCounters[]; conntrack: ConntrackStatus[]; blocklists?: BlocklistStatus[]; loadBalancer?: LoadBalancerStatus | undefined; shadow?: ShadowReport | undefined; counterMarks?: CounterMark[] }): void {
    const shadow = this.#shadow.get(node);
    // The usual case (the node's next totals, for the rules and interfaces it had): updated in
    // place, the fleet's sums by the difference, with no map or entry made anew.
    const inPlace = this.#sameKeys(node, totals.rules, totals.interfaces);
    if (inPlace) {
      this.#overwrite(node, totals.rules, totals.interfaces);
      this.#forgetLevels(node);
    } else this.forget(node);
    // The shadow's `since` is when this replica first heard the candidate: kept across replaces.
    if (shadow) this.#shadow.set(node, shadow);
    const summed = inPlace ? { rules: [], interfaces: [] } : { rules: totals.rules, interfaces: totals.interfaces };
    this.#add(node, { startTime: undefined, endTime: undefined, appliedRevision: 0n, ...summed, conntrack: totals.conntrack, blocklists: totals.blocklists ?? [], loadBalancer: totals.loadBalancer, shadow: totals.shadow }, new Date());
    if (totals.counterMarks?.length) this.#marks.set(node, totals.counterMarks.slice(-MAX_COUNTER_MARKS).map((m) => ({ ...m })));
    this.#told(node);
  }

  /**
   * Whether `rules` and `interfaces` name exactly the node's held rules and interfaces: as many,
   * each found. That is the same set because a replica's totals come from its own maps, one entry
   * per key.
   */
  #sameKeys(node: string, rules: RuleCounters[], interfaces: InterfaceCounters[]): boolean {
    const held = this.#rules.get(node);
    const ifaces = this.#interfaces.get(node);
    if (!held || !ifaces || held.size !== rules.length || ifaces.size !== interfaces.length) return false;
    for (const c of rules) if (!held.has(key(c.rule?.policy ?? '', c.rule?.priority ?? 0))) return false;
    for (const c of interfaces) if (!ifaces.has(c.interface)) return false;
    return true;
  }

  /** Sets the node's held rule and interface totals to these (the same keys: {@link #sameKeys}). */
  #overwrite(node: string, rules: RuleCounters[], interfaces: InterfaceCounters[]): void {
    const held = this.#rules.get(node)!;
    for (const c of rules) {
      const k = key(c.rule?.policy ?? '', c.rule?.priority ?? 0);
      const h = held.get(k)!;
      const f = this.#fleet.get(k)!;
      f.sum.packets += c.packets - h.packets;
      f.sum.bytes += c.bytes - h.bytes;
      f.sum.rateLimitedPackets += c.rateLimitedPackets - h.rateLimitedPackets;
      if (c.ruleName) f.sum.ruleName = c.ruleName;
      h.packets = c.packets;
      h.bytes = c.bytes;
      h.rateLimitedPackets = c.rateLimitedPackets;
      h.ruleName = c.ruleName;
    }
    const ifaces = this.#interfaces.get(node)!;
    for (const c of interfaces) Object.assign(ifaces.get(c.interface)!, c);
  }

  /** Forgets one node's counters (and takes them out of the fleet's totals). */
  forget(node: string): void {
    for (const [k, c] of this.#rules.get(node) ?? []) {
      const f = this.#fleet.get(k);
      if (!f) continue;
      if (--f.nodes === 0) {
        this.#fleet.delete(k);
        continue;
      }
      f.sum.packets -= c.packets;
      f.sum.bytes -= c.bytes;
      f.sum.rateLimitedPackets -= c.rateLimitedPackets;
    }
    this.#rules.delete(node);
    this.#interfaces.delete(node);
    this.#forgetLevels(node);
  }

  /** Forgets what a node's reports replace rather than sum (levels, newest totals, marks, shadow). */
  #forgetLevels(node: string): void {
    this.#marks.delete(node);
    this.#conntrack.delete(node);
    this.#blocklists.delete(node);
    this.#lb.delete(node);
    this.#shadow.delete(node);
  }

  /** One node's newest shadow counters and since when it shadows their candidate, or undefined when it reported none. */
  nodeShadow(node: string): NodeShadow | undefined {
    return this.#shadow.get(node);
  }

  /** One node's rule counters (optionally one policy's), sorted. */
  nodeRules(node: string, policy?: string): RuleCounters[] {
    const rules = this.#rules.get(node);
    if (!rules) return [];
    return sortRules([...rules.values()].filter((c) => !policy || c.rule?.policy === policy));
  }

  /** One node's interface counters, sorted by interface. */
  nodeInterfaces(node: string): InterfaceCounters[] {
    return [...(this.#interfaces.get(node)?.values() ?? [])].sort((a, b) => (a.interface < b.interface ? -1 : 1));
  }

  /**
   * Rule counters summed over `nodes` (default: every node, from the totals kept as reports
   * arrive: O(rules), not O(nodes x rules)), optionally for one policy.
   */
  fleetRules(policy?: string, nodes?: Iterable<string>): RuleCounters[] {
    if (!nodes) {
      const out: RuleCounters[] = [];
      for (const { sum } of this.#fleet.values()) if (!policy || sum.rule!.policy === policy) out.push({ ...sum, rule: { ...sum.rule! } });
      return sortRules(out);
    }
    const sum = new Map<string, RuleCounters>();
    for (const node of nodes ?? this.#rules.keys()) for (const c of this.nodeRules(node, policy)) addRule(sum, c);
    return sortRules(sum.values());
  }

  /** One node's newest conntrack status per interface role, sorted by role. */
  nodeConntrack(node: string): ConntrackStatus[] {
    return [...(this.#conntrack.get(node)?.values() ?? [])].sort((a, b) => (a.role < b.role ? -1 : 1));
  }

  /** One node's newest source-blocklist status per interface role, sorted by role. */
  nodeBlocklists(node: string): BlocklistStatus[] {
    return [...(this.#blocklists.get(node)?.values() ?? [])].sort((a, b) => (a.role < b.role ? -1 : 1));
  }

  /** One node's newest load-balancer counters (a copy), or undefined when it reported none. */
  nodeLoadBalancer(node: string): LoadBalancerStatus | undefined {
    const lb = this.#lb.get(node);
    return lb && { ...lb };
  }

  /** The newest load-balancer counters of `nodes`, summed field by field; undefined when none of them reported any. */
  sumLoadBalancer(nodes: Iterable<string>): LoadBalancerStatus | undefined {
    let sum: LoadBalancerStatus | undefined;
    for (const node of nodes) {
      const lb = this.#lb.get(node);
      if (!lb) continue;
      sum ??= { selected: 0n, noBackend: 0n, reverseNat: 0n, orphaned: 0n, encapsulated: 0n, snatFailed: 0n, tooBig: 0n };
      for (const k of Object.keys(sum) as (keyof LoadBalancerStatus)[]) sum[k] += lb[k];
    }
    return sum;
  }

  /** Nodes that reported anything. */
  nodes(): string[] {
    return [...new Set([...this.#rules.keys(), ...this.#interfaces.keys(), ...this.#conntrack.keys(), ...this.#blocklists.keys(), ...this.#lb.keys()])];
  }
}
