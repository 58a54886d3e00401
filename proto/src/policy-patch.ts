// Policies as patches against the version the log holds (Change.policy_patches, log format 2):
// the one implementation the controller (to write them) and every follower (to apply them) use.
import { createHash } from 'node:crypto';
import { Policy, PolicySpec, Rule } from '../gen/edgeplane/v1/policy.js';
import type { PolicyPatch, RuleSplice } from '../gen/edgeplane/v1/log.js';
import { encodeBytes } from './encode-bytes.js';
import { PatchError } from './errors.js';
import { MAX_SPLICES_PER_PATCH, POLICY_DIGEST_CHUNK_RULES } from './limits.js';

/** A patched policy's base (weakly: a chain does not keep every version alive) and the splices that made it. */
export interface PatchLineage {
  readonly base: WeakRef<Policy>;
  readonly splices: readonly RuleSplice[];
}

/** By the policy applyPolicyPatch made (policies are never modified once made). */
const lineages = new WeakMap<Policy, PatchLineage>();

/**
 * The policy `policy` was patched from and the splices that made it, if applyPolicyPatch made it
 * (validatePolicy then checks what the splices changed); undefined otherwise, or once the base
 * was collected.
 */
export function patchLineageOf(policy: Policy): PatchLineage | undefined {
  return lineages.get(policy);
}

/** The one empty list the rules a chain holds share (frozen: a chain's rules are never modified). */
const NO_ITEMS: readonly never[] = Object.freeze([]);

/**
 * Makes every empty list field of `rules` (sources, destinations, ports, prefix lists) the one
 * shared frozen empty array. A decoded rule has five list fields, most of them empty: 65,536
 * rules held ~10 MiB of empty arrays. For rules a chain is about to hold (IntentChain calls it
 * on what it decodes), which nobody modifies afterwards; what is read from them is unchanged.
 */
export function shareEmptyLists(rules: readonly Rule[]): void {
  for (const r of rules) {
    if (r.sourceCidrs.length === 0) r.sourceCidrs = NO_ITEMS as never[];
    if (r.destinationCidrs.length === 0) r.destinationCidrs = NO_ITEMS as never[];
    if (r.destinationPorts.length === 0) r.destinationPorts = NO_ITEMS as never[];
    if (r.sourcePrefixLists.length === 0) r.sourcePrefixLists = NO_ITEMS as never[];
    if (r.destinationPrefixLists.length === 0) r.destinationPrefixLists = NO_ITEMS as never[];
  }
}

/** Chunk hashes of a policy's rules, by the policy object (policies in a chain are never modified). */
const digests = new WeakMap<Policy, { rules: readonly Rule[]; chunks: Uint8Array[]; digest: Uint8Array }>();

function ruleChunkHash(rules: readonly Rule[], from: number): Uint8Array {
  const hash = createHash('sha256');
  const length = new Uint8Array(4);
  const view = new DataView(length.buffer);
  for (let i = from; i < Math.min(rules.length, from + POLICY_DIGEST_CHUNK_RULES); i++) {
    // The reused writer (a new one per rule was a buffer and a view per rule of garbage:
    // 65,536 rules 91-213 -> 46-160 ms).
    const bytes = encodeBytes(Rule, rules[i]!);
    view.setUint32(0, bytes.length, true);
    hash.update(length);
    hash.update(bytes);
  }
  return new Uint8Array(hash.digest());
}

/**
 * The digest a policy patch carries of its result (PolicyPatch.result_digest): SHA-256 over the
 * policy without its rules (encoded) and the SHA-256 of each chunk of POLICY_DIGEST_CHUNK_RULES
 * rules (each rule length-prefixed and encoded). Chunks are remembered per policy object, and
 * when `previous` (a policy this one was patched from) holds the very same rule objects at the
 * same places, its chunk hashes are taken: a one-rule change rehashes one chunk, not 65,536 rules.
 * Policies given must not be modified afterwards. Pure but for that cache (weak: nothing is kept
 * alive for it).
 * @returns 32 bytes; the caller must not modify them.
 */
