import test from 'ava';
import { ConnectionState, InterfaceRole, Protocol, type ConnectionFilter, type ConnectionsQuery } from '@edgeplane/proto';
import { answerConnectionsQuery, conntrackStatus, type ConnectionSources } from '../src/agent/connection-query.js';
import { connectionMatcher, ZERO_CONNTRACK_COUNTERS, type ConnectionEntry, type ConnectionFilter as DatapathFilter } from '../src/datapath/conntrack.js';
import type { ConnectionReader } from '../src/datapath/datapath.js';
import { DEFAULT_RULE_ID, EGRESS_RULE_ID } from '../src/datapath/rule-set.js';

/** A connection table in memory behind the datapath's ConnectionReader, with its filter semantics (connectionMatcher). */
class TableReader implements ConnectionReader {
  calls: { filter: DatapathFilter; limit: number }[] = [];
  fail: Error | undefined;
  constructor(readonly entries: ConnectionEntry[]) {}
  readConntrackOccupancy(): { established: number; new: number } {
    if (this.fail) throw this.fail;
    return { established: this.entries.filter((e) => e.table === 'established').length, new: this.entries.filter((e) => e.table === 'new').length };
  }
  listConnections(filter: DatapathFilter, limit: number): ConnectionEntry[] {
    if (this.fail) throw this.fail;
    this.calls.push({ filter, limit });
    const match = connectionMatcher(filter, limit);
    return this.entries.filter(match).slice(0, limit);
  }
}

function entry(src: string, dst: string, o: Partial<ConnectionEntry> = {}): ConnectionEntry {
  return {
    family: src.includes(':') ? 6 : 4, proto: 6, src, sport: 40000, dst, dport: 443, state: 'established', flags: ['seen_reply'], expiresInMs: 1500, ageMs: 10,
    packets: { original: 3, reply: 2 }, bytes: { original: 180, reply: 120 }, ruleId: 7, epoch: 1, table: 'established', egress: false, ...o,
  };
}

const filter = (f: Partial<ConnectionFilter> = {}): ConnectionFilter => ({ family: 0, protocol: Protocol.PROTOCOL_UNSPECIFIED, address: '', port: 0, state: ConnectionState.CONNECTION_STATE_UNSPECIFIED, interfaceRole: InterfaceRole.INTERFACE_ROLE_UNSPECIFIED, ...f });
const query = (q: Partial<ConnectionsQuery> = {}): ConnectionsQuery => ({ requestId: 'r1', filter: filter(), limit: 0, countOnly: false, ...q });

function sources(uplink: ConnectionReader, workload: ConnectionReader = uplink): ConnectionSources {
  return { readers: { uplink, workload }, origin: (role, id) => (role === 'uplink' && id === 7 ? { policy: 'web', priority: 10, ruleName: 'https' } : undefined) };
}

test('connection query - rows carry role, rule origin, admitted-by and both directions\' counters', (t) => {
  const up = new TableReader([entry('192.0.2.1', '198.51.100.1'), entry('198.51.100.1', '203.0.113.9', { ruleId: EGRESS_RULE_ID, egress: true, flags: ['egress'], table: 'new' }), entry('192.0.2.2', '198.51.100.1', { ruleId: DEFAULT_RULE_ID, proto: 17, state: 'udp' })]);
  const a = answerConnectionsQuery(sources(up, new TableReader([])), query());
  t.is(a.error, '');
  t.is(a.requestId, 'r1');
  t.is(a.matched, 3n);
  t.like(a.connections[0], { role: 'uplink', family: 4, protocol: Protocol.PROTOCOL_TCP, source: '192.0.2.1', destination: '198.51.100.1', state: ConnectionState.CONNECTION_STATE_ESTABLISHED, seenReply: true, admittedBy: 'rule', rule: { policy: 'web', priority: 10 }, originalPackets: 3n, replyBytes: 120n, expiresIn: { seconds: 1n, nanos: 500_000_000 } });
  t.like(a.connections[1], { admittedBy: 'egress', egress: true, rule: undefined, table: 'new', seenReply: false });
  t.like(a.connections[2], { admittedBy: 'default', rule: undefined, protocol: Protocol.PROTOCOL_UDP, state: ConnectionState.CONNECTION_STATE_UDP });
});

