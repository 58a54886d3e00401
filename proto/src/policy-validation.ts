import { Action, ConnectionTracking_EstablishedOnDeny, InterfaceRole, Policy, PolicySpec, Protocol, Rule, type RolloutStrategy } from '../gen/edgeplane/v1/policy.js';
import type { ObjectMeta } from '../gen/edgeplane/v1/resources.js';
import { isCidrProblem, parseCanonicalCidr } from './cidr.js';
import { validateLabelSelector } from './label-selector.js';
import { checkDnsLabel, checkLabelKey, validateLabels } from './labels.js';
import { MAX_COLLECTED_VIOLATIONS, MAX_LABELS, MAX_POLICY_BYTES, MAX_ROLLOUT_WAVES, MAX_RULE_SET_PREFIX_LISTS, quote } from './limits.js';
import { patchLineageOf } from './policy-patch.js';
import { SizeWriter } from './size-writer.js';
import { moreViolations, type FieldViolation } from './status-details.js';

/** Limits policy validation enforces. The defaults are what the datapath holds on one node. */
export interface PolicyLimits {
  /** Rules in one policy (default 65,536). */
  maxRules: number;
  /** CIDRs in one rule's source or destination list (default 256). */
  maxCidrsPerRule: number;
  /** Port ranges in one rule (default 64). */
  maxPortRangesPerRule: number;
  /** Prefix lists one rule names as its source, and as its destination (default 16: MAX_RULE_SET_PREFIX_LISTS). */
  maxPrefixListsPerRule: number;
  /** Characters of description (default 1,024). */
  maxDescription: number;
  /** Annotations, keys and values together, in bytes (default 256 KiB). */
  maxAnnotationBytes: number;
  /** Packets per second and burst of a rate limit (default 1e9). */
  maxRate: bigint;
}

/** The default {@link PolicyLimits}. */
export const DEFAULT_POLICY_LIMITS: Readonly<PolicyLimits> = Object.freeze({
  maxRules: 65_536,
  maxCidrsPerRule: 256,
  maxPortRangesPerRule: 64,
  maxPrefixListsPerRule: MAX_RULE_SET_PREFIX_LISTS,
  maxDescription: 1024,
  maxAnnotationBytes: 256 * 1024,
  maxRate: 1_000_000_000n,
});

const MAX_BAKE_SECONDS = 7n * 24n * 3600n;

/**
 * Validates a whole policy as a write would store it and returns the problems found (empty
 * when valid): the first MAX_COLLECTED_VIOLATIONS, then one entry (reason
 * MORE_VIOLATIONS_REASON) counting the rest. Field paths use proto field names under `path`
 * (e.g. `policy.spec.rules[2].source_cidrs[0]`), as google.rpc.BadRequest expects; offending
 * values are quoted at most MAX_QUOTED_LENGTH characters. Linear in the policy's size. Pure:
 * the controller runs it before writing and every agent runs it again before applying.
 */
