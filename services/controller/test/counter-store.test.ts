// CounterStore's marks: where a node's totals stood when it first reported under each applied
// revision, what a rollout gate reads "since the node enforced the change" from. Pure.
import test from 'ava';
import { MAX_COUNTER_MARKS, type CounterReport } from '@edgeplane/proto';
import { CounterStore } from '../src/counter-store.js';

const report = (appliedRevision: bigint, packets: bigint, dropped: bigint): CounterReport => ({
  startTime: undefined,
  endTime: undefined,
  appliedRevision,
  conntrack: [], blocklists: [],
  loadBalancer: undefined,
  shadow: undefined,
  rules: [],
  interfaces: [{ interface: 'uplink', passedPackets: packets - dropped, droppedPackets: dropped, passedBytes: 0n, droppedBytes: 0n, defaultActionPackets: 0n, nonIpPackets: 0n, malformedPackets: 0n }],
});

test('counter store - since(revision) counts the reports under that revision or later, and the totals before the first of them', (t) => {
  const s = new CounterStore();
  const told: string[] = [];
  s.watch((node) => told.push(node));
  s.add('n', report(4n, 1000n, 10n));
  t.is(s.since('n', 5n), undefined, 'nothing counted under revision 5 yet');
  s.add('n', report(4n, 300n, 0n));
  s.add('n', report(5n, 30n, 30n));
  s.add('n', report(6n, 20n, 10n));
  t.deepEqual(s.since('n', 5n), { before: { packets: 1300n, dropped: 10n }, since: { packets: 50n, dropped: 40n } });
  t.deepEqual(s.since('n', 6n), { before: { packets: 1330n, dropped: 40n }, since: { packets: 20n, dropped: 10n } });
  t.deepEqual(told, ['n', 'n', 'n', 'n'], 'every report is told as it arrives');
});

test('counter store - another replica\'s totals bring their marks; marks are bounded per node and forgotten with it', (t) => {
  const a = new CounterStore();
  for (let r = 1n; r <= BigInt(MAX_COUNTER_MARKS) + 4n; r++) a.add('n', report(r, 10n, 1n));
  t.is(a.nodeMarks('n').length, MAX_COUNTER_MARKS);
  t.is(a.nodeMarks('n')[0]?.revision, 5n, 'the oldest marks go first');
  const b = new CounterStore();
  b.replace('n', { rules: a.nodeRules('n'), interfaces: a.nodeInterfaces('n'), conntrack: [], blocklists: [], counterMarks: a.nodeMarks('n') });
  t.deepEqual(b.since('n', 10n), a.since('n', 10n));
  b.forget('n');
  t.is(b.since('n', 10n), undefined);
  t.deepEqual(b.nodeMarks('n'), []);
});
