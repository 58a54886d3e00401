// The source blocklist's counters as OpenTelemetry metrics of the agent (exported with its other
// metrics, e.g. over OTLP): what each role's blocklist dropped and how many prefixes it holds, read
// from the datapath at each collection (no timer, no copy kept).
import { metrics, type BatchObservableCallback } from '@opentelemetry/api';
import type { BlocklistCounters } from '../datapath/blocklist-tables.js';

/** What is read of one role's blocklist (EbpfDatapath.blocklist). */
export interface ObservedBlocklist {
  readonly role: string;
  readonly tables: { readCounters(): BlocklistCounters; readonly size: { v4: number; v6: number } };
}

/**
 * Observes `blocklists` as `edgeplane.agent.blocklist.dropped` (packets dropped, a counter) and
 * `edgeplane.agent.blocklist.entries` (prefixes held, a gauge: as this agent wrote them; after a
 * restart, until its first load, the adopted tries' capacity), each with the node, the role and
 * the address family. A blocklist that cannot be read (its datapath closed) is skipped.
 * @returns what stops observing them.
 */
export function observeBlocklists(node: string, blocklists: readonly ObservedBlocklist[]): () => void {
  const meter = metrics.getMeter('@edgeplane/node-agent');
  const dropped = meter.createObservableCounter('edgeplane.agent.blocklist.dropped', { description: 'Packets the source blocklist dropped, per interface role and address family', unit: '{packet}' });
  const entries = meter.createObservableGauge('edgeplane.agent.blocklist.entries', { description: 'Prefixes the source blocklist holds, per interface role and address family', unit: '{prefix}' });
  const callback: BatchObservableCallback = (result) => {
    for (const { role, tables } of blocklists) {
      let counters: BlocklistCounters;
      let size: { v4: number; v6: number };
      try {
        counters = tables.readCounters();
        size = tables.size;
      } catch {
        continue;
      }
      const at = (family: 'ipv4' | 'ipv6'): Record<string, string> => ({ 'edgeplane.node': node, 'edgeplane.role': role, 'edgeplane.family': family });
      result.observe(dropped, counters.dropped4.packets, at('ipv4'));
      result.observe(dropped, counters.dropped6.packets, at('ipv6'));
      result.observe(entries, size.v4, at('ipv4'));
      result.observe(entries, size.v6, at('ipv6'));
    }
  };
  meter.addBatchObservableCallback(callback, [dropped, entries]);
  return () => meter.removeBatchObservableCallback(callback, [dropped, entries]);
}
