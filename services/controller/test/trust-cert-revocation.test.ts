// Revocation of people's and pipelines' certificates, and admins' label changes, across two
// controller replicas over one NATS server (shared CA, NATS authority and signing key): what one
// replica records reaches the other through the watched trust bucket, the mechanism node
// revocation uses.
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { NatsServer } from '@edgeplane/intent-log';
import { call, detailsOf } from '../../../test/support/grpc.js';
import { until } from '../../../test/support/control-plane.js';
import { NatsAuthority, parseConfig, startController, type ControllerConfig, type RunningController } from '../src/index.js';
import { agentStream, clientsFor, createToken, enroll, newKey, type ClientCert, type Clients } from './trust-helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'ctl-cert-revocation-'));
let nats: NatsServer;
let a: RunningController;
let b: RunningController;
let adminCert: ClientCert;
let adminA: Clients;
const open: Clients[] = [];

async function replica(id: string): Promise<RunningController> {
  const config = parseConfig(
    ['--listen', '127.0.0.1:0', '--nats', nats.url, '--data-dir', join(dir, id), '--controller-id', id, '--nats-auth-dir', join(dir, 'nats-auth'), '--signing-key', join(dir, 'signing-key.pem'), '--ca-cert', join(dir, 'ca.pem'), '--ca-key', join(dir, 'ca-key.pem'), '--shutdown-grace', '1', '--heartbeat-interval', '1'],
    {},
  ) as ControllerConfig;
  return startController(config, { log: () => undefined });
}

function as(c: RunningController, cert?: ClientCert): Clients {
  const x = clientsFor(c.address, a.caCertPem, cert);
  open.push(x);
  return x;
}

async function issue(role: string, name: string): Promise<ClientCert & { serial: string }> {
  const key = newKey();
  const res = await call(adminA.trust, adminA.trust.issueCertificate, { role, name, publicKey: key.publicDer, lifetime: undefined });
  return { keyPem: key.keyPem, certPem: res.certificate, serial: res.serialNumber };
}

/** The gRPC error a call failed with (throws if it succeeded). */
async function failure(p: Promise<unknown>): Promise<{ code: grpc.status; reason: string | undefined }> {
  const err = (await p.then(
    () => undefined,
    (e: unknown) => e,
  )) as grpc.ServiceError | undefined;
  if (!err) throw new Error('the call succeeded');
  return { code: err.code, reason: detailsOf(err)?.errorInfo?.reason };
}

const list = { pageSize: 10, pageToken: '', labelSelector: '' };

test.before(async () => {
  nats = await NatsServer.start({ dataDir: join(dir, 'nats'), configFragment: await NatsAuthority.open(join(dir, 'nats-auth')).serverConfig(join(dir, 'nats', 'jwt')) });
  a = await replica('a'); // creates the CA and the admin bundle
  b = await replica('b');
  adminCert = { keyPem: readFileSync(join(dir, 'a', 'admin', 'admin-key.pem'), 'utf8'), certPem: readFileSync(join(dir, 'a', 'admin', 'admin.pem'), 'utf8') };
  adminA = as(a, adminCert);
});
test.after.always(async () => {
  for (const c of open) c.close();
  await a?.close();
  await b?.close();
  await nats?.close();
  rmSync(dir, { recursive: true, force: true });
});

test.serial('cert list - records every certificate issued, the first admin bundle included, on every replica', async (t) => {
  const carol = await issue('operator', 'carol');
  const adminB = as(b, adminCert);
  const listed = (await call(adminB.trust, adminB.trust.listCertificates, { includeExpired: false })).certificates;
  const bundle = listed.find((c) => c.role === 'admin' && c.name === 'admin');
  t.truthy(bundle, 'the admin certificate written at first start is recorded');
  t.is(bundle?.serialNumber, new X509Certificate(adminCert.certPem).serialNumber.replace(/^0+/, ''));
  t.is(bundle?.issuedBy, 'controller');
  const c = listed.find((x) => x.serialNumber === carol.serial);
  t.like(c, { role: 'operator', name: 'carol', issuedBy: 'admin/admin', revoked: false });
  t.is(c?.notAfter?.getTime(), new Date(new X509Certificate(carol.certPem).validTo).getTime());
});