export function validatePolicy(policy: Policy | undefined, path = 'policy', limits: Readonly<PolicyLimits> = DEFAULT_POLICY_LIMITS): FieldViolation[] {
  if (policy !== undefined && validByPatch(policy, path, limits)) return [];
  const { out, add, result } = collectViolations(path);
  if (!policy) {
    add(path, 'required', 'REQUIRED');
    return out;
  }
  const spec = policy.spec;
  validateHead(policy, path, limits, add);
  if (!spec) return out;
  const sp = `${path}.spec`;
  let ascending = false;
  if (spec.rules.length === 0) add(`${sp}.rules`, 'a policy needs at least one rule', 'REQUIRED');
  if (spec.rules.length > limits.maxRules) {
    add(`${sp}.rules`, `${spec.rules.length} rules; at most ${limits.maxRules}`, 'TOO_MANY_RULES');
    // The rules are not checked one by one: that work would be the caller's to choose.
  } else {
    // Rules in strictly ascending priority (the usual order) cannot share one: no map needed.
    ascending = spec.rules.every((rule, i) => i === 0 || rule.priority > spec.rules[i - 1]!.priority);
    const priorities = ascending ? undefined : new Map<number, number>();
    let valid = validRules.get(limits);
    if (valid === undefined) validRules.set(limits, (valid = new WeakSet()));
    // One counting wrapper for all rules (a rule with no problem found is remembered as valid).
    let problems = 0;
    const counted: AddViolation = (f, d, r) => {
      problems++;
      add(f, d, r);
    };
    for (let i = 0; i < spec.rules.length; i++) {
      const rule = spec.rules[i]!;
      if (priorities !== undefined) {
        const first = priorities.get(rule.priority);
        if (first !== undefined) add(`${sp}.rules[${i}].priority`, `priority ${rule.priority} is also used by rules[${first}]`, 'DUPLICATE_PRIORITY');
        else priorities.set(rule.priority, i);
      }
      if (valid.has(rule)) continue;
      const before = problems;
      validateRule(rule, `${sp}.rules[${i}]`, limits, counted);
      if (problems === before) valid.add(rule);
    }
  }
  // A node's rule set names at most MAX_RULE_SET_PREFIX_LISTS lists: a policy naming more can never apply.
  const named = new Set<string>();
  for (const rule of spec.rules) for (const list of [rule.sourcePrefixLists, rule.destinationPrefixLists]) for (const name of list) named.add(name);
  if (named.size > MAX_RULE_SET_PREFIX_LISTS) add(`${sp}.rules`, `the rules name ${named.size} distinct prefix lists; a node holds at most ${MAX_RULE_SET_PREFIX_LISTS} per interface role`, 'TOO_MANY_PREFIX_LISTS');
  validateTail(spec, sp, add);
  // Sizing walks the whole policy (though it builds no buffer): only a policy valid so far pays for it.
  if (out.length === 0) {
    const rulesBytes = framedRulesBytes(spec.rules);
    const bytes = policyBytes(policy, rulesBytes);
    if (bytes > MAX_POLICY_BYTES) add(path, `${bytes} bytes encoded; at most ${MAX_POLICY_BYTES}`, 'POLICY_TOO_LARGE');
    else rememberValid(policy, limits, { ascending, rulesBytes, named });
  }
  return result();
}

/**
 * What validatePolicy checks before the rules: the metadata, and the spec's selector, role,
 * default action and description.
 */
function validateHead(policy: Policy, path: string, limits: Readonly<PolicyLimits>, add: AddViolation): void {
  validateObjectMeta(policy.metadata, `${path}.metadata`, limits.maxAnnotationBytes, add);
  const spec = policy.spec;
  if (!spec) {
    add(`${path}.spec`, 'required', 'REQUIRED');
    return;
  }
  const sp = `${path}.spec`;
  for (const v of validateLabelSelector(spec.nodeSelector, `${sp}.node_selector`)) add(v.field, v.description, v.reason ?? 'INVALID');
  if (!Object.values(InterfaceRole).includes(spec.interfaceRole) || spec.interfaceRole === InterfaceRole.UNRECOGNIZED) {
    add(`${sp}.interface_role`, `unknown interface role ${spec.interfaceRole}`, 'INVALID_ENUM');
  }
  if (![Action.ACTION_UNSPECIFIED, Action.ACTION_ALLOW, Action.ACTION_DENY].includes(spec.defaultAction)) {
    add(`${sp}.default_action`, 'must be ALLOW or DENY (or unset)', 'INVALID_DEFAULT_ACTION');
  }
  if (spec.description.length > limits.maxDescription) add(`${sp}.description`, `at most ${limits.maxDescription} characters`, 'TOO_LONG');
}

/** The spec's fields validatePolicy checks after the rules: connection tracking and the rollout strategy. */
function validateTail(spec: PolicySpec, sp: string, add: AddViolation): void {
  validateConnectionTracking(spec, sp, add);
  validateRolloutStrategy(spec.rolloutStrategy, `${sp}.rollout_strategy`, add);
}

/** What validatePolicy found of a valid policy, kept for the policies patched from it. */
interface ValidFacts {
  /** Its rules are in strictly ascending priority. */
  readonly ascending: boolean;
  /** Its rules' encoded bytes within the spec (each with its tag and length). */
  readonly rulesBytes: number;
  /** The prefix lists its rules name, or more (a patch that removed a name may keep it here). */
  readonly named: ReadonlySet<string>;
}

