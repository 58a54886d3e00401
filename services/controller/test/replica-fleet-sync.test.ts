// Replicas sharing fleet state (ReplicaFleetSync) and taking turns at the rollout lease
// (RolloutLease) on a real nats-server: each replica is its own NATS connection, registry and
// stores, as in separate controller processes.
import test, { type ExecutionContext } from 'ava';
import type { NatsConnection } from '@nats-io/transport-node';
import { Kvm, type KV } from '@nats-io/kv';
import { AgentHello, FLEET_STATUS_SUBJECT_PREFIX, MAX_REPLICA_STATE_BYTES, REPLICAS_BUCKET, ReplicaFleetState, RevisionOutcome, RevisionReport, type CounterReport } from '@edgeplane/proto';
import { CounterStore } from '../src/counter-store.js';
import { NodeRegistry } from '../src/node-registry.js';
import { ReplicaFleetSync } from '../src/replica-fleet-sync.js';
import { RolloutLease } from '../src/rollout-lease.js';
import { ServiceHealthStore } from '../src/service-health-store.js';
import { natsServerFixture } from '../../../test/support/nats.js';

const nats = natsServerFixture(test, 'ctl-fleet-sync');

async function bucket(): Promise<{ nc: NatsConnection; kv: KV }> {
  const nc = await nats.connect();
  return { nc, kv: await new Kvm(nc).create(REPLICAS_BUCKET, { history: 1, ttl: 60_000 }) };
}

/**
 * One replica: a NATS connection, a registry without persistence, stores, and its sync, closed
 * when the test ends. Not at the end of the file: every replica left running merges what the
 * later tests publish (the 12,000 nodes of the large delta, and the snapshot each reads of a
 * replica new to it), which multiplied that test's work and made it miss its deadline on a
 * loaded machine.
 */
async function replica(t: ExecutionContext, id: string, timing: { idleMs?: number; expireMs?: number; snapshotMs?: number; refreshMs?: number; countersMs?: number; urgent?: (node: string) => boolean } = {}): Promise<{ nc: NatsConnection; registry: NodeRegistry; counters: CounterStore; health: ServiceHealthStore; sync: ReplicaFleetSync }> {
  const { nc, kv } = await bucket();
  const registry = new NodeRegistry({ load: async () => [], save: async () => undefined });
  const counters = new CounterStore();
  const health = new ServiceHealthStore();
  const sync = new ReplicaFleetSync(nc, kv, { registry, counters, health }, { controllerId: id, deltaMs: 50, snapshotMs: 500, expireMs: 1500, ...timing });
  await sync.start();
  t.teardown(() => sync.close());
  return { nc, registry, counters, health, sync };
}

