// Bounds and linear work on request input (issue 12). Work is counted, never timed: the
// parsers report the characters they visit (ParseStats), and the tests compare n with 8n.
import test from 'ava';
import {
  LabelSelectorRequirement_Operator as Op,
  LabelSelectorSyntaxError,
  MAX_COLLECTED_VIOLATIONS,
  MAX_LABELS,
  MAX_QUOTED_LENGTH,
  MAX_SELECTOR_LENGTH,
  MAX_SELECTOR_TERMS,
  MORE_VIOLATIONS_REASON,
  Policy,
  Action,
  ApplyPolicyRequest,
  checkApplyPolicyWire,
  checkApplyServiceWire,
  ApplyServiceRequest,
  MAX_SERVICE_BACKENDS,
  Protocol,
  validateService,
  countViolations,
  isCidrProblem,
  parseCanonicalCidr,
  parseLabelSelector,
  quote,
  validateNodeNames,
  validatePolicy,
  MAX_NODES_PER_REQUEST,
  type ParseStats,
} from '@edgeplane/proto';

function steps(text: string): { steps: number; error?: string } {
  const stats: ParseStats = { steps: 0 };
  try {
    parseLabelSelector(text, stats);
    return { steps: stats.steps };
  } catch (err) {
    if (!(err instanceof LabelSelectorSyntaxError)) throw err;
    return { steps: stats.steps, error: err.message };
  }
}

// Selector shapes that made the old regex parser backtrack, and ordinary ones; `make(k)` grows
// with k. Each stays under MAX_SELECTOR_LENGTH at 8k so the parser does all the work.
const shapes: [string, (k: number) => string][] = [
  ['spaces inside a term', (k) => `a${' '.repeat(k)}=${' '.repeat(k)}b`],
  ['a long key with no operator', (k) => 'a'.repeat(k) + ' x'],
  ['many "=" runs', (k) => 'a' + '='.repeat(k)],
  ['unbalanced "("', (k) => 'a in (' + 'b,'.repeat(k)],
  ['a set of many values', (k) => `a in (${Array.from({ length: Math.min(k, 200) }, (_, i) => `v${i}`).join(',')}${' '.repeat(k)})`],
  ['"!" and spaces', (k) => '!' + ' '.repeat(k)],
  ['nested parentheses', (k) => 'a in ' + '('.repeat(k)],
];

for (const [name, make] of shapes) {
  test(`parseLabelSelector - ${name}: work grows linearly (n vs 8n characters)`, (t) => {
    const n = 120;
    const small = make(n);
    const large = make(8 * n);
    t.true(large.length <= MAX_SELECTOR_LENGTH, `${large.length} characters`);
    const a = steps(small);
    const b = steps(large);
    // Each character is visited at most once (plus a constant per term).
    t.true(a.steps <= small.length + 8, `${a.steps} steps for ${small.length} characters`);
    t.true(b.steps <= large.length + 8, `${b.steps} steps for ${large.length} characters`);
    t.true(b.steps <= 8 * a.steps + 64, `n: ${a.steps}, 8n: ${b.steps}`);
  });
}

test('parseLabelSelector - text over the length bound is refused before it is read', (t) => {
  const r = steps('a'.repeat(1024 * 1024));
  t.is(r.steps, 0);
  t.regex(r.error!, new RegExp(`at most ${MAX_SELECTOR_LENGTH}`));
  t.true(r.error!.length < 200);
});

test('parseLabelSelector - more than the term bound is refused at the first extra term', (t) => {
  const text = Array.from({ length: 100_000 }, (_, i) => `k${i % 10}`).join(',').slice(0, MAX_SELECTOR_LENGTH);
  const r = steps(text);
  t.regex(r.error ?? '', new RegExp(`more than ${MAX_SELECTOR_TERMS} terms`));
  t.true(r.steps < 64 * MAX_SELECTOR_TERMS, `${r.steps} steps`);
});

test('parseLabelSelector - an 8,000-character bad value is quoted as a short prefix', (t) => {
  const r = steps(`role=${'x'.repeat(7000)}!`);
  t.truthy(r.error);
  t.true(r.error!.length < 300, r.error);
  t.true(r.error!.includes('…'));
});

