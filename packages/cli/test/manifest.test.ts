import test from 'ava';
import { Action, ForwardingMode, HealthCheck_Type, InterfaceRole, LabelSelectorRequirement_Operator, Protocol, RevisionOutcome, Scheduler, SessionAffinity, validatePolicy, validateService, type GetRevisionStatusResponse, type Node } from '@edgeplane/proto';
import { diffLines, diffPolicy, parseDurationMs, parseManifests, policyToManifest, serviceToManifest, previewSelection, renderPolicyDiff, renderProgress, renderTable, summarizeConvergence, toYaml } from '@edgeplane/cli';

const POLICY = `apiVersion: edgeplane.io/v1
kind: Policy
metadata:
  name: web
  labels: {team: a, version: 1.10}
spec:
  nodeSelector:
    matchLabels: {role: edge}
    matchExpressions:
      - {key: site, operator: NotIn, values: [lab]}
  interfaceRole: uplink
  defaultAction: deny
  rules:
    - priority: 10
      name: web
      sourceCIDRs: [10.0.0.0/8]
      destinationCidrs: ["10.1.0.0/16"]
      protocol: TCP
      destinationPorts: [443, "8000-8100", {first: 9000, last: 9001}]
      action: allow
    - priority: 20
      protocol: udp
      action: rate-limit
      rateLimit: {packetsPerSecond: 100, burst: 200}
    - priority: 30
      sourcePrefixLists: [threat-feed, scanners]
      destinationPrefixLists: [edge-vips]
      action: deny
`;

test('parseManifests - reads camelCase fields, enum spellings, port forms and label values as written', (t) => {
  const { policies, problems } = parseManifests([{ file: 'p.yaml', text: POLICY }]);
  t.deepEqual(problems, []);
  const p = policies[0]!.policy;
  t.deepEqual(p.metadata?.labels, { team: 'a', version: '1.10' });
  t.deepEqual(p.spec?.nodeSelector?.matchExpressions, [{ key: 'site', operator: LabelSelectorRequirement_Operator.OPERATOR_NOT_IN, values: ['lab'] }]);
  t.is(p.spec?.interfaceRole, InterfaceRole.INTERFACE_ROLE_UPLINK);
  t.is(p.spec?.defaultAction, Action.ACTION_DENY);
  const [web, rl] = p.spec!.rules;
  t.deepEqual(web?.sourceCidrs, ['10.0.0.0/8']);
  t.deepEqual(web?.destinationCidrs, ["10.1.0.0/16"]);
  t.is(web?.protocol, Protocol.PROTOCOL_TCP);
  t.deepEqual(web?.destinationPorts, [{ first: 443, last: 0 }, { first: 8000, last: 8100 }, { first: 9000, last: 9001 }]);
  t.is(rl?.action, Action.ACTION_RATE_LIMIT);
  t.deepEqual(rl?.rateLimit, { packetsPerSecond: 100n, burst: 200n });
  const lists = p.spec!.rules[2];
  t.deepEqual([lists?.sourcePrefixLists, lists?.destinationPrefixLists, lists?.sourceCidrs], [['threat-feed', 'scanners'], ['edge-vips'], []]);
  t.deepEqual(validatePolicy(p), []);
});

test('parseManifests - a policy printed by policyToManifest reads back to the same policy', (t) => {
  const original = parseManifests([{ file: 'p.yaml', text: POLICY }]).policies[0]!.policy;
  const again = parseManifests([{ file: 'out.yaml', text: toYaml(policyToManifest(original)) }]);
  t.deepEqual(again.problems, []);
  t.deepEqual(again.policies[0]?.policy, original);
});

test('parseManifests - several documents, empty ones skipped, JSON too, a List unpacked', (t) => {
  const json = JSON.stringify({ apiVersion: 'edgeplane.io/v1', kind: 'Policy', metadata: { name: 'j' }, spec: { rules: [{ priority: 1, action: 'deny' }] } });
  const list = `apiVersion: edgeplane.io/v1\nkind: List\nitems:\n  - ${json}\n`;
  const { policies, problems } = parseManifests([
    { file: 'a.yaml', text: `---\n${POLICY}---\n---\n${POLICY.replace('name: web', 'name: web2')}` },
    { file: 'b.json', text: json },
    { file: 'c.yaml', text: list },
  ]);
  t.deepEqual(problems, []);
  t.deepEqual(policies.map((p) => `${p.position.file}:${p.position.line}:${p.policy.metadata?.name}`), ['a.yaml:2:web', 'a.yaml:32:web2', 'b.json:1:j', 'c.yaml:4:j']);
});

