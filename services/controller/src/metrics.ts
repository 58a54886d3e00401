import type { Meter } from '@opentelemetry/api';
import type { CounterStore } from './counter-store.js';
import type { NodeRegistry } from './node-registry.js';

/**
 * The fleet metrics: instrument name, kind and description, the one list the instruments are
 * made from and that {@link prometheusMetricNames} (and the Grafana dashboard's test) read.
 */
export const FLEET_METRICS = {
  rulePackets: { name: 'edgeplane_rule_packets', kind: 'counter', description: 'Packets matched per policy rule, summed over the fleet' },
  ruleBytes: { name: 'edgeplane_rule_bytes', kind: 'counter', description: 'Bytes matched per policy rule, summed over the fleet', unit: 'By' },
  ifacePackets: { name: 'edgeplane_interface_packets', kind: 'counter', description: 'Packets the datapath passed or dropped, per node and interface' },
  nodes: { name: 'edgeplane_nodes', kind: 'gauge', description: 'Registered nodes by connection state' },
  revision: { name: 'edgeplane_intent_revision', kind: 'gauge', description: 'Newest revision of the intent log' },
  applied: { name: 'edgeplane_node_applied_revision', kind: 'gauge', description: 'Revision each node enforces' },
  ctEntries: { name: 'edgeplane_conntrack_entries', kind: 'gauge', description: "Live entries of each node's connection tables, per interface role and table (new, established)" },
  ctCapacity: { name: 'edgeplane_conntrack_capacity', kind: 'gauge', description: "Capacity of each node's connection tables, per interface role and table" },
  ctEvents: { name: 'edgeplane_conntrack_events', kind: 'counter', description: 'Connection-table events per node and role: entries created, promoted, insert_failed (established table full), expired, cut; packets passed by established, related, control' },
  blkEntries: { name: 'edgeplane_blocklist_entries', kind: 'gauge', description: "Prefixes each node's source blocklist holds (deny-source lists and blocks), per interface role and address family" },
  blkDropped: { name: 'edgeplane_blocklist_dropped_packets', kind: 'counter', description: "Packets each node's source blocklist dropped, per interface role and address family" },
  lbPackets: {
    name: 'edgeplane_lb_packets',
    kind: 'counter',
    description: 'Load-balancer packets per node: new flows selected, dropped without a backend (no_backend), replies reverse-NATed, reverse entries orphaned; DSR packets encapsulated, too big once encapsulated; full-NAT flows dropped for want of a source port (snat_failed)',
  },
} as const satisfies Record<string, { name: string; kind: 'counter' | 'gauge'; description: string; unit?: string }>;

/** The names a Prometheus scrape shows for {@link FLEET_METRICS} (the exporter adds `_total` to counters). */
export function prometheusMetricNames(): string[] {
  return Object.values(FLEET_METRICS).map((m) => (m.kind === 'counter' ? `${m.name}_total` : m.name));
}

/**
 * Registers the fleet's metrics (observed on collection, so nothing is recorded per report):
 * rule packets and bytes summed over the fleet, per-node interface packets, node counts, the
 * intent revision, and per node and role the connection tables' occupancy and capacity
 * (`table` new|established) and events (`event` created, promoted, insert_failed, expired, cut,
 * established, related, control), per node, role and `family` (ipv4, ipv6) the source
 * blocklist's prefixes and drops, and per node the load balancer's packets (`event` selected,
 * no_backend, reverse_nat, orphaned, encapsulated, snat_failed, too_big).
 */