test('parseLabelSelector - the Kubernetes forms parse as before', (t) => {
  t.deepEqual(parseLabelSelector(' role = edge , site!=lab, tier in (a, b), !x, y, z==1, role=other'), {
    matchLabels: { role: 'edge', z: '1' },
    matchExpressions: [
      { key: 'site', operator: Op.OPERATOR_NOT_IN, values: ['lab'] },
      { key: 'tier', operator: Op.OPERATOR_IN, values: ['a', 'b'] },
      { key: 'x', operator: Op.OPERATOR_DOES_NOT_EXIST, values: [] },
      { key: 'y', operator: Op.OPERATOR_EXISTS, values: [] },
      { key: 'role', operator: Op.OPERATOR_IN, values: ['other'] },
    ],
  });
  t.deepEqual(parseLabelSelector('a notin(b)'), { matchLabels: {}, matchExpressions: [{ key: 'a', operator: Op.OPERATOR_NOT_IN, values: ['b'] }] });
  t.deepEqual(parseLabelSelector('   '), { matchLabels: {}, matchExpressions: [] });
  for (const bad of ['a,', ',a', 'a in b', 'a in (b', 'a in ()', 'a in (b,)', 'a b', 'a=b c', '!a=b', 'a) ', '=b', 'a!b']) {
    t.throws(() => parseLabelSelector(bad), { instanceOf: LabelSelectorSyntaxError }, bad);
  }
});

test('quote - short values whole, long ones as a prefix, "…" and the length', (t) => {
  t.is(quote('abc'), '"abc"');
  const q = quote('é'.repeat(10_000));
  t.true(q.startsWith(JSON.stringify('é'.repeat(MAX_QUOTED_LENGTH))));
  t.true(q.endsWith('… (10000 characters)'));
  // A surrogate pair is never cut in half.
  t.false(quote('a'.repeat(MAX_QUOTED_LENGTH - 1) + '😀'.repeat(10)).includes('\\ud83d"'));
});

test('parseCanonicalCidr - a 1 MiB string is refused unread with a short description', (t) => {
  const r = parseCanonicalCidr('1'.repeat(1024 * 1024));
  t.true(isCidrProblem(r));
  if (isCidrProblem(r)) t.true(r.description.length < 200, r.description);
});

const policy = (spec: Record<string, unknown>, metadata: Record<string, unknown> = {}): Policy =>
  Policy.fromPartial({ metadata: { name: 'p', ...metadata }, spec: { rules: [{ priority: 1, action: Action.ACTION_DENY }], ...spec } });

test('validatePolicy - 10,000 match expressions and 300,000 values are one violation each', (t) => {
  const many = validatePolicy(policy({ nodeSelector: { matchLabels: {}, matchExpressions: Array.from({ length: 10_000 }, (_, i) => ({ key: `k${i}`, operator: Op.OPERATOR_EXISTS, values: [] })) } }));
  t.deepEqual(many.map((v) => [v.field, v.reason]), [['policy.spec.node_selector', 'TOO_MANY_TERMS']]);
  const values = validatePolicy(policy({ nodeSelector: { matchLabels: {}, matchExpressions: [{ key: 'k', operator: Op.OPERATOR_IN, values: Array.from({ length: 300_000 }, (_, i) => `v${i}`) }] } }));
  t.deepEqual(values.map((v) => [v.field, v.reason]), [['policy.spec.node_selector', 'TOO_MANY_VALUES']]);
});

test('validatePolicy - labels: count bound, and an 8,000-character value quoted short', (t) => {
  const count = validatePolicy(policy({}, { labels: Object.fromEntries(Array.from({ length: MAX_LABELS + 1 }, (_, i) => [`k${i}`, 'v'])) }));
  t.deepEqual(count.map((v) => v.reason), ['TOO_MANY_LABELS']);
  const long = validatePolicy(policy({}, { labels: { team: 'x'.repeat(8000) } }));
  t.is(long.length, 1);
  t.is(long[0]!.field, 'policy.metadata.labels["team"]');
  t.true(long[0]!.description.length < 200, long[0]!.description);
});

test('validatePolicy - many problems are collected up to the bound, then counted', (t) => {
  const rules = Array.from({ length: 5000 }, (_, i) => ({ priority: i + 1, action: Action.ACTION_DENY, sourceCidrs: ['bad'] }));
  const out = validatePolicy(policy({ rules }));
  t.is(out.length, MAX_COLLECTED_VIOLATIONS + 1);
  t.is(out.at(-1)!.reason, MORE_VIOLATIONS_REASON);
  t.is(countViolations(out), 5000);
});

test('validateNodeNames - more than MAX_NODES_PER_REQUEST names is one violation; bad names are quoted short', (t) => {
  t.deepEqual(validateNodeNames(Array.from({ length: MAX_NODES_PER_REQUEST + 1 }, (_, i) => `n${i}`), 'nodes').map((v) => v.reason), ['TOO_MANY_NODES']);
  const bad = validateNodeNames(['ok', 'N'.repeat(8000)], 'nodes');
  t.deepEqual(bad.map((v) => v.field), ['nodes[1]']);
  t.true(bad[0]!.description.length < 200);
  t.deepEqual(validateNodeNames(['a', 'b-1'], 'nodes'), []);
});

