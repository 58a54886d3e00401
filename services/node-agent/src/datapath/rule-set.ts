// The datapath's input (an ordered rule set) and what classifying one frame yields. Both the
// table compiler and the reference classifier start from validateRuleSet(), so they agree on
// what a rule means; they share nothing after that.
import { MAX_RULE_SET_PREFIX_LISTS, parseCidr, type Cidr } from '@edgeplane/proto';
import { CapacityError, RuleSetError } from './errors.js';

/** Most rules one rule set may hold: one bit each in a 65,536-bit rule vector. */
export const MAX_RULES = 65_536;
/** Largest accepted rate-limit pps and burst (keeps the nano-token arithmetic within u64). */
export const MAX_RATE = 1_000_000_000;
/** Rule ids are u32; this one is reserved for the default action's counter. */
export const DEFAULT_RULE_ID = 0xffff_ffff;
/** Reserved too: the rule id of connection entries uplink egress tracking created (EP_CT_RULE_EGRESS). */
export const EGRESS_RULE_ID = 0xffff_fffe;

/** Protocols a rule can name. `icmp` and `icmpv6` match IP protocol 1 and 58 in either family. */
export type RuleProtocol = 'any' | 'tcp' | 'udp' | 'icmp' | 'icmpv6';
/** What a matching rule does. `rate_limit` passes a source within its token bucket, drops the rest. */
export type RuleAction = 'allow' | 'deny' | 'rate_limit';
/** What happens to a packet no rule matches. */
export type DefaultAction = 'allow' | 'deny';

/** An inclusive destination port range, 0..65535. */
export interface PortRange {
  from: number;
  to: number;
}

/** One rule. Every field constrains the packet; an empty list means "any". */
export interface RuleSpec {
  /** Stable across rule-set versions: counters and rate-limit state are keyed by it. u32, not 0xffffffff. */
  id: number;
  /** Source prefixes; empty = any address of either family. Only the listed families match. */
  srcCidrs: string[];
  /** Destination prefixes; empty = any address of either family. */
  dstCidrs: string[];
  /**
   * Names of prefix lists of the rule set ({@link RuleSetSpec.lists}) the source may be in: the
   * rule matches a source in srcCidrs or in one of these lists (either family). Default none.
   */
  srcLists?: string[];
  /** As srcLists, for the destination. */
  dstLists?: string[];
  protocol: RuleProtocol;
  /** Destination port ranges; only with tcp/udp; empty = any (including no port). */
  dstPorts: PortRange[];
  action: RuleAction;
  /** Required with `rate_limit`: a token bucket per source address, `burst` deep, refilled at `pps`. */
  rateLimit?: { pps: number; burst: number };
  /**
   * Stateful: a packet this rule passes with no connection entry creates one, so the flow's
   * replies and later packets pass without classification (bpf/CONNTRACK.md). No effect on a
   * deny rule. Default false.
   */
  track?: boolean;
}

/** An ordered rule set: index 0 has the highest priority, the first match wins. */
export interface RuleSetSpec {
  rules: RuleSpec[];
  defaultAction: DefaultAction;
  /** A packet the default action passes creates a connection entry (as a rule's `track`). Default false. */
  trackDefault?: boolean;
  /** Uplink egress creates entries for new outbound flows (EP_GEN_F_TRACK_EGRESS). Default false. */
  trackEgress?: boolean;
  /** Established flows are re-checked against this rule set and cut if it denies them (EP_GEN_F_CUT). Default false (keep). */
  cutOnDeny?: boolean;
  /**
   * The prefix lists the rules name, by name: canonical CIDR texts, each once (as a PrefixList
   * holds them: the datapath updates a list by the difference of its texts).
   * Every name a rule names must be here; at most MAX_RULE_SET_PREFIX_LISTS distinct names are
   * named. A list's array is an input like the rules: never changed after it was applied (the
   * datapath writes a list again only when its array is another object with other prefixes).
   */
  lists?: Readonly<Record<string, readonly string[]>>;
}

/** A rule after validation: prefixes parsed, "any" spelled as null. */
export interface NormalizedRule {
  readonly index: number;
  readonly id: number;
  /** null = any (no prefix and no list); [] = only the addresses of srcLists. */
  readonly src: readonly Cidr[] | null;
  readonly dst: readonly Cidr[] | null;
  /** Prefix lists the source may be in, as well as src (names of NormalizedRuleSet.lists); [] = none. */
  readonly srcLists: readonly string[];
  readonly dstLists: readonly string[];
  /** null = any protocol, else the IP protocol number (6, 17, 1, 58). */
  readonly protocol: number | null;
  readonly ports: readonly PortRange[] | null;
  readonly action: RuleAction;
  readonly rateLimit: { readonly pps: number; readonly burst: number } | null;
  readonly track: boolean;
}

/** A validated rule set. */
export interface NormalizedRuleSet extends RuleSetHeader {
  readonly rules: readonly NormalizedRule[];
}