export function registerFleetMetrics(meter: Meter, sources: { counters: CounterStore; registry: NodeRegistry; revision: () => bigint }): void {
  const counter = (m: (typeof FLEET_METRICS)[keyof typeof FLEET_METRICS]) => meter.createObservableCounter(m.name, { description: m.description, ...('unit' in m ? { unit: m.unit } : {}) });
  const gauge = (m: (typeof FLEET_METRICS)[keyof typeof FLEET_METRICS]) => meter.createObservableGauge(m.name, { description: m.description });
  const rulePackets = counter(FLEET_METRICS.rulePackets);
  const ruleBytes = counter(FLEET_METRICS.ruleBytes);
  const ifacePackets = counter(FLEET_METRICS.ifacePackets);
  const nodes = gauge(FLEET_METRICS.nodes);
  const revision = gauge(FLEET_METRICS.revision);
  const applied = gauge(FLEET_METRICS.applied);
  const ctEntries = gauge(FLEET_METRICS.ctEntries);
  const ctCapacity = gauge(FLEET_METRICS.ctCapacity);
  const ctEvents = counter(FLEET_METRICS.ctEvents);
  const blkEntries = gauge(FLEET_METRICS.blkEntries);
  const blkDropped = counter(FLEET_METRICS.blkDropped);
  const lbPackets = counter(FLEET_METRICS.lbPackets);
  meter.addBatchObservableCallback(
    (r) => {
      for (const c of sources.counters.fleetRules()) {
        const attrs = { policy: c.rule?.policy ?? '', priority: c.rule?.priority ?? 0, rule: c.ruleName };
        r.observe(rulePackets, Number(c.packets), attrs);
        r.observe(ruleBytes, Number(c.bytes), attrs);
      }
      for (const node of sources.counters.nodes()) {
        for (const i of sources.counters.nodeInterfaces(node)) {
          r.observe(ifacePackets, Number(i.passedPackets), { node, interface: i.interface, verdict: 'pass' });
          r.observe(ifacePackets, Number(i.droppedPackets), { node, interface: i.interface, verdict: 'drop' });
        }
      }
      for (const node of sources.counters.nodes()) {
        for (const c of sources.counters.nodeConntrack(node)) {
          const at = { node, role: c.role };
          r.observe(ctEntries, Number(c.entries), { ...at, table: 'established' });
          r.observe(ctEntries, Number(c.newEntries), { ...at, table: 'new' });
          r.observe(ctCapacity, Number(c.capacity), { ...at, table: 'established' });
          r.observe(ctCapacity, Number(c.newCapacity), { ...at, table: 'new' });
          const events: [string, bigint][] = [
            ['created', c.created],
            ['promoted', c.promoted],
            ['insert_failed', c.insertFailed],
            ['expired', c.expired],
            ['cut', c.cut],
            ['established', c.establishedPackets],
            ['related', c.relatedPackets],
            ['control', c.controlPackets],
          ];
          for (const [event, value] of events) r.observe(ctEvents, Number(value), { ...at, event });
        }
      }
      for (const node of sources.counters.nodes()) {
        for (const b of sources.counters.nodeBlocklists(node)) {
          r.observe(blkEntries, Number(b.ipv4Entries), { node, role: b.role, family: 'ipv4' });
          r.observe(blkEntries, Number(b.ipv6Entries), { node, role: b.role, family: 'ipv6' });
          r.observe(blkDropped, Number(b.ipv4DroppedPackets), { node, role: b.role, family: 'ipv4' });
          r.observe(blkDropped, Number(b.ipv6DroppedPackets), { node, role: b.role, family: 'ipv6' });
        }
      }
      for (const node of sources.counters.nodes()) {
        const lb = sources.counters.nodeLoadBalancer(node);
        if (!lb) continue;
        const events: [string, bigint][] = [
          ['selected', lb.selected],
          ['no_backend', lb.noBackend],
          ['reverse_nat', lb.reverseNat],
          ['orphaned', lb.orphaned],
          ['encapsulated', lb.encapsulated],
          ['snat_failed', lb.snatFailed],
          ['too_big', lb.tooBig],
        ];
        for (const [event, value] of events) r.observe(lbPackets, Number(value), { node, event });
      }
      const all = sources.registry.list();
      const connected = all.filter((n) => n.status?.connected).length;
      r.observe(nodes, connected, { state: 'connected' });
      r.observe(nodes, all.length - connected, { state: 'disconnected' });
      for (const n of all) r.observe(applied, Number(n.status?.appliedRevision ?? 0n), { node: n.name });
      r.observe(revision, Number(sources.revision()));
    },
    [rulePackets, ruleBytes, ifacePackets, nodes, revision, applied, ctEntries, ctCapacity, ctEvents, blkEntries, blkDropped, lbPackets],
  );
}
