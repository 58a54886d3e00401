// Staged rollouts of services (issue 14) end to end: the real controller (TLS, join tokens, its
// rollout manager), a real nats-server, real agents on real eBPF in network namespaces, and the
// CLI as a process. Which version of a service a node runs is read from what its agent applied
// (the "applied" log line names each service with its Maglev table size, which the versions
// here differ by); whether a node took a revision, from the controller's revision status.
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import {
  Action,
  ApplyPolicyRequest,
  ApplyServiceRequest,
  Policy,
  Protocol,
  RolloutKind,
  RolloutState,
  Service,
  type DeepPartial,
  type RolloutStatus,
  type RolloutStrategy_Staged,
  type ServiceSpec,
} from '@edgeplane/proto';
import { cliAsAdmin, type CliResult } from './support/cli.js';
import { TestControlPlane, until as untilDone } from './support/control-plane.js';
import { FleetNetwork, type FleetNode } from './support/fleet.js';
import { startRolloutFleet } from './support/rollout-fleet.js';
import { call } from './support/grpc.js';

const edgeplane = (args: string[]): Promise<CliResult> => cliAsAdmin(cp, args);

let net: FleetNetwork;
let cp: TestControlPlane;
let c: TestControlPlane['api'];
const nodes: FleetNode[] = [];

test.before(async () => {
  net = new FleetNetwork();
  cp = await TestControlPlane.start();
  c = cp.api;
  // The canary's datapath holds 512 table slots: a service at m = 251 or 509, not at 1,021.
  nodes.push(...(await startRolloutFleet(net, cp, 3, (node) => (node.index === 1 ? ['--lb-slots', '512'] : []))));
});

test.after.always(async () => {
  await net?.remove();
  await cp?.close();
});

const until = (what: string, pred: () => Promise<boolean> | boolean, ms = 60_000): Promise<void> => untilDone(what, pred, ms, () => cp.controller.output.slice(-4000));

const sec = (s: number) => ({ seconds: BigInt(s), nanos: 0 });
const serviceRollout = async (name: string): Promise<RolloutStatus | undefined> =>
  (await call(c.fleet, c.fleet.getRollout, { name, kind: RolloutKind.ROLLOUT_KIND_SERVICE }).catch(() => undefined))?.status;
const policyRollout = async (name: string): Promise<RolloutStatus | undefined> =>
  (await call(c.fleet, c.fleet.getRollout, { name, kind: RolloutKind.ROLLOUT_KIND_POLICY }).catch(() => undefined))?.status;

/** A service on every edge node: `vip`:80 TCP to two backends, `spec` laid over it. */
function service(name: string, vip: string, spec: DeepPartial<ServiceSpec> = {}): Service {
  return Service.fromPartial({
    metadata: { name },
    spec: { nodeSelector: { matchLabels: { role: 'edge' } }, vip, protocol: Protocol.PROTOCOL_TCP, port: 80, backends: [{ address: '10.77.0.1' }, { address: '10.77.0.2' }], ...spec },
  });
}
const staged = (strategy: DeepPartial<RolloutStrategy_Staged>): DeepPartial<ServiceSpec> => ({ rolloutStrategy: { strategy: { $case: 'staged', staged: strategy } } }) as DeepPartial<ServiceSpec>;
const applyService = async (s: Service) => call(c.intent, c.intent.applyService, ApplyServiceRequest.fromPartial({ service: s }));

/** Every revision a node's agent applied, with the services ("name:m") and policies it enforced then. */
function applied(node: FleetNode): { revision: bigint; policies: string[]; tables: string[] }[] {
  const out = [];
  for (const line of (node.agent?.output ?? '').split('\n')) {
    if (!line.includes('"msg":"applied"')) continue;
    const e = JSON.parse(line.slice(line.indexOf('{'))) as { revision: string; policies: string[]; serviceTables: string[] };
    out.push({ revision: BigInt(e.revision), policies: e.policies, tables: e.serviceTables });
  }
  return out;
}
/** What the node enforces now (its newest apply). */
const now = (node: FleetNode) => applied(node).at(-1)!;
/** Whether the node ever enforced `table` ("name:m"). */
const ever = (node: FleetNode, table: string): boolean => applied(node).some((a) => a.tables.includes(table));

