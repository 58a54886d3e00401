import test from 'ava';
import {
  Action,
  DEFAULT_POLICY_LIMITS,
  InterfaceRole,
  LabelSelectorRequirement_Operator as Op,
  LabelSelectorSyntaxError,
  Policy,
  Protocol,
  formatCidr,
  formatLabelSelector,
  isCidrProblem,
  matchesLabelSelector,
  parseCanonicalCidr,
  parseLabelSelector,
  validateLabelSelector,
  validatePolicy,
  type DeepPartial,
  type LabelSelector,
  type Rule,
} from '@edgeplane/proto';

test('cidr - canonical IPv4 and IPv6 CIDRs parse to network bytes', (t) => {
  const v4 = parseCanonicalCidr('10.1.0.0/16');
  t.false(isCidrProblem(v4));
  if (!isCidrProblem(v4)) {
    t.is(v4.family, 4);
    t.deepEqual([...v4.address], [10, 1, 0, 0]);
    t.is(v4.prefixLength, 16);
  }
  const v6 = parseCanonicalCidr('2001:db8::/32');
  if (isCidrProblem(v6)) return t.fail(v6.description);
  t.is(v6.family, 6);
  t.deepEqual([...v6.address.subarray(0, 4)], [0x20, 0x01, 0x0d, 0xb8]);
  t.is(formatCidr(v6), '2001:db8::/32');
  for (const ok of ['0.0.0.0/0', '::/0', '255.255.255.255/32', '::ffff:102:304/128', 'fe80::/10', '2001:db8:0:1::/64']) {
    t.false(isCidrProblem(parseCanonicalCidr(ok)), ok);
  }
});

test('cidr - malformed and non-canonical spellings are refused with the canonical form', (t) => {
  const cases: [string, 'MALFORMED_CIDR' | 'NON_CANONICAL_CIDR', RegExp?][] = [
    ['10.0.0.1/8', 'NON_CANONICAL_CIDR', /host bits set; write 10\.0\.0\.0\/8/],
    ['2001:DB8::/32', 'NON_CANONICAL_CIDR', /write 2001:db8::\/32/],
    ['2001:db8:0:0:0:0:0:0/32', 'NON_CANONICAL_CIDR', /write 2001:db8::\/32/],
    ['10.0.0.1', 'MALFORMED_CIDR', /10\.0\.0\.1\/32/],
    ['10.0.0.0/33', 'MALFORMED_CIDR'],
    ['10.0.0.0/08', 'MALFORMED_CIDR'],
    ['::/129', 'MALFORMED_CIDR'],
    ['010.0.0.0/8', 'MALFORMED_CIDR'],
    ['10.0.0/8', 'MALFORMED_CIDR'],
    ['hello', 'MALFORMED_CIDR'],
    ['', 'MALFORMED_CIDR'],
  ];
  for (const [text, reason, description] of cases) {
    const r = parseCanonicalCidr(text);
    if (!isCidrProblem(r)) {
      t.fail(`${text} was accepted`);
      continue;
    }
    t.is(r.reason, reason, text);
    if (description) t.regex(r.description, description);
  }
});

test('label selector - text form parses, matches and formats back', (t) => {
  const s = parseLabelSelector('site=ams1, tier in (edge,pop), !legacy, gpu, env!=prod, zone notin (a, b)');
  t.deepEqual(s.matchLabels, { site: 'ams1' });
  t.is(s.matchExpressions.length, 5);
  t.true(matchesLabelSelector(s, { site: 'ams1', tier: 'pop', gpu: 'yes', env: 'dev', zone: 'c' }));
  t.false(matchesLabelSelector(s, { site: 'ams1', tier: 'pop', gpu: 'yes', env: 'prod' }));
  t.false(matchesLabelSelector(s, { site: 'ams1', tier: 'pop', gpu: 'yes', legacy: '' }));
  t.false(matchesLabelSelector(s, { site: 'ams1', tier: 'core', gpu: 'yes' }));
  t.false(matchesLabelSelector(s, { site: 'ams1', tier: 'edge' }));
  t.true(matchesLabelSelector(s, { site: 'ams1', tier: 'edge', gpu: '', zone: 'x' }));
  t.deepEqual(parseLabelSelector(formatLabelSelector(s)), s);
  t.true(matchesLabelSelector(parseLabelSelector(''), {}));
  t.true(matchesLabelSelector(undefined, { any: 'thing' }));
});

