// validatePolicy of a policy applyPolicyPatch made checks only what the patch changed when its
// base was valid (policy-validation.ts, validByPatch): it must agree with a whole check of the
// same policy, valid or not.
import test from 'ava';
import { prng, seedFromEnv } from '../../test/support/prng.js';
import { Action, Policy, PolicyPatch, Protocol, applyPolicyPatch, policyDigest, validatePolicy, type Rule, type RuleSplice } from '@edgeplane/proto';

const ruleAt = (priority: number, k: number, extra: Partial<Rule> = {}): Rule =>
  Policy.fromPartial({ spec: { rules: [{ priority, protocol: Protocol.PROTOCOL_TCP, sourceCidrs: [`10.${(k >> 8) & 255}.${k & 255}.0/24`], destinationPorts: [{ first: 1 + (k % 60000), last: 0 }], action: Action.ACTION_DENY, ...extra }] } }).spec!.rules[0]!;

function basePolicy(n: number): Policy {
  return Policy.fromPartial({ metadata: { name: 'p', resourceVersion: 1n }, spec: { rules: Array.from({ length: n }, (_, i) => ruleAt(10 * (i + 1), i)) } });
}

/** The patch from `base` to a policy of `rules` made by `splices` (its digest computed as a writer does). */
function patchOf(base: Policy, splices: RuleSplice[], head: Partial<Policy['spec']> = {}, resourceVersion = 2n): PolicyPatch {
  const from = base.spec!.rules;
  const rules: Rule[] = [];
  let at = 0;
  for (const s of splices) {
    rules.push(...from.slice(at, s.start), ...s.rules);
    at = s.start + s.deleteCount;
  }
  rules.push(...from.slice(at));
  const metadata = { ...base.metadata!, resourceVersion };
  const next: Policy = { metadata, spec: { ...base.spec!, ...head, rules } };
  return PolicyPatch.fromPartial({ metadata, spec: { ...base.spec!, ...head, rules: [] }, baseResourceVersion: base.metadata!.resourceVersion, splices, resultDigest: Buffer.from(policyDigest(next)) });
}

/** The same policy as new objects: no lineage and no cached checks. */
const copy = (p: Policy): Policy => Policy.decode(Policy.encode(p).finish());

test('patch validation - a patched policy validates as the same policy checked whole, valid or not (random patches)', (t) => {
  const seed = seedFromEnv();
  t.log(`seed ${seed} (EDGEPLANE_SEED=${seed} to reproduce)`);
  const rng = prng(seed);
  const pick = (n: number): number => Math.floor(rng() * n);
  let valid = 0;
  let invalid = 0;
  for (let c = 0; c < 400; c++) {
    let base = basePolicy(1 + pick(60));
    t.deepEqual(validatePolicy(base), [], 'the base is valid');
    // A chain of patches: each result is the next base.
    for (let step = 0; step < 3; step++) {
      const n = base.spec!.rules.length;
      const splices: RuleSplice[] = [];
      let at = 0;
      for (let k = 0; k < 1 + pick(3) && at <= n; k++) {
        const start = at + pick(Math.max(1, Math.min(5, n - at + 1)));
        if (start > n) break;
        const deleteCount = pick(Math.min(3, n - start) + 1);
        const lo = start === 0 ? 0 : base.spec!.rules[start - 1]!.priority;
        const hi = start + deleteCount < n ? base.spec!.rules[start + deleteCount]!.priority : lo + 1000;
        const rules: Rule[] = [];
        for (let r = 0, p = lo; r < pick(3); r++) {
          const kind = rng();
          // Mostly fitting priorities; sometimes a duplicate of a neighbour, out of order, or a bad
          // rule; a rule naming 9 prefix lists (two in one policy name more than a node holds).
          p = kind < 0.1 ? lo : kind < 0.15 ? hi : kind < 0.2 ? Math.max(0, p - 1) : p + 1 + pick(Math.max(1, Math.floor((hi - p) / 3)));
          const bad = rng();
          rules.push(
            ruleAt(p, 1000 + c * 10 + r, bad < 0.05 ? { sourceCidrs: ['10.0.0.1/8'] } : bad < 0.2 ? { sourcePrefixLists: Array.from({ length: 9 }, (_, j) => `list-${c}-${step}-${r}-${j}`) } : bad < 0.23 ? { protocol: Protocol.PROTOCOL_ICMP } : {}),
          );
        }
        splices.push({ start, deleteCount, rules });
        at = start + deleteCount;
      }
      const head = rng() < 0.05 ? { description: 'x'.repeat(2000) } : rng() < 0.05 ? { connectionTracking: { stateful: false, establishedOnDeny: 2 } } : {};
      const result = applyPolicyPatch(base, patchOf(base, splices, head, base.metadata!.resourceVersion + 1n));
      const got = validatePolicy(result);
      t.deepEqual(got, validatePolicy(copy(result)), `seed ${seed} case ${c} step ${step}: ${JSON.stringify(splices.map((s) => [s.start, s.deleteCount, s.rules.map((r) => r.priority)]))}`);
      if (got.length > 0) {
        invalid++;
        break;
      }
      valid++;
      base = result;
    }
  }
  t.log(`${valid} valid and ${invalid} invalid patched policies`);
  t.true(valid > 100 && invalid > 50, 'both kinds were generated');
});