async function allAt(revision: bigint): Promise<void> {
  await until(`every node at revision ${revision}`, async () => (await call(c.fleet, c.fleet.getRevisionStatus, { revision, nodeLabelSelector: '' })).nodesApplied === 3);
}

async function removeService(name: string): Promise<void> {
  const r = await call(c.intent, c.intent.deleteService, { name, validateOnly: false, allowMissing: true });
  await allAt(r.revision);
}

test.serial('service rollout - a new service reaches the wave 1 node only, then every node', async (t) => {
  const change = await applyService(service('svc-new', '192.0.2.61', staged({ waves: [{ name: 'one', target: { $case: 'selector', selector: { matchLabels: { node: 'node-2' } } }, bakeTime: sec(600) }, { target: { $case: 'percent', percent: 100 } }] })));
  // Every node takes the change's revision; only wave 1 runs the new service.
  await allAt(change.revision);
  const wave1 = (await serviceRollout('svc-new'))!;
  t.is(wave1.rollout!.state, RolloutState.ROLLOUT_STATE_PROGRESSING);
  t.deepEqual(wave1.rollout!.waveNodes, ['node-2']);
  await until('wave 1 done', async () => (await serviceRollout('svc-new'))?.waves[0]?.nodesDone === 1);
  t.deepEqual(now(nodes[1]!).tables, ['svc-new:251'], 'node-2 runs it');
  for (const n of [nodes[0]!, nodes[2]!]) t.false(ever(n, 'svc-new:251'), `${n.name} does not run it in wave 1`);

  const promoted = await edgeplane(['rollout', 'promote', 'service/svc-new']);
  t.is(promoted.code, 0, promoted.stderr);
  await until('success', async () => (await serviceRollout('svc-new'))?.rollout?.state === RolloutState.ROLLOUT_STATE_SUCCEEDED);
  const done = (await serviceRollout('svc-new'))!;
  t.is(done.rollout!.currentWave, 1);
  await allAt(done.rollout!.resourceVersion);
  for (const n of nodes) t.deepEqual(now(n).tables, ['svc-new:251'], `${n.name} runs it after the last wave`);
  const listed = await edgeplane(['get', 'rollouts']);
  t.regex(listed.stdout, /\nservice +svc-new +\d+ +succeeded +2\/2 +3/);
  await removeService('svc-new');
});

test.serial('service rollout - a NACK on the wave 1 node (its datapath too small for the new version) rolls the service back to the previous version everywhere', async (t) => {
  const v1 = await applyService(service('svc-grow', '192.0.2.62'));
  await allAt(v1.revision);
  for (const n of nodes) t.deepEqual(now(n).tables, ['svc-grow:251']);
  // The new version asks for m = 1,021: more than the canary's 512 slots.
  await applyService(service('svc-grow', '192.0.2.62', { maglevTableSize: 1021, ...staged({ waves: [{ name: 'canary', target: { $case: 'selector', selector: { matchLabels: { canary: 'true' } } }, bakeTime: sec(1) }, { target: { $case: 'percent', percent: 100 } }] }) }));
  await until('the rollout to fail', async () => (await serviceRollout('svc-grow'))?.rollout?.state === RolloutState.ROLLOUT_STATE_FAILED);
  const status = (await serviceRollout('svc-grow'))!;
  t.regex(status.rollout!.reason, /^wave 1: node node-1 NACKed revision \d+: .*lb-slots/);
  t.is(status.rollout!.currentWave, 0, 'it stopped in the canary wave');
  const back = (await call(c.intent, c.intent.getService, { name: 'svc-grow' })).service!;
  t.is(back.spec!.maglevTableSize, 0, 'the stored service is the previous version again');
  t.is(back.metadata!.resourceVersion, status.rollout!.resourceVersion);
  await allAt(status.rollout!.resourceVersion);
  for (const n of nodes) {
    t.deepEqual(now(n).tables, ['svc-grow:251'], `${n.name} runs the previous version`);
    t.false(ever(n, 'svc-grow:1021'), `${n.name} never ran the new version`);
  }
  await removeService('svc-grow');
});

