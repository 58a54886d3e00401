import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createUser } from '@nats-io/nkeys';
import { formatCreds } from '@edgeplane/intent-log';
import { natsInboxPrefix } from '@edgeplane/proto';
import { AgentConfigError, parseAgentConfig, type AgentConfig } from '../src/agent/config.js';
import { agentNatsOptions } from '../src/agent/nats-connect-options.js';
import type { PeerCertificate } from 'node:tls';
import { checkControllerIdentity, checkNatsServerIdentity } from '../src/agent/node-identity.js';

const dir = mkdtempSync(join(tmpdir(), 'agent-nats-opts-'));
test.after.always(() => rmSync(dir, { recursive: true, force: true }));
const base = ['--insecure', '--trusted-key', Buffer.alloc(32, 1).toString('base64'), '--node-name', 'edge-1'];
const user = createUser();
const seed = new TextDecoder().decode(user.getSeed());

function config(extra: string[]): AgentConfig {
  return parseAgentConfig([...base, ...extra], {}) as AgentConfig;
}

test('agent nats options - a creds file authenticates and names the node\'s inbox', (t) => {
  const creds = join(dir, 'nats.creds');
  writeFileSync(creds, formatCreds('eyJhbGciOi.fake.jwt', seed), { mode: 0o600 });
  const { options, anonymous } = agentNatsOptions(config(['--nats-creds', creds, '--nats', 'nats://a:4222,nats://b:4222']));
  t.false(anonymous);
  t.truthy(options.authenticator);
  t.is(options.inboxPrefix, natsInboxPrefix(user.getPublicKey()));
  t.deepEqual(options.servers, ['nats://a:4222', 'nats://b:4222']);
  t.is(options.maxReconnectAttempts, -1);
});

test('agent nats options - JWT and seed files, and the enrolled identity when no files are given', (t) => {
  writeFileSync(join(dir, 'nats.jwt'), 'eyJhbGciOi.fake.jwt\n');
  writeFileSync(join(dir, 'nats.seed'), seed + '\n');
  t.is(agentNatsOptions(config(['--nats-jwt', join(dir, 'nats.jwt'), '--nats-seed', join(dir, 'nats.seed')])).options.inboxPrefix, natsInboxPrefix(user.getPublicKey()));
  const enrolled = agentNatsOptions(config([]), () => ({ natsJwt: 'eyJhbGciOi.fake.jwt', natsSeed: seed }));
  t.false(enrolled.anonymous);
  t.is(enrolled.options.inboxPrefix, natsInboxPrefix(user.getPublicKey()));
  t.true(agentNatsOptions(config([]), () => ({ natsJwt: '', natsSeed: '' })).anonymous, 'enrolled without NATS credentials');
});

test('agent nats options - an enrolled node verifies the server with its enrolled CA unless --nats-tls-ca is given', (t) => {
  const caPem = '-----BEGIN CERTIFICATE-----\nenrolled\n-----END CERTIFICATE-----\n';
  const tls = agentNatsOptions(config([]), () => ({ natsJwt: 'eyJhbGciOi.fake.jwt', natsSeed: seed, caPem })).options.tls as Record<string, unknown>;
  t.is(tls.ca, caPem);
  t.is(tls.checkServerIdentity, checkNatsServerIdentity);
  const given = agentNatsOptions(config(['--nats-tls-ca', join(dir, 'ca.pem')]), () => ({ natsJwt: 'eyJhbGciOi.fake.jwt', natsSeed: seed, caPem })).options.tls as Record<string, unknown>;
  t.is(given.caFile, join(dir, 'ca.pem'));
  t.is(given.ca, undefined);
});

test('agent nats options - missing or malformed credentials stop the start with a config error', (t) => {
  t.throws(() => agentNatsOptions(config(['--nats-creds', join(dir, 'missing.creds')])), { instanceOf: AgentConfigError });
  writeFileSync(join(dir, 'bad.creds'), 'not creds');
  t.throws(() => agentNatsOptions(config(['--nats-creds', join(dir, 'bad.creds')])), { instanceOf: AgentConfigError });
  t.throws(() => config(['--nats-jwt', join(dir, 'nats.jwt')]), { instanceOf: AgentConfigError });
  writeFileSync(join(dir, 'account.seed'), new TextDecoder().decode(createUser().getSeed()).replace(/^SU/, 'SA'));
  t.throws(() => agentNatsOptions(config(['--nats-jwt', join(dir, 'nats.jwt'), '--nats-seed', join(dir, 'account.seed')])), { instanceOf: AgentConfigError });
});

test('agent nats options - only a NATS server identity passes the NATS server check, only a controller the gRPC one', (t) => {
  const peer = (san: string): PeerCertificate => ({ subjectaltname: san }) as PeerCertificate;
  const nats = peer('DNS:nats-1, URI:spiffe://edgeplane/f1/nats/nats-1');
  const controller = peer('DNS:localhost, URI:spiffe://edgeplane/f1/controller/c1');
  const node = peer('URI:spiffe://edgeplane/f1/node/edge-1');
  t.is(checkNatsServerIdentity('nats-1', nats), undefined);
  t.true(checkNatsServerIdentity('localhost', controller) instanceof Error, 'a controller certificate is no NATS server');
  t.true(checkNatsServerIdentity('edge-1', node) instanceof Error, 'a node certificate is no NATS server');
  t.true(checkNatsServerIdentity('nats-1', peer('DNS:nats-1')) instanceof Error, 'a certificate without an identity');
  t.true(checkNatsServerIdentity('nats-1', peer('URI:spiffe://edgeplane/f1/nats/a, URI:spiffe://edgeplane/f1/nats/b')) instanceof Error, 'two identities');
  t.true(checkControllerIdentity('nats-1', nats) instanceof Error, 'a NATS server certificate is no controller');
  t.is(checkControllerIdentity('localhost', controller), undefined);
});
