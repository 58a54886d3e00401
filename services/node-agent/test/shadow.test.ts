// Shadow classification in the in-memory datapath (issue 18: the semantics the eBPF datapath's
// shadow must share), and the agent's shadow candidate: which rollouts a node shadows and what
// it compiles for them.
import test from 'ava';
import { Action, MAX_SHADOW_SAMPLES, Policy, Protocol, Rollout, RolloutState, ShadowVerdict, Snapshot, WavePhase } from '@edgeplane/proto';
import { compileShadow, shadowingRollouts } from '../src/agent/compile.js';
import { NodeAgent } from '../src/agent/node-agent.js';
import type { AppliedState, StateStore } from '../src/agent/state-file.js';
import { MemoryDatapath } from '../src/datapath/memory-datapath.js';
import { buildFrame } from '../src/datapath/packet.js';
import { DEFAULT_RULE_ID, type RuleSetSpec } from '../src/datapath/rule-set.js';

const tcp = (port: number, src = '198.18.0.7'): Uint8Array => buildFrame({ src, dst: '10.0.0.1', protocol: 'tcp', srcPort: 40_000, dstPort: port });
const denyPorts = (...ports: number[]): RuleSetSpec => ({ defaultAction: 'allow', rules: ports.map((p, i) => ({ id: 100 + i, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: p, to: p }], action: 'deny' })) });

test('MemoryDatapath shadow - the enforced rule set decides; the candidate counts would-drops, would-allows and its rules, with samples', async (t) => {
  const dp = new MemoryDatapath();
  await dp.apply(denyPorts(23));
  t.is(dp.readShadow(), null, 'no candidate');
  await dp.setShadow(denyPorts(80), 'web@7');
  t.is(dp.classify(tcp(80)).verdict, 'pass', 'the candidate would drop it; the enforced rule set passes it');
  t.is(dp.classify(tcp(23)).verdict, 'drop', 'the candidate would pass it; the enforced rule set drops it');
  t.is(dp.classify(tcp(443)).verdict, 'pass');
  dp.classify(new Uint8Array(10));
  const s = dp.readShadow()!;
  t.is(s.candidate, 'web@7');
  t.is(s.classified.packets, 3, 'IP packets only');
  t.is(s.wouldDrop.packets, 1);
  t.is(s.wouldAllow.packets, 1);
  t.is(s.rules.get(100)?.packets, 1, 'the candidate\'s rule counted what it would have matched');
  t.is(s.defaultAction.packets, 2);
  t.deepEqual(s.samples, [
    { family: 4, proto: 6, src: '198.18.0.7', dst: '10.0.0.1', port: 80, verdict: 'wouldDrop', enforcedRuleId: DEFAULT_RULE_ID, candidateRuleId: 100 },
    { family: 4, proto: 6, src: '198.18.0.7', dst: '10.0.0.1', port: 23, verdict: 'wouldAllow', enforcedRuleId: 100, candidateRuleId: DEFAULT_RULE_ID },
  ]);
  t.is(dp.readCounters().rules.get(100)?.packets, 1, 'the enforced counters count as without a candidate');
});

test('MemoryDatapath shadow - samples are bounded, newest last; a new candidate starts from zero; null removes it; an invalid one changes nothing', async (t) => {
  const dp = new MemoryDatapath();
  await dp.apply(denyPorts());
  await dp.setShadow(denyPorts(80), 'a');
  for (let i = 0; i < MAX_SHADOW_SAMPLES + 5; i++) dp.classify(tcp(80, `198.18.1.${i}`));
  const s = dp.readShadow()!;
  t.is(s.wouldDrop.packets, MAX_SHADOW_SAMPLES + 5);
  t.is(s.samples.length, MAX_SHADOW_SAMPLES);
  t.is(s.samples.at(-1)!.src, `198.18.1.${MAX_SHADOW_SAMPLES + 4}`);
  await t.throwsAsync(dp.setShadow({ defaultAction: 'allow', rules: [{ id: 1, srcCidrs: ['not a cidr'], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'deny' }] }, 'bad'));
  t.is(dp.readShadow()!.candidate, 'a', 'the refused candidate changed nothing');
  await dp.setShadow(denyPorts(81), 'b');
  t.is(dp.readShadow()!.classified.packets, 0);
  await dp.setShadow(null);
  t.is(dp.readShadow(), null);
  t.is(dp.classify(tcp(80)).verdict, 'pass');
});

