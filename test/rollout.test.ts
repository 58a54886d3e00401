import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import {
  Action,
  ApplyPolicyRequest,
  GetRolloutRequest,
  Policy,
  Protocol,
  RolloutState,
  ShadowVerdict,
  type DeepPartial,
  type RolloutStatus,
  type RolloutStrategy_Staged,
  type Rule,
} from '@edgeplane/proto';
import { FleetNetwork, type FleetNode } from './support/fleet.js';
import { startRolloutFleet } from './support/rollout-fleet.js';
import { call } from './support/grpc.js';
import { cliAsAdmin, type CliResult } from './support/cli.js';
import { TestControlPlane, until as untilDone } from './support/control-plane.js';
import { OtlpReceiver } from './support/otlp-receiver.js';
import type { Supervised } from './support/supervisor.js';

const edgeplane = (args: string[]): Promise<CliResult> => cliAsAdmin(cp, args);

// Spans leave the processes quickly, as JSON, for the receiver below.
process.env.OTEL_EXPORTER_OTLP_PROTOCOL = 'http/json';
process.env.OTEL_BSP_SCHEDULE_DELAY = '200';

let net: FleetNetwork;
let controller: Supervised;
// The README's secure path (TestControlPlane's default): NATS with TLS and the controller's
// authority, agents enrolled with join tokens and their own NATS credentials, mutual TLS.
let cp: TestControlPlane;
let c: TestControlPlane['api'];
let otlp: OtlpReceiver;
const nodes: FleetNode[] = [];

test.before(async () => {
  net = new FleetNetwork();
  otlp = await OtlpReceiver.start();
  cp = await TestControlPlane.start({ extra: ['--otlp-endpoint', otlp.endpoint('127.0.0.1')] });
  controller = cp.controller;
  c = cp.api;
  nodes.push(...(await startRolloutFleet(net, cp, 5, (node) => ['--otlp-endpoint', otlp.endpoint(node.hostIp)])));
});

test.after.always(async () => {
  await net?.remove();
  await cp?.close();
  await otlp?.close();
});

const until = (what: string, pred: () => Promise<boolean> | boolean, ms = 30_000): Promise<void> => untilDone(what, pred, ms, () => controller.output);

// Requests without a kind (as clients sent them before services had rollouts) name a policy's rollout.
const rollout = async (name: string): Promise<RolloutStatus | undefined> => (await call(c.fleet, c.fleet.getRollout, GetRolloutRequest.fromPartial({ name })).catch(() => undefined))?.status;
const sec = (s: number) => ({ seconds: BigInt(s), nanos: 0 });

function staged(name: string, rules: DeepPartial<Rule>[], strategy: DeepPartial<RolloutStrategy_Staged>, selector: Record<string, string> = { role: 'edge' }): Policy {
  return Policy.fromPartial({ metadata: { name }, spec: { nodeSelector: { matchLabels: selector }, defaultAction: Action.ACTION_ALLOW, rules, rolloutStrategy: { strategy: { $case: 'staged', staged: strategy } } } } as Policy);
}

const appliedPolicies = (node: FleetNode): string[][] =>
  [...(node.agent?.output ?? '').matchAll(/"msg":"applied","revision":"\d+","policies":(\[[^\]]*\])/g)].map((m) => JSON.parse(m[1]!) as string[]);

