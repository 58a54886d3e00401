// Prefix lists named by rules (bpf/README.md, "Prefix lists in rules"), through BPF_PROG_TEST_RUN
// on real kernel maps: random rule sets whose rules name random lists as source and destination
// (with and without prefixes of their own), frames aimed at the lists' prefixes, verdicts and
// counters of the XDP and TC programs equal to the reference classifier's; then the lists change
// (a few prefixes: in place; many: new tries), the rules change (an update of the idle
// generation), and a shadow candidate names lists too. A million-prefix list is probed at its
// first, middle and last prefix.
// Reproduce a failure with EDGEPLANE_SEED=<seed printed in the failure>.
import { mkdirSync } from 'node:fs';
import test, { type ExecutionContext } from 'ava';
import { formatCidr, parseCidr, type Cidr } from '@edgeplane/proto';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { DEFAULT_RULE_ID, type RuleSetSpec, type RuleSpec } from '../src/datapath/rule-set.js';
import { ReferenceClassifier } from '../src/datapath/reference-classifier.js';
import { RuleSetError } from '../src/datapath/errors.js';
import type { Counter } from '../src/datapath/datapath.js';
import { buildFrame } from '../src/datapath/packet.js';
import { mountBpffs, prng, randomFrame, randomRuleSet, seedFromEnv, TC_ACT_OK, verdictOf, XDP_DROP, XDP_PASS } from './datapath-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());

const delta = (after: Counter | undefined, before: Counter | undefined): Counter => ({ packets: (after?.packets ?? 0) - (before?.packets ?? 0), bytes: (after?.bytes ?? 0) - (before?.bytes ?? 0) });

const pickFrom = <T>(rng: () => number, list: readonly T[]): T => list[Math.floor(rng() * list.length)] as T;

// Random lists of prefixes from the helpers' address universe (the prefixes of a random rule set).
function randomLists(rng: () => number, count: number): Record<string, string[]> {
  const lists: Record<string, string[]> = {};
  for (let i = 0; i < count; i++) {
    const pool = randomRuleSet(rng, 40).rules.flatMap((rule) => [...rule.srcCidrs, ...rule.dstCidrs]);
    // Canonical and each once, as a PrefixList holds them (the datapath's contract).
    lists[`list-${i}`] = [...new Set(pool.filter(() => rng() < 0.5).map((text) => formatCidr(parseCidr(text) as Cidr)))];
  }
  return lists;
}

// `set` with a third of its rules naming lists (some instead of their prefixes).
function withLists(rng: () => number, set: RuleSetSpec, lists: Record<string, string[]>): RuleSetSpec {
  const names = Object.keys(lists);
  const rules = set.rules.map((rule): RuleSpec => {
    if (rng() < 0.66) return rule;
    const out: RuleSpec = { ...rule };
    if (rng() < 0.6) {
      out.srcLists = [...new Set([pickFrom(rng, names), pickFrom(rng, names)])];
      if (rng() < 0.5) out.srcCidrs = [];
    }
    if (rng() < 0.4) {
      out.dstLists = [pickFrom(rng, names)];
      if (rng() < 0.5) out.dstCidrs = [];
    }
    return out;
  });
  return { ...set, rules, lists };
}

// For randomFrame: each rule's prefixes with a few of its lists', so frames land in the lists.
function aimAt(rng: () => number, set: RuleSetSpec): RuleSetSpec {
  const some = (names: readonly string[] | undefined): string[] => (names ?? []).flatMap((name) => (set.lists?.[name] ?? []).filter(() => rng() < 0.2));
  return { ...set, rules: set.rules.map((rule) => ({ ...rule, srcCidrs: [...rule.srcCidrs, ...some(rule.srcLists)], dstCidrs: [...rule.dstCidrs, ...some(rule.dstLists)] })) };
}

// Sends `count` frames through both programs; fails on the first verdict the reference differs
// on, then checks every rule's counter.
async function check(t: ExecutionContext, datapath: EbpfDatapath, live: RuleSetSpec, rng: () => number, count: number, where: string): Promise<boolean> {
  const oracle = new ReferenceClassifier(live);
  const aimed = aimAt(rng, live);
  const before = datapath.readCounters();
  for (let i = 0; i < count; i++) {
    const frame = randomFrame(rng, aimed);
    for (const [program, pass] of [[datapath.xdpProgram, XDP_PASS], [datapath.tcProgram, TC_ACT_OK]] as const) {
      const retval = verdictOf(program, frame);
      if (retval === undefined) continue;
      const expected = oracle.classify(frame);
      if ((retval === pass) !== (expected.verdict === 'pass')) {
        t.fail(`${where} packet ${i} ${program.name}: expected ${JSON.stringify(expected)}, got ${retval}\nframe ${Buffer.from(frame).toString('hex')}`);
        return false;
      }
    }
  }
  const after = datapath.readCounters();
  for (const rule of live.rules) t.deepEqual(delta(after.rules.get(rule.id), before.rules.get(rule.id)), oracle.counters().get(rule.id) ?? { packets: 0, bytes: 0 }, `${where}: rule ${rule.id}`);
  t.deepEqual(delta(after.defaultAction, before.defaultAction), oracle.counters().get(DEFAULT_RULE_ID) ?? { packets: 0, bytes: 0 }, `${where}: default`);
  return true;
}

