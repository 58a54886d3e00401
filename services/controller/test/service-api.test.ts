// The Service resource through the real controller: mutual TLS, identities from its CA, the
// embedded nats-server and the signed log. Every call goes over gRPC as a client's would.
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { ApplyPolicyRequest, ApplyServiceRequest, DeleteServiceRequest, GetRolloutRequest, Protocol, RolloutKind, RolloutState, Service, type DeepPartial, type PolicySpec, type ServiceSpec } from '@edgeplane/proto';
import { call, detailsOf } from '../../../test/support/grpc.js';
import { samplePolicy } from './helpers.js';
import { clientsFor, newKey, startTlsController, type ClientCert, type Clients } from './trust-helpers.js';

const MAX_SERVICES = 6;
let env: Awaited<ReturnType<typeof startTlsController>>;
let admin: Clients;
let operator: Clients;
let viewer: Clients;

async function issue(role: string, name: string): Promise<ClientCert> {
  const key = newKey();
  const res = await call(admin.trust, admin.trust.issueCertificate, { role, name, publicKey: key.publicDer, lifetime: undefined });
  return { keyPem: key.keyPem, certPem: res.certificate };
}

test.before(async () => {
  env = await startTlsController(['--max-services', String(MAX_SERVICES)]);
  admin = clientsFor(env.controller.address, env.ca, env.admin);
  operator = clientsFor(env.controller.address, env.ca, await issue('operator', 'ci'));
  viewer = clientsFor(env.controller.address, env.ca, await issue('viewer', 'alice'));
});
test.after.always(async () => {
  for (const c of [admin, operator, viewer]) c?.close();
  await env?.stop();
});

/** A valid service: `vip`:`port` TCP to two backends, with `spec` laid over it. */
function sampleService(name: string, spec: DeepPartial<ServiceSpec> = {}, labels: Record<string, string> = {}): Service {
  return Service.fromPartial({
    metadata: { name, labels },
    spec: { nodeSelector: { matchLabels: { site: 'ams1' } }, vip: '192.0.2.10', protocol: Protocol.PROTOCOL_TCP, port: 443, backends: [{ address: '10.0.0.1' }, { address: '10.0.0.2', weight: 3 }], ...spec },
  });
}

const apply = (service: Service, extra: Partial<ApplyServiceRequest> = {}, as: Clients = operator) => call(as.intent, as.intent.applyService, ApplyServiceRequest.fromPartial({ service, ...extra }));
const remove = (name: string, extra: Partial<DeleteServiceRequest> = {}, as: Clients = operator) => call(as.intent, as.intent.deleteService, DeleteServiceRequest.fromPartial({ name, ...extra }));
const list = (labelSelector = '', pageSize = 0, pageToken = '') => call(viewer.intent, viewer.intent.listServices, { pageSize, pageToken, labelSelector });

async function refusal(p: Promise<unknown>): Promise<grpc.ServiceError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e as grpc.ServiceError,
  );
  if (!err) throw new Error('the call succeeded');
  return err;
}

