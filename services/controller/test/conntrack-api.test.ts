// FleetService.ListConnections against a controller with its defaults (mutual TLS, identities
// from its CA): the query travels to the node's agent over its own Connect stream and back.
// Here the agent's side is a test stream answering as an agent would, so every way an agent can
// answer (or not) is covered; test/conntrack.test.ts runs a real agent on the eBPF datapath.
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import {
  AgentServiceService,
  ConnectionState,
  FleetServiceService,
  IntentServiceService,
  BlocklistServiceService,
  TrustServiceService,
  InterfaceRole,
  MAX_CONNECTIONS_LIMIT,
  Protocol,
  type Connection,
  type ConnectionFilter,
  type ConnectionsQuery,
  type ConnectResponse,
  type ListConnectionsRequest,
} from '@edgeplane/proto';
import { call, detailsOf } from '../../../test/support/grpc.js';
import { METHOD_ROLES } from '../src/index.js';
import { agentStream, clientsFor, createToken, enroll, newKey, startTlsController, type ClientCert, type Clients } from './trust-helpers.js';

let env: Awaited<ReturnType<typeof startTlsController>>;
let admin: Clients;
let anon: Clients;
let viewer: Clients;
const certs = new Map<string, ClientCert>();
const open: Clients[] = [];

function as(cert?: ClientCert): Clients {
  const c = clientsFor(env.controller.address, env.ca, cert);
  open.push(c);
  return c;
}

test.before(async () => {
  env = await startTlsController(['--connections-timeout', '1', '--prometheus-port', '0', '--prometheus-host', '127.0.0.1']);
  admin = as(env.admin);
  anon = as();
  const key = newKey();
  const issued = await call(admin.trust, admin.trust.issueCertificate, { role: 'viewer', name: 'alice', publicKey: key.publicDer, lifetime: undefined });
  viewer = as({ keyPem: key.keyPem, certPem: issued.certificate });
  for (const name of ['ct-1', 'ct-2', 'ct-3', 'ct-4', 'ct-5', 'ct-6']) certs.set(name, await enroll(anon, await createToken(admin), name));
});
test.after.always(async () => {
  for (const c of open) c.close();
  await env?.stop();
});

const filter = (f: Partial<ConnectionFilter> = {}): ConnectionFilter => ({ family: 0, protocol: Protocol.PROTOCOL_UNSPECIFIED, address: '', port: 0, state: ConnectionState.CONNECTION_STATE_UNSPECIFIED, interfaceRole: InterfaceRole.INTERFACE_ROLE_UNSPECIFIED, ...f });
const request = (node: string, r: Partial<ListConnectionsRequest> = {}): ListConnectionsRequest => ({ node, filter: filter(), limit: 0, countOnly: false, ...r });

function row(i: number): Connection {
  return {
    role: 'uplink',
    family: 4,
    protocol: Protocol.PROTOCOL_TCP,
    source: `192.0.2.${i}`,
    sourcePort: 40000 + i,
    destination: '198.51.100.1',
    destinationPort: 443,
    state: ConnectionState.CONNECTION_STATE_ESTABLISHED,
    seenReply: true,
    egress: false,
    table: 'established',
    expiresIn: { seconds: 21599n, nanos: 0 },
    originalPackets: 3n,
    originalBytes: 180n,
    replyPackets: 2n,
    replyBytes: 120n,
    rule: { policy: 'web', priority: 10 },
    admittedBy: 'rule',
  };
}

/** A node's stream, welcomed, that hands each query to `answer` (which may answer or not). */
async function connectedNode(name: string, answer: (q: ConnectionsQuery, s: ReturnType<typeof agentStream>) => void) {
  const node = as(certs.get(name));
  const s = agentStream(node.agent, name);
  await s.next((m) => m.message?.$case === 'welcome');
  s.stream.on('data', (m: ConnectResponse) => {
    if (m.message?.$case === 'listConnections') answer(m.message.listConnections, s);
  });
  return { s, node };
}

async function failure(p: Promise<unknown>): Promise<grpc.ServiceError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e as grpc.ServiceError,
  );
  if (!err) throw new Error('the call succeeded');
  return err;
}

