import test from 'ava';
import {
  ForwardingMode,
  HealthCheck_Type,
  MAGLEV_TABLE_SIZES,
  MAX_SERVICE_BACKENDS,
  MORE_VIOLATIONS_REASON,
  Protocol,
  Scheduler,
  Service,
  SessionAffinity,
  isAddressProblem,
  parseCanonicalAddress,
  validateService,
  type DeepPartial,
  type ServiceSpec,
} from '@edgeplane/proto';

/** A valid IPv4 service with two backends, with `spec` laid over it. */
function service(spec: DeepPartial<ServiceSpec> = {}, metadata: DeepPartial<Service['metadata']> = {}): Service {
  return Service.fromPartial({
    metadata: { name: 'web', ...metadata },
    spec: { vip: '192.0.2.10', protocol: Protocol.PROTOCOL_TCP, port: 443, backends: [{ address: '10.0.0.1' }, { address: '10.0.0.2', port: 8443, weight: 3 }], ...spec },
  });
}

/** The reasons validateService gives, by field. */
function reasons(s: Service | undefined): Record<string, string | undefined> {
  return Object.fromEntries(validateService(s).map((v) => [v.field, v.reason]));
}

test('service validation - a complete valid service has no violations', (t) => {
  const full = Service.fromPartial({
    metadata: { name: 'edge-web', labels: { tier: 'front' }, annotations: { owner: 'net' } },
    spec: {
      nodeSelector: { matchLabels: { site: 'ams1' } },
      vip: '2001:db8::10',
      protocol: Protocol.PROTOCOL_UDP,
      port: 53,
      backends: [{ address: '2001:db8::1', weight: 10_000 }, { address: '2001:db8::2', port: 5353, weight: 0 }, { address: '2001:db8::1', port: 5353 }],
      scheduler: Scheduler.SCHEDULER_MAGLEV,
      maglevTableSize: 509,
      healthCheck: { type: HealthCheck_Type.TYPE_HTTP, httpPath: '/healthz?full=1', port: 8080, interval: { seconds: 10n }, timeout: { seconds: 9n, nanos: 999_000_000 }, healthyThreshold: 10, unhealthyThreshold: 1 },
      sessionAffinity: SessionAffinity.SESSION_AFFINITY_CLIENT_IP,
      forwardingMode: ForwardingMode.FORWARDING_MODE_NAT,
      rolloutStrategy: { strategy: { $case: 'staged', staged: { waves: [{ target: { $case: 'percent', percent: 10 } }, { target: { $case: 'percent', percent: 100 } }] } } },
      description: 'the site web VIP',
    },
  });
  t.deepEqual(validateService(full), []);
  t.deepEqual(validateService(service()), []);
});

test('service validation - every backend drained is valid (no new flows; established ones keep their backend)', (t) => {
  t.deepEqual(validateService(service({ backends: [{ address: '10.0.0.1', weight: 0 }, { address: '10.0.0.2', weight: 0 }] })), []);
});

test('service validation - metadata: name required and an RFC 1123 label, labels checked, as for a policy', (t) => {
  t.like(reasons(service({}, { name: '' })), { 'service.metadata.name': 'REQUIRED' });
  t.like(reasons(service({}, { name: 'Web_1' })), { 'service.metadata.name': 'INVALID_NAME' });
  t.like(reasons(service({}, { labels: { 'bad key': 'v' } })), { 'service.metadata.labels': 'INVALID_LABEL_KEY' });
  t.like(reasons(undefined), { service: 'REQUIRED' });
  t.like(reasons(Service.fromPartial({ metadata: { name: 'x' } })), { 'service.spec': 'REQUIRED' });
  t.like(reasons(service({ nodeSelector: { matchExpressions: [{ key: 'k', operator: 1, values: [] }] } })), { 'service.spec.node_selector.match_expressions[0].values': 'REQUIRED' });
});

test('service validation - the VIP is one canonical address, not a prefix, not unspecified', (t) => {
  const cases: [string, string][] = [
    ['', 'REQUIRED'],
    ['192.0.2.10/32', 'MALFORMED_ADDRESS'],
    ['192.0.2.010', 'MALFORMED_ADDRESS'],
    ['2001:DB8::10', 'NON_CANONICAL_ADDRESS'],
    ['2001:db8:0:0::10', 'NON_CANONICAL_ADDRESS'],
    ['web.example', 'MALFORMED_ADDRESS'],
    ['0.0.0.0', 'INVALID_ADDRESS'],
    ['::', 'INVALID_ADDRESS'],
  ];
  for (const [vip, reason] of cases) t.is(reasons(service({ vip }))['service.spec.vip'], reason, vip);
  const v = validateService(service({ vip: '2001:DB8::10' }))[0]!;
  t.regex(v.description, /write 2001:db8::10/);
});

