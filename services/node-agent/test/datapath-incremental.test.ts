// The idle generation updated by difference (EbpfDatapath.apply, write 'updated') must hold
// exactly what a whole rebuild writes: a random sequence of small changes is applied to one
// datapath incrementally and, at every step, to another that rebuilds; the live generation's
// maps are compared entry by entry, the fingerprints in ep_meta too, and random frames run
// through BPF_PROG_TEST_RUN against the reference classifier.
// Reproduce a failure with EDGEPLANE_SEED=<seed printed in the failure>.
import test from 'ava';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { BpfMap, encode, u32 } from 'libbpf-ts';
import { genFlags, RULE_SLOTS, TableCompiler, WILD_COUNT, type TablesDelta } from '../src/datapath/compile-tables.js';
import { EbpfDatapath } from '../src/datapath/ebpf-datapath.js';
import { ReferenceClassifier } from '../src/datapath/reference-classifier.js';
import { DEFAULT_RULE_ID, type RuleSetSpec } from '../src/datapath/rule-set.js';
import { mountBpffs, prng, randomFrame, randomRuleSet, seedFromEnv, TC_ACT_OK, TC_ACT_SHOT, XDP_DROP, XDP_PASS } from './datapath-helpers.js';

const bpffs = mountBpffs();
test.after.always(() => bpffs.unmount());

const key = (n: number): Uint8Array => encode(u32, n);
const hex = (bytes: Uint8Array): string => Buffer.from(bytes).toString('hex');

/** The live generation (or the idle one) of the datapath pinned at `root`, as sorted hex lines per map. */
function liveTables(root: string, ruleCount: number, which: 'live' | 'idle' = 'live'): Record<string, string[]> {
  const open = (name: string): BpfMap => BpfMap.openPinned(join(root, name));
  const maps = { active: open('ep_active'), lpm: open('ep_lpm'), cwords: open('ep_cwords'), rules: open('ep_rules'), wild: open('ep_wild'), meta: open('ep_meta'), genCfg: open('ep_gen_cfg'), scan: open('ep_scan') };
  try {
    const generation = (u32.decode(maps.active.get(key(0))!) & 1) ^ (which === 'idle' ? 1 : 0);
    const inner = (outer: BpfMap): string[] => {
      const map = BpfMap.fromId(u32.decode(outer.get(key(generation))!));
      try {
        return [...map.entries()].map(([k, v]) => `${hex(k)} ${hex(v)}`).sort();
      } finally {
        map.close();
      }
    };
    const slots = (map: BpfMap, first: number, count: number): string[] => Array.from({ length: count }, (_, i) => hex(map.get(key(first + i))!));
    // The flags, not the epoch (each datapath counts its own applies); the scan table only where the flags say it is read.
    const flags = maps.genCfg.get(key(generation))!.subarray(0, 4);
    return {
      flags: [hex(flags)],
      scan: (u32.decode(flags) & genFlags.scan) !== 0 ? [hex(maps.scan.get(key(generation))!)] : [],
      lpm: inner(maps.lpm),
      cwords: inner(maps.cwords),
      rules: slots(maps.rules, generation * RULE_SLOTS, ruleCount + 1),
      wild: slots(maps.wild, generation * WILD_COUNT, WILD_COUNT),
      meta: [hex(maps.meta.get(key(generation))!)],
    };
  } finally {
    for (const map of Object.values(maps)) map.close();
  }
}

/**
 * One small change: a rule replaced, inserted or removed, two neighbours swapped, or the default
 * flipped. An insert or a removal moves every later rule's bit (the classifier's first set bit is
 * the first match), so the tables differ almost everywhere: that apply rebuilds, and the
 * generation it left is brought up to date in the background, so the next change updates again.
 */
