// The shadow union (bpf/README.md, "One walk for both rule sets"): the enforced rule set and a
// shadow candidate merged into one ordered list of rules, so that the datapath classifies a packet
// once for both. A rule of both lists with the same match (prefixes, protocol, ports; not the
// action, the id or the rate) is one union rule; every other rule is a union rule of its own list.
// Each list's rules keep their order in the union, so the first union rule of a list that matches
// a packet is that list's first match: the program walks the union's bit vector once and stops
// when it has the first rule of each.
import type { Cidr } from '@edgeplane/proto';
import { MAX_RULES, validateRuleSet, type NormalizedRule, type RuleSetSpec, type RuleSpec } from './rule-set.js';

/** Bytes of struct ep_shadow_member: a bit per union rule for the enforced set, then for the candidate. */
export const SHADOW_MEMBER_BYTES = 2 * (MAX_RULES / 8);

/** The enforced rule set and a candidate, merged. */
export interface ShadowUnion {
  /** The union's rules in order, for the table compiler: matches only (ids are union indexes, actions placeholders). */
  readonly rules: RuleSpec[];
  /** The prefix lists the union's rules name (both sets'). */
  readonly lists?: RuleSetSpec['lists'];
  /** Per union rule, its slot in the enforced rule set (rule i: i + 1; 0: not one of its rules). */
  readonly enforcedSlots: Uint32Array;
  /** Per union rule, its slot in the candidate. */
  readonly candidateSlots: Uint32Array;
}

/**
 * Merges `enforced` and `candidate` into one rule list that keeps each list's order, sharing the
 * rules whose match is the same in both where their orders agree. Linear in the two lists: a
 * greedy walk that, where the heads differ, keeps for later the head whose twin comes sooner in
 * the other list (a rule moved across many others is then two union rules, one of each list).
 * @returns undefined when the union would exceed MAX_RULES (the caller classifies twice instead).
 * @throws RuleSetError for an invalid rule of either list.
 */
export function mergeRuleSets(enforced: RuleSetSpec, candidate: RuleSetSpec): ShadowUnion | undefined {
  const e = validateRuleSet(enforced).rules;
  const c = validateRuleSet(candidate).rules;
  const eKeys = e.map(matchKey);
  const cKeys = c.map(matchKey);
  const inE = new NextOccurrence(eKeys);
  const inC = new NextOccurrence(cKeys);
  const source: { rule: NormalizedRule; spec: RuleSpec; e: number; c: number }[] = [];
  let i = 0;
  let j = 0;
  const takeE = (): void => {
    source.push({ rule: e[i] as NormalizedRule, spec: enforced.rules[i] as RuleSpec, e: i + 1, c: 0 });
    i++;
  };
  const takeC = (): void => {
    source.push({ rule: c[j] as NormalizedRule, spec: candidate.rules[j] as RuleSpec, e: 0, c: j + 1 });
    j++;
  };
  while (i < e.length || j < c.length) {
    if (source.length === MAX_RULES) return undefined;
    if (i === e.length) takeC();
    else if (j === c.length) takeE();
    else if (eKeys[i] === cKeys[j]) {
      source.push({ rule: e[i] as NormalizedRule, spec: enforced.rules[i] as RuleSpec, e: i + 1, c: j + 1 });
      i++;
      j++;
    } else {
      const twinInC = inC.from(eKeys[i] as string, j);
      const twinInE = inE.from(cKeys[j] as string, i);
      if (twinInC < 0) takeE();
      else if (twinInE < 0) takeC();
      else if (twinInC - j <= twinInE - i) takeC();
      else takeE();
    }
  }
  const rules = source.map(({ spec }, index): RuleSpec => {
    const rule: RuleSpec = { id: index, srcCidrs: spec.srcCidrs, dstCidrs: spec.dstCidrs, protocol: spec.protocol, dstPorts: spec.dstPorts, action: 'allow' };
    if (spec.srcLists !== undefined) rule.srcLists = spec.srcLists;
    if (spec.dstLists !== undefined) rule.dstLists = spec.dstLists;
    return rule;
  });
  // One node holds one list of a name: the candidate's (both come from the same intent).
  const lists = enforced.lists === undefined && candidate.lists === undefined ? undefined : { ...enforced.lists, ...candidate.lists };
  return { rules, ...(lists ? { lists } : {}), enforcedSlots: Uint32Array.from(source, (s) => s.e), candidateSlots: Uint32Array.from(source, (s) => s.c) };
}