/** Valid policies, per limits object, by the Policy object (never modified once made). */
const validPolicies = new WeakMap<Readonly<PolicyLimits>, WeakMap<Policy, ValidFacts>>();

function rememberValid(policy: Policy, limits: Readonly<PolicyLimits>, facts: ValidFacts): void {
  let valid = validPolicies.get(limits);
  if (valid === undefined) validPolicies.set(limits, (valid = new WeakMap()));
  valid.set(policy, facts);
}

/**
 * True if `policy` is valid by what its patch changed (applyPolicyPatch): its base was valid
 * under `limits` with rules in ascending priority, its own head (metadata and the spec's own
 * fields) is valid, the rules the splices put in are valid and keep the priorities ascending
 * where they join the rest, the prefix lists named stay within bounds and the size is within
 * MAX_POLICY_BYTES (the base's size, less the rules taken out, plus those put in). Proportional
 * to the patch: a one-rule change to 65,536 rules checks one rule, not 65,536. False whenever
 * that cannot be shown, and then validatePolicy checks the whole policy as always (so the
 * violations reported never depend on this path).
 */
function validByPatch(policy: Policy, path: string, limits: Readonly<PolicyLimits>): boolean {
  const lineage = patchLineageOf(policy);
  const base = lineage?.base.deref();
  const facts = base === undefined ? undefined : validPolicies.get(limits)?.get(base);
  const spec = policy.spec;
  if (lineage === undefined || base === undefined || facts === undefined || !facts.ascending || spec === undefined) return false;
  const rules = spec.rules;
  const from = base.spec?.rules ?? [];
  if (rules.length === 0 || rules.length > limits.maxRules) return false;
  const { out, add } = collectViolations(path);
  validateHead(policy, path, limits, add);
  validateTail(spec, `${path}.spec`, add);
  if (out.length > 0) return false;
  let valid = validRules.get(limits);
  if (valid === undefined) validRules.set(limits, (valid = new WeakSet()));
  let rulesBytes = facts.rulesBytes;
  const named = new Set(facts.named);
  // Index in `rules` = index in the base + shift, past each splice.
  let shift = 0;
  for (const s of lineage.splices) {
    for (let r = s.start; r < s.start + s.deleteCount; r++) rulesBytes -= framedRuleBytes(from[r]!);
    for (const rule of s.rules) {
      if (!valid.has(rule)) {
        let bad = false;
        validateRule(rule, path, limits, () => void (bad = true));
        if (bad) return false;
        valid.add(rule);
      }
      rulesBytes += framedRuleBytes(rule);
      for (const list of [rule.sourcePrefixLists, rule.destinationPrefixLists]) for (const name of list) named.add(name);
    }
    // The pairs that are new: around and inside what the splice put in (or across what it took out).
    const first = s.start + shift;
    const end = first + s.rules.length;
    for (let i = Math.max(1, first); i <= Math.min(rules.length - 1, end); i++) if (rules[i]!.priority <= rules[i - 1]!.priority) return false;
    shift += s.rules.length - s.deleteCount;
  }
  if (named.size > MAX_RULE_SET_PREFIX_LISTS) return false;
  if (policyBytes(policy, rulesBytes) > MAX_POLICY_BYTES) return false;
  rememberValid(policy, limits, { ascending: true, rulesBytes, named });
  return true;
}

/**
 * Rules that passed validateRule, per limits object, by the Rule object: a rule's checks depend
 * on nothing else, and a rule carried unchanged from one revision to the next (an agent's chain,
 * a policy patch) is the same object, so a one-rule change checks one rule. Callers must not
 * modify rules they had validated. Weak: nothing is kept alive for it.
 */
const validRules = new WeakMap<Readonly<PolicyLimits>, WeakSet<Rule>>();

/** Encoded bytes of each rule, by the Rule object (as validRules). */
const ruleBytes = new WeakMap<Rule, number>();

function varintSize(n: number): number {
  let size = 1;
  for (let v = n; v >= 128; v = Math.floor(v / 128)) size++;
  return size;
}