const policy = (name: string, port: number): Policy =>
  Policy.fromPartial({ metadata: { name }, spec: { nodeSelector: { matchLabels: {} }, defaultAction: Action.ACTION_ALLOW, rules: [{ priority: 1, name: 'deny', protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: port }], action: Action.ACTION_DENY }] } });

test('compileShadow - a node in a rollout\'s shadow phase gets the target as its candidate, named by rollout and revision; others get none', (t) => {
  const rollout = Rollout.fromPartial({ name: 'web', changeRevision: 9n, previous: policy('web', 22), state: RolloutState.ROLLOUT_STATE_PROGRESSING, wavePhase: WavePhase.WAVE_PHASE_SHADOW, waveNodes: ['n2'], shadowNodes: ['n1'] });
  const intent = { policies: [policy('web', 80), policy('other', 25)], rollouts: [rollout] };
  const c = compileShadow(intent, {}, 'n1')!;
  t.is(c.candidate, 'web@9');
  t.deepEqual(c.compiled.uplink.ruleSet.rules.map((r) => r.dstPorts[0]?.from).sort(), [25, 80], 'the target of web, and the rest as enforced');
  t.is(compileShadow(intent, {}, 'n2'), undefined, 'a node enforcing the change does not shadow it');
  t.is(compileShadow(intent, {}, 'n3'), undefined);
  t.deepEqual(shadowingRollouts([Rollout.fromPartial({ ...rollout, state: RolloutState.ROLLOUT_STATE_FAILED })], 'n1'), [], 'a finished rollout is shadowed nowhere');
});

/** A state file in memory. */
function memoryState(state: AppliedState): StateStore {
  return { read: () => state, write: (s) => void (state = s) };
}

test('NodeAgent shadow - boots enforcing the previous version and shadowing the target; a restart adopts the candidate as it is; a finished rollout clears it', async (t) => {
  const dp = new MemoryDatapath();
  const shadowing = Rollout.fromPartial({ name: 'web', changeRevision: 5n, previous: policy('web', 23), state: RolloutState.ROLLOUT_STATE_PROGRESSING, wavePhase: WavePhase.WAVE_PHASE_SHADOW, waveNodes: [], shadowNodes: ['n1'] });
  const state: AppliedState = { snapshot: Snapshot.fromPartial({ revision: 5n, policies: [policy('web', 80)], rollouts: [shadowing] }), labels: {} };
  const start = (s: AppliedState): NodeAgent => new NodeAgent({ nodeName: 'n1', labels: {}, datapaths: { uplink: dp, workload: dp }, stateFile: memoryState(s), report: () => undefined, log: () => undefined });

  const first = start(state);
  await first.boot();
  t.is(dp.classify(tcp(23)).verdict, 'drop', 'the previous version is enforced');
  t.is(dp.classify(tcp(80)).verdict, 'pass', 'the target is not');
  dp.classify(tcp(80));
  const report = first.counterDeltas()!.shadow!;
  t.like(report, { node: 'n1', candidate: 'web@5', classified: 3n, wouldDrop: 2n, wouldAllow: 1n });
  t.like(report.rules, [{ rule: { policy: 'web', priority: 1 }, ruleName: 'deny', packets: 2n }]);
  t.like(report.samples[1], { port: 80, verdict: ShadowVerdict.SHADOW_VERDICT_WOULD_DROP, enforcedRule: undefined, candidateRule: { policy: 'web', priority: 1 }, candidateRuleName: 'deny' });
  t.like(report.samples[0], { port: 23, verdict: ShadowVerdict.SHADOW_VERDICT_WOULD_ALLOW, enforcedRule: { policy: 'web', priority: 1 }, candidateRule: undefined });
  t.is(first.counterDeltas()?.shadow, undefined, 'unchanged counters are not sent again');
  first.close();

  // A restarted agent finds the candidate in the datapath (pinned, on the eBPF datapath) and keeps it, counters and all.
  const second = start(state);
  await second.boot();
  t.is(dp.readShadow()?.wouldDrop.packets, 2);
  t.like(second.counterDeltas()?.shadow, { candidate: 'web@5', wouldDrop: 2n });
  second.close();

  // Once the rollout has ended, the candidate goes.
  const third = start({ ...state, snapshot: Snapshot.fromPartial({ ...state.snapshot, rollouts: [{ ...shadowing, state: RolloutState.ROLLOUT_STATE_FAILED }] }) });
  await third.boot();
  t.is(dp.readShadow(), null);
  t.is(third.counterDeltas()?.shadow, undefined);
  third.close();
});
