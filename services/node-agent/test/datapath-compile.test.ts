// Pure tests (no kernel): CIDR parsing, validation, the table compiler (through a TypeScript
// model of the BPF lookup) and the reference classifier's parsing and matching.
import test from 'ava';
import { cidrContains, parseAddress, parseCidr } from '@edgeplane/proto';
import { compileTables, genFlags, MAX_CLASS_WORDS, rangeToPrefixes } from '../src/datapath/compile-tables.js';
import { CapacityError, RuleSetError } from '../src/datapath/errors.js';
import { buildFrame, buildNonIpFrame } from '../src/datapath/packet.js';
import { firstMatch, parseFrame, ReferenceClassifier } from '../src/datapath/reference-classifier.js';
import { validateRuleSet, type PacketHeaders, type RuleSetSpec, type RuleSpec } from '../src/datapath/rule-set.js';
import { prng, randomFrame, randomRuleSet, seedFromEnv, tableLookup } from './datapath-helpers.js';

const rule = (over: Partial<RuleSpec>): RuleSpec => ({ id: 1, srcCidrs: [], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'deny', ...over });
const headersOf = (frame: Uint8Array): PacketHeaders => {
  const parsed = parseFrame(frame);
  if (parsed.kind !== 'ip') throw new Error(`not ip: ${parsed.kind}`);
  return parsed.headers;
};

test('cidr - parses v4, v6, compressed, embedded v4, and clears host bits', (t) => {
  t.deepEqual(parseAddress('192.168.1.2'), new Uint8Array([192, 168, 1, 2]));
  t.deepEqual(Array.from(parseAddress('::ffff:1.2.3.4') ?? []).slice(10), [0xff, 0xff, 1, 2, 3, 4]);
  t.deepEqual(Array.from(parseAddress('2001:db8::1') ?? []), [0x20, 0x01, 0x0d, 0xb8, ...Array(11).fill(0), 1]);
  t.deepEqual(parseCidr('10.1.2.3/8')?.address, new Uint8Array([10, 0, 0, 0]));
  t.is(parseCidr('10.1.2.3')?.prefixLength, 32);
  t.is(parseCidr('::/0')?.prefixLength, 0);
  for (const bad of ['10.0.0.0/33', '10.0.0', '1.2.3.256', '01.2.3.4', '2001:db8::1::2', '2001:db8:1:2:3:4:5:6:7', 'fe80::/129', 'x']) t.is(parseCidr(bad), undefined, bad);
  const net = parseCidr('10.1.2.0/23');
  t.true(net !== undefined && cidrContains(net, new Uint8Array([10, 1, 3, 255])));
  t.false(net !== undefined && cidrContains(net, new Uint8Array([10, 1, 4, 0])));
  t.false(net !== undefined && cidrContains(net, new Uint8Array(16)), 'other family');
});

test('validate - rejects bad fields with their path, and more than 65,536 rules', (t) => {
  const bad: [Partial<RuleSpec>, string][] = [
    [{ srcCidrs: ['10.0.0.0/40'] }, 'rules[0].srcCidrs[0]'],
    [{ protocol: 'icmp', dstPorts: [{ from: 1, to: 2 }] }, 'rules[0].dstPorts'],
    [{ protocol: 'tcp', dstPorts: [{ from: 9, to: 2 }] }, 'rules[0].dstPorts[0]'],
    [{ action: 'rate_limit' }, 'rules[0].rateLimit'],
    [{ id: 0xffffffff }, 'rules[0].id'],
  ];
  for (const [over, field] of bad) t.is(t.throws(() => validateRuleSet({ rules: [rule(over)], defaultAction: 'deny' }), { instanceOf: RuleSetError })?.field, field);
  t.throws(() => validateRuleSet({ rules: [rule({}), rule({})], defaultAction: 'deny' }), { instanceOf: RuleSetError, message: /duplicate/ });
  const many = Array.from({ length: 65_537 }, (_, i) => rule({ id: i }));
  t.throws(() => compileTables({ rules: many, defaultAction: 'deny' }), { instanceOf: CapacityError });
});

test('compile - port ranges become minimal prefixes', (t) => {
  t.deepEqual(rangeToPrefixes(0, 65535, 16), [[0, 0]]);
  t.deepEqual(rangeToPrefixes(80, 80, 16), [[80, 16]]);
  t.deepEqual(rangeToPrefixes(1024, 2047, 16), [[1024, 6]]);
  const prefixes = rangeToPrefixes(1, 65534, 16);
  t.is(prefixes.length, 30);
  const covered = new Set<number>();
  for (const [value, length] of prefixes) for (let p = value; p < value + 2 ** (16 - length); p++) covered.add(p);
  t.is(covered.size, 65534);
  t.false(covered.has(0) || covered.has(65535));
});