test.serial('IntentService services - create, unchanged, update, get and delete, each one log revision', async (t) => {
  const created = await apply(sampleService('crud'));
  t.true(created.created);
  t.true(created.revision > 0n);
  t.is(created.service?.metadata?.resourceVersion, created.revision);
  t.is(created.service?.metadata?.createRevision, created.revision);
  t.truthy(created.service?.metadata?.createTime);

  const same = await apply(sampleService('crud'));
  t.true(same.unchanged, 'an identical apply writes nothing');
  t.is(same.revision, 0n);
  t.is(same.service?.metadata?.resourceVersion, created.revision);

  const updated = await apply(sampleService('crud', { backends: [{ address: '10.0.0.1', weight: 0 }, { address: '10.0.0.3' }] }));
  t.false(updated.created);
  t.is(updated.revision, created.revision + 1n);
  t.is(updated.service?.metadata?.createRevision, created.revision);

  const got = await call(viewer.intent, viewer.intent.getService, { name: 'crud' });
  t.is(got.revision, updated.revision);
  t.is(got.service?.metadata?.resourceVersion, updated.revision);
  t.deepEqual(
    got.service?.spec?.backends.map((b) => [b.address, b.weight]),
    [
      ['10.0.0.1', 0],
      ['10.0.0.3', undefined],
    ],
    'a drained weight (0) and an unset weight (1) stay apart',
  );

  const deleted = await remove('crud', { expectedResourceVersion: updated.revision });
  t.is(deleted.revision, updated.revision + 1n);
  t.is((await refusal(call(viewer.intent, viewer.intent.getService, { name: 'crud' }))).code, grpc.status.NOT_FOUND);
  t.is((await refusal(remove('crud'))).code, grpc.status.NOT_FOUND);
  t.is((await remove('crud', { allowMissing: true })).revision, 0n);
});

test.serial('IntentService services - a service and a policy may share a name; deleting one leaves the other', async (t) => {
  await call(operator.intent, operator.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('shared') }));
  await apply(sampleService('shared'));
  await remove('shared');
  t.truthy((await call(viewer.intent, viewer.intent.getPolicy, { name: 'shared' })).policy);
  await call(operator.intent, operator.intent.deletePolicy, { name: 'shared', validateOnly: false, allowMissing: false });
});

test.serial('IntentService services - optimistic concurrency: a stale expected version is ABORTED and writes nothing', async (t) => {
  const first = await apply(sampleService('occ'), { expectedResourceVersion: 0n });
  t.is((await refusal(apply(sampleService('occ'), { expectedResourceVersion: 0n }))).code, grpc.status.ABORTED, 'create-only (expected 0) fails once it exists');
  const second = await apply(sampleService('occ', { port: 444 }), { expectedResourceVersion: first.revision });
  t.is((await refusal(apply(sampleService('occ', { port: 445 }), { expectedResourceVersion: first.revision }))).code, grpc.status.ABORTED);
  t.is((await refusal(remove('occ', { expectedResourceVersion: first.revision }))).code, grpc.status.ABORTED);
  const got = await call(viewer.intent, viewer.intent.getService, { name: 'occ' });
  t.is(got.service?.metadata?.resourceVersion, second.revision);
  t.is(got.service?.spec?.port, 444);
  await remove('occ');
});

test.serial('IntentService services - validate_only validates and writes nothing', async (t) => {
  const before = (await list()).revision;
  const res = await apply(sampleService('dry'), { validateOnly: true });
  t.is(res.revision, 0n);
  t.true(res.created);
  t.is((await list()).revision, before);
  t.is((await refusal(call(viewer.intent, viewer.intent.getService, { name: 'dry' }))).code, grpc.status.NOT_FOUND);
  await apply(sampleService('dry'));
  t.is((await remove('dry', { validateOnly: true })).revision, 0n);
  t.truthy((await call(viewer.intent, viewer.intent.getService, { name: 'dry' })).service);
  await remove('dry');
});

test.serial('IntentService services - an invalid service is INVALID_ARGUMENT with field violations and writes nothing', async (t) => {
  const before = (await list()).revision;
  const err = await refusal(apply(sampleService('bad', { vip: '2001:DB8::1', backends: [{ address: '10.0.0.1' }, { address: '10.0.0.1', port: 443 }], port: 0 })));
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
  const fields = Object.fromEntries(detailsOf(err)!.fieldViolations.map((v) => [v.field, v.reason]));
  t.like(fields, { 'service.spec.vip': 'NON_CANONICAL_ADDRESS', 'service.spec.port': 'PORT_OUT_OF_RANGE' });
  t.regex(detailsOf(err)!.fieldViolations.find((v) => v.field === 'service.spec.vip')!.description, /write 2001:db8::1/);
  t.is((await list()).revision, before);
});

