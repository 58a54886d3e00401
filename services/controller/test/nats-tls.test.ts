// The embedded nats-server serves TLS with a certificate from the fleet CA: plaintext and
// untrusting clients are refused, the controller's credentials with the CA work, and an
// enrolled node verifies the server with the CA it got at enrollment.
import test from 'ava';
import { sign } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { createUser } from '@nats-io/nkeys';
import { IntentLog, NatsServer, natsClientOptions } from '@edgeplane/intent-log';
import { call } from '../../../test/support/grpc.js';
import { plaintextNatsProbe } from '../../../test/support/nats-probe.js';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { CertificateAuthority, NatsAuthority, checkNatsServerIdentity, enrollProofMessage, generateKeyPair, parseConfig, startController, type ControllerConfig } from '../src/index.js';
import { clientsFor, createToken, newKey, startTlsController } from './trust-helpers.js';

type Started = Awaited<ReturnType<typeof startTlsController>>;
let started: Started;
const conns: NatsConnection[] = [];

test.before(async () => {
  started = await startTlsController();
});

test.after.always(async () => {
  for (const c of conns) await c.close().catch(() => undefined);
  await started?.stop();
});

function hostPort(url: string): { host: string; port: number } {
  const u = new URL(url);
  return { host: u.hostname, port: Number(u.port) };
}

async function open(opts: Parameters<typeof connect>[0]): Promise<NatsConnection> {
  const nc = await connect({ servers: started.controller.natsUrl, reconnect: false, timeout: 5000, ...opts });
  conns.push(nc);
  return nc;
}

test.serial('embedded nats tls - the server url is tls:// and its key file is private', (t) => {
  t.regex(started.controller.natsUrl, /^tls:\/\/127\.0\.0\.1:\d+$/);
  t.is(statSync(join(started.dataDir, 'nats-tls', 'server-key.pem')).mode & 0o777, 0o600);
  t.is(readFileSync(join(started.dataDir, 'fleet-id'), 'utf8').trim(), started.controller.fleetId);
});

test.serial('embedded nats tls - a plaintext client is refused', async (t) => {
  // Speak the NATS protocol without a TLS handshake: the server announces tls_required and
  // never answers the PING.
  const { host, port } = hostPort(started.controller.natsUrl);
  const { info, rest } = await plaintextNatsProbe(host, port);
  t.regex(info, /"tls_required":true/);
  t.notRegex(rest, /PONG/);
});

test.serial('embedded nats tls - a client that does not trust the fleet CA is refused', async (t) => {
  const authority = NatsAuthority.open(join(started.dataDir, 'nats-auth'));
  await t.throwsAsync(open(natsClientOptions(await authority.controllerCredentials('test'))));
});

test.serial('embedded nats tls - the controller credentials with the fleet CA read the log', async (t) => {
  const authority = NatsAuthority.open(join(started.dataDir, 'nats-auth'));
  const nc = await open(natsClientOptions({ ...(await authority.controllerCredentials('test')), tls: { caFile: join(started.dataDir, 'pki', 'ca.pem') } }));
  const log = await IntentLog.open(nc, { create: false });
  t.is(await log.fleetId('unused'), started.controller.fleetId);
});

test.serial('embedded nats tls - an enrolled node verifies the server with its enrolled CA', async (t) => {
  const address = started.controller.address;
  const admin = clientsFor(address, started.ca, started.admin);
  const anon = clientsFor(address, started.ca);
  t.teardown(() => {
    admin.close();
    anon.close();
  });
  const token = await createToken(admin);
  const key = newKey();
  const user = createUser();
  const res = await call(anon.trust, anon.trust.enroll, { token, nodeName: 'edge-tls', publicKey: key.publicDer, proof: sign('sha256', enrollProofMessage('edge-tls', token), key.privateKey), natsPublicKey: user.getPublicKey() });
  t.truthy(res.natsJwt);
  const seed = new TextDecoder().decode(user.getSeed());
  // A node key alone is not enough: the server's chain must verify against the enrolled CA.
  await t.throwsAsync(open(natsClientOptions({ jwt: res.natsJwt, seed })));
  const nc = await open(natsClientOptions({ jwt: res.natsJwt, seed, tls: { caPem: res.caCertificate } }));
  const log = await IntentLog.open(nc, { create: false });
  const bounds = await log.bounds();
  t.true(bounds.last >= 0n);
});