test('patch validation - a patched policy is checked by what the patch changed: a rule it did not touch is not read again', (t) => {
  const base = basePolicy(1000);
  t.deepEqual(validatePolicy(base), []);
  const result = applyPolicyPatch(base, patchOf(base, [{ start: 999, deleteCount: 1, rules: [ruleAt(20_000, 5)] }]));
  // Behind the checks' back (rules must not change once in a policy): rule 500 takes rule 499's
  // priority. A whole check sees it; the check of the patch does not read rule 500.
  (result.spec!.rules[500] as { priority: number }).priority = result.spec!.rules[499]!.priority;
  t.deepEqual(validatePolicy(result), [], 'checked from the base and the splice');
  t.is(validatePolicy(copy(result))[0]?.reason, 'DUPLICATE_PRIORITY', 'checked whole');
});

test('patch validation - without a valid base, or with a base out of priority order, the whole policy is checked', (t) => {
  const unordered = Policy.fromPartial({ metadata: { name: 'p', resourceVersion: 1n }, spec: { rules: [ruleAt(30, 1), ruleAt(10, 2), ruleAt(20, 3)] } });
  t.deepEqual(validatePolicy(unordered), []);
  const result = applyPolicyPatch(unordered, patchOf(unordered, [{ start: 3, deleteCount: 0, rules: [ruleAt(10, 4)] }]));
  t.is(validatePolicy(result)[0]?.reason, 'DUPLICATE_PRIORITY', 'a duplicate far from the splice is found');
  // A base never validated (and not valid: two rules share a priority far from the splice).
  const never = Policy.fromPartial({ metadata: { name: 'p', resourceVersion: 1n }, spec: { rules: [ruleAt(10, 1), ruleAt(10, 2), ruleAt(20, 3)] } });
  const unchecked = applyPolicyPatch(never, patchOf(never, [{ start: 3, deleteCount: 0, rules: [ruleAt(30, 9)] }]));
  t.is(validatePolicy(unchecked)[0]?.reason, 'DUPLICATE_PRIORITY', 'a base never validated gives no shortcut');
});

test('policyDigest - the digest agents check is pinned (its bytes are a protocol), and a rule the encoder refuses spoils no later digest', (t) => {
  const pinned = (): Policy =>
    Policy.fromPartial({
      metadata: { name: 'pinned', resourceVersion: 3n },
      spec: {
        defaultAction: Action.ACTION_ALLOW,
        rules: [
          { priority: 10, name: 'ssh', sourceCidrs: ['10.0.0.0/8'], protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 22, last: 0 }], action: Action.ACTION_ALLOW },
          { priority: 20, destinationCidrs: ['2001:db8::/32'], protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: 53, last: 54 }], action: Action.ACTION_DENY },
        ],
      },
    });
  // Taken from the implementation before the digest's encoder was shared: any change here breaks agents of other versions.
  const expected = '1c6d74b9a78a61dd9689d690216a73ef4a7a50eccd87972acff943bb57763b0d';
  t.is(Buffer.from(policyDigest(pinned())).toString('hex'), expected);
  const refused = pinned();
  refused.spec!.rules.splice(1, 0, ruleAt(15, 1, { priority: -1 }));
  t.throws(() => policyDigest(refused));
  t.is(Buffer.from(policyDigest(pinned())).toString('hex'), expected, 'the same digest right after the refusal');
});