test('label selector - bad text names the term', (t) => {
  for (const bad of ['a in (x', 'a=b=c', '=x', 'a in ()', 'a in (x,,y)', 'Bad Key=1', 'k=' + 'v'.repeat(64), 'a)']) {
    t.throws(() => parseLabelSelector(bad), { instanceOf: LabelSelectorSyntaxError }, bad);
  }
});

test('label selector - selectors that can never match are found', (t) => {
  const cannot: LabelSelector[] = [
    { matchLabels: { a: 'x' }, matchExpressions: [{ key: 'a', operator: Op.OPERATOR_DOES_NOT_EXIST, values: [] }] },
    { matchLabels: { a: 'x' }, matchExpressions: [{ key: 'a', operator: Op.OPERATOR_NOT_IN, values: ['x'] }] },
    { matchLabels: {}, matchExpressions: [{ key: 'a', operator: Op.OPERATOR_IN, values: ['x'] }, { key: 'a', operator: Op.OPERATOR_IN, values: ['y'] }] },
    { matchLabels: {}, matchExpressions: [{ key: 'a', operator: Op.OPERATOR_EXISTS, values: [] }, { key: 'a', operator: Op.OPERATOR_DOES_NOT_EXIST, values: [] }] },
    { matchLabels: { a: 'x' }, matchExpressions: [{ key: 'a', operator: Op.OPERATOR_IN, values: ['y', 'z'] }] },
  ];
  for (const s of cannot) t.is(validateLabelSelector(s, 'sel')[0]?.reason, 'SELECTOR_CANNOT_MATCH', formatLabelSelector(s));
  const can: LabelSelector = { matchLabels: { a: 'x' }, matchExpressions: [{ key: 'a', operator: Op.OPERATOR_IN, values: ['x', 'y'] }, { key: 'b', operator: Op.OPERATOR_NOT_IN, values: ['x'] }] };
  t.deepEqual(validateLabelSelector(can, 'sel'), []);
});

function policy(rules: DeepPartial<Rule>[], extra: DeepPartial<NonNullable<Policy['spec']>> = {}): Policy {
  return Policy.fromPartial({ metadata: { name: 'p1' }, spec: { rules, defaultAction: Action.ACTION_DENY, ...extra } } as Policy);
}

test('policy validation - a complete valid policy has no violations', (t) => {
  const p = Policy.fromPartial({
    metadata: { name: 'edge-web', labels: { 'edgeplane.io/team': 'net', tier: '' }, annotations: { note: 'x' } },
    spec: {
      nodeSelector: { matchLabels: { site: 'ams1' } },
      interfaceRole: InterfaceRole.INTERFACE_ROLE_ALL,
      defaultAction: Action.ACTION_ALLOW,
      rules: [
        { priority: 1, name: 'web', sourceCidrs: ['10.0.0.0/8', '2001:db8::/32'], protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 80 }, { first: 8000, last: 8100 }], action: Action.ACTION_ALLOW },
        { priority: 2, protocol: Protocol.PROTOCOL_ICMPV6, sourceCidrs: ['fe80::/10'], action: Action.ACTION_RATE_LIMIT, rateLimit: { packetsPerSecond: 10n, burst: 20n } },
        { priority: 3, action: Action.ACTION_DENY },
      ],
      rolloutStrategy: { strategy: { $case: 'staged', staged: { waves: [{ target: { $case: 'percent', percent: 10 } }, { target: { $case: 'percent', percent: 100 } }] } } },
    },
  });
  t.deepEqual(validatePolicy(p), []);
});

