// The operator's path end to end, with real processes and certificates: a controller started
// with its defaults (mutual TLS from its own CA), the edgeplane CLI with the admin certificate
// it wrote, a join token, a real agent process that enrolls with it, a viewer certificate for
// a colleague, revocation, and a certificate renewal while the agent's stream runs.
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { X509Certificate } from 'node:crypto';
import tls from 'node:tls';
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { FleetServiceClient, TrustServiceClient, type WatchNodesResponse } from '@edgeplane/proto';
import { ControllerLink, NodeIdentity, enrollNode, type NodeCredentials } from '@edgeplane/node-agent';
import { runCli, type CliResult } from './support/cli.js';
import { until } from './support/control-plane.js';
import { AGENT_MAIN, CONTROLLER_MAIN } from './support/fleet.js';
import { call } from './support/grpc.js';
import { Supervised } from './support/supervisor.js';

const run = promisify(execFile);

let dir: string;
let ctl: Supervised;
let address: string;
let adminEnv: NodeJS.ProcessEnv;
const cleanups: (() => unknown)[] = [];

/** `edgeplane --server ADDRESS ARGS` with `env` over this process's environment (the admin's TLS files by default). */
function cli(args: string[], env: NodeJS.ProcessEnv = adminEnv): Promise<CliResult> {
  return runCli(['--server', address, ...args], { env: { ...process.env, ...env }, timeoutMs: 30_000 });
}

async function token(labels = ''): Promise<{ token: string; fingerprint: string }> {
  const out = await cli(['token', 'create', '--ttl', '5m', ...(labels ? ['--labels', labels] : [])]);
  const t = /^token:\s+(\S+)/m.exec(out.stdout)?.[1];
  const f = /^ca-fingerprint:\s+(\S+)/m.exec(out.stdout)?.[1];
  if (!t || !f) throw new Error(`token create: ${out.stdout}${out.stderr}`);
  return { token: t, fingerprint: f };
}

test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'e2e-trust-'));
  ctl = await Supervised.start('controller', {
    command: process.execPath,
    args: [CONTROLLER_MAIN, '--listen', '127.0.0.1:0', '--embedded-nats', '127.0.0.1:0', '--data-dir', join(dir, 'controller'), '--heartbeat-interval', '1', '--shutdown-grace', '1'],
    readyEvent: 'ready',
  });
  address = String(ctl.ready.grpc);
  const admin = join(dir, 'controller', 'admin');
  adminEnv = { EDGEPLANE_TLS_CA: join(admin, 'ca.pem'), EDGEPLANE_TLS_CERT: join(admin, 'admin.pem'), EDGEPLANE_TLS_KEY: join(admin, 'admin-key.pem') };
});
test.after.always(async () => {
  for (const c of cleanups.reverse()) await c();
  await ctl?.stop();
  rmSync(dir, { recursive: true, force: true });
});