test.serial('IntentService services - a second service on the same VIP, port and protocol is refused, naming the first', async (t) => {
  await apply(sampleService('first'));
  const err = await refusal(apply(sampleService('second', { backends: [{ address: '10.0.0.9' }] })));
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
  const v = detailsOf(err)!.fieldViolations;
  t.deepEqual(v.map((x) => [x.field, x.reason]), [['service.spec.vip', 'VIP_IN_USE']]);
  t.regex(v[0]!.description, /"first"/);
  // Another port or protocol on the same VIP is another service; the first may change itself.
  await apply(sampleService('second', { port: 80 }));
  await apply(sampleService('third', { protocol: Protocol.PROTOCOL_UDP }));
  await apply(sampleService('first', { backends: [{ address: '10.0.0.7' }] }));
  // Moving a service onto a taken VIP is refused too.
  t.is((await refusal(apply(sampleService('second')))).code, grpc.status.INVALID_ARGUMENT);
  for (const name of ['first', 'second', 'third']) await remove(name);
});

const longWaves = { waves: [{ target: { $case: 'percent' as const, percent: 50 }, bakeTime: { seconds: 600n, nanos: 0 } }, { target: { $case: 'percent' as const, percent: 100 } }] };
const stagedStrategy = { strategy: { $case: 'staged' as const, staged: longWaves } };
const rolloutOf = (name: string, kind: RolloutKind) => call(viewer.fleet, viewer.fleet.getRollout, { name, kind });
const steer = (name: string, kind: RolloutKind, action: 'pause' | 'abort', reason = '') =>
  action === 'pause' ? call(operator.intent, operator.intent.pauseRollout, { name, kind, reason }) : call(operator.intent, operator.intent.abortRollout, { name, kind, reason });

