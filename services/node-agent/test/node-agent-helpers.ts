// Shared by the tests that drive NodeAgent directly (node-agent, node-agent-services): log
// entries signed by a test key on the real chain (IntentChain), the policy they mostly carry,
// and the agent's counters read through an OpenTelemetry reader of the test's own.
import { generateKeyPairSync } from 'node:crypto';
import { metrics } from '@opentelemetry/api';
import { AggregationTemporality, MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics';
import { Action, InterfaceRole, LOG_FORMAT_BLOCKLIST, LogEntry, Policy, Protocol, keyIdOf, signLogEntry, type PrefixListChange, type RevisionReport, type Rollout, type Service } from '@edgeplane/proto';
import type { IntentChain } from '@edgeplane/intent-log';
import type { NodeAgent } from '../src/agent/node-agent.js';

/** The test key that signs {@link advance}'s entries (one per test process). */
const { privateKey, publicKey } = generateKeyPairSync('ed25519');

/** The trusted keys for an IntentChain that takes {@link advance}'s entries. */
export const trustedKeys = new Map([[keyIdOf(publicKey), publicKey]]);

/** What one log entry changes. */
export interface Change {
  policies?: Policy[];
  services?: Service[];
  serviceDeletes?: string[];
  rollouts?: Rollout[];
  prefixLists?: PrefixListChange[];
}

/**
 * Appends an entry with `change`, signed by the test key, to `chain` and returns it (the chain
 * takes whatever is signed: a forged or skewed service too). Services carry the entry's revision
 * as their resource version, as the controller writes them. @throws what IntentChain.append throws.
 */
export function advance(chain: IntentChain, change: Change): LogEntry {
  const revision = chain.revision + 1n;
  const entry = LogEntry.fromPartial({
    revision,
    previousHash: Buffer.from(chain.lastHash),
    change: { upserts: change.policies ?? [], deletes: [], rollouts: change.rollouts ?? [], serviceUpserts: (change.services ?? []).map((s) => ({ ...s, metadata: { ...s.metadata!, resourceVersion: revision } })), serviceDeletes: change.serviceDeletes ?? [] },
    ...(change.prefixLists ? { blocklistChange: { prefixLists: change.prefixLists.map((c) => ({ ...c, metadata: { ...c.metadata!, resourceVersion: revision } })), blocks: [] } } : {}),
  });
  return chain.append(signLogEntry(entry, privateKey, change.prefixLists ? LOG_FORMAT_BLOCKLIST : undefined), revision).entry;
}

/**
 * Advances `chain` with `change` ({@link advance}), tells `agent` and waits until it has handled
 * the entry; returns the entry's report, the last of `reports` (where the agent's reports go).
 * @throws when the agent reported no outcome for the entry.
 */
export async function pushChange(agent: NodeAgent, chain: IntentChain, reports: readonly RevisionReport[], change: Change): Promise<RevisionReport> {
  const entry = advance(chain, change);
  agent.intentAdvanced(chain, [entry]);
  await agent.settled();
  const r = reports.at(-1)!;
  if (r.revision !== entry.revision) throw new Error(`no report for revision ${entry.revision}`);
  return r;
}

/** A policy denying TCP to `port` on both interface roles of every node. */
export function denyPort(name: string, port: number): Policy {
  return Policy.fromPartial({
    metadata: { name },
    spec: { interfaceRole: InterfaceRole.INTERFACE_ROLE_ALL, defaultAction: Action.ACTION_ALLOW, rules: [{ priority: 10, name: 'deny', protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: port, last: 0 }], action: Action.ACTION_DENY }] },
  });
}

/** A reader that collects on demand, cumulative, so a counter's value is its total so far. */
class TestReader extends MetricReader {
  constructor() {
    super({ aggregationTemporalitySelector: () => AggregationTemporality.CUMULATIVE });
  }
  protected override async onForceFlush(): Promise<void> {}
  protected override async onShutdown(): Promise<void> {}
}

/**
 * Makes a MeterProvider with a {@link TestReader} the global one (call once per test file, before
 * the agent's instruments are made) and returns what reads a counter: the sum of the points of
 * every counter called `name`, 0 when there is none.
 */
export function installTestMeter(): (name: string) => Promise<number> {
  const reader = new TestReader();
  metrics.setGlobalMeterProvider(new MeterProvider({ readers: [reader] }));
  return async (name) => {
    const { resourceMetrics } = await reader.collect();
    let sum = 0;
    for (const scope of resourceMetrics.scopeMetrics) for (const m of scope.metrics) if (m.descriptor.name === name) for (const p of m.dataPoints) sum += p.value as number;
    return sum;
  };
}