test.serial('operator path - token, agent enrollment, a viewer for a colleague, revocation', async (t) => {
  const { token: joinToken, fingerprint } = await token('site=ams1');
  t.is(fingerprint, String(ctl.ready.caFingerprint));
  const stateDir = join(dir, 'agent-1');
  const agent = await Supervised.start('agent-1', {
    command: process.execPath,
    args: [AGENT_MAIN, '--node-name', 'edge-1', '--controller', address, '--nats', String(ctl.ready.nats), '--datapath', 'memory', '--state-dir', stateDir, '--trusted-key', String(ctl.ready.publicKey), '--join-token', joinToken, '--ca-fingerprint', fingerprint],
    readyEvent: 'ready',
  });
  cleanups.push(() => agent.stop());
  t.is(statSync(join(stateDir, 'identity', 'node-key.pem')).mode & 0o777, 0o600);
  await until('edge-1 connected', async () => {
    const out = await cli(['get', 'nodes']);
    return /edge-1/.test(out.stdout) && /site=ams1/.test(out.stdout + (await cli(['describe', 'node', 'edge-1'])).stdout);
  }, 30_000, () => agent.output);

  // The token was single-use: a second agent with it is refused and registers nothing.
  const second = await run(process.execPath, [AGENT_MAIN, '--node-name', 'edge-2', '--controller', address, '--nats', String(ctl.ready.nats), '--datapath', 'memory', '--state-dir', join(dir, 'agent-2'), '--trusted-key', String(ctl.ready.publicKey), '--join-token', joinToken, '--ca-fingerprint', fingerprint], { timeout: 30_000 }).then(
    () => ({ code: 0, stderr: '' }),
    (e: { code: number; stderr: string }) => e,
  );
  t.not(second.code, 0);
  t.regex(second.stderr, /UNAUTHENTICATED|already used/);
  t.notRegex((await cli(['get', 'nodes'])).stdout, /edge-2/);

  // A viewer certificate for a colleague: reads work, writes are refused.
  const alice = join(dir, 'alice');
  const issued = await cli(['cert', 'issue', '--role', 'viewer', '--name', 'alice', '--out', alice]);
  t.is(issued.code, 0, issued.stderr);
  t.is(statSync(join(alice, 'alice-key.pem')).mode & 0o777, 0o600);
  const aliceEnv = { EDGEPLANE_TLS_CA: join(alice, 'ca.pem'), EDGEPLANE_TLS_CERT: join(alice, 'alice.pem'), EDGEPLANE_TLS_KEY: join(alice, 'alice-key.pem') };
  t.regex((await cli(['get', 'nodes'], aliceEnv)).stdout, /edge-1/);
  const write = await cli(['delete', 'policy', 'anything', '--ignore-not-found'], aliceEnv);
  t.not(write.code, 0);
  t.regex(write.stderr, /PERMISSION_DENIED/);
  const tok = await cli(['token', 'create'], aliceEnv);
  t.regex(tok.stderr, /PERMISSION_DENIED/);

  // The node keeps the fleet it enrolled in (the controller's one fleet id).
  const meta = JSON.parse(readFileSync(join(stateDir, 'identity', 'meta.json'), 'utf8')) as { fleetId: string; labels: Record<string, string> };
  t.is(meta.fleetId, String(ctl.ready.fleetId));
  t.deepEqual(meta.labels, { site: 'ams1' });
  // Labels change only through the admin path: the agent reconnects, is told them and stores them.
  t.regex((await cli(['node', 'label', 'edge-1', 'site=ams1', 'tier=canary'], aliceEnv)).stderr, /PERMISSION_DENIED/);
  const labelled = await cli(['node', 'label', 'edge-1', 'site=ams1', 'tier=canary']);
  t.is(labelled.code, 0, labelled.stderr);
  t.regex(labelled.stdout, /node\/edge-1 labels site=ams1,tier=canary/);
  await until('edge-1 relabelled', async () => /tier=canary/.test((await cli(['describe', 'node', 'edge-1'])).stdout), 30_000, () => agent.output);
  await until('labels stored by the agent', () => (JSON.parse(readFileSync(join(stateDir, 'identity', 'meta.json'), 'utf8')) as typeof meta).labels.tier === 'canary', 30_000, () => agent.output);
  // The running agent compiles for them at once (no restart).
  await until('the agent compiled for its new labels', () => /compiling for them/.test(agent.output), 30_000, () => agent.output);

  // Alice's certificate is listed; she may not revoke anything; the admin revokes hers by name.
  const listed = await cli(['cert', 'list']);
  t.is(listed.code, 0, listed.stderr);
  t.regex(listed.stdout, /^SERIAL\s+ROLE\s+NAME/m);
  t.regex(listed.stdout, /\bviewer\s+alice\b.*\bvalid\b/);
  t.regex((await cli(['cert', 'revoke', 'admin'], aliceEnv)).stderr, /PERMISSION_DENIED/);
  const certRevoked = await cli(['cert', 'revoke', 'alice', '--reason', 'left']);
  t.is(certRevoked.code, 0, certRevoked.stderr);
  t.regex(certRevoked.stdout, /\(viewer\/alice\) revoked at/);
  const refused = await cli(['get', 'nodes'], aliceEnv);
  t.not(refused.code, 0);
  t.regex(refused.stderr, /UNAUTHENTICATED/);
  t.regex((await cli(['cert', 'list'])).stdout, /\bviewer\s+alice\b.*\brevoked\b/);

  // Revocation: the agent's stream is closed and it cannot come back.
  const revoked = await cli(['node', 'revoke', 'edge-1', '--reason', 'e2e']);
  t.is(revoked.code, 0, revoked.stderr);
  await until('edge-1 disconnected', async () => /Disconnected/.test((await cli(['describe', 'node', 'edge-1'])).stdout), 60_000, () => agent.output);
  t.regex(agent.output, /UNAUTHENTICATED|revoked/);

  // An enrolled node's labels and fleet are the enrolled ones: disagreeing flags refuse to start.
  for (const [flag, why] of [[['--labels', 'site=elsewhere'], /bound at enrollment/], [['--fleet-id', 'another-fleet'], /enrolled in fleet/]] as const) {
    const bad = await run(process.execPath, [AGENT_MAIN, '--node-name', 'edge-1', '--controller', address, '--nats', String(ctl.ready.nats), '--datapath', 'memory', '--state-dir', stateDir, '--trusted-key', String(ctl.ready.publicKey), '--ca-fingerprint', fingerprint, ...flag], { timeout: 30_000 }).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code: number; stderr: string }) => e,
    );
    t.not(bad.code, 0);
    t.regex(bad.stderr, why);
  }
});

