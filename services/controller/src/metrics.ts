import type { Meter } from '@opentelemetry/api';
import type { CounterStore } from './counter-store.js';
import type { NodeRegistry } from './node-registry.js';

/**
 * Registers the fleet's metrics (observed on collection, so nothing is recorded per report):
 * rule packets and bytes summed over the fleet, per-node interface packets, node counts, the
 * intent revision, and per node and role the connection tables' occupancy and capacity
 * (`table` new|established) and events (`event` created, promoted, insert_failed, expired, cut,
 * established, related, control), and per node the load balancer's packets (`event` selected,
 * no_backend, reverse_nat, orphaned, encapsulated, snat_failed, too_big).
 */
export function registerFleetMetrics(meter: Meter, sources: { counters: CounterStore; registry: NodeRegistry; revision: () => bigint }): void {
  const rulePackets = meter.createObservableCounter('edgeplane_rule_packets', { description: 'Packets matched per policy rule, summed over the fleet' });
  const ruleBytes = meter.createObservableCounter('edgeplane_rule_bytes', { description: 'Bytes matched per policy rule, summed over the fleet', unit: 'By' });
  const ifacePackets = meter.createObservableCounter('edgeplane_interface_packets', { description: 'Packets the datapath passed or dropped, per node and interface' });
  const nodes = meter.createObservableGauge('edgeplane_nodes', { description: 'Registered nodes by connection state' });
  const revision = meter.createObservableGauge('edgeplane_intent_revision', { description: 'Newest revision of the intent log' });
  const applied = meter.createObservableGauge('edgeplane_node_applied_revision', { description: 'Revision each node enforces' });
  const ctEntries = meter.createObservableGauge('edgeplane_conntrack_entries', { description: 'Live entries of each node\'s connection tables, per interface role and table (new, established)' });
  const ctCapacity = meter.createObservableGauge('edgeplane_conntrack_capacity', { description: 'Capacity of each node\'s connection tables, per interface role and table' });
  const ctEvents = meter.createObservableCounter('edgeplane_conntrack_events', { description: 'Connection-table events per node and role: entries created, promoted, insert_failed (established table full), expired, cut; packets passed by established, related, control' });
  const lbPackets = meter.createObservableCounter('edgeplane_lb_packets', { description: 'Load-balancer packets per node: new flows selected, dropped without a backend (no_backend), replies reverse-NATed, reverse entries orphaned; DSR packets encapsulated, too big once encapsulated; full-NAT flows dropped for want of a source port (snat_failed)' });
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
    [rulePackets, ruleBytes, ifacePackets, nodes, revision, applied, ctEntries, ctCapacity, ctEvents, lbPackets],
  );
}
