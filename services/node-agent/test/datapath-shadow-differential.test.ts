// Differential test of shadow classification (bpf/README.md, "One walk for both rule sets"): the
// XDP and TC programs, through BPF_PROG_TEST_RUN on real kernel maps, with a random enforced rule
// set and a candidate a few random edits away from it (actions flipped, rules deleted, inserted,
// moved, matches changed, the default flipped). The enforced verdicts and counters must equal the
// reference classifier's for the enforced set, the shadow counters its counters for the candidate
// and the would-drop / would-allow counts the comparison of the two; first with the union walked
// once for both, then after an apply of another enforced set (the union no longer holds it: two
// classifications).
// Reproduce a failure with EDGEPLANE_SEED=<seed printed in the failure>.
import test from 'ava';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { DEFAULT_RULE_ID, type RuleAction, type RuleSetSpec, type RuleSpec } from '../src/datapath/rule-set.js';
import { ReferenceClassifier } from '../src/datapath/reference-classifier.js';
import type { Counter } from '../src/datapath/datapath.js';
import { mountBpffs, prng, randomFrame, randomRuleSet, seedFromEnv, TC_ACT_OK, verdictOf, XDP_PASS } from './datapath-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());

// A rule's action as the shadow compares it: rate_limit passes (bpf/README.md, "What is counted").
const passes = (action: string): boolean => action !== 'deny';

function withAction(rule: RuleSpec, action: RuleAction): RuleSpec {
  const { rateLimit: _dropped, ...rest } = rule;
  return action === 'rate_limit' ? { ...rest, action, rateLimit: { pps: 1000, burst: 1_000_000 } } : { ...rest, action };
}

// `set` after `edits` random edits; new rules get ids from `nextId` on.
function edited(rng: () => number, set: RuleSetSpec, edits: number, nextId: { value: number }, narrow: boolean): RuleSetSpec {
  const rules = [...set.rules];
  const at = (extra = 0): number => Math.floor(rng() * (rules.length + extra));
  const fresh = (): RuleSpec => ({ ...(randomRuleSet(rng, 1, { narrow }).rules[0] as RuleSpec), id: nextId.value++ });
  for (let k = 0; k < edits; k++) {
    const kind = rules.length === 0 ? 'insert' : (['action', 'delete', 'insert', 'move', 'match'] as const)[Math.floor(rng() * 5)];
    if (kind === 'insert') {
      rules.splice(at(1), 0, fresh());
      continue;
    }
    const i = at();
    const rule = rules[i] as RuleSpec;
    if (kind === 'action') rules[i] = withAction(rule, (['allow', 'deny', 'rate_limit'] as const).filter((a) => a !== rule.action)[Math.floor(rng() * 2)] as RuleAction);
    else if (kind === 'delete') rules.splice(i, 1);
    else if (kind === 'match') rules[i] = withAction(fresh(), rule.action);
    else {
      rules.splice(i, 1);
      rules.splice(at(1), 0, rule);
    }
  }
  return { rules, defaultAction: rng() < 0.3 ? (set.defaultAction === 'allow' ? 'deny' : 'allow') : set.defaultAction };
}

const delta = (after: Counter | undefined, before: Counter | undefined): Counter => ({ packets: (after?.packets ?? 0) - (before?.packets ?? 0), bytes: (after?.bytes ?? 0) - (before?.bytes ?? 0) });

