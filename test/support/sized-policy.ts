// A valid policy whose encoding is exactly a given number of bytes (the size check's edge:
// MAX_POLICY_BYTES passes, one byte more is POLICY_TOO_LARGE). Sized with the real encoder.
import { Action, Policy, Protocol, Rule } from '@edgeplane/proto';

/** CIDRs in a full rule (under the default limit of 256 per list). */
const PER_RULE = 250;

function cidrs(rule: number, count: number): string[] {
  // Distinct and canonical within a rule: 10.<rule>.<j>.0/24.
  return Array.from({ length: count }, (_, j) => `10.${rule % 256}.${j}.0/24`);
}

function rule(i: number, count: number): Rule {
  return Rule.fromPartial({ priority: i + 1, name: `r-${i}`, sourceCidrs: cidrs(i, count), protocol: Protocol.PROTOCOL_TCP, action: Action.ACTION_DENY });
}

function varintSize(n: number): number {
  return n < 128 ? 1 : n < 16_384 ? 2 : n < 2_097_152 ? 3 : 4;
}

/** One rule's bytes inside PolicySpec: tag, length, rule. */
function ruleBytes(r: Rule): number {
  const n = Rule.encode(r).finish().length;
  return 1 + varintSize(n) + n;
}

/**
 * Returns a valid policy named `name` whose Policy.encode() is exactly `bytes` long (at least a
 * few KiB): rules of many CIDRs, then the description (128..1,024 characters, one byte each)
 * makes up the difference. @throws Error if it cannot hit the size (it always can above 4 KiB).
 */
export function policyOfSize(name: string, bytes: number): Policy {
  const rules: Rule[] = [];
  // Rules until within a few hundred bytes under the target (the framing is re-counted below).
  let estimate = 600;
  for (let i = 0; ; i++) {
    const full = rule(i, PER_RULE);
    const n = ruleBytes(full);
    if (estimate + n <= bytes - 400) {
      rules.push(full);
      estimate += n;
      continue;
    }
    let count = 0;
    while (count < PER_RULE && estimate + ruleBytes(rule(i, count + 1)) <= bytes - 400) count++;
    if (count > 0) rules.push(rule(i, count));
    break;
  }
  const make = (description: number): Policy =>
    Policy.fromPartial({ metadata: { name }, spec: { description: 'x'.repeat(description), defaultAction: Action.ACTION_ALLOW, rules } });
  const base = Policy.encode(make(500)).finish().length;
  const description = 500 + (bytes - base);
  if (description < 128 || description > 1024) throw new Error(`policyOfSize: ${bytes} bytes needs a description of ${description} characters`);
  const policy = make(description);
  const got = Policy.encode(policy).finish().length;
  if (got !== bytes) throw new Error(`policyOfSize: ${got} bytes, not ${bytes}`);
  return policy;
}
