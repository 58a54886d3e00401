// The dashboard's rollout timeline (dashboard/node-outcomes.ts), a pure function of a rollout's
// status and the outcomes recorded with the time they arrived; and the counter history's bounds.
import test from 'ava';
import { DASHBOARD_CHARTED_RULES, DASHBOARD_COUNTER_SAMPLES, DASHBOARD_OUTCOMES_PER_NODE, RolloutState, RolloutStatus, type GetPolicyCountersResponse } from '@edgeplane/proto';
import { NodeOutcomes } from '../src/dashboard/node-outcomes.js';
import { CounterHistory } from '../src/dashboard/counter-history.js';

const T0 = Date.parse('2026-12-01T12:00:00Z');

/** A rollout's status as RolloutManager.status gives it: only the current wave has a start time. */
function status(state: RolloutState, currentWave = 1): RolloutStatus {
  const start = currentWave === 0 ? T0 + 500 : T0 + 4000;
  return RolloutStatus.fromPartial({
    rollout: { name: 'web', changeRevision: 10n, state, currentWave, waveStartTime: new Date(start), createTime: new Date(T0), updateTime: new Date(T0 + 9000), reason: state === RolloutState.ROLLOUT_STATE_FAILED ? 'node b NACKed' : '' },
    waves: [
      { index: 0, name: 'canary', nodes: ['a'], ...(currentWave === 0 ? { startTime: new Date(T0 + 500), bakeUntilTime: new Date(T0 + 3500) } : {}) },
      { index: 1, name: 'rest', nodes: currentWave === 1 ? ['b', 'c'] : [], ...(currentWave === 1 ? { startTime: new Date(T0 + 4000), bakeUntilTime: new Date(T0 + 4000) } : {}) },
    ],
  });
}

test('rollout timeline - from the API call through each wave to each node\'s first outcome of the change after its wave started', (t) => {
  let now = T0 - 5000;
  const o = new NodeOutcomes(() => now);
  // The dashboard notes each wave's start as the rollout moves (the status keeps only the current one's).
  o.noteRollout(status(RolloutState.ROLLOUT_STATE_PROGRESSING, 0));
  o.noteRollout(status(RolloutState.ROLLOUT_STATE_PROGRESSING, 1));
  o.record('b', 9n, true, ''); // before the change: not part of it
  now = T0 + 1000;
  o.record('a', 10n, true, '');
  now = T0 + 2000;
  o.record('b', 11n, true, ''); // b took another revision before its wave started: not the change
  now = T0 + 6000;
  o.record('b', 12n, true, '');
  const tl = o.timeline(status(RolloutState.ROLLOUT_STATE_PROGRESSING));
  t.deepEqual(
    tl.events.map((e) => [e.at - T0, e.kind, e.node ?? '']),
    [[0, 'accepted', ''], [500, 'wave', ''], [1000, 'ack', 'a'], [4000, 'wave', ''], [6000, 'ack', 'b']],
  );
  t.deepEqual(tl.pending, ['c']);
  t.is(tl.toLastAckMs, 6000);
  now = T0 + 7000;
  o.record('c', 12n, false, 'too many rules');
  const failed = o.timeline(status(RolloutState.ROLLOUT_STATE_FAILED));
  t.deepEqual(failed.events.slice(-2).map((e) => [e.kind, e.text]), [['nack', 'c NACKed revision 12: too many rules'], ['finished', 'rollout failed: node b NACKed']]);
  t.deepEqual(failed.pending, []);
  t.is(failed.toLastAckMs, 6000, 'a NACK is no ACK');
});

test('rollout timeline - a repeated report is one outcome; each node keeps the last DASHBOARD_OUTCOMES_PER_NODE', (t) => {
  let now = T0;
  const o = new NodeOutcomes(() => now++);
  o.record('a', 1n, true, '');
  o.record('a', 1n, true, '');
  t.is(o.outcomes('a').length, 1);
  for (let r = 2n; r < 100n; r++) o.record('a', r, true, '');
  t.is(o.outcomes('a').length, DASHBOARD_OUTCOMES_PER_NODE);
  t.is(o.outcomes('a').at(-1)!.revision, 99n);
  o.close();
  o.close();
});

test('counter history - keeps DASHBOARD_COUNTER_SAMPLES samples of the DASHBOARD_CHARTED_RULES busiest rules', (t) => {
  let round = 0;
  const reader = {
    getPolicyCounters: (): GetPolicyCountersResponse => ({
      fleet: Array.from({ length: DASHBOARD_CHARTED_RULES + 20 }, (_, i) => ({ rule: { policy: 'p', priority: i }, ruleName: '', packets: BigInt(i * 10 + round), bytes: 0n, rateLimitedPackets: 0n })),
      nodes: [],
    }),
  };
  const h = new CounterHistory(reader);
  const seen: number[] = [];
  h.onSample((s) => seen.push(s.at));
  for (; round < DASHBOARD_COUNTER_SAMPLES + 5; round++) h.sample(T0 + round * 1000);
  t.is(h.samples().length, DASHBOARD_COUNTER_SAMPLES);
  t.is(h.samples()[0]!.at, T0 + 5000, 'the oldest went first');
  const last = h.samples().at(-1)!;
  t.is(last.rules.length, DASHBOARD_CHARTED_RULES);
  t.is(last.rules[0]!.priority, DASHBOARD_CHARTED_RULES + 19, 'busiest first');
  t.is(seen.length, DASHBOARD_COUNTER_SAMPLES + 5);
  h.close();
  h.close();
});