function change(rng: () => number, ruleSet: RuleSetSpec, fresh: () => RuleSetSpec['rules'][number]): { ruleSet: RuleSetSpec; kind: 'replace' | 'insert' | 'remove' | 'default' } {
  let rules = [...ruleSet.rules];
  const at = Math.floor(rng() * rules.length);
  const what = rng();
  let kind: 'replace' | 'insert' | 'remove' = 'replace';
  // A replaced rule keeps its id (a rule edited in place) or gets a new one (another rule).
  if (what < 0.7) rules[at] = rng() < 0.5 ? { ...fresh(), id: rules[at]!.id } : fresh();
  else if (what < 0.8) [rules, kind] = [[...rules.slice(0, at), fresh(), ...rules.slice(at)], 'insert'];
  else if (what < 0.9 && rules.length > 1) [rules, kind] = [[...rules.slice(0, at), ...rules.slice(at + 1)], 'remove'];
  else if (what < 0.95 && at + 1 < rules.length) [rules[at], rules[at + 1]] = [rules[at + 1]!, rules[at]!];
  else return { ruleSet: { ...ruleSet, rules, defaultAction: ruleSet.defaultAction === 'allow' ? 'deny' : 'allow' }, kind: 'default' };
  return { ruleSet: { ...ruleSet, rules }, kind };
}

test('incremental apply - a random sequence of small changes written by difference equals a whole rebuild, map by map, and classifies as the reference', async (t) => {
  // Each step opens, fills and compares two datapaths; on a loaded 2-core machine that is minutes.
  t.timeout(20 * 60_000);
  const seed = seedFromEnv();
  t.log(`seed ${seed} (EDGEPLANE_SEED=${seed} to reproduce)`);
  const rng = prng(seed);
  const roots = { incremental: join(bpffs.path, 'incremental'), rebuilt: join(bpffs.path, 'rebuilt') };
  for (const root of Object.values(roots)) mkdirSync(root);
  // Counter reads freeze the idle generation's counts at once (the default waits a second after
  // a switch): every read below but the one right after a switch reuses them, and a stale one
  // would show in the totals.
  const incremental = await EbpfDatapath.open({ pinRoot: roots.incremental, counterFreezeMs: 0 });
  t.teardown(() => incremental.close());
  let nextId = 100_000;
  // Mostly disjoint prefixes (as large rule sets are: per-source blocks, per-port rules), some
  // wide and nested ones, whose change touches many classes.
  const pool = [...randomRuleSet(rng, 1500, { narrow: true }).rules, ...randomRuleSet(rng, 500).rules];
  const fresh = (): RuleSetSpec['rules'][number] => ({ ...pool[Math.floor(rng() * pool.length)]!, id: nextId++ });
  let ruleSet = { ...randomRuleSet(rng, 600, { narrow: true }), rules: Array.from({ length: 600 }, fresh) };
  const writes = new Map<string, number>();
  // What every rule id was counted, over all steps: the datapath's totals must follow it.
  const counted = new Map<number, number>();
  const count = (id: number): void => void counted.set(id, (counted.get(id) ?? 0) + 1);
  // The same compiles beside the datapath's, for the size of each delta.
  const shadow = new TableCompiler();
  let previousDelta: TablesDelta | undefined;
  for (let step = 0; step < 40; step++) {
    let kind = 'first';
    if (step > 0) ({ ruleSet, kind } = change(rng, ruleSet, fresh));
    const result = await incremental.apply(ruleSet);
    writes.set(result.write ?? result.mode, (writes.get(result.write ?? result.mode) ?? 0) + 1);
    // An update must not silently turn into a rebuild: every change that keeps the rules' places
    // is written by difference (checked against the reference's whole write below), unless the
    // compiler's deltas since the idle generation's tables (this change's and the one before)
    // are so large that a whole write is less (a wide prefix over many nested ones).
    const delta = shadow.compile(ruleSet).delta;
    const deltaWrites = (d: TablesDelta | undefined): number => (d === undefined ? Infinity : d.lpm.count + d.lpmDeletes.length + d.classWords.count + d.wordDeletes.length);
    const recent = deltaWrites(delta) + deltaWrites(previousDelta);
    previousDelta = delta;
    if (result.mode === 'installed') {
      if (kind === 'insert' || kind === 'remove') t.is(result.write, 'rebuilt', `seed ${seed} step ${step} (${kind})`);
      else t.true(result.write === 'updated' || recent > 1024, `seed ${seed} step ${step} (${kind}): ${result.write} with deltas of ${recent} entries`);
    }
    if (result.write === 'rebuilt') {
      // The generation it left is brought up to date in the background: the same tables.
      await incremental.settled();
      const idle = liveTables(roots.incremental, ruleSet.rules.length, 'idle');
      const live = liveTables(roots.incremental, ruleSet.rules.length);
      for (const name of ['lpm', 'cwords', 'rules', 'wild', 'meta', 'scan']) t.deepEqual(idle[name], live[name], `seed ${seed} step ${step}: the idle generation's ${name} after the bring-up`);
    }
    // The reference: a datapath that holds nothing in memory (a new process) rebuilds its idle generation whole.
    const rebuilt = await EbpfDatapath.open({ pinRoot: roots.rebuilt });
    try {
      const whole = await rebuilt.apply(ruleSet);
      t.not(whole.write, 'updated');
      if (result.write === 'updated') t.true((result.written ?? Infinity) < (whole.written ?? 0) / 2, `seed ${seed} step ${step}: ${result.written} entries written in place, ${whole.written} whole`);
    } finally {
      rebuilt.close();
    }
    const got = liveTables(roots.incremental, ruleSet.rules.length);
    const want = liveTables(roots.rebuilt, ruleSet.rules.length);
    for (const name of Object.keys(want)) {
      if (JSON.stringify(got[name]) !== JSON.stringify(want[name])) {
        t.fail(`seed ${seed} step ${step} (${result.write}): ${name} differs from a whole rebuild (${got[name]!.length} vs ${want[name]!.length} entries)`);
        return;
      }
    }
    const oracle = new ReferenceClassifier(ruleSet);
    // A read before the traffic: it keeps the idle generation's and the carry's counts for the read after it.
    incremental.readCounters();
    for (let i = 0; i < 200; i++) {
      const frame = randomFrame(rng, ruleSet);
      const expected = oracle.classify(frame);
      const id = expected.kind === 'rule' ? expected.ruleId : expected.kind === 'default' ? DEFAULT_RULE_ID : undefined;
      const xdp = incremental.xdpProgram.testRun({ data: frame }).retval;
      if (xdp !== (expected.verdict === 'pass' ? XDP_PASS : XDP_DROP)) {
        t.fail(`seed ${seed} step ${step} frame ${hex(frame)}: expected ${JSON.stringify(expected)}, xdp=${xdp}`);
        return;
      }
      if (id !== undefined) count(id);
      let tc: number;
      try {
        tc = incremental.tcProgram.testRun({ data: frame }).retval;
      } catch {
        continue; // truncated frames the skb test run refuses (datapath-differential.test.ts)
      }
      t.is(tc, expected.verdict === 'pass' ? TC_ACT_OK : TC_ACT_SHOT);
      if (id !== undefined) count(id);
    }
    const totals = incremental.readCounters();
    for (const rule of ruleSet.rules) {
      if ((totals.rules.get(rule.id)?.packets ?? 0) !== (counted.get(rule.id) ?? 0)) {
        t.fail(`seed ${seed} step ${step} (${result.write}): rule ${rule.id} counted ${totals.rules.get(rule.id)?.packets ?? 0} packets, the reference ${counted.get(rule.id) ?? 0}`);
        return;
      }
    }
    t.is(totals.defaultAction.packets, counted.get(DEFAULT_RULE_ID) ?? 0, `seed ${seed} step ${step}: default action`);
  }
  t.log(`applies by write: ${[...writes].map(([k, n]) => `${k} ${n}`).join(', ')}`);
  // Written whole: the first apply, inserts, removals and changes of wide prefixes; the rest in place.
  t.true((writes.get('updated') ?? 0) >= 18, `updated ${writes.get('updated') ?? 0} of 40`);
});

