// CounterStore's marks: where a node's totals stood when it first reported under each applied
// revision, what a rollout gate reads "since the node enforced the change" from. Pure.
import test from 'ava';
import { LoadBalancerStatus, MAX_COUNTER_MARKS, type CounterReport, type InterfaceCounters } from '@edgeplane/proto';
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

test('counter store - replacing a node\'s totals, in place (the same rules and interfaces) or anew, leaves what a fresh store holds, per node and for the fleet', (t) => {
  // A small generator with a fixed seed: the same run every time.
  let seed = 7;
  const rand = (n: number): number => {
    seed = (seed * 1_103_515_245 + 12_345) & 0x7fffffff;
    return (seed >>> 12) % n;
  };
  const nodes = ['n1', 'n2', 'n3'];
  const totalsOf = (): Parameters<CounterStore['replace']>[1] => {
    // Rules 1..k of policy p (or of q): often the same set as before.
    const k = rand(4) === 0 ? 2 : 1;
    const policy = rand(8) === 0 ? 'q' : 'p';
    const rules = Array.from({ length: k }, (_, i) => ({ rule: { policy, priority: i + 1 }, ruleName: `${policy}-${i + 1}`, packets: BigInt(rand(1000)), bytes: BigInt(rand(100_000)), rateLimitedPackets: BigInt(rand(10)) }));
    const iface = (name: string): InterfaceCounters => ({ interface: name, passedPackets: BigInt(rand(1000)), droppedPackets: BigInt(rand(100)), passedBytes: BigInt(rand(9999)), droppedBytes: 0n, defaultActionPackets: BigInt(rand(5)), nonIpPackets: 0n, malformedPackets: 0n });
    // Interfaces: sometimes another set of the same size (wl1 for uplink), sometimes a larger one.
    const pick = rand(8);
    const interfaces = pick === 0 ? [iface('uplink'), iface('wl0')] : pick === 1 ? [iface('wl1')] : [iface('uplink')];
    const loadBalancer = rand(2) ? LoadBalancerStatus.fromPartial({ selected: BigInt(rand(50)), noBackend: BigInt(rand(3)) }) : undefined;
    return { rules, interfaces, conntrack: [], blocklists: [], loadBalancer };
  };
  const store = new CounterStore();
  const last = new Map<string, Parameters<CounterStore['replace']>[1]>();
  let inPlace = 0;
  for (let round = 0; round < 400; round++) {
    const node = nodes[rand(nodes.length)]!;
    const totals = totalsOf();
    const before = last.get(node);
    const names = (x: Parameters<CounterStore['replace']>[1]): string => JSON.stringify([x.rules.map((r) => r.rule), x.interfaces.map((i) => i.interface)]);
    const same = before && names(before) === names(totals);
    if (same) inPlace++;
    store.replace(node, totals);
    last.set(node, totals);
    // What a store that only ever saw each node's newest totals holds.
    const fresh = new CounterStore();
    for (const [n, tot] of last) fresh.replace(n, tot);
    for (const n of nodes) {
      t.deepEqual(store.nodeRules(n), fresh.nodeRules(n), `round ${round}: rules of ${n}`);
      t.deepEqual(store.nodeInterfaces(n), fresh.nodeInterfaces(n), `round ${round}: interfaces of ${n}`);
      t.deepEqual(store.nodeLoadBalancer(n), fresh.nodeLoadBalancer(n), `round ${round}: load-balancer counters of ${n}`);
    }
    t.deepEqual(store.fleetRules(), fresh.fleetRules(), `round ${round}: the fleet's sums`);
  }
  t.true(inPlace > 60 && inPlace < 340, `both paths taken (${inPlace} of 400 replaces had the same keys)`);
});
