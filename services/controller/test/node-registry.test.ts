// NodeRegistry's cost per change (issue 15): one revision's outcomes from many agents are counted
// per revision and told to listeners once per tick, each node once; ACKs and heartbeats cause no
// durable write; NACKs are written once per node and tick. CounterStore's fleet totals
// follow deltas, replaced totals and forgotten nodes. No NATS needed: the backend records writes.
import test from 'ava';
import { Node, NodeEventType, RevisionOutcome, RevisionReport, type AgentHello, type WatchNodesResponse } from '@edgeplane/proto';
import { CounterStore } from '../src/counter-store.js';
import { NodeRegistry } from '../src/node-registry.js';

const N = 500;

function recording(): { saved: string[]; backend: { load(): Promise<Node[]>; save(n: Node): Promise<void> } } {
  const saved: string[] = [];
  return { saved, backend: { load: async () => [], save: async (n) => void saved.push(n.name) } };
}

const hello = (name: string): AgentHello => ({ nodeName: name, labels: { fleet: 'sim' }, info: undefined, interfaces: [], receivedRevision: 1n, appliedRevision: 1n, sessionId: '', conditions: [], appliedUnknown: false, lastReport: undefined });
const ack = (revision: bigint): RevisionReport => RevisionReport.fromPartial({ revision, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, appliedRevision: revision });
const nack = (revision: bigint, reason: string): RevisionReport => RevisionReport.fromPartial({ revision, outcome: RevisionOutcome.REVISION_OUTCOME_NACK, appliedRevision: revision - 1n, reason });
const names = Array.from({ length: N }, (_, i) => `edge-${i}`);

/** A registry whose tick never fires by itself in the test (flush() is the tick). */
async function registryWithFleet(): Promise<{ registry: NodeRegistry; saved: string[]; batches: (readonly WatchNodesResponse[])[] }> {
  const { saved, backend } = recording();
  const registry = new NodeRegistry(backend, { batchMs: 3_600_000 });
  names.forEach((n, i) => registry.hello(hello(n), `s${i}`));
  await registry.flush();
  saved.length = 0;
  const batches: (readonly WatchNodesResponse[])[] = [];
  registry.watchBatch((events) => void batches.push(events));
  return { registry, saved, batches };
}

test('NodeRegistry - one revision\'s ACKs from N agents are one batch with each node once, counted per revision, and no durable write', async (t) => {
  const { registry, saved, batches } = await registryWithFleet();
  t.teardown(() => registry.close());
  for (const n of names) registry.report(n, ack(2n));
  // A node that reports twice within the tick (a resend) is told once, in its newest state.
  registry.report('edge-0', ack(2n));
  registry.seen('edge-1');
  t.deepEqual(batches, [], 'nothing told before the tick');
  t.deepEqual(registry.outcomes(2n), { acked: N, nacked: 0 }, 'counted as the reports arrive');
  await registry.flush();
  t.is(batches.length, 1, 'one batch for the whole revision');
  t.is(batches[0]!.length, N);
  t.is(new Set(batches[0]!.map((e) => e.node!.name)).size, N, 'each node once');
  t.true(batches[0]!.every((e) => e.type === NodeEventType.NODE_EVENT_TYPE_MODIFIED && e.node!.status!.lastOutcomeRevision === 2n));
  t.deepEqual(saved, [], 'ACKs are never written on their own (the hello brings the newest outcome back)');
  // The node's next write carries them: its disconnect.
  registry.disconnect('edge-3', 's3');
  await registry.flush();
  t.deepEqual(saved, ['edge-3']);

  // The next revision: the counts move with each node's newest outcome.
  saved.length = 0;
  for (const n of names.slice(0, 10)) registry.report(n, ack(3n));
  t.deepEqual(registry.outcomes(2n), { acked: N - 10, nacked: 0 });
  t.deepEqual(registry.outcomes(3n), { acked: 10, nacked: 0 });
  t.is(registry.nackedSince(2n), 0);
});