test('service validation - protocol TCP or UDP, port 1-65535', (t) => {
  t.like(reasons(service({ protocol: Protocol.PROTOCOL_UNSPECIFIED })), { 'service.spec.protocol': 'REQUIRED' });
  t.like(reasons(service({ protocol: Protocol.PROTOCOL_ICMP })), { 'service.spec.protocol': 'INVALID_PROTOCOL' });
  t.like(reasons(service({ port: 0 })), { 'service.spec.port': 'PORT_OUT_OF_RANGE' });
  t.like(reasons(service({ port: 65536 })), { 'service.spec.port': 'PORT_OUT_OF_RANGE' });
});

test('service validation - backends: required, bounded, canonical, of the VIP family, not the VIP, unique, weights bounded', (t) => {
  t.like(reasons(service({ backends: [] })), { 'service.spec.backends': 'REQUIRED' });
  const many = Array.from({ length: MAX_SERVICE_BACKENDS + 1 }, (_, i) => ({ address: `10.${i >> 16}.${(i >> 8) & 255}.${(i & 255) || 1}`, port: i + 1 }));
  const tooMany = validateService(service({ backends: many }));
  t.deepEqual(tooMany.map((v) => v.reason), ['TOO_MANY_BACKENDS'], 'one violation, the backends are not checked one by one');
  t.deepEqual(validateService(service({ backends: many.slice(0, MAX_SERVICE_BACKENDS) })), []);
  t.like(
    reasons(
      service({
        backends: [
          { address: '10.0.0.1/32' },
          { address: '2001:db8::1' },
          { address: '192.0.2.10' },
          { address: '10.0.0.4', port: 70_000 },
          { address: '10.0.0.5', weight: 10_001 },
          { address: '10.0.0.6' },
          { address: '10.0.0.6', port: 443 },
          { address: '' },
        ],
      }),
    ),
    {
      'service.spec.backends[0].address': 'MALFORMED_ADDRESS',
      'service.spec.backends[1].address': 'FAMILY_MISMATCH',
      'service.spec.backends[2].address': 'BACKEND_IS_VIP',
      'service.spec.backends[3].port': 'PORT_OUT_OF_RANGE',
      'service.spec.backends[4].weight': 'OUT_OF_RANGE',
      'service.spec.backends[6]': 'DUPLICATE_BACKEND',
      'service.spec.backends[7].address': 'REQUIRED',
    },
  );
  // The same address on another port is another backend.
  t.deepEqual(validateService(service({ backends: [{ address: '10.0.0.6' }, { address: '10.0.0.6', port: 444 }] })), []);
});

test('service validation - direct server return cannot translate the port', (t) => {
  const dsr = { forwardingMode: ForwardingMode.FORWARDING_MODE_DSR };
  t.like(reasons(service({ ...dsr, backends: [{ address: '10.0.0.1', port: 8443 }] })), { 'service.spec.backends[0].port': 'DSR_PORT_MISMATCH' });
  t.deepEqual(validateService(service({ ...dsr, backends: [{ address: '10.0.0.1', port: 443 }, { address: '10.0.0.2' }] })), []);
});

test('service validation - full NAT translates the port like NAT; an unknown forwarding mode is INVALID_ENUM', (t) => {
  const fullnat = { forwardingMode: ForwardingMode.FORWARDING_MODE_FULLNAT };
  t.deepEqual(validateService(service({ ...fullnat, backends: [{ address: '10.0.0.1', port: 8443 }, { address: '10.0.0.2' }] })), []);
  t.like(reasons(service({ forwardingMode: 4 as ForwardingMode })), { 'service.spec.forwarding_mode': 'INVALID_ENUM' });
});

test('service validation - the Maglev table size is 0 or a supported prime of at least 100 slots per backend', (t) => {
  t.like(reasons(service({ maglevTableSize: 1000 })), { 'service.spec.maglev_table_size': 'INVALID_TABLE_SIZE' });
  const three = [{ address: '10.0.0.1' }, { address: '10.0.0.2' }, { address: '10.0.0.3' }];
  t.like(reasons(service({ backends: three, maglevTableSize: 251 })), { 'service.spec.maglev_table_size': 'TABLE_TOO_SMALL' });
  t.deepEqual(validateService(service({ backends: three, maglevTableSize: 509 })), []);
  t.deepEqual(validateService(service({ maglevTableSize: MAGLEV_TABLE_SIZES[MAGLEV_TABLE_SIZES.length - 1]! })), []);
});

test('service validation - unknown enums are refused', (t) => {
  t.like(reasons(service({ scheduler: 7 as Scheduler })), { 'service.spec.scheduler': 'INVALID_ENUM' });
  t.like(reasons(service({ sessionAffinity: 7 as SessionAffinity })), { 'service.spec.session_affinity': 'INVALID_ENUM' });
  t.like(reasons(service({ forwardingMode: 7 as ForwardingMode })), { 'service.spec.forwarding_mode': 'INVALID_ENUM' });
  t.like(reasons(service({ healthCheck: { type: 7 as HealthCheck_Type } })), { 'service.spec.health_check.type': 'INVALID_ENUM' });
});