test.serial('IntentService services - a staged strategy starts a rollout of the service, apart from a policy of the same name', async (t) => {
  const v1 = await apply(sampleService('twin', { vip: '192.0.2.20' }));
  const policy = await call(operator.intent, operator.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('twin', {}, 1, { rolloutStrategy: stagedStrategy } as Partial<PolicySpec>) }));
  const v2 = await apply(sampleService('twin', { vip: '192.0.2.20', backends: [{ address: '10.0.0.9' }], rolloutStrategy: stagedStrategy }));
  t.false(v2.unchanged);
  const svc = (await rolloutOf('twin', RolloutKind.ROLLOUT_KIND_SERVICE)).status!.rollout!;
  t.is(svc.kind, RolloutKind.ROLLOUT_KIND_SERVICE);
  t.is(svc.state, RolloutState.ROLLOUT_STATE_PROGRESSING);
  t.is(svc.changeRevision, v2.revision);
  t.deepEqual(svc.previousService?.spec?.backends.map((b) => b.address), ['10.0.0.1', '10.0.0.2'], 'the record holds the service it replaces');
  t.is(svc.previous, undefined);
  // A request without a kind (as before services had rollouts) names the policy's.
  const pol = (await call(viewer.fleet, viewer.fleet.getRollout, GetRolloutRequest.fromPartial({ name: 'twin' }))).status!.rollout!;
  t.is(pol.kind, RolloutKind.ROLLOUT_KIND_POLICY);
  t.is(pol.changeRevision, policy.revision);
  const listed = (await call(viewer.fleet, viewer.fleet.listRollouts, { pageSize: 0, pageToken: '', activeOnly: true })).rollouts.map((r) => [r.rollout!.kind, r.rollout!.name]);
  t.deepEqual(listed, [[RolloutKind.ROLLOUT_KIND_SERVICE, 'twin'], [RolloutKind.ROLLOUT_KIND_POLICY, 'twin']], 'newest first, both kinds');

  // A change while the rollout runs is refused; the same apply again is a no-op.
  t.true((await apply(sampleService('twin', { vip: '192.0.2.20', backends: [{ address: '10.0.0.9' }], rolloutStrategy: stagedStrategy }))).unchanged);
  const busy = await refusal(apply(sampleService('twin', { vip: '192.0.2.20', backends: [{ address: '10.0.0.8' }] })));
  t.is(busy.code, grpc.status.FAILED_PRECONDITION);
  t.regex(busy.details, /service twin has a rollout in progress \(wave 1 of 2\)/);

  // Steering one leaves the other alone.
  await steer('twin', RolloutKind.ROLLOUT_KIND_SERVICE, 'pause', 'looking');
  t.is((await rolloutOf('twin', RolloutKind.ROLLOUT_KIND_SERVICE)).status!.rollout!.state, RolloutState.ROLLOUT_STATE_PAUSED);
  t.is((await rolloutOf('twin', RolloutKind.ROLLOUT_KIND_POLICY)).status!.rollout!.state, RolloutState.ROLLOUT_STATE_PROGRESSING);
  const aborted = await steer('twin', RolloutKind.ROLLOUT_KIND_SERVICE, 'abort', 'not today');
  t.is(aborted.rollout?.state, RolloutState.ROLLOUT_STATE_ABORTED);
  const reverted = (await call(viewer.intent, viewer.intent.getService, { name: 'twin' })).service!;
  t.deepEqual(reverted.spec?.backends.map((b) => b.address), ['10.0.0.1', '10.0.0.2'], 'abort put the previous version back');
  t.is(reverted.metadata?.resourceVersion, aborted.revision);
  t.is(reverted.metadata?.createRevision, v1.revision);
  t.is((await rolloutOf('twin', RolloutKind.ROLLOUT_KIND_POLICY)).status!.rollout!.state, RolloutState.ROLLOUT_STATE_PROGRESSING, 'the policy of the same name still rolls out');
  await steer('twin', RolloutKind.ROLLOUT_KIND_POLICY, 'abort');
  t.is((await refusal(call(viewer.intent, viewer.intent.getPolicy, { name: 'twin' }))).code, grpc.status.NOT_FOUND, 'the policy its rollout created is gone');
  t.is((await call(viewer.intent, viewer.intent.getService, { name: 'twin' })).service?.metadata?.resourceVersion, aborted.revision, 'the service is untouched');
  // After the rollout, changes go through again.
  t.false((await apply(sampleService('twin', { vip: '192.0.2.20', backends: [{ address: '10.0.0.8' }] }))).unchanged);
  await remove('twin');
});

test.serial('IntentService services - aborting the rollout that created a service deletes it; deleting a service ends its rollout', async (t) => {
  await apply(sampleService('fresh', { vip: '192.0.2.21', rolloutStrategy: stagedStrategy }));
  t.is((await rolloutOf('fresh', RolloutKind.ROLLOUT_KIND_SERVICE)).status!.rollout!.previousService, undefined);
  await steer('fresh', RolloutKind.ROLLOUT_KIND_SERVICE, 'abort');
  t.is((await refusal(call(viewer.intent, viewer.intent.getService, { name: 'fresh' }))).code, grpc.status.NOT_FOUND);
  t.is((await rolloutOf('fresh', RolloutKind.ROLLOUT_KIND_SERVICE)).status!.rollout!.state, RolloutState.ROLLOUT_STATE_ABORTED, 'the record stays, final');
  t.is((await refusal(rolloutOf('fresh', RolloutKind.ROLLOUT_KIND_POLICY))).code, grpc.status.NOT_FOUND, 'no policy named fresh has a rollout');

  await apply(sampleService('doomed', { vip: '192.0.2.22', rolloutStrategy: stagedStrategy }));
  await remove('doomed');
  t.is((await refusal(rolloutOf('doomed', RolloutKind.ROLLOUT_KIND_SERVICE))).code, grpc.status.NOT_FOUND, 'the record went with the service, as a policy\'s does');
  t.true((await apply(sampleService('doomed', { vip: '192.0.2.22' }))).created, 'and a new one is written at once');
  await remove('doomed');
  // Steering a rollout that does not exist, or of an unknown kind, is refused.
  t.is((await refusal(steer('nothing', RolloutKind.ROLLOUT_KIND_SERVICE, 'pause'))).code, grpc.status.NOT_FOUND);
  const bad = await refusal(rolloutOf('fresh', 7 as RolloutKind));
  t.is(bad.code, grpc.status.INVALID_ARGUMENT);
  t.deepEqual(detailsOf(bad)!.fieldViolations.map((v) => [v.field, v.reason]), [['kind', 'INVALID_KIND']]);
});

