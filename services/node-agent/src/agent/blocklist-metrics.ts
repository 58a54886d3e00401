// The source blocklist's counters, read from the datapath: as OpenTelemetry metrics of the agent
// (exported with its other metrics, e.g. over OTLP; read at each collection, no timer, no copy
// kept) and as the BlocklistStatus of its counter reports to the controller. One reading serves
// both.
import { metrics, type BatchObservableCallback } from '@opentelemetry/api';
import type { BlocklistStatus } from '@edgeplane/proto';
import type { BlocklistCounters } from '../datapath/blocklist-tables.js';

/** What is read of one role's blocklist (EbpfDatapath.blocklist). */
export interface BlocklistReader {
  readCounters(): BlocklistCounters;
  readonly size: { v4: number; v6: number };
}

/** One role's blocklist, observed. */
export interface ObservedBlocklist {
  readonly role: string;
  readonly tables: BlocklistReader;
}

/**
 * `role`'s blocklist as it is now: prefixes held (as this agent wrote them; after a restart,
 * until its first load, the adopted tries' count) and what it dropped since its tables were made.
 * @throws DatapathError if the kernel refuses the read (a closed datapath).
 */
export function readBlocklistStatus(role: string, tables: BlocklistReader): BlocklistStatus {
  const counters = tables.readCounters();
  const size = tables.size;
  return {
    role,
    ipv4Entries: BigInt(size.v4),
    ipv6Entries: BigInt(size.v6),
    ipv4DroppedPackets: BigInt(counters.dropped4.packets),
    ipv4DroppedBytes: BigInt(counters.dropped4.bytes),
    ipv6DroppedPackets: BigInt(counters.dropped6.packets),
    ipv6DroppedBytes: BigInt(counters.dropped6.bytes),
  };
}

/** The datapath's blocklist, if it has one (an eBPF datapath does; a memory datapath does not). */
export function blocklistOf(datapath: object): BlocklistReader | undefined {
  if (!('blocklist' in datapath)) return undefined;
  const b = datapath.blocklist as Partial<BlocklistReader> | undefined;
  return typeof b?.readCounters === 'function' ? (b as BlocklistReader) : undefined;
}

/**
 * Observes `blocklists` as `edgeplane.agent.blocklist.dropped` (packets dropped, a counter) and
 * `edgeplane.agent.blocklist.entries` (prefixes held, a gauge), each with the node, the role and
 * the address family ({@link readBlocklistStatus}). A blocklist that cannot be read (its datapath
 * closed) is skipped.
 * @returns what stops observing them.
 */
export function observeBlocklists(node: string, blocklists: readonly ObservedBlocklist[]): () => void {
  const meter = metrics.getMeter('@edgeplane/node-agent');
  const dropped = meter.createObservableCounter('edgeplane.agent.blocklist.dropped', { description: 'Packets the source blocklist dropped, per interface role and address family', unit: '{packet}' });
  const entries = meter.createObservableGauge('edgeplane.agent.blocklist.entries', { description: 'Prefixes the source blocklist holds, per interface role and address family', unit: '{prefix}' });
  const callback: BatchObservableCallback = (result) => {
    for (const { role, tables } of blocklists) {
      let s: BlocklistStatus;
      try {
        s = readBlocklistStatus(role, tables);
      } catch {
        continue;
      }
      const at = (family: 'ipv4' | 'ipv6'): Record<string, string> => ({ 'edgeplane.node': node, 'edgeplane.role': role, 'edgeplane.family': family });
      result.observe(dropped, Number(s.ipv4DroppedPackets), at('ipv4'));
      result.observe(dropped, Number(s.ipv6DroppedPackets), at('ipv6'));
      result.observe(entries, Number(s.ipv4Entries), at('ipv4'));
      result.observe(entries, Number(s.ipv6Entries), at('ipv6'));
    }
  };
  meter.addBatchObservableCallback(callback, [dropped, entries]);
  return () => meter.removeBatchObservableCallback(callback, [dropped, entries]);
}