test.serial('rollout - a change that NACKs on the canary never reaches the other nodes and is reverted', async (t) => {
  // Fill the canary nearly to capacity, so the change overflows it and only it.
  const filler = (name: string, base: number): Policy =>
    Policy.fromPartial({ metadata: { name }, spec: { nodeSelector: { matchLabels: { canary: 'true' } }, rules: Array.from({ length: 32_700 }, (_, i) => ({ priority: base + i, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 1 + (i % 65_000), last: 0 }], action: Action.ACTION_DENY })) } });
  await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: filler('filler-a', 1_000_000), allowLargeGrowth: true }));
  const filled = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: filler('filler-b', 2_000_000), allowLargeGrowth: true }));
  await until('the canary to hold the filler', async () => (await call(c.fleet, c.fleet.getNode, { name: 'node-1' })).node?.status?.appliedRevision === filled.revision, 120_000);

  const change = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({
    policy: staged('web', Array.from({ length: 200 }, (_, i) => ({ priority: 10 + i, protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: 5000 + i, last: 0 }], action: Action.ACTION_DENY })), {
      waves: [{ name: 'canary', target: { $case: 'selector', selector: { matchLabels: { canary: 'true' } } }, bakeTime: sec(1) }, { name: 'all', target: { $case: 'percent', percent: 100 } }],
    }),
  }));
  await until('the rollout to fail', async () => (await rollout('web'))?.rollout?.state === RolloutState.ROLLOUT_STATE_FAILED, 60_000);
  const status = (await rollout('web'))!;
  t.regex(status.rollout!.reason, /node node-1 NACKed revision \d+: 65\d+ uplink rules select this node/);
  t.is(status.rollout!.currentWave, 0, 'it stopped in the canary wave');
  const gone = await t.throwsAsync<grpc.ServiceError>(call(c.intent, c.intent.getPolicy, { name: 'web' }));
  t.is(gone?.code, grpc.status.NOT_FOUND, 'the new policy was reverted: removed');
  const revert = status.rollout!.resourceVersion;
  await until('every node at the revert', async () => (await call(c.fleet, c.fleet.getRevisionStatus, { revision: revert, nodeLabelSelector: '' })).nodesApplied === 5, 30_000);
  for (const n of nodes.slice(1)) t.false(appliedPolicies(n).some((p) => p.includes('web')), `${n.name} never applied the change`);
  t.true(change.revision > 0n);
  // Free the canary for the next tests.
  await call(c.intent, c.intent.deletePolicy, { name: 'filler-a', validateOnly: false, allowMissing: false });
  await call(c.intent, c.intent.deletePolicy, { name: 'filler-b', validateOnly: false, allowMissing: false });
});

test.serial('rollout - a healthy staged rollout completes wave by wave, each wave waiting its bake time, and ends at 100 %', async (t) => {
  const seen: { wave: number; nodes: number; at: number }[] = [];
  // Waves that stop at 60 %: the controller appends the last wave ("rest", 100 %).
  const res = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({
    policy: staged('healthy', [{ priority: 5, protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: 7000, last: 0 }], action: Action.ACTION_DENY }], {
      waves: [{ target: { $case: 'percent', percent: 20 }, bakeTime: sec(2) }, { target: { $case: 'percent', percent: 60 }, bakeTime: sec(2) }],
    }),
  }));
  await until('success', async () => {
    const s = await rollout('healthy');
    const r = s?.rollout;
    if (r && (seen.length === 0 || seen[seen.length - 1]!.wave !== r.currentWave)) seen.push({ wave: r.currentWave, nodes: r.waveNodes.length, at: r.waveStartTime?.getTime() ?? 0 });
    return r?.state === RolloutState.ROLLOUT_STATE_SUCCEEDED;
  }, 60_000);
  t.deepEqual(seen.map((s) => [s.wave, s.nodes]), [[0, 1], [1, 3], [2, 5]], 'waves of 20%, 60%, 100% of 5 nodes');
  t.true(seen[1]!.at - seen[0]!.at >= 2000, 'wave 2 started after wave 1 baked 2 s');
  t.true(seen[2]!.at - seen[1]!.at >= 2000, 'wave 3 started after wave 2 baked 2 s');
  const done = (await rollout('healthy'))!;
  await until('every node at the final revision', async () => (await call(c.fleet, c.fleet.getRevisionStatus, { revision: done.rollout!.resourceVersion, nodeLabelSelector: '' })).nodesApplied === 5);
  t.deepEqual(done.waves.map((w) => w.nodesDone), [1, 2, 2]);
  t.deepEqual(done.waves.map((w) => w.name), ['', '', 'rest'], 'the appended last wave is named');
  const stored = (await call(c.intent, c.intent.getPolicy, { name: 'healthy' })).policy!;
  const strategy = stored.spec?.rolloutStrategy?.strategy;
  t.is(strategy?.$case === 'staged' ? strategy.staged.waves.length : 0, 2, 'the policy keeps its waves as written');
  t.true(res.revision > 0n);
});