/** A validated rule set's fields but its rules. */
export interface RuleSetHeader {
  readonly defaultAction: DefaultAction;
  readonly trackDefault: boolean;
  readonly trackEgress: boolean;
  readonly cutOnDeny: boolean;
  /** The prefix lists the rules name, in name order (the datapath's list index), with their prefixes. */
  readonly lists: readonly RuleSetList[];
}

/** One prefix list a rule set's rules name. */
export interface RuleSetList {
  readonly name: string;
  readonly prefixes: readonly string[];
}

/** The L3/L4 fields the classifier looks at, as parsed from a frame. */
export interface PacketHeaders {
  readonly family: 4 | 6;
  readonly src: Uint8Array;
  readonly dst: Uint8Array;
  /** IP protocol (IPv4) or upper-layer header after the extension headers (IPv6). */
  readonly protocol: number;
  /** Destination port; null when there is none (not TCP/UDP, or a non-first fragment). */
  readonly dstPort: number | null;
}

/** What the classifier decided for one frame. */
export type Classification =
  | { readonly kind: 'non-ip'; readonly verdict: 'pass' }
  | { readonly kind: 'malformed'; readonly verdict: 'drop' }
  | { readonly kind: 'default'; readonly action: DefaultAction; readonly verdict: 'pass' | 'drop' }
  | {
      readonly kind: 'rule';
      readonly ruleIndex: number;
      readonly ruleId: number;
      readonly action: RuleAction;
      readonly verdict: 'pass' | 'drop';
    };

export const protocolNumbers: Readonly<Record<Exclude<RuleProtocol, 'any'>, number>> = { tcp: 6, udp: 17, icmp: 1, icmpv6: 58 };

const NO_LISTS: readonly string[] = Object.freeze([]);

/**
 * Checks a rule set and parses its prefixes.
 * @returns the normalized rule set (a new object; the input is not modified).
 * @throws RuleSetError naming the first bad field; CapacityError for more than MAX_RULES rules.
 */
export function validateRuleSet(spec: RuleSetSpec): NormalizedRuleSet {
  checkRuleSetFields(spec);
  const ids = new Set<number>();
  const rules = spec.rules.map((rule, index): NormalizedRule => {
    checkRuleId(rule, index);
    if (ids.has(rule.id)) throw new RuleSetError(`rules[${index}].id`, `duplicate rule id ${rule.id}`);
    ids.add(rule.id);
    return normalizeRule(rule, index);
  });
  return { rules, ...ruleSetHeader(spec) };
}

/**
 * The rule set's default action and rule count checked (not its rules; the flags are checked by ruleSetHeader).
 * @throws RuleSetError; CapacityError for more than MAX_RULES rules.
 */
export function checkRuleSetFields(spec: RuleSetSpec): void {
  if (spec.defaultAction !== 'allow' && spec.defaultAction !== 'deny') {
    throw new RuleSetError('defaultAction', `must be allow or deny, got ${String(spec.defaultAction)}`);
  }
  if (spec.rules.length > MAX_RULES) {
    throw new CapacityError('rules', MAX_RULES, spec.rules.length, 'split the policy or merge rules with the same action');
  }
}

/**
 * The header of `spec` (checkRuleSetFields passed, and every rule checked: normalizeRule).
 * @throws RuleSetError for a flag that is not a boolean.
 */
export function ruleSetHeader(spec: RuleSetSpec): RuleSetHeader {
  return {
    defaultAction: spec.defaultAction,
    trackDefault: flag(spec.trackDefault, 'trackDefault'),
    trackEgress: flag(spec.trackEgress, 'trackEgress'),
    cutOnDeny: flag(spec.cutOnDeny, 'cutOnDeny'),
    lists: namedLists(spec),
  };
}

/**
 * The lists the rules of `spec` name (each rule checked: its list fields are arrays of names),
 * in name order, from `spec.lists`.
 * @throws RuleSetError for a name spec.lists does not hold; CapacityError past MAX_RULE_SET_PREFIX_LISTS names.
 */
function namedLists(spec: RuleSetSpec): RuleSetList[] {
  const held = spec.lists ?? {};
  const names = new Set<string>();
  spec.rules.forEach((rule, index) => {
    const src = rule.srcLists ?? NO_LISTS;
    const dst = rule.dstLists ?? NO_LISTS;
    if (src.length === 0 && dst.length === 0) return;
    for (const [field, list] of [['srcLists', src], ['dstLists', dst]] as const) {
      list.forEach((name, i) => {
        if (!Object.hasOwn(held, name) || !Array.isArray(held[name])) throw new RuleSetError(`rules[${index}].${field}[${i}]`, `prefix list ${JSON.stringify(name)} is not held (no list of that name selects this node)`);
        names.add(name);
      });
    }
  });
  if (names.size > MAX_RULE_SET_PREFIX_LISTS) throw new CapacityError('prefix-lists', MAX_RULE_SET_PREFIX_LISTS, names.size, 'name fewer distinct prefix lists, or merge lists');
  return [...names].sort().map((name) => ({ name, prefixes: held[name] as readonly string[] }));
}

