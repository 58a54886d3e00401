// ConnectionRelay on a real nats-server: two replicas, each its own NATS connection, registry and
// AgentSessions (the controller's own code), one agent stream held by replica B and played by the
// test, which answers B's ConnectionsQuery. Replica A's ListConnections reaches it through B:
// rows in parts within MAX_RELAYED_CONNECTIONS_PER_MESSAGE, counts, the agent's deadline, and
// errors told apart. Processes with real agents: test/replicas.test.ts.
import test from 'ava';
import type { NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import {
  FLEET_CONNECTIONS_SUBJECT_PREFIX,
  ListConnectionsRequest,
  MAX_CONNECTIONS_LIMIT,
  MAX_RELAYED_CONNECTIONS_PER_MESSAGE,
  Protocol,
  REPLICAS_BUCKET,
  type Connection,
  type ConnectRequest,
  type ConnectResponse,
  type ConnectionsQuery,
} from '@edgeplane/proto';
import { AgentSessions } from '../src/agent-sessions.js';
import { ConnectionRelay } from '../src/connection-relay.js';
import { CounterStore } from '../src/counter-store.js';
import { DeadlineExceededError, PreconditionError, UnavailableError } from '../src/errors.js';
import { FleetApi } from '../src/fleet-api.js';
import { NodeRegistry } from '../src/node-registry.js';
import { ReplicaFleetSync } from '../src/replica-fleet-sync.js';
import { natsServerFixture } from '../../../test/support/nats.js';

const nats = natsServerFixture(test, 'ctl-conn-relay');
const closers: (() => Promise<void> | void)[] = [];
nats.atEnd(async () => {
  for (const c of closers.reverse()) await Promise.resolve(c()).catch(() => undefined);
});

interface Replica {
  nc: NatsConnection;
  registry: NodeRegistry;
  sessions: AgentSessions;
  sync: ReplicaFleetSync;
  relay: ConnectionRelay;
  api: FleetApi;
}

async function replica(id: string): Promise<Replica> {
  const nc = await nats.connect();
  const kv = await new Kvm(nc).create(REPLICAS_BUCKET, { history: 1, ttl: 60_000 });
  const registry = new NodeRegistry({ load: async () => [], save: async () => undefined }, { batchMs: 10 });
  const counters = new CounterStore();
  const sync = new ReplicaFleetSync(nc, kv, { registry, counters }, { controllerId: id, deltaMs: 50, snapshotMs: 500, expireMs: 3000 });
  await sync.start();
  closers.push(() => sync.close());
  const sessions = new AgentSessions(registry, counters, {
    controllerId: id,
    keys: [],
    settings: { counterInterval: undefined, heartbeatInterval: { seconds: 60n, nanos: 0 }, logStream: '', logSubject: '' },
    currentRevision: () => 1n,
    onNodeChanged: (node, status) => sync.changed(node, status),
  });
  closers.push(() => sessions.closeAll());
  const relay = new ConnectionRelay(nc, sessions, { replica: sync.replica, ownerOf: (n) => sync.ownerOf(n), marginMs: 1000 });
  relay.start();
  closers.push(() => relay.close());
  const api = new FleetApi(registry, counters, () => 1n, undefined, { querier: relay, timeoutMs: 2000 });
  return { nc, registry, sessions, sync, relay, api };
}

/**
 * An agent stream in this process: the test reads what the controller sends and answers its
 * connection queries with `answer` (no answer: undefined).
 */
function agentStream(node: string, answer: (q: ConnectionsQuery) => ConnectRequest | undefined): { stream: Parameters<AgentSessions['serve']>[0]; queries: ConnectionsQuery[]; end(): void } {
  const hello: ConnectRequest = { message: { $case: 'hello', hello: { nodeName: node, labels: {}, info: undefined, interfaces: [], receivedRevision: 1n, appliedRevision: 1n, sessionId: 's', conditions: [], appliedUnknown: false, lastReport: undefined } } };
  let deliver: ((m: ConnectRequest) => void) | undefined;
  let ended: (() => void) | undefined;
  const queries: ConnectionsQuery[] = [];
  return {
    queries,
    end: () => ended?.(),
    stream: {
      listen: (message, end) => {
        deliver = message;
        ended = end;
        setImmediate(() => message(hello));
      },
      send: (m: ConnectResponse) => {
        if (m.message?.$case !== 'listConnections') return;
        queries.push(m.message.listConnections);
        const a = answer(m.message.listConnections);
        if (a) setImmediate(() => deliver?.(a));
      },
      end: () => undefined,
    },
  };
}

const row = (i: number): Connection => ({
  role: 'uplink', family: 4, protocol: Protocol.PROTOCOL_TCP, source: `198.18.${(i >> 8) & 255}.${i & 255}`, sourcePort: 40_000 + (i % 20_000), destination: '10.0.0.1', destinationPort: 443,
  state: 0, seenReply: true, egress: false, table: 'established', expiresIn: undefined, originalPackets: 1n, originalBytes: 60n, replyPackets: 1n, replyBytes: 60n, rule: { policy: 'p', priority: 1 }, admittedBy: 'rule',
} as Connection);

async function until(what: string, pred: () => boolean, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

let a: Replica;
let b: Replica;
/** What the played agent does with the next query. */
let mode: 'rows' | 'silent' | 'error' = 'rows';
const TOTAL = MAX_RELAYED_CONNECTIONS_PER_MESSAGE * 2 + 500;

nats.atStart(async () => {
  a = await replica('a');
  b = await replica('b');
  const agent = agentStream('edge-1', (q) => {
    if (mode === 'silent') return undefined;
    if (mode === 'error') return { message: { $case: 'connections', connections: { requestId: q.requestId, connections: [], matched: 0n, error: 'conntrack table unreadable' } } };
    const n = q.countOnly ? 0 : Math.min(q.limit, TOTAL);
    return { message: { $case: 'connections', connections: { requestId: q.requestId, connections: Array.from({ length: n }, (_, i) => row(i)), matched: BigInt(TOTAL), error: '' } } };
  });
  void b.sessions.serve(agent.stream);
  closers.push(() => agent.end());
  await until('edge-1 known at a, from b', () => a.registry.get('edge-1')?.status?.connected === true && a.sync.ownerOf('edge-1') === b.sync.replica);
});

test.serial('ConnectionRelay - a node connected to another replica is listed through it, in parts, and counted', async (t) => {
  // Without the relay, replica a could only say NODE_NOT_CONNECTED.
  await t.throwsAsync(a.sessions.queryConnections('edge-1', { filter: undefined, limit: 10, countOnly: false }, 1000), { instanceOf: PreconditionError });
  const parts: number[] = [];
  const spy = a.nc.subscribe('_INBOX.>', { callback: (_e, m) => void parts.push(m.data.length) });
  closers.push(() => spy.unsubscribe());
  const all = await a.api.listConnections({ node: 'edge-1', filter: undefined, limit: MAX_CONNECTIONS_LIMIT, countOnly: false });
  t.is(all.connections.length, TOTAL);
  t.is(all.matched, BigInt(TOTAL));
  t.false(all.truncated);
  t.deepEqual(all.connections[TOTAL - 1], row(TOTAL - 1), 'the rows in order, whole');
  spy.unsubscribe();
  t.true(parts.filter((n) => n > 0).length >= 3, `an answer of ${TOTAL} rows in parts (${parts.length} messages)`);

  const few = await a.api.listConnections({ node: 'edge-1', filter: undefined, limit: 5, countOnly: false });
  t.is(few.connections.length, 5);
  t.true(few.truncated);
  const count = await a.api.listConnections({ node: 'edge-1', filter: undefined, limit: 0, countOnly: true });
  t.deepEqual([count.connections.length, count.matched], [0, BigInt(TOTAL)]);
});

test.serial('ConnectionRelay - the agent\'s deadline and its errors come back as themselves; a gone replica is UNAVAILABLE', async (t) => {
  mode = 'silent';
  await t.throwsAsync(a.api.listConnections({ node: 'edge-1', filter: undefined, limit: 5, countOnly: false }), { instanceOf: DeadlineExceededError });
  mode = 'error';
  await t.throwsAsync(a.api.listConnections({ node: 'edge-1', filter: undefined, limit: 5, countOnly: false }), { instanceOf: UnavailableError, message: /conntrack table unreadable/ });
  mode = 'rows';
  // The serving replica checks what comes over the bus again: a limit past the bound is refused.
  const bad = await a.nc.request(`${FLEET_CONNECTIONS_SUBJECT_PREFIX}.${b.sync.replica}`, ListConnectionsRequest.encode({ node: 'edge-1', filter: undefined, limit: MAX_CONNECTIONS_LIMIT + 1, countOnly: false }).finish(), { timeout: 2000 });
  t.regex(bad.headers?.get('Edgeplane-Error') ?? '', /UNAVAILABLE/);
  // Replica b stops serving (as when it is gone): a says so, without waiting for the deadline.
  b.relay.close();
  b.relay.close();
  await b.nc.flush();
  await t.throwsAsync(a.api.listConnections({ node: 'edge-1', filter: undefined, limit: 5, countOnly: false }), { instanceOf: UnavailableError, message: /does not answer/ });
});