test('shadow differential - enforced verdicts and counters, candidate counters and differing counts equal the reference classifier, in one walk and in two', async (t) => {
  const seed = seedFromEnv();
  t.log(`seed ${seed} (EDGEPLANE_SEED=${seed} to reproduce)`);
  const rng = prng(seed);
  const datapath = await EbpfDatapath.open({ pinRoot: bpffs.path });
  t.teardown(() => datapath.close());
  const nextId = { value: 500_000 };
  const rounds: [number, boolean, number][] = [
    [30, false, 6],
    [300, false, 20],
    [2000, true, 40],
  ];
  const packetsPerPhase = 1200;
  for (const [round, [ruleCount, narrow, edits]] of rounds.entries()) {
    const enforced = randomRuleSet(rng, ruleCount, { narrow });
    const candidate = edited(rng, enforced, edits, nextId, narrow);
    const candidateOracle = new ReferenceClassifier(candidate);
    // A third of the frames aim at the candidate's edited rules, where the verdicts may differ.
    const editedRules = candidate.rules.filter((rule) => !enforced.rules.includes(rule));
    const expectedDiff = { wouldDrop: 0, wouldAllow: 0, classified: 0 };
    await datapath.apply(enforced);
    await datapath.setShadow(candidate, `round ${round}`);
    t.is(datapath.shadowWalk(), 'one', `round ${round}: the union holds the live rule set`);
    // The agent sets a shadow-phase revision's candidate, then applies its enforced rule sets (the
    // same rules, new objects): an unchanged apply keeps the generation and the one walk.
    await datapath.apply(structuredClone(enforced));
    t.is(datapath.shadowWalk(), 'one', `round ${round}: an unchanged apply keeps the one walk`);
    // Phase 2 enforces another rule set: the union no longer holds it.
    const phases: [string, RuleSetSpec, 'one' | 'two'][] = [
      ['one walk', enforced, 'one'],
      ['two walks', edited(rng, enforced, edits, nextId, narrow), 'two'],
    ];
    for (const [phase, live, walk] of phases) {
      if (live !== enforced) await datapath.apply(live);
      t.is(datapath.shadowWalk(), walk, `round ${round} ${phase}`);
      const where = `seed ${seed} round ${round} (${ruleCount} rules, ${edits} edits) ${phase}`;
      const oracle = new ReferenceClassifier(live);
      const before = datapath.readCounters();
      let differing = 0;
      for (let i = 0; i < packetsPerPhase; i++) {
        const roll = rng();
        const frame = randomFrame(rng, roll < 0.33 && editedRules.length > 0 ? { ...candidate, rules: editedRules } : roll < 0.66 ? live : candidate);
        for (const [program, pass] of [[datapath.xdpProgram, XDP_PASS], [datapath.tcProgram, TC_ACT_OK]] as const) {
          const retval = verdictOf(program, frame);
          if (retval === undefined) continue;
          const expected = oracle.classify(frame);
          if ((retval === pass) !== (expected.verdict === 'pass')) {
            t.fail(`${where} packet ${i} ${program.name}: expected ${JSON.stringify(expected)}, got ${retval}\nframe ${Buffer.from(frame).toString('hex')}`);
            return;
          }
          if (expected.kind !== 'rule' && expected.kind !== 'default') continue;
          const shadow = candidateOracle.classify(frame);
          if (shadow.kind !== 'rule' && shadow.kind !== 'default') throw new Error('the candidate parses a frame otherwise');
          expectedDiff.classified++;
          const enforcedPasses = passes(expected.action);
          if (enforcedPasses !== passes(shadow.action)) {
            differing++;
            if (enforcedPasses) expectedDiff.wouldDrop++;
            else expectedDiff.wouldAllow++;
          }
        }
      }
      const after = datapath.readCounters();
      for (const rule of live.rules) t.deepEqual(delta(after.rules.get(rule.id), before.rules.get(rule.id)), oracle.counters().get(rule.id) ?? { packets: 0, bytes: 0 }, `${where}: enforced rule ${rule.id}`);
      t.deepEqual(delta(after.defaultAction, before.defaultAction), oracle.counters().get(DEFAULT_RULE_ID) ?? { packets: 0, bytes: 0 }, `${where}: enforced default`);
      const shadow = datapath.readShadow();
      if (shadow === null) throw new Error('no candidate');
      for (const rule of candidate.rules) t.is(shadow.rules.get(rule.id)?.packets, candidateOracle.counters().get(rule.id)?.packets ?? 0, `${where}: candidate rule ${rule.id}`);
      t.is(shadow.defaultAction.packets, candidateOracle.counters().get(DEFAULT_RULE_ID)?.packets ?? 0, `${where}: candidate default`);
      t.deepEqual(
        { wouldDrop: shadow.wouldDrop.packets, wouldAllow: shadow.wouldAllow.packets, classified: shadow.classified.packets },
        expectedDiff,
        `${where}: differing and classified packets`,
      );
      t.log(`${where}: ${expectedDiff.classified} classified so far, ${differing} differing in this phase`);
    }
    await datapath.setShadow(null);
  }
});