/**
 * Policy.encode(policy).finish().length, counted by the generated codec without building the
 * buffer (SizeWriter), with each rule's encoded size remembered by the Rule object (rules are
 * never modified once in a policy): a policy whose rules were sized before costs its metadata
 * and spec without the rules.
 * @throws Error as Policy.encode does, for a value it cannot encode (a uint32 that is not one).
 */
export function encodedPolicySize(policy: Policy): number {
  return policyBytes(policy, framedRulesBytes(policy.spec?.rules ?? []));
}

/** A rule's bytes within an encoded PolicySpec: rules is field 3, length-delimited (a one-byte tag, the length, the rule). */
function framedRuleBytes(rule: Rule): number {
  let n = ruleBytes.get(rule);
  if (n === undefined) ruleBytes.set(rule, (n = SizeWriter.measure(Rule, rule)));
  return 1 + varintSize(n) + n;
}

function framedRulesBytes(rules: readonly Rule[]): number {
  let bytes = 0;
  for (const rule of rules) bytes += framedRuleBytes(rule);
  return bytes;
}

/** encodedPolicySize with its rules' framed bytes already counted. */
function policyBytes(policy: Policy, rulesBytes: number): number {
  const spec = policy.spec;
  if (spec === undefined) return SizeWriter.measure(Policy, policy);
  const specBytes = SizeWriter.measure(PolicySpec, { ...spec, rules: [] }) + rulesBytes;
  // Policy.spec is field 2: a one-byte tag, the length, the spec.
  return SizeWriter.measure(Policy, { metadata: policy.metadata, spec: undefined }) + 1 + varintSize(specBytes) + specBytes;
}

// A rule's checks run for every rule of every policy a controller writes and an agent applies
// (65,536 in the largest): a valid rule makes no object beyond its CIDRs' parse (no Set of
// families, no map of duplicates for a list of one, no array of enum values). Validation was a
// sixth of what an agent allocated applying 65,536 rules (BENCHMARKS.md, "The first apply's peak").
const V4 = 1;
const V6 = 2;
const KNOWN_PROTOCOLS: ReadonlySet<number> = new Set(Object.values(Protocol).filter((v): v is Protocol => typeof v === 'number'));
const RULE_ACTIONS: ReadonlySet<number> = new Set([Action.ACTION_ALLOW, Action.ACTION_DENY, Action.ACTION_RATE_LIMIT]);

/** Checks a rule's CIDR list (`field` of the rule at `rp`); returns the families in it (V4 | V6 bits). */
function cidrFamilies(list: readonly string[], rp: string, field: string, limits: Readonly<PolicyLimits>, add: AddViolation): number {
  let fams = 0;
  if (list.length > limits.maxCidrsPerRule) add(`${rp}.${field}`, `${list.length} CIDRs; at most ${limits.maxCidrsPerRule}`, 'TOO_MANY_CIDRS');
  const seen = list.length > 1 ? new Map<string, number>() : undefined;
  for (let j = 0; j < list.length; j++) {
    const text = list[j]!;
    const parsed = parseCanonicalCidr(text);
    if (isCidrProblem(parsed)) {
      add(`${rp}.${field}[${j}]`, parsed.description, parsed.reason);
      continue;
    }
    fams |= parsed.family === 4 ? V4 : V6;
    const dup = seen?.get(text);
    if (dup !== undefined) add(`${rp}.${field}[${j}]`, `${quote(text)} repeats ${field}[${dup}]`, 'DUPLICATE_CIDR');
    seen?.set(text, j);
  }
  return fams;
}

/** Checks a rule's prefix list names (`field` of the rule at `rp`). */
function prefixListNames(names: readonly string[], rp: string, field: string, limits: Readonly<PolicyLimits>, add: AddViolation): void {
  if (names.length > limits.maxPrefixListsPerRule) add(`${rp}.${field}`, `${names.length} prefix lists; at most ${limits.maxPrefixListsPerRule}`, 'TOO_MANY_PREFIX_LISTS');
  const seen = names.length > 1 ? new Map<string, number>() : undefined;
  for (let j = 0; j < names.length; j++) {
    const name = names[j]!;
    const p = checkDnsLabel(name);
    if (p) {
      add(`${rp}.${field}[${j}]`, `${quote(name)} ${p}`, 'INVALID_NAME');
      continue;
    }
    const dup = seen?.get(name);
    if (dup !== undefined) add(`${rp}.${field}[${j}]`, `${quote(name)} repeats ${field}[${dup}]`, 'DUPLICATE_PREFIX_LIST');
    seen?.set(name, j);
  }
}