async function until(what: string, pred: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

const hello = (name: string): AgentHello => AgentHello.fromPartial({ nodeName: name, labels: { role: 'edge' }, receivedRevision: 3n, appliedRevision: 3n });
const counters = (packets: bigint): CounterReport => ({ startTime: undefined, loadBalancer: undefined, shadow: undefined, endTime: undefined, appliedRevision: 3n, rules: [{ rule: { policy: 'p', priority: 1 }, ruleName: 'r', packets, bytes: packets * 100n, rateLimitedPackets: 0n }], interfaces: [], conntrack: [], blocklists: [] });

test.serial('replica fleet sync - another replica sees a node\'s status, last outcome, counters and backend health, and keeps its status when the replica falls silent', async (t) => {
  const a = await replica(t, 'a');
  const b = await replica(t, 'b');
  a.registry.hello(hello('edge-1'), 's1');
  a.counters.add('edge-1', counters(5n));
  a.health.add('edge-1', { replace: true, revision: 3n, backends: [{ service: 'web', address: '10.0.0.1', port: 80, healthy: false, reason: 'connect refused', since: new Date(1_000_000) }] });
  a.sync.changed('edge-1');
  await until('edge-1 at b', () => b.registry.get('edge-1')?.status?.connected === true && b.health.verdict('edge-1', 'web', '10.0.0.1', 80) !== undefined);
  t.false(b.registry.isLocal('edge-1'));
  t.deepEqual(b.counters.nodeRules('edge-1').map((c) => c.packets), [5n]);
  t.deepEqual(b.health.verdict('edge-1', 'web', '10.0.0.1', 80), { healthy: false, reason: 'connect refused', sinceMs: 1_000_000 });

  // Counters alone: b's totals follow, its node watchers hear nothing (as for a local counter report).
  const events: string[] = [];
  await b.registry.flush(); // the hello's event, told on b's tick, is not what this checks
  b.registry.watch((e) => void events.push(e.node?.name ?? ''));
  const blocklist = { role: 'uplink', ipv4Entries: 10n, ipv6Entries: 0n, ipv4DroppedPackets: 9n, ipv4DroppedBytes: 900n, ipv6DroppedPackets: 0n, ipv6DroppedBytes: 0n };
  a.counters.add('edge-1', { ...counters(1n), blocklists: [blocklist] });
  a.sync.changed('edge-1', false);
  await until('the counters at b', () => b.counters.nodeRules('edge-1')[0]?.packets === 6n);
  t.deepEqual(events, []);
  t.deepEqual(b.counters.nodeBlocklists('edge-1'), [blocklist], 'the blocklist status travels with the counters');

  a.registry.report('edge-1', RevisionReport.fromPartial({ revision: 4n, outcome: RevisionOutcome.REVISION_OUTCOME_NACK, reason: 'bad map', appliedRevision: 3n }));
  a.counters.add('edge-1', counters(1n));
  a.sync.changed('edge-1');
  await until('the NACK at b', () => b.registry.get('edge-1')?.status?.lastOutcomeRevision === 4n);
  t.is(b.registry.get('edge-1')!.status!.lastOutcome, RevisionOutcome.REVISION_OUTCOME_NACK);
  t.is(b.registry.get('edge-1')!.status!.lastError, 'bad map');
  // Told on the registry's next tick (its changes are batched).
  await until('the NACK told to watchers', () => events.length > 0);
  t.deepEqual(events, ['edge-1'], 'the NACK is news');
  t.deepEqual(b.counters.nodeRules('edge-1').map((c) => c.packets), [7n], 'totals, not the last delta');

  // Replica a is cut off (as by kill -9: no goodbye): b marks its node disconnected, nothing else.
  await a.nc.close();
  await until('edge-1 disconnected at b', () => b.registry.get('edge-1')?.status?.connected === false);
  const s = b.registry.get('edge-1')!.status!;
  t.is(s.lastOutcome, RevisionOutcome.REVISION_OUTCOME_NACK);
  t.is(s.lastOutcomeRevision, 4n);
  t.is(s.appliedRevision, 3n);
  t.is(b.health.serviceVerdicts('edge-1', 'web'), undefined, 'backend health of a node nobody hears is unknown');
  t.deepEqual(b.counters.nodeRules('edge-1').map((c) => c.packets), [7n], 'counters kept for the next replica to add to');
});

test.serial('replica fleet sync - a replica that starts later learns idle nodes from the stored snapshots; the newest connection of a node wins', async (t) => {
  const a = await replica(t, 'a2');
  const b = await replica(t, 'b2');
  a.registry.hello(hello('edge-2'), 's1');
  a.sync.changed('edge-2');
  await until('edge-2 at b', () => b.registry.get('edge-2')?.status?.connected === true);
  // Nothing changes any more: c hears no delta with edge-2, only a's snapshot, once stored.
  const { kv } = await bucket();
  let stored = false;
  while (!stored) {
    const e = await kv.get(`snapshot.${a.sync.replica}.0`);
    stored = e?.operation === 'PUT' && ReplicaFleetState.decode(e.value).nodes.some((n) => n.node?.name === 'edge-2');
    if (!stored) await new Promise((r) => setTimeout(r, 50));
  }
  const c = await replica(t, 'c2');
  t.true(c.registry.get('edge-2')?.status?.connected, 'from the snapshot read at start');

  // edge-2 moves to b (a newer connection); a's late word that it lost it does not win anywhere.
  await new Promise((r) => setTimeout(r, 5));
  b.registry.hello(hello('edge-2'), 's2');
  b.sync.changed('edge-2');
  await until('edge-2 at c from b', () => c.registry.get('edge-2')?.status?.connectTime?.getTime() === b.registry.get('edge-2')!.status!.connectTime!.getTime());
  a.registry.disconnect('edge-2', 's1');
  a.sync.changed('edge-2');
  // A marker after a's delta: once c has a's next node, it has seen a's disconnect of edge-2.
  a.registry.hello(hello('marker'), 'm');
  a.sync.changed('marker');
  await until('marker at c', () => c.registry.get('marker') !== undefined);
  t.true(c.registry.get('edge-2')!.status!.connected, 'c keeps b\'s newer connection');
  t.true(b.registry.get('edge-2')!.status!.connected, 'b owns the node locally');
  t.true(b.registry.isLocal('edge-2'));
});

test.serial('replica fleet sync - a replica heard again after it fell silent: its idle nodes are connected again, from its snapshot', async (t) => {
  // d speaks every 1.5 s when idle, e calls a replica silent after 0.3 s: e keeps losing and
  // hearing d again, as after a short NATS partition.
  const d = await replica(t, 'd3', { idleMs: 1500 });
  const e = await replica(t, 'e3', { expireMs: 300 });
  d.registry.hello(hello('edge-3'), 's1');
  d.sync.changed('edge-3');
  await until('edge-3 at e', () => e.registry.get('edge-3')?.status?.connected === true);
  await until('d silent for e', () => e.registry.get('edge-3')?.status?.connected === false);
  // Nothing about edge-3 changes at d: only its snapshot brings it back.
  await until('edge-3 connected again at e', () => e.registry.get('edge-3')?.status?.connected === true);
  t.false(e.registry.isLocal('edge-3'));
});

test.serial('replica fleet sync - a snapshot stored after a node changed carries its new state (an unchanged node\'s encoding is reused, a changed one\'s is not)', async (t) => {
  const a = await replica(t, 'a6');
  a.registry.hello(hello('edge-6'), 's1');
  a.registry.hello(hello('edge-7'), 's1');
  a.sync.changed('edge-6');
  a.sync.changed('edge-7');
  // A snapshot (every 500 ms here) holds both as they said hello.
  await new Promise((r) => setTimeout(r, 1200));
  a.registry.report('edge-6', RevisionReport.fromPartial({ revision: 4n, outcome: RevisionOutcome.REVISION_OUTCOME_NACK, reason: 'bad map', appliedRevision: 3n }));
  a.sync.changed('edge-6');
  // The next snapshots are stored after the change; a replica that starts now learns both from them alone.
  await new Promise((r) => setTimeout(r, 1200));
  const c = await replica(t, 'c6');
  await until('edge-6 and edge-7 at c', () => c.registry.get('edge-6') !== undefined && c.registry.get('edge-7') !== undefined);
  t.is(c.registry.get('edge-6')!.status!.lastOutcomeRevision, 4n);
  t.is(c.registry.get('edge-6')!.status!.lastError, 'bad map');
  t.is(c.registry.get('edge-7')!.status!.connected, true);
});

test.serial('replica fleet sync - an unchanged snapshot is not stored again until refreshMs; a replica that starts with only an old snapshot of a live replica keeps its nodes connected', async (t) => {
  const a = await replica(t, 'a8', { snapshotMs: 100, refreshMs: 600_000 });
  const { kv } = await bucket();
  const key = `snapshot.${a.sync.replica}.0`;
  const storedWith = async (what: (s: ReplicaFleetState) => boolean): Promise<number> => {
    for (;;) {
      const e = await kv.get(key);
      if (e?.operation === 'PUT' && what(ReplicaFleetState.decode(e.value))) return e.revision;
      await new Promise((r) => setTimeout(r, 25));
    }
  };
  a.registry.hello(hello('edge-8'), 's1');
  a.sync.changed('edge-8');
  const first = await storedWith((s) => s.nodes.some((n) => n.node?.name === 'edge-8'));
  // Twenty snapshot ticks with nothing changed: the stored snapshot is the same entry.
  await new Promise((r) => setTimeout(r, 2000));
  t.is((await kv.get(key))?.revision, first, 'no put while nothing changed');
  // A change is stored at the next tick.
  a.registry.report('edge-8', RevisionReport.fromPartial({ revision: 5n, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, appliedRevision: 5n }));
  a.sync.changed('edge-8');
  const second = await storedWith((s) => s.nodes.some((n) => n.node?.status?.lastOutcomeRevision === 5n));
  t.true(second > first);
  // The snapshot is now older than c's expireMs (1.5 s): c must not call a, which speaks every
  // idleMs (1 s), silent for that alone.
  await new Promise((r) => setTimeout(r, 2000));
  const c = await replica(t, 'c8');
  t.true(c.registry.get('edge-8')?.status?.connected, 'connected from the old snapshot, right after the start');
  await new Promise((r) => setTimeout(r, 2500));
  t.true(c.registry.get('edge-8')?.status?.connected, 'still connected: a was heard');
  t.is(c.registry.get('edge-8')?.status?.lastOutcomeRevision, 5n);
});

test.serial('replica fleet sync - alone, a replica sends no node (nobody listens); a replica that starts later is sent what its snapshot does not have yet, status and counters', async (t) => {
  const spy = await nats.connect();
  t.teardown(() => spy.close());
  const heard: string[] = [];
  let deltas = 0;
  let from = '';
  spy.subscribe(`${FLEET_STATUS_SUBJECT_PREFIX}.*`, {
    callback: (_e, m) => {
      const state = ReplicaFleetState.decode(m.data);
      if (state.replica !== from) return;
      deltas++;
      heard.push(...state.nodes.map((n) => `${n.node?.name}:${n.node?.status?.appliedRevision}:${n.rules[0]?.packets ?? '-'}`));
    },
  });
  await spy.flush();
  const a = await replica(t, 'a9', { snapshotMs: 200 });
  // Replicas of earlier tests that were cut from NATS left snapshots: heard until they expire.
  await until('a alone', () => a.sync.replicas().length === 1);
  from = a.sync.replica;
  a.registry.hello(hello('edge-9'), 's1');
  a.sync.changed('edge-9');
  // The snapshot (every 200 ms here) holds edge-9 at revision 3, without counters.
  await new Promise((r) => setTimeout(r, 500));
  a.counters.add('edge-9', counters(7n));
  a.sync.changed('edge-9', false);
  a.registry.report('edge-9', RevisionReport.fromPartial({ revision: 4n, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, appliedRevision: 4n }));
  a.sync.changed('edge-9', true);
  await new Promise((r) => setTimeout(r, 1200));
  t.true(deltas > 0, 'liveness went out');
  t.deepEqual(heard, [], `no delta carried a node (replicas heard: ${a.sync.replicas().join(', ')})`);
  // b reads a's snapshot as it starts, and a sends b every node it owns once it hears b.
  const b = await replica(t, 'b9');
  await until('edge-9 at b', () => b.registry.get('edge-9') !== undefined);
  await until('the counters at b, sent when a heard b', () => b.counters.nodeRules('edge-9')[0]?.packets === 7n, 5000);
  t.is(b.registry.get('edge-9')?.status?.appliedRevision, 4n);
  await until('edge-9 in a delta, once a heard b', () => heard.includes('edge-9:4:7'), 5000);
});

test.serial('replica fleet sync - counters alone travel without the node (counters_only), and are taken only for the node as held from that replica\'s same connection', async (t) => {
  const spy = await nats.connect();
  t.teardown(() => spy.close());
  const a = await replica(t, 'a10');
  const b = await replica(t, 'b10');
  const sent: ReplicaFleetState[] = [];
  spy.subscribe(`${FLEET_STATUS_SUBJECT_PREFIX}.${a.sync.replica}`, { callback: (_e, m) => void sent.push(ReplicaFleetState.decode(m.data)) });
  await spy.flush();
  await until('a and b hear each other', () => a.sync.replicas().includes(b.sync.replica) && b.sync.replicas().includes(a.sync.replica));
  a.registry.hello(hello('edge-10'), 's1');
  a.counters.add('edge-10', counters(5n));
  a.sync.changed('edge-10');
  await until('edge-10 at b', () => b.counters.nodeRules('edge-10')[0]?.packets === 5n);
  const connectTime = a.registry.get('edge-10')!.status!.connectTime!;

  // A counter report at a: the delta carries the counters, the node's name, connect and last-seen
  // time, and nothing else of the node; b keeps the node it holds (labels, revisions).
  a.registry.seen('edge-10');
  a.counters.add('edge-10', counters(2n));
  a.sync.changed('edge-10', false);
  await until('the counters at b', () => b.counters.nodeRules('edge-10')[0]?.packets === 7n);
  const slim = sent.flatMap((m) => m.nodes).filter((n) => n.node?.name === 'edge-10').at(-1)!;
  t.true(slim.countersOnly);
  t.false(slim.statusChanged);
  t.deepEqual(slim.node!.labels, {});
  t.is(slim.node!.status!.appliedRevision, 0n, 'no status but the times');
  t.is(slim.node!.status!.connectTime!.getTime(), connectTime.getTime());
  const held = b.registry.get('edge-10')!;
  t.deepEqual(held.labels, { role: 'edge' });
  t.is(held.status!.appliedRevision, 3n);
  t.true(held.status!.connected);
  t.is(held.status!.lastSeenTime!.getTime(), a.registry.get('edge-10')!.status!.lastSeenTime!.getTime(), 'the last-seen time moves');

  // Counters alone that b cannot place are dropped: another replica's word on a node b holds
  // from a, one on a connection b does not hold, and one on a node b never saw. A whole node
  // published after them (same subject, so in order) tells when b has read them.
  // Sequences above any a sent: the owner check decides, not the order.
  const rogue = (sequence: bigint, nodes: { name: string; connectTime: Date; packets: bigint }[], marker?: string): void => {
    const state = ReplicaFleetState.fromPartial({
      replica: 'rogue10',
      sequence,
      nodes: [
        ...nodes.map((n) => ({ node: { name: n.name, status: { connectTime: n.connectTime } }, countersOnly: true, rules: counters(n.packets).rules })),
        ...(marker ? [{ node: { name: marker, status: { connected: true, connectTime: new Date() } }, statusChanged: true }] : []),
      ],
    });
    spy.publish(`${FLEET_STATUS_SUBJECT_PREFIX}.rogue10`, ReplicaFleetState.encode(state).finish());
  };
  rogue(1_000_001n, [
    { name: 'edge-10', connectTime, packets: 1000n },
    { name: 'edge-10', connectTime: new Date(connectTime.getTime() + 1), packets: 1000n },
    { name: 'never-seen-10', connectTime, packets: 1000n },
  ], 'marker-10');
  await until('the marker at b', () => b.registry.get('marker-10') !== undefined);
  t.deepEqual(b.counters.nodeRules('edge-10').map((c) => c.packets), [7n]);
  t.is(b.registry.get('never-seen-10'), undefined);
  t.deepEqual(b.counters.nodeRules('never-seen-10'), []);
  // From the node's owner, only for the connection b holds.
  rogue(1_000_002n, [], 'rogue-node-10');
  await until('the rogue\'s own node at b', () => b.registry.get('rogue-node-10') !== undefined);
  const rogueTime = b.registry.get('rogue-node-10')!.status!.connectTime!;
  rogue(1_000_003n, [{ name: 'rogue-node-10', connectTime: new Date(rogueTime.getTime() + 1), packets: 50n }], 'marker-10b');
  await until('the second marker at b', () => b.registry.get('marker-10b') !== undefined);
  t.deepEqual(b.counters.nodeRules('rogue-node-10'), [], 'another connection of the node');
  rogue(1_000_004n, [{ name: 'rogue-node-10', connectTime: rogueTime, packets: 50n }]);
  await until('counters of the connection held', () => b.counters.nodeRules('rogue-node-10')[0]?.packets === 50n);
});

test.serial('replica fleet sync - with countersMs, counters alone wait for the batch unless a rollout judges the node; a status change and close() send them at once', async (t) => {
  const a = await replica(t, 'a11', { countersMs: 600_000, urgent: (node) => node === 'hot-11' });
  const b = await replica(t, 'b11');
  await until('a and b hear each other', () => a.sync.replicas().includes(b.sync.replica) && b.sync.replicas().includes(a.sync.replica));
  for (const n of ['hot-11', 'cold-11', 'warm-11']) {
    a.registry.hello(hello(n), `s-${n}`);
    a.sync.changed(n);
  }
  await until('the nodes at b', () => ['hot-11', 'cold-11', 'warm-11'].every((n) => b.registry.get(n) !== undefined));
  let markers = 0;
  /** A node changed at a after what came before: once b has it, b has read a's earlier deltas. */
  const behind = async (): Promise<void> => {
    const name = `marker-11-${++markers}`;
    a.registry.hello(hello(name), 'm');
    a.sync.changed(name);
    await until(name, () => b.registry.get(name) !== undefined);
  };

  a.counters.add('cold-11', counters(5n));
  a.sync.changed('cold-11', false, true);
  a.counters.add('hot-11', counters(5n));
  a.sync.changed('hot-11', false, true);
  await until('the judged node\'s counters at b', () => b.counters.nodeRules('hot-11')[0]?.packets === 5n);
  await behind();
  t.deepEqual(b.counters.nodeRules('cold-11'), [], 'the other node\'s wait for the batch');
  // Backend health alone (of a node no rollout judges) is not batched: a verdict that flips is news.
  a.health.add('warm-11', { replace: true, revision: 3n, backends: [{ service: 'web', address: '10.0.0.1', port: 80, healthy: false, reason: 'connect refused', since: new Date(1_000_000) }] });
  a.sync.changed('warm-11', false);
  await until('the verdict at b', () => b.health.verdict('warm-11', 'web', '10.0.0.1', 80) !== undefined);
  a.health.forget('warm-11');
  a.sync.changed('warm-11', false);
  await until('the verdict gone at b', () => b.health.verdict('warm-11', 'web', '10.0.0.1', 80) === undefined);

  // A status change sends the whole node, its counters with it.
  a.registry.report('cold-11', RevisionReport.fromPartial({ revision: 4n, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, appliedRevision: 4n }));
  a.sync.changed('cold-11');
  await until('the ACK at b', () => b.registry.get('cold-11')?.status?.lastOutcomeRevision === 4n);
  t.deepEqual(b.counters.nodeRules('cold-11').map((c) => c.packets), [5n]);

  a.counters.add('cold-11', counters(2n));
  a.sync.changed('cold-11', false, true);
  await behind();
  t.deepEqual(b.counters.nodeRules('cold-11').map((c) => c.packets), [5n], 'held again');
  // Closing (a replica's shutdown) sends what was held: the agents' next replica starts from it.
  await a.sync.close();
  await until('the held counters at b', () => b.counters.nodeRules('cold-11')[0]?.packets === 7n);
  t.pass();
});

test.serial('replica fleet sync - counters held back go out with the next batch', async (t) => {
  const a = await replica(t, 'a12', { countersMs: 300, urgent: () => false });
  const b = await replica(t, 'b12');
  await until('a and b hear each other', () => a.sync.replicas().includes(b.sync.replica) && b.sync.replicas().includes(a.sync.replica));
  a.registry.hello(hello('cold-12'), 's');
  a.sync.changed('cold-12');
  await until('cold-12 at b', () => b.registry.get('cold-12') !== undefined);
  a.counters.add('cold-12', counters(3n));
  a.sync.changed('cold-12', false, true);
  await until('the batch at b', () => b.counters.nodeRules('cold-12')[0]?.packets === 3n, 5000);
  t.pass();
});

test.serial('replica fleet sync - a delta larger than MAX_REPLICA_STATE_BYTES goes out in messages within it, and every node arrives', async (t) => {
  const spy = await nats.connect();
  const sizes: number[] = [];
  spy.subscribe(`${FLEET_STATUS_SUBJECT_PREFIX}.*`, { callback: (_e, m) => void sizes.push(m.data.length) });
  await spy.flush();
  // a stores no snapshot while the test runs (one of 12,000 nodes every 500 ms is work this test
  // does not check): b has heard a since its start, so the nodes reach it by the delta alone.
  const a = await replica(t, 'big-a', { snapshotMs: 600_000 });
  const b = await replica(t, 'big-b');
  // Names long enough that the 12,000 records exceed MAX_REPLICA_STATE_BYTES however the ticks
  // group them (~80 bytes a record with 10-character names made 0.98 MB: one message, no split).
  const names = Array.from({ length: 12_000 }, (_, i) => `bulk-node-of-a-rather-long-name-${i}`);
  for (const name of names) {
    a.registry.hello(hello(name), 's');
    a.counters.add(name, counters(1n));
    a.sync.changed(name);
  }
  try {
    await until('every node at b', () => names.every((n) => b.registry.get(n) !== undefined));
    // The spy's connection may read the delta after b's did.
    await until('the delta at the spy, in parts', () => sizes.filter((n) => n > 1000).length >= 2);
    t.true(Math.max(...sizes) <= MAX_REPLICA_STATE_BYTES, `largest message ${Math.max(...sizes)} bytes`);
    t.true(
      sizes.reduce((sum, n) => sum + n, 0) > MAX_REPLICA_STATE_BYTES,
      'the delta was larger than one message may be',
    );
  } catch (error) {
    t.log(`messages at the spy: ${sizes.length}, sizes ${JSON.stringify(sizes.slice(0, 20))}`);
    throw error;
  }
});

test.serial('rollout lease - one holder at a time; a silent holder loses it to another replica; closing gives it up', async (t) => {
  const { kv: kvA } = await bucket();
  const { kv: kvB } = await bucket();
  // held is true for ttlMs - renewMs after a renewal began: 4.8 s, so the checks right after a
  // tick hold however slow a loaded machine makes one NATS round trip.
  const a = new RolloutLease(kvA, { holder: 'a', renewMs: 200, ttlMs: 5000 });
  const b = new RolloutLease(kvB, { holder: 'b', renewMs: 200, ttlMs: 5000 });
  t.teardown(() => a.close());
  t.teardown(() => b.close());
  await a.tick(); // a takes the free lease, then falls silent (never ticks again)
  t.true(a.held);
  b.start();
  await b.tick();
  t.false(b.held, 'b waits while a\'s lease is fresh');
  await until('b takes the lease a stopped renewing', () => b.held);
  t.false(a.held, 'a stopped acting before b could take it');
  await a.tick();
  t.false(a.held, 'a\'s late renewal fails: b holds it');
  await b.close();
  await b.close();
  await a.tick();
  t.true(a.held, 'b gave the lease up on close: a takes it at once');
});

test.serial('replica fleet sync - closing twice is safe', async (t) => {
  const r = await replica(t, 'twice');
  await r.sync.close();
  await r.sync.close();
  t.pass();
});
