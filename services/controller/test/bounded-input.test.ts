// Bounded input against a real controller over real gRPC (issue 12): oversized selectors,
// selector messages, label values, intent growth and agent reports each fail with a clear,
// short error that fits a default client's 8 KiB metadata limit, and nothing is written.
// Nothing here is timed: bench/bad-input.ts prints how long these requests take.
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import {
  Action,
  AgentServiceClient,
  ApplyPolicyRequest,
  LabelSelectorRequirement_Operator as Op,
  MAX_COUNTED_RULES_PER_NODE,
  MAX_COUNTER_RULES,
  MAX_LISTED_VIOLATIONS,
  MAX_REQUEST_BYTES,
  MORE_VIOLATIONS_REASON,
  type Policy,
  STATUS_DETAILS_KEY,
  type ConnectRequest,
  type DeepPartial,
} from '@edgeplane/proto';
import { call, clients, detailsOf } from '../../../test/support/grpc.js';
import { CounterStore } from '../src/counter-store.js';
import { startTestController } from './helpers.js';

let env: Awaited<ReturnType<typeof startTestController>>;
let c: ReturnType<typeof clients>;
test.before(async () => {
  env = await startTestController(['--max-policies', '3', '--max-intent-bytes', '200000']);
  c = clients(env.controller.address);
});
test.after.always(async () => {
  c?.close();
  await env?.stop();
});

const policy = (name: string, p: DeepPartial<Policy> = {}): ApplyPolicyRequest =>
  ApplyPolicyRequest.fromPartial({ policy: { metadata: { name, ...p.metadata }, spec: { rules: [{ priority: 1, action: Action.ACTION_DENY }], ...p.spec } } });

async function failure(run: Promise<unknown>): Promise<grpc.ServiceError> {
  const err = await run.then(
    () => undefined,
    (e: unknown) => e as grpc.ServiceError,
  );
  if (!err) throw new Error('accepted');
  return err;
}

/** The bytes the status takes in the trailer: grpc-message percent-encoded, the details base64. */
function trailerBytes(err: grpc.ServiceError): number {
  const raw = err.metadata?.get(STATUS_DETAILS_KEY)[0];
  const details = Buffer.isBuffer(raw) ? Math.ceil(raw.length / 3) * 4 : 0;
  return encodeURIComponent(err.details).length + details;
}

async function revision(): Promise<bigint> {
  return (await call(c.intent, c.intent.listPolicies, { pageSize: 1, pageToken: '', labelSelector: '' })).revision;
}

const bigSelectors: [string, string][] = [
  ['a 1 MiB selector', 'a'.repeat(1024 * 1024)],
  ['100,000 terms', Array.from({ length: 100_000 }, (_, i) => `k${i}=v`).join(',')],
  ['an 8,000-character bad value', `role=${'x'.repeat(8000)}`],
];

for (const [title, selector] of bigSelectors) {
  test.serial(`ListPolicies and ListNodes - ${title} is INVALID_ARGUMENT at label_selector, in a short status`, async (t) => {
    for (const [client, method] of [
      [c.intent, c.intent.listPolicies],
      [c.fleet, c.fleet.listNodes],
    ] as const) {
      const err = await failure(call(client, method as typeof c.intent.listPolicies, { pageSize: 0, pageToken: '', labelSelector: selector }));
      t.is(err.code, grpc.status.INVALID_ARGUMENT, err.details);
      t.deepEqual(detailsOf(err)?.fieldViolations.map((v) => [v.field, v.reason]), [['label_selector', 'INVALID_LABEL_SELECTOR']]);
      t.true(trailerBytes(err) < 2048, `${trailerBytes(err)} bytes`);
    }
  });
}

test.serial('ApplyPolicy - an 8,000-character label value, 10,000 match expressions, 300,000 values: INVALID_ARGUMENT, nothing written', async (t) => {
  const before = await revision();
  const cases: [ApplyPolicyRequest, string, string][] = [
    [policy('v', { metadata: { labels: { team: 'x'.repeat(8000) } } }), 'policy.metadata.labels["team"]', 'INVALID_LABEL_VALUE'],
    [policy('v', { spec: { nodeSelector: { matchLabels: {}, matchExpressions: Array.from({ length: 10_000 }, (_, i) => ({ key: `k${i}`, operator: Op.OPERATOR_EXISTS, values: [] })) } } }), 'policy.spec.node_selector', 'TOO_MANY_TERMS'],
    [policy('v', { spec: { nodeSelector: { matchLabels: {}, matchExpressions: [{ key: 'k', operator: Op.OPERATOR_IN, values: Array.from({ length: 300_000 }, (_, i) => `v${i}`) }] } } }), 'policy.spec.node_selector', 'TOO_MANY_VALUES'],
  ];
  for (const [req, field, reason] of cases) {
    const err = await failure(call(c.intent, c.intent.applyPolicy, req));
    t.is(err.code, grpc.status.INVALID_ARGUMENT, err.details);
    t.deepEqual(detailsOf(err)?.fieldViolations.map((v) => [v.field, v.reason]), [[field, reason]]);
    t.true(err.details.length <= 512);
    t.true(trailerBytes(err) < 2048, `${trailerBytes(err)} bytes`);
  }
  t.is(await revision(), before);
});