test.serial('embedded nats tls - the server presents a NATS server identity, and a fleet certificate of another role does not pass for one', async (t) => {
  const served = readFileSync(join(started.dataDir, 'nats-tls', 'server.pem'), 'utf8');
  t.regex(new X509Certificate(served).subjectAltName ?? '', new RegExp(`URI:spiffe://edgeplane/${started.controller.fleetId}/nats/[a-z0-9._-]+(,|$)`));
  const caFile = join(started.dataDir, 'pki', 'ca.pem');
  const authority = NatsAuthority.open(join(started.dataDir, 'nats-auth'));
  const verified = await open(natsClientOptions({ ...(await authority.controllerCredentials('test')), tls: { caFile, checkServerIdentity: checkNatsServerIdentity } }));
  t.truthy(verified.info?.server_id, 'the embedded server passes the NATS identity check');

  // A server whose certificate chains to the fleet CA but names a controller (as a stolen
  // controller key would): chain-only verification takes it, the NATS identity check refuses it.
  const ca = await CertificateAuthority.fromPem(readFileSync(caFile, 'utf8'), readFileSync(join(started.dataDir, 'pki', 'ca-key.pem'), 'utf8'), started.controller.fleetId);
  const dir = mkdtempSync(join(tmpdir(), 'nats-impostor-'));
  const keys = generateKeyPair();
  const cert = await ca.issue({ identity: { fleet: ca.fleet, role: 'controller', name: 'impostor' }, publicKey: keys.publicKeyDer, lifetimeMs: 3_600_000, dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  writeFileSync(join(dir, 'cert.pem'), cert.certPem);
  writeFileSync(join(dir, 'key.pem'), keys.privateKeyPem, { mode: 0o600 });
  const impostor = await NatsServer.start({ dataDir: join(dir, 'nats'), host: '127.0.0.1', port: 0, tls: { certFile: join(dir, 'cert.pem'), keyFile: join(dir, 'key.pem') } });
  t.teardown(async () => {
    await impostor.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const chainOnly = await connect({ servers: impostor.url, reconnect: false, timeout: 5000, ...natsClientOptions({ tls: { caFile } }) });
  t.teardown(() => chainOnly.close());
  t.truthy(chainOnly.info?.server_id, 'the impostor chains to the fleet CA');
  await t.throwsAsync(connect({ servers: impostor.url, reconnect: false, timeout: 5000, ...natsClientOptions({ tls: { caFile, checkServerIdentity: checkNatsServerIdentity } }) }));
  // A controller given the fleet CA as --nats-tls-ca does the same: it does not start on the
  // impostor (which would otherwise serve it, anonymous clients and JetStream included).
  const config = parseConfig(['--listen', '127.0.0.1:0', '--nats', impostor.url, '--nats-anonymous', '--nats-tls-ca', caFile, '--ca-cert', caFile, '--ca-key', join(started.dataDir, 'pki', 'ca-key.pem'), '--data-dir', join(dir, 'ctl'), '--shutdown-grace', '1'], {}) as ControllerConfig;
  const refused = await t.throwsAsync(startController(config, { log: () => undefined }));
  t.regex(refused?.message ?? '', /not an edgeplane NATS server identity/);
  t.false(existsSync(join(dir, 'ctl', 'admin')), 'it got no further than NATS');
});

test.serial('embedded nats tls - a data dir whose fleet-id disagrees with the log is a config error', async (t) => {
  // Restart on the same data dir with a different fleet-id file: the CA and log name the old one.
  await started.controller.close();
  writeFileSync(join(started.dataDir, 'fleet-id'), 'other-fleet\n');
  const config = parseConfig(['--listen', '127.0.0.1:0', '--embedded-nats', '127.0.0.1:0', '--data-dir', started.dataDir, '--shutdown-grace', '1'], {}) as ControllerConfig;
  const err = await t.throwsAsync(startController(config, { log: () => undefined }));
  t.regex(err?.message ?? '', /fleet/);
});