test('compile - nested prefixes: the longest match stands for every containing prefix', (t) => {
  const ruleSet: RuleSetSpec = {
    rules: [
      rule({ id: 1, srcCidrs: ['10.1.2.3/32'], protocol: 'udp' }),
      rule({ id: 2, srcCidrs: ['10.1.0.0/16'], dstCidrs: ['2001:db8::/32'] }),
      rule({ id: 3, srcCidrs: ['10.0.0.0/8', '2001:db8::/48'] }),
      rule({ id: 4, srcCidrs: ['0.0.0.0/0'], protocol: 'tcp', dstPorts: [{ from: 443, to: 443 }] }),
    ],
    defaultAction: 'allow',
  };
  const tables = compileTables(ruleSet);
  const look = (src: string, dst: string, protocol: 'tcp' | 'udp' | 'icmp', dstPort = 1): number => tableLookup(tables, headersOf(buildFrame({ src, dst, protocol, dstPort })));
  t.is(look('10.1.2.3', '10.9.9.9', 'udp'), 0);
  t.is(look('10.1.2.3', '10.9.9.9', 'tcp'), 2, 'rule 1 needs a v6 destination');
  t.is(look('10.1.2.4', '10.9.9.9', 'tcp', 443), 2);
  t.is(look('11.0.0.1', '10.9.9.9', 'tcp', 443), 3);
  t.is(look('11.0.0.1', '10.9.9.9', 'tcp', 444), -1);
  t.is(look('2001:db8:0:1::1', '2001:db8::1', 'icmp'), 2);
  t.is(look('2001:db8:1::1', '2001:db8::1', 'icmp'), -1, 'outside the /48');
  t.is(tables.ruleCount, 4);
  t.deepEqual(tables.ruleIds, [1, 2, 3, 4]);
  t.deepEqual(compileTables(ruleSet).fingerprint, tables.fingerprint, 'deterministic');
  t.notDeepEqual(compileTables({ ...ruleSet, defaultAction: 'deny' }).fingerprint, tables.fingerprint);
});

test('compile - the table model agrees with the oracle on random rule sets', (t) => {
  const seed = seedFromEnv();
  t.log(`seed ${seed}`);
  const rng = prng(seed);
  for (let round = 0; round < 6; round++) {
    const ruleSet = randomRuleSet(rng, [5, 30, 120][round % 3] as number, { narrow: round >= 3 });
    const tables = compileTables(ruleSet);
    const normalized = validateRuleSet(ruleSet);
    for (let i = 0; i < 300; i++) {
      const parsed = parseFrame(randomFrame(rng, ruleSet));
      if (parsed.kind !== 'ip') continue;
      const expected = firstMatch(normalized, parsed.headers)?.index ?? -1;
      if (tableLookup(tables, parsed.headers) !== expected) {
        t.fail(`seed ${seed} round ${round}: ${JSON.stringify(parsed.headers)} expected rule ${expected}`);
        return;
      }
    }
  }
  t.pass();
});

test('compile - a rule set is small (classified by the low bits) with at most 32 rules and no prefix list', (t) => {
  const rules = (n: number): RuleSpec[] => Array.from({ length: n }, (_, i) => rule({ id: i + 1, protocol: 'tcp', dstPorts: [{ from: 1000 + i, to: 1000 + i }], srcCidrs: i % 2 === 0 ? ['10.0.0.0/8'] : [] }));
  const small = (spec: RuleSetSpec): boolean => (compileTables(spec).genFlags & genFlags.small) !== 0;
  t.true(small({ rules: [], defaultAction: 'deny' }));
  t.true(small({ rules: rules(32), defaultAction: 'deny' }));
  t.false(small({ rules: rules(33), defaultAction: 'deny' }));
  t.false(small({ rules: [...rules(3), rule({ id: 99, srcLists: ['blocked'] })], defaultAction: 'deny', lists: { blocked: ['192.0.2.0/24'] } }), 'a rule names a list');
  // The low bits: rule i of the class at bit i, for rules 0..31 only.
  const lowOf10 = (spec: RuleSetSpec): number[] => {
    const tables = compileTables(spec);
    const values = new DataView(tables.lpm.values.buffer, tables.lpm.values.byteOffset);
    const keys = new DataView(tables.lpm.keys.buffer, tables.lpm.keys.byteOffset);
    const lows: number[] = [];
    for (let i = 0; i < tables.lpm.count; i++) if (keys.getUint8(i * 24 + 4) === 0x04 && keys.getUint32(i * 24, true) === 16) lows.push(values.getUint32(i * 136 + 4, true));
    return lows;
  };
  t.deepEqual(lowOf10({ rules: rules(33), defaultAction: 'deny' }), [0x5555_5555], 'src 10.0.0.0/8: rules 0, 2, .., 30 (32 is past the low bits)');
  const every = Array.from({ length: 33 }, (_, i) => rule({ id: i + 1, srcCidrs: ['10.0.0.0/8'] }));
  t.deepEqual(lowOf10({ rules: every, defaultAction: 'deny' }), [0xffff_ffff], 'every rule names 10.0.0.0/8: bits 0..31');
});

