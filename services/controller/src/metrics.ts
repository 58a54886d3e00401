import type { Meter } from '@opentelemetry/api';
import type { CounterStore } from './counter-store.js';
import type { NodeRegistry } from './node-registry.js';

/**
 * Registers the fleet's metrics (observed on collection, so nothing is recorded per report):
 * rule packets and bytes summed over the fleet, per-node interface packets, node counts and
 * the intent revision.
 */
export function registerFleetMetrics(meter: Meter, sources: { counters: CounterStore; registry: NodeRegistry; revision: () => bigint }): void {
  const rulePackets = meter.createObservableCounter('edgeplane_rule_packets', { description: 'Packets matched per policy rule, summed over the fleet' });
  const ruleBytes = meter.createObservableCounter('edgeplane_rule_bytes', { description: 'Bytes matched per policy rule, summed over the fleet', unit: 'By' });
  const ifacePackets = meter.createObservableCounter('edgeplane_interface_packets', { description: 'Packets the datapath passed or dropped, per node and interface' });
  const nodes = meter.createObservableGauge('edgeplane_nodes', { description: 'Registered nodes by connection state' });
  const revision = meter.createObservableGauge('edgeplane_intent_revision', { description: 'Newest revision of the intent log' });
  const applied = meter.createObservableGauge('edgeplane_node_applied_revision', { description: 'Revision each node enforces' });
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
      const all = sources.registry.list();
      const connected = all.filter((n) => n.status?.connected).length;
      r.observe(nodes, connected, { state: 'connected' });
      r.observe(nodes, all.length - connected, { state: 'disconnected' });
      for (const n of all) r.observe(applied, Number(n.status?.appliedRevision ?? 0n), { node: n.name });
      r.observe(revision, Number(sources.revision()));
    },
    [rulePackets, ruleBytes, ifacePackets, nodes, revision, applied],
  );
}
