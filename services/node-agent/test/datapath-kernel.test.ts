// The eBPF datapath on the real kernel without interfaces: rate limiting, capacity, the
// verifier error path and the verifier's cost, re-adoption of pinned state, close semantics.
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import test from 'ava';
import { BpfMap, VerifierError } from 'libbpf-ts';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { DatapathError } from '../src/datapath/errors.js';
import { buildFrame } from '../src/datapath/packet.js';
import { ReferenceClassifier } from '../src/datapath/reference-classifier.js';
import type { RuleSetSpec, RuleSpec } from '../src/datapath/rule-set.js';
import { mountBpffs, XDP_DROP, XDP_PASS } from './datapath-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());
let next = 0;
// One pin root per test, so the tests' datapaths do not adopt each other.
const freshRoot = (): string => {
  const dir = `${bpffs.path}/dp${next++}`;
  mkdirSync(dir);
  return dir;
};

test('rate limit - a burst of N passes exactly N per source, each source has its own bucket', async (t) => {
  const pinRoot = freshRoot();
  const datapath = await EbpfDatapath.open({ pinRoot });
  t.teardown(() => datapath.close());
  const ruleSet: RuleSetSpec = {
    rules: [{ id: 7, srcCidrs: ['10.0.0.0/8'], dstCidrs: [], protocol: 'udp', dstPorts: [{ from: 53, to: 53 }], action: 'rate_limit', rateLimit: { pps: 1, burst: 5 } }],
    defaultAction: 'allow',
  };
  await datapath.apply(ruleSet);
  // The oracle's clock stands still: with pps = 1 the test's milliseconds refill no whole token.
  const oracle = new ReferenceClassifier(ruleSet, { now: () => 0n });
  for (const src of ['10.0.0.1', '10.0.0.2']) {
    const frame = buildFrame({ src, dst: '192.0.2.53', protocol: 'udp', dstPort: 53 });
    const verdicts = Array.from({ length: 8 }, () => datapath.xdpProgram.testRun({ data: frame }).retval);
    const expected = Array.from({ length: 8 }, () => (oracle.classify(frame).verdict === 'pass' ? XDP_PASS : XDP_DROP));
    t.deepEqual(verdicts, [...Array(5).fill(XDP_PASS), ...Array(3).fill(XDP_DROP)], src);
    t.deepEqual(verdicts, expected);
  }
  const counters = datapath.readCounters();
  t.is(counters.rules.get(7)?.packets, 16);
  t.is(counters.rateLimited.packets, 6);
  // The bucket belongs to the rule id, not the generation: a new rule set keeps both buckets as
  // they are (compared in the map, not by a probe: an apply may take longer than the 1 s in which
  // pps = 1 refills a token).
  const buckets = BpfMap.openPinned(join(pinRoot, 'ep_buckets'));
  t.teardown(() => buckets.close());
  const bucketState = (): string[] => [...buckets.entries()].map(([k, v]) => `${Buffer.from(k).toString('hex')}=${Buffer.from(v).toString('hex')}`).sort();
  const before = bucketState();
  t.is(before.length, 2, 'a bucket per source');
  await datapath.apply({ ...ruleSet, rules: [...ruleSet.rules, { id: 8, srcCidrs: ['192.0.2.0/24'], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'deny' }] });
  t.deepEqual(bucketState(), before, 'the apply left the buckets as they were');
  datapath.xdpProgram.testRun({ data: buildFrame({ src: '10.0.0.1', dst: '192.0.2.53', protocol: 'udp', dstPort: 53 }) });
  t.is(datapath.readCounters().rules.get(7)?.packets, 17, 'counters continue across applies');
});

test('counters - a rule an apply removes keeps what it counted up to the switch, as retired, after a whole install, the bring-up after it, and an update', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  const deny23: RuleSpec = { id: 23, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 23, to: 23 }], action: 'deny' };
  const deny24: RuleSpec = { ...deny23, id: 24, dstPorts: [{ from: 24, to: 24 }] };
  await datapath.apply({ rules: [deny23], defaultAction: 'allow' });
  const telnet = buildFrame({ src: '10.0.0.1', dst: '192.0.2.1', protocol: 'tcp', dstPort: 23 });
  for (let i = 0; i < 3; i++) t.is(datapath.xdpProgram.testRun({ data: telnet }).retval, XDP_DROP);
  await datapath.apply({ rules: [deny24], defaultAction: 'allow' });
  const after = datapath.readCounters();
  t.deepEqual([...after.rules.keys()], [24]);
  t.is(after.retired?.get(23)?.packets, 3, 'the removed rule still says what it counted');
  t.is(datapath.xdpProgram.testRun({ data: telnet }).retval, XDP_PASS);
  // The generation just left is brought up to date in the background (its counts carried), then another change.
  await datapath.settled();
  t.is(datapath.readCounters().retired?.get(23)?.packets, 3);
  // The next change writes the generation by difference: the rule it removes is retired the same way.
  t.is(datapath.xdpProgram.testRun({ data: buildFrame({ src: '10.0.0.1', dst: '192.0.2.1', protocol: 'tcp', dstPort: 24 }) }).retval, XDP_DROP);
  const write = await datapath.apply({ rules: [{ ...deny23, id: 25, dstPorts: [{ from: 25, to: 25 }] }], defaultAction: 'allow' });
  t.is(write.write, 'updated');
  t.is(datapath.readCounters().retired?.get(24)?.packets, 1);
});

