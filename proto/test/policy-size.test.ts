import test from 'ava';
import fc from 'fast-check';
import { Action, MAX_POLICY_BYTES, Policy, Protocol, SizeWriter, encodedPolicySize, validatePolicy, type RolloutStrategy } from '../gen/index.js';
import { policyOfSize } from '../../test/support/sized-policy.js';

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

test('SizeWriter - counts what encode writes: every field kind, non-ASCII and lone surrogates, negative int32 and int64, 64-bit extremes', (t) => {
  const edge = Policy.fromPartial({
    metadata: { name: 'ü-名前-\u{1F600}', labels: { a: 'b', 'ключ': '\uD800' }, annotations: { x: '\uDC00y' }, resourceVersion: 18_446_744_073_709_551_615n, createRevision: 1n, createTime: new Date('2026-12-02T00:00:00.123Z') },
    spec: {
      description: 'x'.repeat(200),
      nodeSelector: { matchLabels: { site: 'ams1' }, matchExpressions: [{ key: 'k', operator: 1, values: ['a', 'é'] }] },
      interfaceRole: -1,
      defaultAction: -5 as Action,
      rules: [{ priority: 4_294_967_295, name: 'r', sourceCidrs: ['10.0.0.0/8'], destinationCidrs: ['2001:db8::/32'], protocol: -1, destinationPorts: [{ first: 1, last: 65535 }], action: Action.ACTION_RATE_LIMIT, rateLimit: { packetsPerSecond: 9_007_199_254_740_993n, burst: 1n } }],
      connectionTracking: { stateful: true, establishedOnDeny: 2 },
    },
  });
  edge.spec!.rolloutStrategy = {
    strategy: {
      $case: 'staged',
      staged: {
        waves: [
          { name: 'w', target: { $case: 'percent', percent: 12.5 }, bakeTime: { seconds: -1n, nanos: -1 }, shadowBakeTime: undefined },
          { name: '', target: { $case: 'selector', selector: { matchLabels: { a: 'b' }, matchExpressions: [] } }, bakeTime: undefined, shadowBakeTime: { seconds: 9_223_372_036_854_775_807n, nanos: 999_999_999 } },
        ],
        gates: { ignoreNacks: true, maxDropRatioIncreasePoints: Number.NaN, maxUnreportedPercent: -0, maxWouldDropPercent: Infinity, minShadowPackets: 2n ** 63n },
        reportTimeout: undefined,
      },
    },
  };
  const sized = new SizeWriter();
  Policy.encode(edge, sized);
  t.is(sized.size, Policy.encode(edge).finish().length);
  t.is(encodedPolicySize(edge), Policy.encode(edge).finish().length);
  t.throws(() => sized.finish(), { message: /counts bytes/ });
});

