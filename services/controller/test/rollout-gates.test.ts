// The staged-rollout gates and status as the controller computes them (issue 18, "Exact gates and
// status"), driven by simulated agents on real gRPC streams to a controller with its embedded
// nats-server: what each node counted since it enforced the change, the minimum of packets a
// reading needs, the readings a finished rollout keeps, and which nodes enforced the change,
// applied only the revert, or neither. The agent's flush at the switch is tested in
// services/node-agent/test/node-agent.test.ts; the real datapath's in test/rollout.test.ts.
import test from 'ava';
import {
  Action,
  ApplyPolicyRequest,
  Policy,
  Protocol,
  RevisionOutcome,
  RolloutKind,
  RolloutState,
  type RolloutStatus,
  type RolloutStrategy_Staged,
} from '@edgeplane/proto';
import { call, clients } from '../../../test/support/grpc.js';
import { simulatedAgent, startTestController } from './helpers.js';

let env: Awaited<ReturnType<typeof startTestController>>;
let c: ReturnType<typeof clients>;
test.before(async () => {
  env = await startTestController(['--heartbeat-interval', '1', '--gate-min-packets', '20']);
  c = clients(env.controller.address);
});
test.after.always(async () => {
  c?.close();
  await env?.stop();
});

type Agent = ReturnType<typeof simulatedAgent>;

/** Connects simulated agents named `names` with `labels` (and their own `node` label) and waits for each welcome. */
async function connect(names: string[], labels: (name: string) => Record<string, string>): Promise<Agent[]> {
  const agents = names.map((n) => simulatedAgent(env.controller.address, n, { ...labels(n), node: n }));
  for (const a of agents) await a.next((m) => m.message?.$case === 'welcome');
  return agents;
}

const ack = (a: Agent, revision: bigint): void =>
  a.send({ message: { $case: 'report', report: { revision, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, reason: '', appliedRevision: revision, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: false } } });

/** A counter report of `packets` on the uplink, `dropped` of them dropped, counted under `appliedRevision`. */
const counters = (a: Agent, appliedRevision: bigint, packets: bigint, dropped: bigint): void =>
  a.send({
    message: {
      $case: 'counters',
      counters: { startTime: undefined, endTime: undefined, appliedRevision, conntrack: [], blocklists: [], loadBalancer: undefined, shadow: undefined, rules: [], interfaces: [{ interface: 'uplink', passedPackets: packets - dropped, droppedPackets: dropped, passedBytes: 0n, droppedBytes: 0n, defaultActionPackets: 0n, nonIpPackets: 0n, malformedPackets: 0n }] },
    },
  });

/** A policy for the nodes of `group` that denies TCP 80, rolled out to tier=canary first (a bake long enough never to end in a test) then the rest, failing on a rise of 10 points. */
function stagedDeny(name: string, group: string): Policy {
  const staged: RolloutStrategy_Staged = {
    waves: [{ name: 'canary', target: { $case: 'selector', selector: { matchLabels: { tier: 'canary' }, matchExpressions: [] } }, bakeTime: { seconds: 3600n, nanos: 0 }, shadowBakeTime: undefined }],
    gates: { ignoreNacks: false, maxDropRatioIncreasePoints: 10, maxUnreportedPercent: 0, maxWouldDropPercent: 0, minShadowPackets: 0n },
    reportTimeout: { seconds: 3600n, nanos: 0 },
  };
  return Policy.fromPartial({
    metadata: { name },
    spec: { nodeSelector: { matchLabels: { group } }, defaultAction: Action.ACTION_ALLOW, rules: [{ priority: 1, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 80, last: 0 }], action: Action.ACTION_DENY }], rolloutStrategy: { strategy: { $case: 'staged', staged } } },
  });
}

async function rollout(name: string): Promise<RolloutStatus> {
  return (await call(c.fleet, c.fleet.getRollout, { name, kind: RolloutKind.ROLLOUT_KIND_POLICY })).status!;
}

async function until<T>(what: string, get: () => Promise<T>, pred: (v: T) => boolean, ms = 10_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await get();
    if (pred(v)) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}: ${JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? String(x) : x))}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test.serial('rollout gates - the drop gate reads only what a node counted since it enforced the change, not the traffic before it, and a FAILED rollout keeps the reading', async (t) => {
  const [canary, rest] = await connect(['g1-canary', 'g1-rest'], (n) => ({ group: 'g1', ...(n.endsWith('canary') ? { tier: 'canary' } : {}) }));
  t.teardown(() => [canary, rest].forEach((a) => a!.close()));
  counters(canary!, 0n, 1000n, 0n);
  const { revision } = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: stagedDeny('g1-web', 'g1') }));
  t.deepEqual((await rollout('g1-web')).rollout?.waveNodes, ['g1-canary']);
  // As the agent sends them: the outgoing rule set's counts flushed at the switch (under the
  // revision before), the ACK, then what the change's rule set counted: every packet dropped.
  // Mixed with the 300 packets before the switch, the reading would be 30 of 330 (9.1 %: under the limit).
  counters(canary!, revision - 1n, 300n, 0n);
  ack(canary!, revision);
  counters(canary!, revision, 30n, 30n);
  const failed = await until('the rollout to fail', () => rollout('g1-web'), (s) => s.rollout?.state === RolloutState.ROLLOUT_STATE_FAILED);
  t.regex(failed.rollout!.reason, /node g1-canary drops 100\.0% of 30 packets since it enforced the change, up from 0\.0% before/);
  t.like(failed.gateReadings[0], { node: 'g1-canary', packets: 30n, droppedPackets: 30n, currentDropPercent: 100, baselineDropPercent: 0, overLimit: true }, 'GetRollout after FAILED shows the reading that failed it');
  t.deepEqual(failed.rollout?.finalGateReadings.map((g) => g.node), ['g1-canary'], 'the record keeps it');
  // Later counters do not change what the finished rollout shows.
  counters(canary!, revision, 100n, 0n);
  await until('the counters', async () => (await call(c.fleet, c.fleet.getNode, { name: 'g1-canary' })).interfaceCounters[0]?.passedPackets, (p) => p === 1400n);
  t.like((await rollout('g1-web')).gateReadings[0], { packets: 30n, droppedPackets: 30n });
});

