// The log protects itself against the bus (issue 12): what fails verification is skipped and
// counted, never fatal, for the real controller process and for agents following the same log.
// The agents are the agent's own runtime (AgentRuntime, what the agent process runs: enrolled
// with a join token, its own NATS credentials, its controller link), with a memory datapath, so
// the protections are tested as they run. The test itself holds the bus: a NATS connection with
// the controller's rights, which can write anything on the log subjects.
import test from 'ava';
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import {
  Action,
  INTENT_LIVE_SUBJECT,
  INTENT_SUBJECT,
  LogEntry,
  Policy,
  Protocol,
  RevisionOutcome,
  encodeSignedLogEntry,
  keyIdOf,
  privateKeyFromPem,
  publicKeyFromRaw,
  SignedLogHead,
  signHistoryReset,
  signLogHead,
  signLogEntry,
  type SignedLogEntry,
  type RevisionReport,
} from '@edgeplane/proto';
import { jetstreamManager } from '@nats-io/jetstream';
import { IntentLog } from '@edgeplane/intent-log';
import {
  AgentRuntime,
  CONDITION_INTENT_STALE,
  CONDITION_ROLLBACK_REFUSED,
  MemoryDatapath,
  NodeIdentity,
  StateFile,
  agentNatsOptions,
  enrollNode,
  type Head,
} from '@edgeplane/node-agent';
import { TestControlPlane, until } from './support/control-plane.js';
import { call } from './support/grpc.js';
import { CONTROLLER_MAIN } from './support/fleet.js';
import { Supervised } from './support/supervisor.js';

let cp: TestControlPlane;
let nc: NatsConnection;
const dir = mkdtempSync(join(tmpdir(), 'log-protection-'));
const identities: NodeIdentity[] = [];

test.before(async () => {
  cp = await TestControlPlane.start(['--log-heartbeat', '1']);
  nc = await cp.natsConnect();
});
test.after.always(async () => {
  for (const id of identities) id.close();
  await nc?.close();
  await cp?.close();
  rmSync(dir, { recursive: true, force: true });
});

/** One agent runtime as the agent process runs it, and what the test reads of it. */
interface TestAgent {
  runtime: AgentRuntime;
  reports: RevisionReport[];
  /** The reasons of the log messages it rejected (from its log lines). */
  rejected: string[];
  /** The newest verified head it saved (rollback protection), if any. */
  head(): Head | undefined;
  /** The policies of the revision it enforces, from its state file. */
  policies(): string[];
  /** Whether the agent holds a condition, and its revision. */
  condition(type: string): bigint | undefined;
  output(): string;
}

/**
 * Enrolls `name` with a join token (labels site=ams1) and starts the agent runtime on a memory
 * datapath, with the node's enrolled NATS credentials; closed at the end of the test.
 */
async function startAgent(t: { teardown(fn: () => unknown): void }, name: string, options: { resetKeys?: Map<string, KeyObject>; staleAfterMs?: number } = {}): Promise<TestAgent> {
  const raw = Buffer.from(cp.publicKeyB64, 'base64');
  const stateDir = join(dir, name);
  const args = await cp.agentTrustArgs(name, { site: 'ams1' });
  const creds = await enrollNode({ address: cp.address, token: args[1]!, caFingerprint: args[3]!, nodeName: name, stateDir });
  const lines: string[] = [];
  const identity = new NodeIdentity(creds, { address: cp.address, stateDir, onRenewed: () => undefined, onError: (m) => void lines.push(`identity ${m}`) });
  identity.start();
  identities.push(identity);
  const memory = new MemoryDatapath();
  const reports: RevisionReport[] = [];
  const rejected: string[] = [];
  let head: Head | undefined;
  const stateFile = new StateFile(join(stateDir, 'applied.json'));
  const natsServers = [`nats://127.0.0.1:${cp.natsPort}`];
  const runtime = await AgentRuntime.start({
    nodeName: name,
    labels: identity.credentials.labels,
    datapaths: { uplink: memory, workload: memory },
    stateFile,
    natsServers,
    natsOptions: agentNatsOptions({ nodeName: name, natsServers }, () => identity.credentials).options,
    trustedKeys: new Map([[keyIdOf(raw), publicKeyFromRaw(raw)]]),
    fleetId: String(cp.controller.ready.fleetId),
    controller: { address: cp.address, credentials: identity.channelCredentials() },
    info: { agentVersion: 'test', kernelRelease: 'test', hostname: name, datapath: 'memory', capabilities: undefined },
    sessionId: `${name}-session`,
    heartbeatIntervalMs: 1000,
    verifiedHead: { read: () => head, write: (h) => void (head = h) },
    ...(options.resetKeys ? { resetKeys: options.resetKeys } : {}),
    ...(options.staleAfterMs ? { staleAfterMs: options.staleAfterMs } : {}),
    hooks: { report: (r) => reports.push(r) },
    log: (level, msg, fields) => {
      if (msg === 'rejected log message') rejected.push(String(fields?.reason));
      lines.push(`${level} ${msg} ${JSON.stringify(fields ?? {}, (_k, v: unknown) => (typeof v === 'bigint' ? String(v) : v))}`);
    },
  });
  t.teardown(() => runtime.close());
  await runtime.synced();
  return {
    runtime,
    reports,
    rejected,
    head: () => head,
    policies: () => (stateFile.read()?.snapshot.policies ?? []).map((p) => p.metadata!.name).sort(),
    condition: (type) => runtime.agent.conditions.conditions.find((c) => c.type === type)?.revision,
    output: () => `${lines.slice(-40).join('\n')}\n${cp.controller.output}`,
  };
}