test.serial('rollout - the health gate trips on real traffic and the canary is rolled back', async (t) => {
  const canary = nodes[1]!;
  t.is(await canary.ping(1), 3, 'the test traffic passes before the change');
  const dropped = async (): Promise<bigint> => (await call(c.fleet, c.fleet.getNode, { name: canary.name })).interfaceCounters.find((i) => i.interface === 'uplink')?.droppedPackets ?? 0n;
  const droppedBefore = await dropped();
  await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({
    policy: staged('bad-rule', [{ priority: 1, sourceCidrs: [`${canary.sources[1]}/32`], protocol: Protocol.PROTOCOL_ICMP, action: Action.ACTION_DENY }], {
      waves: [{ name: 'canary', target: { $case: 'selector', selector: { matchLabels: { node: canary.name } } }, bakeTime: sec(20) }, { target: { $case: 'percent', percent: 100 } }],
      gates: { maxDropRatioIncreasePoints: 20 },
    }),
  }));
  // Traffic that was allowed now hits the bad rule on the canary.
  const traffic = canary.ping(1, 60);
  const watching = edgeplane(['rollout', 'status', 'bad-rule', '--watch', '--timeout', '50s']);
  await until('the gate to trip', async () => (await rollout('bad-rule'))?.rollout?.state === RolloutState.ROLLOUT_STATE_FAILED, 30_000);
  const lost = BigInt(60 - (await traffic));
  t.true(lost > 0n);
  // Every echo request the bad rule dropped is counted, also those of the last partial counter
  // interval before the revert removed the rule (the agent flushes the outgoing rule set's counts).
  await until('the controller to count every drop', async () => (await dropped()) - droppedBefore >= lost, 10_000);
  t.is((await dropped()) - droppedBefore, lost, "the canary's drop counter equals what the traffic saw");
  const watched = await watching;
  t.is(watched.code, 6, `rollout status --watch exits 6 on a failed rollout\n${watched.stdout}${watched.stderr}`);
  t.regex(watched.stderr, /rollout of bad-rule failed: wave 1: node node-2 drops/);
  const status = (await rollout('bad-rule'))!;
  t.regex(status.rollout!.reason, /node node-2 drops \d+\.\d% of \d+ packets since it enforced the change, up from \d+\.\d% before the change/);
  t.true(status.gateReadings.some((g) => g.node === canary.name && g.overLimit), 'GetRollout after FAILED shows the reading that failed it');
  await until('the canary at the revert', async () => (await call(c.fleet, c.fleet.getNode, { name: canary.name })).node!.status!.appliedRevision >= status.rollout!.resourceVersion);
  t.is(await canary.ping(1), 3, 'rolled back: the traffic passes again');
  for (const n of [nodes[0]!, ...nodes.slice(2)]) t.false(appliedPolicies(n).some((p) => p.includes('bad-rule')), `${n.name} never took it`);
});

