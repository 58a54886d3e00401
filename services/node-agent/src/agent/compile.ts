import {
  Action,
  ConnectionTracking_EstablishedOnDeny,
  InterfaceRole as ProtoRole,
  Protocol,
  RolloutKind,
  RolloutState,
  matchesLabelSelector,
  WavePhase,
  rolloutKey,
  rolloutKeyOf,
  shadowCandidateOf,
  validatePolicy,
  type FieldViolation,
  type Policy,
  type PrefixList,
  type Rollout,
  type Rule,
  type Service,
  type Snapshot,
} from '@edgeplane/proto';
import type { RuleKey } from '@edgeplane/proto';
import { IdIndex } from '../datapath/id-index.js';
import type { InterfaceRole } from '../datapath/interface-role.js';
import { EGRESS_RULE_ID, MAX_RULES, type PortRange, type RuleSetSpec, type RuleSpec } from '../datapath/rule-set.js';
import { compileServices, type BackendHealthView, type BackendRouteView, type LbSpec, type MaglevTableCache } from '../datapath/service-compile.js';

/** Where a compiled rule came from: for counters and describe output. */
export interface RuleOrigin extends RuleKey {
  ruleName: string;
}

/**
 * The origin of each rule id of a merged rule set. Packed by position (the rule set's order) and
 * found through an IdIndex; each RuleOrigin is made when asked for. ~28 bytes per rule where a
 * Map of RuleOrigin objects took ~90 (~6 MiB at 65,536 rules). Immutable; iterates in position
 * order, as a Map filled in that order would.
 */
export class RuleOrigins implements ReadonlyMap<number, RuleOrigin> {
  readonly #ids: Uint32Array;
  readonly #index: IdIndex;
  readonly #policies: readonly string[];
  readonly #priorities: Uint32Array;
  readonly #names: readonly string[];

  /** The arrays are taken, not copied: by position, distinct ids. */
  constructor(ids: Uint32Array, policies: readonly string[], priorities: Uint32Array, names: readonly string[]) {
    this.#ids = ids;
    this.#index = new IdIndex(ids);
    this.#policies = policies;
    this.#priorities = priorities;
    this.#names = names;
  }

  get size(): number {
    return this.#ids.length;
  }

  get(id: number): RuleOrigin | undefined {
    const at = this.#index.positionOf(id);
    return at === undefined ? undefined : this.#at(at);
  }

  has(id: number): boolean {
    return this.#index.positionOf(id) !== undefined;
  }