test.serial('cert revoke - a revoked viewer is UNAUTHENTICATED (REVOKED) on its next call, on this replica and on the other', async (t) => {
  const viewer = await issue('viewer', 'alice');
  const onA = as(a, viewer);
  const onB = as(b, viewer);
  t.truthy(await call(onA.fleet, onA.fleet.listNodes, list));
  t.truthy(await call(onB.intent, onB.intent.listPolicies, list), 'the viewer works on replica b before the revocation');
  const res = await call(adminA.trust, adminA.trust.revokeCertificate, { serialNumber: viewer.serial.toLowerCase(), name: '', reason: 'left the team' });
  t.is(res.revoked.length, 1);
  t.like(res.revoked[0], { serialNumber: viewer.serial, role: 'viewer', name: 'alice', revoked: true, revokedBy: 'admin/admin', revokeReason: 'left the team' });
  // Same channel, next call: the certificate no longer authenticates anyone.
  t.deepEqual(await failure(call(onA.fleet, onA.fleet.listNodes, list)), { code: grpc.status.UNAUTHENTICATED, reason: 'REVOKED' });
  await until('replica b refuses the revoked viewer', async () => (await failure(call(onB.intent, onB.intent.listPolicies, list)).catch(() => undefined))?.reason === 'REVOKED', 60_000);
  t.deepEqual(await failure(call(onB.fleet, onB.fleet.listNodes, list)), { code: grpc.status.UNAUTHENTICATED, reason: 'REVOKED' });
  const listed = (await call(adminA.trust, adminA.trust.listCertificates, { includeExpired: false })).certificates.find((c) => c.serialNumber === viewer.serial);
  t.like(listed, { revoked: true, revokeReason: 'left the team' });
  // Idempotent: revoking again keeps the first revocation.
  const again = await call(adminA.trust, adminA.trust.revokeCertificate, { serialNumber: viewer.serial, name: '', reason: 'again' });
  t.is(again.revoked[0]?.revokeReason, 'left the team');
});

test.serial('cert revoke - by name revokes every certificate of that name and no other', async (t) => {
  const one = await issue('operator', 'pipeline-x');
  const two = await issue('viewer', 'pipeline-x');
  const other = await issue('viewer', 'pipeline-y');
  const res = await call(adminA.trust, adminA.trust.revokeCertificate, { serialNumber: '', name: 'pipeline-x', reason: '' });
  t.deepEqual(res.revoked.map((c) => c.serialNumber).sort(), [one.serial, two.serial].sort());
  for (const cert of [one, two]) {
    const c = as(a, cert);
    t.is((await failure(call(c.intent, c.intent.listPolicies, list))).code, grpc.status.UNAUTHENTICATED);
  }
  const y = as(a, other);
  t.truthy(await call(y.intent, y.intent.listPolicies, list), 'another name keeps working');
});

test.serial('cert revoke - viewers and operators may neither list nor revoke (PERMISSION_DENIED); bad input changes nothing', async (t) => {
  const victim = await issue('viewer', 'bob');
  for (const role of ['viewer', 'operator']) {
    const c = as(a, await issue(role, `not-admin-${role}`));
    t.deepEqual(await failure(call(c.trust, c.trust.revokeCertificate, { serialNumber: victim.serial, name: '', reason: '' })), { code: grpc.status.PERMISSION_DENIED, reason: 'ROLE_NOT_ALLOWED' });
    t.deepEqual(await failure(call(c.trust, c.trust.listCertificates, { includeExpired: true })), { code: grpc.status.PERMISSION_DENIED, reason: 'ROLE_NOT_ALLOWED' });
  }
  t.is((await failure(call(adminA.trust, adminA.trust.revokeCertificate, { serialNumber: victim.serial, name: 'bob', reason: '' }))).code, grpc.status.INVALID_ARGUMENT, 'both serial and name');
  t.is((await failure(call(adminA.trust, adminA.trust.revokeCertificate, { serialNumber: '', name: '', reason: '' }))).code, grpc.status.INVALID_ARGUMENT, 'neither');
  t.is((await failure(call(adminA.trust, adminA.trust.revokeCertificate, { serialNumber: 'zz-not-hex', name: '', reason: '' }))).code, grpc.status.INVALID_ARGUMENT);
  t.is((await failure(call(adminA.trust, adminA.trust.revokeCertificate, { serialNumber: '', name: 'Not A Name', reason: '' }))).code, grpc.status.INVALID_ARGUMENT);
  t.is((await failure(call(adminA.trust, adminA.trust.revokeCertificate, { serialNumber: '', name: 'nobody', reason: '' }))).code, grpc.status.NOT_FOUND);
  const bob = as(b, victim);
  t.truthy(await call(bob.intent, bob.intent.listPolicies, list), 'the victim still works');
  t.false((await call(adminA.trust, adminA.trust.listCertificates, { includeExpired: false })).certificates.find((c) => c.serialNumber === victim.serial)?.revoked);
});