test('checkApplyPolicyWire - finds on the wire the count bounds validatePolicy finds, and nothing in valid or malformed bytes', (t) => {
  const req = (spec: Record<string, unknown>, metadata: Record<string, unknown> = {}): Uint8Array => ApplyPolicyRequest.encode(ApplyPolicyRequest.fromPartial({ policy: policy(spec, metadata) })).finish();
  const exprs = (n: number, values = 0) => ({ matchLabels: {}, matchExpressions: Array.from({ length: n }, (_, i) => ({ key: `k${i}`, operator: values ? Op.OPERATOR_IN : Op.OPERATOR_EXISTS, values: Array.from({ length: values }, (_, j) => `v${j}`) })) });
  const cases: [Uint8Array, string[]][] = [
    [req({}), []],
    [req({ nodeSelector: exprs(64) }), []],
    [req({ nodeSelector: exprs(65) }), ['TOO_MANY_TERMS']],
    [req({ nodeSelector: exprs(1, 300_000) }), ['TOO_MANY_VALUES']],
    [req({}, { labels: Object.fromEntries(Array.from({ length: MAX_LABELS + 1 }, (_, i) => [`k${i}`, 'v'])) }), ['TOO_MANY_LABELS']],
    [req({ rolloutStrategy: { strategy: { $case: 'staged', staged: { waves: [{ target: { $case: 'selector', selector: exprs(100) } }] } } } }), ['TOO_MANY_TERMS']],
  ];
  for (const [bytes, reasons] of cases) {
    t.deepEqual(checkApplyPolicyWire(bytes).map((v) => v.reason), reasons);
    const decoded = ApplyPolicyRequest.decode(bytes);
    const full = validatePolicy(decoded.policy).map((v) => v.reason);
    for (const r of reasons) t.true(full.includes(r), `validatePolicy also finds ${r}`);
  }
  t.deepEqual(checkApplyPolicyWire(new Uint8Array([0x0a, 0xff, 0xff, 0x03])), []);
});

test('checkApplyServiceWire - finds on the wire the count bounds validateService finds, and nothing in valid or malformed bytes', (t) => {
  const req = (spec: Record<string, unknown>, metadata: Record<string, unknown> = {}): Uint8Array =>
    ApplyServiceRequest.encode(
      ApplyServiceRequest.fromPartial({ service: { metadata: { name: 's', ...metadata }, spec: { vip: '192.0.2.1', protocol: Protocol.PROTOCOL_TCP, port: 80, backends: [{ address: '10.0.0.1' }], ...spec } } }),
    ).finish();
  const exprs = (n: number, values = 0) => ({ matchLabels: {}, matchExpressions: Array.from({ length: n }, (_, i) => ({ key: `k${i}`, operator: values ? Op.OPERATOR_IN : Op.OPERATOR_EXISTS, values: Array.from({ length: values }, (_, j) => `v${j}`) })) });
  const backends = (n: number) => Array.from({ length: n }, (_, i) => ({ address: `10.${i >> 16}.${(i >> 8) & 255}.${i & 255}`, port: 1 }));
  const cases: [Uint8Array, string[]][] = [
    [req({}), []],
    [req({ backends: backends(MAX_SERVICE_BACKENDS) }), []],
    [req({ backends: backends(MAX_SERVICE_BACKENDS + 1) }), ['TOO_MANY_BACKENDS']],
    [req({ nodeSelector: exprs(65) }), ['TOO_MANY_TERMS']],
    [req({ nodeSelector: exprs(1, 300_000) }), ['TOO_MANY_VALUES']],
    [req({}, { labels: Object.fromEntries(Array.from({ length: MAX_LABELS + 1 }, (_, i) => [`k${i}`, 'v'])) }), ['TOO_MANY_LABELS']],
    [req({ rolloutStrategy: { strategy: { $case: 'staged', staged: { waves: Array.from({ length: 33 }, () => ({ target: { $case: 'percent', percent: 100 } })) } } } }), ['TOO_MANY_WAVES']],
    [req({ rolloutStrategy: { strategy: { $case: 'staged', staged: { waves: [{ target: { $case: 'selector', selector: exprs(100) } }] } } } }), ['TOO_MANY_TERMS']],
  ];
  for (const [bytes, reasons] of cases) {
    t.deepEqual(checkApplyServiceWire(bytes).map((v) => v.reason), reasons);
    const full = validateService(ApplyServiceRequest.decode(bytes).service).map((v) => v.reason);
    for (const r of reasons) t.true(full.includes(r), `validateService also finds ${r}`);
    if (reasons.length === 0) t.deepEqual(full, []);
  }
  t.deepEqual(checkApplyServiceWire(new Uint8Array([0x0a, 0xff, 0xff, 0x03])), []);
});
