import test from 'ava';
import { ConnectionState, ConnectionTracking_EstablishedOnDeny as OnDeny, InterfaceRole, Protocol, validatePolicy, type Connection } from '@edgeplane/proto';
import { Flags, UsageError, conntrackLine, describePolicy, filterFromFlags, parseManifests, policyToManifest, renderPolicyTable, toYaml } from '@edgeplane/cli';

const STATEFUL = `apiVersion: edgeplane.io/v1
kind: Policy
metadata: {name: ssh}
spec:
  defaultAction: deny
  connectionTracking: {stateful: true, establishedOnDeny: cut}
  rules:
    - {priority: 10, protocol: tcp, destinationPorts: [22], action: allow}
`;

test('manifest connectionTracking - parses, prints back the same YAML, and shows in get -o wide and describe', (t) => {
  const { policies, problems } = parseManifests([{ file: 'p.yaml', text: STATEFUL }]);
  t.deepEqual(problems, []);
  const p = policies[0]!.policy;
  t.deepEqual(p.spec?.connectionTracking, { stateful: true, establishedOnDeny: OnDeny.ESTABLISHED_ON_DENY_CUT });
  t.deepEqual(validatePolicy(p), []);
  const yaml = toYaml(policyToManifest(p, { outputOnly: false }));
  t.regex(yaml, /connectionTracking:\n {4}stateful: true\n {4}establishedOnDeny: cut\n/);
  const again = parseManifests([{ file: 'again.yaml', text: yaml }]).policies[0]!.policy;
  t.deepEqual(again.spec?.connectionTracking, p.spec?.connectionTracking);
  t.regex(renderPolicyTable([p], new Date(), true), /stateful\/cut/);
  t.regex(describePolicy({ policy: p, fleetCounters: [], nodeCounters: [], nodes: [] }, new Date()), /Conntrack:\s+stateful \(established on deny: cut\)/);
  const stateless = parseManifests([{ file: 's.yaml', text: STATEFUL.replace(/ {2}connectionTracking.*\n/, '') }]).policies[0]!.policy;
  t.regex(describePolicy({ policy: stateless, fleetCounters: [], nodeCounters: [], nodes: [] }, new Date()), /Conntrack:\s+stateless/);
  t.false(toYaml(policyToManifest(stateless)).includes('connectionTracking'));
});

test('manifest connectionTracking - bad values are reported at their line; CUT without stateful is a field violation', (t) => {
  const bad = parseManifests([{ file: 'p.yaml', text: STATEFUL.replace('establishedOnDeny: cut', 'establishedOnDeny: sever') }]);
  t.is(bad.policies.length, 0);
  t.regex(bad.problems[0]?.message ?? '', /"sever" is not one of keep or cut/);
  t.is(bad.problems[0]?.position?.line, 6);
  const unknown = parseManifests([{ file: 'p.yaml', text: STATEFUL.replace('stateful: true', 'statefull: true') }]);
  t.regex(unknown.problems[0]?.message ?? '', /statefull/);
  const notStateful = parseManifests([{ file: 'p.yaml', text: STATEFUL.replace('stateful: true', 'stateful: false') }]).policies[0]!.policy;
  t.is(validatePolicy(notStateful)[0]?.field, 'policy.spec.connection_tracking.established_on_deny');
});

test('conntrack filters - flags become the API filter; bad values are usage errors naming the flag', (t) => {
  const f = filterFromFlags(new Flags({ proto: 'tcp', port: '443', address: '192.0.2.0/24', state: 'established', role: 'workload', family: '4' }));
  t.deepEqual(f, { family: 4, protocol: Protocol.PROTOCOL_TCP, address: '192.0.2.0/24', port: 443, state: ConnectionState.CONNECTION_STATE_ESTABLISHED, interfaceRole: InterfaceRole.INTERFACE_ROLE_WORKLOAD });
  t.deepEqual(filterFromFlags(new Flags({})).protocol, Protocol.PROTOCOL_UNSPECIFIED);
  for (const [flags, msg] of [
    [{ proto: 'sctp' }, /--proto/],
    [{ port: '0' }, /--port/],
    [{ port: '65536' }, /--port/],
    [{ port: '12ab' }, /--port/],
    [{ state: 'open' }, /--state/],
    [{ role: 'mgmt' }, /--role/],
    [{ family: '5' }, /--family/],
    [{ address: '300.1.1.1' }, /--address/],
    [{ address: '2001:db8::1', family: '4' }, /--address/],
  ] as const) {
    const err = t.throws(() => filterFromFlags(new Flags({ ...flags })), { instanceOf: UsageError });
    t.regex(err?.message ?? '', msg, JSON.stringify(flags));
  }
});

test('conntrack output - one conntrack -L-like line per entry, reply tuple reversed, [ASSURED] after a reply', (t) => {
  const c: Connection = {
    role: 'uplink', family: 4, protocol: Protocol.PROTOCOL_TCP, source: '192.0.2.7', sourcePort: 40000, destination: '198.51.100.1', destinationPort: 22,
    state: ConnectionState.CONNECTION_STATE_ESTABLISHED, seenReply: true, egress: false, table: 'established', expiresIn: { seconds: 21599n, nanos: 0 },
    originalPackets: 10n, originalBytes: 600n, replyPackets: 8n, replyBytes: 500n, rule: { policy: 'ssh', priority: 10 }, admittedBy: 'rule',
  };
  t.is(conntrackLine(c), 'tcp      6  21599 ESTABLISHED src=192.0.2.7 dst=198.51.100.1 sport=40000 dport=22 packets=10 bytes=600 src=198.51.100.1 dst=192.0.2.7 sport=22 dport=40000 packets=8 bytes=500 [ASSURED] role=uplink table=established admitted=ssh/10');
  const udp = conntrackLine({ ...c, protocol: Protocol.PROTOCOL_UDP, state: ConnectionState.CONNECTION_STATE_UDP, seenReply: false, table: 'new', rule: undefined, admittedBy: 'egress', egress: true });
  t.regex(udp, /^udp\s+17 21599 src=192\.0\.2\.7 .* bytes=500 role=uplink table=new admitted=egress$/);
});
