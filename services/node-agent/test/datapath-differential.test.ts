// Differential test: the XDP and TC programs, run through BPF_PROG_TEST_RUN on real kernel
// maps, against the reference classifier, on random rule sets and frames aimed at them.
// Reproduce a failure with EDGEPLANE_SEED=<seed printed in the failure>.
import test from 'ava';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { DEFAULT_RULE_ID } from '../src/datapath/rule-set.js';
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
  const rounds: [number, boolean][] = [[40, false], [200, false], [1500, false], [7, false], [300, true], [5000, true]];
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
    t.log(`round ${round}: ${ruleCount} rules, ${packetsPerRound} frames, ${tcSkipped} truncated frames refused by the skb test run; ${hit.size} distinct rules hit; ${[...kinds].map(([k, n]) => `${k}: ${n}`).join(', ')}`);
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