test.serial('rollout gates - a reading of fewer packets than --gate-min-packets never fails a wave on its own; the first reading over the limit with enough packets does', async (t) => {
  const [canary, rest] = await connect(['g2-canary', 'g2-rest'], (n) => ({ group: 'g2', ...(n.endsWith('canary') ? { tier: 'canary' } : {}) }));
  t.teardown(() => [canary, rest].forEach((a) => a!.close()));
  const { revision } = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: stagedDeny('g2-web', 'g2') }));
  ack(canary!, revision);
  counters(canary!, revision, 3n, 3n);
  const few = await until('the 3-packet reading', () => rollout('g2-web'), (s) => s.gateReadings.some((g) => g.node === 'g2-canary' && g.packets === 3n));
  t.like(few.gateReadings.find((g) => g.node === 'g2-canary'), { currentDropPercent: 100, overLimit: false });
  // The gate was judged as the report arrived (before GetRollout could show it): 3 packets did not fail the wave.
  t.is(few.rollout?.state, RolloutState.ROLLOUT_STATE_PROGRESSING);
  counters(canary!, revision, 20n, 20n);
  const failed = await until('the rollout to fail', () => rollout('g2-web'), (s) => s.rollout?.state === RolloutState.ROLLOUT_STATE_FAILED);
  t.regex(failed.rollout!.reason, /drops 100\.0% of 23 packets/);
});

test.serial('rollout status - after a revert it counts which nodes enforced the change, which applied only the revert, and which neither (never PENDING, then DONE, for a canary that never had the change)', async (t) => {
  const [a, b, rest] = await connect(['g3-a', 'g3-b', 'g3-rest'], (n) => ({ group: 'g3', ...(n === 'g3-rest' ? {} : { tier: 'canary' }) }));
  t.teardown(() => [a, b, rest].forEach((x) => x!.close()));
  const { revision } = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: stagedDeny('g3-web', 'g3') }));
  t.deepEqual((await rollout('g3-web')).rollout?.waveNodes, ['g3-a', 'g3-b']);
  // g3-a enforces the change and drops everything; g3-b never receives it (it says nothing).
  ack(a!, revision);
  counters(a!, revision, 40n, 40n);
  const failed = await until('the rollout to fail', () => rollout('g3-web'), (s) => s.rollout?.state === RolloutState.ROLLOUT_STATE_FAILED);
  const reverted = failed.rollout!.resourceVersion;
  t.deepEqual(failed.rollout?.enforcedNodes, ['g3-a']);
  t.like(failed.waves[0], { nodes: ['g3-a', 'g3-b'], nodesEnforced: 1, nodesRevertOnly: 0, nodesNeither: 1, nodesDone: 1, nodesPending: 0 });
  // Both apply the revert: g3-b applied only the revert, it never enforced the change.
  ack(a!, reverted);
  ack(b!, reverted);
  const after = await until('both to apply the revert', () => rollout('g3-web'), (s) => s.waves[0]?.nodesRevertOnly === 1);
  t.like(after.waves[0], { nodesEnforced: 1, nodesRevertOnly: 1, nodesNeither: 0, nodesDone: 1, nodesPending: 0 });
});

test.serial('rollout status - an aborted rollout records the nodes that enforced the change, like a failed one', async (t) => {
  const [a, b] = await connect(['g4-a', 'g4-b'], () => ({ group: 'g4', tier: 'canary' }));
  t.teardown(() => [a, b].forEach((x) => x!.close()));
  const { revision } = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: stagedDeny('g4-web', 'g4') }));
  ack(a!, revision);
  await until('the ACK', async () => (await call(c.fleet, c.fleet.getNode, { name: 'g4-a' })).node?.status?.appliedRevision, (r) => r === revision);
  await call(c.intent, c.intent.abortRollout, { name: 'g4-web', reason: 'test', kind: RolloutKind.ROLLOUT_KIND_POLICY });
  const aborted = await rollout('g4-web');
  t.is(aborted.rollout?.state, RolloutState.ROLLOUT_STATE_ABORTED);
  t.deepEqual(aborted.rollout?.enforcedNodes, ['g4-a']);
  t.like(aborted.waves[0], { nodesEnforced: 1, nodesRevertOnly: 0, nodesNeither: 1, nodesPending: 0 });
});
