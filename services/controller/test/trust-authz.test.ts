// Red team against a controller started with its defaults (mutual TLS, identities from its CA):
// one node's real certificate, no certificate at all, and each operator role.
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { AbortRolloutRequest, ApplyPolicyRequest, DeletePolicyRequest, PauseRolloutRequest, RolloutKind } from '@edgeplane/proto';
import { readFileSync } from 'node:fs';
import { X509Certificate } from 'node:crypto';
import { join } from 'node:path';
import { call, detailsOf, standardServices } from '../../../test/support/grpc.js';
import { agentStream, clientsFor, createToken, enroll, newKey, startTlsController, type ClientCert, type Clients } from './trust-helpers.js';
import { samplePolicy } from './helpers.js';

let env: Awaited<ReturnType<typeof startTlsController>>;
let admin: Clients;
let anon: Clients;
let node1: ClientCert;
let n1: Clients;
const open: Clients[] = [];

function as(cert?: ClientCert): Clients {
  const c = clientsFor(env.controller.address, env.ca, cert);
  open.push(c);
  return c;
}

async function refused(p: Promise<unknown>, code: grpc.status, reason?: string): Promise<void> {
  const err = (await p.then(
    () => undefined,
    (e: unknown) => e,
  )) as grpc.ServiceError | undefined;
  if (!err) throw new Error(`expected ${grpc.status[code]}, the call succeeded`);
  if (err.code !== code) throw new Error(`expected ${grpc.status[code]}, got ${grpc.status[err.code]}: ${err.details}`);
  if (reason && detailsOf(err)?.errorInfo?.reason !== reason) throw new Error(`expected reason ${reason}, got ${detailsOf(err)?.errorInfo?.reason}`);
}

async function issue(role: string, name: string): Promise<ClientCert> {
  const key = newKey();
  const res = await call(admin.trust, admin.trust.issueCertificate, { role, name, publicKey: key.publicDer, lifetime: undefined });
  return { keyPem: key.keyPem, certPem: res.certificate };
}

test.before(async () => {
  env = await startTlsController();
  admin = as(env.admin);
  anon = as();
  node1 = await enroll(anon, await createToken(admin), 'edge-1');
  n1 = as(node1);
});
test.after.always(async () => {
  for (const c of open) c.close();
  await env?.stop();
});

const list = { pageSize: 10, pageToken: '', labelSelector: '' };

test('no certificate - every method but Enroll is UNAUTHENTICATED', async (t) => {
  await refused(call(anon.intent, anon.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('p') })), grpc.status.UNAUTHENTICATED, 'NO_IDENTITY');
  await refused(call(anon.intent, anon.intent.listPolicies, list), grpc.status.UNAUTHENTICATED, 'NO_IDENTITY');
  await refused(call(anon.trust, anon.trust.createJoinToken, { ttl: undefined, labels: {} }), grpc.status.UNAUTHENTICATED);
  const s = agentStream(anon.agent, 'edge-9');
  t.is((await s.end())?.code, grpc.status.UNAUTHENTICATED);
  const nodes = await call(admin.fleet, admin.fleet.listNodes, list);
  t.false(nodes.nodes.some((n) => n.name === 'edge-9'), 'no node appeared');
});

test('node certificate - cannot apply, delete, read policies, create tokens or issue certificates', async (t) => {
  await call(admin.intent, admin.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('keep') }));
  await refused(call(n1.intent, n1.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('evil') })), grpc.status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
  await refused(call(n1.intent, n1.intent.deletePolicy, DeletePolicyRequest.fromPartial({ name: 'keep' })), grpc.status.PERMISSION_DENIED);
  await refused(call(n1.intent, n1.intent.abortRollout, AbortRolloutRequest.fromPartial({ name: 'keep', reason: 'x', kind: RolloutKind.ROLLOUT_KIND_SERVICE })), grpc.status.PERMISSION_DENIED);
  await refused(call(n1.intent, n1.intent.listPolicies, list), grpc.status.PERMISSION_DENIED);
  await refused(call(n1.trust, n1.trust.createJoinToken, { ttl: undefined, labels: {} }), grpc.status.PERMISSION_DENIED);
  await refused(call(n1.trust, n1.trust.issueCertificate, { role: 'admin', name: 'me', publicKey: newKey().publicDer, lifetime: undefined }), grpc.status.PERMISSION_DENIED);
  const after = await call(admin.intent, admin.intent.listPolicies, list);
  t.deepEqual(after.policies.map((p) => p.metadata?.name), ['keep'], 'nothing changed');
});