test.serial('cert revoke - the last admin certificate is not revoked (FAILED_PRECONDITION LAST_ADMIN); with a second admin it is', async (t) => {
  // Each replica wrote an admin bundle into its own data directory: two admin certificates. One may go.
  const bSerial = new X509Certificate(readFileSync(join(dir, 'b', 'admin', 'admin.pem'))).serialNumber;
  t.deepEqual(await failure(call(adminA.trust, adminA.trust.revokeCertificate, { serialNumber: '', name: 'admin', reason: 'both' })), { code: grpc.status.FAILED_PRECONDITION, reason: 'LAST_ADMIN' }, 'not both at once');
  t.is((await call(adminA.trust, adminA.trust.revokeCertificate, { serialNumber: bSerial, name: '', reason: 'unused' })).revoked[0]?.name, 'admin');
  // Now the one the caller uses is the last.
  const own = new X509Certificate(adminCert.certPem).serialNumber;
  t.deepEqual(await failure(call(adminA.trust, adminA.trust.revokeCertificate, { serialNumber: own, name: '', reason: 'oops' })), { code: grpc.status.FAILED_PRECONDITION, reason: 'LAST_ADMIN' });
  t.deepEqual(await failure(call(adminA.trust, adminA.trust.revokeCertificate, { serialNumber: '', name: 'admin', reason: 'oops' })), { code: grpc.status.FAILED_PRECONDITION, reason: 'LAST_ADMIN' });
  t.truthy(await call(adminA.intent, adminA.intent.listPolicies, list), 'the admin still works');

  const second = await issue('admin', 'second-admin');
  const s = as(a, second);
  // Two admins: one may go (here the first, revoked by the second).
  const res = await call(s.trust, s.trust.revokeCertificate, { serialNumber: own, name: '', reason: 'rotated' });
  t.is(res.revoked[0]?.revokedBy, 'admin/second-admin');
  t.deepEqual(await failure(call(adminA.intent, adminA.intent.listPolicies, list)), { code: grpc.status.UNAUTHENTICATED, reason: 'REVOKED' });
  // Now the second is the last one.
  t.deepEqual(await failure(call(s.trust, s.trust.revokeCertificate, { serialNumber: second.serial, name: '', reason: '' })), { code: grpc.status.FAILED_PRECONDITION, reason: 'LAST_ADMIN' });
  adminA = s; // later tests act as the remaining admin
});

test.serial('node label - a change made on one replica closes the node\'s stream on the other, whose welcome then carries the new labels', async (t) => {
  const anon = as(b);
  const cert = await enroll(anon, await createToken(adminA, 900, { site: 'ams1' }), 'relabel-b');
  const n = as(b, cert);
  const first = agentStream(n.agent, 'relabel-b', { site: 'ams1' });
  await first.next((m) => m.message?.$case === 'welcome');
  await call(adminA.trust, adminA.trust.setNodeLabels, { nodeName: 'relabel-b', labels: { site: 'fra1' } });
  t.is((await first.end())?.code, grpc.status.UNAVAILABLE, 'replica b closed the stream');
  const again = agentStream(n.agent, 'relabel-b', { site: 'ams1' });
  const w = await again.next((m) => m.message?.$case === 'welcome');
  t.deepEqual(w.message?.$case === 'welcome' ? w.message.welcome.enrolledLabels : undefined, { site: 'fra1' });
  again.close();
});
