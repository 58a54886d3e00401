// The conntrack settings of a rule set, compiled (no kernel): the track bit in ep_rule.action,
// the generation flags, the fingerprint covering both, and validation.
import test from 'ava';
import { compileTables, genFlags, RULE_FLAG_TRACK, sizes } from '../src/datapath/compile-tables.js';
import type { RuleSetSpec } from '../src/datapath/rule-set.js';

const base: RuleSetSpec = {
  rules: [
    { id: 1, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: 22, to: 22 }], action: 'allow', track: true },
    { id: 2, srcCidrs: [], dstCidrs: [], protocol: 'udp', dstPorts: [], action: 'allow' },
  ],
  defaultAction: 'allow',
};
const actionWord = (rules: Uint8Array, slot: number): number => new DataView(rules.buffer, rules.byteOffset).getUint32(slot * sizes.rule, true);

test('compile - track sets EP_RULE_F_TRACK above the action code, for rules and the default action', (t) => {
  const plain = compileTables(base);
  t.is(actionWord(plain.rules, 0), 0, 'default allow, not tracked');
  t.is(actionWord(plain.rules, 1), RULE_FLAG_TRACK | 0);
  t.is(actionWord(plain.rules, 2), 0);
  t.is(plain.genFlags, genFlags.small | genFlags.scan);
  const tracked = compileTables({ ...base, trackDefault: true, trackEgress: true, cutOnDeny: true });
  t.is(actionWord(tracked.rules, 0), RULE_FLAG_TRACK);
  t.is(tracked.genFlags, genFlags.trackEgress | genFlags.cut | genFlags.small | genFlags.scan);
});

test('compile - the fingerprint covers every conntrack setting', (t) => {
  const fingerprints = [
    base,
    { ...base, trackDefault: true },
    { ...base, trackEgress: true },
    { ...base, cutOnDeny: true },
    { ...base, rules: base.rules.map((rule) => ({ ...rule, track: false })) },
  ].map((set) => Buffer.from(compileTables(set).fingerprint).toString('hex'));
  t.is(new Set(fingerprints).size, fingerprints.length);
  t.is(Buffer.from(compileTables({ ...base, trackEgress: false }).fingerprint).toString('hex'), fingerprints[0] as string, 'false is the default');
});

test('validate - conntrack flags must be booleans; the egress rule id is reserved', (t) => {
  t.throws(() => compileTables({ ...base, trackEgress: 'yes' as unknown as boolean }), { name: 'RuleSetError', message: /^trackEgress:/ });
  t.throws(() => compileTables({ ...base, rules: [{ ...base.rules[0]!, track: 1 as unknown as boolean }] }), { name: 'RuleSetError', message: /^rules\[0\]\.track:/ });
  t.throws(() => compileTables({ ...base, rules: [{ ...base.rules[0]!, id: 0xffff_fffe }] }), { name: 'RuleSetError', message: /^rules\[0\]\.id:/ });
});
