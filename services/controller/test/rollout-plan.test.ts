import test from 'ava';
import { Action, Policy, Protocol, RolloutKind, Service, WavePhase, validatePolicy, validateService, type RolloutGates, type RolloutStrategy_Staged, type Wave } from '@edgeplane/proto';
import { IMPLICIT_LAST_WAVE, completeWaves, enterWave, hasShadowPhase, passShadow, startRollout, waveMembers, type PlanNode } from '../src/rollout-plan.js';

const percent = (p: number) => ({ name: '', target: { $case: 'percent' as const, percent: p }, bakeTime: undefined, shadowBakeTime: undefined as Wave['shadowBakeTime'] });
const selector = (labels: Record<string, string>) => ({ name: 'canary', target: { $case: 'selector' as const, selector: { matchLabels: labels, matchExpressions: [] } }, bakeTime: { seconds: 60n, nanos: 0 }, shadowBakeTime: undefined as Wave['shadowBakeTime'] });
const staged = (waves: RolloutStrategy_Staged['waves']): RolloutStrategy_Staged => ({ waves, gates: undefined, reportTimeout: undefined });
const nodes: PlanNode[] = Array.from({ length: 10 }, (_, i) => ({ name: `node-${i}`, labels: i === 3 ? { canary: 'true' } : ({} as Record<string, string>) }));

test('completeWaves - a last wave below 100 % gets a wave "rest" of 100 % after it', (t) => {
  const waves = completeWaves(staged([percent(10), percent(50)])).waves;
  t.deepEqual(waves.map((w) => [w.name, w.target?.$case === 'percent' ? w.target.percent : -1]), [['', 10], ['', 50], [IMPLICIT_LAST_WAVE, 100]]);
  t.is(waves[2]!.bakeTime, undefined, 'no bake time of its own');
});

test('completeWaves - a last selector wave gets it too; a last wave of 100 % keeps the strategy as it is', (t) => {
  t.is(completeWaves(staged([selector({ canary: 'true' })])).waves.length, 2);
  const full = staged([selector({ canary: 'true' }), percent(100)]);
  t.is(completeWaves(full), full);
});

test('startRollout - the record holds the completed waves, and its last wave takes every selected node', (t) => {
  const r = startRollout({ kind: RolloutKind.ROLLOUT_KIND_POLICY, previous: undefined as Policy | undefined }, 'p', staged([selector({ canary: 'true' })]), 7n, nodes, new Date(0), undefined);
  t.is(r.strategy!.waves.length, 2);
  t.deepEqual(r.waveNodes, ['node-3']);
  t.is(waveMembers(r.strategy!, 7n, nodes, 1).length, 10);
});

const shadowWave = (wave: ReturnType<typeof percent> | ReturnType<typeof selector>, seconds = 30) => ({ ...wave, shadowBakeTime: { seconds: BigInt(seconds), nanos: 0 } });

test('startRollout - a first wave with a shadow phase records its nodes as shadowing, none enforcing', (t) => {
  const r = startRollout({ kind: RolloutKind.ROLLOUT_KIND_POLICY, previous: undefined as Policy | undefined }, 'p', staged([shadowWave(selector({ canary: 'true' }))]), 7n, nodes, new Date(0), undefined);
  t.deepEqual(r.waveNodes, [], 'nothing enforces the change yet');
  t.deepEqual(r.shadowNodes, ['node-3']);
  t.is(r.wavePhase, WavePhase.WAVE_PHASE_SHADOW);
  const plain = startRollout({ kind: RolloutKind.ROLLOUT_KIND_POLICY, previous: undefined as Policy | undefined }, 'p', staged([selector({ canary: 'true' })]), 7n, nodes, new Date(0), undefined);
  t.deepEqual([plain.waveNodes, plain.shadowNodes, plain.wavePhase], [['node-3'], [], WavePhase.WAVE_PHASE_ENFORCING], 'without a shadow phase the wave enforces at once');
});

test('enterWave, passShadow - a later shadow wave shadows only its new nodes; a pass makes the same nodes enforce', (t) => {
  const strategy = completeWaves(staged([selector({ canary: 'true' }), shadowWave(percent(50))]));
  const first = waveMembers(strategy, 7n, nodes, 0);
  const second = enterWave(strategy, 7n, nodes, 1, first);
  t.deepEqual(second.waveNodes, first, 'the nodes enforcing stay as they are');
  t.is(second.wavePhase, WavePhase.WAVE_PHASE_SHADOW);
  t.deepEqual([...second.shadowNodes, ...first].sort(), waveMembers(strategy, 7n, nodes, 1), 'the wave\'s new nodes shadow');
  t.false(second.shadowNodes.includes('node-3'));
  const passed = passShadow(second);
  t.deepEqual(passed.waveNodes, waveMembers(strategy, 7n, nodes, 1));
  t.deepEqual(passed.shadowNodes, []);
  t.is(passed.wavePhase, WavePhase.WAVE_PHASE_ENFORCING);
  t.true(hasShadowPhase(strategy, 1));
  t.false(hasShadowPhase(strategy, 2), 'the appended last wave has no shadow phase');
});

test('validation - a shadow bake time of 0..7 days on a policy\'s wave; never on a service\'s; the would-drop gate 0..100', (t) => {
  const policy = (wave: Partial<Wave>, gates: Partial<RolloutGates> = {}) =>
    Policy.fromPartial({ metadata: { name: 'p' }, spec: { rules: [{ priority: 1, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 22 }], action: Action.ACTION_DENY }], rolloutStrategy: { strategy: { $case: 'staged', staged: { waves: [{ target: { $case: 'percent', percent: 100 }, ...wave }], gates } } } } });
  t.deepEqual(validatePolicy(policy({ shadowBakeTime: { seconds: 60n, nanos: 0 } }, { maxWouldDropPercent: 1, minShadowPackets: 100n })), []);
  t.deepEqual(validatePolicy(policy({ shadowBakeTime: { seconds: 8n * 86_400n, nanos: 0 } })).map((v) => v.field), ['policy.spec.rollout_strategy.staged.waves[0].shadow_bake_time']);
  t.deepEqual(validatePolicy(policy({ shadowBakeTime: { seconds: -1n, nanos: 0 } })).map((v) => v.reason), ['OUT_OF_RANGE']);
  t.deepEqual(validatePolicy(policy({}, { maxWouldDropPercent: 101 })).map((v) => v.field), ['policy.spec.rollout_strategy.staged.gates.max_would_drop_percent']);
  t.deepEqual(validatePolicy(policy({}, { maxWouldDropPercent: Number.NaN })).map((v) => v.reason), ['OUT_OF_RANGE']);
  const service = Service.fromPartial({
    metadata: { name: 's' },
    spec: { vip: '192.0.2.10', port: 80, protocol: Protocol.PROTOCOL_TCP, backends: [{ address: '10.0.0.1', weight: 1 }], rolloutStrategy: { strategy: { $case: 'staged', staged: { waves: [{ target: { $case: 'percent', percent: 100 }, shadowBakeTime: { seconds: 60n, nanos: 0 } }] } } } },
  });
  const v = validateService(service);
  t.deepEqual(v.map((x) => [x.field, x.reason]), [['service.spec.rollout_strategy.staged.waves[0].shadow_bake_time', 'NOT_ALLOWED']]);
});