test('node certificate - speaks for its own node only; cannot register a new node', async (t) => {
  const own = agentStream(n1.agent, 'edge-1');
  t.teardown(() => own.close());
  await own.next((m) => m.message?.$case === 'welcome');
  // Another enrolled node, and a name never enrolled.
  await enroll(anon, await createToken(admin), 'edge-2');
  for (const victim of ['edge-2', 'brand-new']) {
    const s = agentStream(n1.agent, victim);
    const status = await s.end();
    t.is(status?.code, grpc.status.PERMISSION_DENIED, victim);
    t.is(detailsOf(status)?.errorInfo?.reason, 'NODE_MISMATCH');
  }
  const nodes = await call(admin.fleet, admin.fleet.listNodes, list);
  const names = nodes.nodes.map((n) => n.name);
  t.true(names.includes('edge-1'));
  t.false(names.includes('edge-2'), 'edge-2 was not reported for');
  t.false(names.includes('brand-new'), 'no node was registered');
  // An operator or admin certificate is no node either.
  const s = agentStream(admin.agent, 'edge-2');
  t.is((await s.end())?.code, grpc.status.PERMISSION_DENIED);
});

test('viewer - reads, cannot write', async (t) => {
  const v = as(await issue('viewer', 'alice'));
  t.truthy(await call(v.intent, v.intent.listPolicies, list));
  t.truthy(await call(v.fleet, v.fleet.listNodes, list));
  await refused(call(v.intent, v.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('v') })), grpc.status.PERMISSION_DENIED);
  await refused(call(v.intent, v.intent.deletePolicy, DeletePolicyRequest.fromPartial({ name: 'keep' })), grpc.status.PERMISSION_DENIED);
  await refused(call(v.intent, v.intent.pauseRollout, PauseRolloutRequest.fromPartial({ name: 'keep' })), grpc.status.PERMISSION_DENIED);
});

test('operator - applies and deletes, cannot create tokens, revoke or issue certificates', async (t) => {
  const o = as(await issue('operator', 'ci'));
  const applied = await call(o.intent, o.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('by-operator') }));
  t.true(applied.revision > 0n);
  await call(o.intent, o.intent.deletePolicy, DeletePolicyRequest.fromPartial({ name: 'by-operator' }));
  await refused(call(o.trust, o.trust.createJoinToken, { ttl: undefined, labels: {} }), grpc.status.PERMISSION_DENIED);
  await refused(call(o.trust, o.trust.revokeNode, { nodeName: 'edge-1', reason: '' }), grpc.status.PERMISSION_DENIED);
  await refused(call(o.trust, o.trust.issueCertificate, { role: 'admin', name: 'me', publicKey: newKey().publicDer, lifetime: undefined }), grpc.status.PERMISSION_DENIED);
});

test('certificate issue - node role and bad keys are refused', async (t) => {
  await refused(call(admin.trust, admin.trust.issueCertificate, { role: 'node', name: 'edge-7', publicKey: newKey().publicDer, lifetime: undefined }), grpc.status.INVALID_ARGUMENT);
  await refused(call(admin.trust, admin.trust.issueCertificate, { role: 'nats', name: 'nats-9', publicKey: newKey().publicDer, lifetime: undefined }), grpc.status.INVALID_ARGUMENT);
  await refused(call(admin.trust, admin.trust.issueCertificate, { role: 'controller', name: 'c9', publicKey: newKey().publicDer, lifetime: undefined }), grpc.status.INVALID_ARGUMENT);
  await refused(call(admin.trust, admin.trust.issueCertificate, { role: 'viewer', name: 'x', publicKey: Buffer.from('nope'), lifetime: undefined }), grpc.status.INVALID_ARGUMENT);
  t.pass();
});