test('parseManifests - syntax errors and unknown fields point at file:line:col', (t) => {
  const bad = parseManifests([{ file: 'bad.yaml', text: 'apiVersion: edgeplane.io/v1\nkind: Policy\nmetadata: {name: x\nspec: {}\n' }]);
  t.is(bad.problems[0]?.position?.file, 'bad.yaml');
  t.true((bad.problems[0]?.position?.line ?? 0) >= 3);
  const typo = parseManifests([{ file: 't.yaml', text: POLICY.replace('      protocol: udp', '      protocl: udp') }]);
  t.like(typo.problems[0], { position: { file: 't.yaml', line: 22, col: 7 } });
  t.regex(typo.problems[0]!.message, /unknown field "protocl"/);
  const kind = parseManifests([{ file: 'k.yaml', text: POLICY.replace('kind: Policy', 'kind: Pod') }]);
  t.like(kind.problems[0], { position: { line: 2, col: 7 } });
});

test('PolicyManifest.locate - maps proto field paths to the line of the item, else the nearest parent', (t) => {
  const m = parseManifests([{ file: 'p.yaml', text: POLICY }]).policies[0]!;
  t.like(m.locate('policy.spec.rules[0].source_cidrs[0]'), { line: 16, col: 21 });
  t.like(m.locate('policy.spec.rules[0].destination_ports[1].last'), { line: 19, col: 31 });
  t.like(m.locate('policy.spec.rules[1].rate_limit.burst'), { line: 24, col: 49 });
  t.like(m.locate('policy.spec.rules[1].name'), { line: 21, col: 7 }, 'no name field: the rule');
  t.like(m.locate('policy.metadata.labels["team"]'), { line: 5, col: 18 });
});

test('durations - parse and reject', (t) => {
  t.is(parseDurationMs('60s'), 60_000);
  t.is(parseDurationMs('1m30s'), 90_000);
  t.is(parseDurationMs('250ms'), 250);
  t.is(parseDurationMs('2'), 2000);
  t.is(parseDurationMs('soon'), undefined);
});

test('diffLines - keeps common lines and marks the rest', (t) => {
  t.deepEqual(
    diffLines('a\nb\nc\n', 'a\nc\nd\n').map((l) => l.op + l.text),
    [' a', '-b', ' c', '+d'],
  );
});

const node = (name: string, labels: Record<string, string>): Node => ({ name, labels, info: undefined, interfaces: [], status: undefined });

test('previewSelection and renderPolicyDiff - nodes selected now vs after', (t) => {
  const nodes = [node('n1', { role: 'edge' }), node('n2', { role: 'edge', zone: 'b' }), node('n3', { role: 'core' })];
  const before = parseManifests([{ file: 'p.yaml', text: POLICY.replace('\n    matchExpressions:\n      - {key: site, operator: NotIn, values: [lab]}', '') }]).policies[0]!.policy;
  const after = structuredClone(before);
  after.spec!.nodeSelector = { matchLabels: { zone: 'b' }, matchExpressions: [] };
  t.deepEqual(previewSelection(before, after, nodes), { kept: ['n2'], added: [], removed: ['n1'] });
  const text = renderPolicyDiff(diffPolicy('web', before, after, nodes));
  t.regex(text, /would be configured/);
  t.regex(text, /-\s+role: edge/);
  t.regex(text, /\+\s+zone: b/);
  t.regex(text, /nodes: 2 selected now, 1 after\n {2}- n1\n {2}~ n2/);
  t.regex(renderPolicyDiff(diffPolicy('web', undefined, before, nodes)), /would be created[\s\S]*nodes: 0 selected now, 2 after\n {2}\+ n1, n2/);
});