test('rules naming prefix lists classify as the reference classifier, through list and rule changes', async (t) => {
  const seed = seedFromEnv();
  t.log(`seed ${seed} (EDGEPLANE_SEED=${seed} to reproduce)`);
  const rng = prng(seed);
  const datapath = await EbpfDatapath.open({ pinRoot: bpffs.path });
  t.teardown(() => datapath.close());
  for (const [round, ruleCount] of [40, 400].entries()) {
    const lists = randomLists(rng, 5);
    const live = withLists(rng, randomRuleSet(rng, ruleCount), lists);
    await datapath.apply(live);
    if (!(await check(t, datapath, live, rng, 800, `seed ${seed} round ${round}: first apply`))) return;
    // A few prefixes added to and removed from each list: written in place, under the live generation.
    const small: Record<string, string[]> = {};
    for (const [name, prefixes] of Object.entries(lists)) small[name] = [...prefixes.filter(() => rng() < 0.9), ...(randomLists(rng, 1)['list-0'] as string[]).slice(0, 5)].filter((p, i, all) => all.indexOf(p) === i);
    const listsChanged = { ...live, lists: small };
    const result = await datapath.apply(listsChanged);
    t.is(result.mode, 'unchanged', 'a change of the lists alone keeps the generation');
    if (!(await check(t, datapath, listsChanged, rng, 800, `seed ${seed} round ${round}: lists changed in place`))) return;
    // Whole new lists (the same names): new tries.
    const fresh = { ...live, lists: randomLists(rng, 5) };
    await datapath.apply(fresh);
    if (!(await check(t, datapath, fresh, rng, 800, `seed ${seed} round ${round}: lists replaced`))) return;
    // A few rules replaced (new lists named among them): the idle generation updated by difference.
    const rules = [...fresh.rules];
    for (let k = 0; k < 4; k++) {
      const i = Math.floor(rng() * rules.length);
      rules[i] = { ...(withLists(rng, randomRuleSet(rng, 1), fresh.lists).rules[0] as RuleSpec), id: (rules[i] as RuleSpec).id, srcLists: ['list-4'] };
    }
    const ruleChange = { ...fresh, rules };
    await datapath.apply(ruleChange);
    if (!(await check(t, datapath, ruleChange, rng, 800, `seed ${seed} round ${round}: rules changed`))) return;
    // A candidate naming the lists: its counters are the reference classifier's.
    const candidate = withLists(rng, randomRuleSet(rng, ruleCount), ruleChange.lists);
    await datapath.setShadow(candidate, `round ${round}`);
    const candidateOracle = new ReferenceClassifier(candidate);
    const aimed = aimAt(rng, candidate);
    for (let i = 0; i < 600; i++) {
      const frame = randomFrame(rng, aimed);
      if (verdictOf(datapath.xdpProgram, frame) !== undefined) candidateOracle.classify(frame);
    }
    const shadow = datapath.readShadow();
    if (shadow === null) throw new Error('no candidate');
    for (const rule of candidate.rules) t.is(shadow.rules.get(rule.id)?.packets ?? 0, candidateOracle.counters().get(rule.id)?.packets ?? 0, `seed ${seed} round ${round}: candidate rule ${rule.id}`);
    await datapath.setShadow(null);
  }
});

test('a rule naming a list the rule set does not hold is refused, and nothing changes', async (t) => {
  mkdirSync(`${bpffs.path}/refused`, { recursive: true });
  const datapath = await EbpfDatapath.open({ pinRoot: `${bpffs.path}/refused` });
  t.teardown(() => datapath.close());
  const good: RuleSetSpec = { rules: [{ id: 1, srcCidrs: [], dstCidrs: [], srcLists: ['feed'], protocol: 'any', dstPorts: [], action: 'deny' }], defaultAction: 'allow', lists: { feed: ['198.51.100.0/24'] } };
  await datapath.apply(good);
  const error = await t.throwsAsync(datapath.apply({ ...good, lists: {} }), { instanceOf: RuleSetError });
  t.regex(error?.message ?? '', /rules\[0\]\.srcLists\[0\].*"feed" is not held/);
  const frame = buildFrame({ src: '198.51.100.7', dst: '192.0.2.1', protocol: 'udp', dstPort: 53, payloadLength: 8 });
  t.is(datapath.xdpProgram.testRun({ data: frame }).retval, XDP_DROP, 'the list still denies');
});