test('METHOD_ROLES - every RPC of every edgeplane service has a row; ListConnections is a read', (t) => {
  for (const service of [IntentServiceService, BlocklistServiceService, FleetServiceService, AgentServiceService, TrustServiceService]) {
    for (const method of Object.values(service)) t.truthy(METHOD_ROLES[method.path], `${method.path} is missing from METHOD_ROLES (it would be refused to everyone)`);
  }
  t.deepEqual(METHOD_ROLES['/edgeplane.v1.FleetService/ListConnections'], ['viewer', 'operator', 'admin']);
});

test('ListConnections - a viewer lists and counts a node\'s connections through its stream', async (t) => {
  const queries: ConnectionsQuery[] = [];
  const { s } = await connectedNode('ct-1', (q, stream) => {
    queries.push(q);
    const rows = q.countOnly ? [] : [row(1), row(2), row(3)].slice(0, q.limit);
    stream.send({ message: { $case: 'connections', connections: { requestId: q.requestId, connections: rows, matched: 3n, error: '' } } });
  });
  t.teardown(() => s.close());
  const all = await call(viewer.fleet, viewer.fleet.listConnections, request('ct-1', { filter: filter({ protocol: Protocol.PROTOCOL_TCP, port: 443, address: '192.0.2.0/24' }) }));
  t.deepEqual(all.connections.map((c) => c.source), ['192.0.2.1', '192.0.2.2', '192.0.2.3']);
  t.is(all.matched, 3n);
  t.false(all.truncated);
  t.is(queries[0]?.limit, 1000, 'limit 0 means the default');
  t.like(queries[0]?.filter, { protocol: Protocol.PROTOCOL_TCP, port: 443, address: '192.0.2.0/24' }, 'the filter reaches the agent');
  const two = await call(viewer.fleet, viewer.fleet.listConnections, request('ct-1', { limit: 2 }));
  t.is(two.connections.length, 2);
  t.true(two.truncated, 'more matched than returned');
  const count = await call(admin.fleet, admin.fleet.listConnections, request('ct-1', { countOnly: true }));
  t.is(count.matched, 3n);
  t.deepEqual(count.connections, []);
  t.true(queries[2]?.countOnly);
  t.is(new Set(queries.map((q) => q.requestId)).size, 3, 'every query has its own request id');
});

test('ListConnections - a node certificate and an unauthenticated caller are refused', async (t) => {
  const { s, node } = await connectedNode('ct-2', () => t.fail('the agent was asked'));
  t.teardown(() => s.close());
  const asNode = await failure(call(node.fleet, node.fleet.listConnections, request('ct-2')));
  t.is(asNode.code, grpc.status.PERMISSION_DENIED);
  t.is(detailsOf(asNode)?.errorInfo?.reason, 'ROLE_NOT_ALLOWED');
  const asNobody = await failure(call(anon.fleet, anon.fleet.listConnections, request('ct-2')));
  t.is(asNobody.code, grpc.status.UNAUTHENTICATED);
  t.is(detailsOf(asNobody)?.errorInfo?.reason, 'NO_IDENTITY');
});