  forEach(fn: (value: RuleOrigin, key: number, map: ReadonlyMap<number, RuleOrigin>) => void, thisArg?: unknown): void {
    for (let i = 0; i < this.#ids.length; i++) fn.call(thisArg, this.#at(i), this.#ids[i] as number, this);
  }

  *entries(): MapIterator<[number, RuleOrigin]> {
    for (let i = 0; i < this.#ids.length; i++) yield [this.#ids[i] as number, this.#at(i)];
  }

  *keys(): MapIterator<number> {
    for (let i = 0; i < this.#ids.length; i++) yield this.#ids[i] as number;
  }

  *values(): MapIterator<RuleOrigin> {
    for (let i = 0; i < this.#ids.length; i++) yield this.#at(i);
  }

  [Symbol.iterator](): MapIterator<[number, RuleOrigin]> {
    return this.entries();
  }

  #at(i: number): RuleOrigin {
    return { policy: this.#policies[i] as string, priority: this.#priorities[i] as number, ruleName: this.#names[i] as string };
  }
}

/**
 * The datapath input for one interface role, and the origin of each of its rule ids. The rule
 * set and origins may be the same objects as the other role's (when both compile alike): read
 * them, never change them.
 */
export interface CompiledRole {
  ruleSet: RuleSetSpec;
  /**
   * The load-balancing spec applied with the rule set (bpf/LB.md): the uplink's, when the
   * services were compiled ({@link compileNode}); never the workload's (services are DNATed at
   * the uplink's XDP hook). Absent: no services.
   */
  lb?: LbSpec;
  origins: ReadonlyMap<number, RuleOrigin>;
}

/** What a node enforces: one rule set per interface role, and the uplink's services. */
export interface CompiledIntent {
  uplink: CompiledRole;
  workload: CompiledRole;
  /** Names of the policies that select this node (sorted). */
  selected: string[];
}

// Policies are immutable once in the chain, and the same object is carried from revision to
// revision until it changes: validate each one once.
const validated = new WeakMap<Policy, FieldViolation[]>();
function violationsOf(p: Policy): FieldViolation[] {
  let v = validated.get(p);
  if (!v) validated.set(p, (v = validatePolicy(p)));
  return v;
}

/** The intent could not be compiled for this node; nothing may be applied. */
export class CompileError extends Error {
  override name = 'CompileError';
  constructor(
    message: string,
    readonly violations: FieldViolation[] = [],
  ) {
    super(message);
  }
}

const PROTOCOLS: Record<number, RuleSpec['protocol']> = {
  [Protocol.PROTOCOL_UNSPECIFIED]: 'any',
  [Protocol.PROTOCOL_ANY]: 'any',
  [Protocol.PROTOCOL_TCP]: 'tcp',
  [Protocol.PROTOCOL_UDP]: 'udp',
  [Protocol.PROTOCOL_ICMP]: 'icmp',
  [Protocol.PROTOCOL_ICMPV6]: 'icmpv6',
};

/**
 * A stable 32-bit id for a rule, from its policy and priority (FNV-1a), so counters and
 * rate-limit buckets follow the rule across revisions. Never the default-action id.
 */
export function ruleId(policy: string, priority: number): number {
  const text = `${policy}\u0000${priority}`;
  // The UTF-8 bytes of `text`: its character codes where all are ASCII (a policy name always
  // is), without a buffer per rule (a compile of 65,536 rules hashes every one).
  const utf8 = /[\u0080-\u{10ffff}]/u.test(policy) ? Buffer.from(text) : undefined;
  const length = utf8?.length ?? text.length;
  let h = 0x811c9dc5;
  for (let i = 0; i < length; i++) {
    h ^= utf8 === undefined ? text.charCodeAt(i) : (utf8[i] as number);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  // The top two ids are reserved (the default action's counter, egress connection entries).
  return h >= EGRESS_RULE_ID ? 0 : h;
}

/** The ports of a rule that names none: one array for all of them (never modified). */
const ANY_PORT: PortRange[] = Object.freeze([]) as unknown as PortRange[];

/**
 * A rule's spec. Its address and prefix-list arrays are the rule's own (a chain's rules are never
 * modified, and neither are specs): at 65,536 rules, copies were ~5 MiB of the agent's heap.
 */
function toRuleSpec(rule: Rule, id: number, stateful: boolean): RuleSpec {
  const spec: RuleSpec = {
    id,
    srcCidrs: rule.sourceCidrs,
    dstCidrs: rule.destinationCidrs,
    protocol: PROTOCOLS[rule.protocol] ?? 'any',
    dstPorts: rule.destinationPorts.length === 0 ? ANY_PORT : rule.destinationPorts.map((p) => ({ from: p.first, to: p.last === 0 ? p.first : p.last })),
    action: rule.action === Action.ACTION_ALLOW ? 'allow' : rule.action === Action.ACTION_DENY ? 'deny' : 'rate_limit',
  };
  if (rule.sourcePrefixLists.length > 0) spec.srcLists = rule.sourcePrefixLists;
  if (rule.destinationPrefixLists.length > 0) spec.dstLists = rule.destinationPrefixLists;
  if (rule.action === Action.ACTION_RATE_LIMIT && rule.rateLimit) {
    spec.rateLimit = { pps: Number(rule.rateLimit.packetsPerSecond), burst: Number(rule.rateLimit.burst) };
  }
  // Only allow rules create entries: a rate-limited flow stays rate-limited packet by packet.
  if (stateful && spec.action === 'allow') spec.track = true;
  return spec;
}

function appliesTo(policy: Policy, role: InterfaceRole): boolean {
  const r = policy.spec?.interfaceRole ?? ProtoRole.INTERFACE_ROLE_UNSPECIFIED;
  if (r === ProtoRole.INTERFACE_ROLE_UNSPECIFIED || r === ProtoRole.INTERFACE_ROLE_ALL) return true;
  return role === 'uplink' ? r === ProtoRole.INTERFACE_ROLE_UPLINK : r === ProtoRole.INTERFACE_ROLE_WORKLOAD;
}

/** Whether a policy is stateful (bpf/CONNTRACK.md, "Policy semantics (API)"). */
function isStateful(policy: Policy): boolean {
  return policy.spec?.connectionTracking?.stateful === true;
}

/**
 * Each rule's spec as compiled last, by the Rule object (rules in the chain are never modified,
 * and a policy patch carries the unchanged ones over as the same objects): a one-rule change
 * builds one spec, and the table compiler finds the others already parsed (rule-set.ts). The
 * spec is all that is kept (a record beside it was ~4.5 MiB at 65,536 rules): it is a function
 * of the rule, its id and whether its policy is stateful, and the last shows in `track`.
 */
const ruleSpecs = new WeakMap<Rule, RuleSpec>();

function specOf(rule: Rule, id: number, stateful: boolean): RuleSpec {
  const known = ruleSpecs.get(rule);
  if (known !== undefined && known.id === id && (known.track === true) === (stateful && known.action === 'allow')) return known;
  const spec = toRuleSpec(rule, id, stateful);
  ruleSpecs.set(rule, spec);
  return spec;
}

/**
 * What compileRole built last for each role: a recompile whose policies differ only in a few
 * rules (same policies in the same order, a changed policy's rules replaced in place with the
 * same priorities and names) reuses it and does work for the changed rules only. Whatever agent
 * in this process compiled it: the reuse is checked against the inputs, never assumed.
 */
interface RoleCompile {
  readonly mine: readonly Policy[];
  /** Per policy of `mine`, per rule: its index in the merged rule set. */
  readonly positions: readonly (readonly number[])[];
  readonly result: CompiledRole;
}
const lastRole: Partial<Record<InterfaceRole, RoleCompile>> = {};

function compileRole(policies: Policy[], role: InterfaceRole): CompiledRole {
  const mine = policies.filter((p) => appliesTo(p, role));
  const stateful = new Set(mine.filter(isStateful).map((p) => p.metadata!.name));
  const specs = respliced(lastRole[role], mine, stateful) ?? compileRules(mine, role, stateful);
  // The most restrictive default of the policies that have an opinion.
  const deny = mine.some((p) => p.spec!.defaultAction === Action.ACTION_DENY);
  const ruleSet: RuleSetSpec = { rules: specs.specs, defaultAction: deny ? 'deny' : 'allow' };
  // Connection tracking (bpf/CONNTRACK.md, "Policy semantics (API)"): the flags are set only
  // when true, so a stateless intent compiles to exactly the rule set it did before tracking.
  const statefulPolicies = mine.filter(isStateful);
  if (statefulPolicies.length > 0) {
    ruleSet.trackEgress = true;
    // The default tracks when it is allow and a stateful policy asked for allow; a stateful
    // policy with no opinion (or deny, which lost to nothing here) does not make it track.
    if (!deny && statefulPolicies.some((p) => p.spec!.defaultAction === Action.ACTION_ALLOW)) ruleSet.trackDefault = true;
    if (statefulPolicies.some((p) => p.spec!.connectionTracking!.establishedOnDeny === ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_CUT)) ruleSet.cutOnDeny = true;
  }
  const result = { ruleSet, origins: specs.origins };
  lastRole[role] = { mine, positions: specs.positions, result };
  return result;
}

/** The merged rules of `mine` in first-match order: their specs, origins and places. */
interface MergedRules {
  readonly specs: RuleSpec[];
  readonly origins: ReadonlyMap<number, RuleOrigin>;
  readonly positions: readonly (readonly number[])[];
}

function compileRules(mine: readonly Policy[], role: InterfaceRole, stateful: ReadonlySet<string>): MergedRules {
  // First match wins: ascending priority, ties broken by policy name, so every node orders the
  // same rules the same way.
  type Entry = { policy: string; rule: Rule; p: number; r: number };
  const order = (a: Entry, b: Entry): number => a.rule.priority - b.rule.priority || (a.policy < b.policy ? -1 : a.policy > b.policy ? 1 : 0);
  const rules = mine.flatMap((p, pi) => p.spec!.rules.map((rule, r): Entry => ({ policy: p.metadata!.name, rule, p: pi, r })));
  // Usually already in order (one policy, rules by priority): checking is cheaper than sorting.
  if (rules.some((r, i) => i > 0 && order(rules[i - 1]!, r) > 0)) rules.sort(order);
  if (rules.length > MAX_RULES) throw new CompileError(`${rules.length} ${role} rules select this node; the datapath holds ${MAX_RULES}`);
  const taken = new Set<number>();
  const ids = new Uint32Array(rules.length);
  const priorities = new Uint32Array(rules.length);
  const positions = mine.map((p) => new Array<number>(p.spec!.rules.length));
  const specs = rules.map(({ policy, rule, p, r }, at) => {
    let id = ruleId(policy, rule.priority);
    // A 32-bit hash can collide; probe deterministically (same input order on every node).
    while (taken.has(id) || id >= EGRESS_RULE_ID) id = id >= EGRESS_RULE_ID ? 0 : id + 1;
    taken.add(id);
    ids[at] = id;
    priorities[at] = rule.priority;
    (positions[p] as number[])[r] = at;
    return specOf(rule, id, stateful.has(policy));
  });
  const origins = new RuleOrigins(
    ids,
    rules.map((e) => e.policy),
    priorities,
    rules.map((e) => e.rule.name),
  );
  return { specs, origins, positions };
}

/**
 * The merged rules of `mine` from the last compile of the role, when `mine` differs from its
 * policies only in rules replaced in place (same count, and each replaced rule with the same
 * priority and name as the one it replaces, so the order, the ids and the origins stay): the
 * previous specs with the replaced rules' specs put in. Work and memory: a copy of the spec
 * array, plus the replaced rules. @returns undefined when the full compile is needed.
 */
function respliced(last: RoleCompile | undefined, mine: readonly Policy[], stateful: ReadonlySet<string>): MergedRules | undefined {
  if (last === undefined || last.mine.length !== mine.length) return undefined;
  const previous = last.result.ruleSet.rules;
  let specs: RuleSpec[] | undefined;
  for (let p = 0; p < mine.length; p++) {
    const now = mine[p] as Policy;
    const before = last.mine[p] as Policy;
    if (now === before) continue;
    const name = now.metadata!.name;
    if (name !== before.metadata!.name || isStateful(now) !== isStateful(before)) return undefined;
    const rules = now.spec!.rules;
    const old = before.spec!.rules;
    if (rules.length !== old.length) return undefined;
    for (let r = 0; r < rules.length; r++) {
      const rule = rules[r] as Rule;
      const was = old[r] as Rule;
      if (rule === was) continue;
      if (rule.priority !== was.priority || rule.name !== was.name) return undefined;
      const at = (last.positions[p] as readonly number[])[r] as number;
      const id = (previous[at] as RuleSpec).id;
      specs ??= previous.slice();
      specs[at] = specOf(rule, id, stateful.has(name));
    }
  }
  return { specs: specs ?? previous.slice(), origins: last.result.origins, positions: last.positions };
}

/** What a staged rollout may change: a resource with a name (a policy or a service). */
type Versioned = { metadata?: { name: string } | undefined };

/**
 * The version of each resource of one kind this node runs: a resource under an active staged
 * rollout is its target version on the nodes of the rollout's current waves, and its previous
 * version (or nothing, when the rollout creates it) everywhere else. `rollouts` is the chain's
 * map (keyed by rolloutKey) or a snapshot's list. The one place agents choose versions, for
 * policies and services alike. Pure.
 */
export function effectiveVersions<K extends RolloutKind.ROLLOUT_KIND_POLICY | RolloutKind.ROLLOUT_KIND_SERVICE>(
  kind: K,
  items: Iterable<K extends RolloutKind.ROLLOUT_KIND_SERVICE ? Service : Policy>,
  rollouts: ReadonlyMap<string, Rollout> | Iterable<Rollout>,
  nodeName: string,
): (K extends RolloutKind.ROLLOUT_KIND_SERVICE ? Service : Policy)[] {
  type T = K extends RolloutKind.ROLLOUT_KIND_SERVICE ? Service : Policy;
  const byKey = rollouts instanceof Map ? (rollouts as ReadonlyMap<string, Rollout>) : new Map([...(rollouts as Iterable<Rollout>)].map((r) => [rolloutKeyOf(r), r]));
  const previousOf = (r: Rollout): T | undefined => (kind === RolloutKind.ROLLOUT_KIND_SERVICE ? r.previousService : r.previous) as T | undefined;
  const out: T[] = [];
  for (const item of items) {
    const r = byKey.get(rolloutKey(kind, (item as Versioned).metadata?.name ?? ''));
    const active = r && (r.state === RolloutState.ROLLOUT_STATE_PROGRESSING || r.state === RolloutState.ROLLOUT_STATE_PAUSED);
    if (!active || r.waveNodes.includes(nodeName)) out.push(item);
    else {
      const previous = previousOf(r);
      if (previous) out.push(previous);
    }
  }
  return out;
}

/** {@link effectiveVersions} of policies. Pure. */
export function effectivePolicies(policies: Iterable<Policy>, rollouts: ReadonlyMap<string, Rollout> | Iterable<Rollout>, nodeName: string): Policy[] {
  return effectiveVersions(RolloutKind.ROLLOUT_KIND_POLICY, policies, rollouts, nodeName);
}

/**
 * Compiles the whole intent for one node: validates every policy again (as the controller
 * did), keeps those whose selector matches the node's labels, and merges their rules per
 * interface role. Give `rollouts` and `nodeName` to honour staged rollouts (see
 * {@link effectivePolicies}). Pure.
 * @throws CompileError naming the invalid policy and its violations, or a capacity problem.
 */
export function compileIntent(policies: Iterable<Policy>, labels: Readonly<Record<string, string>>, rollouts?: Iterable<Rollout>, nodeName?: string, prefixLists: readonly PrefixList[] = []): CompiledIntent {
  const selected: Policy[] = [];
  const versions = rollouts && nodeName !== undefined ? effectivePolicies(policies, rollouts, nodeName) : policies;
  for (const p of versions) {
    const violations = violationsOf(p);
    if (violations.length > 0) {
      throw new CompileError(`policy ${p.metadata?.name ?? '?'} is invalid: ${violations[0]!.field}: ${violations[0]!.description}`, violations);
    }
    if (matchesLabelSelector(p.spec?.nodeSelector, labels)) selected.push(p);
  }
  selected.sort((a, b) => (a.metadata!.name < b.metadata!.name ? -1 : 1));
  const uplink = compileRole(selected, 'uplink');
  // When every selected policy applies to both roles (the usual case: no interface_role), both
  // compile from the same policies to the same rule set: compiled once, and the one rule set and
  // origin map are shared, read-only, by both roles (half the compile time and the memory the
  // agent keeps for its live rule sets).
  const same = selected.every((p) => appliesTo(p, 'uplink') && appliesTo(p, 'workload'));
  const up = withLists(uplink, prefixLists, labels);
  const workload = same ? { ruleSet: up.ruleSet, origins: up.origins } : withLists(compileRole(selected, 'workload'), prefixLists, labels);
  return { uplink: up, workload, selected: selected.map((p) => p.metadata!.name) };
}

/**
 * `role` with the prefixes of the lists its rules name (bpf/README.md, "Prefix lists in rules"),
 * from the lists that select the node (any use): a name no such list has is left out, and the
 * datapath refuses the rule set naming it (the revision is NACKed, nothing changes).
 * @returns `role` itself when no rule names a list.
 */
function withLists(role: CompiledRole, prefixLists: readonly PrefixList[], labels: Readonly<Record<string, string>>): CompiledRole {
  const names = new Set<string>();
  for (const rule of role.ruleSet.rules) {
    for (const name of rule.srcLists ?? []) names.add(name);
    for (const name of rule.dstLists ?? []) names.add(name);
  }
  if (names.size === 0) return role;
  const lists: Record<string, readonly string[]> = {};
  for (const list of prefixLists) {
    const name = list.metadata?.name ?? '';
    if (names.has(name) && list.spec !== undefined && matchesLabelSelector(list.spec.nodeSelector, labels)) lists[name] = list.spec.prefixes;
  }
  return { ...role, ruleSet: { ...role.ruleSet, lists } };
}

/** What a node's whole intent is compiled from: a snapshot's policies, rollouts and services. */
export type NodeIntent = Pick<Snapshot, 'policies' | 'rollouts' | 'services'> & Partial<Pick<Snapshot, 'prefixLists'>>;

/** What {@link compileNode} needs besides the intent and the labels. */
export interface NodeCompileOptions {
  /** The node's name: staged rollouts (of policies and services) select nodes by it. */
  readonly nodeName: string;
  /** Backend health on this node (absent: every backend healthy); an unhealthy backend takes no new flows. */
  readonly health?: BackendHealthView;
  /** The node's routes to backends (DSR and full NAT send from the node's address towards each). */
  readonly routes?: BackendRouteView;
  /** The agent's table cache, so a recompile builds only the Maglev tables whose inputs changed. */
  readonly cache?: MaglevTableCache;
}

/**
 * The services of `intent` as this node's load-balancing spec: each service in the version its
 * staged rollout gives `options.nodeName` ({@link effectiveVersions}), then compileServices
 * (every service validated again, those selecting `labels` kept, health applied, tables from
 * the cache). The one place the agent turns services into an LbSpec: a revision's apply and a
 * health re-apply of the revision in force both come here. Pure but for the cache.
 * @throws ServiceCompileError naming the invalid or conflicting service.
 */
export function compileNodeServices(intent: Pick<NodeIntent, 'services' | 'rollouts'>, labels: Readonly<Record<string, string>>, options: NodeCompileOptions): LbSpec {
  const services = effectiveVersions(RolloutKind.ROLLOUT_KIND_SERVICE, intent.services, intent.rollouts, options.nodeName);
  return compileServices(services, { labels, ...(options.health ? { health: options.health } : {}), ...(options.cache ? { cache: options.cache } : {}), ...(options.routes ? { routes: options.routes } : {}) });
}

/**
 * Compiles everything a node enforces from one snapshot: the policies per interface role
 * ({@link compileIntent}) and the services as the uplink's load-balancing spec
 * ({@link compileNodeServices}), staged rollouts of both honoured for `nodeName`; the workload
 * role gets none. An
 * invalid policy or service refuses the whole snapshot.
 * @returns a new CompiledIntent the caller owns (its Maglev tables are shared read-only with the cache).
 * @throws CompileError (a policy, a rule capacity); ServiceCompileError (a service).
 */
export function compileNode(intent: NodeIntent, labels: Readonly<Record<string, string>>, options: NodeCompileOptions): CompiledIntent {
  const compiled = compileIntent(intent.policies, labels, intent.rollouts, options.nodeName, intent.prefixLists);
  compiled.uplink.lb = compileNodeServices(intent, labels, options);
  return compiled;
}

/** A node's shadow candidate (issue 18): what it classifies by beside what it enforces. */
export interface ShadowCandidate {
  /** Its name: shadowCandidateOf() of each rollout the node shadows, sorted, joined by ",". */
  readonly candidate: string;
  /** The rule sets per interface role, as compileIntent builds them with those rollouts' targets in. */
  readonly compiled: CompiledIntent;
}

/**
 * The policy rollouts whose shadow phase includes `nodeName` (active, phase SHADOW, the node in
 * shadow_nodes), in key order. Pure.
 */
export function shadowingRollouts(rollouts: Iterable<Rollout>, nodeName: string): Rollout[] {
  const out: Rollout[] = [];
  for (const r of rollouts) {
    if (r.kind === RolloutKind.ROLLOUT_KIND_SERVICE || r.wavePhase !== WavePhase.WAVE_PHASE_SHADOW) continue;
    if (r.state !== RolloutState.ROLLOUT_STATE_PROGRESSING && r.state !== RolloutState.ROLLOUT_STATE_PAUSED) continue;
    if (r.shadowNodes.includes(nodeName)) out.push(r);
  }
  return out.sort((a, b) => (rolloutKeyOf(a) < rolloutKeyOf(b) ? -1 : 1));
}

/**
 * The shadow candidate of one node: the policies it would enforce if every rollout shadowing on
 * it ({@link shadowingRollouts}) had made it enforce its target, compiled like
 * {@link compileIntent}; undefined when it shadows nothing. The one place the agent builds a
 * candidate, at an apply and at boot alike. Pure.
 * @throws CompileError as compileIntent (the candidate is invalid or does not fit).
 */
export function compileShadow(intent: Pick<NodeIntent, 'policies' | 'rollouts' | 'prefixLists'>, labels: Readonly<Record<string, string>>, nodeName: string): ShadowCandidate | undefined {
  const shadowing = shadowingRollouts(intent.rollouts, nodeName);
  if (shadowing.length === 0) return undefined;
  const keys = new Set(shadowing.map(rolloutKeyOf));
  // Without the shadowing rollouts, their policies are taken as stored: the targets.
  const others = intent.rollouts.filter((r) => !keys.has(rolloutKeyOf(r)));
  return { candidate: shadowing.map(shadowCandidateOf).join(','), compiled: compileIntent(intent.policies, labels, others, nodeName, intent.prefixLists) };
}
