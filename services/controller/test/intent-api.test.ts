import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import {
  Action,
  ApplyPolicyRequest,
  MAX_POLICY_BYTES,
  Policy,
  PolicyEventType,
  Protocol,
  type WatchPoliciesResponse,
} from '@edgeplane/proto';
import { call, clients, detailsOf } from '../../../test/support/grpc.js';
import { policyOfSize } from '../../../test/support/sized-policy.js';
import { samplePolicy, startTestController } from './helpers.js';

let env: Awaited<ReturnType<typeof startTestController>>;
let c: ReturnType<typeof clients>;

test.before(async () => {
  env = await startTestController(['--rule-growth-guard', '50']);
  c = clients(env.controller.address);
});
test.after.always(async () => {
  c?.close();
  await env?.stop();
});

test.serial('IntentService - create, update, get and delete a policy, each one log revision', async (t) => {
  const created = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('crud', { app: 'web' }) }));
  t.true(created.created);
  t.true(created.revision > 0n);
  t.is(created.policy?.metadata?.resourceVersion, created.revision);
  t.is(created.policy?.metadata?.createRevision, created.revision);
  t.truthy(created.policy?.metadata?.createTime);

  const same = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('crud', { app: 'web' }) }));
  t.true(same.unchanged, 'an identical apply writes nothing');
  t.is(same.revision, 0n);

  const updated = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('crud', { app: 'web' }, 3) }));
  t.false(updated.created);
  t.is(updated.revision, created.revision + 1n);
  t.is(updated.policy?.metadata?.createRevision, created.revision);

  const got = await call(c.intent, c.intent.getPolicy, { name: 'crud' });
  t.is(got.policy?.spec?.rules.length, 3);
  t.is(got.policy?.metadata?.resourceVersion, updated.revision);

  const deleted = await call(c.intent, c.intent.deletePolicy, { name: 'crud', expectedResourceVersion: updated.revision, validateOnly: false, allowMissing: false });
  t.is(deleted.revision, updated.revision + 1n);
  const missing = await t.throwsAsync<grpc.ServiceError>(call(c.intent, c.intent.getPolicy, { name: 'crud' }));
  t.is(missing?.code, grpc.status.NOT_FOUND);
  const again = await call(c.intent, c.intent.deletePolicy, { name: 'crud', validateOnly: false, allowMissing: true });
  t.is(again.revision, 0n);
});

test.serial('IntentService - optimistic concurrency: a stale expected version is ABORTED and writes nothing', async (t) => {
  const first = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('occ'), expectedResourceVersion: 0n }));
  const dup = await t.throwsAsync<grpc.ServiceError>(call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('occ'), expectedResourceVersion: 0n })));
  t.is(dup?.code, grpc.status.ABORTED, 'create-only (expected 0) fails once it exists');
  const second = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('occ', {}, 2), expectedResourceVersion: first.revision }));
  const stale = await t.throwsAsync<grpc.ServiceError>(call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('occ', {}, 3), expectedResourceVersion: first.revision })));
  t.is(stale?.code, grpc.status.ABORTED);
  const got = await call(c.intent, c.intent.getPolicy, { name: 'occ' });
  t.is(got.policy?.metadata?.resourceVersion, second.revision);
  t.is(got.policy?.spec?.rules.length, 2);
});

test.serial('IntentService - validate_only validates and writes nothing', async (t) => {
  const before = (await call(c.intent, c.intent.listPolicies, { pageSize: 1, pageToken: '', labelSelector: '' })).revision;
  const res = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('dry'), validateOnly: true }));
  t.is(res.revision, 0n);
  t.true(res.created);
  const after = (await call(c.intent, c.intent.listPolicies, { pageSize: 1, pageToken: '', labelSelector: '' })).revision;
  t.is(after, before);
  await t.throwsAsync(call(c.intent, c.intent.getPolicy, { name: 'dry' }));
});