function validateRule(rule: Rule, rp: string, limits: Readonly<PolicyLimits>, add: AddViolation): void {
  if (rule.name !== '') {
    const p = checkDnsLabel(rule.name);
    if (p) add(`${rp}.name`, `${quote(rule.name)} ${p}`, 'INVALID_NAME');
  }
  const src = cidrFamilies(rule.sourceCidrs, rp, 'source_cidrs', limits, add);
  const dst = cidrFamilies(rule.destinationCidrs, rp, 'destination_cidrs', limits, add);
  prefixListNames(rule.sourcePrefixLists, rp, 'source_prefix_lists', limits, add);
  prefixListNames(rule.destinationPrefixLists, rp, 'destination_prefix_lists', limits, add);
  // The families a packet matching this rule could have (a prefix list may hold either family).
  let possible = V4 | V6;
  if (rule.sourceCidrs.length && src && rule.sourcePrefixLists.length === 0) possible &= src;
  if (rule.destinationCidrs.length && dst && rule.destinationPrefixLists.length === 0) possible &= dst;
  if (possible === 0) add(`${rp}.destination_cidrs`, 'source and destination CIDRs share no address family, so the rule can never match', 'RULE_CANNOT_MATCH');

  const knownProtocol = KNOWN_PROTOCOLS.has(rule.protocol) && rule.protocol !== Protocol.UNRECOGNIZED;
  if (!knownProtocol) add(`${rp}.protocol`, `unknown protocol ${rule.protocol}`, 'INVALID_ENUM');
  if (rule.protocol === Protocol.PROTOCOL_ICMP && possible !== 0 && !(possible & V4)) add(`${rp}.protocol`, 'ICMP is an IPv4 protocol but the rule matches only IPv6 (use ICMPV6)', 'RULE_CANNOT_MATCH');
  if (rule.protocol === Protocol.PROTOCOL_ICMPV6 && possible !== 0 && !(possible & V6)) add(`${rp}.protocol`, 'ICMPV6 is an IPv6 protocol but the rule matches only IPv4 (use ICMP)', 'RULE_CANNOT_MATCH');

  const portsAllowed = rule.protocol === Protocol.PROTOCOL_TCP || rule.protocol === Protocol.PROTOCOL_UDP;
  if (rule.destinationPorts.length > 0 && !portsAllowed) {
    add(`${rp}.destination_ports`, 'destination ports need protocol TCP or UDP', 'PROTOCOL_PORT_MISMATCH');
  }
  if (rule.destinationPorts.length > limits.maxPortRangesPerRule) add(`${rp}.destination_ports`, `${rule.destinationPorts.length} ranges; at most ${limits.maxPortRangesPerRule}`, 'TOO_MANY_PORT_RANGES');
  for (let j = 0; j < rule.destinationPorts.length; j++) {
    const range = rule.destinationPorts[j]!;
    const last = range.last === 0 ? range.first : range.last;
    if (range.first < 1 || range.first > 65535) add(`${rp}.destination_ports[${j}].first`, `port ${range.first} is not in 1..65535`, 'PORT_OUT_OF_RANGE');
    else if (last > 65535) add(`${rp}.destination_ports[${j}].last`, `port ${range.last} is not in 1..65535`, 'PORT_OUT_OF_RANGE');
    else if (last < range.first) add(`${rp}.destination_ports[${j}].last`, `range ${range.first}-${range.last} is reversed; write ${range.last}-${range.first}`, 'REVERSED_PORT_RANGE');
  }

  if (rule.action === Action.ACTION_UNSPECIFIED) add(`${rp}.action`, 'required: ALLOW, DENY or RATE_LIMIT', 'REQUIRED');
  else if (!RULE_ACTIONS.has(rule.action)) add(`${rp}.action`, `unknown action ${rule.action}`, 'INVALID_ENUM');
  if (rule.action === Action.ACTION_RATE_LIMIT) {
    const rl = rule.rateLimit;
    if (!rl) add(`${rp}.rate_limit`, 'required with action RATE_LIMIT', 'REQUIRED');
    else {
      if (rl.packetsPerSecond < 1n || rl.packetsPerSecond > limits.maxRate) add(`${rp}.rate_limit.packets_per_second`, `must be 1..${limits.maxRate}`, 'OUT_OF_RANGE');
      if (rl.burst < 1n || rl.burst > limits.maxRate) add(`${rp}.rate_limit.burst`, `must be 1..${limits.maxRate}`, 'OUT_OF_RANGE');
    }
  } else if (rule.rateLimit) {
    add(`${rp}.rate_limit`, 'only allowed with action RATE_LIMIT', 'NOT_ALLOWED');
  }
}