test('policy validation - each problem is reported at its field path', (t) => {
  const v = validatePolicy(
    policy([
      { priority: 5, sourceCidrs: ['10.0.0.1/8'], action: Action.ACTION_DENY },
      { priority: 5, protocol: Protocol.PROTOCOL_ICMP, destinationPorts: [{ first: 80 }], action: Action.ACTION_ALLOW },
      { priority: 6, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 90, last: 80 }, { first: 70000 }], action: Action.ACTION_RATE_LIMIT },
      { priority: 7, sourceCidrs: ['10.0.0.0/8'], destinationCidrs: ['2001:db8::/32'], action: Action.ACTION_ALLOW, rateLimit: { packetsPerSecond: 1n, burst: 1n } },
    ]),
  );
  const byField = Object.fromEntries(v.map((x) => [x.field, x.reason]));
  t.like(byField, {
    'policy.spec.rules[0].source_cidrs[0]': 'NON_CANONICAL_CIDR',
    'policy.spec.rules[1].priority': 'DUPLICATE_PRIORITY',
    'policy.spec.rules[1].destination_ports': 'PROTOCOL_PORT_MISMATCH',
    'policy.spec.rules[2].destination_ports[0].last': 'REVERSED_PORT_RANGE',
    'policy.spec.rules[2].destination_ports[1].first': 'PORT_OUT_OF_RANGE',
    'policy.spec.rules[2].rate_limit': 'REQUIRED',
    'policy.spec.rules[3].destination_cidrs': 'RULE_CANNOT_MATCH',
    'policy.spec.rules[3].rate_limit': 'NOT_ALLOWED',
  });
});

test('policy validation - a rule\'s CIDR lists, families, protocol and action; a rule found bad is found bad again', (t) => {
  const rules: DeepPartial<Rule>[] = [
    { priority: 1, sourceCidrs: ['10.0.0.0/8', '192.0.2.0/24', '10.0.0.0/8'], action: Action.ACTION_DENY },
    { priority: 2, protocol: Protocol.PROTOCOL_ICMP, destinationCidrs: ['2001:db8::/32'], action: Action.ACTION_DENY },
    { priority: 3, protocol: Protocol.PROTOCOL_ICMPV6, sourceCidrs: ['10.0.0.0/8'], action: Action.ACTION_DENY },
    { priority: 4, protocol: 99 as Protocol, action: 42 as Action },
    // Both families on one side, one on the other: the rule matches IPv6 packets; ICMPV6 fits.
    { priority: 5, protocol: Protocol.PROTOCOL_ICMPV6, sourceCidrs: ['10.0.0.0/8', '2001:db8::/32'], destinationCidrs: ['2001:db8:1::/48'], action: Action.ACTION_ALLOW },
    { priority: 6, sourceCidrs: ['10.0.0.0/8', '10.0.0.1/8'], destinationCidrs: ['2001:db8::/32'], action: Action.ACTION_DENY },
    { priority: 7, destinationCidrs: ['192.0.2.0/24', '192.0.2.0/24'], action: Action.ACTION_DENY },
  ];
  const p = policy(rules);
  const found = (v: { field: string; reason?: string }[]): string[] => v.map((x) => `${x.field} ${x.reason}`);
  const expected = [
    'policy.spec.rules[0].source_cidrs[2] DUPLICATE_CIDR',
    'policy.spec.rules[1].protocol RULE_CANNOT_MATCH',
    'policy.spec.rules[2].protocol RULE_CANNOT_MATCH',
    'policy.spec.rules[3].protocol INVALID_ENUM',
    'policy.spec.rules[3].action INVALID_ENUM',
    // A CIDR that does not parse adds no family: the IPv4 one left and the IPv6 destination share none.
    'policy.spec.rules[5].source_cidrs[1] NON_CANONICAL_CIDR',
    'policy.spec.rules[5].destination_cidrs RULE_CANNOT_MATCH',
    'policy.spec.rules[6].destination_cidrs[1] DUPLICATE_CIDR',
  ];
  t.deepEqual(found(validatePolicy(p)), expected);
  t.deepEqual(found(validatePolicy(p)), expected, 'the same rule objects again: nothing remembered as valid');
  const limits = { ...DEFAULT_POLICY_LIMITS, maxCidrsPerRule: 2 };
  t.deepEqual(found(validatePolicy(policy([rules[0]!]), 'policy', limits)).slice(0, 1), ['policy.spec.rules[0].source_cidrs TOO_MANY_CIDRS']);
  t.deepEqual(validatePolicy(policy([rules[4]!])), []);
});

