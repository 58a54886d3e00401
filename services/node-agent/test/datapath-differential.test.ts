// Differential test: the XDP and TC programs, run through BPF_PROG_TEST_RUN on real kernel
// maps, against the reference classifier, on random rule sets and frames aimed at them, and on
// frames at the parser's limits.
// Reproduce a failure with EDGEPLANE_SEED=<seed printed in the failure>.
import { mkdirSync } from 'node:fs';
import test from 'ava';
import { compileTables, genFlags } from '../src/datapath/compile-tables.js';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { buildFrame, type ExtensionHeader, type FrameSpec } from '../src/datapath/packet.js';
import { DEFAULT_RULE_ID, type RuleSetSpec } from '../src/datapath/rule-set.js';
import { ReferenceClassifier } from '../src/datapath/reference-classifier.js';
import { mountBpffs, prng, randomFrame, randomRuleSet, seedFromEnv, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS } from './datapath-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());

test('differential - XDP and TC verdicts and counters equal the reference classifier', async (t) => {
  const seed = seedFromEnv();
  t.log(`seed ${seed} (EDGEPLANE_SEED=${seed} to reproduce)`);
  const rng = prng(seed);
  const datapath = await EbpfDatapath.open({ pinRoot: bpffs.path });
  t.teardown(() => datapath.close());
  // Rule sets of at most 32 rules (7, 32, 20, 5, 12) are small: classified by the LPM values' low
  // bits (classifier.h, ep_rule_slot_small), and IPv4 packets by scanning the prefixes when they fit
  // ep_scan (ep_rule_slot_scan: most sets of 5 to 12 random rules, about half of 20, few of 32);
  // the others walk the vectors.
  const rounds: [number, boolean][] = [[40, false], [200, false], [1500, false], [7, false], [300, true], [5000, true], [32, false], [20, true], [33, true], [5, false], [12, true]];
  const packetsPerRound = 2000;
  for (const [round, [ruleCount, narrow]] of rounds.entries()) {
    const ruleSet = randomRuleSet(rng, ruleCount, { narrow });
    // One oracle per program: the kernel refuses some truncated frames for skb test runs
    // (EINVAL before the program runs), so the TC program may see fewer frames.
    const oracle = new ReferenceClassifier(ruleSet);
    const tcOracle = new ReferenceClassifier(ruleSet);
    await datapath.apply(ruleSet);
    const before = datapath.readCounters();
    let tcSkipped = 0;
    const kinds = new Map<string, number>();
    const hit = new Set<number>();
    for (let i = 0; i < packetsPerRound; i++) {
      const frame = randomFrame(rng, ruleSet);
      const expected = oracle.classify(frame);
      const kind = expected.kind === 'rule' ? `rule ${expected.action}` : expected.kind;
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
      if (expected.kind === 'rule') hit.add(expected.ruleIndex);
      const xdp = datapath.xdpProgram.testRun({ data: frame }).retval;
      let tc = expected.verdict === 'pass' ? TC_ACT_OK : TC_ACT_SHOT;
      try {
        tc = datapath.tcProgram.testRun({ data: frame }).retval;
        tcOracle.classify(frame);
      } catch (error) {
        if (expected.kind !== 'malformed' || (error as { code?: string }).code !== 'EINVAL') throw error;
        tcSkipped++;
      }
      const want = expected.verdict === 'pass' ? [XDP_PASS, TC_ACT_OK] : [XDP_DROP, TC_ACT_SHOT];
      if (xdp !== want[0] || tc !== want[1]) {
        t.fail(`seed ${seed} round ${round} packet ${i}: expected ${JSON.stringify(expected)}, xdp=${xdp} tc=${tc}\nframe ${Buffer.from(frame).toString('hex')}\nrules ${JSON.stringify(ruleSet)}`);
        return;
      }
    }
    const after = datapath.readCounters();
    t.log(`round ${round}: ${ruleCount} rules${(compileTables(ruleSet).genFlags & genFlags.scan) !== 0 ? ' (scanned)' : ''}, ${packetsPerRound} frames, ${tcSkipped} truncated frames refused by the skb test run; ${hit.size} distinct rules hit; ${[...kinds].map(([k, n]) => `${k}: ${n}`).join(', ')}`);
    const sum = (id: number): { packets: number; bytes: number } => {
      const a = oracle.counters().get(id) ?? { packets: 0, bytes: 0 };
      const b = tcOracle.counters().get(id) ?? { packets: 0, bytes: 0 };
      return { packets: a.packets + b.packets, bytes: a.bytes + b.bytes };
    };
    for (const rule of ruleSet.rules) {
      const got = after.rules.get(rule.id);
      const was = before.rules.get(rule.id) ?? { packets: 0, bytes: 0 };
      t.deepEqual(
        { packets: (got?.packets ?? 0) - was.packets, bytes: (got?.bytes ?? 0) - was.bytes },
        sum(rule.id),
        `seed ${seed} round ${round} rule ${rule.id}`,
      );
    }
    t.deepEqual(
      { packets: after.defaultAction.packets - before.defaultAction.packets, bytes: after.defaultAction.bytes - before.defaultAction.bytes },
      sum(DEFAULT_RULE_ID),
      `seed ${seed} round ${round} default`,
    );
    t.is(after.nonIp.packets - before.nonIp.packets, oracle.stats().nonIp.packets + tcOracle.stats().nonIp.packets, `seed ${seed} non-ip`);
    t.is(after.malformed.packets - before.malformed.packets, oracle.stats().malformed.packets + tcOracle.stats().malformed.packets, `seed ${seed} malformed`);
  }
});