test('a million-prefix list named as a source: its first, middle and last prefix match, others do not; one prefix added and one removed in place', async (t) => {
  mkdirSync(`${bpffs.path}/million`, { recursive: true });
  const datapath = await EbpfDatapath.open({ pinRoot: `${bpffs.path}/million` });
  t.teardown(() => datapath.close());
  // 1,000,000 prefixes: /32s and /24s from 11.0.0.0 on, every other address block.
  const prefixes: string[] = [];
  for (let i = 0; prefixes.length < 1_000_000; i++) {
    const a = 11 + (i >> 16);
    const b = (i >> 8) & 0xff;
    const c = i & 0xff;
    prefixes.push(i % 4 === 3 ? `${a}.${b}.${c}.0/24` : `${a}.${b}.${c}.${(i * 2) & 0xfe}/32`);
  }
  const rules: RuleSpec[] = [{ id: 7, srcCidrs: [], dstCidrs: [], srcLists: ['threats'], protocol: 'tcp', dstPorts: [{ from: 443, to: 443 }], action: 'deny' }];
  const started = process.hrtime.bigint();
  await datapath.apply({ rules, defaultAction: 'allow', lists: { threats: prefixes } });
  t.log(`applied with a 1,000,000-prefix list in ${Number(process.hrtime.bigint() - started) / 1e6} ms`);
  const verdict = (src: string, port = 443): number => datapath.xdpProgram.testRun({ data: buildFrame({ src, dst: '192.0.2.1', protocol: 'tcp', dstPort: port, payloadLength: 0 }) }).retval;
  const hostOf = (cidr: string): string => (cidr.endsWith('/24') ? cidr.replace('.0/24', '.77') : cidr.replace('/32', ''));
  for (const at of [0, 500_000, 999_999]) t.is(verdict(hostOf(prefixes[at] as string)), XDP_DROP, `prefix ${at} (${prefixes[at]}) matches`);
  t.is(verdict(hostOf(prefixes[0] as string), 80), XDP_PASS, 'the rule still needs its port');
  t.is(verdict('11.0.0.1'), XDP_PASS, 'an address between the /32s is in no prefix');
  t.is(verdict('203.0.113.9'), XDP_PASS, 'an address far from the list');
  const added = [...prefixes.slice(1), '203.0.113.9/32'];
  t.is((await datapath.apply({ rules, defaultAction: 'allow', lists: { threats: added } })).mode, 'unchanged');
  t.is(verdict('203.0.113.9'), XDP_DROP, 'the added prefix matches');
  t.is(verdict(hostOf(prefixes[0] as string)), XDP_PASS, 'the removed prefix no longer matches');
});

test('a restarted agent: the pinned generation keeps matching its lists; the first apply places them afresh beside, then changes go in place', async (t) => {
  const root = `${bpffs.path}/restart`;
  mkdirSync(root, { recursive: true });
  const rules: RuleSpec[] = [{ id: 3, srcCidrs: [], dstCidrs: [], dstLists: ['vips'], protocol: 'udp', dstPorts: [], action: 'deny' }];
  const probe = (dp: EbpfDatapath, dst: string): number => dp.xdpProgram.testRun({ data: buildFrame({ src: '192.0.2.1', dst, protocol: 'udp', dstPort: 53, payloadLength: 8 }) }).retval;
  const probe6 = (dp: EbpfDatapath, dst: string): number => dp.xdpProgram.testRun({ data: buildFrame({ src: '2001:db8:ff::1', dst, protocol: 'udp', dstPort: 53, payloadLength: 8 }) }).retval;
  const first = await EbpfDatapath.open({ pinRoot: root });
  await first.apply({ rules, defaultAction: 'allow', lists: { vips: ['198.51.100.0/24', '2001:db8::/64'] } });
  t.is(probe(first, '198.51.100.4'), XDP_DROP);
  t.is(probe6(first, '2001:db8::4'), XDP_DROP);
  first.close();
  const again = await EbpfDatapath.open({ pinRoot: root });
  t.teardown(() => again.close());
  t.true(again.adopted);
  t.is(probe(again, '198.51.100.4'), XDP_DROP, 'the pinned generation still matches its list');
  // The restarted process does not know what the pinned slots hold: it places the list afresh.
  const result = await again.apply({ rules, defaultAction: 'allow', lists: { vips: ['198.51.100.0/24', '203.0.113.0/24'] } });
  t.is(result.mode, 'installed');
  t.is(probe(again, '203.0.113.4'), XDP_DROP);
  t.is(probe6(again, '2001:db8::4'), XDP_PASS, 'the prefix the new list no longer holds');
  t.is((await again.apply({ rules, defaultAction: 'allow', lists: { vips: ['203.0.113.0/24'] } })).mode, 'unchanged', 'then a list change is written in place');
  t.is(probe(again, '198.51.100.4'), XDP_PASS);
  t.is(probe(again, '203.0.113.4'), XDP_DROP);
});