test('ListConnections - bad requests are INVALID_ARGUMENT with the field; unknown and disconnected nodes are told apart', async (t) => {
  const cases: [ListConnectionsRequest, string][] = [
    [request(''), 'node'],
    [request('Not_A_Name'), 'node'],
    [request('ct-3', { limit: MAX_CONNECTIONS_LIMIT + 1 }), 'limit'],
    [request('ct-3', { filter: filter({ address: '10.0.0.300' }) }), 'filter.address'],
    [request('ct-3', { filter: filter({ port: 70000 }) }), 'filter.port'],
    [request('ct-3', { filter: filter({ family: 5 }) }), 'filter.family'],
  ];
  for (const [req, field] of cases) {
    const err = await failure(call(viewer.fleet, viewer.fleet.listConnections, req));
    t.is(err.code, grpc.status.INVALID_ARGUMENT, field);
    t.is(detailsOf(err)?.fieldViolations[0]?.field, field);
  }
  t.is((await failure(call(viewer.fleet, viewer.fleet.listConnections, request('never-seen')))).code, grpc.status.NOT_FOUND);
  // ct-3 said hello once and left: known, not connected.
  const { s } = await connectedNode('ct-3', () => undefined);
  s.close();
  let err: grpc.ServiceError | undefined;
  for (let i = 0; i < 50; i++) {
    err = await failure(call(viewer.fleet, viewer.fleet.listConnections, request('ct-3')));
    if (err.code === grpc.status.FAILED_PRECONDITION) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  t.is(err?.code, grpc.status.FAILED_PRECONDITION);
  t.is(detailsOf(err)?.errorInfo?.reason, 'NODE_NOT_CONNECTED');
  t.regex(err?.details ?? '', /ct-3 is not connected/);
});

test('ListConnections - an agent that does not answer in time gives DEADLINE_EXCEEDED; its stream stays open', async (t) => {
  let asked = 0;
  const { s } = await connectedNode('ct-4', () => asked++);
  t.teardown(() => s.close());
  const err = await failure(call(viewer.fleet, viewer.fleet.listConnections, request('ct-4')));
  t.is(err.code, grpc.status.DEADLINE_EXCEEDED);
  t.regex(err.details, /ct-4 did not answer/);
  t.is(asked, 1);
  t.is(s.ended, undefined, 'a slow answer is no protocol error');
});

test('ListConnections - an agent\'s error answer is UNAVAILABLE with its reason', async (t) => {
  const { s } = await connectedNode('ct-5', (q, stream) => stream.send({ message: { $case: 'connections', connections: { requestId: q.requestId, connections: [], matched: 0n, error: 'read connection table: EPERM' } } }));
  t.teardown(() => s.close());
  const err = await failure(call(viewer.fleet, viewer.fleet.listConnections, request('ct-5')));
  t.is(err.code, grpc.status.UNAVAILABLE);
  t.regex(err.details, /ct-5: read connection table: EPERM/);
});

test('ListConnections - an agent that sends more rows than asked is refused and its stream ended', async (t) => {
  const { s } = await connectedNode('ct-6', (q, stream) => stream.send({ message: { $case: 'connections', connections: { requestId: q.requestId, connections: [row(1), row(2), row(3)], matched: 3n, error: '' } } }));
  t.teardown(() => s.close());
  const err = await failure(call(viewer.fleet, viewer.fleet.listConnections, request('ct-6', { limit: 2 })));
  t.is(err.code, grpc.status.UNAVAILABLE);
  t.regex(err.details, /invalid answer/);
  t.is((await s.end())?.code, grpc.status.INVALID_ARGUMENT);
});

test('conntrack status - a counter report reaches GetNode and Prometheus; a report naming a bad role is refused', async (t) => {
  const name = 'ct-7';
  certs.set(name, await enroll(anon, await createToken(admin), name));
  const { s } = await connectedNode(name, () => undefined);
  t.teardown(() => s.close());
  const status = { role: 'uplink', entries: 12n, capacity: 262144n, newEntries: 3n, newCapacity: 65536n, establishedPackets: 900n, relatedPackets: 1n, created: 15n, promoted: 12n, insertFailed: 4n, expired: 2n, cut: 1n, controlPackets: 77n };
  s.send({ message: { $case: 'counters', counters: { startTime: undefined, loadBalancer: undefined, shadow: undefined, endTime: undefined, rules: [], interfaces: [], appliedRevision: 0n, conntrack: [status], blocklists: [] } } });
  let got;
  for (let i = 0; i < 50 && !got?.conntrack.length; i++) {
    got = await call(viewer.fleet, viewer.fleet.getNode, { name });
    if (!got.conntrack.length) await new Promise((r) => setTimeout(r, 100));
  }
  t.deepEqual(got?.conntrack, [status]);
  const body = await (await fetch(env.controller.prometheusUrl!)).text();
  t.regex(body, /edgeplane_conntrack_entries\{[^}]*node="ct-7"[^}]*role="uplink"[^}]*table="established"[^}]*\} 12/);
  t.regex(body, /edgeplane_conntrack_capacity\{[^}]*node="ct-7"[^}]*table="new"[^}]*\} 65536/);
  t.regex(body, /edgeplane_conntrack_events_total\{node="ct-7",role="uplink",event="insert_failed"[^}]*\} 4/);
  // A later report replaces the levels (they are not summed).
  s.send({ message: { $case: 'counters', counters: { startTime: undefined, loadBalancer: undefined, shadow: undefined, endTime: undefined, rules: [], interfaces: [], appliedRevision: 0n, conntrack: [{ ...status, entries: 5n }], blocklists: [] } } });
  for (let i = 0; i < 50 && got?.conntrack[0]?.entries !== 5n; i++) {
    await new Promise((r) => setTimeout(r, 100));
    got = await call(viewer.fleet, viewer.fleet.getNode, { name });
  }
  t.is(got?.conntrack[0]?.entries, 5n);
  s.send({ message: { $case: 'counters', counters: { startTime: undefined, loadBalancer: undefined, shadow: undefined, endTime: undefined, rules: [], interfaces: [], appliedRevision: 0n, conntrack: [{ ...status, role: 'sideways' }], blocklists: [] } } });
  t.is((await s.end())?.code, grpc.status.INVALID_ARGUMENT);
  got = await call(viewer.fleet, viewer.fleet.getNode, { name });
  t.is(got.conntrack[0]?.role, 'uplink', 'nothing of the bad report was kept');
});