test.serial('renewal - the agent renews its certificate while its stream runs; the registry sees no disconnect', async (t) => {
  const { token: joinToken, fingerprint } = await token();
  const stateDir = join(dir, 'agent-renew');
  const creds: NodeCredentials = await enrollNode({ address, token: joinToken, caFingerprint: fingerprint, nodeName: 'edge-r', stateDir });
  const identity = new NodeIdentity(creds, { address, stateDir });
  cleanups.push(() => identity.close());
  let connected = false;
  const link = new ControllerLink({
    address,
    credentials: identity.channelCredentials(),
    hello: () => ({ nodeName: 'edge-r', labels: {}, info: undefined, interfaces: [], receivedRevision: 0n, appliedRevision: 0n, sessionId: 'renew', conditions: [], appliedUnknown: false, lastReport: undefined }),
    counters: () => undefined,
    heartbeatIntervalMs: 500,
    onStateChange: (c) => (connected = c),
  });
  cleanups.push(() => link.close());
  link.start();
  await until('link connected', () => connected, 30_000);

  // Watch the registry as admin: any disconnect of edge-r would show as an event.
  const admin = join(dir, 'controller', 'admin');
  const adminCreds = grpc.credentials.createSsl(readFileSync(join(admin, 'ca.pem')), readFileSync(join(admin, 'admin-key.pem')), readFileSync(join(admin, 'admin.pem')));
  const fleet = new FleetServiceClient(address, adminCreds);
  cleanups.push(() => fleet.close());
  const events: WatchNodesResponse[] = [];
  const watch = fleet.watchNodes({ labelSelector: '', sendInitial: false });
  watch.on('data', (e: WatchNodesResponse) => void (e.node?.name === 'edge-r' && events.push(e)));
  watch.on('error', () => undefined);
  cleanups.push(() => watch.cancel());

  const before = new X509Certificate(identity.credentials.certPem);
  await identity.renew();
  const after = new X509Certificate(identity.credentials.certPem);
  t.not(after.serialNumber, before.serialNumber);
  t.false(after.publicKey.equals(before.publicKey), 'a new key');
  t.is(new X509Certificate(readFileSync(join(stateDir, 'identity', 'node.pem'))).serialNumber, after.serialNumber, 'stored');

  // A new connection presents the new certificate: renewing without a key returns one for the key presented.
  const fresh = new TrustServiceClient(address, identity.channelCredentials(), { 'grpc.use_local_subchannel_pool': 1 });
  cleanups.push(() => fresh.close());
  const again = await call(fresh, fresh.renewCertificate, { publicKey: Buffer.alloc(0), proof: Buffer.alloc(0), natsPublicKey: '' });
  t.true(new X509Certificate(again.certificate).publicKey.equals(after.publicKey));

  // The old stream still carries heartbeats: the node stays connected, with no disconnect event.
  const node = await call(fleet, fleet.getNode, { name: 'edge-r' });
  t.true(node.node?.status?.connected);
  await new Promise((r) => setTimeout(r, 1500)); // a few heartbeat round-trips on the old stream
  t.true(connected);
  t.false(events.some((e) => e.node?.status?.connected === false), JSON.stringify(events.map((e) => e.type)));
});

test.serial('NodeIdentity - one TLS secure context per certificate, however many connections it makes', async (t) => {
  const { token: joinToken, fingerprint } = await token();
  const stateDir = join(dir, 'agent-ctx');
  const identity = new NodeIdentity(await enrollNode({ address, token: joinToken, caFingerprint: fingerprint, nodeName: 'edge-ctx', stateDir }), { address, stateDir });
  cleanups.push(() => identity.close());
  // Count the contexts grpc-js builds (it calls node:tls's createSecureContext through the module object).
  const original = tls.createSecureContext;
  let built = 0;
  tls.createSecureContext = (...args: Parameters<typeof original>) => {
    built++;
    return original(...args);
  };
  t.teardown(() => void (tls.createSecureContext = original));
  /** One new connection (its own subchannel pool), one call as the node; returns the certificate the controller saw. */
  const connectOnce = async (): Promise<X509Certificate> => {
    const c = new TrustServiceClient(address, identity.channelCredentials(), { 'grpc.use_local_subchannel_pool': 1 });
    try {
      return new X509Certificate((await call(c, c.renewCertificate, { publicKey: Buffer.alloc(0), proof: Buffer.alloc(0), natsPublicKey: '' })).certificate);
    } finally {
      c.close();
    }
  };
  for (let i = 0; i < 4; i++) await connectOnce();
  t.is(built, 1, 'four connections, one context');
  await identity.renew();
  const renewed = new X509Certificate(identity.credentials.certPem);
  built = 0;
  for (let i = 0; i < 3; i++) t.true((await connectOnce()).publicKey.equals(renewed.publicKey), 'new connections present the renewed key');
  t.is(built, 1, 'a renewal builds one new context');
});

test('NodeIdentity - closing twice is safe', (t) => {
  const cert = readFileSync(join(dir, 'controller', 'admin', 'admin.pem'), 'utf8');
  const identity = new NodeIdentity({ nodeName: 'x', certPem: cert, keyPem: '', caPem: cert, notAfter: new Date(), natsSeed: '', natsJwt: '', labels: {}, fleetId: '' }, { address, stateDir: join(dir, 'unused') });
  identity.close();
  t.notThrows(() => identity.close());
});