test.serial('shadow - a bad change (it denies the port the node serves, and ICMP) with a shadow wave: no real connection or packet is lost on any node, the rollout fails at the shadow gate with the sampled flows, nothing was enforced', async (t) => {
  const canary = nodes[1]!;
  const PORT = 8080;
  await canary.serveTcp(PORT);
  t.is(await canary.ping(1), 3, 'the test traffic passes before the change');
  t.like(await canary.connectTcp(PORT, 10), { failed: 0, reached: { [canary.name]: 10 } }, 'the served port answers before the change');
  await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({
    policy: staged('bad-shadow', [
      { priority: 1, sourceCidrs: [`${canary.sources[1]}/32`], protocol: Protocol.PROTOCOL_ICMP, action: Action.ACTION_DENY },
      { priority: 2, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: PORT, last: PORT }], action: Action.ACTION_DENY },
    ], {
      waves: [{ name: 'canary', target: { $case: 'selector', selector: { matchLabels: { node: canary.name } } }, shadowBakeTime: sec(3), bakeTime: sec(20) }, { target: { $case: 'percent', percent: 100 } }],
      gates: { maxWouldDropPercent: 5, maxDropRatioIncreasePoints: 20 },
    }),
  }));
  // The traffic the change would drop, through the shadow phase and after the rollout ended:
  // echo requests, and new connections to the served port, batch after batch.
  const traffic = canary.ping(1, 60);
  let failed = false;
  const connections = { reached: 0, failed: 0 };
  const connecting = (async () => {
    while (!failed) {
      const r = await canary.connectTcp(PORT, 20);
      connections.reached += r.reached[canary.name] ?? 0;
      connections.failed += r.failed;
    }
  })();
  await until('the shadow gate to fail the rollout', async () => (failed = (await rollout('bad-shadow'))?.rollout?.state === RolloutState.ROLLOUT_STATE_FAILED), 30_000).finally(() => (failed = true));
  await connecting;
  t.is(await traffic, 60, 'every real packet was answered: the change was only shadowed');
  t.is(connections.failed, 0, `no real connection failed (${connections.reached} answered)`);
  t.true(connections.reached >= 20, `connections ran through the shadow phase (${connections.reached})`);
  const status = (await rollout('bad-shadow'))!;
  t.regex(status.rollout!.reason, /wave 1 \(shadow\): node node-2 would drop \d+\.\d% of the packets it classified .*nothing was enforced/);
  const reading = status.shadowReadings.find((r) => r.node === canary.name);
  t.true((reading?.wouldDrop ?? 0n) > 0n && reading!.wouldDrop === reading!.classified, JSON.stringify(reading, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v)));
  const sampled = status.shadowSamples.filter((f) => f.node === canary.name);
  t.true(sampled.length > 0, 'the flows the change would have broken are kept');
  for (const f of sampled) {
    const like = f.protocol === 6 ? { port: PORT, candidateRule: { policy: 'bad-shadow', priority: 2 } } : { protocol: 1, source: canary.sources[1], candidateRule: { policy: 'bad-shadow', priority: 1 } };
    t.like(f, { family: 4, destination: canary.uplinkIp, verdict: ShadowVerdict.SHADOW_VERDICT_WOULD_DROP, ...like });
  }
  t.true(sampled.some((f) => f.protocol === 6), 'connections to the served port are among the sampled flows');
  const described = await edgeplane(['describe', 'rollout', 'bad-shadow']);
  t.is(described.code, 0, described.stderr);
  // The newest samples per node are kept: TCP and ICMP in whatever mix the traffic had.
  const lines = described.stdout.split('\n');
  for (const f of sampled) t.true(lines.some((l) => l.includes(f.source) && l.includes(f.destination) && (f.port === 0 || l.includes(String(f.port)))), `describe rollout lists the sampled flow from ${f.source}\n${described.stdout}`);
  for (const n of nodes) t.false(appliedPolicies(n).some((p) => p.includes('bad-shadow')), `${n.name} never enforced it`);
  t.is(await canary.ping(1), 3, 'and the traffic still passes');
  t.like(await canary.connectTcp(PORT, 10), { failed: 0 }, 'and the served port still answers');
});

test.serial('shadow - a good change passes its shadow wave and is enforced by the same node, then everywhere; what the candidate counted equals what the enforced rule counts for the same traffic', async (t) => {
  const canary = nodes[2]!;
  const PINGS = 20;
  await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({
    policy: staged('good-shadow', [{ priority: 1, sourceCidrs: [`${canary.sources[1]}/32`], protocol: Protocol.PROTOCOL_ICMP, action: Action.ACTION_ALLOW }], {
      waves: [{ name: 'canary', target: { $case: 'selector', selector: { matchLabels: { node: canary.name } } }, shadowBakeTime: sec(12), bakeTime: sec(1) }, { target: { $case: 'percent', percent: 100 } }],
      gates: { maxWouldDropPercent: 5 },
    }),
  }));
  await until('the canary to shadow the change', async () => (await rollout('good-shadow'))?.shadowReadings.some((r) => r.node === canary.name) === true, 30_000);
  t.is(await canary.ping(1, PINGS), PINGS);
  const shadowed = async (): Promise<bigint> => (await rollout('good-shadow'))?.shadowReadings.find((r) => r.node === canary.name)?.rules.find((r) => r.rule?.policy === 'good-shadow' && r.rule.priority === 1)?.packets ?? 0n;
  await until(`the candidate's rule to count the ${PINGS} echo requests`, async () => (await shadowed()) >= BigInt(PINGS), 30_000);
  t.is(await shadowed(), BigInt(PINGS), 'the candidate counted exactly the traffic');
  const wave0 = (await rollout('good-shadow'))!.rollout!;
  t.deepEqual(wave0.waveNodes, [], 'nothing enforced while it shadows');
  await until('success', async () => (await rollout('good-shadow'))?.rollout?.state === RolloutState.ROLLOUT_STATE_SUCCEEDED, 60_000);
  const done = (await rollout('good-shadow'))!;
  await until('every node at the final revision', async () => (await call(c.fleet, c.fleet.getRevisionStatus, { revision: done.rollout!.resourceVersion, nodeLabelSelector: '' })).nodesApplied === 5);
  t.true(appliedPolicies(canary).some((p) => p.includes('good-shadow')), 'the canary enforces it');
  const enforced = async (): Promise<bigint> => {
    const r = await call(c.fleet, c.fleet.getPolicyCounters, { policy: 'good-shadow', nodeLabelSelector: `node=${canary.name}`, perNode: true });
    return r.nodes.find((n) => n.node === canary.name)?.counters.find((x) => x.rule?.priority === 1)?.packets ?? 0n;
  };
  const before = await enforced();
  t.is(await canary.ping(1, PINGS), PINGS);
  await until('the enforced rule to count the same traffic', async () => (await enforced()) - before >= BigInt(PINGS), 30_000);
  t.is((await enforced()) - before, await shadowed(), 'the enforced rule counts what the candidate counted for the same traffic');
});

