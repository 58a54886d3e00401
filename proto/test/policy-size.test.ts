import test from 'ava';
import { Action, Policy, Protocol, encodedPolicySize, validatePolicy } from '../gen/index.js';

test('encodedPolicySize - equals the encoded length, for small and large policies, with and without metadata', (t) => {
  const rules = (n: number) => Array.from({ length: n }, (_, i) => ({ priority: i + 1, name: i % 3 ? '' : `r-${i}`, sourceCidrs: i % 2 ? [`10.0.${i >> 8 & 255}.${i & 255}/32`] : [], protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 1 + (i % 60000) }], action: Action.ACTION_DENY }));
  for (const n of [0, 1, 7, 300, 20_000]) {
    const p = Policy.fromPartial({ metadata: { name: 'p', labels: { a: 'b' }, resourceVersion: 12345678901n }, spec: { description: 'x'.repeat(n % 200), rules: rules(n) } });
    t.is(encodedPolicySize(p), Policy.encode(p).finish().length, `${n} rules`);
    t.is(encodedPolicySize(p), Policy.encode(p).finish().length, `${n} rules, sizes remembered`);
  }
  t.is(encodedPolicySize(Policy.fromPartial({})), Policy.encode(Policy.fromPartial({})).finish().length);
  t.is(encodedPolicySize(Policy.fromPartial({ spec: {} })), Policy.encode(Policy.fromPartial({ spec: {} })).finish().length);
});

test('validatePolicy - a rule checked before is remembered only when valid: an invalid one is reported every time', (t) => {
  const p = Policy.fromPartial({ metadata: { name: 'p' }, spec: { rules: [{ priority: 1, action: Action.ACTION_DENY }, { priority: 2, protocol: Protocol.PROTOCOL_ICMP, destinationPorts: [{ first: 80 }], action: Action.ACTION_DENY }] } });
  const first = validatePolicy(p).map((v) => v.field);
  t.deepEqual(first, ['policy.spec.rules[1].destination_ports']);
  t.deepEqual(validatePolicy(p).map((v) => v.field), first);
  // The same rule objects in another order: paths follow the new places.
  const swapped = Policy.fromPartial({ ...p, spec: { ...p.spec, rules: [] } });
  swapped.spec!.rules = [p.spec!.rules[1]!, p.spec!.rules[0]!];
  t.deepEqual(validatePolicy(swapped).map((v) => v.field), ['policy.spec.rules[0].destination_ports']);
});