test('join token - single use, even when two enrollments race', async (t) => {
  const token = await createToken(admin);
  const results = await Promise.allSettled([enroll(anon, token, 'race-a'), enroll(anon, token, 'race-b')]);
  t.is(results.filter((r) => r.status === 'fulfilled').length, 1);
  const loser = results.find((r) => r.status === 'rejected') as PromiseRejectedResult;
  t.is((loser.reason as grpc.ServiceError).code, grpc.status.UNAUTHENTICATED);
  await refused(enroll(anon, token, 'race-c'), grpc.status.UNAUTHENTICATED, 'TOKEN_USED');
});

test('join token - expired and made-up tokens are refused; a name enrolls once', async (t) => {
  const res = await call(admin.trust, admin.trust.createJoinToken, { ttl: { seconds: 0n, nanos: 1_000_000 }, labels: {} });
  await new Promise((r) => setTimeout(r, 20));
  await refused(enroll(anon, res.token, 'late'), grpc.status.UNAUTHENTICATED, 'TOKEN_EXPIRED');
  await refused(enroll(anon, 'ept_' + 'A'.repeat(43), 'guess'), grpc.status.UNAUTHENTICATED, 'TOKEN_INVALID');
  await refused(enroll(anon, await createToken(admin), 'edge-1'), grpc.status.FAILED_PRECONDITION, 'NODE_ALREADY_ENROLLED');
  t.regex(res.caFingerprint, /^sha256:[0-9a-f]{64}$/);
});

test('enroll - a proof by another key is refused and spends no token', async (t) => {
  const token = await createToken(admin);
  const key = newKey();
  const other = newKey();
  const { sign } = await import('node:crypto');
  const { enrollProofMessage } = await import('../src/index.js');
  await refused(
    call(anon.trust, anon.trust.enroll, { token, nodeName: 'pop', publicKey: key.publicDer, proof: sign('sha256', enrollProofMessage('pop', token), other.privateKey), natsPublicKey: '' }),
    grpc.status.INVALID_ARGUMENT,
  );
  t.truthy(await enroll(anon, token, 'pop'), 'the token still works');
});

test.serial('revocation - closes the open stream and refuses every later call', async (t) => {
  const token = await createToken(admin);
  const victim = as(await enroll(anon, token, 'edge-r'));
  const s = agentStream(victim.agent, 'edge-r');
  await s.next((m) => m.message?.$case === 'welcome');
  await call(admin.trust, admin.trust.revokeNode, { nodeName: 'edge-r', reason: 'stolen' });
  const status = await s.end();
  t.is(status?.code, grpc.status.UNAUTHENTICATED);
  t.is(detailsOf(status)?.errorInfo?.reason, 'REVOKED');
  const again = agentStream(victim.agent, 'edge-r');
  t.is((await again.end())?.code, grpc.status.UNAUTHENTICATED);
  await refused(call(victim.trust, victim.trust.renewCertificate, { publicKey: Buffer.alloc(0), proof: Buffer.alloc(0), natsPublicKey: '' }), grpc.status.UNAUTHENTICATED, 'REVOKED');
  await refused(enroll(anon, await createToken(admin), 'edge-r'), grpc.status.UNAUTHENTICATED, 'REVOKED');
});

