// `edgeplane rollout status` and `apply --wait`'s wave lines as text (pure): what a reverted rollout says about its nodes, and
// the gate readings it kept; the lines of the waves apply --wait's polls did not see running.
import test from 'ava';
import { Rollout, RolloutState, Wave, WavePhase, type RolloutStatus } from '@edgeplane/proto';
import { renderRollout } from '../src/commands/rollout.js';
import { skippedWaveLines } from '../src/wait.js';

const failed = (nodes: { enforced: number; revertOnly: number; neither: number }): RolloutStatus => ({
  rollout: Rollout.fromPartial({
    name: 'web',
    changeRevision: 7n,
    state: RolloutState.ROLLOUT_STATE_FAILED,
    reason: 'wave 1: node n1 drops 100.0% of 30 packets since it enforced the change',
    currentWave: 0,
    waveNodes: ['n1', 'n2'],
    previous: { metadata: { name: 'web' } },
    strategy: { waves: [{ name: 'canary', target: { $case: 'percent', percent: 50 } }, { name: 'rest', target: { $case: 'percent', percent: 100 } }] },
  }),
  waves: [
    { index: 0, name: 'canary', nodes: ['n1', 'n2'], nodesDone: nodes.enforced, nodesFailed: 0, nodesPending: 0, startTime: undefined, bakeUntilTime: undefined, nodesEnforced: nodes.enforced, nodesRevertOnly: nodes.revertOnly, nodesNeither: nodes.neither, phase: WavePhase.WAVE_PHASE_UNSPECIFIED, shadowUntilTime: undefined },
    { index: 1, name: 'rest', nodes: [], nodesDone: 0, nodesFailed: 0, nodesPending: 0, startTime: undefined, bakeUntilTime: undefined, nodesEnforced: 0, nodesRevertOnly: 0, nodesNeither: 0, phase: WavePhase.WAVE_PHASE_UNSPECIFIED, shadowUntilTime: undefined },
  ],
  gateReadings: [{ node: 'n1', baselineDropPercent: 0, currentDropPercent: 100, packets: 30n, droppedPackets: 30n, overLimit: true, time: undefined }],
  shadowReadings: [],
  shadowSamples: [],
});

test('rollout status - a reverted rollout says which nodes enforced the change, applied only the revert, or neither; never that they run it', (t) => {
  const text = renderRollout(failed({ enforced: 1, revertOnly: 1, neither: 0 }), new Date());
  t.regex(text, /Wave 1 of 2; 1 node\(s\) enforced the change before the revert, 1 applied only the revert, 0 neither/);
  t.notRegex(text, /run the change/);
  t.regex(text, /WAVE {2}TARGET {17}NODES {2}ENFORCED {2}REVERT-ONLY {2}NEITHER {2}NACK {2}STATE/);
  t.regex(text, /\n1 +canary: 50% +2 +1 +1 +0 +0 +failed\n2 +rest: 100% +0 +0 +0 +0 +0 +never started\n/);
  t.regex(text, /Health gate at the end \(share of dropped packets, before -> since the node enforced the change\):\n {2}n1: 0\.0% -> 100\.0% \(30 of 30 packets\) OVER THE LIMIT/);
});

/** A three-wave rollout's status: `state`, at wave `current`, every wave of 2 nodes done. */
const threeWaves = (state: RolloutState, current: number): RolloutStatus => ({
  rollout: Rollout.fromPartial({
    strategy: { waves: [Wave.fromPartial({ name: 'canary', target: { $case: 'selector', selector: { matchLabels: { canary: 'true' } } } }), Wave.fromPartial({ name: 'half', target: { $case: 'percent', percent: 50 } }), Wave.fromPartial({ name: 'rest', target: { $case: 'percent', percent: 100 } })] },
    name: 'web',
    changeRevision: 9n,
    state,
    currentWave: current,
    waveNodes: ['n1', 'n2', 'n3', 'n4', 'n5', 'n6'].slice(0, 2 * (current + 1)),
  }),
  waves: [0, 1, 2].map((index) => ({ index, name: '', nodes: [`n${2 * index + 1}`, `n${2 * index + 2}`], nodesDone: index <= current ? 2 : 0, nodesFailed: 0, nodesPending: 0, startTime: undefined, bakeUntilTime: undefined, nodesEnforced: 0, nodesRevertOnly: 0, nodesNeither: 0, phase: WavePhase.WAVE_PHASE_UNSPECIFIED, shadowUntilTime: undefined })),
  gateReadings: [],
  shadowReadings: [],
  shadowSamples: [],
});

test('apply --wait - the waves a rollout passed between two polls are printed once each, in order, with their own counts', (t) => {
  // Seen at wave 1 (index 0), next seen succeeded: waves 2 and 3 ran between the polls.
  t.deepEqual(skippedWaveLines('policy/web', threeWaves(RolloutState.ROLLOUT_STATE_SUCCEEDED, 2), 0), [
    'policy/web: wave 2 of 3 (half: 50%), 4 node(s) run the change, 2/2 of the wave done',
    'policy/web: wave 3 of 3 (rest: 100%), 6 node(s) run the change, 2/2 of the wave done',
  ]);
  // First seen at wave 3: waves 1 and 2 came before the first poll; wave 3 is the current line's.
  t.deepEqual(skippedWaveLines('policy/web', threeWaves(RolloutState.ROLLOUT_STATE_PROGRESSING, 2), -1), [
    'policy/web: wave 1 of 3 (canary: selector), 2 node(s) run the change, 2/2 of the wave done',
    'policy/web: wave 2 of 3 (half: 50%), 4 node(s) run the change, 2/2 of the wave done',
  ]);
  t.deepEqual(skippedWaveLines('policy/web', threeWaves(RolloutState.ROLLOUT_STATE_PAUSED, 1), 1), [], 'the wave shown last is not repeated');
  t.deepEqual(skippedWaveLines('policy/web', threeWaves(RolloutState.ROLLOUT_STATE_SUCCEEDED, 2), Number.MAX_SAFE_INTEGER), [], 'nothing after the end was printed');
  t.deepEqual(skippedWaveLines('policy/web', threeWaves(RolloutState.ROLLOUT_STATE_ABORTED, 2), 0), [], 'an aborted rollout\'s later waves are not said to have run');
});
