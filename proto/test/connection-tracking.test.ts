import test from 'ava';
import {
  Action,
  ConnectionState,
  ConnectionTracking_EstablishedOnDeny as OnDeny,
  InterfaceRole,
  MAX_CONNECTIONS_LIMIT,
  Policy,
  Protocol,
  connectionMatches,
  effectiveConnectionLimit,
  parseAddress,
  parseConnectionFilter,
  validateConnectionQuery,
  validatePolicy,
  type ConnectionFilter,
  type ConnectionTuple,
  type DeepPartial,
} from '@edgeplane/proto';

function policy(connectionTracking: DeepPartial<NonNullable<Policy['spec']>['connectionTracking']> | undefined): Policy {
  return Policy.fromPartial({ metadata: { name: 'p1' }, spec: { rules: [{ priority: 1, action: Action.ACTION_ALLOW, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 22 }] }], defaultAction: Action.ACTION_DENY, ...(connectionTracking ? { connectionTracking } : {}) } });
}

test('connection tracking validation - stateful with KEEP, CUT or unset is valid; unset tracking is valid', (t) => {
  t.deepEqual(validatePolicy(policy(undefined)), []);
  t.deepEqual(validatePolicy(policy({ stateful: false })), []);
  for (const onDeny of [OnDeny.ESTABLISHED_ON_DENY_UNSPECIFIED, OnDeny.ESTABLISHED_ON_DENY_KEEP, OnDeny.ESTABLISHED_ON_DENY_CUT]) {
    t.deepEqual(validatePolicy(policy({ stateful: true, establishedOnDeny: onDeny })), [], String(onDeny));
  }
});

test('connection tracking validation - CUT or KEEP without stateful is refused with its field path', (t) => {
  for (const onDeny of [OnDeny.ESTABLISHED_ON_DENY_CUT, OnDeny.ESTABLISHED_ON_DENY_KEEP]) {
    const v = validatePolicy(policy({ stateful: false, establishedOnDeny: onDeny }));
    t.is(v.length, 1);
    t.is(v[0]?.field, 'policy.spec.connection_tracking.established_on_deny');
    t.is(v[0]?.reason, 'NEEDS_STATEFUL');
    t.regex(v[0]?.description ?? '', /stateful/);
  }
});

test('connection tracking validation - an unknown established_on_deny value is refused', (t) => {
  const v = validatePolicy(policy({ stateful: true, establishedOnDeny: 7 as OnDeny }));
  t.is(v[0]?.field, 'policy.spec.connection_tracking.established_on_deny');
  t.is(v[0]?.reason, 'INVALID_ENUM');
});

test('connection tracking validation - the setting survives an encode/decode round trip', (t) => {
  const p = policy({ stateful: true, establishedOnDeny: OnDeny.ESTABLISHED_ON_DENY_CUT });
  const back = Policy.decode(Policy.encode(p).finish());
  t.deepEqual(back.spec?.connectionTracking, { stateful: true, establishedOnDeny: OnDeny.ESTABLISHED_ON_DENY_CUT });
});

const filter = (f: Partial<ConnectionFilter>): ConnectionFilter => ({ family: 0, protocol: Protocol.PROTOCOL_UNSPECIFIED, address: '', port: 0, state: ConnectionState.CONNECTION_STATE_UNSPECIFIED, interfaceRole: InterfaceRole.INTERFACE_ROLE_UNSPECIFIED, ...f });