test('incremental apply - a small rule set changed in place keeps its scan table equal to a whole rebuild and classifies as the reference', async (t) => {
  const seed = seedFromEnv();
  t.log(`seed ${seed} (EDGEPLANE_SEED=${seed} to reproduce)`);
  const rng = prng(seed);
  const roots = { incremental: join(bpffs.path, 'small-incremental'), rebuilt: join(bpffs.path, 'small-rebuilt') };
  for (const root of Object.values(roots)) mkdirSync(root);
  const incremental = await EbpfDatapath.open({ pinRoot: roots.incremental });
  t.teardown(() => incremental.close());
  // IPv4 rules (narrow: few wildcards), so most sets fit ep_scan and their IPv4 frames are scanned.
  const pool = randomRuleSet(rng, 400, { narrow: true }).rules.filter((rule) => ![...rule.srcCidrs, ...rule.dstCidrs].some((cidr) => cidr.includes(':')));
  let nextId = 1;
  const fresh = (): RuleSetSpec['rules'][number] => ({ ...pool[Math.floor(rng() * pool.length)]!, id: nextId++ });
  let ruleSet: RuleSetSpec = { rules: Array.from({ length: 8 }, fresh), defaultAction: 'deny' };
  const seen = { updated: 0, scanned: 0 };
  for (let step = 0; step < 16; step++) {
    // Replaced rules only (an update in place), now and then the default flipped.
    if (step > 0) {
      const rules = [...ruleSet.rules];
      if (rng() < 0.85) rules[Math.floor(rng() * rules.length)] = fresh();
      ruleSet = rules.length === ruleSet.rules.length && rules.every((rule, i) => rule === ruleSet.rules[i]) ? { ...ruleSet, defaultAction: ruleSet.defaultAction === 'allow' ? 'deny' : 'allow' } : { ...ruleSet, rules };
    }
    const result = await incremental.apply(ruleSet);
    if (result.write === 'updated') seen.updated++;
    const rebuilt = await EbpfDatapath.open({ pinRoot: roots.rebuilt });
    try {
      t.not((await rebuilt.apply(ruleSet)).write, 'updated');
    } finally {
      rebuilt.close();
    }
    const got = liveTables(roots.incremental, ruleSet.rules.length);
    const want = liveTables(roots.rebuilt, ruleSet.rules.length);
    if (want.scan!.length > 0) seen.scanned++;
    for (const name of Object.keys(want)) t.deepEqual(got[name], want[name], `seed ${seed} step ${step} (${result.write}): ${name}`);
    const oracle = new ReferenceClassifier(ruleSet);
    for (let i = 0; i < 200; i++) {
      const frame = randomFrame(rng, ruleSet);
      const expected = oracle.classify(frame);
      const xdp = incremental.xdpProgram.testRun({ data: frame }).retval;
      if (xdp !== (expected.verdict === 'pass' ? XDP_PASS : XDP_DROP)) {
        t.fail(`seed ${seed} step ${step} frame ${hex(frame)}: expected ${JSON.stringify(expected)}, xdp=${xdp}`);
        return;
      }
    }
  }
  t.log(`${seen.updated} of 15 changes written in place, ${seen.scanned} of 16 rule sets scanned`);
  t.true(seen.updated >= 8 && seen.scanned >= 8, `updated ${seen.updated}, scanned ${seen.scanned}`);
});

