// edgeplane-controller --issue-nats-cert: a NATS server certificate from the fleet CA for servers
// the controller does not start (deploy/compose/init-nats-secrets), and its refusals.
import test from 'ava';
import { execFile } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { CertificateAuthority, identityFromPeerCertificate } from '../src/index.js';

const MAIN = fileURLToPath(new URL('../dist/main.js', import.meta.url));
const run = promisify(execFile);
const dir = mkdtempSync(join(tmpdir(), 'nats-cert-issue-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));

async function controller(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [MAIN, ...args], { timeout: 60_000 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

test.serial('issue nats cert - creates the fleet CA when missing and issues a NATS server identity for the names given', async (t) => {
  const ca = ['--ca-cert', join(dir, 'ca.pem'), '--ca-key', join(dir, 'ca-key.pem')];
  const r = await controller([...ca, '--fleet-id', 'fleet-a', '--issue-nats-cert', join(dir, 'nats-1'), '--san', 'nats-1,nats-1.example,10.0.0.1']);
  t.is(r.code, 0, r.stderr);
  t.regex(r.stdout, /created the fleet CA/);
  t.regex(r.stdout, /nats\/nats-1 of fleet fleet-a/);
  const chain = readFileSync(join(dir, 'nats-1', 'server.pem'), 'utf8');
  const leaf = new X509Certificate(chain);
  t.deepEqual(identityFromPeerCertificate({ subjectaltname: leaf.subjectAltName ?? '' }), { fleet: 'fleet-a', role: 'nats', name: 'nats-1' });
  t.regex(leaf.subjectAltName ?? '', /DNS:nats-1, DNS:nats-1\.example, IP Address:10\.0\.0\.1/);
  const caPem = readFileSync(join(dir, 'ca.pem'), 'utf8');
  t.true(leaf.verify(new X509Certificate(caPem).publicKey), 'signed by the fleet CA');
  t.true(chain.endsWith(caPem), 'the chain carries the CA');
  t.is(readFileSync(join(dir, 'nats-1', 'ca.pem'), 'utf8'), caPem);
  t.is(statSync(join(dir, 'nats-1', 'server-key.pem')).mode & 0o777, 0o600);
  t.is(statSync(join(dir, 'ca-key.pem')).mode & 0o777, 0o600);

  // The next server's certificate comes from the same CA, whose fleet it takes.
  const again = await controller([...ca, '--issue-nats-cert', join(dir, 'nats-2'), '--san', 'nats-2']);
  t.is(again.code, 0, again.stderr);
  t.notRegex(again.stdout, /created the fleet CA/);
  t.true(new X509Certificate(readFileSync(join(dir, 'nats-2', 'server.pem'))).verify(new X509Certificate(caPem).publicKey));
  t.is((await CertificateAuthority.fromPem(caPem, readFileSync(join(dir, 'ca-key.pem'), 'utf8'), 'fleet-a')).fleet, 'fleet-a');
});

test.serial('issue nats cert - bad names, a missing --san and another fleet are refused and write nothing', async (t) => {
  const ca = ['--ca-cert', join(dir, 'ca.pem'), '--ca-key', join(dir, 'ca-key.pem')];
  const noSan = await controller([...ca, '--issue-nats-cert', join(dir, 'x1')]);
  t.is(noSan.code, 2);
  t.regex(noSan.stderr, /--issue-nats-cert needs --san/);
  const sanAlone = await controller([...ca, '--san', 'nats-1']);
  t.is(sanAlone.code, 2);
  t.regex(sanAlone.stderr, /--san goes with --issue-nats-cert/);
  const badName = await controller([...ca, '--issue-nats-cert', join(dir, 'x2'), '--san', 'NATS_1!']);
  t.is(badName.code, 1);
  t.regex(badName.stderr, /--san: the first name/);
  const badHost = await controller([...ca, '--issue-nats-cert', join(dir, 'x3'), '--san', 'nats-3,bad host/x']);
  t.is(badHost.code, 1);
  t.regex(badHost.stderr, /not a host name or IP address/);
  const otherFleet = await controller([...ca, '--fleet-id', 'fleet-b', '--issue-nats-cert', join(dir, 'x4'), '--san', 'nats-4']);
  t.is(otherFleet.code, 1);
  t.regex(otherFleet.stderr, /fleet/);
  for (const d of ['x1', 'x2', 'x3', 'x4']) t.false(existsSync(join(dir, d)), `${d} was not written`);
});
