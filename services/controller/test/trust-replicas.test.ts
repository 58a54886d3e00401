// Two controller replicas over one NATS server, sharing the CA: a join token is accepted by
// one replica only, and a revocation made on one is enforced by the other (its open stream
// closed, later calls refused) through the watched trust bucket.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sign } from 'node:crypto';
import test from 'ava';
import { decode, type User } from '@nats-io/jwt';
import { createUser } from '@nats-io/nkeys';
import * as grpc from '@grpc/grpc-js';
import { NatsServer } from '@edgeplane/intent-log';
import { call, detailsOf } from '../../../test/support/grpc.js';
import { NatsAuthority, enrollProofMessage, parseConfig, startController, type ControllerConfig, type RunningController } from '../src/index.js';
import { agentStream, clientsFor, createToken, enroll, newKey, type Clients } from './trust-helpers.js';
import { readFileSync } from 'node:fs';

const dir = mkdtempSync(join(tmpdir(), 'ctl-replicas-'));
let nats: NatsServer;
const controllers: RunningController[] = [];
const open: Clients[] = [];

async function replica(id: string): Promise<RunningController> {
  const config = parseConfig(
    ['--listen', '127.0.0.1:0', '--nats', nats.url, '--data-dir', join(dir, id), '--controller-id', id, '--nats-auth-dir', join(dir, 'nats-auth'), '--signing-key', join(dir, 'signing-key.pem'), '--ca-cert', join(dir, 'ca.pem'), '--ca-key', join(dir, 'ca-key.pem'), '--shutdown-grace', '1', '--heartbeat-interval', '1'],
    {},
  ) as ControllerConfig;
  const c = await startController(config, { log: () => undefined });
  controllers.push(c);
  return c;
}

test.before(async () => {
  // Both replicas share the NATS authority, as they share the CA and the signing key.
  nats = await NatsServer.start({ dataDir: join(dir, 'nats'), configFragment: await NatsAuthority.open(join(dir, 'nats-auth')).serverConfig(join(dir, 'nats', 'jwt')) });
});
test.after.always(async () => {
  for (const c of open) c.close();
  for (const c of controllers) await c.close();
  await nats?.close();
  rmSync(dir, { recursive: true, force: true });
});

test('replicas - share the CA, accept a token once between them, and enforce each other\'s revocations', async (t) => {
  const a = await replica('a'); // creates the CA files in DIR
  const b = await replica('b'); // loads them
  t.is(a.caFingerprint, b.caFingerprint);
  const adminCert = { keyPem: readFileSync(join(dir, 'a', 'admin', 'admin-key.pem'), 'utf8'), certPem: readFileSync(join(dir, 'a', 'admin', 'admin.pem'), 'utf8') };
  const mk = (c: RunningController, cert?: typeof adminCert): Clients => {
    const x = clientsFor(c.address, a.caCertPem, cert);
    open.push(x);
    return x;
  };
  const adminA = mk(a, adminCert);
  const token = await createToken(adminA);
  const results = await Promise.allSettled([enroll(mk(a), token, 'edge-a'), enroll(mk(b), token, 'edge-b')]);
  t.is(results.filter((r) => r.status === 'fulfilled').length, 1, 'one replica accepted the token');

  const cert = await enroll(mk(b), await createToken(adminA), 'edge-x');
  const onB = mk(b, cert);
  const s = agentStream(onB.agent, 'edge-x');
  await s.next((m) => m.message?.$case === 'welcome');
  await call(adminA.trust, adminA.trust.revokeNode, { nodeName: 'edge-x', reason: 'replica test' });
  const status = await s.end();
  t.is(status?.code, grpc.status.UNAUTHENTICATED, 'replica b closed the stream');
  t.is(detailsOf(status)?.errorInfo?.reason, 'REVOKED');
  const again = await t.throwsAsync<grpc.ServiceError>(call(onB.trust, onB.trust.renewCertificate, { publicKey: Buffer.alloc(0), proof: Buffer.alloc(0), natsPublicKey: '' }));
  t.is(again?.code, grpc.status.UNAUTHENTICATED);

  // A node's NATS user JWT expires with its certificate: renewing the certificate renews it.
  const nkey = createUser();
  const natsKey = nkey.getPublicKey();
  const key = newKey();
  const nodeToken = await createToken(adminA);
  const enrolled = await call(mk(a).trust, mk(a).trust.enroll, { token: nodeToken, nodeName: 'edge-nats', publicKey: key.publicDer, proof: sign('sha256', enrollProofMessage('edge-nats', nodeToken), key.privateKey), natsPublicKey: natsKey });
  const first = decode<User>(enrolled.natsJwt);
  t.is(first.sub, natsKey);
  t.is(first.exp, Math.floor(enrolled.notAfter!.getTime() / 1000), 'the JWT expires with the certificate');
  const node = mk(b, { keyPem: key.keyPem, certPem: enrolled.certificate });
  const renewed = await call(node.trust, node.trust.renewCertificate, { publicKey: Buffer.alloc(0), proof: Buffer.alloc(0), natsPublicKey: natsKey });
  const second = decode<User>(renewed.natsJwt);
  t.is(second.sub, natsKey);
  t.is(second.exp, Math.floor(renewed.notAfter!.getTime() / 1000), 'the renewed JWT expires with the renewed certificate');
  const bad = await t.throwsAsync<grpc.ServiceError>(call(node.trust, node.trust.renewCertificate, { publicKey: Buffer.alloc(0), proof: Buffer.alloc(0), natsPublicKey: 'not-a-key' }));
  t.is(bad?.code, grpc.status.INVALID_ARGUMENT);
});