test('incremental apply - one rule replaced in 16,384 writes a few entries, not the rule set', async (t) => {
  const root = join(bpffs.path, 'one-rule');
  mkdirSync(root);
  const datapath = await EbpfDatapath.open({ pinRoot: root });
  t.teardown(() => datapath.close());
  // bench/agent.ts's shape: alternately a /32 source and a TCP port.
  const rules: RuleSetSpec['rules'] = Array.from({ length: 16_384 }, (_, i) =>
    i % 2 === 0
      ? { id: i + 1, srcCidrs: [`198.18.${i >> 9}.${(i >> 1) & 255}/32`], dstCidrs: [], protocol: 'tcp', dstPorts: [], action: 'deny' }
      : { id: i + 1, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 1 + (i >> 1), to: 1 + (i >> 1) }], action: 'deny' },
  );
  const first = await datapath.apply({ rules, defaultAction: 'allow' });
  t.is(first.write, 'rebuilt');
  t.true((first.written ?? 0) > 16_384);
  let ruleSet: RuleSetSpec = { rules, defaultAction: 'allow' };
  for (let change = 0; change < 3; change++) {
    const next = [...ruleSet.rules];
    next[next.length - 1] = { id: 90_000 + change, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 50_000 + change, to: 50_000 + change }], action: 'deny' };
    ruleSet = { rules: next, defaultAction: 'allow' };
    const result = await datapath.apply(ruleSet);
    t.is(result.write, 'updated', `change ${change}`);
    // Its port's LPM entry (added, the old one deleted), the class words, the rule slot, the
    // wildcard vectors and the counter slot: a handful, whatever the rule count.
    t.true((result.written ?? Infinity) <= 40, `change ${change}: ${result.written} entries written`);
  }
  const oracle = new ReferenceClassifier(ruleSet);
  const rng = prng(7);
  for (let i = 0; i < 100; i++) {
    const frame = randomFrame(rng, ruleSet);
    t.is(datapath.xdpProgram.testRun({ data: frame }).retval, oracle.classify(frame).verdict === 'pass' ? XDP_PASS : XDP_DROP);
  }
});
