// A simulated-fleet worker for bench/fleet.ts (issue 8): hosts many real agents in one process.
// Each agent is the agent's own runtime (AgentRuntime, what services/node-agent/src/main.ts runs)
// with a MemoryDatapath for both roles: its own NodeAgent, StateFile (or a no-op stand-in), NATS
// connection, IntentLog, follower and ControllerLink (its own gRPC channel and TCP connection);
// the measurements ride on the runtime's hooks. It also hosts
// the plain NATS subscribers of the raw fan-out baseline. With --mtls each agent first enrolls
// (enrollNode, with a join token the bench created as admin) and connects with its NodeIdentity. Driven over the IPC channel of
// child_process.fork(); started by bench/fleet.ts, never on its own.
import { mkdirSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { RevisionOutcome, keyIdOf, publicKeyFromRaw, type RevisionReport } from '@edgeplane/proto';
import { simLabels } from './sim-labels.js';
import { watchStalls } from '@edgeplane/controller';
import { AgentRuntime, MemoryDatapath, NodeIdentity, StateFile, buildFrame, enrollNode, type StateStore } from '@edgeplane/node-agent';

/** Wall-clock ms with sub-ms resolution, comparable across processes on one machine. */
const now = (): number => performance.timeOrigin + performance.now();

/** Messages from the bench. */
export type SimCommand =
  | { type: 'enroll'; controller: string; caFingerprint: string; tokens: string[]; prefix: string; first: number; identityDir: string; concurrency: number }
  /** controller: every replica's address, comma-separated (each agent starts on one by its index). */
  | { type: 'start'; controller: string; nats: string; publicKey: string; prefix: string; first: number; count: number; stateDir: string | undefined; concurrency: number }
  | { type: 'wait-connected'; connected: boolean; id: string }
  | { type: 'fanout-setup'; subject: string; mode: 'conns' | 'agents'; nats: string }
  | { type: 'fanout-arm'; id: string }
  | { type: 'acks'; revision: string }
  | { type: 'wait-applied'; revision: string; id: string }
  | { type: 'traffic'; on: boolean }
  | { type: 'status' }
  | { type: 'stop' };

/** Messages to the bench. */
export type SimEvent =
  | { type: 'enrolled'; ms: number; latencyMs: number[]; failed: number }
  | { type: 'connected'; id: string; at: number; connected: number }
  | { type: 'progress'; started: number; connected: number; loopMaxMs: number; heapMiB: number; downs: Record<string, number> }
  | { type: 'started'; ms: number; lastConnectedAt: number; grpcConnected: number; followers: number }
  | { type: 'fanout-ready'; count: number }
  | { type: 'fanout-armed'; id: string }
  | { type: 'fanout-done'; id: string; first: number; last: number; received: number }
  | { type: 'acks'; revision: string; nodes: string[]; sentAt: number[] }
  | { type: 'applied'; id: string; at: number; applied: number }
  | { type: 'status'; connected: number; applied: Record<string, number>; counterReports: number; catchUps: number; errors: string[] }
  | { type: 'error'; message: string }
  | { type: 'stopped' };

const send = (e: SimEvent): void => {
  process.send?.(e);
};

/**
 * grpc-js shares one subchannel (one TCP connection) among channels with the same target,
 * options and equal credentials, and ControllerLink takes no channel options. Insecure
 * credentials that are equal only to themselves give every agent its own connection, as
 * separate agent processes would have.
 */
function distinctInsecureCredentials(): grpc.ChannelCredentials {
  const c = grpc.credentials.createInsecure();
  c._equals = (other) => other === c;
  poolKeys.set(c, ++poolKeyCount);
  return c;
}

/** Gives secure credentials (each NodeIdentity has its own, already unequal to any other) their own pool key. */
function pooled(c: grpc.ChannelCredentials): grpc.ChannelCredentials {
  if (!poolKeys.has(c)) poolKeys.set(c, ++poolKeyCount);
  return c;
}

/**
 * The global subchannel pool keeps one array per target and scans it linearly comparing channel
 * options: with 5,000 channels to one target every (re)connect costs 5,000 comparisons (measured:
 * a quarter of a worker's CPU at 10,000 agents, all in reconnect storms). A real agent has one
 * channel. So the lookup gets a per-credentials key (the target URI with a distinct authority,
 * used only as the pool's key: the connector still dials the same address with the same
 * :authority, which comes from the path).
 */
const poolKeys = new WeakMap<grpc.ChannelCredentials, number>();
let poolKeyCount = 0;
{
  interface Uri {
    scheme?: string;
    authority?: string;
    path: string;
  }
  interface Pool {
    getOrCreateSubchannel(target: Uri, address: unknown, options: unknown, credentials: grpc.ChannelCredentials): unknown;
  }
  const require = createRequire(import.meta.url);
  const pool = (require('@grpc/grpc-js/build/src/subchannel-pool.js') as { getSubchannelPool(global: boolean): Pool }).getSubchannelPool(true);
  const lookup = pool.getOrCreateSubchannel.bind(pool);
  pool.getOrCreateSubchannel = (target, address, options, credentials) => {
    const key = poolKeys.get(credentials);
    return lookup(key === undefined ? target : { ...target, authority: `sim-${key}` }, address, options, credentials);
  };
}

/** A state file that keeps nothing (used when --state-file none is asked for): measures the fleet without the per-apply fsync. */
const nullStateFile: StateStore = { read: () => undefined, write: () => undefined };

interface SimAgent {
  name: string;
  runtime: AgentRuntime;
  memory: MemoryDatapath;
  applied: bigint;
}

const agents: SimAgent[] = [];
/** Enrolled identities by node name (--mtls): the agent uses its NodeIdentity's channel credentials. */
const identities = new Map<string, NodeIdentity>();
const errors: string[] = [];
const noteError = (msg: string): void => {
  if (errors.length < 50) errors.push(msg);
};
/** revision -> node names and report send times (ACKs only). */
const ackTimes = new Map<bigint, { nodes: string[]; at: number[] }>();
let counterReports = 0;
const waits: { revision: bigint; id: string; done: boolean }[] = [];
let lastAppliedAt = 0;

function checkWaits(): void {
  for (const w of waits) {
    if (w.done) continue;
    const n = agents.filter((a) => a.applied >= w.revision).length;
    if (n === agents.length) {
      w.done = true;
      send({ type: 'applied', id: w.id, at: lastAppliedAt, applied: n });
    }
  }
}

function onReport(a: SimAgent, r: RevisionReport): void {
  if (r.outcome === RevisionOutcome.REVISION_OUTCOME_ACK) {
    const t = now();
    let list = ackTimes.get(r.revision);
    if (!list) ackTimes.set(r.revision, (list = { nodes: [], at: [] }));
    list.nodes.push(a.name);
    list.at.push(t);
    if (r.appliedRevision > a.applied) {
      a.applied = r.appliedRevision;
      lastAppliedAt = t;
      if (waits.some((w) => !w.done && a.applied >= w.revision)) checkWaits();
    }
  } else noteError(`${a.name} NACK ${r.revision}: ${r.reason}`);
}

/** Why streams went down since the last progress report (reasons with digits folded), for diagnosis. */
let downs: Record<string, number> = {};
const quiet = (level: 'info' | 'warn' | 'error', msg: string, fields?: Record<string, unknown>): void => {
  if (level === 'error') noteError(`${msg} ${JSON.stringify(fields ?? {})}`);
  if (msg === 'controller disconnected') {
    const why = String(fields?.reason ?? '?').replace(/\d+/g, 'N').slice(0, 80);
    downs[why] = (downs[why] ?? 0) + 1;
  }
};

/**
 * The worker's own event-loop stalls (a stall here is the simulator's, not the controller's): the
 * most a 100 ms tick came late since the last progress report, and the ticks' lateness smoothed
 * over about a second (threshold 0: every tick reports).
 */
let loopMaxMs = 0;
let loopLagMs = 0;
watchStalls(
  (s) => {
    loopMaxMs = Math.max(loopMaxMs, s.ms);
    loopLagMs += (s.ms - loopLagMs) / 10;
  },
  0,
  100,
);

/**
 * How late this worker's loop may run before no more agents are started: starting agents is what
 * the worker can postpone, and a worker that starts them faster than its share of the CPU allows
 * falls behind on the agents it already runs (heartbeats unanswered past the controller's idle
 * timeout, streams closed as silent, a reconnect storm on top of the start: the 10,000-agent start
 * that never finished on a loaded machine). Measured, not guessed: the start paces itself. A second
 * is far below the controller's idle timeout (3 heartbeat intervals) and above what CPU starvation
 * alone gives a worker on a machine loaded by others (ticks 0.5-2 s late with 50 agents).
 */
const START_MAX_LAG_MS = 1000;

async function startAgent(cmd: Extract<SimCommand, { type: 'start' }>, index: number, trusted: Map<string, ReturnType<typeof publicKeyFromRaw>>): Promise<SimAgent> {
  const name = agentName(cmd.prefix, index);
  const labels = simLabels(index);
  const memory = new MemoryDatapath();
  const holder: { a?: SimAgent } = {};
  let stateFile: StateStore = nullStateFile;
  if (cmd.stateDir) {
    const dir = join(cmd.stateDir, name);
    mkdirSync(dir, { recursive: true });
    stateFile = new StateFile(join(dir, 'applied.json'));
  }
  const runtime = await AgentRuntime.start({
    nodeName: name,
    labels,
    datapaths: { uplink: memory, workload: memory },
    stateFile,
    natsServers: [cmd.nats],
    natsTimeoutMs: 20_000,
    // nats.js otherwise builds two Error objects per request for async stack traces, and under
    // tsx every stack is source-mapped: simulator CPU that a real agent (plain JS) barely pays.
    natsOptions: { noAsyncTraces: true },
    trustedKeys: trusted,
    controller: { address: replicasOf(cmd.controller, index), credentials: identities.get(name) ? pooled(identities.get(name)!.channelCredentials()) : distinctInsecureCredentials() },
    info: { agentVersion: 'sim', kernelRelease: 'sim', hostname: name, datapath: 'memory', capabilities: { xdpNative: false, xdpGeneric: false, tc: false, maxRules: 65_536, ipv6: true } },
    sessionId: `${name}-${process.pid}`,
    heartbeatIntervalMs: 60_000,
    counterIntervalMs: 5000,
    log: quiet,
    hooks: {
      report: (r) => holder.a && onReport(holder.a, r),
      counters: () => void counterReports++,
    },
  });
  const a: SimAgent = { name, runtime, memory, applied: runtime.status.applied };
  holder.a = a;
  await runtime.synced();
  return a;
}

/** Agent `index`'s controller list: the replicas (comma-separated) rotated by the index, so agents spread evenly and each fails over to the next. */
const replicasOf = (list: string, index: number): string[] => {
  const all = list.split(',');
  return all.map((_a, k) => all[(index + k) % all.length]!);
};

const agentName = (prefix: string, index: number): string => `${prefix}-${String(index).padStart(5, '0')}`;

/**
 * Enrolls one simulated agent per token, as the agent's main.ts does on first start (enrollNode:
 * pin the CA, generate the keys, TrustService.Enroll, store in its state directory), `concurrency`
 * at a time. Reports each enrollment's latency.
 */
async function enroll(cmd: Extract<SimCommand, { type: 'enroll' }>): Promise<void> {
  const t0 = now();
  const latencyMs: number[] = [];
  let failed = 0;
  let next = 0;
  const lane = async (): Promise<void> => {
    while (next < cmd.tokens.length) {
      const k = next++;
      const nodeName = agentName(cmd.prefix, cmd.first + k);
      const stateDir = join(cmd.identityDir, nodeName);
      const s = now();
      try {
        const creds = await enrollNode({ address: cmd.controller, token: cmd.tokens[k]!, caFingerprint: cmd.caFingerprint, nodeName, stateDir });
        latencyMs.push(now() - s);
        identities.set(nodeName, new NodeIdentity(creds, { address: cmd.controller, stateDir }));
      } catch (err) {
        failed++;
        noteError(`enroll ${nodeName}: ${(err as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: cmd.concurrency }, lane));
  send({ type: 'enrolled', ms: now() - t0, latencyMs, failed });
}

/** Resolves when every agent's stream is `connected` (welcomed) or every one is down; polled every 10 ms. */
async function waitConnected(cmd: Extract<SimCommand, { type: 'wait-connected' }>): Promise<void> {
  const progress = setInterval(() => reportProgress(agents.length), 5000);
  try {
    for (;;) {
      const n = agents.filter((a) => a.runtime.connected).length;
      if (n === (cmd.connected ? agents.length : 0)) return send({ type: 'connected', id: cmd.id, at: now(), connected: n });
      await new Promise((r) => setTimeout(r, 10));
    }
  } finally {
    clearInterval(progress);
  }
}

/** Agents welcomed at the last progress report (every 2 s while the fleet starts). */
let lastConnected = 0;

/** Sends a progress event (started, connected, loop delay, heap, why streams went down) and resets the per-report figures. */
function reportProgress(started: number): void {
  lastConnected = agents.filter((a) => a.runtime.connected).length;
  send({ type: 'progress', started, connected: lastConnected, loopMaxMs: Math.round(loopMaxMs), heapMiB: Math.round(process.memoryUsage().heapUsed / 2 ** 20), downs });
  loopMaxMs = 0;
  downs = {};
}

async function start(cmd: Extract<SimCommand, { type: 'start' }>): Promise<void> {
  const t0 = now();
  const raw = Buffer.from(cmd.publicKey, 'base64');
  const trusted = new Map([[keyIdOf(raw), publicKeyFromRaw(raw)]]);
  let next = 0;
  let started = 0;
  const progress = setInterval(() => reportProgress(started), 2000);
  const lane = async (): Promise<void> => {
    while (next < cmd.count) {
      // Nor while many started agents are not (or no longer) welcomed: a fleet falling apart
      // (streams dropped by a stalled worker) gets back up before it grows.
      while (loopLagMs > START_MAX_LAG_MS || agents.length - lastConnected > 4 * cmd.concurrency) await new Promise((r) => setTimeout(r, 100));
      if (next >= cmd.count) break;
      const i = cmd.first + next++;
      agents.push(await startAgent(cmd, i, trusted));
      started++;
    }
  };
  try {
    await Promise.all(Array.from({ length: cmd.concurrency }, lane));
    // Every agent started its follower (caught up); wait for every gRPC stream's welcome.
    let lastConnectedAt = now();
    while (agents.some((a) => !a.runtime.connected)) {
      await new Promise((r) => setTimeout(r, 50));
      lastConnectedAt = now();
    }
    send({ type: 'started', ms: now() - t0, lastConnectedAt, grpcConnected: agents.filter((a) => a.runtime.connected).length, followers: agents.length });
  } finally {
    clearInterval(progress);
  }
}

// ---- raw fan-out baseline ---------------------------------------------------------------------

const fanout = { conns: [] as NatsConnection[], subs: [] as Subscription[], id: '', first: 0, last: 0, received: 0 };

async function fanoutSetup(cmd: Extract<SimCommand, { type: 'fanout-setup' }>): Promise<void> {
  const onMsg = (data: Uint8Array): void => {
    const t = now();
    if (Buffer.from(data).toString() !== fanout.id) return;
    if (fanout.received === 0) fanout.first = t;
    fanout.last = t;
    if (++fanout.received === agents.length) send({ type: 'fanout-done', id: fanout.id, first: fanout.first, last: fanout.last, received: fanout.received });
  };
  if (cmd.mode === 'agents') {
    // A second, plain subscription on each agent's own connection.
    for (const a of agents) fanout.subs.push(a.runtime.nats!.subscribe(cmd.subject, { callback: (_e, m) => onMsg(m.data) }));
  } else {
    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < agents.length) {
        next++;
        const nc = await connect({ servers: [cmd.nats], name: 'edgeplane-sim fanout', maxReconnectAttempts: -1, reconnectTimeWait: 500, reconnectJitter: 250, timeout: 20_000 });
        fanout.conns.push(nc);
        fanout.subs.push(nc.subscribe(cmd.subject, { callback: (_e, m) => onMsg(m.data) }));
        await nc.flush();
      }
    };
    await Promise.all(Array.from({ length: 50 }, lane));
  }
  await Promise.all(agents.map((a) => a.runtime.nats!.flush()));
  send({ type: 'fanout-ready', count: fanout.subs.length });
}

// ---- traffic for counters ---------------------------------------------------------------------

let traffic: NodeJS.Timeout | undefined;
const frames = [buildFrame({ src: '198.18.0.7', dst: '10.0.0.1', protocol: 'tcp', srcPort: 40_000, dstPort: 443 }), buildFrame({ src: '10.9.0.1', dst: '10.0.0.1', protocol: 'udp', srcPort: 5353, dstPort: 53 })];

function setTraffic(on: boolean): void {
  clearInterval(traffic);
  traffic = undefined;
  if (!on) return;
  // A few frames per agent per second, so every counter report has something in it.
  traffic = setInterval(() => {
    for (const a of agents) for (const f of frames) a.memory.classify(f);
  }, 1000);
}

async function stop(): Promise<void> {
  setTraffic(false);
  for (const s of fanout.subs) s.unsubscribe();
  await Promise.all(fanout.conns.map((nc) => nc.close().catch(() => undefined)));
  await Promise.all(agents.map((a) => a.runtime.close()));
  for (const id of identities.values()) id.close();
  send({ type: 'stopped' });
}

process.on('message', (raw: unknown) => {
  const cmd = raw as SimCommand;
  const fail = (err: unknown): void => send({ type: 'error', message: `${cmd.type}: ${(err as Error)?.stack ?? String(err)}` });
  switch (cmd.type) {
    case 'enroll':
      void enroll(cmd).catch(fail);
      break;
    case 'start':
      void start(cmd).catch(fail);
      break;
    case 'wait-connected':
      void waitConnected(cmd).catch(fail);
      break;
    case 'fanout-setup':
      void fanoutSetup(cmd).catch(fail);
      break;
    case 'fanout-arm':
      fanout.id = cmd.id;
      fanout.received = 0;
      send({ type: 'fanout-armed', id: cmd.id });
      break;
    case 'acks': {
      const r = ackTimes.get(BigInt(cmd.revision)) ?? { nodes: [], at: [] };
      send({ type: 'acks', revision: cmd.revision, nodes: r.nodes, sentAt: r.at });
      break;
    }
    case 'wait-applied':
      waits.push({ revision: BigInt(cmd.revision), id: cmd.id, done: false });
      checkWaits();
      break;
    case 'traffic':
      setTraffic(cmd.on);
      break;
    case 'status': {
      const applied: Record<string, number> = {};
      for (const a of agents) applied[String(a.applied)] = (applied[String(a.applied)] ?? 0) + 1;
      send({ type: 'status', connected: agents.filter((a) => a.runtime.connected).length, applied, counterReports, catchUps: agents.reduce((n, a) => n + a.runtime.followerStats.catchUps, 0), errors: errors.slice(0, 10) });
      break;
    }
    case 'stop':
      void stop()
        .catch(fail)
        .finally(() => setTimeout(() => process.exit(0), 100));
      break;
  }
});
// The bench died: do not linger.
process.on('disconnect', () => process.exit(0));