test('policy validation - names, labels, empty and oversized rule lists', (t) => {
  t.is(validatePolicy(Policy.fromPartial({ metadata: { name: 'Bad_Name' }, spec: { rules: [{ priority: 1, action: Action.ACTION_DENY }] } }))[0]?.field, 'policy.metadata.name');
  t.is(validatePolicy(Policy.fromPartial({ spec: { rules: [{ priority: 1, action: Action.ACTION_DENY }] } }))[0]?.reason, 'REQUIRED');
  t.is(validatePolicy(policy([]))[0]?.field, 'policy.spec.rules');
  const many = Array.from({ length: 11 }, (_, i) => ({ priority: i, action: Action.ACTION_DENY }));
  t.is(validatePolicy(policy(many), 'policy', { maxRules: 10, maxCidrsPerRule: 256, maxPortRangesPerRule: 64, maxPrefixListsPerRule: 16, maxDescription: 1024, maxAnnotationBytes: 1024, maxRate: 10n })[0]?.reason, 'TOO_MANY_RULES');
  const labels = validatePolicy(Policy.fromPartial({ metadata: { name: 'x', labels: { 'bad key': 'v', ok: 'bad value!' } }, spec: { rules: [{ priority: 1, action: Action.ACTION_DENY }] } }));
  t.deepEqual(labels.map((x) => x.reason).sort(), ['INVALID_LABEL_KEY', 'INVALID_LABEL_VALUE']);
  t.is(validatePolicy(undefined)[0]?.field, 'policy');
  t.is(validatePolicy(policy([{ priority: 1, action: Action.ACTION_DENY }], { defaultAction: Action.ACTION_RATE_LIMIT }))[0]?.field, 'policy.spec.default_action');
});

test('policy validation - prefix list names: DNS labels, each once, at most 16 per field; a list lifts the family check', (t) => {
  const rule = (extra: DeepPartial<Rule>): DeepPartial<Rule> => ({ priority: 1, action: Action.ACTION_DENY, ...extra });
  const fields = (v: { field: string; reason?: string }[]): string[] => v.map((x) => `${x.field} ${x.reason}`);
  t.deepEqual(validatePolicy(policy([rule({ sourcePrefixLists: ['feed'], destinationPrefixLists: ['vips'] })])), []);
  t.deepEqual(fields(validatePolicy(policy([rule({ sourcePrefixLists: ['Bad_Name', 'feed', 'feed'] })]))), [
    'policy.spec.rules[0].source_prefix_lists[0] INVALID_NAME',
    'policy.spec.rules[0].source_prefix_lists[2] DUPLICATE_PREFIX_LIST',
  ]);
  const many = Array.from({ length: 17 }, (_, i) => `l${i}`);
  t.deepEqual(fields(validatePolicy(policy([rule({ destinationPrefixLists: many })]))), ['policy.spec.rules[0].destination_prefix_lists TOO_MANY_PREFIX_LISTS', 'policy.spec.rules TOO_MANY_PREFIX_LISTS']);
  const spread = Array.from({ length: 17 }, (_, i) => rule({ priority: i + 1, sourcePrefixLists: [`l${i}`] }));
  t.deepEqual(fields(validatePolicy(policy(spread))), ['policy.spec.rules TOO_MANY_PREFIX_LISTS'], '17 distinct lists across the rules');
  t.deepEqual(validatePolicy(policy(spread.slice(1))), [], '16 is the limit');
  // IPv4 sources and IPv6 destinations share no family, unless a list (of either family) is named too.
  t.is(validatePolicy(policy([rule({ sourceCidrs: ['10.0.0.0/8'], destinationCidrs: ['2001:db8::/32'] })]))[0]?.reason, 'RULE_CANNOT_MATCH');
  t.deepEqual(validatePolicy(policy([rule({ sourceCidrs: ['10.0.0.0/8'], destinationCidrs: ['2001:db8::/32'], destinationPrefixLists: ['vips'] })])), []);
});
