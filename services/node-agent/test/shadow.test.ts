// Shadow classification in the in-memory datapath (issue 18: the semantics the eBPF datapath's
// shadow must share), and the agent's shadow candidate: which rollouts a node shadows and what
// it compiles for them.
import test from 'ava';
import { Action, MAX_SHADOW_SAMPLES, Policy, Protocol, Rollout, RolloutState, WavePhase } from '@edgeplane/proto';
import { compileShadow, shadowingRollouts } from '../src/agent/compile.js';
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