test('compile - a small rule set is scanned when each IPv4 and port field has at most 64 entries, longest prefix first', (t) => {
  const scanned = (spec: RuleSetSpec): boolean => {
    const tables = compileTables(spec);
    t.is(tables.scan !== undefined, (tables.genFlags & genFlags.scan) !== 0, 'the flag goes with the table');
    return tables.scan !== undefined;
  };
  const ports = (n: number): RuleSpec[] => Array.from({ length: n }, (_, i) => rule({ id: i + 1, protocol: 'tcp', dstPorts: [{ from: 1000 + 2 * i, to: 1000 + 2 * i }, { from: 3000 + 2 * i, to: 3000 + 2 * i }] }));
  // Port entries: each slot's tag-only one (5) and one per port.
  t.true(scanned({ rules: [...ports(29), rule({ id: 99, protocol: 'udp', dstPorts: [{ from: 53, to: 53 }] })], defaultAction: 'deny' }), '5 + 59 port entries');
  t.false(scanned({ rules: ports(30), defaultAction: 'deny' }), '5 + 60 port entries');
  const sources = (n: number, family: 4 | 6): RuleSpec[] => Array.from({ length: n }, (_, i) => rule({ id: i + 1, srcCidrs: [0, 1].map((k) => (family === 4 ? `10.0.${i}.${k}/32` : `2001:db8::${i}:${k}/128`)) }));
  t.true(scanned({ rules: sources(31, 4), defaultAction: 'deny' }), '1 + 62 source entries');
  t.false(scanned({ rules: [...sources(31, 4), rule({ id: 99, srcCidrs: ['10.1.0.0/16', '10.2.0.0/16'] })], defaultAction: 'deny' }), '1 + 64 source entries');
  t.true(scanned({ rules: sources(32, 6), defaultAction: 'deny' }), 'IPv6 prefixes are not scanned: they take no room');
  t.false(scanned({ rules: ports(33).map((r) => ({ ...r, dstPorts: r.dstPorts.slice(0, 1) })), defaultAction: 'deny' }), 'not small');

  // The entries: the destination field of two nested prefixes and a wildcard rule.
  const tables = compileTables({ rules: [rule({ id: 1, dstCidrs: ['10.0.0.0/8'] }), rule({ id: 2, dstCidrs: ['10.1.0.0/16'] }), rule({ id: 3 })], defaultAction: 'deny' });
  const view = new DataView((tables.scan as Uint8Array).buffer);
  const field = (f: number): [number, number, number][] =>
    Array.from({ length: view.getUint32(4 * f, true) }, (_, i) => [0, 4, 8].map((o) => view.getUint32(16 + (f * 64 + i) * 12 + o, true)) as [number, number, number]);
  t.deepEqual(field(1), [
    [0x0a01_0000, 0xffff_0000, 0b111],
    [0x0a00_0000, 0xff00_0000, 0b101],
    [0, 0, 0b100],
  ], 'longest first; the class bits with the wildcard rule 2');
  t.deepEqual(field(0), [[0, 0, 0b111]], 'no source prefix: every rule is a wildcard there');
  t.deepEqual(field(2).map(([value, mask]) => [value >>> 24, mask]), [0, 1, 2, 3, 4].map((slot) => [slot, 0xff00_0000]), 'one tag-only entry per protocol slot');
});

test('compile - class words beyond the limit raise CapacityError', (t) => {
  // Every rule's port range contains the next one's: each elementary interval's class holds
  // all rules before it, so class words grow quadratically.
  const rules = Array.from({ length: 65_536 }, (_, i) => rule({ id: i, protocol: 'tcp', dstPorts: [{ from: i, to: 65535 }] }));
  const error = t.throws(() => compileTables({ rules, defaultAction: 'deny' }), { instanceOf: CapacityError });
  t.true(error?.limit === 'class-members' || error?.max === MAX_CLASS_WORDS);
  // Fewer such rules fit: 2,000 nested ranges need about 31,000 class words.
  t.notThrows(() => compileTables({ rules: rules.slice(0, 2000), defaultAction: 'deny' }));
});