function policy(name: string): Policy {
  return Policy.fromPartial({ metadata: { name }, spec: { nodeSelector: { matchLabels: { site: 'ams1' } }, defaultAction: Action.ACTION_ALLOW, rules: [{ priority: 1, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 22 }], action: Action.ACTION_DENY }] } });
}

const published = async (subject: string, bytes: Uint8Array, sequence?: string): Promise<void> => {
  const h = headers();
  if (sequence !== undefined) h.set('Nats-Sequence', sequence);
  nc.publish(subject, bytes, { headers: h });
  await nc.flush();
};

test.serial('log protection - junk and forged messages on both subjects: the controller keeps writing, the agent keeps following without a NACK', async (t) => {
  const a = await startAgent(t, 'edge-a');
  const r1 = await cp.apply(policy('first'));
  await until('the agent applies the first change', () => a.runtime.status.applied === r1, 15_000, a.output);

  const rogue = generateKeyPairSync('ed25519');
  const forged = signLogEntry(LogEntry.fromPartial({ revision: 999_999n, previousHash: Buffer.alloc(32), change: { deletes: ['first'] } }), rogue.privateKey);
  // Stored by the stream: junk bytes and a forged envelope, each occupying a sequence.
  await published(INTENT_SUBJECT, new Uint8Array([0xde, 0xad, 0xbe, 0xef]));
  await published(INTENT_SUBJECT, encodeSignedLogEntry(forged));
  // Live only: junk, a forged entry with a huge sequence, a header that is not a number.
  await published(INTENT_LIVE_SUBJECT, new Uint8Array([1, 2, 3]), String(r1 + 1n));
  await published(INTENT_LIVE_SUBJECT, encodeSignedLogEntry(forged), '999999');
  await published(INTENT_LIVE_SUBJECT, encodeSignedLogEntry(forged), '9'.repeat(40));
  // A valid signature of this controller's key, but for another fleet.
  const key = privateKeyFromPem(readFileSync(join(cp.dir, 'ctl', 'signing-key.pem'), 'utf8'));
  const foreign = signLogEntry(LogEntry.fromPartial({ revision: r1 + 1n, previousHash: Buffer.alloc(32), fleetId: 'another-fleet', change: { deletes: ['first'] } }), key);
  await published(INTENT_LIVE_SUBJECT, encodeSignedLogEntry(foreign), String(r1 + 1n));

  const r2 = await cp.apply(policy('second'));
  t.is(r2, r1 + 3n, 'the controller wrote after the two stored messages');
  await until('the agent applies the second change', () => a.runtime.status.applied === r2, 15_000, a.output);
  await a.runtime.agent.settled();
  t.deepEqual(a.reports.filter((r) => r.outcome !== RevisionOutcome.REVISION_OUTCOME_ACK), [], 'no NACK');
  t.true(a.runtime.followerStats.rejected >= 6, a.rejected.join('\n'));
  t.true(a.rejected.some((r) => /another-fleet/.test(r)), a.rejected.join('\n'));
  t.is(a.runtime.followerStats.resyncs, 0);
  t.deepEqual(a.policies(), ['first', 'second']);
  t.not(a.condition('log-message-rejected'), undefined, 'raised as a condition');
  await until('the condition in NodeStatus', async () => (await cp.nodeStatus('edge-a'))?.conditions.some((c) => c.type === 'log-message-rejected') === true, 15_000, a.output);

  // An agent that starts now reads the stored junk from the stream and gets the same state.
  const b = await startAgent(t, 'edge-b');
  await until('edge-b at the head', () => b.head()?.revision === r2, 15_000, b.output);
  t.deepEqual(b.head()?.hash, a.head()?.hash);
  t.is(b.runtime.followerStats.rejected, 2);
  // And a restarted controller rebuilds across the junk and keeps writing.
  await cp.controller.stop();
  await cp.controller.start();
  const r3 = await cp.apply(policy('third'));
  t.is(r3, r2 + 1n);
  await until('the agent applies the third change', () => a.runtime.status.applied === r3, 15_000, a.output);
});

