import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { fromBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import {
  AgentServiceClient,
  ApplyPolicyRequest,
  RevisionOutcome,
  type AgentHello,
} from '@edgeplane/proto';
import { call, clients, standardServices } from '../../../test/support/grpc.js';
import { samplePolicy, simulatedAgent, startTestController } from './helpers.js';

let env: Awaited<ReturnType<typeof startTestController>>;
let c: ReturnType<typeof clients>;
test.before(async () => {
  env = await startTestController(['--heartbeat-interval', '1']);
  c = clients(env.controller.address);
});
test.after.always(async () => {
  c?.close();
  await env?.stop();
});

const agentStream = (name: string, labels: Record<string, string>, hello: Partial<Pick<AgentHello, 'conditions' | 'appliedUnknown' | 'appliedRevision'>> = {}) => simulatedAgent(env.controller.address, name, labels, hello);

async function until(pred: () => Promise<boolean>, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error('condition not reached');
    await new Promise((r) => setTimeout(r, 50));
  }
}

test.serial('AgentService - hello gets a welcome with the signing key; ACK, NACK and counters reach FleetService', async (t) => {
  const applied = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('fleet-p', {}, 2) }));
  const agent = agentStream('node-a', { site: 'ams1' });
  t.teardown(() => agent.close());
  const welcome = await agent.next((m) => m.message?.$case === 'welcome');
  if (welcome.message?.$case !== 'welcome') return t.fail();
  t.is(welcome.message.welcome.keys[0]?.keyId, env.controller.keyId);
  t.deepEqual(new Uint8Array(welcome.message.welcome.keys[0]!.publicKey), env.controller.publicKey);
  t.is(welcome.message.welcome.currentRevision, applied.revision);

  agent.send({ message: { $case: 'report', report: { revision: applied.revision, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, reason: '', appliedRevision: applied.revision, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: false } } });
  await until(async () => (await call(c.fleet, c.fleet.getNode, { name: 'node-a' })).node?.status?.appliedRevision === applied.revision);
  const status = await call(c.fleet, c.fleet.getRevisionStatus, { revision: applied.revision, nodeLabelSelector: 'site=ams1' });
  t.like(status, { nodesTotal: 1, nodesApplied: 1, nodesFailed: 0, nodesPending: 0 });

  const next = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('fleet-p', {}, 3) }));
  agent.send({ message: { $case: 'report', report: { revision: next.revision, outcome: RevisionOutcome.REVISION_OUTCOME_NACK, reason: 'map full', appliedRevision: applied.revision, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: false } } });
  await until(async () => (await call(c.fleet, c.fleet.getRevisionStatus, { revision: next.revision, nodeLabelSelector: '' })).nodesFailed === 1);
  const node = (await call(c.fleet, c.fleet.getNode, { name: 'node-a' })).node!;
  t.is(node.status?.lastError, 'map full');
  t.is(node.status?.appliedRevision, applied.revision, 'a NACK keeps the previous revision');

  for (let i = 0; i < 3; i++) {
    agent.send({ message: { $case: 'counters', counters: { startTime: undefined, endTime: undefined, appliedRevision: applied.revision, conntrack: [], blocklists: [], loadBalancer: undefined, shadow: undefined, interfaces: [{ interface: 'eth0', passedPackets: 10n, droppedPackets: 5n, passedBytes: 1000n, droppedBytes: 500n, defaultActionPackets: 1n, nonIpPackets: 0n, malformedPackets: 0n }], rules: [{ rule: { policy: 'fleet-p', priority: 1 }, ruleName: '', packets: 5n, bytes: 500n, rateLimitedPackets: 0n }] } } });
  }
  await until(async () => (await call(c.fleet, c.fleet.getPolicyCounters, { policy: 'fleet-p', nodeLabelSelector: '', perNode: true })).fleet[0]?.packets === 15n);
  const counters = await call(c.fleet, c.fleet.getPolicyCounters, { policy: 'fleet-p', nodeLabelSelector: '', perNode: true });
  t.is(counters.nodes[0]?.node, 'node-a');
  t.is(counters.nodes[0]?.counters[0]?.bytes, 1500n);
  const withIfaces = await call(c.fleet, c.fleet.getNode, { name: 'node-a' });
  t.is(withIfaces.interfaceCounters[0]?.droppedPackets, 15n);

  agent.send({ message: { $case: 'heartbeat', heartbeat: { sequence: 7n, time: new Date() } } });
  const echo = await agent.next((m) => m.message?.$case === 'heartbeat');
  t.is(echo.message?.$case === 'heartbeat' ? echo.message.heartbeat.sequence : -1n, 7n);

  agent.close();
  await until(async () => (await call(c.fleet, c.fleet.getNode, { name: 'node-a' })).node?.status?.connected === false);
  t.pass();
});

