import test from 'ava';
import { RolloutKind, type Policy, type RolloutStrategy_Staged } from '@edgeplane/proto';
import { IMPLICIT_LAST_WAVE, completeWaves, startRollout, waveMembers, type PlanNode } from '../src/rollout-plan.js';

const percent = (p: number) => ({ name: '', target: { $case: 'percent' as const, percent: p }, bakeTime: undefined });
const selector = (labels: Record<string, string>) => ({ name: 'canary', target: { $case: 'selector' as const, selector: { matchLabels: labels, matchExpressions: [] } }, bakeTime: { seconds: 60n, nanos: 0 } });
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