test.serial('rollout - a controller killed mid-rollout resumes at the same wave', async (t) => {
  await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({
    policy: staged('resume-me', [{ priority: 3, protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: 7100, last: 0 }], action: Action.ACTION_DENY }], {
      waves: [{ target: { $case: 'selector', selector: { matchLabels: { node: 'node-3' } } }, bakeTime: sec(6) }, { target: { $case: 'percent', percent: 100 } }],
    }),
  }));
  await until('wave 1 applied', async () => (await rollout('resume-me'))?.waves[0]?.nodesDone === 1);
  await controller.kill('SIGKILL');
  await controller.start();
  const after = (await rollout('resume-me'))!;
  t.is(after.rollout!.state, RolloutState.ROLLOUT_STATE_PROGRESSING);
  t.is(after.rollout!.currentWave, 0, 'still in the first wave after the restart');
  await until('success after the restart', async () => (await rollout('resume-me'))?.rollout?.state === RolloutState.ROLLOUT_STATE_SUCCEEDED, 60_000);
  t.is((await rollout('resume-me'))!.rollout!.currentWave, 1);
});

test.serial('rollout - operators pause, resume, promote and abort from the CLI', async (t) => {
  const long = (name: string, port = 7200) =>
    staged(name, [{ priority: 4, protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: port, last: 0 }], action: Action.ACTION_DENY }], {
      waves: [{ target: { $case: 'selector', selector: { matchLabels: { node: 'node-4' } } }, bakeTime: sec(600) }, { target: { $case: 'percent', percent: 100 } }],
    });
  await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: long('ops') }));
  const paused = await edgeplane(['rollout', 'pause', 'ops', '--reason', 'looking']);
  t.is(paused.code, 0, paused.stderr);
  t.is((await rollout('ops'))!.rollout!.state, RolloutState.ROLLOUT_STATE_PAUSED);
  const again = await edgeplane(['rollout', 'pause', 'ops']);
  t.is(again.code, 1, 'pausing a paused rollout is refused');
  t.regex(again.stderr, /paused: cannot pause/);
  t.is((await edgeplane(['rollout', 'resume', 'ops'])).code, 0);
  const shown = await edgeplane(['rollout', 'status', 'ops']);
  t.regex(shown.stdout, /Rollout of policy ops .*: progressing/);
  t.regex(shown.stdout, /selector node=node-4/);
  await until('wave 1 applied', async () => (await rollout('ops'))?.waves[0]?.nodesDone === 1);
  t.is((await edgeplane(['rollout', 'promote', 'ops'])).code, 0);
  await until('promoted past a 10-minute bake', async () => (await rollout('ops'))?.rollout?.state === RolloutState.ROLLOUT_STATE_SUCCEEDED);

  await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: long('ops-abort') }));
  const same = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: long('ops-abort') }));
  t.true(same.unchanged, 'the same apply again is a no-op, rollout or not');
  const busy = await t.throwsAsync<grpc.ServiceError>(call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: long('ops-abort', 7201) })));
  t.is(busy?.code, grpc.status.FAILED_PRECONDITION, 'a second change waits for the rollout in progress');
  const aborted = await edgeplane(['rollout', 'abort', 'ops-abort', '--reason', 'not today']);
  t.is(aborted.code, 0, aborted.stderr);
  const final = (await rollout('ops-abort'))!;
  t.is(final.rollout!.state, RolloutState.ROLLOUT_STATE_ABORTED);
  t.is(final.rollout!.reason, 'not today');
  await t.throwsAsync(call(c.intent, c.intent.getPolicy, { name: 'ops-abort' }), undefined, 'the new policy was reverted');
});