test.serial('IntentService services - list pages in name order and filters by labels', async (t) => {
  for (let i = 0; i < 5; i++) await apply(sampleService(`page-${i}`, { port: 1000 + i }, { tier: i % 2 ? 'odd' : 'even' }));
  const first = await list('', 2);
  t.deepEqual(first.services.map((s) => s.metadata?.name), ['page-0', 'page-1']);
  const second = await list('', 2, first.nextPageToken);
  t.deepEqual(second.services.map((s) => s.metadata?.name), ['page-2', 'page-3']);
  const last = await list('', 2, second.nextPageToken);
  t.deepEqual(last.services.map((s) => s.metadata?.name), ['page-4']);
  t.is(last.nextPageToken, '');
  t.deepEqual((await list('tier=odd')).services.map((s) => s.metadata?.name), ['page-1', 'page-3']);
  t.is((await refusal(list('tier in (odd'))).code, grpc.status.INVALID_ARGUMENT);
  t.is((await refusal(list('', 2, 'not-a-token'))).code, grpc.status.INVALID_ARGUMENT);
});

test.serial('IntentService services - creating past --max-services is FAILED_PRECONDITION; updates still pass', async (t) => {
  // The list test left five; one more reaches the bound.
  await apply(sampleService('page-5', { port: 1005 }));
  const err = await refusal(apply(sampleService('page-6', { port: 1006 })));
  t.is(err.code, grpc.status.FAILED_PRECONDITION);
  t.is(detailsOf(err)?.errorInfo?.reason, 'TOO_MANY_SERVICES');
  await apply(sampleService('page-5', { port: 1007 }));
  for (let i = 0; i <= 5; i++) await remove(`page-${i}`);
});

test.serial('IntentService services - a viewer reads and cannot write; an operator writes', async (t) => {
  await apply(sampleService('authz'), {}, operator);
  t.truthy((await call(viewer.intent, viewer.intent.getService, { name: 'authz' })).service);
  t.true((await list()).services.some((s) => s.metadata?.name === 'authz'));
  const denied = await refusal(apply(sampleService('by-viewer', { port: 9 }), {}, viewer));
  t.is(denied.code, grpc.status.PERMISSION_DENIED);
  t.is((await refusal(remove('authz', {}, viewer))).code, grpc.status.PERMISSION_DENIED);
  t.is((await refusal(call(viewer.intent, viewer.intent.getService, { name: 'by-viewer' }))).code, grpc.status.NOT_FOUND, 'the refused apply wrote nothing');
  await remove('authz', {}, admin);
});

test.serial('IntentService services - too many backends on the wire are refused before decoding, like rules of a policy', async (t) => {
  const backends = Array.from({ length: 200_000 }, (_, i) => ({ address: `10.${(i >> 16) & 255}.${(i >> 8) & 255}.${i & 255}` }));
  const err = await refusal(apply(sampleService('huge', { backends })));
  t.is(err.code, grpc.status.INVALID_ARGUMENT);
  t.deepEqual(detailsOf(err)!.fieldViolations.map((v) => [v.field, v.reason]), [['service.spec.backends', 'TOO_MANY_BACKENDS']]);
  // The wire check's message names the field; validation's counts problems.
  t.regex(err.details, /^invalid service: service\.spec\.backends: 200000 backends/);
});