test('connection query - CIDR, port, protocol and role filters; limit keeps the first rows and counts them all', (t) => {
  const up = new TableReader([entry('192.0.2.1', '198.51.100.1'), entry('192.0.2.200', '198.51.100.1'), entry('10.0.0.1', '198.51.100.2', { dport: 80 })]);
  const wl = new TableReader([entry('192.0.2.3', '172.30.1.2'), entry('2001:db8::1', '2001:db8::2')]);
  const cidr = answerConnectionsQuery(sources(up, wl), query({ filter: filter({ address: '192.0.2.0/25' }) }));
  t.deepEqual(cidr.connections.map((c) => `${c.role}:${c.source}`), ['uplink:192.0.2.1', 'workload:192.0.2.3']);
  const wlOnly = answerConnectionsQuery(sources(up, wl), query({ filter: filter({ interfaceRole: InterfaceRole.INTERFACE_ROLE_WORKLOAD }) }));
  t.deepEqual(wlOnly.connections.map((c) => c.source), ['192.0.2.3', '2001:db8::1']);
  t.is(up.calls.length, 1, 'the uplink table is not read for a workload-only query');
  const v6 = answerConnectionsQuery(sources(up, wl), query({ filter: filter({ address: '2001:db8::/32', family: 6 }) }));
  t.deepEqual(v6.connections.map((c) => c.destination), ['2001:db8::2']);
  const port = answerConnectionsQuery(sources(up, wl), query({ filter: filter({ port: 80, protocol: Protocol.PROTOCOL_TCP }) }));
  t.deepEqual(port.connections.map((c) => c.source), ['10.0.0.1']);
  const limited = answerConnectionsQuery(sources(up, wl), query({ limit: 2 }));
  t.is(limited.connections.length, 2);
  t.is(limited.matched, 5n, 'matched counts past the limit, across both roles');
  const count = answerConnectionsQuery(sources(up, wl), query({ countOnly: true, filter: filter({ address: '192.0.2.0/24' }) }));
  t.deepEqual(count.connections, []);
  t.is(count.matched, 3n);
});

test('connection query - an unfiltered count is the occupancy; one datapath serving both roles is read once', (t) => {
  const both = new TableReader([entry('192.0.2.1', '198.51.100.1'), entry('192.0.2.2', '198.51.100.1', { table: 'new' })]);
  const a = answerConnectionsQuery(sources(both), query({ countOnly: true }));
  t.is(a.matched, 2n);
  t.is(both.calls.length, 0, 'no walk for an unfiltered count');
  const listed = answerConnectionsQuery(sources(both), query());
  t.is(listed.connections.length, 2, 'not listed twice');
});

test('connection query - a bad query or a failing read is an error answer, never a throw', (t) => {
  const up = new TableReader([entry('192.0.2.1', '198.51.100.1')]);
  const bad = answerConnectionsQuery(sources(up), query({ filter: filter({ address: 'not-an-address' }) }));
  t.regex(bad.error, /invalid query: filter\.address/);
  t.deepEqual(bad.connections, []);
  t.is(answerConnectionsQuery(sources(up), query({ limit: 10_001 })).error.slice(0, 20), 'invalid query: limit');
  up.fail = new Error('EPERM');
  const failed = answerConnectionsQuery(sources(up), query());
  t.is(failed.error, 'read connection table: EPERM');
  t.is(failed.requestId, 'r1');
});

test('conntrack status - occupancy, capacity and the datapath totals of one role', (t) => {
  const s = conntrackStatus('workload', { ...ZERO_CONNTRACK_COUNTERS, insertFailed: { packets: 4, bytes: 0 }, created: { packets: 9, bytes: 900 } }, { established: 3, new: 1 }, { established: 16, new: 8 });
  t.like(s, { role: 'workload', entries: 3n, newEntries: 1n, capacity: 16n, newCapacity: 8n, insertFailed: 4n, created: 9n, cut: 0n });
  t.is(conntrackStatus('uplink', ZERO_CONNTRACK_COUNTERS, { established: 0, new: 0 }, undefined).capacity, 0n, 'unknown capacity reads 0');
});