test('service validation - health check bounds', (t) => {
  const hc = (healthCheck: DeepPartial<ServiceSpec['healthCheck']>) => reasons(service({ healthCheck }));
  const http = HealthCheck_Type.TYPE_HTTP;
  t.like(hc({ interval: { nanos: 999_000_000 } }), { 'service.spec.health_check.interval': 'OUT_OF_RANGE' });
  t.like(hc({ interval: { seconds: 301n } }), { 'service.spec.health_check.interval': 'OUT_OF_RANGE' });
  t.like(hc({ interval: { seconds: -5n } }), { 'service.spec.health_check.interval': 'OUT_OF_RANGE' });
  t.deepEqual(hc({ interval: { seconds: 300n }, timeout: { seconds: 299n } }), {});
  t.like(hc({ interval: { seconds: 2n }, timeout: { seconds: 2n } }), { 'service.spec.health_check.timeout': 'TIMEOUT_NOT_BELOW_INTERVAL' });
  // Unset interval is 5 s.
  t.like(hc({ timeout: { seconds: 5n } }), { 'service.spec.health_check.timeout': 'TIMEOUT_NOT_BELOW_INTERVAL' });
  t.like(hc({ timeout: { seconds: 0n } }), { 'service.spec.health_check.timeout': 'OUT_OF_RANGE' });
  t.like(hc({ healthyThreshold: 11, unhealthyThreshold: 11 }), { 'service.spec.health_check.healthy_threshold': 'OUT_OF_RANGE', 'service.spec.health_check.unhealthy_threshold': 'OUT_OF_RANGE' });
  t.like(hc({ port: 65_536 }), { 'service.spec.health_check.port': 'PORT_OUT_OF_RANGE' });
  t.like(hc({ httpPath: '/healthz' }), { 'service.spec.health_check.http_path': 'NOT_ALLOWED' });
  t.like(hc({ type: http, httpPath: 'healthz' }), { 'service.spec.health_check.http_path': 'INVALID_PATH' });
  t.like(hc({ type: http, httpPath: '/a b' }), { 'service.spec.health_check.http_path': 'INVALID_PATH' });
  t.like(hc({ type: http, httpPath: '/a\r\nHost: x' }), { 'service.spec.health_check.http_path': 'INVALID_PATH' });
  t.like(hc({ type: http, httpPath: '/é' }), { 'service.spec.health_check.http_path': 'INVALID_PATH' });
  t.like(hc({ type: http, httpPath: '/' + 'a'.repeat(1_000_000) }), { 'service.spec.health_check.http_path': 'TOO_LONG' });
  t.true(validateService(service({ healthCheck: { type: http, httpPath: '/' + 'a'.repeat(1_000_000) } }))[0]!.description.length < 100);
});

test('service validation - the rollout strategy is checked as a policy\'s, and the description is bounded', (t) => {
  const staged = (waves: unknown[]) => ({ rolloutStrategy: { strategy: { $case: 'staged' as const, staged: { waves } } } }) as DeepPartial<ServiceSpec>;
  t.like(reasons(service(staged([]))), { 'service.spec.rollout_strategy.staged.waves': 'REQUIRED' });
  t.like(reasons(service(staged([{ target: { $case: 'percent', percent: 50 } }, { target: { $case: 'percent', percent: 20 } }]))), { 'service.spec.rollout_strategy.staged.waves[1].percent': 'NOT_MONOTONIC' });
  t.like(reasons(service({ description: 'x'.repeat(1025) })), { 'service.spec.description': 'TOO_LONG' });
});

test('service validation - many problems are collected up to the bound, then counted', (t) => {
  const backends = Array.from({ length: 1000 }, () => ({ address: 'nope' }));
  const v = validateService(service({ backends }));
  t.is(v.length, 257);
  t.is(v[v.length - 1]!.reason, MORE_VIOLATIONS_REASON);
});

test('parseCanonicalAddress - canonical addresses parse; prefixes, other spellings and 1 MiB strings are refused short', (t) => {
  const v4 = parseCanonicalAddress('192.0.2.1');
  if (isAddressProblem(v4)) return t.fail(v4.description);
  t.is(v4.family, 4);
  t.deepEqual([...v4.bytes], [192, 0, 2, 1]);
  const v6 = parseCanonicalAddress('::ffff:192.0.2.1');
  t.true(isAddressProblem(v6) && v6.reason === 'NON_CANONICAL_ADDRESS' && /write ::ffff:c000:201/.test(v6.description));
  const prefix = parseCanonicalAddress('10.0.0.1/32');
  t.true(isAddressProblem(prefix) && /\(10\.0\.0\.1\)/.test(prefix.description));
  const huge = parseCanonicalAddress('1'.repeat(1 << 20));
  t.true(isAddressProblem(huge) && huge.description.length < 200);
});
