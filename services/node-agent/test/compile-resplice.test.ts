// compileIntent after a few rules of a policy were replaced in place (a policy patch): it reuses
// the last merged rule set and redoes only those rules, and the result must equal a full compile
// of the same policies, rule by rule, ids and origins included; changes it cannot splice
// (a priority or a name changed, a rule added, statefulness) compile in full, just as correct.
import test from 'ava';
import { Action, ConnectionTracking_EstablishedOnDeny, Policy, Protocol, type Rule } from '@edgeplane/proto';
import { compileIntent, type CompiledIntent } from '../src/agent/compile.js';

const LABELS = { role: 'edge' };

function rules(n: number, offset: number): Rule[] {
  return Array.from({ length: n }, (_, i) =>
    Policy.fromPartial({
      spec: { rules: [{ priority: offset + 2 * i, name: `r${i}`, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 1000 + i }], sourceCidrs: i % 3 === 0 ? [`10.${i & 255}.0.0/16`] : [], action: i % 5 === 0 ? Action.ACTION_ALLOW : Action.ACTION_DENY }] },
    }).spec!.rules[0]!,
  );
}

function policy(name: string, list: Rule[], stateful = false): Policy {
  const p = Policy.fromPartial({
    metadata: { name },
    spec: { nodeSelector: { matchLabels: LABELS }, defaultAction: Action.ACTION_ALLOW, ...(stateful ? { connectionTracking: { stateful: true, establishedOnDeny: ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_CUT } } : {}) },
  });
  p.spec!.rules = list;
  return p;
}

/** A full compile of the same policies: fresh objects throughout, after a compile of nothing (no reuse possible). */
function fullCompile(policies: Policy[]): CompiledIntent {
  compileIntent([], LABELS);
  return compileIntent(policies.map((p) => Policy.decode(Policy.encode(p).finish())), LABELS);
}

const plain = (c: CompiledIntent): unknown => ({ rules: c.uplink.ruleSet, origins: [...c.uplink.origins].sort((a, b) => a[0] - b[0]) });

test('compile resplice - replaced rules (same priority and name) reuse the last merge and equal a full compile', (t) => {
  const a = rules(200, 1);
  const b = rules(100, 2); // interleaved priorities: the merge alternates the two policies
  const first = compileIntent([policy('a', a), policy('b', b)], LABELS);
  const a2 = [...a];
  a2[7] = { ...a[7]!, destinationPorts: [{ first: 9999, last: 0 }], sourceCidrs: ['192.0.2.0/24'] };
  a2[150] = { ...a[150]!, action: Action.ACTION_ALLOW };
  const b2 = [...b];
  b2[99] = { ...b[99]!, protocol: Protocol.PROTOCOL_UDP };
  const policies = [policy('a', a2), policy('b', b2)];
  const next = compileIntent(policies, LABELS);
  // Unchanged rules keep their spec objects (the table compiler's change detection relies on it).
  const changed = next.uplink.ruleSet.rules.filter((spec, i) => spec !== first.uplink.ruleSet.rules[i]);
  t.is(changed.length, 3);
  t.is(next.uplink.origins, first.uplink.origins, 'same ids and names: the origins are shared');
  t.deepEqual(plain(next), plain(fullCompile(policies)));
});

test('compile resplice - changes it cannot splice compile in full, equal to a full compile', (t) => {
  const base = rules(50, 1);
  const cases: [string, (list: Rule[]) => Policy][] = [
    ['priority moved', (list) => policy('a', list.map((r, i) => (i === 10 ? { ...r, priority: 1000 } : r)))],
    ['renamed', (list) => policy('a', list.map((r, i) => (i === 10 ? { ...r, name: 'other' } : r)))],
    ['rule added', (list) => policy('a', [...list, { ...list[0]!, priority: 5000, name: 'added' }])],
    ['rule removed', (list) => policy('a', list.slice(1))],
    ['stateful', (list) => policy('a', list, true)],
  ];
  for (const [name, make] of cases) {
    compileIntent([policy('a', base)], LABELS);
    const changedPolicy = make(base);
    t.deepEqual(plain(compileIntent([changedPolicy], LABELS)), plain(fullCompile([changedPolicy])), name);
  }
});
