// Least-privilege NATS (DESIGN.md, Trust): a real nats-server in JWT mode with the controller's
// NatsAuthority; a red team with one node's real credentials, and with none, tries everything
// a compromised node could want on the bus.
import test, { type ExecutionContext } from 'ava';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { encodeUser } from '@nats-io/jwt';
import { createUser, fromSeed, type KeyPair } from '@nats-io/nkeys';
import {
  Action,
  INTENT_HEAD_SUBJECT,
  INTENT_LIVE_SUBJECT,
  INTENT_STREAM,
  INTENT_SUBJECT,
  LogEntry,
  NODE_REGISTRY_BUCKET,
  FLEET_STATUS_SUBJECT_PREFIX,
  FLEET_CONNECTIONS_SUBJECT_PREFIX,
  REPLICAS_BUCKET,
  ROLLOUT_LEASE_KEY,
  Policy,
  SNAPSHOT_BUCKET,
  TRUST_BUCKET,
  Snapshot,
  keyIdOf,
  signLogEntry,
  signSnapshot,
  type SignedLogEntry,
} from '@edgeplane/proto';
import { IntentChain, IntentLog, NatsServer, formatCreds, natsClientOptions } from '@edgeplane/intent-log';
import { NatsAuthority, NatsAuthorityError, natsAccountPusher } from '../src/index.js';

const { privateKey, publicKey } = generateKeyPairSync('ed25519');
const trusted = new Map([[keyIdOf(publicKey), publicKey]]);
const dir = mkdtempSync(join(tmpdir(), 'nats-auth-test-'));
const hour = () => new Date(Date.now() + 3600_000);
let authority: NatsAuthority;
let server: NatsServer;
let ctl: NatsConnection;
let sys: NatsConnection;
let log: IntentLog;
const writer = new IntentChain(trusted);
const opened: NatsConnection[] = [];

function entry(name: string): SignedLogEntry {
  return signLogEntry(
    LogEntry.fromPartial({ revision: writer.revision + 1n, previousHash: Buffer.from(writer.lastHash), change: { upserts: [Policy.fromPartial({ metadata: { name, resourceVersion: writer.revision + 1n }, spec: { rules: [{ priority: 1, action: Action.ACTION_DENY }] } })], deletes: [] } }),
    privateKey,
  );
}

async function append(name: string): Promise<void> {
  const e = entry(name);
  await log.append(e, writer.revision);
  writer.append(e);
}

async function open(options: Partial<NodeConnectionOptions>): Promise<NatsConnection> {
  const nc = await connect({ servers: server.url, reconnect: false, timeout: 5000, ...options });
  opened.push(nc);
  return nc;
}

/** The server refuses the connection for who it is (not, say, because nothing listens). */
async function refused(t: ExecutionContext, connecting: Promise<NatsConnection>, what: string, reason = /authorization violation/i): Promise<void> {
  const error = await t.throwsAsync(connecting, undefined, what);
  t.regex(String(error?.message), reason, `${what}: ${error?.message}`);
}

/** A node's NATS identity as enrollment makes it: its own key pair, a JWT from the authority. */
async function node(name: string, expiresAt = hour()): Promise<{ kp: KeyPair; jwt: string; seed: string }> {
  const kp = createUser();
  const jwt = await authority.issueNode(name, kp.getPublicKey(), expiresAt);
  return { kp, jwt, seed: new TextDecoder().decode(kp.getSeed()) };
}

test.before(async () => {
  authority = NatsAuthority.open(join(dir, 'auth'));
  server = await NatsServer.start({ dataDir: join(dir, 'nats'), configFragment: await authority.serverConfig(join(dir, 'nats', 'jwt')) });
  ctl = await open({ ...natsClientOptions(await authority.controllerCredentials()), reconnect: true });
  sys = await open(natsClientOptions(await authority.systemCredentials()));
  authority.usePusher(natsAccountPusher(sys));
  await authority.publishAccount();
  log = await IntentLog.open(ctl, { create: true });
  await append('one');
  await append('two');
  await log.writeSnapshot(signSnapshot(Snapshot.fromPartial({ revision: writer.revision, policies: [...writer.policies.values()] }), privateKey));
  const trust = await new Kvm(ctl).create(TRUST_BUCKET, { history: 1 });
  await trust.put('token.abc', 'a join token');
  const registry = await new Kvm(ctl).create(NODE_REGISTRY_BUCKET, { history: 1 });
  await registry.put('edge-9', 'secret registry record');
  const replicas = await new Kvm(ctl).create(REPLICAS_BUCKET, { history: 1 });
  await replicas.put(ROLLOUT_LEASE_KEY, 'replica-1');
});

test.after.always(async () => {
  for (const nc of opened) await nc.close().catch(() => undefined);
  await server?.close();
  rmSync(dir, { recursive: true, force: true });
});

