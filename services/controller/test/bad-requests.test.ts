import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import {
  Action,
  ApplyPolicyRequest,
  type InterfaceRole,
  LabelSelectorRequirement_Operator as Op,
  Policy,
  Protocol,
  type DeepPartial,
  type ObjectMeta,
  type PolicySpec,
  type Rule,
} from '@edgeplane/proto';
import { call, clients, detailsOf } from '../../../test/support/grpc.js';
import { samplePolicy, startTestController } from './helpers.js';

let env: Awaited<ReturnType<typeof startTestController>>;
let c: ReturnType<typeof clients>;
test.before(async () => {
  env = await startTestController(['--max-rules-per-policy', '100']);
  c = clients(env.controller.address);
});
test.after.always(async () => {
  c?.close();
  await env?.stop();
});

const ok: DeepPartial<Rule> = { priority: 1, action: Action.ACTION_DENY };
const request = (policy: DeepPartial<Policy>): ApplyPolicyRequest => ApplyPolicyRequest.fromPartial({ policy: Policy.fromPartial(policy as Policy) });
const withRules = (...rules: DeepPartial<Rule>[]): ApplyPolicyRequest => request({ metadata: { name: 'bad' }, spec: { rules } });
const withSpec = (spec: DeepPartial<PolicySpec>): ApplyPolicyRequest => request({ metadata: { name: 'bad' }, spec: { rules: [ok], ...spec } });
const withMeta = (metadata: DeepPartial<ObjectMeta>): ApplyPolicyRequest => request({ metadata, spec: { rules: [ok] } });

type Case = [title: string, run: () => Promise<unknown>, code: grpc.status, field?: string];
const apply = (req: ApplyPolicyRequest) => () => call(c.intent, c.intent.applyPolicy, req);
const R = 'policy.spec.rules';