test.serial('IntentService - a policy of MAX_POLICY_BYTES is accepted; one byte more is INVALID_ARGUMENT with POLICY_TOO_LARGE at `policy`, and nothing is written', async (t) => {
  const before = (await call(c.intent, c.intent.listPolicies, { pageSize: 1, pageToken: '', labelSelector: '' })).revision;
  const ok = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: policyOfSize('at-limit', MAX_POLICY_BYTES), validateOnly: true, allowLargeGrowth: true }));
  t.true(ok.created);
  const err = await t.throwsAsync<grpc.ServiceError>(call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: policyOfSize('over-limit', MAX_POLICY_BYTES + 1), allowLargeGrowth: true })));
  t.is(err?.code, grpc.status.INVALID_ARGUMENT);
  t.deepEqual(detailsOf(err)?.fieldViolations, [{ field: 'policy', description: `${MAX_POLICY_BYTES + 1} bytes encoded; at most ${MAX_POLICY_BYTES}`, reason: 'POLICY_TOO_LARGE' }]);
  t.is((await call(c.intent, c.intent.listPolicies, { pageSize: 1, pageToken: '', labelSelector: '' })).revision, before);
});

test.serial('IntentService - growing past the rule guard needs allow_large_growth', async (t) => {
  const err = await t.throwsAsync<grpc.ServiceError>(call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('big', {}, 51) })));
  t.is(err?.code, grpc.status.FAILED_PRECONDITION);
  t.is(detailsOf(err)?.errorInfo?.reason, 'RULE_GROWTH_GUARD');
  const ok = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('big', {}, 51), allowLargeGrowth: true }));
  t.true(ok.revision > 0n);
  // Shrinking, or staying the same size, needs no override.
  const shrink = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('big', {}, 10) }));
  t.true(shrink.revision > ok.revision);
});

test.serial('IntentService - list pages through policies in name order and filters by labels', async (t) => {
  for (let i = 0; i < 7; i++) {
    await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy(`page-${i}`, { group: 'paging', parity: i % 2 ? 'odd' : 'even' }) }));
  }
  const names: string[] = [];
  let token = '';
  let pages = 0;
  do {
    const page = await call(c.intent, c.intent.listPolicies, { pageSize: 3, pageToken: token, labelSelector: 'group=paging' });
    names.push(...page.policies.map((p) => p.metadata!.name));
    token = page.nextPageToken;
    pages++;
  } while (token);
  t.is(pages, 3);
  t.deepEqual(names, ['page-0', 'page-1', 'page-2', 'page-3', 'page-4', 'page-5', 'page-6']);
  const odd = await call(c.intent, c.intent.listPolicies, { pageSize: 0, pageToken: '', labelSelector: 'group=paging,parity in (odd)' });
  t.deepEqual(odd.policies.map((p) => p.metadata!.name), ['page-1', 'page-3', 'page-5']);
  const bad = await t.throwsAsync<grpc.ServiceError>(call(c.intent, c.intent.listPolicies, { pageSize: 0, pageToken: 'garbage', labelSelector: '' }));
  t.is(detailsOf(bad)?.fieldViolations[0]?.field, 'page_token');
});

function collect(stream: grpc.ClientReadableStream<WatchPoliciesResponse>, until: (events: WatchPoliciesResponse[]) => boolean): Promise<WatchPoliciesResponse[]> {
  const events: WatchPoliciesResponse[] = [];
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`watch timed out with ${events.length} events`)), 10_000);
    stream.on('data', (e: WatchPoliciesResponse) => {
      events.push(e);
      if (until(events)) {
        clearTimeout(timer);
        stream.cancel();
        resolve(events);
      }
    });
    stream.on('error', (err: grpc.ServiceError) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
  });
}