test.serial('ApplyPolicy - thousands of violations list a few dozen and count the rest, within 8 KiB', async (t) => {
  const rules = Array.from({ length: 5000 }, (_, i) => ({ priority: i + 1, action: Action.ACTION_DENY, sourceCidrs: [`${'9'.repeat(100)}/${i}`] }));
  const err = await failure(call(c.intent, c.intent.applyPolicy, policy('many', { spec: { rules } })));
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
  const v = detailsOf(err)!.fieldViolations;
  t.true(v.length <= MAX_LISTED_VIOLATIONS + 1, `${v.length} listed`);
  t.is(v[0]!.field, 'policy.spec.rules[0].source_cidrs[0]');
  t.is(v.at(-1)!.reason, MORE_VIOLATIONS_REASON);
  t.regex(v.at(-1)!.description, new RegExp(`and ${5000 - (v.length - 1)} more problems`));
  t.true(trailerBytes(err) < 8 * 1024, `${trailerBytes(err)} bytes`);
});

test.serial('gRPC server - a request over MAX_REQUEST_BYTES is RESOURCE_EXHAUSTED; the largest valid size is received', async (t) => {
  const over = await failure(call(c.intent, c.intent.listPolicies, { pageSize: 0, pageToken: '', labelSelector: 'a'.repeat(MAX_REQUEST_BYTES) }));
  t.is(over.code, grpc.status.RESOURCE_EXHAUSTED);
  const under = await failure(call(c.intent, c.intent.listPolicies, { pageSize: 0, pageToken: '', labelSelector: 'a'.repeat(MAX_REQUEST_BYTES - 64) }));
  t.is(under.code, grpc.status.INVALID_ARGUMENT, 'received and refused by the selector bound');
});

test.serial('ApplyPolicy - writes that would push the intent past its policy count or byte bound are refused, and nothing is written', async (t) => {
  const big = (name: string): ApplyPolicyRequest => policy(name, { metadata: { annotations: { blob: 'x'.repeat(120_000) } } });
  await call(c.intent, c.intent.applyPolicy, policy('small-1'));
  await call(c.intent, c.intent.applyPolicy, big('big-1'));
  const before = await revision();
  const bytes = await failure(call(c.intent, c.intent.applyPolicy, big('big-2')));
  t.is(bytes.code, grpc.status.FAILED_PRECONDITION, bytes.details);
  t.is(detailsOf(bytes)?.errorInfo?.reason, 'INTENT_TOO_LARGE');
  // Growing an existing policy counts only the difference.
  await call(c.intent, c.intent.applyPolicy, policy('small-1', { metadata: { labels: { a: 'b' } } }));
  await call(c.intent, c.intent.applyPolicy, policy('small-2'));
  const count = await failure(call(c.intent, c.intent.applyPolicy, policy('small-3')));
  t.is(count.code, grpc.status.FAILED_PRECONDITION, count.details);
  t.is(detailsOf(count)?.errorInfo?.reason, 'TOO_MANY_POLICIES');
  t.is(await revision(), before + 2n, 'only the two accepted writes moved the log');
  // Updating one of the three is still allowed.
  await call(c.intent, c.intent.applyPolicy, policy('small-2', { metadata: { labels: { a: 'c' } } }));
});

function connect(): { send(m: ConnectRequest): void; ended: Promise<grpc.ServiceError | null>; close(): void } {
  const client = new AgentServiceClient(env.controller.address, grpc.credentials.createInsecure());
  const stream = client.connect();
  stream.on('data', () => undefined);
  const ended = new Promise<grpc.ServiceError | null>((resolve) => {
    stream.on('error', (e: grpc.ServiceError) => resolve(e));
    stream.on('end', () => resolve(null));
  });
  return { send: (m) => void stream.write(m), ended, close: () => client.close() };
}

