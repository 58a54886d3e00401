// A controller whose own event loop stalls (SIGSTOP here; a long GC or CPU starvation in the
// field) must not take the stall for its agents' silence: after it resumes, a stream whose
// heartbeats were waiting in the socket is kept, and one that really went silent is still closed.
// Real controller process, real mutual TLS, a real enrolled identity.
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import test from 'ava';
import type * as grpc from '@grpc/grpc-js';
import { AgentServiceClient, type ConnectRequest, type ConnectResponse } from '@edgeplane/proto';
import { ControllerLink, NodeIdentity, enrollNode } from '@edgeplane/node-agent';
import { TestControlPlane, until } from './support/control-plane.js';
import { call } from './support/grpc.js';

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

async function enrolled(name: string, plane: TestControlPlane = cp): Promise<NodeIdentity> {
  const args = await plane.agentTrustArgs(name);
  const stateDir = join(dir, name);
  const creds = await enrollNode({ address: plane.address, token: args[1]!, caFingerprint: args[3]!, nodeName: name, stateDir });
  const identity = new NodeIdentity(creds, { address: plane.address, stateDir });
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

/** An enrolled node's ControllerLink to `address` (the plane's, or a relay's), connected, with the up/down changes it reported. */
async function connectedLink(name: string, plane: TestControlPlane, address: string, options: { keepaliveMs?: number; keepaliveTimeoutMs?: number } = {}) {
  const identity = await enrolled(name, plane);
  const changes: { up: boolean; reason: string }[] = [];
  const link = new ControllerLink({
    address,
    credentials: identity.channelCredentials(),
    hello: () => ({ nodeName: name, labels: {}, info: undefined, interfaces: [], receivedRevision: 0n, appliedRevision: 0n, sessionId: name, conditions: [], appliedUnknown: false, lastReport: undefined }),
    counters: () => undefined,
    onStateChange: (up, reason) => changes.push({ up, reason }),
    maxBackoffMs: 500,
    ...options,
  });
  cleanups.push(() => link.close());
  link.start();
  await until(`${name} link connected`, () => link.connected, 20_000);
  return { link, changes };
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
  const { link, changes } = await connectedLink('stall-link', cp, cp.address);
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

/**
 * A TCP relay that can go black: frozen, it forwards nothing in either direction and answers
 * nothing, as a path through a dead host or a partition does (TCP stays up, nothing comes back);
 * connections made while it is frozen are accepted and go nowhere either, so a peer that
 * reconnects does not find a way around it. Thawing drops every connection it holds (the peers
 * reconnect), and new ones pass again.
 */
async function blackHole(target: string): Promise<{ address: string; freeze(): void; thaw(): void; close(): Promise<void> }> {
  const [host, port] = [target.slice(0, target.lastIndexOf(':')), Number(target.slice(target.lastIndexOf(':') + 1))];
  const pairs = new Set<[Socket, Socket]>();
  // While frozen, new connections go nowhere too (accepted, never read, never forwarded): a dead
  // path stays dead for a peer that reconnects, until thaw.
  let frozen = false;
  const stranded = new Set<Socket>();
  const server = createServer((down) => {
    if (frozen) {
      down.pause();
      stranded.add(down);
      down.on('error', () => down.destroy()).on('close', () => stranded.delete(down));
      return;
    }
    const up = connect(port, host);
    const pair: [Socket, Socket] = [down, up];
    pairs.add(pair);
    down.pipe(up);
    up.pipe(down);
    const end = (): void => {
      pairs.delete(pair);
      down.destroy();
      up.destroy();
    };
    down.on('error', end).on('close', end);
    up.on('error', end).on('close', end);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const addr = server.address() as { port: number };
  return {
    address: `127.0.0.1:${addr.port}`,
    // Unpiped and paused: bytes stay in the kernel's buffers, unread and unanswered.
    freeze(): void {
      frozen = true;
      for (const [down, up] of pairs) {
        down.unpipe(up);
        up.unpipe(down);
        down.pause();
        up.pause();
      }
    },
    thaw(): void {
      frozen = false;
      for (const socket of [...stranded]) socket.destroy();
      for (const [down, up] of [...pairs]) {
        down.destroy();
        up.destroy();
      }
    },
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of stranded) socket.destroy();
        for (const [down, up] of pairs) {
          down.destroy();
          up.destroy();
        }
        server.close(() => resolve());
      }),
  };
}

test.serial('keepalive - with rare heartbeats, a peer behind a dead path is noticed by HTTP/2 PINGs on both ends', async (t) => {
  // Heartbeats every 60 s (the default): a silent stream would only be closed after 180 s. The
  // controller PINGs every connection every 2 s (2 s to answer) here, the link every 1 s (3 s to
  // answer): short, but not so short that a loaded machine's late timers end a healthy stream.
  const plane = await TestControlPlane.start(['--heartbeat-interval', '60', '--keepalive', '2']);
  cleanups.push(() => plane.close());
  const hole = await blackHole(plane.address);
  cleanups.push(() => hole.close());
  const { link, changes } = await connectedLink('ka-link', plane, hole.address, { keepaliveMs: 1000, keepaliveTimeoutMs: 3000 });
  const connected = async (): Promise<boolean | undefined> => (await call(plane.api.fleet, plane.api.fleet.getNode, { name: 'ka-link' })).node?.status?.connected;
  await until('the controller has the node connected', async () => (await connected()) === true, 10_000);

  // Quiet for 5 s with the path open: PINGs answered, no heartbeat due, nothing is closed.
  await sleep(5000);
  t.true(link.connected, `the link stayed up while quiet: ${JSON.stringify(changes)}`);
  t.true(await connected(), 'the controller kept the quiet stream');

  hole.freeze();
  const frozenAt = Date.now();
  await until('the link notices', () => !link.connected, 20_000);
  await until('the controller notices', async () => (await connected()) === false, 20_000, () => plane.controller.output);
  // Well before a heartbeat could have said anything (60 s), and before the 180 s silence bound.
  t.true(Date.now() - frozenAt < 30_000);
  t.false(changes.at(-1)!.up);
  t.notRegex(changes.at(-1)!.reason, /heartbeats/, 'the transport, not the heartbeat count, noticed');

  hole.thaw();
  await until('link back', () => link.connected, 20_000);
  await until('the controller has it again', async () => (await connected()) === true, 10_000);
});