/**
 * The union written as the programs read it: struct ep_shadow_slot per union rule
 * (ep_shadow_slots from 0) and struct ep_shadow_member (ep_shadow_member[0]).
 */
export function unionTables(union: ShadowUnion): { slots: Uint8Array; member: Uint8Array } {
  const n = union.enforcedSlots.length;
  const slots = new Uint8Array(n * 8);
  const view = new DataView(slots.buffer);
  const member = new Uint8Array(SHADOW_MEMBER_BYTES);
  const half = SHADOW_MEMBER_BYTES / 2;
  for (let u = 0; u < n; u++) {
    const e = union.enforcedSlots[u] as number;
    const c = union.candidateSlots[u] as number;
    view.setUint32(u * 8, e, true);
    view.setUint32(u * 8 + 4, c, true);
    // Bit u of u64 word u >> 6, little endian: byte u >> 3, bit u & 7.
    if (e !== 0) member[u >> 3] = (member[u >> 3] as number) | (1 << (u & 7));
    if (c !== 0) member[half + (u >> 3)] = (member[half + (u >> 3)] as number) | (1 << (u & 7));
  }
  return { slots, member };
}

/**
 * The union of a candidate alone (no enforced rule set known): its `ruleCount` rules, each its own
 * slot, none the enforced set's. `rules`: the candidate's, when the union is to be compiled.
 */
export function candidateOnly(ruleCount: number, rules: RuleSpec[] = []): ShadowUnion {
  return { rules, enforcedSlots: new Uint32Array(ruleCount), candidateSlots: Uint32Array.from({ length: ruleCount }, (_, i) => i + 1) };
}

// A rule's match as a string: equal strings, equal matches (the same prefixes and prefix lists in
// the same order, protocol and port ranges; a list's name stands for its prefixes, which one node
// holds once by name).
function matchKey(rule: NormalizedRule): string {
  const cidrs = (list: readonly Cidr[] | null): string => (list === null ? '*' : list.map((cidr) => `${Buffer.from(cidr.address).toString('hex')}/${cidr.prefixLength}`).join(','));
  const ports = rule.ports === null ? '*' : rule.ports.map((range) => `${range.from}-${range.to}`).join(',');
  const lists = rule.srcLists.length + rule.dstLists.length === 0 ? '' : ` ${JSON.stringify([rule.srcLists, rule.dstLists])}`;
  return `${cidrs(rule.src)} ${cidrs(rule.dst)} ${rule.protocol ?? '*'} ${ports}${lists}`;
}

/** Where a key next occurs in a list at or after a position that only grows: amortized O(1). */
class NextOccurrence {
  readonly #at = new Map<string, number[]>();
  readonly #cursor = new Map<string, number>();

  constructor(keys: readonly string[]) {
    keys.forEach((key, index) => {
      const list = this.#at.get(key);
      if (list === undefined) this.#at.set(key, [index]);
      else list.push(index);
    });
  }

  /** @returns the first index >= `position` holding `key`, or -1. */
  from(key: string, position: number): number {
    const list = this.#at.get(key);
    if (list === undefined) return -1;
    let k = this.#cursor.get(key) ?? 0;
    while (k < list.length && (list[k] as number) < position) k++;
    this.#cursor.set(key, k);
    return k < list.length ? (list[k] as number) : -1;
  }
}