/**
 * Everything a node must not do, each tried for real. Returns the ones that worked (the test
 * wants none). The controller's own view decides whether something changed.
 */
async function attacks(nc: NatsConnection): Promise<string[]> {
  const worked: string[] = [];
  const ctlJsm = await jetstreamManager(ctl);
  const before = (await ctlJsm.streams.info(INTENT_STREAM)).state;
  // Publishing on any edgeplane subject: the controller listens on each and must hear nothing.
  const heard: string[] = [];
  const subjects = [INTENT_SUBJECT, INTENT_LIVE_SUBJECT, INTENT_HEAD_SUBJECT, 'edgeplane.fleet.status', `${FLEET_STATUS_SUBJECT_PREFIX}.replica-1`, `${FLEET_CONNECTIONS_SUBJECT_PREFIX}.replica-1`, 'edgeplane.anything.else'];
  const subs = subjects.map((s) => ctl.subscribe(s, { callback: (_e, m) => void heard.push(`${m.subject}:${m.string()}`) }));
  await ctl.flush();
  // Reading the replicas' fleet state: the node subscribes, a replica publishes.
  nc.subscribe(`${FLEET_STATUS_SUBJECT_PREFIX}.*`, { callback: (e, m) => void (!e && worked.push(`read ${m.subject}`)) });
  // Serving (or reading) the replicas' connection queries: a replica relays one, the node listens.
  nc.subscribe(`${FLEET_CONNECTIONS_SUBJECT_PREFIX}.*`, { callback: (e, m) => void (!e && worked.push(`read the connection query on ${m.subject}`)) });
  await nc.flush().catch(() => undefined);
  ctl.publish(`${FLEET_STATUS_SUBJECT_PREFIX}.replica-2`, 'fleet state');
  ctl.publish(`${FLEET_CONNECTIONS_SUBJECT_PREFIX}.replica-2`, 'edge-1');
  for (const s of subjects) nc.publish(s, 'junk', { headers: undefined });
  await nc.flush().catch(() => undefined);
  // A marker from the controller after the node's publishes: once it arrives, anything the
  // server had routed from the node has arrived before it.
  const marker = new Promise<void>((resolve) => ctl.subscribe('edgeplane.marker', { max: 1, callback: () => resolve() }));
  ctl.publish('edgeplane.marker', 'm');
  await marker;
  await ctl.flush();
  for (const s of subs) s.unsubscribe();
  worked.push(...heard.map((h) => `publish ${h}`));

  // A replica that answers connection queries: the node must not be able to ask it.
  const relay = ctl.subscribe(`${FLEET_CONNECTIONS_SUBJECT_PREFIX}.replica-3`, { callback: (_e, m) => void m.respond('rows of edge-1') });
  await ctl.flush();
  const js = jetstream(nc, { timeout: 3000 });
  await js.publish(INTENT_SUBJECT, 'junk').then(() => worked.push('jetstream publish on the log subject'), () => undefined);
  const jsm = await jetstreamManager(nc, { timeout: 3000, checkAPI: false });
  const tries: [string, () => Promise<unknown>][] = [
    ['purge the stream', () => jsm.streams.purge(INTENT_STREAM)],
    ['delete the stream', () => jsm.streams.delete(INTENT_STREAM)],
    ['delete a log entry', () => jsm.streams.deleteMessage(INTENT_STREAM, 1)],
    ['update the stream', async () => jsm.streams.update(INTENT_STREAM, { ...(await ctlJsm.streams.info(INTENT_STREAM)).config, republish: { src: INTENT_SUBJECT, dest: 'edgeplane.stolen' } })],
    ['add a stream', () => jsm.streams.add({ name: 'EVIL', subjects: ['edgeplane.evil'] })],
    ['list the consumers', () => jsm.consumers.list(INTENT_STREAM).next()],
    ['create a consumer on the node registry', () => jsm.consumers.add(`KV_${NODE_REGISTRY_BUCKET}`, { name: 'evil' })],
    ['read the node registry', async () => (await new Kvm(js).open(NODE_REGISTRY_BUCKET)).get('edge-9')],
    ['read the node registry by stream get', () => jsm.streams.getMessage(`KV_${NODE_REGISTRY_BUCKET}`, { last_by_subj: `$KV.${NODE_REGISTRY_BUCKET}.edge-9` })],
    ['read the trust bucket (join tokens, revocations)', async () => (await new Kvm(js).open(TRUST_BUCKET)).keys().then(async (it) => { for await (const k of it) return k; return undefined; })],
    ['put in the snapshot bucket', async () => (await new Kvm(js).open(SNAPSHOT_BUCKET)).put('latest', 'junk')],
    ['delete in the snapshot bucket', async () => (await new Kvm(js).open(SNAPSHOT_BUCKET)).delete('latest')],
    ['purge the snapshot bucket stream', () => jsm.streams.purge(`KV_${SNAPSHOT_BUCKET}`)],
    ['put in the node registry', () => nc.request(`$KV.${NODE_REGISTRY_BUCKET}.edge-9`, 'junk', { timeout: 2000 })],
    ['read the replicas bucket (fleet state snapshots)', async () => (await new Kvm(js).open(REPLICAS_BUCKET)).get(ROLLOUT_LEASE_KEY)],
    ['take the rollout lease', () => nc.request(`$KV.${REPLICAS_BUCKET}.${ROLLOUT_LEASE_KEY}`, 'edge', { timeout: 2000 })],
    ['ask a replica for a node\'s connections', () => nc.request(`${FLEET_CONNECTIONS_SUBJECT_PREFIX}.replica-3`, 'edge-1', { timeout: 2000 })],
  ];
  for (const [what, attempt] of tries) {
    await attempt().then(
      (r) => (r === null || r === undefined ? undefined : worked.push(what)),
      () => undefined,
    );
  }
  relay.unsubscribe();
  const after = (await ctlJsm.streams.info(INTENT_STREAM)).state;
  if (after.last_seq !== before.last_seq || after.messages !== before.messages) worked.push(`the stream changed: ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
  const snap = await new Kvm(ctl).open(SNAPSHOT_BUCKET).then((kv) => kv.get('latest'));
  if (snap?.operation !== 'PUT' || snap.value.length < 10) worked.push('the snapshot changed');
  const reg = await new Kvm(ctl).open(NODE_REGISTRY_BUCKET).then((kv) => kv.get('edge-9'));
  if (reg?.string() !== 'secret registry record') worked.push('the registry changed');
  const lease = await new Kvm(ctl).open(REPLICAS_BUCKET).then((kv) => kv.get(ROLLOUT_LEASE_KEY));
  if (lease?.string() !== 'replica-1') worked.push('the rollout lease changed');
  if ((await ctlJsm.streams.names().next()).includes('EVIL')) worked.push('a stream was added');
  return worked;
}

test.serial('nats authority - a node with its own credentials cannot publish, administer or read controller buckets', async (t) => {
  const n = await node('edge-1');
  const nc = await open(natsClientOptions({ jwt: n.jwt, seed: n.seed }));
  t.deepEqual(await attacks(nc), []);
  // The controller, with its credentials, still writes.
  await append('after-red-team');
  t.is((await log.bounds()).last, writer.revision);
});

test.serial('nats authority - a node follows the live subject and reads the stream and snapshot', async (t) => {
  const n = await node('edge-2');
  const nc = await open(natsClientOptions({ jwt: n.jwt, seed: n.seed }));
  const nodeLog = await IntentLog.open(nc, { create: false });
  const bounds = await nodeLog.bounds();
  t.is(bounds.last, writer.revision);
  const reader = new IntentChain(trusted);
  for await (const { signed } of nodeLog.read(bounds.first, bounds.last)) reader.append(signed);
  t.deepEqual(reader.lastHash, writer.lastHash);
  const snapshot = await nodeLog.readSnapshot();
  t.truthy(snapshot);
  const got = new Promise<bigint>((resolve, reject) => {
    const sub = nodeLog.subscribe((_s, revision) => {
      sub.unsubscribe();
      resolve(revision);
    }, reject);
  });
  await nc.flush();
  await append('live');
  t.is(await got, writer.revision);
  // The head subject is open to it as well.
  const head = new Promise<string>((resolve) => nc.subscribe(INTENT_HEAD_SUBJECT, { max: 1, callback: (_e, m) => resolve(m.string()) }));
  await nc.flush();
  ctl.publish(INTENT_HEAD_SUBJECT, 'head');
  t.is(await head, 'head');
});

test.serial('nats authority - a node cannot subscribe to the log subject, the registry or others\' inboxes', async (t) => {
  const n = await node('edge-3');
  const nc = await open(natsClientOptions({ jwt: n.jwt, seed: n.seed }));
  const got: string[] = [];
  for (const s of [INTENT_SUBJECT, '_INBOX.>', '>', '$KV.>', 'edgeplane.>']) nc.subscribe(s, { callback: (err, m) => void (err ? undefined : got.push(`${s}:${m.subject}`)) });
  await nc.flush();
  await append('unseen');
  await (await jetstreamManager(ctl)).streams.info(INTENT_STREAM);
  const kv = await new Kvm(ctl).open(NODE_REGISTRY_BUCKET);
  await kv.put('edge-9', 'secret registry record');
  await ctl.flush();
  await nc.flush().catch(() => undefined);
  t.deepEqual(got, []);
});

test.serial('nats authority - anonymous, wrong-key and expired clients are refused', async (t) => {
  await refused(t, open({}), 'anonymous');
  const n = await node('edge-4');
  const other = createUser();
  await refused(t, open(natsClientOptions({ jwt: n.jwt, seed: new TextDecoder().decode(other.getSeed()) })), 'a JWT with a seed that is not its key');
  // An expired JWT, signed by the real account key (issueNode refuses a past expiry).
  const account = fromSeed(new TextEncoder().encode(readFileSync(join(dir, 'auth', 'account.nk'), 'utf8').trim()));
  const u = createUser();
  const expired = await encodeUser('edge-5', u, account, {}, { exp: Math.floor(Date.now() / 1000) - 60 });
  await refused(t, open(natsClientOptions({ jwt: expired, seed: new TextDecoder().decode(u.getSeed()) })), 'expired');
  // A JWT signed by some other account key.
  const forged = await encodeUser('edge-6', u, (await import('@nats-io/nkeys')).createAccount(), {});
  // Signed by an account the server does not know: its resolver looks the account up and the
  // server never answers the CONNECT, so the client's connect timeout ends it.
  await refused(t, open(natsClientOptions({ jwt: forged, seed: new TextDecoder().decode(u.getSeed()) })), 'forged', /timeout/i);
});

test.serial('nats authority - a revoked node is disconnected and cannot reconnect', async (t) => {
  const n = await node('edge-7');
  const bystander = await node('edge-8');
  const nc = await open({ ...natsClientOptions({ jwt: n.jwt, seed: n.seed }), reconnect: true, maxReconnectAttempts: 3, reconnectTimeWait: 200 });
  const ok = await open(natsClientOptions({ jwt: bystander.jwt, seed: bystander.seed }));
  const start = Date.now();
  await authority.revokeNode('edge-7');
  const closed = await nc.closed();
  const cutOff = Date.now() - start;
  t.log(`revoked connection closed ${cutOff} ms after revokeNode (closed with: ${closed?.message ?? 'no error'})`);
  t.true(nc.isClosed());
  await refused(t, open(natsClientOptions({ jwt: n.jwt, seed: n.seed })), 'reconnecting with the revoked JWT');
  // Re-issuing the revoked key is refused; the other node stays connected.
  await t.throwsAsync(authority.issueNode('edge-7', n.kp.getPublicKey(), hour()), { instanceOf: NatsAuthorityError });
  t.false(ok.isClosed());
  await ok.flush();
  await authority.revokeNode('never-issued');
});

test.serial('nats authority - revocations survive a restart of the authority and the server', async (t) => {
  const n = await node('edge-10');
  await authority.revokeNode('edge-10');
  const again = NatsAuthority.open(join(dir, 'auth'));
  t.is(again.accountPublicKey, authority.accountPublicKey);
  // The server restarts with its config file's preloaded account JWT, which predates the
  // revocation: the resolver's stored (newer) JWT must win.
  await server.restart();
  await refused(t, open(natsClientOptions({ jwt: n.jwt, seed: n.seed })), 'the revoked JWT after the restart');
  const fresh = await node('edge-11');
  const nc = await open(natsClientOptions({ jwt: fresh.jwt, seed: fresh.seed }));
  t.is((await IntentLog.open(nc, { create: false }).then((l) => l.bounds())).last, writer.revision);
});

test('nats authority - keys are files of mode 0600 and bad input is refused', async (t) => {
  for (const f of ['operator.nk', 'account.nk', 'system-account.nk', 'controller-user.nk', 'system-user.nk', 'issued.json']) t.is(statSync(join(dir, 'auth', f)).mode & 0o777, 0o600, f);
  await t.throwsAsync(authority.issueNode('x', 'not-a-key', hour()), { instanceOf: NatsAuthorityError });
  await t.throwsAsync(authority.issueNode('x', authority.accountPublicKey, hour()), { instanceOf: NatsAuthorityError });
  await t.throwsAsync(authority.issueNode('x', createUser().getPublicKey(), new Date(Date.now() - 1000)), { instanceOf: NatsAuthorityError });
});

test.serial('nats authority - a creds file as enrollment writes it connects a reader', async (t) => {
  const n = await node('edge-12');
  const file = join(dir, 'edge-12.creds');
  writeFileSync(file, formatCreds(n.jwt, n.seed), { mode: 0o600 });
  const nc = await open(natsClientOptions({ credsFile: file }));
  t.is((await (await IntentLog.open(nc, { create: false })).bounds()).last, writer.revision);
  t.throws(() => natsClientOptions({ credsFile: join(dir, 'missing.creds') }), { name: 'NatsCredentialsError' });
  t.throws(() => natsClientOptions({ jwt: n.jwt }), { name: 'NatsCredentialsError' });
});