export function policyDigest(policy: Policy, previous?: Policy): Uint8Array {
  const have = digests.get(policy);
  const rules = policy.spec?.rules ?? [];
  if (have !== undefined && have.rules === rules) return have.digest;
  const before = previous === undefined ? undefined : digests.get(previous);
  const chunks: Uint8Array[] = [];
  for (let from = 0, c = 0; from < rules.length; from += POLICY_DIGEST_CHUNK_RULES, c++) {
    const old = before?.chunks[c];
    const end = Math.min(rules.length, from + POLICY_DIGEST_CHUNK_RULES);
    // The previous policy's chunk c stands for this one only if it covers the same rule objects.
    let same = old !== undefined && Math.min(before!.rules.length, from + POLICY_DIGEST_CHUNK_RULES) === end;
    for (let i = from; same && i < end; i++) same = before!.rules[i] === rules[i];
    chunks.push(same ? old! : ruleChunkHash(rules, from));
  }
  const hash = createHash('sha256');
  hash.update('edgeplane policy digest 1\n');
  hash.update(Policy.encode({ metadata: policy.metadata, spec: policy.spec ? { ...policy.spec, rules: [] } : undefined }).finish());
  hash.update(new Uint8Array(new Uint32Array([rules.length]).buffer));
  for (const chunk of chunks) hash.update(chunk);
  const digest = new Uint8Array(hash.digest());
  digests.set(policy, { rules, chunks, digest });
  return digest;
}

/**
 * Applies `patch` to `base`: the result has the patch's metadata, its spec but for the rules,
 * and the base's rules with the splices applied (the rule objects the base and the patch hold,
 * not copies: the base must not be modified afterwards). One pass over the base's rules.
 * @returns a new Policy the caller owns (its rules are shared, read-only).
 * @throws PatchError if base is not at patch.base_resource_version, a splice is out of range,
 * out of order or overlapping, there are more than MAX_SPLICES_PER_PATCH, or the result's
 * digest is not patch.result_digest.
 */
export function applyPolicyPatch(base: Policy | undefined, patch: PolicyPatch): Policy {
  const name = patch.metadata?.name ?? '';
  if (base === undefined) throw new PatchError(`patch policy ${JSON.stringify(name.slice(0, 64))}: no base held (it names version ${patch.baseResourceVersion})`);
  const version = base.metadata?.resourceVersion ?? 0n;
  if (version !== patch.baseResourceVersion) throw new PatchError(`patch policy ${name}: the base held is version ${version}, the patch applies to ${patch.baseResourceVersion}`);
  if (patch.splices.length > MAX_SPLICES_PER_PATCH) throw new PatchError(`patch policy ${name}: ${patch.splices.length} splices; at most ${MAX_SPLICES_PER_PATCH}`);
  const from = base.spec?.rules ?? [];
  // The runs of the base between splices are copied whole (slice and concat copy element
  // blocks; a push per rule of a 65,536-rule policy took several times as long).
  const parts: Rule[][] = [];
  let at = 0;
  for (const [i, s] of patch.splices.entries()) {
    if (s.start < at || s.start + s.deleteCount > from.length) throw new PatchError(`patch policy ${name}: splices[${i}] (start ${s.start}, delete ${s.deleteCount}) is out of order or beyond the base's ${from.length} rules`);
    parts.push(from.slice(at, s.start), s.rules);
    at = s.start + s.deleteCount;
  }
  parts.push(from.slice(at));
  const rules = ([] as Rule[]).concat(...parts);
  const result: Policy = { metadata: patch.metadata, spec: patch.spec ? { ...patch.spec, rules } : undefined };
  const digest = policyDigest(result, base);
  if (!equalBytes(digest, patch.resultDigest)) throw new PatchError(`patch policy ${name}: the result's digest does not match the patch's (the base held differs from the writer's)`);
  // validatePolicy of the result then checks what the splices changed, if the base was valid.
  lineages.set(result, { base: new WeakRef(base), splices: patch.splices });
  return result;
}

/**
 * Whether two rules encode to the same bytes: the same object; equal field by field (decoded
 * messages equal in every field encode alike); or, when the fields differ in shape only (a key
 * one holds as undefined and the other lacks), their encoded bytes are equal. The fields are
 * compared first because a whole-policy write compares up to 65,536 pairs, almost all equal,
 * and encoding both of each pair was most of that write's cost.
 */
export function sameRule(a: Rule, b: Rule): boolean {
  return a === b || sameValue(a, b) || equalBytes(Rule.encode(a).finish(), Rule.encode(b).finish());
}

/**
 * Deep equality of two decoded message values (plain objects, arrays, bytes, dates, primitives,
 * bigints): true only when they hold the same values under the same keys, so their encodings are
 * equal. Linear in the values; allocates nothing.
 */
