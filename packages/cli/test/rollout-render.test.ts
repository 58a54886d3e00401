// `edgeplane rollout status` as text (pure): what a reverted rollout says about its nodes, and
// the gate readings it kept.
import test from 'ava';
import { Rollout, RolloutState, WavePhase, type RolloutStatus } from '@edgeplane/proto';
import { renderRollout } from '../src/commands/rollout.js';

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