test.serial('AgentService - a stream that goes silent is closed as half-open and the node marked disconnected', async (t) => {
  const agent = agentStream('node-silent', { site: 'lon1' });
  t.teardown(() => agent.close());
  await agent.next((m) => m.message?.$case === 'welcome');
  t.true((await call(c.fleet, c.fleet.getNode, { name: 'node-silent' })).node?.status?.connected);
  // Heartbeat interval 1 s: three silent seconds end the stream.
  await until(async () => agent.ended !== undefined, 8000);
  t.is(agent.ended?.code, grpc.status.UNAVAILABLE);
  t.false((await call(c.fleet, c.fleet.getNode, { name: 'node-silent' })).node?.status?.connected);
});

test.serial('AgentService - the first message must be a valid hello', async (t) => {
  const client = new AgentServiceClient(env.controller.address, grpc.credentials.createInsecure());
  t.teardown(() => client.close());
  const stream = client.connect();
  const err = await new Promise<grpc.ServiceError>((resolve) => {
    stream.on('error', resolve);
    stream.on('data', () => undefined);
    stream.write({ message: { $case: 'heartbeat', heartbeat: { sequence: 1n, time: new Date() } } });
  });
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
});

test.serial('AgentService - conditions and applied_unknown from the hello, a ConditionReport and a report show in NodeStatus', async (t) => {
  const since = new Date('2026-11-30T10:00:00Z');
  const agent = agentStream('node-cond', { site: 'cond1' }, { appliedRevision: 1n, conditions: [{ type: 'state-file-failed', message: 'revision 1 is enforced but not recorded: ENOSPC', since, revision: 1n }] });
  t.teardown(() => agent.close());
  await agent.next((m) => m.message?.$case === 'welcome');
  const status = async () => (await call(c.fleet, c.fleet.getNode, { name: 'node-cond' })).node?.status;
  t.like((await status())?.conditions[0], { type: 'state-file-failed', revision: 1n, since });
  t.false((await status())?.appliedUnknown);

  // A failed rollback: the NACK says the state is unknown, then the conditions follow.
  const rv = (await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('cond-p', {}, 2) }))).revision;
  agent.send({ message: { $case: 'report', report: { revision: rv, outcome: RevisionOutcome.REVISION_OUTCOME_NACK, reason: 'apply-rollback-failed: apply failed (x) and roll back uplink: y', appliedRevision: 1n, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: true } } });
  await until(async () => (await status())?.appliedUnknown === true);
  agent.send({ message: { $case: 'conditions', conditions: { appliedUnknown: true, conditions: [{ type: 'apply-rollback-failed', message: 'rollback failed', since: new Date(), revision: rv }] } } });
  await until(async () => (await status())?.conditions.some((x) => x.type === 'apply-rollback-failed') === true);
  const s = (await status())!;
  t.deepEqual(s.conditions.map((x) => x.type), ['apply-rollback-failed'], 'a ConditionReport replaces the whole set');
  t.is(s.appliedRevision, 1n);
  const rs = await call(c.fleet, c.fleet.getRevisionStatus, { revision: 1n, nodeLabelSelector: 'site=cond1' });
  t.like(rs, { nodesApplied: 0, nodesFailed: 1 }, 'a node whose state is unknown is at no revision');

  // Back at a known revision: the conditions clear.
  agent.send({ message: { $case: 'conditions', conditions: { appliedUnknown: false, conditions: [] } } });
  await until(async () => (await status())?.appliedUnknown === false);
  t.deepEqual((await status())?.conditions, []);
});

test.serial('AgentService - conditions beyond the bounds end the stream with INVALID_ARGUMENT and change nothing', async (t) => {
  const agent = agentStream('node-cond-bad', { site: 'cond2' });
  t.teardown(() => agent.close());
  await agent.next((m) => m.message?.$case === 'welcome');
  agent.send({ message: { $case: 'conditions', conditions: { appliedUnknown: false, conditions: Array.from({ length: 33 }, (_, i) => ({ type: 'intent-stale', message: `m${i}`, since: undefined, revision: 0n })) } } });
  await until(async () => agent.ended !== undefined);
  t.is(agent.ended?.code, grpc.status.INVALID_ARGUMENT);
  t.deepEqual((await call(c.fleet, c.fleet.getNode, { name: 'node-cond-bad' })).node?.status?.conditions, []);
});