test('SizeWriter - equals the encoded length of arbitrary policies', (t) => {
  const text = fc.string({ unit: 'binary', maxLength: 40 });
  const int32 = fc.integer({ min: -2_147_483_648, max: 2_147_483_647 });
  const uint32 = fc.integer({ min: 0, max: 4_294_967_295 });
  const dict = fc.dictionary(text, text, { maxKeys: 4 });
  const selector = fc.record({ matchLabels: dict, matchExpressions: fc.array(fc.record({ key: text, operator: int32, values: fc.array(text, { maxLength: 3 }) }), { maxLength: 3 }) });
  const duration = fc.option(fc.record({ seconds: fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }), nanos: int32 }), { nil: undefined });
  const policy = fc.record({
    metadata: fc.option(fc.record({ name: text, labels: dict, annotations: dict, resourceVersion: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), createRevision: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }), { nil: undefined }),
    spec: fc.option(
      fc.record({
        description: text,
        nodeSelector: fc.option(selector, { nil: undefined }),
        interfaceRole: int32,
        defaultAction: int32,
        rules: fc.array(
          fc.record({
            priority: uint32,
            name: text,
            sourceCidrs: fc.array(text, { maxLength: 4 }),
            destinationCidrs: fc.array(text, { maxLength: 4 }),
            protocol: int32,
            destinationPorts: fc.array(fc.record({ first: uint32, last: uint32 }), { maxLength: 3 }),
            sourcePrefixLists: fc.array(text, { maxLength: 3 }),
            destinationPrefixLists: fc.array(text, { maxLength: 3 }),
            action: int32,
            rateLimit: fc.option(fc.record({ packetsPerSecond: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), burst: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }), { nil: undefined }),
          }),
          { maxLength: 5 },
        ),
        rolloutStrategy: fc.option(
          fc.record({
            strategy: fc.oneof(
              fc.constant<RolloutStrategy['strategy']>(undefined),
              fc.constant<RolloutStrategy['strategy']>({ $case: 'immediate', immediate: {} }),
              fc
                .record({ waves: fc.array(fc.record({ name: text, target: fc.option(fc.oneof(fc.record({ $case: fc.constant('percent' as const), percent: fc.double() }), fc.record({ $case: fc.constant('selector' as const), selector })), { nil: undefined }), bakeTime: duration, shadowBakeTime: duration }), { maxLength: 3 }), gates: fc.option(fc.record({ ignoreNacks: fc.boolean(), maxDropRatioIncreasePoints: fc.double(), maxUnreportedPercent: fc.double(), maxWouldDropPercent: fc.double(), minShadowPackets: fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }) }), { nil: undefined }), reportTimeout: duration })
                .map((staged): RolloutStrategy['strategy'] => ({ $case: 'staged', staged })),
            ),
          }),
          { nil: undefined },
        ),
        connectionTracking: fc.option(fc.record({ stateful: fc.boolean(), establishedOnDeny: int32 }), { nil: undefined }),
      }),
      { nil: undefined },
    ),
  });
  fc.assert(
    fc.property(policy, (partial) => {
      const p = Policy.fromPartial(partial as Parameters<typeof Policy.fromPartial>[0]);
      const length = Policy.encode(p).finish().length;
      const sized = new SizeWriter();
      Policy.encode(p, sized);
      return sized.size === length && encodedPolicySize(p) === length;
    }),
    { seed: 20261202, numRuns: 500 },
  );
  t.pass();
});

test('SizeWriter - refuses what the writer refuses, with the same message', (t) => {
  const bad = [
    Policy.fromPartial({ spec: { rules: [{ priority: 1.5 }] } }),
    Policy.fromPartial({ spec: { rules: [{ priority: -1 }] } }),
    Policy.fromPartial({ spec: { rules: [{ priority: 2 ** 32 }] } }),
    Policy.fromPartial({ spec: { defaultAction: 2 ** 31 } }),
    Policy.fromPartial({ metadata: { name: 'p', resourceVersion: -1n } }),
    Policy.fromPartial({ metadata: { name: 'p', resourceVersion: 2n ** 64n } }),
  ];
  for (const p of bad) {
    const encoding = t.throws(() => Policy.encode(p).finish());
    const sizing = t.throws(() => Policy.encode(p, new SizeWriter()));
    t.is(sizing?.message, encoding?.message);
    t.is(t.throws(() => encodedPolicySize(p))?.message, encoding?.message);
  }
});

test('validatePolicy - a policy of MAX_POLICY_BYTES passes; one byte more is POLICY_TOO_LARGE at `policy`, whether fresh, decoded (as an agent holds it) or with rules sized before', (t) => {
  const tooLarge = [{ field: 'policy', description: `${MAX_POLICY_BYTES + 1} bytes encoded; at most ${MAX_POLICY_BYTES}`, reason: 'POLICY_TOO_LARGE' }];
  const atLimit = policyOfSize('at-limit', MAX_POLICY_BYTES);
  t.deepEqual(validatePolicy(atLimit), []);
  const over = policyOfSize('over-limit', MAX_POLICY_BYTES + 1);
  t.deepEqual(validatePolicy(over), tooLarge);
  t.deepEqual(validatePolicy(Policy.decode(Policy.encode(over).finish())), tooLarge, 'decoded from its bytes');
  // The same rule objects as the policy that passed (their sizes remembered), one more byte of description.
  const grown = { ...atLimit, metadata: atLimit.metadata, spec: { ...atLimit.spec!, description: `${atLimit.spec!.description}x` } };
  t.is(Policy.encode(grown).finish().length, MAX_POLICY_BYTES + 1);
  t.deepEqual(validatePolicy(grown), tooLarge, 'rules sized before');
});