const cases: Case[] = [
  ['no policy', apply(ApplyPolicyRequest.fromPartial({})), grpc.status.INVALID_ARGUMENT, 'policy'],
  ['no name', apply(withMeta({ name: '' })), grpc.status.INVALID_ARGUMENT, 'policy.metadata.name'],
  ['upper-case name', apply(withMeta({ name: 'Web' })), grpc.status.INVALID_ARGUMENT, 'policy.metadata.name'],
  ['name too long', apply(withMeta({ name: 'a'.repeat(64) })), grpc.status.INVALID_ARGUMENT, 'policy.metadata.name'],
  ['name ending in a dash', apply(withMeta({ name: 'web-' })), grpc.status.INVALID_ARGUMENT, 'policy.metadata.name'],
  ['bad label key', apply(withMeta({ name: 'bad', labels: { 'a b': 'x' } })), grpc.status.INVALID_ARGUMENT, 'policy.metadata.labels'],
  ['bad label value', apply(withMeta({ name: 'bad', labels: { a: '-x' } })), grpc.status.INVALID_ARGUMENT, 'policy.metadata.labels["a"]'],
  ['no spec', apply(ApplyPolicyRequest.fromPartial({ policy: { metadata: { name: 'bad' } } })), grpc.status.INVALID_ARGUMENT, 'policy.spec'],
  ['no rules', apply(withRules()), grpc.status.INVALID_ARGUMENT, R],
  ['too many rules', apply(withRules(...Array.from({ length: 101 }, (_, i) => ({ priority: i, action: Action.ACTION_DENY })))), grpc.status.INVALID_ARGUMENT, R],
  ['duplicate priority', apply(withRules(ok, ok)), grpc.status.INVALID_ARGUMENT, `${R}[1].priority`],
  ['host bits set', apply(withRules({ ...ok, sourceCidrs: ['10.1.2.3/8'] })), grpc.status.INVALID_ARGUMENT, `${R}[0].source_cidrs[0]`],
  ['upper-case IPv6', apply(withRules({ ...ok, destinationCidrs: ['2001:DB8::/32'] })), grpc.status.INVALID_ARGUMENT, `${R}[0].destination_cidrs[0]`],
  ['uncompressed IPv6', apply(withRules({ ...ok, sourceCidrs: ['2001:db8:0:0:0:0:0:0/32'] })), grpc.status.INVALID_ARGUMENT, `${R}[0].source_cidrs[0]`],
  ['address without prefix', apply(withRules({ ...ok, sourceCidrs: ['10.0.0.1'] })), grpc.status.INVALID_ARGUMENT, `${R}[0].source_cidrs[0]`],
  ['prefix too long', apply(withRules({ ...ok, sourceCidrs: ['10.0.0.0/33'] })), grpc.status.INVALID_ARGUMENT, `${R}[0].source_cidrs[0]`],
  ['not an address', apply(withRules({ ...ok, sourceCidrs: ['example.com/24'] })), grpc.status.INVALID_ARGUMENT, `${R}[0].source_cidrs[0]`],
  ['duplicate CIDR', apply(withRules({ ...ok, sourceCidrs: ['10.0.0.0/8', '10.0.0.0/8'] })), grpc.status.INVALID_ARGUMENT, `${R}[0].source_cidrs[1]`],
  ['families that never meet', apply(withRules({ ...ok, sourceCidrs: ['10.0.0.0/8'], destinationCidrs: ['2001:db8::/32'] })), grpc.status.INVALID_ARGUMENT, `${R}[0].destination_cidrs`],
  ['ICMP on IPv6 only', apply(withRules({ ...ok, protocol: Protocol.PROTOCOL_ICMP, sourceCidrs: ['2001:db8::/32'] })), grpc.status.INVALID_ARGUMENT, `${R}[0].protocol`],
  ['ports without TCP/UDP', apply(withRules({ ...ok, protocol: Protocol.PROTOCOL_ICMP, destinationPorts: [{ first: 80 }] })), grpc.status.INVALID_ARGUMENT, `${R}[0].destination_ports`],
  ['ports with protocol any', apply(withRules({ ...ok, destinationPorts: [{ first: 80 }] })), grpc.status.INVALID_ARGUMENT, `${R}[0].destination_ports`],
  ['reversed port range', apply(withRules({ ...ok, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 90, last: 80 }] })), grpc.status.INVALID_ARGUMENT, `${R}[0].destination_ports[0].last`],
  ['port 0', apply(withRules({ ...ok, protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: 0, last: 10 }] })), grpc.status.INVALID_ARGUMENT, `${R}[0].destination_ports[0].first`],
  ['port above 65535', apply(withRules({ ...ok, protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: 1, last: 65536 }] })), grpc.status.INVALID_ARGUMENT, `${R}[0].destination_ports[0].last`],
  ['unknown protocol', apply(withRules({ ...ok, protocol: 42 as Protocol })), grpc.status.INVALID_ARGUMENT, `${R}[0].protocol`],
  ['no action', apply(withRules({ priority: 1 })), grpc.status.INVALID_ARGUMENT, `${R}[0].action`],
  ['rate limit without numbers', apply(withRules({ priority: 1, action: Action.ACTION_RATE_LIMIT })), grpc.status.INVALID_ARGUMENT, `${R}[0].rate_limit`],
  ['rate limit of zero', apply(withRules({ priority: 1, action: Action.ACTION_RATE_LIMIT, rateLimit: { packetsPerSecond: 0n, burst: 1n } })), grpc.status.INVALID_ARGUMENT, `${R}[0].rate_limit.packets_per_second`],
  ['rate limit on a deny rule', apply(withRules({ ...ok, rateLimit: { packetsPerSecond: 1n, burst: 1n } })), grpc.status.INVALID_ARGUMENT, `${R}[0].rate_limit`],
  ['rate limit as default action', apply(withSpec({ defaultAction: Action.ACTION_RATE_LIMIT })), grpc.status.INVALID_ARGUMENT, 'policy.spec.default_action'],
  ['unknown interface role', apply(withSpec({ interfaceRole: 9 as InterfaceRole })), grpc.status.INVALID_ARGUMENT, 'policy.spec.interface_role'],
  ['selector that cannot match', apply(withSpec({ nodeSelector: { matchLabels: { site: 'a' }, matchExpressions: [{ key: 'site', operator: Op.OPERATOR_DOES_NOT_EXIST, values: [] }] } })), grpc.status.INVALID_ARGUMENT, 'policy.spec.node_selector'],
  ['IN without values', apply(withSpec({ nodeSelector: { matchLabels: {}, matchExpressions: [{ key: 'site', operator: Op.OPERATOR_IN, values: [] }] } })), grpc.status.INVALID_ARGUMENT, 'policy.spec.node_selector.match_expressions[0].values'],
  ['EXISTS with values', apply(withSpec({ nodeSelector: { matchLabels: {}, matchExpressions: [{ key: 'site', operator: Op.OPERATOR_EXISTS, values: ['x'] }] } })), grpc.status.INVALID_ARGUMENT, 'policy.spec.node_selector.match_expressions[0].values'],
  ['selector operator missing', apply(withSpec({ nodeSelector: { matchLabels: {}, matchExpressions: [{ key: 'site', operator: Op.OPERATOR_UNSPECIFIED, values: [] }] } })), grpc.status.INVALID_ARGUMENT, 'policy.spec.node_selector.match_expressions[0].operator'],
  ['wave over 100%', apply(withSpec({ rolloutStrategy: { strategy: { $case: 'staged', staged: { waves: [{ target: { $case: 'percent', percent: 150 } }] } } } })), grpc.status.INVALID_ARGUMENT, 'policy.spec.rollout_strategy.staged.waves[0].percent'],
  ['staged without waves', apply(withSpec({ rolloutStrategy: { strategy: { $case: 'staged', staged: { waves: [] } } } })), grpc.status.INVALID_ARGUMENT, 'policy.spec.rollout_strategy.staged.waves'],
  ['oversize request', apply(withMeta({ name: 'bad', annotations: { big: 'x'.repeat(17 * 1024 * 1024) } })), grpc.status.RESOURCE_EXHAUSTED],
  ['annotations too large', apply(withMeta({ name: 'bad', annotations: { big: 'x'.repeat(300 * 1024) } })), grpc.status.INVALID_ARGUMENT, 'policy.metadata.annotations'],
  ['delete with a bad name', () => call(c.intent, c.intent.deletePolicy, { name: 'No!', validateOnly: false, allowMissing: false }), grpc.status.INVALID_ARGUMENT, 'name'],
  ['delete of a missing policy', () => call(c.intent, c.intent.deletePolicy, { name: 'absent', validateOnly: false, allowMissing: false }), grpc.status.NOT_FOUND],
  ['stale expected version', apply(ApplyPolicyRequest.fromPartial({ policy: samplePolicy('existing'), expectedResourceVersion: 999n })), grpc.status.ABORTED],
  ['get with a bad name', () => call(c.intent, c.intent.getPolicy, { name: '' }), grpc.status.INVALID_ARGUMENT, 'name'],
  ['list with a bad selector', () => call(c.intent, c.intent.listPolicies, { pageSize: 0, pageToken: '', labelSelector: 'a in (b' }), grpc.status.INVALID_ARGUMENT, 'label_selector'],
  ['list with a negative page size', () => call(c.intent, c.intent.listPolicies, { pageSize: -1, pageToken: '', labelSelector: '' }), grpc.status.INVALID_ARGUMENT, 'page_size'],
  ['nodes with a bad selector', () => call(c.fleet, c.fleet.listNodes, { pageSize: 0, pageToken: '', labelSelector: '!!' }), grpc.status.INVALID_ARGUMENT, 'label_selector'],
  ['a node that does not exist', () => call(c.fleet, c.fleet.getNode, { name: 'ghost' }), grpc.status.NOT_FOUND],
];

test('bad requests - each fails with its code and field path, and the log does not move', async (t) => {
  t.true(cases.length >= 30);
  await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('existing') }));
  const before = await call(c.intent, c.intent.listPolicies, { pageSize: 1000, pageToken: '', labelSelector: '' });
  for (const [title, run, code, field] of cases) {
    const err = await run().then(
      () => undefined,
      (e: unknown) => e as grpc.ServiceError,
    );
    if (!err) {
      t.fail(`${title}: accepted`);
      continue;
    }
    t.is(err.code, code, `${title}: ${err.details}`);
    if (field) {
      const fields = detailsOf(err)?.fieldViolations.map((v) => v.field) ?? [];
      t.true(fields.includes(field), `${title}: expected a violation at ${field}, got ${JSON.stringify(fields)}`);
    }
  }
  const after = await call(c.intent, c.intent.listPolicies, { pageSize: 1000, pageToken: '', labelSelector: '' });
  t.is(after.revision, before.revision, 'no bad request wrote to the log');
  t.deepEqual(after.policies, before.policies);
});