test.serial('FleetService - nodes list by label and watch streams changes', async (t) => {
  const a = agentStream('watch-x', { site: 'par1', tier: 'edge' });
  const b = agentStream('watch-y', { site: 'par1', tier: 'core' });
  t.teardown(() => {
    a.close();
    b.close();
  });
  await a.next((m) => m.message?.$case === 'welcome');
  await b.next((m) => m.message?.$case === 'welcome');
  const edge = await call(c.fleet, c.fleet.listNodes, { pageSize: 0, pageToken: '', labelSelector: 'site=par1,tier=edge' });
  t.deepEqual(edge.nodes.map((n) => n.name), ['watch-x']);
  const watch = c.fleet.watchNodes({ labelSelector: 'site=par1', sendInitial: true });
  const seen: string[] = [];
  await new Promise<void>((resolve) => {
    watch.on('data', (e: { node?: { name: string; status?: { connected: boolean } } }) => {
      seen.push(`${e.node?.name}:${e.node?.status?.connected}`);
      if (seen.includes('watch-y:false')) resolve();
      if (seen.length === 2) b.close();
    });
    watch.on('error', () => undefined);
  });
  watch.cancel();
  t.deepEqual(seen.slice(0, 2), ['watch-x:true', 'watch-y:true']);
});

test('health - every service reports SERVING', async (t) => {
  const std = standardServices(env.controller.address);
  t.teardown(() => std.close());
  for (const service of ['', 'edgeplane.v1.IntentService', 'edgeplane.v1.AgentService']) t.is(await std.health(service), 'SERVING', service);
});

test('reflection - lists the services and serves their descriptors', async (t) => {
  const std = standardServices(env.controller.address);
  t.teardown(() => std.close());
  const list = (await std.reflect({ list_services: '' })) as { list_services_response: { service: { name: string }[] } };
  const names = list.list_services_response.service.map((s) => s.name);
  for (const n of ['edgeplane.v1.IntentService', 'edgeplane.v1.FleetService', 'edgeplane.v1.AgentService', 'grpc.health.v1.Health']) t.true(names.includes(n), n);
  type Files = { file_descriptor_response?: { file_descriptor_proto: Buffer[] }; error_response?: { error_code: number } };
  const decode = (r: Files) => (r.file_descriptor_response?.file_descriptor_proto ?? []).map((b) => fromBinary(FileDescriptorProtoSchema, b));
  // The real files, as protoc compiles them: the service's own file first, then what it imports.
  const intent = decode((await std.reflect({ file_containing_symbol: 'edgeplane.v1.IntentService' })) as Files);
  t.is(intent[0]?.name, 'edgeplane/v1/intent_service.proto');
  for (const f of ['edgeplane/v1/policy.proto', 'edgeplane/v1/resources.proto', 'google/protobuf/timestamp.proto', 'google/protobuf/duration.proto']) t.true(intent.some((d) => d.name === f), f);
  const policy = decode((await std.reflect({ file_by_filename: 'edgeplane/v1/policy.proto' })) as Files);
  t.is(policy[0]?.name, 'edgeplane/v1/policy.proto');
  t.true(policy[0]!.dependency.includes('google/protobuf/duration.proto'), 'imports what it uses');
  const resources = policy.find((d) => d.name === 'edgeplane/v1/resources.proto')!;
  t.deepEqual(resources.messageType.find((m) => m.name === 'ObjectMeta')?.nestedType.map((m) => m.name), ['LabelsEntry', 'AnnotationsEntry'], 'map entries named as protoc names them');
  t.is(decode((await std.reflect({ file_containing_symbol: 'edgeplane.v1.FleetService.WatchNodes' })) as Files)[0]?.name, 'edgeplane/v1/fleet_service.proto', 'a method names its file');
  t.is(((await std.reflect({ file_by_filename: 'edgeplane_v1.proto' })) as Files).error_response?.error_code, grpc.status.NOT_FOUND);
  t.is(((await std.reflect({ file_containing_symbol: 'x'.repeat(5000) })) as Files).error_response?.error_code, grpc.status.INVALID_ARGUMENT);
});