test('renewal - same name, new key; the old stream stays connected', async (t) => {
  const token = await createToken(admin);
  const cert = await enroll(anon, token, 'edge-n');
  const c = as(cert);
  const s = agentStream(c.agent, 'edge-n');
  t.teardown(() => s.close());
  await s.next((m) => m.message?.$case === 'welcome');
  const key = newKey();
  const { sign, X509Certificate } = await import('node:crypto');
  const { renewProofMessage } = await import('../src/index.js');
  const res = await call(c.trust, c.trust.renewCertificate, { publicKey: key.publicDer, proof: sign('sha256', renewProofMessage('edge-n'), key.privateKey), natsPublicKey: '' });
  const renewed = new X509Certificate(res.certificate);
  t.true((renewed.subjectAltName ?? '').includes(`URI:spiffe://edgeplane/${env.controller.fleetId}/node/edge-n`), 'the fleet is the log fleet id');
  t.true(renewed.publicKey.equals((await import('node:crypto')).createPublicKey({ key: key.publicDer, format: 'der', type: 'spki' })));
  // The new certificate works on a new connection.
  const fresh = as({ keyPem: key.keyPem, certPem: res.certificate });
  t.truthy(await call(fresh.trust, fresh.trust.renewCertificate, { publicKey: Buffer.alloc(0), proof: Buffer.alloc(0), natsPublicKey: '' }));
  s.send({ message: { $case: 'heartbeat', heartbeat: { sequence: 7n, time: new Date() } } });
  await s.next((m) => m.message?.$case === 'heartbeat' && m.message.heartbeat.sequence === 7n);
  t.is(s.ended, undefined);
});

/** The grpc-js credentials of a client certificate (or none). */
function credsOf(cert?: ClientCert): grpc.ChannelCredentials {
  return grpc.credentials.createSsl(Buffer.from(env.ca), cert ? Buffer.from(cert.keyPem) : null, cert ? Buffer.from(cert.certPem) : null);
}

test('nats server certificate - calls no gRPC method, not even as the node it is not', async (t) => {
  // The embedded nats-server's own certificate and key, as a stolen NATS server key would be used.
  const dir = join(env.dataDir, 'nats-tls');
  const natsCert: ClientCert = { keyPem: readFileSync(join(dir, 'server-key.pem'), 'utf8'), certPem: readFileSync(join(dir, 'server.pem'), 'utf8') };
  t.regex(new X509Certificate(natsCert.certPem).subjectAltName ?? '', new RegExp(`URI:spiffe://edgeplane/${env.controller.fleetId}/nats/`), 'a NATS server identity of the fleet');
  const n = as(natsCert);
  await refused(call(n.intent, n.intent.listPolicies, list), grpc.status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
  await refused(call(n.intent, n.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('from-nats') })), grpc.status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
  await refused(call(n.fleet, n.fleet.listNodes, list), grpc.status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
  await refused(call(n.trust, n.trust.createJoinToken, { ttl: undefined, labels: {} }), grpc.status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
  await refused(call(n.trust, n.trust.renewCertificate, { publicKey: newKey().publicDer, proof: Buffer.alloc(0), natsPublicKey: '' }), grpc.status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
  const s = agentStream(n.agent, 'edge-1');
  t.is((await s.end())?.code, grpc.status.PERMISSION_DENIED);
  const std = standardServices(env.controller.address, credsOf(natsCert));
  t.teardown(() => std.close());
  await refused(std.reflect({ list_services: '' }), grpc.status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
  const policies = await call(admin.intent, admin.intent.listPolicies, list);
  t.false(policies.policies.some((p) => p.metadata?.name === 'from-nats'), 'nothing was written');
});

test('reflection - needs an identity that may read the API', async (t) => {
  const none = standardServices(env.controller.address, credsOf());
  const node = standardServices(env.controller.address, credsOf(node1));
  const viewer = standardServices(env.controller.address, credsOf(await issue('viewer', 'reflector')));
  t.teardown(() => [none, node, viewer].forEach((c) => c.close()));
  await refused(none.reflect({ list_services: '' }), grpc.status.UNAUTHENTICATED, 'NO_IDENTITY');
  await refused(node.reflect({ list_services: '' }), grpc.status.PERMISSION_DENIED, 'ROLE_NOT_ALLOWED');
  const listed = (await viewer.reflect({ list_services: '' })) as { list_services_response: { service: { name: string }[] } };
  t.true(listed.list_services_response.service.some((x) => x.name === 'edgeplane.v1.IntentService'));
});

test('health - open to a client without a certificate (load balancers), over TLS', async (t) => {
  const none = standardServices(env.controller.address, credsOf());
  t.teardown(() => none.close());
  t.is(await none.health(), 'SERVING');
  t.is(await none.health('edgeplane.v1.IntentService'), 'SERVING');
  await refused(none.health('no.such.Service'), grpc.status.NOT_FOUND);
});