/**
 * connection_tracking: established_on_deny must be a known value, and KEEP or CUT only with
 * stateful (a stateless policy has no flows to keep or cut, so asking for either is a mistake
 * the author should hear about rather than a setting silently ignored).
 */
function validateConnectionTracking(spec: PolicySpec, sp: string, add: (f: string, d: string, r: string) => void): void {
  const ct = spec.connectionTracking;
  if (!ct) return;
  const known = [ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_UNSPECIFIED, ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_KEEP, ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_CUT];
  if (!known.includes(ct.establishedOnDeny)) add(`${sp}.connection_tracking.established_on_deny`, `unknown value ${ct.establishedOnDeny}; KEEP or CUT`, 'INVALID_ENUM');
  else if (!ct.stateful && ct.establishedOnDeny !== ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_UNSPECIFIED) {
    add(`${sp}.connection_tracking.established_on_deny`, 'needs stateful: true (a stateless policy tracks no flows to keep or cut)', 'NEEDS_STATEFUL');
  }
}

/** Receives one violation: its field path, description and reason. */
export type AddViolation = (field: string, description: string, reason: string) => void;

/**
 * A bounded collector of violations under `path`: `add` keeps the first MAX_COLLECTED_VIOLATIONS,
 * `result()` returns them plus one entry counting the rest. `out` is the list so far.
 */
export function collectViolations(path: string): { out: FieldViolation[]; add: AddViolation; result: () => FieldViolation[] } {
  const out: FieldViolation[] = [];
  let more = 0;
  const add: AddViolation = (field, description, reason) => {
    if (out.length < MAX_COLLECTED_VIOLATIONS) out.push({ field, description, reason });
    else more++;
  };
  return { out, add, result: () => (more > 0 ? [...out, moreViolations(path, more)] : out) };
}

/**
 * Checks a resource's metadata at `path` (e.g. `service.metadata`) as every resource kind
 * needs it: name required and an RFC 1123 label, labels in Kubernetes syntax, annotation keys
 * valid, their count bounded and their bytes at most `maxAnnotationBytes`. Output-only fields
 * are not looked at. Reports through `add`; linear in the metadata's size.
 */
export function validateObjectMeta(meta: ObjectMeta | undefined, path: string, maxAnnotationBytes: number, add: AddViolation): void {
  if (!meta || meta.name === '') add(`${path}.name`, 'required', 'REQUIRED');
  else {
    const p = checkDnsLabel(meta.name);
    if (p) add(`${path}.name`, `${quote(meta.name)} ${p}`, 'INVALID_NAME');
  }
  for (const v of validateLabels(meta?.labels ?? {}, `${path}.labels`)) add(v.field, v.description, v.reason ?? 'INVALID');
  let annotationBytes = 0;
  const annotations = Object.entries(meta?.annotations ?? {});
  if (annotations.length > MAX_LABELS * 4) add(`${path}.annotations`, `${annotations.length} annotations; at most ${MAX_LABELS * 4}`, 'TOO_MANY_ANNOTATIONS');
  else for (const [k, v] of annotations) {
    const kp = checkLabelKey(k);
    if (kp) add(`${path}.annotations`, `key ${quote(k)}: ${kp}`, 'INVALID_ANNOTATION_KEY');
    annotationBytes += Buffer.byteLength(k) + Buffer.byteLength(v);
  }
  if (annotationBytes > maxAnnotationBytes) add(`${path}.annotations`, `${annotationBytes} bytes; at most ${maxAnnotationBytes}`, 'TOO_LARGE');
}

