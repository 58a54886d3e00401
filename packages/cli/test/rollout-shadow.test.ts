// Shadow waves (issue 18) in the CLI: manifests take the fields, `rollout status` shows the
// shadow phase and its figures, `describe rollout` the sampled flows the change would have broken.
import test from 'ava';
import { Rollout, RolloutState, ShadowVerdict, WavePhase, validatePolicy, type RolloutStatus, type RolloutStrategy_Staged } from '@edgeplane/proto';
import { describeRollout, parseManifests, policyToManifest, renderRollout, toYaml } from '@edgeplane/cli';

const MANIFEST = `apiVersion: edgeplane.io/v1
kind: Policy
metadata: {name: web}
spec:
  rules:
    - {priority: 10, protocol: TCP, destinationPorts: [80], action: deny}
  rolloutStrategy:
    staged:
      waves:
        - {name: canary, percent: 10, shadowBakeTime: 5m, bakeTime: 10m}
      gates: {maxWouldDropPercent: 0.5, minShadowPackets: 1000}
`;

test('parseManifests - a wave\'s shadowBakeTime and the shadow gates; the policy prints and reads back the same', (t) => {
  const { policies, problems } = parseManifests([{ file: 'p.yaml', text: MANIFEST }]);
  t.deepEqual(problems, []);
  const p = policies[0]!.policy;
  const st = p.spec?.rolloutStrategy?.strategy;
  t.is(st?.$case, 'staged');
  const staged = st?.$case === 'staged' ? st.staged : undefined;
  t.deepEqual(staged?.waves[0]?.shadowBakeTime, { seconds: 300n, nanos: 0 });
  t.is(staged?.gates?.maxWouldDropPercent, 0.5);
  t.is(staged?.gates?.minShadowPackets, 1000n);
  t.deepEqual(validatePolicy(p), []);
  const again = parseManifests([{ file: 'q.yaml', text: toYaml(policyToManifest(p)) }]);
  t.deepEqual(again.problems, []);
  t.deepEqual(again.policies[0]!.policy.spec?.rolloutStrategy, p.spec?.rolloutStrategy);
});

function failedAtShadow(): RolloutStatus {
  const strategy: RolloutStrategy_Staged = {
    waves: [
      { name: 'canary', target: { $case: 'selector', selector: { matchLabels: { canary: 'true' }, matchExpressions: [] } }, bakeTime: undefined, shadowBakeTime: { seconds: 60n, nanos: 0 } },
      { name: 'rest', target: { $case: 'percent', percent: 100 }, bakeTime: undefined, shadowBakeTime: undefined },
    ],
    gates: undefined,
    reportTimeout: undefined,
  };
  const rollout = Rollout.fromPartial({
    name: 'web',
    changeRevision: 12n,
    state: RolloutState.ROLLOUT_STATE_FAILED,
    reason: 'wave 1 (shadow): node edge-1 would drop 80.0% of the packets it classified (400 of 500; more than 5%); nothing was enforced',
    currentWave: 0,
    wavePhase: WavePhase.WAVE_PHASE_SHADOW,
    shadowNodes: ['edge-1'],
    previous: { metadata: { name: 'web' } },
    strategy,
  });
  return {
    rollout,
    waves: [
      { index: 0, name: 'canary', nodes: ['edge-1'], nodesDone: 1, nodesFailed: 0, nodesPending: 0, startTime: undefined, bakeUntilTime: undefined, phase: WavePhase.WAVE_PHASE_SHADOW, shadowUntilTime: undefined, nodesEnforced: 0, nodesRevertOnly: 1, nodesNeither: 0 },
      { index: 1, name: 'rest', nodes: [], nodesDone: 0, nodesFailed: 0, nodesPending: 0, startTime: undefined, bakeUntilTime: undefined, phase: WavePhase.WAVE_PHASE_UNSPECIFIED, shadowUntilTime: undefined, nodesEnforced: 0, nodesRevertOnly: 0, nodesNeither: 0 },
    ],
    gateReadings: [],
    shadowReadings: [{ node: 'edge-1', wave: 0, classified: 500n, wouldDrop: 400n, wouldAllow: 3n, wouldDropPercent: 80, since: new Date(0), rules: [] }],
    shadowSamples: [
      { node: 'edge-1', family: 4, protocol: 1, source: '198.18.0.9', destination: '10.0.0.1', port: 0, verdict: ShadowVerdict.SHADOW_VERDICT_WOULD_ALLOW, enforcedRule: { policy: 'base', priority: 5 }, candidateRule: undefined, candidateRuleName: '' },
      { node: 'edge-1', family: 4, protocol: 6, source: '198.18.0.7', destination: '10.0.0.1', port: 80, verdict: ShadowVerdict.SHADOW_VERDICT_WOULD_DROP, enforcedRule: undefined, candidateRule: { policy: 'web', priority: 10 }, candidateRuleName: 'no-web' },
    ],
  };
}

test('renderRollout - a wave that failed in shadow: the phase, who shadowed, and each node\'s shadow figures', (t) => {
  const text = renderRollout(failedAtShadow(), new Date(0));
  t.regex(text, /failed - wave 1 \(shadow\): node edge-1 would drop 80\.0%/);
  t.regex(text, /0 node\(s\) enforced the change before the revert, 1 applied only the revert, 0 neither; 1 node\(s\) shadowed it/);
  t.regex(text, /1\s+canary: selector canary=true\s+1\s+0\s+1\s+0\s+0\s+failed in shadow\n/);
  t.regex(text, /wave 1 edge-1: would drop 80\.0% \(400 of 500 packets classified\), would allow 3/);
});

test('describeRollout - lists the sampled flows the change would have broken first, with the rules on both sides', (t) => {
  const text = describeRollout(failedAtShadow(), new Date(0));
  t.regex(text, /Sampled flows the change would have broken: 1 \(of 2 sampled/);
  const rows = text.split('\n').filter((l) => l.startsWith('edge-1'));
  t.is(rows.length, 2);
  t.regex(rows[0]!, /^edge-1\s+would drop\s+tcp\s+198\.18\.0\.7\s+10\.0\.0\.1\s+80\s+default action\s+web\/10 \(no-web\)$/);
  t.regex(rows[1]!, /^edge-1\s+would allow\s+icmp\s+198\.18\.0\.9\s+10\.0\.0\.1\s+-\s+base\/5\s+default action$/);
  const none = describeRollout({ ...failedAtShadow(), shadowSamples: [] }, new Date(0));
  t.regex(none, /Sampled flows: none/);
});