test('NodeRegistry - NACKs are written at the tick, once per node however many changes it had; heartbeats write nothing and tell nobody', async (t) => {
  const { registry, saved, batches } = await registryWithFleet();
  t.teardown(() => registry.close());
  for (const n of names) registry.seen(n);
  await registry.flush();
  t.deepEqual(saved, [], 'last-seen times alone are never written');
  t.deepEqual(batches, [], 'nor told');

  registry.report('edge-7', nack(4n, 'bad map'));
  registry.report('edge-7', nack(4n, 'bad map again'));
  registry.report('edge-8', nack(4n, 'bad map'));
  t.is(registry.nackedSince(4n), 2);
  t.is(registry.nackedSince(5n), 0);
  t.deepEqual(registry.outcomes(4n), { acked: 0, nacked: 2 });
  await registry.flush();
  t.deepEqual(saved.sort(), ['edge-7', 'edge-8'], 'one write per NACKing node');
  t.is(batches.length, 1);
  t.is(registry.get('edge-7')!.status!.lastError, 'bad map again', 'the record updated in place, newest wins');

  // A node from another replica moves its count too.
  const remote = Node.fromPartial({ ...registry.get('edge-7')!, name: 'far-1', status: { connected: true, lastOutcome: RevisionOutcome.REVISION_OUTCOME_ACK, lastOutcomeRevision: 4n, appliedRevision: 4n } });
  t.true(registry.applyRemote(remote));
  t.deepEqual(registry.outcomes(4n), { acked: 1, nacked: 2 });
  t.true(registry.applyRemote(Node.fromPartial({ ...remote, status: { ...remote.status, lastOutcome: RevisionOutcome.REVISION_OUTCOME_NACK } })));
  t.deepEqual(registry.outcomes(4n), { acked: 0, nacked: 3 });
});

test('NodeRegistry - closing twice is safe; after close changes are told at once', async (t) => {
  const { registry, batches } = await registryWithFleet();
  await registry.close();
  await registry.close();
  registry.report('edge-1', ack(9n));
  t.is(batches.length, 1);
});

test('CounterStore - fleet totals follow deltas, a replaced node\'s totals and a forgotten node, without walking the nodes', (t) => {
  const store = new CounterStore();
  const report = (policy: string, packets: bigint) => ({ startTime: undefined, loadBalancer: undefined, shadow: undefined, endTime: undefined, appliedRevision: 1n, interfaces: [], conntrack: [], blocklists: [], rules: [{ rule: { policy, priority: 1 }, ruleName: 'r', packets, bytes: packets * 10n, rateLimitedPackets: 0n }] });
  store.add('a', report('p', 5n));
  store.add('b', report('p', 7n));
  store.add('b', report('q', 1n));
  store.add('a', report('p', 1n));
  const totals = (policy?: string) => store.fleetRules(policy).map((c) => [c.rule!.policy, c.packets, c.bytes]);
  t.deepEqual(totals(), [['p', 13n, 130n], ['q', 1n, 10n]]);
  t.deepEqual(totals('q'), [['q', 1n, 10n]]);
  // The same sums as adding up the nodes one by one.
  t.deepEqual(store.fleetRules(undefined, ['a', 'b']), store.fleetRules());
  store.replace('b', { rules: [{ rule: { policy: 'p', priority: 1 }, ruleName: 'r', packets: 100n, bytes: 1000n, rateLimitedPackets: 0n }], interfaces: [], conntrack: [] });
  t.deepEqual(totals(), [['p', 106n, 1060n]], 'b\'s totals replaced; its q rule gone with them');
  store.forget('a');
  t.deepEqual(totals(), [['p', 100n, 1000n]]);
  store.forget('b');
  t.deepEqual(totals(), []);
  // What fleetRules returns is a copy: changing it changes nothing kept.
  store.add('c', report('p', 1n));
  store.fleetRules()[0]!.packets = 99n;
  t.deepEqual(totals(), [['p', 1n, 10n]]);
});