/**
 * Checks a rollout strategy at `path` (e.g. `policy.spec.rollout_strategy`): a staged one needs
 * 1..MAX_ROLLOUT_WAVES waves, each a percent in (0, 100] (cumulative, so never falling) or a
 * valid selector, a bake time and a shadow bake time of 0..7 days (a shadow bake only when
 * `options.shadow`: policies, the default), gates of 0..100 and a report timeout that is not
 * negative. Unset or immediate needs nothing. Reports through `add`.
 */
export function validateRolloutStrategy(rolloutStrategy: RolloutStrategy | undefined, path: string, add: AddViolation, options: { shadow?: boolean } = { shadow: true }): void {
  const strategy = rolloutStrategy?.strategy;
  if (strategy?.$case !== 'staged') return;
  const staged = strategy.staged;
  const p = `${path}.staged`;
  if (staged.waves.length === 0) add(`${p}.waves`, 'a staged rollout needs at least one wave', 'REQUIRED');
  if (staged.waves.length > MAX_ROLLOUT_WAVES) {
    add(`${p}.waves`, `${staged.waves.length} waves; at most ${MAX_ROLLOUT_WAVES}`, 'TOO_MANY_WAVES');
    return;
  }
  let lastPercent = 0;
  staged.waves.forEach((wave, i) => {
    const wp = `${p}.waves[${i}]`;
    if (!wave.target) add(`${wp}`, 'needs percent or selector', 'REQUIRED');
    else if (wave.target.$case === 'percent') {
      const pct = wave.target.percent;
      if (!(pct > 0 && pct <= 100)) add(`${wp}.percent`, 'must be in (0, 100]', 'OUT_OF_RANGE');
      else if (pct < lastPercent) add(`${wp}.percent`, `waves are cumulative: ${pct} is less than the previous wave's ${lastPercent}`, 'NOT_MONOTONIC');
      else lastPercent = pct;
    } else {
      for (const v of validateLabelSelector(wave.target.selector, `${wp}.selector`)) add(v.field, v.description, v.reason ?? 'INVALID');
    }
    const bake = wave.bakeTime;
    if (bake && (bake.seconds < 0n || bake.nanos < 0 || bake.seconds > MAX_BAKE_SECONDS)) add(`${wp}.bake_time`, 'must be between 0 and 7 days', 'OUT_OF_RANGE');
    const shadow = wave.shadowBakeTime;
    if (shadow && (shadow.seconds < 0n || shadow.nanos < 0 || shadow.seconds > MAX_BAKE_SECONDS)) add(`${wp}.shadow_bake_time`, 'must be between 0 and 7 days', 'OUT_OF_RANGE');
    // The datapath shadows rule sets: a service's change (its load-balancing tables) cannot be shadowed.
    else if (shadow && (shadow.seconds > 0n || shadow.nanos > 0) && !options.shadow) add(`${wp}.shadow_bake_time`, 'only a policy\'s rollout can shadow a change', 'NOT_ALLOWED');
  });
  const g = staged.gates;
  if (g) {
    if (g.maxDropRatioIncreasePoints < 0 || g.maxDropRatioIncreasePoints > 100) add(`${p}.gates.max_drop_ratio_increase_points`, 'must be 0..100', 'OUT_OF_RANGE');
    if (g.maxUnreportedPercent < 0 || g.maxUnreportedPercent > 100) add(`${p}.gates.max_unreported_percent`, 'must be 0..100', 'OUT_OF_RANGE');
    if (!(g.maxWouldDropPercent >= 0 && g.maxWouldDropPercent <= 100)) add(`${p}.gates.max_would_drop_percent`, 'must be 0..100', 'OUT_OF_RANGE');
  }
  const t = staged.reportTimeout;
  if (t && (t.seconds < 0n || t.nanos < 0)) add(`${p}.report_timeout`, 'must not be negative', 'OUT_OF_RANGE');
}