test.serial('service rollout - abort from the CLI reverts the nodes that took the change', async (t) => {
  const v1 = await applyService(service('svc-abort', '192.0.2.63'));
  await allAt(v1.revision);
  const change = await applyService(service('svc-abort', '192.0.2.63', { maglevTableSize: 509, ...staged({ waves: [{ target: { $case: 'selector', selector: { matchLabels: { node: 'node-3' } } }, bakeTime: sec(600) }, { target: { $case: 'percent', percent: 100 } }] }) }));
  await allAt(change.revision);
  t.deepEqual(now(nodes[2]!).tables, ['svc-abort:509'], 'node-3 took the change');
  t.deepEqual(now(nodes[1]!).tables, ['svc-abort:251'], 'node-2 kept the previous version');
  const busy = await t.throwsAsync<grpc.ServiceError>(applyService(service('svc-abort', '192.0.2.63', { maglevTableSize: 251 })));
  t.is(busy?.code, grpc.status.FAILED_PRECONDITION, 'a second change waits for the rollout in progress');

  const aborted = await edgeplane(['rollout', 'abort', 'service/svc-abort', '--reason', 'not today']);
  t.is(aborted.code, 0, aborted.stderr);
  const final = (await serviceRollout('svc-abort'))!;
  t.is(final.rollout!.state, RolloutState.ROLLOUT_STATE_ABORTED);
  t.is(final.rollout!.reason, 'not today');
  await allAt(final.rollout!.resourceVersion);
  for (const n of nodes) t.deepEqual(now(n).tables, ['svc-abort:251'], `${n.name} runs the previous version`);
  await removeService('svc-abort');
});

test.serial('service rollout - a policy and a service of the same name roll out independently', async (t) => {
  const wave = (node: string): DeepPartial<RolloutStrategy_Staged> => ({ waves: [{ target: { $case: 'selector', selector: { matchLabels: { node } } }, bakeTime: sec(600) }, { target: { $case: 'percent', percent: 100 } }] });
  await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({
    policy: Policy.fromPartial({ metadata: { name: 'twin' }, spec: { nodeSelector: { matchLabels: { role: 'edge' } }, defaultAction: Action.ACTION_ALLOW, rules: [{ priority: 9, protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: 7400, last: 0 }], action: Action.ACTION_DENY }], rolloutStrategy: { strategy: { $case: 'staged', staged: wave('node-2') } } } } as DeepPartial<Policy>),
  }));
  const svc = await applyService(service('twin', '192.0.2.64', staged(wave('node-3'))));
  await allAt(svc.revision);
  t.deepEqual([now(nodes[1]!).policies.includes('twin'), now(nodes[1]!).tables], [true, []], 'node-2: the policy, not the service');
  t.deepEqual([now(nodes[2]!).policies.includes('twin'), now(nodes[2]!).tables], [false, ['twin:251']], 'node-3: the service, not the policy');
  t.deepEqual([now(nodes[0]!).policies.includes('twin'), now(nodes[0]!).tables], [false, []], 'node-1: neither');

  t.is((await edgeplane(['rollout', 'promote', 'twin'])).code, 0, 'a bare name is the policy');
  await until('the policy rollout to succeed', async () => (await policyRollout('twin'))?.rollout?.state === RolloutState.ROLLOUT_STATE_SUCCEEDED);
  const s = (await serviceRollout('twin'))!;
  t.is(s.rollout!.state, RolloutState.ROLLOUT_STATE_PROGRESSING);
  t.is(s.rollout!.currentWave, 0, 'the service stays in its first wave');
  t.is((await edgeplane(['rollout', 'abort', 'service/twin'])).code, 0);
  const aborted = (await serviceRollout('twin'))!;
  await allAt(aborted.rollout!.resourceVersion);
  for (const n of nodes) t.deepEqual([now(n).policies.includes('twin'), now(n).tables], [true, []], `${n.name}: the policy everywhere, the service gone`);
  t.is((await policyRollout('twin'))!.rollout!.state, RolloutState.ROLLOUT_STATE_SUCCEEDED);
  await call(c.intent, c.intent.deletePolicy, { name: 'twin', validateOnly: false, allowMissing: false });
});
