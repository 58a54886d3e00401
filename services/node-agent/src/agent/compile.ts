import {
  Action,
  InterfaceRole as ProtoRole,
  Protocol,
  RolloutState,
  matchesLabelSelector,
  validatePolicy,
  type FieldViolation,
  type Policy,
  type Rollout,
  type Rule,
} from '@edgeplane/proto';
import type { RuleKey } from '@edgeplane/proto';
import type { InterfaceRole } from '../datapath/interface-role.js';
import { EGRESS_RULE_ID, MAX_RULES, type RuleSetSpec, type RuleSpec } from '../datapath/rule-set.js';

/** Where a compiled rule came from: for counters and describe output. */
export interface RuleOrigin extends RuleKey {
  ruleName: string;
}

/** The datapath input for one interface role, and the origin of each of its rule ids. */
export interface CompiledRole {
  ruleSet: RuleSetSpec;
  origins: Map<number, RuleOrigin>;
}

/** What a node enforces: one rule set per interface role. */
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
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(`${policy}\u0000${priority}`)) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  // The top two ids are reserved (the default action's counter, egress connection entries).
  return h >= EGRESS_RULE_ID ? 0 : h;
}

function toRuleSpec(rule: Rule, id: number): RuleSpec {
  const spec: RuleSpec = {
    id,
    srcCidrs: [...rule.sourceCidrs],
    dstCidrs: [...rule.destinationCidrs],
    protocol: PROTOCOLS[rule.protocol] ?? 'any',
    dstPorts: rule.destinationPorts.map((p) => ({ from: p.first, to: p.last === 0 ? p.first : p.last })),
    action: rule.action === Action.ACTION_ALLOW ? 'allow' : rule.action === Action.ACTION_DENY ? 'deny' : 'rate_limit',
  };
  if (rule.action === Action.ACTION_RATE_LIMIT && rule.rateLimit) {
    spec.rateLimit = { pps: Number(rule.rateLimit.packetsPerSecond), burst: Number(rule.rateLimit.burst) };
  }
  return spec;
}

function appliesTo(policy: Policy, role: InterfaceRole): boolean {
  const r = policy.spec?.interfaceRole ?? ProtoRole.INTERFACE_ROLE_UNSPECIFIED;
  if (r === ProtoRole.INTERFACE_ROLE_UNSPECIFIED || r === ProtoRole.INTERFACE_ROLE_ALL) return true;
  return role === 'uplink' ? r === ProtoRole.INTERFACE_ROLE_UPLINK : r === ProtoRole.INTERFACE_ROLE_WORKLOAD;
}

function compileRole(policies: Policy[], role: InterfaceRole): CompiledRole {
  const mine = policies.filter((p) => appliesTo(p, role));
  // First match wins: ascending priority, ties broken by policy name, so every node orders the
  // same rules the same way.
  const rules = mine
    .flatMap((p) => p.spec!.rules.map((rule) => ({ policy: p.metadata!.name, rule })))
    .sort((a, b) => a.rule.priority - b.rule.priority || (a.policy < b.policy ? -1 : a.policy > b.policy ? 1 : 0));
  if (rules.length > MAX_RULES) throw new CompileError(`${rules.length} ${role} rules select this node; the datapath holds ${MAX_RULES}`);
  const origins = new Map<number, RuleOrigin>();
  const specs = rules.map(({ policy, rule }) => {
    let id = ruleId(policy, rule.priority);
    // A 32-bit hash can collide; probe deterministically (same input order on every node).
    while (origins.has(id) || id >= EGRESS_RULE_ID) id = id >= EGRESS_RULE_ID ? 0 : id + 1;
    origins.set(id, { policy, priority: rule.priority, ruleName: rule.name });
    return toRuleSpec(rule, id);
  });
  // The most restrictive default of the policies that have an opinion.
  const deny = mine.some((p) => p.spec!.defaultAction === Action.ACTION_DENY);
  return { ruleSet: { rules: specs, defaultAction: deny ? 'deny' : 'allow' }, origins };
}

/**
 * The version of each policy this node runs: a policy under an active staged rollout is its
 * target version on the nodes of the rollout's current waves, and its previous version (or
 * nothing, when the rollout creates it) everywhere else. Pure.
 */
export function effectivePolicies(policies: Iterable<Policy>, rollouts: ReadonlyMap<string, Rollout> | Iterable<Rollout>, nodeName: string): Policy[] {
  const byName = rollouts instanceof Map ? (rollouts as ReadonlyMap<string, Rollout>) : new Map([...(rollouts as Iterable<Rollout>)].map((r) => [r.name, r]));
  const out: Policy[] = [];
  const seen = new Set<string>();
  for (const p of policies) {
    const name = p.metadata?.name ?? '';
    seen.add(name);
    const r = byName.get(name);
    const active = r && (r.state === RolloutState.ROLLOUT_STATE_PROGRESSING || r.state === RolloutState.ROLLOUT_STATE_PAUSED);
    if (!active || r.waveNodes.includes(nodeName)) out.push(p);
    else if (r.previous) out.push(r.previous);
  }
  return out;
}

/**
 * Compiles the whole intent for one node: validates every policy again (as the controller
 * did), keeps those whose selector matches the node's labels, and merges their rules per
 * interface role. Give `rollouts` and `nodeName` to honour staged rollouts (see
 * {@link effectivePolicies}). Pure.
 * @throws CompileError naming the invalid policy and its violations, or a capacity problem.
 */
export function compileIntent(policies: Iterable<Policy>, labels: Readonly<Record<string, string>>, rollouts?: Iterable<Rollout>, nodeName?: string): CompiledIntent {
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
  return { uplink: compileRole(selected, 'uplink'), workload: compileRole(selected, 'workload'), selected: selected.map((p) => p.metadata!.name) };
}