test('blocklist status - a counter report reaches GetNode and Prometheus; later reports replace it; a duplicate role is refused', async (t) => {
  const name = 'blk-1';
  certs.set(name, await enroll(anon, await createToken(admin), name));
  const { s } = await connectedNode(name, () => undefined);
  t.teardown(() => s.close());
  const status = { role: 'uplink', ipv4Entries: 1000000n, ipv6Entries: 2n, ipv4DroppedPackets: 41n, ipv4DroppedBytes: 4100n, ipv6DroppedPackets: 3n, ipv6DroppedBytes: 360n };
  const report = (blocklists: (typeof status)[]) => ({ message: { $case: 'counters' as const, counters: { startTime: undefined, loadBalancer: undefined, shadow: undefined, endTime: undefined, rules: [], interfaces: [], appliedRevision: 0n, conntrack: [], blocklists } } });
  s.send(report([status]));
  let got;
  for (let i = 0; i < 50 && !got?.blocklists.length; i++) {
    got = await call(viewer.fleet, viewer.fleet.getNode, { name });
    if (!got.blocklists.length) await new Promise((r) => setTimeout(r, 100));
  }
  t.deepEqual(got?.blocklists, [status]);
  const body = await (await fetch(env.controller.prometheusUrl!)).text();
  t.regex(body, /edgeplane_blocklist_entries\{[^}]*node="blk-1"[^}]*role="uplink"[^}]*family="ipv4"[^}]*\} 1000000/);
  t.regex(body, /edgeplane_blocklist_dropped_packets_total\{[^}]*node="blk-1"[^}]*role="uplink"[^}]*family="ipv6"[^}]*\} 3/);
  // A later report replaces the totals (they are not summed); a role it does not name stays.
  s.send(report([{ ...status, role: 'workload', ipv4Entries: 0n, ipv4DroppedPackets: 0n }]));
  s.send(report([{ ...status, ipv4DroppedPackets: 50n }]));
  for (let i = 0; i < 50 && got?.blocklists.find((b) => b.role === 'uplink')?.ipv4DroppedPackets !== 50n; i++) {
    await new Promise((r) => setTimeout(r, 100));
    got = await call(viewer.fleet, viewer.fleet.getNode, { name });
  }
  t.deepEqual(got?.blocklists.map((b) => [b.role, b.ipv4DroppedPackets]), [['uplink', 50n], ['workload', 0n]]);
  s.send(report([status, status]));
  t.is((await s.end())?.code, grpc.status.INVALID_ARGUMENT);
  got = await call(viewer.fleet, viewer.fleet.getNode, { name });
  t.is(got.blocklists.find((b) => b.role === 'uplink')?.ipv4DroppedPackets, 50n, 'nothing of the bad report was kept');
});