const hello = (nodeName: string, labels: Record<string, string> = {}): ConnectRequest => ({
  message: { $case: 'hello', hello: { nodeName, labels, info: undefined, interfaces: [], receivedRevision: 0n, appliedRevision: 0n, sessionId: 's', conditions: [], appliedUnknown: false, lastReport: undefined } },
});

test.serial('AgentService - a hello with an 8,000-character label value or 100 labels ends the stream INVALID_ARGUMENT and registers nothing', async (t) => {
  for (const labels of [{ site: 'x'.repeat(8000) }, Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`k${i}`, 'v']))]) {
    const s = connect();
    s.send(hello('bad-hello', labels));
    const err = await s.ended;
    s.close();
    t.is(err?.code, grpc.status.INVALID_ARGUMENT, err?.details);
    t.true((detailsOf(err)?.fieldViolations[0]?.field ?? '').startsWith('hello.labels'));
    t.true(trailerBytes(err!) < 2048);
  }
  await t.throwsAsync(call(c.fleet, c.fleet.getNode, { name: 'bad-hello' }), { message: /NOT_FOUND|not found/ });
});

test.serial('AgentService - counter reports with too many entries or overlong names end the stream INVALID_ARGUMENT and count nothing', async (t) => {
  const rule = (policy: string, priority: number, ruleName = '') => ({ rule: { policy, priority }, ruleName, packets: 1n, bytes: 1n, rateLimitedPackets: 0n });
  const reports = [
    Array.from({ length: MAX_COUNTER_RULES + 1 }, (_, i) => rule('p', i)),
    [rule('p'.repeat(8000), 1)],
    [rule('p', 1, 'r'.repeat(8000))],
  ];
  for (const [i, rules] of reports.entries()) {
    const s = connect();
    s.send(hello(`counting-${i}`));
    s.send({ message: { $case: 'counters', counters: { startTime: undefined, endTime: undefined, rules, interfaces: [], appliedRevision: 0n, conntrack: [], blocklists: [], loadBalancer: undefined, shadow: undefined } } });
    const err = await s.ended;
    s.close();
    t.is(err?.code, grpc.status.INVALID_ARGUMENT, err?.details);
    t.regex(detailsOf(err)?.fieldViolations[0]?.field ?? '', /^counters\.rules/);
    const got = await call(c.fleet, c.fleet.getNode, { name: `counting-${i}` });
    t.deepEqual(got.counters, [], 'nothing of the report was kept');
  }
});

test.serial('ApplyPolicy - non-ASCII values (percent-encoded 9 bytes a character in grpc-message) still fit 8 KiB', async (t) => {
  const labels = Object.fromEntries(Array.from({ length: 40 }, (_, i) => [`€${i}${'€'.repeat(4000)}`, '😀'.repeat(4000)]));
  const err = await failure(call(c.intent, c.intent.applyPolicy, policy('euro', { metadata: { name: '€'.repeat(4000), labels }, spec: { description: '€'.repeat(8000) } })));
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
  t.true(detailsOf(err)!.fieldViolations.length > 1);
  t.true(trailerBytes(err) < 7 * 1024, `${trailerBytes(err)} bytes`);
});

test('CounterStore - a node inventing rule keys report after report is held to MAX_COUNTED_RULES_PER_NODE', (t) => {
  const store = new CounterStore();
  const rules = (from: number) => Array.from({ length: 8192 }, (_, i) => ({ rule: { policy: 'p', priority: from + i }, ruleName: '', packets: 1n, bytes: 1n, rateLimitedPackets: 0n }));
  const reports = Math.ceil(MAX_COUNTED_RULES_PER_NODE / 8192) + 2;
  for (let r = 0; r < reports; r++) store.add('n', { startTime: undefined, loadBalancer: undefined, shadow: undefined, endTime: undefined, rules: rules(r * 8192), interfaces: [], appliedRevision: 0n, conntrack: [], blocklists: [] });
  t.is(store.nodeRules('n').length, MAX_COUNTED_RULES_PER_NODE);
  t.is(store.dropped, reports * 8192 - MAX_COUNTED_RULES_PER_NODE);
  // Known keys still count.
  store.add('n', { startTime: undefined, loadBalancer: undefined, shadow: undefined, endTime: undefined, rules: rules(0).slice(0, 1), interfaces: [], appliedRevision: 0n, conntrack: [], blocklists: [] });
  t.is(store.nodeRules('n')[0]!.packets, 2n);
});