test.serial('rollout - a wave whose node does not report in time fails and is reverted', async (t) => {
  const silent = nodes[4]!;
  silent.mgmt('down');
  t.teardown(() => silent.mgmt('up'));
  await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({
    policy: staged('quiet-node', [{ priority: 6, protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: 7300, last: 0 }], action: Action.ACTION_DENY }], {
      waves: [{ target: { $case: 'selector', selector: { matchLabels: { node: silent.name } } }, bakeTime: sec(1) }, { target: { $case: 'percent', percent: 100 } }],
      reportTimeout: sec(3),
    }),
  }));
  await until('the report timeout', async () => (await rollout('quiet-node'))?.rollout?.state === RolloutState.ROLLOUT_STATE_FAILED, 30_000);
  const status = (await rollout('quiet-node'))!;
  t.regex(status.rollout!.reason, /wave 1: 1 of 1 nodes did not report within 3000 ms \(node-5\)/);
  t.is(status.rollout!.currentWave, 0);
  await t.throwsAsync(call(c.intent, c.intent.getPolicy, { name: 'quiet-node' }), undefined, 'the new policy was reverted');
  // Back online, the node catches up to the revert and never enforces the change.
  silent.mgmt('up');
  await until('the silent node at the revert', async () => (await call(c.fleet, c.fleet.getNode, { name: silent.name })).node!.status!.appliedRevision >= status.rollout!.resourceVersion, 30_000);
  t.false(appliedPolicies(silent).some((p) => p.includes('quiet-node')), 'it never applied the change');
});

test.serial('tracing - one trace per change: the API call is the root, the publish, each wave and every node are in it', async (t) => {
  await until('spans to arrive', () => otlp.spans.some((s) => s.service === 'edgeplane-agent' && s.name === 'edgeplane.agent.ack'), 20_000);
  await new Promise((r) => setTimeout(r, 1500));
  const root = otlp.spans.find((s) => s.name === 'edgeplane.v1.IntentService/ApplyPolicy' && s.attributes['edgeplane.policy'] === 'healthy');
  t.truthy(root, 'the ApplyPolicy span of the healthy rollout');
  const inTrace = otlp.spans.filter((s) => s.traceId === root!.traceId);
  t.is(root!.parentSpanId, '', 'the API call is the root');
  t.true(inTrace.some((s) => s.name === 'edgeplane.intent.publish' && s.parentSpanId === root!.spanId));
  const waves = inTrace.filter((s) => s.name === 'edgeplane.rollout.wave');
  t.deepEqual([...new Set(waves.map((w) => w.attributes['edgeplane.wave']))].sort(), [0, 1, 2], 'a span per wave');
  for (const n of nodes) {
    const mine = inTrace.filter((s) => s.service === 'edgeplane-agent' && s.attributes['edgeplane.node'] === n.name);
    for (const name of ['edgeplane.agent.receive', 'edgeplane.agent.compile', 'edgeplane.agent.apply', 'edgeplane.agent.ack']) {
      t.true(mine.some((s) => s.name === name && s.parentSpanId === root!.spanId), `${n.name}: ${name} is a child of the API call`);
    }
  }
  // The canary's NACK in the failed rollout is marked as an error in that change's trace.
  const webRoot = otlp.spans.find((s) => s.name === 'edgeplane.v1.IntentService/ApplyPolicy' && s.attributes['edgeplane.policy'] === 'web');
  const nack = otlp.spans.find((s) => s.traceId === webRoot?.traceId && s.name === 'edgeplane.agent.ack' && s.attributes['edgeplane.node'] === 'node-1' && s.attributes['edgeplane.outcome'] === 'nack');
  t.is(nack?.statusCode, 2, 'the NACK is an error span');
});