test('connection query validation - bad fields and a limit past the bound are refused, each with its field', (t) => {
  t.deepEqual(validateConnectionQuery(filter({}), 0), []);
  t.deepEqual(validateConnectionQuery(filter({ family: 6, address: '2001:db8::/32', port: 443, protocol: Protocol.PROTOCOL_TCP, state: ConnectionState.CONNECTION_STATE_ESTABLISHED }), MAX_CONNECTIONS_LIMIT), []);
  t.deepEqual(validateConnectionQuery(filter({ address: '10.0.0.1' }), 1), [], 'a bare address is a /32');
  const cases: [Partial<ConnectionFilter>, number, string, string][] = [
    [{}, MAX_CONNECTIONS_LIMIT + 1, 'q.limit', 'OUT_OF_RANGE'],
    [{ family: 5 }, 1, 'q.filter.family', 'OUT_OF_RANGE'],
    [{ protocol: 99 as Protocol }, 1, 'q.filter.protocol', 'INVALID_ENUM'],
    [{ state: 42 as ConnectionState }, 1, 'q.filter.state', 'INVALID_ENUM'],
    [{ interfaceRole: 9 as InterfaceRole }, 1, 'q.filter.interface_role', 'INVALID_ENUM'],
    [{ address: '10.0.0.300' }, 1, 'q.filter.address', 'MALFORMED_ADDRESS'],
    [{ address: 'x'.repeat(100_000) }, 1, 'q.filter.address', 'MALFORMED_ADDRESS'],
    [{ port: 70000 }, 1, 'q.filter.port', 'OUT_OF_RANGE'],
    [{ family: 4, address: '2001:db8::1' }, 1, 'q.filter.address', 'FAMILY_MISMATCH'],
  ];
  for (const [f, limit, field, reason] of cases) {
    const v = validateConnectionQuery(filter(f), limit, 'q');
    t.is(v.length, 1, JSON.stringify(f).slice(0, 80));
    t.is(v[0]?.field, field);
    t.is(v[0]?.reason, reason);
    t.true((v[0]?.description.length ?? 0) < 200, 'descriptions quote a bounded part of the input');
  }
});

test('connection query - limit 0 means the default and larger limits are capped', (t) => {
  t.is(effectiveConnectionLimit(0), 1000);
  t.is(effectiveConnectionLimit(5), 5);
  t.is(effectiveConnectionLimit(1e9), MAX_CONNECTIONS_LIMIT);
});

test('connection filter - fields match source or destination, and every set field must hold', (t) => {
  const flow: ConnectionTuple = { family: 4, protocol: 6, source: parseAddress('192.0.2.7')!, sourcePort: 40000, destination: parseAddress('198.51.100.1')!, destinationPort: 443, state: ConnectionState.CONNECTION_STATE_ESTABLISHED, role: 'uplink' };
  const matches = (f: Partial<ConnectionFilter>): boolean => connectionMatches(parseConnectionFilter(filter(f)), flow);
  t.true(matches({}));
  t.true(matches({ address: '192.0.2.0/24' }), 'source address');
  t.true(matches({ address: '198.51.100.1' }), 'destination address');
  t.false(matches({ address: '203.0.113.0/24' }));
  t.false(matches({ address: '::/0' }), 'an IPv6 CIDR never contains an IPv4 address');
  t.true(matches({ port: 443 }));
  t.true(matches({ port: 40000 }));
  t.false(matches({ port: 80 }));
  t.true(matches({ protocol: Protocol.PROTOCOL_TCP }));
  t.true(matches({ protocol: Protocol.PROTOCOL_ANY }));
  t.false(matches({ protocol: Protocol.PROTOCOL_UDP }));
  t.true(matches({ family: 4 }));
  t.false(matches({ family: 6 }));
  t.true(matches({ state: ConnectionState.CONNECTION_STATE_ESTABLISHED }));
  t.false(matches({ state: ConnectionState.CONNECTION_STATE_SYN_SENT }));
  t.true(matches({ interfaceRole: InterfaceRole.INTERFACE_ROLE_UPLINK }));
  t.true(matches({ interfaceRole: InterfaceRole.INTERFACE_ROLE_ALL }));
  t.false(matches({ interfaceRole: InterfaceRole.INTERFACE_ROLE_WORKLOAD }));
  t.false(matches({ port: 443, protocol: Protocol.PROTOCOL_UDP }), 'all fields must hold');
  t.false(matches({ address: 'garbage' }), 'an invalid address matches nothing, not everything');
  t.false(matches({ family: 5 }), 'an invalid family matches nothing');
});