test('capacity - 65,536 rules load and classify first, last and no match', async (t) => {
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  const rules: RuleSpec[] = Array.from({ length: 65_536 }, (_, i) => ({
    id: i,
    srcCidrs: [`10.${i >> 8}.${i & 255}.0/24`],
    dstCidrs: [],
    protocol: 'tcp',
    dstPorts: [{ from: 1000 + (i % 7), to: 2000 }],
    action: i % 2 === 0 ? 'deny' : 'allow',
  }));
  const ruleSet: RuleSetSpec = { rules, defaultAction: 'deny' };
  const started = Date.now();
  const result = await datapath.apply(ruleSet);
  t.log(`apply of 65,536 rules: ${Date.now() - started} ms, ${result.lpmEntries} LPM entries, ${result.classWords} class words, ${result.classCount} classes`);
  const oracle = new ReferenceClassifier(ruleSet);
  const cases: [string, number, number][] = [
    ['10.0.0.9', 1500, 0],
    ['10.255.255.9', 1500, 65_535],
    ['10.255.254.9', 1005, 65_534],
    ['10.128.7.1', 1999, 0x8007],
    ['11.0.0.1', 1500, -1],
    ['10.0.1.9', 999, -1],
  ];
  for (const [src, dstPort, index] of cases) {
    const frame = buildFrame({ src, dst: '192.0.2.1', protocol: 'tcp', dstPort });
    const expected = oracle.classify(frame);
    t.is(expected.kind === 'rule' ? expected.ruleIndex : -1, index, `oracle ${src}:${dstPort}`);
    const before = datapath.readCounters();
    const retval = datapath.tcProgram.testRun({ data: frame }).retval;
    t.is(retval, expected.verdict === 'pass' ? 0 : 2, `tc ${src}:${dstPort}`);
    const after = datapath.readCounters();
    if (index >= 0) t.is((after.rules.get(index)?.packets ?? 0) - (before.rules.get(index)?.packets ?? 0), 1);
    else t.is(after.defaultAction.packets - before.defaultAction.packets, 1);
  }
});

test('load - a program the verifier rejects raises DatapathError carrying the verifier log', async (t) => {
  const objectPath = fileURLToPath(new URL('../../../bpf/build/fixtures/verifier_reject.bpf.o', import.meta.url));
  const error = await t.throwsAsync(EbpfDatapath.open({ pinRoot: freshRoot(), objectPath }), { instanceOf: DatapathError });
  t.true(error?.cause instanceof VerifierError);
  t.regex((error?.cause as VerifierError).log, /invalid access to packet/);
});

test('load - each datapath program verifies in under 200,000 instructions (bpf/README.md, "Verifier cost")', async (t) => {
  // Every datapath test and every agent start or upgrade waits for the verifier: at 700,000
  // instructions a program took seconds of kernel CPU to load.
  const datapath = await EbpfDatapath.open({ pinRoot: freshRoot() });
  t.teardown(() => datapath.close());
  for (const program of [datapath.xdpProgram, datapath.tcProgram, datapath.tcEgressProgram]) {
    t.true(program.verifiedInsns > 0, program.name);
    t.true(program.verifiedInsns < 200_000, `${program.name}: ${program.verifiedInsns} instructions`);
  }
});

test('adopt - a reopened datapath keeps program ids, tables and counters; close twice is safe', async (t) => {
  const root = freshRoot();
  const first = await EbpfDatapath.open({ pinRoot: root });
  t.false(first.adopted);
  const ruleSet: RuleSetSpec = { rules: [{ id: 1, srcCidrs: ['2001:db8::/32'], dstCidrs: [], protocol: 'icmpv6', dstPorts: [], action: 'deny' }], defaultAction: 'allow' };
  await first.apply(ruleSet);
  const frame = buildFrame({ src: '2001:db8::1', dst: '2001:db8::2', protocol: 'icmp' });
  t.is(first.xdpProgram.testRun({ data: frame }).retval, XDP_DROP);
  const ids = [first.xdpProgram.id, first.tcProgram.id];
  first.close();
  first.close();
  const second = await EbpfDatapath.open({ pinRoot: root });
  t.teardown(() => second.close());
  t.true(second.adopted);
  t.deepEqual([second.xdpProgram.id, second.tcProgram.id], ids);
  t.is(second.xdpProgram.testRun({ data: frame }).retval, XDP_DROP);
  t.is(second.readCounters().rules.get(1)?.packets, 2);
  t.is((await second.apply(ruleSet)).mode, 'unchanged');
});