test('summarizeConvergence and renderProgress - applied, NACKed and pending nodes of interest', (t) => {
  const status: GetRevisionStatusResponse = {
    revision: 7n,
    nodesTotal: 4,
    nodesApplied: 1,
    nodesFailed: 1,
    nodesPending: 2,
    nodes: [
      { node: 'a', appliedRevision: 7n, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, error: '', connected: true },
      { node: 'b', appliedRevision: 6n, outcome: RevisionOutcome.REVISION_OUTCOME_NACK, error: 'map full', connected: true },
      { node: 'c', appliedRevision: 6n, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, error: '', connected: true },
      { node: 'other', appliedRevision: 0n, outcome: 0, error: '', connected: true },
    ],
  };
  const c = summarizeConvergence(status, 7n, new Set(['a', 'b', 'c', 'gone']));
  t.deepEqual(c, { revision: 7n, total: 4, applied: ['a'], failed: [{ node: 'b', reason: 'map full' }], pending: ['c', 'gone'] });
  t.is(renderProgress(c, false), '1/4 nodes at revision 7, 1 NACK (waiting for c, gone)');
  t.regex(renderProgress(c, true, 8), /^\[##\.{6}\] 1\/4/);
});

test('renderTable - pads columns kubectl-style', (t) => {
  t.is(renderTable(['NAME', 'X'], [['a', '1'], ['long-name', '22']]), 'NAME        X\na           1\nlong-name   22\n');
});

const SERVICE = `apiVersion: edgeplane.io/v1
kind: Service
metadata:
  name: dns
spec:
  nodeSelector: role=edge
  vip: "2001:db8::53"
  protocol: UDP
  port: 53
  backends:
    - {address: "2001:db8::1", weight: 0}
    - {address: "2001:db8::2", port: 5353}
  scheduler: SCHEDULER_MAGLEV
  maglevTableSize: 509
  healthCheck: {type: TCP, port: 53, interval: 1m30s, timeout: 500ms, healthyThreshold: 3}
  sessionAffinity: client-ip
  forwardingMode: FORWARDING_MODE_NAT
  rolloutStrategy: {immediate: {}}
`;

test('parseManifests - a Service: enum spellings, a drained weight apart from an unset one, durations; it prints and reads back the same', (t) => {
  const { resources, services, policies, problems } = parseManifests([{ file: 's.yaml', text: `${POLICY}---\n${SERVICE}` }]);
  t.deepEqual(problems, []);
  t.deepEqual(resources.map((r) => r.kind), ['policy', 'service']);
  t.is(policies.length, 1);
  const s = services[0]!.service;
  t.is(s.spec?.protocol, Protocol.PROTOCOL_UDP);
  t.deepEqual(s.spec?.backends, [{ address: '2001:db8::1', port: 0, weight: 0 }, { address: '2001:db8::2', port: 5353, weight: undefined }]);
  t.is(s.spec?.scheduler, Scheduler.SCHEDULER_MAGLEV);
  t.is(s.spec?.sessionAffinity, SessionAffinity.SESSION_AFFINITY_CLIENT_IP);
  t.is(s.spec?.forwardingMode, ForwardingMode.FORWARDING_MODE_NAT);
  t.is(s.spec?.healthCheck?.type, HealthCheck_Type.TYPE_TCP);
  t.deepEqual(s.spec?.healthCheck?.interval, { seconds: 90n, nanos: 0 });
  t.deepEqual(s.spec?.healthCheck?.timeout, { seconds: 0n, nanos: 500_000_000 });
  t.deepEqual(validateService(s), []);
  const again = parseManifests([{ file: 'out.yaml', text: toYaml(serviceToManifest(s)) }]);
  t.deepEqual(again.problems, []);
  t.deepEqual(again.services[0]?.service, s);
  // The service's document starts after the policy's and the separator.
  const base = POLICY.split('\n').length;
  t.is(services[0]!.locate('service.spec.backends[1].port').line, base + 12);
  t.is(services[0]!.locate('service.spec.health_check.timeout').line, base + 15);
});

test('parseManifests - Service fields are checked like a policy\'s: unknown fields, bad enums and wrong types at their lines', (t) => {
  const bad = SERVICE.replace('forwardingMode: FORWARDING_MODE_NAT', 'forwardingMode: tunnel').replace('port: 53\n  backends', 'port: "x"\n  backends').replace('{address: "2001:db8::1", weight: 0}', '{address: "2001:db8::1", wieght: 0}');
  const { services, problems } = parseManifests([{ file: 's.yaml', text: bad }]);
  t.is(services.length, 0);
  t.deepEqual(
    problems.map((p) => `${p.position?.line}: ${p.message}`),
    ['9: must be a whole number from 0 to 4294967295', '11: unknown field "wieght" in a backend; known: address, port, weight', '17: "tunnel" is not one of nat, dsr or fullnat'],
  );
});