test.serial('log protection - a log rewritten with an older valid history is refused (rollback-refused) until an operator reset', async (t) => {
  const operator = generateKeyPairSync('ed25519');
  const fleetId = String(cp.controller.ready.fleetId);
  const agent = await startAgent(t, 'edge-rollback', { resetKeys: new Map([[keyIdOf(operator.publicKey), operator.publicKey]]) });
  const log = await IntentLog.open(nc, { create: false });
  for (const n of ['r1', 'r2', 'r3']) await cp.apply(policy(n));
  const { last: held } = await log.bounds();
  await until('the agent at the head', () => agent.head()?.revision === held && agent.runtime.status.applied === held, 15_000, agent.output);
  const heldHash = agent.head()!.hash;

  // The bus is rolled back: the stream comes back holding an older, validly signed prefix.
  const prefix: SignedLogEntry[] = [];
  for await (const m of log.messages(1n, held - 2n)) if (m.signed) prefix.push(m.signed);
  await cp.controller.stop();
  await (await jetstreamManager(nc)).streams.delete(log.stream);
  const rewound = await IntentLog.open(nc, { create: true });
  for (const [i, e] of prefix.entries()) await rewound.append(e, BigInt(i));
  await cp.controller.start();
  const written = await cp.apply(policy('after-rollback'));
  t.true(written < held, `the controller writes on the shorter log (${written} < ${held})`);

  await until('the refusal', () => agent.condition(CONDITION_ROLLBACK_REFUSED) !== undefined, 30_000, agent.output);
  t.is(agent.head()?.revision, held, 'the agent keeps the chain it verified');
  t.deepEqual(agent.head()?.hash, heldHash);
  t.is(agent.runtime.status.applied, held, 'and enforces its last good revision');
  t.false(agent.policies().includes('after-rollback'));
  t.is(agent.condition(CONDITION_ROLLBACK_REFUSED), held);
  t.is(agent.runtime.followerStats.resyncs, 0);
  await until('rollback-refused in NodeStatus', async () => (await cp.nodeStatus('edge-rollback'))?.conditions.some((c) => c.type === CONDITION_ROLLBACK_REFUSED) === true, 15_000, agent.output);

  // A reset signed by a key agents do not trust changes nothing (the controller accepts it: it holds no reset keys).
  const stranger = generateKeyPairSync('ed25519');
  await call(cp.api.intent, cp.api.intent.resetHistory, { reset: signHistoryReset({ fleetId, epoch: 1n, reason: 'not an operator' }, stranger.privateKey) });
  // The operator's reset: accepted, the follower rebuilds from the log as it is now.
  const epoch2 = signHistoryReset({ fleetId, epoch: 2n, reason: 'nats restored from backup' }, operator.privateKey);
  const { revision } = await call(cp.api.intent, cp.api.intent.resetHistory, { reset: epoch2 });
  // The reset history may end at the revision the agent held (or below): it is applied all the same.
  await until('the reset', () => agent.condition(CONDITION_ROLLBACK_REFUSED) === undefined && agent.head()?.revision === revision && agent.policies().includes('after-rollback'), 30_000, agent.output);
  t.is(agent.runtime.status.applied, revision);
  t.true(agent.policies().includes('after-rollback'));
  t.is(agent.head()?.resetEpoch, 2n, 'the accepted epoch is kept with the head');
  // The same reset again is refused by the controller (epoch not above the newest).
  const again = await t.throwsAsync(call(cp.api.intent, cp.api.intent.resetHistory, { reset: epoch2 }));
  t.regex(again?.message ?? '', /epoch/);
  // And the log flows on.
  const next = await cp.apply(policy('after-reset'));
  await until('the next entry', () => agent.runtime.status.applied === next, 15_000, agent.output);
  t.deepEqual(agent.reports.filter((r) => r.outcome !== RevisionOutcome.REVISION_OUTCOME_ACK), [], 'no NACK throughout');
});