/**
 * Checks one rule (all but the uniqueness of its id) and parses its prefixes. Not remembered: a
 * normalized rule is ~5 times its spec's memory (parsed addresses, port ranges), and the table
 * compiler keeps specs, parsing a rule again only when it changes (compile-tables.ts).
 * @returns a new normalized rule.
 * @throws RuleSetError naming the bad field as `rules[index].field`.
 */
export function normalizeRule(rule: RuleSpec, index: number): NormalizedRule {
  checkRuleId(rule, index);
  const at = `rules[${index}]`;
  const cidrs = (list: readonly string[], field: string): Cidr[] | null => {
    if (list.length === 0) return null;
    return list.map((text, i) => {
      const cidr = parseCidr(text);
      if (cidr === undefined) throw new RuleSetError(`${at}.${field}[${i}]`, `not a CIDR: ${JSON.stringify(text)}`);
      return cidr;
    });
  };
  const protocol = rule.protocol === 'any' ? null : protocolNumbers[rule.protocol];
  if (protocol === undefined) throw new RuleSetError(`${at}.protocol`, `unknown protocol ${String(rule.protocol)}`);
  let ports: PortRange[] | null = null;
  if (rule.dstPorts.length > 0) {
    if (rule.protocol !== 'tcp' && rule.protocol !== 'udp') {
      throw new RuleSetError(`${at}.dstPorts`, `port ranges need protocol tcp or udp, got ${rule.protocol}`);
    }
    ports = rule.dstPorts.map((range, i) => {
      const ok = (n: number): boolean => Number.isInteger(n) && n >= 0 && n <= 65535;
      if (!ok(range.from) || !ok(range.to) || range.from > range.to) {
        throw new RuleSetError(`${at}.dstPorts[${i}]`, `need 0 <= from <= to <= 65535, got ${range.from}..${range.to}`);
      }
      return { from: range.from, to: range.to };
    });
  }
  if (rule.action !== 'allow' && rule.action !== 'deny' && rule.action !== 'rate_limit') {
    throw new RuleSetError(`${at}.action`, `unknown action ${String(rule.action)}`);
  }
  let rateLimit: NormalizedRule['rateLimit'] = null;
  if (rule.action === 'rate_limit') {
    const rate = rule.rateLimit;
    const ok = (n: number): boolean => Number.isInteger(n) && n >= 1 && n <= MAX_RATE;
    if (rate === undefined || !ok(rate.pps) || !ok(rate.burst)) {
      throw new RuleSetError(`${at}.rateLimit`, `rate_limit needs integer pps and burst in 1..${MAX_RATE}`);
    }
    rateLimit = { pps: rate.pps, burst: rate.burst };
  }
  const track = flag(rule.track, `${at}.track`);
  const names = (list: readonly string[] | undefined, field: string): readonly string[] => {
    if (list === undefined || list.length === 0) return NO_LISTS;
    if (!Array.isArray(list) || list.length > MAX_RULE_SET_PREFIX_LISTS) throw new RuleSetError(`${at}.${field}`, `at most ${MAX_RULE_SET_PREFIX_LISTS} prefix list names`);
    list.forEach((name, i) => {
      if (typeof name !== 'string' || name === '') throw new RuleSetError(`${at}.${field}[${i}]`, 'must be a prefix list name');
      if (list.indexOf(name) !== i) throw new RuleSetError(`${at}.${field}[${i}]`, `repeats ${JSON.stringify(name)}`);
    });
    return [...list];
  };
  const srcLists = names(rule.srcLists, 'srcLists');
  const dstLists = names(rule.dstLists, 'dstLists');
  // A rule with lists and no prefix constrains the field to its lists: [] (no prefix), not null (any).
  const src = cidrs(rule.srcCidrs, 'srcCidrs') ?? (srcLists.length > 0 ? [] : null);
  const dst = cidrs(rule.dstCidrs, 'dstCidrs') ?? (dstLists.length > 0 ? [] : null);
  return { index, id: rule.id, src, dst, srcLists, dstLists, protocol, ports, action: rule.action, rateLimit, track };
}

function checkRuleId(rule: RuleSpec, index: number): void {
  if (!Number.isInteger(rule.id) || rule.id < 0 || rule.id >= EGRESS_RULE_ID) {
    throw new RuleSetError(`rules[${index}].id`, `must be an integer in 0..${EGRESS_RULE_ID - 1}, got ${rule.id}`);
  }
}

function flag(value: unknown, field: string): boolean {
  if (value === undefined) return false;
  if (typeof value !== 'boolean') throw new RuleSetError(field, `must be a boolean, got ${JSON.stringify(value)}`);
  return value;
}
