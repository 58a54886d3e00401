// A controller whose own event loop stalls (SIGSTOP here; a long GC or CPU starvation in the
// field) must not take the stall for its agents' silence: after it resumes, a stream whose
// heartbeats were waiting in the socket is kept, and one that really went silent is still closed.
// Real controller process, real mutual TLS, a real enrolled identity.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import type * as grpc from '@grpc/grpc-js';
import { AgentServiceClient, type ConnectRequest, type ConnectResponse } from '@edgeplane/proto';
import { ControllerLink, NodeIdentity, enrollNode } from '@edgeplane/node-agent';
import { TestControlPlane, until } from './support/control-plane.js';

let cp: TestControlPlane;
let dir: string;
const cleanups: (() => unknown)[] = [];
test.before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'ep-stall-'));
  // Heartbeat interval 1 s: the controller ends a stream silent for 3 s.
  cp = await TestControlPlane.start(['--heartbeat-interval', '1']);
});
test.after.always(async () => {
  for (const c of cleanups.reverse()) await c();
  await cp?.close();
  rmSync(dir, { recursive: true, force: true });
});

async function enrolled(name: string): Promise<NodeIdentity> {
  const args = await cp.agentTrustArgs(name);
  const stateDir = join(dir, name);
  const creds = await enrollNode({ address: cp.address, token: args[1]!, caFingerprint: args[3]!, nodeName: name, stateDir });
  const identity = new NodeIdentity(creds, { address: cp.address, stateDir });
  cleanups.push(() => identity.close());
  return identity;
}

/** An enrolled node's raw Connect stream: hello sent, with what the controller sent and how it ended. */
async function nodeStream(name: string) {
  const identity = await enrolled(name);
  const client = new AgentServiceClient(cp.address, identity.channelCredentials());
  const stream = client.connect();
  const state = { echoes: 0, welcomed: false, ended: undefined as string | undefined };
  stream.on('data', (m: ConnectResponse) => {
    if (m.message?.$case === 'welcome') state.welcomed = true;
    if (m.message?.$case === 'heartbeat') state.echoes++;
  });
  stream.on('error', (e: grpc.ServiceError) => (state.ended ??= `${e.code} ${e.details}`));
  stream.on('end', () => (state.ended ??= 'end'));
  cleanups.push(() => {
    stream.cancel();
    client.close();
  });
  let sequence = 0n;
  const send = (m: ConnectRequest): void => void stream.write(m);
  const heartbeat = (): void => send({ message: { $case: 'heartbeat', heartbeat: { sequence: ++sequence, time: new Date() } } });
  send({ message: { $case: 'hello', hello: { nodeName: name, labels: {}, info: undefined, interfaces: [], receivedRevision: 0n, appliedRevision: 0n, sessionId: name, conditions: [], appliedUnknown: false, lastReport: undefined } } });
  await until(`${name} welcomed`, () => state.welcomed || state.ended !== undefined, 20_000, () => cp.controller.output);
  if (!state.welcomed) throw new Error(`${name} not welcomed: ${state.ended}`);
  return { state, heartbeat };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test.serial('controller stall - streams whose heartbeats waited in the socket are kept; a silent one is still closed', async (t) => {
  const talking = await nodeStream('stall-talking');
  const silent = await nodeStream('stall-silent');
  talking.heartbeat();
  silent.heartbeat();
  await until('echoes', () => talking.state.echoes > 0 && silent.state.echoes > 0);

  // Freeze the controller for 4.5 s, longer than its 3 s idle bound: both idle timers fall due
  // during the stop and fire late when it resumes, before the socket is read. One node goes on
  // sending heartbeats every second (the kernel buffers them); the other says nothing.
  const pid = cp.controller.pid!;
  process.kill(pid, 'SIGSTOP');
  try {
    for (let i = 0; i < 4; i++) {
      await sleep(1000);
      talking.heartbeat();
    }
    await sleep(500);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  const echoesAtResume = talking.state.echoes;
  // Keep talking for 5 s more: the kept stream is echoed; the silent one is closed as half-open.
  for (let i = 0; i < 5; i++) {
    await sleep(1000);
    talking.heartbeat();
  }
  t.is(talking.state.ended, undefined, `the talking node's stream was ended\n${cp.controller.output}`);
  t.true(talking.state.echoes > echoesAtResume + 3, 'heartbeats are echoed after the stall');
  t.regex(silent.state.ended ?? '', /silent/, 'a node that said nothing is still closed as half-open');
});

test.serial('controller stall - an agent whose heartbeats go unanswered three times calls the stream half-open, and reconnects', async (t) => {
  const identity = await enrolled('stall-link');
  const changes: { up: boolean; reason: string }[] = [];
  const link = new ControllerLink({
    address: cp.address,
    credentials: identity.channelCredentials(),
    hello: () => ({ nodeName: 'stall-link', labels: {}, info: undefined, interfaces: [], receivedRevision: 0n, appliedRevision: 0n, sessionId: 'stall-link', conditions: [], appliedUnknown: false, lastReport: undefined }),
    counters: () => undefined,
    onStateChange: (up, reason) => changes.push({ up, reason }),
    maxBackoffMs: 500,
  });
  cleanups.push(() => link.close());
  link.start();
  await until('link connected', () => link.connected, 20_000);
  const pid = cp.controller.pid!;
  process.kill(pid, 'SIGSTOP');
  try {
    // The welcome's settings say 1 s: the fourth heartbeat finds three unanswered.
    await until('link down', () => !link.connected, 10_000);
  } finally {
    process.kill(pid, 'SIGCONT');
  }
  t.like(changes.at(-1), { up: false, reason: 'heartbeats stopped coming back' });
  await until('link back', () => link.connected, 20_000);
  t.true(changes.at(-1)?.up);
});