test('oracle - parses VLANs, IPv4 fragments and options, IPv6 extension headers', (t) => {
  const base = { src: '10.0.0.1', dst: '10.0.0.2', protocol: 'tcp' as const, dstPort: 22 };
  t.is(headersOf(buildFrame({ ...base, vlans: [5] })).dstPort, 22);
  t.is(headersOf(buildFrame({ ...base, vlans: [5, 6] })).dstPort, 22);
  t.is(parseFrame(buildFrame({ ...base, vlans: [5, 6, 7] })).kind, 'non-ip', 'a third tag is not parsed');
  t.is(headersOf(buildFrame({ ...base, fragment: { offset: 0, more: true } })).dstPort, 22);
  t.is(headersOf(buildFrame({ ...base, fragment: { offset: 3 } })).dstPort, null);
  t.is(headersOf(buildFrame({ ...base, ipv4OptionBytes: 40 })).dstPort, 22);
  const v6 = { src: '2001:db8::1', dst: '2001:db8::2', protocol: 'udp' as const, dstPort: 53 };
  const ext = headersOf(buildFrame({ ...v6, extensionHeaders: [{ type: 'hop-by-hop' }, { type: 'routing', length: 2 }, { type: 'ah', length: 4 }, { type: 'destination' }] }));
  t.deepEqual([ext.protocol, ext.dstPort], [17, 53]);
  const later = headersOf(buildFrame({ ...v6, extensionHeaders: [{ type: 'fragment', offset: 10, more: true }] }));
  t.deepEqual([later.protocol, later.dstPort], [17, null]);
  t.is(headersOf(buildFrame({ ...v6, extensionHeaders: [{ type: 'fragment', offset: 0, more: true }] })).dstPort, 53);
  const tooMany = Array.from({ length: 9 }, () => ({ type: 'destination' as const }));
  t.is(parseFrame(buildFrame({ ...v6, extensionHeaders: tooMany })).kind, 'malformed');
  t.is(parseFrame(buildFrame(v6).slice(0, 14 + 40 + 2)).kind, 'malformed', 'truncated L4');
  t.is(parseFrame(buildFrame(base).slice(0, 30)).kind, 'malformed', 'truncated IPv4');
  t.is(parseFrame(buildNonIpFrame()).kind, 'non-ip');
  t.is(headersOf(buildFrame({ ...v6, protocol: 'icmp' })).protocol, 58);
});

test('oracle - first match wins, ports need a port, fragments match only port-less rules', (t) => {
  const ruleSet: RuleSetSpec = {
    rules: [
      rule({ id: 1, protocol: 'tcp', dstPorts: [{ from: 22, to: 22 }], action: 'allow' }),
      rule({ id: 2, srcCidrs: ['10.0.0.0/8'], action: 'deny' }),
      rule({ id: 3, protocol: 'tcp', action: 'allow' }),
    ],
    defaultAction: 'allow',
  };
  const oracle = new ReferenceClassifier(ruleSet);
  const kind = (frame: Uint8Array): string => {
    const c = oracle.classify(frame);
    return c.kind === 'rule' ? `${c.ruleId}:${c.verdict}` : `${c.kind}:${c.verdict}`;
  };
  t.is(kind(buildFrame({ src: '10.0.0.1', dst: '1.1.1.1', protocol: 'tcp', dstPort: 22 })), '1:pass');
  t.is(kind(buildFrame({ src: '10.0.0.1', dst: '1.1.1.1', protocol: 'tcp', dstPort: 22, fragment: { offset: 8 } })), '2:drop');
  t.is(kind(buildFrame({ src: '11.0.0.1', dst: '1.1.1.1', protocol: 'tcp', dstPort: 22, fragment: { offset: 8 } })), '3:pass');
  t.is(kind(buildFrame({ src: '2001:db8::1', dst: '2001:db8::2', protocol: 'udp' })), 'default:pass');
  t.is(kind(buildNonIpFrame()), 'non-ip:pass');
  t.is(oracle.counters().get(2)?.packets, 1);
});

test('oracle - token bucket refills at pps up to the burst, per source', (t) => {
  let now = 0n;
  const oracle = new ReferenceClassifier(
    { rules: [rule({ id: 9, action: 'rate_limit', rateLimit: { pps: 2, burst: 3 } })], defaultAction: 'deny' },
    { now: () => now },
  );
  const from = (src: string): string => oracle.classify(buildFrame({ src, dst: '10.0.0.9', protocol: 'udp' })).verdict;
  t.deepEqual([1, 2, 3, 4].map(() => from('10.0.0.1')), ['pass', 'pass', 'pass', 'drop']);
  t.is(from('10.0.0.2'), 'pass');
  now = 500_000_000n; // half a second at 2 pps: one token
  t.deepEqual([from('10.0.0.1'), from('10.0.0.1')], ['pass', 'drop']);
  now = 100_000_000_000n; // long idle: a full burst, not more
  t.deepEqual([1, 2, 3, 4].map(() => from('10.0.0.1')), ['pass', 'pass', 'pass', 'drop']);
  t.is(oracle.stats().rateLimited.packets, 3);
});
