// Bounds on the shadow counters an agent reports (issue 18): checked before anything is kept.
import test from 'ava';
import { MAX_SHADOW_CANDIDATE_LENGTH, MAX_SHADOW_SAMPLES, ShadowVerdict, type CounterReport, type ShadowFlow, type ShadowReport } from '@edgeplane/proto';
import { validateCounterReport } from '../src/agent-input.js';
import { CounterStore } from '../src/counter-store.js';

const flow = (port: number): ShadowFlow => ({ node: '', family: 4, protocol: 6, source: '198.18.0.1', destination: '10.0.0.1', port, verdict: ShadowVerdict.SHADOW_VERDICT_WOULD_DROP, enforcedRule: undefined, candidateRule: { policy: 'web', priority: 1 }, candidateRuleName: 'deny' });
const shadow = (s: Partial<ShadowReport> = {}): ShadowReport => ({ node: 'n1', candidate: 'web@7', classified: 10n, wouldDrop: 4n, wouldAllow: 1n, defaultActionPackets: 6n, rules: [], samples: [flow(80)], ...s });
const report = (s: ShadowReport | undefined): CounterReport => ({ startTime: undefined, endTime: undefined, rules: [], interfaces: [], appliedRevision: 0n, conntrack: [], blocklists: [], loadBalancer: undefined, shadow: s });
const fields = (s: ShadowReport): string[] => validateCounterReport(report(s)).map((v) => `${v.field} ${v.reason}`);

test('validateCounterReport - a shadow report: a node name, a bounded candidate, differing packets within those classified, bounded samples', (t) => {
  t.deepEqual(fields(shadow()), []);
  t.deepEqual(fields(shadow({ node: 'Not_A_Node' })), ['counters.shadow.node INVALID_NAME']);
  t.deepEqual(fields(shadow({ candidate: 'x'.repeat(MAX_SHADOW_CANDIDATE_LENGTH + 1) })), ['counters.shadow.candidate TOO_LONG']);
  t.deepEqual(fields(shadow({ classified: 4n })), ['counters.shadow.classified INCONSISTENT']);
  t.deepEqual(fields(shadow({ samples: Array.from({ length: MAX_SHADOW_SAMPLES + 1 }, (_, i) => flow(i)) })), ['counters.shadow.samples TOO_MANY_ENTRIES']);
  t.deepEqual(fields(shadow({ samples: [{ ...flow(70_000), family: 5, verdict: ShadowVerdict.SHADOW_VERDICT_UNSPECIFIED }] })), ['counters.shadow.samples[0].family OUT_OF_RANGE', 'counters.shadow.samples[0].port OUT_OF_RANGE', 'counters.shadow.samples[0].verdict INVALID_VERDICT']);
});

test('CounterStore - keeps each node\'s newest shadow report, since when it first reported that candidate', (t) => {
  const store = new CounterStore();
  store.add('n1', report(shadow()), new Date(1000));
  store.add('n1', report(shadow({ classified: 20n })), new Date(2000));
  t.is(store.nodeShadow('n1')?.report.classified, 20n, 'replaced, not summed');
  t.is(store.nodeShadow('n1')?.since.getTime(), 1000, 'the same candidate: since its first report');
  store.add('n1', report(undefined), new Date(3000));
  t.is(store.nodeShadow('n1')?.report.classified, 20n, 'a report without shadow counters keeps the last ones');
  store.add('n1', report(shadow({ candidate: 'web@9' })), new Date(4000));
  t.is(store.nodeShadow('n1')?.since.getTime(), 4000, 'a new candidate: since now');
  store.replace('n1', { rules: [], interfaces: [], conntrack: [], blocklists: [], shadow: shadow({ candidate: 'web@9', classified: 30n }) });
  t.deepEqual([store.nodeShadow('n1')?.report.classified, store.nodeShadow('n1')?.since.getTime()], [30n, 4000], 'another replica\'s totals keep when this one first heard the candidate');
  store.forget('n1');
  t.is(store.nodeShadow('n1'), undefined);
});