test('differential - IPv6 extension-header chains at the parser limits (8 headers, 1,024 bytes, fragments) classify as the reference classifier', async (t) => {
  const pinRoot = `${bpffs.path}/limits`;
  mkdirSync(pinRoot);
  const datapath = await EbpfDatapath.open({ pinRoot });
  t.teardown(() => datapath.close());
  const ruleSet: RuleSetSpec = {
    rules: [
      { id: 1, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 443, to: 443 }], action: 'deny' },
      { id: 2, srcCidrs: [], dstCidrs: [], protocol: 'icmpv6', dstPorts: [], action: 'deny' },
      { id: 3, srcCidrs: [], dstCidrs: [], protocol: 'udp', dstPorts: [{ from: 53, to: 53 }], action: 'allow' },
      { id: 4, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [], action: 'allow' },
    ],
    defaultAction: 'deny',
  };
  await datapath.apply(ruleSet);
  const eight: ExtensionHeader[] = [
    { type: 'hop-by-hop' },
    { type: 'destination', length: 1 },
    { type: 'routing' },
    { type: 'ah', length: 1 },
    { type: 'fragment', offset: 0, more: true },
    { type: 'destination' },
    { type: 'routing', length: 2 },
    { type: 'ah' },
  ];
  // hop-by-hop of length n is (n + 1) * 8 bytes: after Ethernet (14) and IPv6 (40), n = 120
  // puts the L4 header at 1,022, n = 121 at 1,030 (past EP_MAX_L3_OFF).
  const within: ExtensionHeader[] = [{ type: 'hop-by-hop', length: 120 }];
  const past: ExtensionHeader[] = [{ type: 'hop-by-hop', length: 121 }];
  const cases: { name: string; spec: Omit<FrameSpec, 'src' | 'dst'>; expect: number | 'malformed' }[] = [
    { name: '8 headers, TCP', spec: { protocol: 'tcp', dstPort: 443, extensionHeaders: eight }, expect: 1 },
    { name: '8 headers behind 2 VLAN tags, UDP', spec: { protocol: 'udp', dstPort: 53, vlans: [10, 20], extensionHeaders: eight }, expect: 3 },
    { name: '9 headers', spec: { protocol: 'tcp', dstPort: 443, extensionHeaders: [...eight, { type: 'destination' }] }, expect: 'malformed' },
    { name: '7 headers and a non-first fragment, TCP (no port)', spec: { protocol: 'tcp', dstPort: 443, extensionHeaders: [...eight.slice(0, 7), { type: 'fragment', offset: 3 }] }, expect: 4 },
    { name: 'AH and a non-first fragment, ICMPv6', spec: { protocol: 'icmp', extensionHeaders: [{ type: 'ah', length: 3 }, { type: 'fragment', offset: 9 }] }, expect: 2 },
    { name: 'L4 header at 1,022, TCP', spec: { protocol: 'tcp', dstPort: 443, extensionHeaders: within }, expect: 1 },
    { name: 'L4 header at 1,030 behind a VLAN tag, TCP', spec: { protocol: 'tcp', dstPort: 443, vlans: [10], extensionHeaders: within }, expect: 'malformed' },
    { name: 'L4 header at 1,030, TCP', spec: { protocol: 'tcp', dstPort: 443, extensionHeaders: past }, expect: 'malformed' },
    { name: 'L4 header at 1,030, UDP', spec: { protocol: 'udp', dstPort: 53, extensionHeaders: past }, expect: 'malformed' },
    { name: 'L4 header at 1,030, ICMPv6 (no port needed)', spec: { protocol: 'icmp', extensionHeaders: past }, expect: 2 },
    { name: 'an extension header at 1,030', spec: { protocol: 'icmp', extensionHeaders: [...past, { type: 'destination' }] }, expect: 'malformed' },
  ];
  for (const [program, pass] of [[datapath.xdpProgram, XDP_PASS], [datapath.tcProgram, TC_ACT_OK]] as const) {
    const oracle = new ReferenceClassifier(ruleSet);
    const before = datapath.readCounters();
    for (const { name, spec, expect } of cases) {
      const frame = buildFrame({ ...spec, src: '2001:db8::1', dst: '2001:db8::2' });
      const expected = oracle.classify(frame);
      t.is(expected.kind === 'rule' ? expected.ruleId : expected.kind, expect, `${name}: the case is what it says`);
      t.is(program.testRun({ data: frame }).retval === pass, expected.verdict === 'pass', `${program.name} ${name}`);
    }
    const after = datapath.readCounters();
    for (const rule of ruleSet.rules) {
      t.is((after.rules.get(rule.id)?.packets ?? 0) - (before.rules.get(rule.id)?.packets ?? 0), oracle.counters().get(rule.id)?.packets ?? 0, `${program.name} rule ${rule.id}`);
    }
    t.is(after.malformed.packets - before.malformed.packets, oracle.stats().malformed.packets, `${program.name} malformed`);
  }
});
