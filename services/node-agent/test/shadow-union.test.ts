// The shadow union (shadow-union.ts): the enforced rule set and a candidate merged into one list
// that keeps each list's order and shares rules whose match is the same in both.
import test, { type ExecutionContext } from 'ava';
import { MAX_RULES, validateRuleSet, type NormalizedRule, type RuleSetSpec, type RuleSpec } from '../src/datapath/rule-set.js';
import { candidateOnly, mergeRuleSets, SHADOW_MEMBER_BYTES, unionTables, type ShadowUnion } from '../src/datapath/shadow-union.js';
import { prng, randomRuleSet, seedFromEnv } from './datapath-helpers.js';

const tcp = (id: number, port: number, action: RuleSpec['action'] = 'allow'): RuleSpec => ({ id, srcCidrs: ['10.0.0.0/8'], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: port, to: port }], action });
const set = (...rules: RuleSpec[]): RuleSetSpec => ({ rules, defaultAction: 'allow' });
// A rule's match as the validator normalizes it: 2001:db8::e/0 and 2001:db8:1::b/0 are one match.
const matchOf = (rule: RuleSpec): string => {
  const n = validateRuleSet({ rules: [{ ...rule, id: 0 }], defaultAction: 'allow' }).rules[0] as NormalizedRule;
  const cidrs = (list: NormalizedRule['src']): string[] | null => list?.map((cidr) => `${Buffer.from(cidr.address).toString('hex')}/${cidr.prefixLength}`) ?? null;
  return JSON.stringify([cidrs(n.src), cidrs(n.dst), n.srcLists, n.dstLists, n.protocol, n.ports]);
};

// Each list's rules appear in the union once, in their order, under their own match.
function checkUnion(t: ExecutionContext, union: ShadowUnion, enforced: RuleSetSpec, candidate: RuleSetSpec, where: string): void {
  for (const [name, slots, list] of [
    ['enforced', union.enforcedSlots, enforced.rules],
    ['candidate', union.candidateSlots, candidate.rules],
  ] as const) {
    const order = [...slots].filter((slot) => slot !== 0);
    t.deepEqual(order, list.map((_, i) => i + 1), `${where}: the ${name} rules in order, each once`);
    slots.forEach((slot, u) => {
      if (slot !== 0 && matchOf(union.rules[u] as RuleSpec) !== matchOf(list[slot - 1] as RuleSpec)) t.fail(`${where}: union rule ${u} does not match as ${name} rule ${slot - 1}`);
    });
  }
  t.is(union.rules.length, union.enforcedSlots.length);
}

test('merge - identical matches are shared whatever their actions and ids; edits become rules of one list', (t) => {
  const enforced = set(tcp(1, 22), tcp(2, 80), tcp(3, 443));
  const candidate = set(tcp(11, 22, 'deny'), tcp(12, 8080), tcp(2, 80), tcp(3, 443));
  const union = mergeRuleSets(enforced, candidate) as ShadowUnion;
  checkUnion(t, union, enforced, candidate, 'insert');
  t.deepEqual([...union.enforcedSlots], [1, 0, 2, 3]);
  t.deepEqual([...union.candidateSlots], [1, 2, 3, 4]);
  t.deepEqual(
    union.rules.map((rule) => rule.id),
    [0, 1, 2, 3],
    'union ids are its indexes',
  );
});

test('merge - a rule moved to the front is two union rules, the others stay shared', (t) => {
  const enforced = set(tcp(1, 1), tcp(2, 2), tcp(3, 3), tcp(4, 4));
  const candidate = set(tcp(4, 4), tcp(1, 1), tcp(2, 2), tcp(3, 3));
  const union = mergeRuleSets(enforced, candidate) as ShadowUnion;
  checkUnion(t, union, enforced, candidate, 'move');
  t.is(union.rules.length, 5);
  t.is([...union.enforcedSlots].filter((slot, u) => slot !== 0 && union.candidateSlots[u] !== 0).length, 3, 'three rules shared');
});

test('merge - random lists and random edits keep both orders (property)', (t) => {
  const seed = seedFromEnv();
  const rng = prng(seed);
  for (let round = 0; round < 200; round++) {
    const enforced = randomRuleSet(rng, Math.floor(rng() * 60));
    // A candidate drawn from the enforced rules (shuffled in places, some dropped) and new ones.
    const rules: RuleSpec[] = [];
    for (const rule of enforced.rules) {
      if (rng() < 0.15) continue;
      rules.splice(rng() < 0.1 ? Math.floor(rng() * (rules.length + 1)) : rules.length, 0, rng() < 0.1 ? { ...rule, action: 'deny' } : rule);
    }
    for (const extra of randomRuleSet(rng, Math.floor(rng() * 5)).rules) rules.splice(Math.floor(rng() * (rules.length + 1)), 0, { ...extra, id: 900_000 + rules.length });
    const candidate = set(...rules);
    const union = mergeRuleSets(enforced, candidate) as ShadowUnion;
    checkUnion(t, union, enforced, candidate, `seed ${seed} round ${round}`);
    t.true(union.rules.length <= enforced.rules.length + candidate.rules.length);
  }
});

test('merge - a union over MAX_RULES is refused (the candidate is classified apart); the candidate alone maps to itself', (t) => {
  const full = set(...Array.from({ length: MAX_RULES }, (_, i) => tcp(i, i % 65536)));
  full.rules[0] = { ...tcp(0, 0), srcCidrs: ['192.0.2.0/24'] };
  const plusOne = set(tcp(MAX_RULES, 1), ...full.rules.slice(1));
  t.is(mergeRuleSets(full, plusOne), undefined);
  const alone = candidateOnly(2);
  t.deepEqual([...alone.candidateSlots], [1, 2]);
  t.deepEqual([...alone.enforcedSlots], [0, 0]);
});

test('tables - slots as struct ep_shadow_slot, membership bits per set', (t) => {
  const union = mergeRuleSets(set(tcp(1, 1), tcp(2, 2)), set(tcp(3, 3), tcp(2, 2))) as ShadowUnion;
  const { slots, member } = unionTables(union);
  const view = new DataView(slots.buffer);
  const pairs = Array.from({ length: union.rules.length }, (_, u) => [view.getUint32(u * 8, true), view.getUint32(u * 8 + 4, true)]);
  t.deepEqual(pairs, [[1, 0], [0, 1], [2, 2]]);
  t.is(member.length, SHADOW_MEMBER_BYTES);
  t.is(member[0], 0b101, 'enforced: union rules 0 and 2');
  t.is(member[SHADOW_MEMBER_BYTES / 2], 0b110, 'candidate: union rules 1 and 2');
});