test.serial('IntentService - watch from a revision replays history, then streams live changes', async (t) => {
  const a = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('watch-a', { w: 'yes' }) }));
  const b = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('watch-b', { w: 'yes' }) }));
  await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('watch-unlabelled') }));
  const stream = c.intent.watchPolicies({ startRevision: a.revision - 1n, labelSelector: 'w=yes' });
  const done = collect(stream, (ev) => ev.some((e) => e.type === PolicyEventType.POLICY_EVENT_TYPE_DELETED));
  await new Promise((r) => setTimeout(r, 200));
  const mod = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('watch-a', { w: 'yes' }, 2) }));
  const del = await call(c.intent, c.intent.deletePolicy, { name: 'watch-b', validateOnly: false, allowMissing: false });
  const events = await done;
  const summary = events.map((e) => [PolicyEventType[e.type], e.policy?.metadata?.name ?? '', e.revision]);
  t.deepEqual(summary.filter((s) => s[0] !== 'POLICY_EVENT_TYPE_BOOKMARK'), [
    ['POLICY_EVENT_TYPE_ADDED', 'watch-a', a.revision],
    ['POLICY_EVENT_TYPE_ADDED', 'watch-b', b.revision],
    ['POLICY_EVENT_TYPE_MODIFIED', 'watch-a', mod.revision],
    ['POLICY_EVENT_TYPE_DELETED', 'watch-b', del.revision],
  ]);
  t.is(events.filter((e) => e.type === PolicyEventType.POLICY_EVENT_TYPE_BOOKMARK).length, 1);
});

test.serial('IntentService - watch from 0 sends the current state first', async (t) => {
  const stream = c.intent.watchPolicies({ startRevision: 0n, labelSelector: 'group=paging' });
  const events = await collect(stream, (ev) => ev.some((e) => e.type === PolicyEventType.POLICY_EVENT_TYPE_BOOKMARK));
  t.is(events.filter((e) => e.type === PolicyEventType.POLICY_EVENT_TYPE_ADDED).length, 7);
  const future = c.intent.watchPolicies({ startRevision: 1_000_000n, labelSelector: '' });
  const err = await t.throwsAsync<grpc.ServiceError>(collect(future, () => false));
  t.is(err?.code, grpc.status.INVALID_ARGUMENT);
});

test.serial('IntentService - IPv6 rules and 64-bit rate limits round-trip through the log', async (t) => {
  const p = Policy.fromPartial({
    metadata: { name: 'v6' },
    spec: { rules: [{ priority: 1, sourceCidrs: ['2001:db8::/32'], protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: 53 }], action: Action.ACTION_RATE_LIMIT, rateLimit: { packetsPerSecond: 999_999_999n, burst: 1_000_000_000n } }] },
  });
  await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: p }));
  const got = await call(c.intent, c.intent.getPolicy, { name: 'v6' });
  t.deepEqual(got.policy?.spec?.rules, p.spec?.rules);
});

test.serial('IntentService - watch from a revision replays policies written as patches whole, their base read from the log', async (t) => {
  const big = samplePolicy('watch-patched', { patched: 'yes' }, 300);
  const first = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: big, allowLargeGrowth: true }));
  const revisions: bigint[] = [];
  for (const port of [7, 8]) {
    big.spec!.rules[100] = { ...big.spec!.rules[100]!, destinationPorts: [{ first: port, last: 0 }] };
    revisions.push((await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: big }))).revision);
  }
  const now = (await call(c.intent, c.intent.getPolicy, { name: 'watch-patched' })).policy!;
  t.is(now.metadata?.resourceVersion, revisions[1]);
  const stream = c.intent.watchPolicies({ startRevision: first.revision, labelSelector: 'patched=yes' });
  const events = await collect(stream, (ev) => ev.some((e) => e.type === PolicyEventType.POLICY_EVENT_TYPE_BOOKMARK));
  const modified = events.filter((e) => e.type === PolicyEventType.POLICY_EVENT_TYPE_MODIFIED);
  t.deepEqual(modified.map((e) => e.revision), revisions);
  t.deepEqual(modified.map((e) => e.policy?.spec?.rules[100]?.destinationPorts[0]?.first), [7, 8]);
  t.deepEqual(Policy.encode(modified[1]!.policy!).finish(), Policy.encode(now).finish());
});