function sameValue(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a)) {
    if (!Array.isArray(b) || a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (!sameValue(a[i], b[i])) return false;
    return true;
  }
  if (a instanceof Uint8Array) return b instanceof Uint8Array && equalBytes(a, b);
  if (a instanceof Date) return b instanceof Date && a.getTime() === b.getTime();
  if (Array.isArray(b) || b instanceof Uint8Array || b instanceof Date) return false;
  const x = a as Record<string, unknown>;
  const y = b as Record<string, unknown>;
  let keys = 0;
  for (const k in x) {
    if (!Object.hasOwn(x, k)) continue;
    if (!Object.hasOwn(y, k) || !sameValue(x[k], y[k])) return false;
    keys++;
  }
  for (const k in y) if (Object.hasOwn(y, k)) keys--;
  return keys === 0;
}

/** The rules `a` and `b` share at their start (`head`) and, after those, at their end (`tail`), compared by {@link sameRule}. */
function commonEnds(a: readonly Rule[], b: readonly Rule[]): { head: number; tail: number } {
  let head = 0;
  while (head < a.length && head < b.length && sameRule(a[head]!, b[head]!)) head++;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && sameRule(a[a.length - 1 - tail]!, b[b.length - 1 - tail]!)) tail++;
  return { head, tail };
}

/** `a` with the rules between its first `head` and last `tail` replaced by `changed`: what a follower builds from a patch. */
function spliced(a: readonly Rule[], head: number, tail: number, changed: Rule[]): Rule[] {
  return a.slice(0, head).concat(changed, a.slice(a.length - tail));
}

/**
 * `next` with the rules it shares with `base` at its start and end (by {@link sameRule}) taken as
 * `base`'s rule objects, and its other rules copied; its other fields are `next`'s (not copied).
 * A write of a whole policy that changes a few of its rules so holds its stored version's rule
 * objects: validatePolicy and the sizes remember them by object, and policyPatchOf and
 * policyDigest find them in place, so the write costs one comparison per rule and the rest in
 * proportion to what changed. `base` must not be modified afterwards (a chain's never is).
 */
export function withBaseRules(base: Policy | undefined, next: Policy): Policy {
  if (!next.spec) return next;
  const a = base?.spec?.rules ?? [];
  const b = next.spec.rules;
  const { head, tail } = commonEnds(a, b);
  const changed = b.slice(head, b.length - tail).map((rule) => Rule.fromPartial(rule));
  return { metadata: next.metadata, spec: { ...next.spec, rules: spliced(a, head, tail, changed) } };
}

/**
 * Whether two specs encode to the same bytes: the same rules by {@link sameRule}, in order, and
 * the same encoded fields but for the rules. What a write of an unchanged policy is told by.
 */
export function samePolicySpec(a: PolicySpec, b: PolicySpec): boolean {
  if (a.rules.length !== b.rules.length || commonEnds(a.rules, b.rules).head !== a.rules.length) return false;
  return equalBytes(PolicySpec.encode({ ...a, rules: [] }).finish(), PolicySpec.encode({ ...b, rules: [] }).finish());
}

/**
 * The patch that turns `base` into `next` (one splice: from the first to the last rule that
 * differs, compared by {@link sameRule}), or undefined when `next` has no spec or no base.
 * `next` must carry its final metadata (resource_version included): the digest covers it. The
 * digest is taken of the policy a follower builds from the patch (the base's rule objects outside
 * the splice), so the chunks the splice leaves in place keep the base's hashes: a one-rule change
 * hashes one chunk.
 * @returns a new PolicyPatch the caller owns; its rules are `next`'s rule objects.
 */
export function policyPatchOf(base: Policy, next: Policy): PolicyPatch | undefined {
  if (!next.spec || !base.spec || base.metadata === undefined) return undefined;
  const a = base.spec.rules;
  const b = next.spec.rules;
  const { head, tail } = commonEnds(a, b);
  const changed = b.slice(head, b.length - tail);
  const splices: RuleSplice[] = head === a.length && head === b.length ? [] : [{ start: head, deleteCount: a.length - head - tail, rules: changed }];
  const result: Policy = { metadata: next.metadata, spec: { ...next.spec, rules: spliced(a, head, tail, changed) } };
  return { metadata: next.metadata, spec: { ...next.spec, rules: [] }, baseResourceVersion: base.metadata.resourceVersion, splices, resultDigest: Buffer.from(policyDigest(result, base)) };
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
