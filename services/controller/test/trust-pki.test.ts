import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { createServer, connect, type TLSSocket } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import { CertificateAuthority, defaultCaFiles, generateKeyPair, loadOrCreateCertificateAuthority } from '../src/pki/certificate-authority.js';
import { identityFromPeerCertificate, identityUri, parseIdentityUri } from '../src/pki/identity.js';

test('identity uri - round-trips and rejects anything else', (t) => {
  const id = { fleet: 'default', role: 'node' as const, name: 'edge-1' };
  t.is(identityUri(id), 'spiffe://edgeplane/default/node/edge-1');
  t.deepEqual(parseIdentityUri(identityUri(id)), id);
  t.is(parseIdentityUri('spiffe://edgeplane/default/root/edge-1'), undefined);
  t.is(parseIdentityUri('spiffe://edgeplane/default/node/edge-1/x'), undefined);
  t.is(parseIdentityUri('spiffe://other/default/node/edge-1'), undefined);
  t.throws(() => identityUri({ ...id, name: 'a/b' }));
});

test('certificate authority - created once with a 0600 key, reloaded after', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'pki-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const files = defaultCaFiles(dir);
  const first = await loadOrCreateCertificateAuthority(files, 'default');
  t.true(first.created);
  t.is(statSync(files.keyFile).mode & 0o777, 0o600);
  const second = await loadOrCreateCertificateAuthority(files, 'default');
  t.false(second.created);
  t.is(second.ca.fingerprint, first.ca.fingerprint);
  t.regex(first.ca.fingerprint, /^sha256:[0-9a-f]{64}$/);
});

test('certificate authority - refuses keys that are not P-256', async (t) => {
  const { ca } = await CertificateAuthority.create('default');
  const { generateKeyPairSync } = await import('node:crypto');
  const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey;
  await t.throwsAsync(ca.issue({ identity: { fleet: 'default', role: 'node', name: 'n1' }, publicKey: rsa, lifetimeMs: 60_000 }), { name: 'CertificateIssueError' });
  await t.throwsAsync(ca.issue({ identity: { fleet: 'default', role: 'node', name: 'n1' }, publicKey: new Uint8Array([1, 2, 3]), lifetimeMs: 60_000 }), { name: 'CertificateIssueError' });
});

test('certificate authority - issued certificates pass a real mutual TLS handshake and carry the identity', async (t) => {
  const { ca } = await CertificateAuthority.create('default');
  const serverKeys = generateKeyPair();
  const server = await ca.issue({ identity: { fleet: 'default', role: 'controller', name: 'c1' }, publicKey: serverKeys.publicKeyDer, lifetimeMs: 3_600_000, dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  const clientKeys = generateKeyPair();
  const client = await ca.issue({ identity: { fleet: 'default', role: 'viewer', name: 'alice' }, publicKey: clientKeys.publicKeyDer, lifetimeMs: 3_600_000 });
  t.truthy(await ca.signed(client.certPem));
  const other = await CertificateAuthority.create('default');
  t.is(await other.ca.signed(client.certPem), undefined);

  const srv = createServer({ cert: server.certPem, key: serverKeys.privateKeyPem, ca: ca.certPem, requestCert: true, rejectUnauthorized: true }, (s) => {
    s.end(JSON.stringify(identityFromPeerCertificate(s.getPeerCertificate())));
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  t.teardown(() => srv.close());
  const port = (srv.address() as { port: number }).port;
  const seen = await new Promise<string>((resolve, reject) => {
    const sock: TLSSocket = connect({ host: '127.0.0.1', port, ca: ca.certPem, cert: client.certPem, key: clientKeys.privateKeyPem }, () => undefined);
    let data = '';
    sock.on('data', (d) => (data += d));
    sock.on('end', () => resolve(data));
    sock.on('error', reject);
  });
  t.deepEqual(JSON.parse(seen), { fleet: 'default', role: 'viewer', name: 'alice' });
});