test.serial('log protection - heartbeats stop (controller gone, or withheld): intent-stale; they come back: it clears', async (t) => {
  const agent = await startAgent(t, 'edge-stale', { staleAfterMs: 3000 });
  const log = await IntentLog.open(nc, { create: false });
  t.is(agent.condition(CONDITION_INTENT_STALE), undefined);
  // A forged heartbeat (another key) and a replay do not keep the node fresh.
  const rogue = generateKeyPairSync('ed25519');
  const forged = signLogHead({ fleetId: String(cp.controller.ready.fleetId), revision: 10_000n, hash: Buffer.alloc(32), time: new Date(Date.now() + 60_000), controllerId: 'x' }, rogue.privateKey);
  const before = agent.runtime.followerStats.rejected;
  const catchUps = agent.runtime.followerStats.catchUps;
  await cp.controller.stop();
  const deadline = Date.now() + 30_000;
  while (agent.condition(CONDITION_INTENT_STALE) === undefined && Date.now() < deadline) {
    nc.publish(log.headSubject, SignedLogHead.encode(forged).finish());
    await new Promise((r) => setTimeout(r, 200));
  }
  t.not(agent.condition(CONDITION_INTENT_STALE), undefined, 'stale while only forged heartbeats arrive');
  t.true(agent.runtime.followerStats.rejected > before);
  t.is(agent.runtime.followerStats.catchUps, catchUps, 'a forged head revision triggers no read');
  await cp.controller.start();
  await until('fresh again', () => agent.condition(CONDITION_INTENT_STALE) === undefined, 30_000, agent.output);
  await until('intent-stale cleared in NodeStatus', async () => (await cp.nodeStatus('edge-stale'))?.conditions.some((c) => c.type === CONDITION_INTENT_STALE) === false, 15_000, agent.output);
});

test.serial('log protection - key rotation while agents follow: no NACK, no resync; the rotated controller restarts; a new agent with the first key follows', async (t) => {
  const a = await startAgent(t, 'edge-rot');
  // (What the earlier tests left in the stream is skipped at start; count from here.)
  const rejectedBefore = a.runtime.followerStats.rejected;
  const catchUps = a.runtime.followerStats.catchUps;
  const r1 = await cp.apply(policy('pre-rotation'));
  await until('applied before rotation', () => a.runtime.status.applied === r1, 15_000, a.output);
  await cp.controller.stop();
  const rotating = await Supervised.start('controller-rotating', {
    command: process.execPath,
    args: [CONTROLLER_MAIN, '--listen', `0.0.0.0:${cp.grpcPort}`, ...cp.natsArgs, '--data-dir', join(cp.dir, 'ctl'), '--log-heartbeat', '1', '--shutdown-grace', '1', '--rotate-signing-key'],
    readyEvent: 'ready',
  });
  t.teardown(() => rotating.stop());
  t.not(rotating.ready.keyId, cp.controller.ready.keyId, 'a new signing key');
  const r2 = await cp.apply(policy('post-rotation'));
  await until('applied after rotation', () => a.runtime.status.applied === r2, 15_000, a.output);
  await rotating.stop();
  await cp.controller.start();
  const r3 = await cp.apply(policy('after-restart'));
  await until('applied after the restart', () => a.runtime.status.applied === r3, 15_000, a.output);
  await a.runtime.agent.settled();
  t.deepEqual(a.reports.filter((r) => r.outcome !== RevisionOutcome.REVISION_OUTCOME_ACK), [], 'no NACK');
  t.is(a.runtime.followerStats.rejected, rejectedBefore, a.rejected.join('\n'));
  t.is(a.runtime.followerStats.resyncs, 0);
  t.is(a.runtime.followerStats.catchUps, catchUps, 'the rotation needed no read of the stream');
  // A new agent, trusting only the first key (as every agent's --trusted-key), follows across the rotation.
  const b = await startAgent(t, 'edge-rot-new');
  await until('the new agent applies the head', () => b.runtime.status.applied === r3, 15_000, b.output);
  t.deepEqual(b.head()?.hash, a.head()?.hash);
});
