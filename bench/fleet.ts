// Fleet benchmark (issue 8, "Fleet convergence" and "Footprint"): a simulated fleet of real
// agents (bench/fleet-sim.ts: the agent's own runtime, AgentRuntime, with the memory datapath, each agent with
// its own NATS connection and gRPC stream) in 2 worker processes, against one nats-server and
// the real controller (dist/ build). Prints a table and one JSON line; asserts nothing.
//   npx tsc --build && node --import=tsx bench/fleet.ts [--quick] [--nodes 1000,10000]
//     [--state-file none|disk] [--fanout auto|conns|agents] [--converge-bound SECONDS] [--profile DIR] [--mtls] [--workers N]
//     [--heartbeat-interval S] [--log-heartbeat S] [--counter-interval S] [--replica-counters-interval S] [--replicas N[,N...]] [--table]
//     [--sim-nice N] [--warmup W]
//   --replicas N: N controller processes on the one nats-server (issue 15), sharing the signing key
//   (and with --mtls the CA); agent k starts on replica k mod N, with the others as its
//   fallbacks. ACKs are watched on replica 0, so with N > 1 most arrive through the replicas'
//   shared fleet state; controller CPU and RSS are the sums over the replicas. With N > 1 the run
//   ends by killing replica 1 (kill -9): its agents move to the others (failover phase).
//   A list (--replicas 1,3) runs every size with each count.
//   --table: issue 15's table, --nodes 1000,10000 --replicas 1,3 (unless given), one column per
//   run, then the cost model fitted to the measured points and its prediction for 100,000 nodes.
//   --mtls: the controller serves mutual TLS (its default, no --insecure); the bench calls as the
//   admin the controller wrote into DATA_DIR/admin, and every simulated agent first enrolls with its
//   own join token (created by the bench as admin) and connects with its NodeIdentity.
//   bench/trust.ts runs runSize() with and without it, side by side.
//   --profile DIR writes node --cpu-prof files of the controller and workers; summarize them with
//   bench/cpuprofile-top.ts. The state file defaults to a no-op stand-in (see STATE_FILE).
//
// Per fleet size, with a fresh nats-server and controller:
// - start: all agents connected (gRPC welcome) and following the log (caught up);
// - convergence, --warmup changes first (reported apart), then K changes one after another,
//   alternated with the raw fan-out baseline:
//   ApplyPolicy response -> each node's ACK arriving at the controller, seen on a
//   FleetService.WatchNodes stream opened by this process (timestamped on arrival), and, as a
//   cross-check, the agent's own send time of the ACK (wall clock, same machine);
//   raw fan-out: one NATS publish -> last of N plain subscribers received it;
// - controller CPU per change: utime+stime of the controller over one convergence run (gross, and
//   net of its idle rate);
// - nats-server kill -9 + restart -> every agent applied the first revision written after it;
// - telemetry: idle, then every agent's datapath sees traffic and reports counters every second
//   (the controller runs with --counter-interval 1; with no traffic agents send no counter
//   reports, so the other phases do not carry them) -> controller CPU share;
// - footprint: controller RSS, worker RSS per agent, agents' idle CPU;
// - (when asked, bench/trust.ts) controller kill -9 + start -> every agent's stream welcomed again.
import { execFileSync, fork, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { availableParallelism, loadavg, release, setPriority, tmpdir, totalmem } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import type * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Action, ApplyPolicyRequest, MAX_PREFIX_LIST_CHANGE, Policy, PrefixList, PrefixListUse, Protocol, UpdatePrefixListRequest, type WatchNodesResponse } from '@edgeplane/proto';
import { NatsServer, freePort } from '@edgeplane/intent-log';
import { TrustServiceClient } from '@edgeplane/proto';
import * as grpcJs from '@grpc/grpc-js';
import { adminTlsOf } from '../test/support/control-plane.js';
import { CONTROLLER_MAIN } from '../test/support/fleet.js';
import { call, clients, type ClientTls } from '../test/support/grpc.js';
import { Supervised } from '../test/support/supervisor.js';
import type { SimCommand, SimEvent } from './fleet-sim.js';
import { simLabels } from './sim-labels.js';
import { CLK_TCK, machineBusy, sampleMachine, sampleProc, type ProcSample } from './proc-sample.js';

// ---- options ---------------------------------------------------------------------------------

const argv = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const quick = argv.includes('--quick');
const TABLE = argv.includes('--table');
const SIZES = (opt('--nodes') ?? '1000,10000').split(',').map((s) => Number(s.replace(/_/g, '')));
const K = quick ? 5 : 20;
// --warmup W: changes made and ACKed before the K measured ones (default 3), reported apart (their
// ACK p99 each, in the table and the JSON). The simulator's processes start with every agent's
// change path unoptimized and their heaps at start size: over 20 changes on 1,000 agents the
// first three took 325-402 ms to the last ACK and the rest 123-264 (BENCHMARKS.md, "Warm-up"),
// which a real agent, one long-running process per node, pays once in its life. 0 measures from
// the first change.
const WARMUP = Number(opt('--warmup') ?? 3);
// --workers N: simulator processes (default 2). Each hosts N/WORKERS real agent runtimes on one
// event loop, so every burst they all answer at once (the signed log head every 5 s that each agent
// verifies, a reconnect after the controller went away) stalls that loop in proportion; more
// workers make the bursts shorter without adding CPU.
const WORKERS = Number(opt('--workers') ?? 2);
const REPLICAS = (opt('--replicas') ?? (TABLE ? '1,3' : '1')).split(',').map((r) => Math.max(1, Number(r)));
// --heartbeat-interval S / --log-heartbeat S: the controller's agent heartbeat (echoed, every agent
// every S seconds) and signed log head (verified by every agent) intervals, default 60 and 5 as the
// controller's (a dead peer is noticed by HTTP/2 keepalive PINGs, which the controller's HTTP/2
// layer answers without JavaScript). Each costs the controller and the simulator per agent per
// interval; both modes of a pair use the same.
const HEARTBEAT_S = opt('--heartbeat-interval') ?? '60';
const LOG_HEARTBEAT_S = opt('--log-heartbeat') ?? '5';
// --counter-interval S: how often agents whose datapath counted something report counters (the
// controller's setting, default 5 as the controller's; issue 15's telemetry goal is every 5 s).
// The telemetry phase has every agent see traffic, so every agent reports every S seconds.
const COUNTER_S = opt('--counter-interval') ?? '5';
// --replica-counters-interval S: how often replicas share counters that alone changed (the
// controller's setting, default 15 as the controller's). With more than one replica the telemetry
// window spans two of these, so it holds two batches whatever their phase (a 10 s window held one
// batch or none).
const REPLICA_COUNTERS_S = opt('--replica-counters-interval') ?? '15';
// The state file's fsync serializes on one disk and one event loop per worker (measured: 93 % of an
// agent's apply at 1,000 agents), unlike a real fleet where each node fsyncs its own disk: off by default.
const STATE_FILE = (opt('--state-file') ?? 'none') as 'disk' | 'none';
const FANOUT = (opt('--fanout') ?? 'auto') as 'auto' | 'conns' | 'agents';
// --list-prefixes L: each measured change adds one prefix to a prefix list of L prefixes (use
// DENY_SOURCE, every node) instead of changing the policy: issue 16's fan-out of one list entry.
// The simulated agents' memory datapath holds no blocklist, so what is measured is the entry's way
// to every agent and back (log, follower, the change applied to the agent's copy of the list,
// compile, ACK); bench/list-change.ts measures what one eBPF node adds to it.
const LIST_PREFIXES = Number(opt('--list-prefixes') ?? 0);
const LIST = 'fleet-feed';
const PROFILE_DIR = opt('--profile');
// --sim-nice N: the simulator workers' nice value (default 10). The simulated fleet stands in for
// thousands of machines of its own; on this one it shares the CPUs with what is measured (the
// controller, nats-server, and this process's WatchNodes client, which timestamps ACKs). At the
// default priority the scheduler shares the cores equally among the controller and the workers
// while they process a change. A lower priority for the stand-ins gives what is measured the CPU
// it would have on its own machine; the workers still get every cycle the rest leaves, and their
// CPU is reported as before. 0 restores equal shares (BENCHMARKS.md has runs with both).
const SIM_NICE = Number(opt('--sim-nice') ?? 10);
// The idle window spans a whole heartbeat interval (and so the controller's 30 s keepalive PINGs
// and the agents' 20 s ones): agents connected within a start of some seconds beat in a band of
// the interval, which a shorter window would catch all or none of.
const IDLE_S = Math.max(quick ? 5 : 10, Number(HEARTBEAT_S));
const TELEMETRY_S = quick ? 10 : 20;
const telemetrySeconds = (replicas: number): number => (replicas > 1 ? Math.max(TELEMETRY_S, 2 * Number(REPLICA_COUNTERS_S)) : TELEMETRY_S);
/** Hard bound for the whole run (per fleet size and replica count): past it everything is torn down. */
const BOUND_MS = (quick ? 30 : 60) * 60_000 * SIZES.length * REPLICAS.length;
/** How long one change may take to reach every node before the run moves on (missing ACKs count as infinite). */
const CONVERGE_BOUND_MS = Number(opt('--converge-bound') ?? 120) * 1000;
/** This machine cannot raise RLIMIT_NOFILE past its hard limit; nats-server needs 2 fds per agent with separate fan-out connections. */
const NOFILE = Number(execFileSync('bash', ['-c', 'ulimit -Hn'], { encoding: 'utf8' }).trim());
/** How long a controller may take to say ready: 30 s was not enough for a replica on a machine loaded by other work. */
const READY_MS = 120_000;
const SIM = fileURLToPath(new URL('./fleet-sim.ts', import.meta.url));
const POLICY = 'fleet-bench';

export const now = (): number => performance.timeOrigin + performance.now();
export const log = (msg: string): void => void process.stderr.write(`[fleet ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

const abort = new AbortController();
const onSignal = (signal: NodeJS.Signals): void => {
  if (abort.signal.aborted) return void process.stderr.write(`${signal}: already cleaning up\n`);
  abort.abort(new Error(`interrupted by ${signal}`));
};
process.on('SIGINT', onSignal);
process.on('SIGTERM', onSignal);

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const signal = abort.signal;
    if (signal.aborted) return reject(signal.reason as Error);
    const onAbort = (): void => {
      clearTimeout(timer);
      reject(signal.reason as Error);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

async function until(what: string, pred: () => boolean | Promise<boolean>, ms: number, pollMs = 10): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await sleep(pollMs);
  }
}

export const pct = (xs: number[], p: number): number => {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  return s[Math.min(s.length - 1, Math.max(0, Math.ceil((p / 100) * s.length) - 1))]!;
};
export const median = (xs: number[]): number => {
  const s = xs.filter((x) => !Number.isNaN(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};
export const round = (x: number, digits = 1): number => (Number.isFinite(x) ? Number(x.toFixed(digits)) : x);

// ---- /proc -----------------------------------------------------------------------------------

export const cpuMs = (a: ProcSample, b: ProcSample): number => ((b.ticks - a.ticks) / CLK_TCK) * 1000;
export const cpuShare = (a: ProcSample, b: ProcSample): number => (cpuMs(a, b) / (b.at - a.at)) * 100;

/** Established TCP connections to a local port (one line each in `ss -Htn`). */
function established(port: number): number {
  const out = execFileSync('ss', ['-Htn', 'state', 'established', `( dport = :${port} )`], { encoding: 'utf8' });
  return out.split('\n').filter((l) => l.trim()).length;
}

/**
 * Bytes sent and received so far over the established TCP connections whose local port is one of
 * `ports` (the server sides: nats-server's, the replicas'), from the kernel's per-socket counts
 * (`ss -ti`: bytes_acked sent, bytes_received). Connections closed in between are not counted.
 */
function socketBytes(ports: number[]): number {
  const filter = `( ${ports.map((p) => `sport = :${p}`).join(' or ')} )`;
  const out = execFileSync('ss', ['-Hti', 'state', 'established', filter], { encoding: 'utf8', maxBuffer: 256 * 2 ** 20 });
  let total = 0;
  for (const m of out.matchAll(/bytes_(?:acked|received):(\d+)/g)) total += Number(m[1]);
  return total;
}

// ---- request probe ---------------------------------------------------------------------------

/**
 * Times a cheap unary call (FleetService.GetNode of one node) to one replica, one after another
 * with 200 ms between them, while it runs: how long a request waits at the controller while
 * thousands of agent streams connect or move (issue 15: none more than 10 s).
 */
class RequestProbe {
  readonly latencies: number[] = [];
  failed = 0;
  #stopped = false;
  #loop: Promise<void>;

  constructor(c: ReturnType<typeof clients>, node: string) {
    this.#loop = (async () => {
      while (!this.#stopped) {
        const t = now();
        try {
          await call(c.fleet, c.fleet.getNode, { name: node }, 120_000);
        } catch (err) {
          if ((err as grpc.ServiceError).code !== grpcJs.status.NOT_FOUND) this.failed++;
        }
        this.latencies.push(now() - t);
        await new Promise((r) => setTimeout(r, 200));
      }
    })();
  }

  /** Stops (idempotent) and returns what it saw. */
  async stop(): Promise<ProbeResult> {
    this.#stopped = true;
    await this.#loop;
    return { requests: this.latencies.length, failed: this.failed, latency: dist(this.latencies) };
  }
}

// ---- workers ---------------------------------------------------------------------------------

class Worker {
  readonly child: ChildProcess;
  readonly count: number;
  #listeners = new Set<(e: SimEvent) => void>();
  errors: string[] = [];

  constructor(index: number, count: number) {
    this.count = count;
    const execArgv = ['--import=tsx', '--max-old-space-size=16384'];
    // Default profile names (CPU.date.time.pid.thread.seq): tsx's loader thread is profiled too.
    if (PROFILE_DIR) execArgv.push('--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`);
    this.child = fork(SIM, [], { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    if (SIM_NICE !== 0) setPriority(this.child.pid!, SIM_NICE);
    this.child.on('message', (m: SimEvent) => {
      if (m.type === 'error') {
        this.errors.push(m.message);
        log(`worker ${index}: ${m.message}`);
      }
      for (const l of this.#listeners) l(m);
    });
  }

  get pid(): number {
    return this.child.pid!;
  }

  send(cmd: SimCommand): void {
    this.child.send(cmd);
  }

  /** Resolves with the first event that `match` accepts. */
  next<T extends SimEvent>(match: (e: SimEvent) => e is T, ms: number, what: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const done = (): void => {
        clearTimeout(timer);
        this.#listeners.delete(l);
        this.child.off('exit', onExit);
        abort.signal.removeEventListener('abort', onAbort);
      };
      const l = (e: SimEvent): void => {
        if (match(e)) {
          done();
          resolve(e);
        }
      };
      const onExit = (): void => {
        done();
        reject(new Error(`worker exited while waiting for ${what}`));
      };
      const onAbort = (): void => {
        done();
        reject(abort.signal.reason as Error);
      };
      const timer = setTimeout(() => {
        done();
        reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
      }, ms);
      this.#listeners.add(l);
      this.child.once('exit', onExit);
      abort.signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  on(l: (e: SimEvent) => void): () => void {
    this.#listeners.add(l);
    return () => this.#listeners.delete(l);
  }

  async request<T extends SimEvent['type']>(cmd: SimCommand, type: T, ms = 30_000, extra?: (e: Extract<SimEvent, { type: T }>) => boolean): Promise<Extract<SimEvent, { type: T }>> {
    const p = this.next((e): e is Extract<SimEvent, { type: T }> => e.type === type && (!extra || extra(e as Extract<SimEvent, { type: T }>)), ms, `${type} from worker`);
    this.send(cmd);
    return p;
  }

  async stop(): Promise<void> {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    const exited = new Promise((r) => this.child.once('exit', r));
    try {
      this.child.send({ type: 'stop' } satisfies SimCommand);
    } catch {
      // IPC already closed
    }
    const timer = setTimeout(() => this.child.kill('SIGKILL'), 20_000);
    await exited;
    clearTimeout(timer);
  }
}

// ---- policy ----------------------------------------------------------------------------------

/** A small policy selecting every simulated node; change `i` moves one rule's port, so every node recompiles and switches. */
function policy(i: number): Policy {
  return Policy.fromPartial({
    metadata: { name: POLICY },
    spec: {
      nodeSelector: { matchLabels: { role: 'edge' } },
      defaultAction: Action.ACTION_ALLOW,
      rules: [
        { priority: 1, name: 'bench-src', sourceCidrs: ['198.18.0.0/24'], protocol: Protocol.PROTOCOL_TCP, action: Action.ACTION_DENY },
        { priority: 2, name: 'moving-port', protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 1000 + i, last: 0 }], action: Action.ACTION_DENY },
        { priority: 3, name: 'dns', protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: 53, last: 0 }], action: Action.ACTION_ALLOW },
      ],
    },
  });
}

// ---- ACK watcher -----------------------------------------------------------------------------

/** First arrival time, per applied revision, of each node's report at this WatchNodes client. */
class AckWatcher {
  #call: grpc.ClientReadableStream<WatchNodesResponse>;
  readonly arrivals = new Map<bigint, Map<string, number>>();
  events = 0;
  ended = false;

  constructor(c: ReturnType<typeof clients>) {
    this.#call = c.fleet.watchNodes({ labelSelector: '', sendInitial: false });
    this.#call.on('data', (e: WatchNodesResponse) => {
      const t = now();
      this.events++;
      const s = e.node?.status;
      if (!s || !e.node || s.appliedRevision === 0n) return;
      let m = this.arrivals.get(s.appliedRevision);
      if (!m) this.arrivals.set(s.appliedRevision, (m = new Map()));
      if (!m.has(e.node.name)) m.set(e.node.name, t);
    });
    this.#call.on('error', () => (this.ended = true));
    this.#call.on('end', () => (this.ended = true));
  }

  count(revision: bigint): number {
    return this.arrivals.get(revision)?.size ?? 0;
  }

  close(): void {
    this.#call.cancel();
  }
}

// ---- one fleet size --------------------------------------------------------------------------

export interface Dist {
  p50: number;
  p99: number;
  max: number;
}
export const dist = (xs: number[]): Dist => ({ p50: round(pct(xs, 50)), p99: round(pct(xs, 99)), max: round(pct(xs, 100)) });

export interface ConvergenceRun {
  revision: string;
  /** Nodes whose ACK arrived within the bound. */
  acked: number;
  /** Stream reads by the agents (catch-ups): a live entry older than 1 s on arrival, a gap, a reconnect. */
  catchUps: number;
  apiMs: number;
  /** ApplyPolicy response -> ACK seen by the WatchNodes client. */
  ack: Dist;
  /** ApplyPolicy response -> the agent wrote the ACK to its stream. */
  sent: Dist;
  /** Per node: seen by the watcher - sent by the agent. */
  watchLag: Dist;
  controllerCpuMs: number;
  workerCpuMs: number;
  /**
   * The whole machine over the window (/proc/stat): the CPU time every process and the kernel
   * spent (the replicas, the workers, nats-server, this process's watcher, the loopback's
   * softirqs), and the share of all its CPUs' time that was busy.
   */
  machine: { cpuMs: number; busyPct: number };
  windowMs: number;
  /** Bytes over the window net of the idle rate: on the bus, on the agent streams (see PhaseResult.bytesPerChange). */
  bytes: { bus: number; streams: number };
}

/** What one fleet size runs (bench/trust.ts picks; fleet.ts runs everything but the controller restart). */
export interface SizeOptions {
  /** Mutual TLS with enrollment (see --mtls) instead of a plaintext --insecure controller. */
  mtls: boolean;
  /** Convergence changes; 0 skips the convergence, fan-out, nats restart, telemetry and idle phases. */
  k: number;
  /** Kill -9 and start the controller at the end, timing the agents' reconnect. */
  controllerRestart: boolean;
  /** Enrollments in flight at once per worker (--mtls). */
  enrollConcurrency: number;
  /** Controller replicas (--replicas). */
  replicas: number;
}

/** Enrollment of the fleet (--mtls): tokens created by the admin beforehand, then every agent enrolls. */
export interface EnrollResult {
  tokensMs: number;
  concurrency: number;
  totalMs: number;
  latency: Dist;
  failed: number;
  controllerCpuMs: number;
}

/** Controller kill -9 and start with every agent connected. */
export interface RestartResult {
  /** kill -9 -> every agent saw its stream go down. */
  allDownMs: number;
  /** Process spawned -> ready line. */
  startToReadyMs: number;
  /** Ready -> every agent's stream welcomed again. */
  readyToAllWelcomedMs: number;
  /** Spawn -> every agent welcomed. */
  startToAllWelcomedMs: number;
  /** The new controller's CPU (utime+stime) from its start to every agent welcomed, and of that after ready. */
  controllerCpuMs: number;
  controllerCpuAfterReadyMs: number;
}

/** What every size measures. */
export interface BaseResult {
  nodes: number;
  replicas: number;
  mtls: boolean;
  enroll?: EnrollResult;
  controllerRestart?: RestartResult;
  workers: number;
  stateFile: string;
  startMs: number;
  tcp: { grpc: number; nats: number; natsWithFanout: number };
  /** A cheap request (GetNode) to replica 0 every 200 ms while the fleet started: how long requests waited in the connection storm. */
  startProbe: ProbeResult;
  errors: string[];
}

/** What {@link RequestProbe} saw. */
export interface ProbeResult {
  requests: number;
  /** Answered with anything but NOT_FOUND (the probe asks for a node that may not exist yet). */
  failed: number;
  latency: Dist;
}

/** Replica 1 killed with -9 while every agent is connected (--replicas > 1). */
export interface FailoverResult {
  /** Agents whose stream was to the killed replica. */
  moved: number;
  /** kill -9 -> every agent's stream open and welcomed on the other replicas. */
  allWelcomedMs: number;
  /** Requests to replica 0 during the move. */
  probe: ProbeResult;
  /** Nodes replica 0 lists as connected once the agents moved (should be all of them). */
  connectedAtReplica0: number;
}

/** What the phases after the start measure (options.k > 0). */
export interface PhaseResult {
  fanoutMode: 'conns' | 'agents';
  runs: ConvergenceRun[];
  /** The --warmup changes before the measured ones (not in any other figure). */
  warmups: ConvergenceRun[];
  fanoutMs: number[];
  convergence: { ackP50: number; ackP99: number; ackMax: number; sentP99: number; sentMax: number; watchLagP99: number; apiMs: number };
  fanout: { medianMs: number; ratioP99: number; ratioMax: number };
  controllerCpuPerChangeMs: number;
  controllerCpuPerChangeNetMs: number;
  workerCpuPerChangeMs: number;
  /** Medians over the K changes of ConvergenceRun.machine. */
  machinePerChange: { cpuMs: number; busyPct: number };
  restart: { natsDownMs: number; upToApplyMs: number; upToAllAppliedMs: number; applyToAllAckedMs: number };
  idle: { controllerCpuPct: number; agentCpuPctEach: number; workersCpuPct: number };
  telemetry: { seconds: number; counterReportsPerS: number; controllerCpuPct: number; workersCpuPct: number };
  footprint: { controllerRssMiB: number; workerRssMiB: number[]; agentRssKiB: number; controllerRssAfterStartMiB: number };
  /**
   * Bytes per change, net of the idle rate (`ss` byte counts of the server sides of the
   * sockets): on the bus (nats-server sent + received) and on the agent streams (the replicas
   * received + sent, the bench's watcher included).
   */
  bytesPerChange: { bus: number; streams: number };
  failover?: FailoverResult;
}

export type SizeResult = BaseResult & Partial<PhaseResult>;
type FullResult = BaseResult & PhaseResult;

/** Creates `n` join tokens as the admin, `concurrency` at a time; token i carries simulated agent i's labels. */
async function createJoinTokens(address: string, tls: ClientTls, n: number, concurrency = 20): Promise<{ tokens: string[]; caFingerprint: string }> {
  const trust = new TrustServiceClient(address, grpcJs.credentials.createSsl(tls.ca, tls.key, tls.cert));
  try {
    const tokens: string[] = [];
    let caFingerprint = '';
    let next = 0;
    const lane = async (): Promise<void> => {
      while (next < n) {
        const i = next++;
        const res = await call(trust, trust.createJoinToken, { ttl: { seconds: 3600n, nanos: 0 }, labels: simLabels(i) });
        tokens[i] = res.token;
        caFingerprint = res.caFingerprint;
      }
    };
    await Promise.all(Array.from({ length: concurrency }, lane));
    return { tokens, caFingerprint };
  } finally {
    trust.close();
  }
}

const DEFAULT_OPTIONS: SizeOptions = { mtls: argv.includes('--mtls'), k: K, controllerRestart: false, enrollConcurrency: 25, replicas: REPLICAS[0]! };

/** Runs one fleet size with a fresh nats-server and controller; tears everything down before returning. */
export async function runSize(n: number, root: string, options: SizeOptions = DEFAULT_OPTIONS): Promise<SizeResult> {
  const { mtls, k: K, replicas: R } = options;
  const dir = join(root, `n${n}-r${R}-${mtls ? 'mtls' : 'plain'}`);
  mkdirSync(dir, { recursive: true });
  const local: [string, () => unknown][] = [];
  const push = (what: string, fn: () => unknown): void => void local.push([what, fn]);
  try {
    const nats = await NatsServer.start({ dataDir: join(dir, 'nats'), host: '127.0.0.1' });
    push('nats-server', () => nats.close());
    // A fixed port, so a restarted controller comes back where the agents look for it.
    const port = await freePort('127.0.0.1');
    const controllerArgs = [CONTROLLER_MAIN, ...(mtls ? [] : ['--insecure']), '--listen', `127.0.0.1:${port}`, '--nats', nats.url, '--nats-anonymous', '--data-dir', join(dir, 'controller'), '--heartbeat-interval', HEARTBEAT_S, '--log-heartbeat', LOG_HEARTBEAT_S, '--counter-interval', COUNTER_S, '--replica-counters-interval', REPLICA_COUNTERS_S];
    // PERF_MAP=1: the controller writes /tmp/perf-PID.map, so `perf record -g -p PID` names its JS frames.
    const prof = PROFILE_DIR ? ['--cpu-prof', `--cpu-prof-dir=${PROFILE_DIR}`, `--cpu-prof-name=controller-n${n}-${Date.now()}.cpuprofile`] : process.env.PERF_MAP ? ['--perf-basic-prof'] : [];
    // Stopped also when it never gets ready (a loaded machine): registered before the wait.
    const controller = new Supervised('controller', { command: process.execPath, args: [...prof, ...controllerArgs], readyEvent: 'ready', readyTimeoutMs: READY_MS });
    push('controller', () => controller.stop(30_000));
    await controller.start();
    // The controller's warnings and errors, summed by message every 5 s (a reconnect storm logs thousands).
    const controllerWarnings = new Map<string, number>();
    let controllerStallMax = 0;
    const offWarnings = controller.onLine((line) => {
      const m = /"level":"(warn|error)","msg":"([^"]{0,120})/.exec(line);
      if (!m) return;
      // A stall line says how long: keep the longest of the interval in the key.
      const stall = m[2] === 'event loop stalled' ? /"ms":(\d+)/.exec(line)?.[1] : undefined;
      const key = `${m[1]}: ${m[2]}`;
      controllerWarnings.set(key, (controllerWarnings.get(key) ?? 0) + 1);
      if (stall) controllerStallMax = Math.max(controllerStallMax, Number(stall));
    });
    const warningsTimer = setInterval(() => {
      if (controllerWarnings.size === 0) return;
      log(`controller: ${[...controllerWarnings].map(([k, v]) => `${v} x ${k}`).join('; ')}${controllerStallMax ? ` (longest stall ${controllerStallMax} ms)` : ''}`);
      controllerWarnings.clear();
      controllerStallMax = 0;
    }, 5000);
    push('controller warnings', () => {
      clearInterval(warningsTimer);
      offWarnings();
    });
    // More replicas on the same bus (--replicas): the first one's signing key (and CA) are theirs too.
    const replicas: Supervised[] = [controller];
    for (let r = 1; r < R; r++) {
      const rport = await freePort('127.0.0.1');
      const ctl = join(dir, 'controller');
      const args = controllerArgs.map((a) => (a === `127.0.0.1:${port}` ? `127.0.0.1:${rport}` : a === ctl ? join(dir, `controller-${r}`) : a));
      const replica = new Supervised(`controller-${r}`, {
        command: process.execPath,
        args: [...args, '--controller-id', `replica-${r}`, '--signing-key', join(ctl, 'signing-key.pem'), '--ca-cert', join(ctl, 'pki', 'ca.pem'), '--ca-key', join(ctl, 'pki', 'ca-key.pem')],
        readyEvent: 'ready',
        readyTimeoutMs: READY_MS,
      });
      push(`controller-${r}`, () => replica.stop(30_000));
      await replica.start();
      replicas.push(replica);
    }
    const addresses = replicas.map((r) => String(r.ready.grpc));
    const replicaPorts = addresses.map((a) => Number(a.split(':').pop()));
    // With one replica this is the controller's own sample; with more, their sum.
    const sampleControllers = (): ReturnType<typeof sampleProc> => {
      const samples = replicas.map((r) => sampleProc(r.pid!));
      return { at: Math.max(...samples.map((x) => x.at)), rssKb: samples.reduce((t, x) => t + x.rssKb, 0), anonKb: samples.reduce((t, x) => t + x.anonKb, 0), ticks: samples.reduce((t, x) => t + x.ticks, 0) };
    };
    const address = String(controller.ready.grpc);
    const publicKey = String(controller.ready.publicKey);
    const tls = mtls ? adminTlsOf(join(dir, 'controller')) : undefined;
    const c = clients(address, tls);
    push('grpc clients', () => c.close());
    const nc: NatsConnection = await connect({ servers: [nats.url], name: 'fleet-bench', maxReconnectAttempts: -1, reconnectTimeWait: 250 });
    push('bench nats', () => nc.close());
    const watcher = new AckWatcher(c);
    push('watcher', () => watcher.close());
    // A first revision, so agents start with something to catch up to.
    await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: policy(0), allowLargeGrowth: true }));
    // The list the changes add to, built by successive updates (MAX_PREFIX_LIST_CHANGE each).
    const addToList = async (add: string[]): Promise<bigint> => {
      const r = await call(c.blocklist, c.blocklist.updatePrefixList, UpdatePrefixListRequest.fromPartial({ prefixList: PrefixList.fromPartial({ metadata: { name: LIST }, spec: { use: PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE } }), add }), 120_000);
      return r.prefixList!.metadata!.resourceVersion;
    };
    for (let from = 0; from < LIST_PREFIXES; from += MAX_PREFIX_LIST_CHANGE) {
      const to = Math.min(LIST_PREFIXES, from + MAX_PREFIX_LIST_CHANGE);
      await addToList(Array.from({ length: to - from }, (_, k) => `${11 + ((from + k) >> 16)}.${((from + k) >> 8) & 255}.${(from + k) & 255}.0/24`));
    }

    // -- start the fleet --
    const stateDir = STATE_FILE === 'disk' ? join(dir, 'state') : undefined;
    const per = Math.ceil(n / WORKERS);
    const workers: Worker[] = [];
    for (let w = 0; w < WORKERS; w++) workers.push(new Worker(w, Math.min(per, n - w * per)));
    push('workers', () => Promise.all(workers.map((w) => w.stop())));
    let enroll: EnrollResult | undefined;
    if (tls) {
      // -- enrollment: the admin creates one join token per agent, then every agent enrolls --
      const e0 = now();
      const { tokens, caFingerprint } = await createJoinTokens(address, tls, n);
      const tokensMs = now() - e0;
      const c0 = sampleControllers();
      const enrolled = await Promise.all(
        workers.map((w, i) =>
          w.request({ type: 'enroll', controller: addresses[i % addresses.length]!, caFingerprint, tokens: tokens.slice(i * per, i * per + w.count), prefix: `sim${i}`, first: i * per, identityDir: join(dir, 'identity'), concurrency: options.enrollConcurrency }, 'enrolled', 20 * 60_000),
        ),
      );
      const c1 = sampleControllers();
      enroll = {
        tokensMs: round(tokensMs),
        concurrency: options.enrollConcurrency * WORKERS,
        totalMs: round(c1.at - c0.at),
        latency: dist(enrolled.flatMap((e) => e.latencyMs)),
        failed: enrolled.reduce((s, e) => s + e.failed, 0),
        controllerCpuMs: round(cpuMs(c0, c1)),
      };
      log(`n=${n}: ${n} tokens in ${enroll.tokensMs} ms; enrolled in ${enroll.totalMs} ms (p50/p99 ${enroll.latency.p50}/${enroll.latency.p99} ms, ${enroll.failed} failed), controller CPU ${enroll.controllerCpuMs} ms`);
    }
    // Progress of the start and of every wait for the fleet to reconnect, with why streams went down.
    const offProgress = workers.map((w, i) => w.on((e) => e.type === 'progress' && log(`worker ${i}: ${e.started} started, ${e.connected} connected; loop max ${e.loopMaxMs} ms, heap ${e.heapMiB} MiB${Object.keys(e.downs).length ? `; down: ${JSON.stringify(e.downs)}` : ''}`)));
    push('progress log', () => offProgress.forEach((off) => off()));
    const startProbeRun = new RequestProbe(c, 'sim0-00000');
    push('start probe', () => startProbeRun.stop());
    const t0 = now();
    const startedAll = await Promise.all(
      workers.map((w, i) =>
        w.request({ type: 'start', controller: addresses.join(','), nats: nats.url, publicKey, prefix: `sim${i}`, first: i * per, count: w.count, stateDir, concurrency: 50 }, 'started', 20 * 60_000),
      ),
    );
    const startMs = Math.max(...startedAll.map((s) => s.lastConnectedAt)) - t0;
    const startProbe = await startProbeRun.stop();
    log(`n=${n}: requests to replica 0 while the fleet started: ${startProbe.requests}, p50/p99/max ${startProbe.latency.p50}/${startProbe.latency.p99}/${startProbe.latency.max} ms, ${startProbe.failed} failed`);
    await sleep(2000);
    const tcp = { grpc: replicaPorts.reduce((t, p) => t + established(p), 0), nats: established(nats.port), natsWithFanout: 0 };
    const workerRssAfterStart = workers.map((w) => sampleProc(w.pid).rssKb / 1024);
    const controllerRssAfterStart = sampleControllers().rssKb / 1024;
    log(`n=${n}: started in ${round(startMs / 1000)} s; tcp to controller ${tcp.grpc}, to nats ${tcp.nats}; worker RSS ${workerRssAfterStart.map((x) => round(x)).join(', ')} MiB`);

    const phases = async (): Promise<PhaseResult> => {
      // -- idle --
      const bytes = (): { bus: number; streams: number } => ({ bus: socketBytes([nats.port]), streams: socketBytes(replicaPorts) });
      const idleB0 = bytes();
      const idle0 = sampleControllers();
      const idleW0 = workers.map((w) => sampleProc(w.pid));
      await sleep(IDLE_S * 1000);
      const idle1 = sampleControllers();
      const idleW1 = workers.map((w) => sampleProc(w.pid));
      const idleB1 = bytes();
      const idleBytesPerMs = { bus: (idleB1.bus - idleB0.bus) / (idle1.at - idle0.at), streams: (idleB1.streams - idleB0.streams) / (idle1.at - idle0.at) };
      const idleControllerPct = cpuShare(idle0, idle1);
      const idleWorkersPct = idleW0.reduce((s, a, i) => s + cpuShare(a, idleW1[i]!), 0);
      const idleControllerMsPerS = idleControllerPct * 10;

      // -- fan-out subscribers --
      const fanoutMode: 'conns' | 'agents' = FANOUT === 'auto' ? (2 * n + 500 < NOFILE ? 'conns' : 'agents') : FANOUT;
      const subject = `bench.fanout.${n}`;
      await Promise.all(workers.map((w) => w.request({ type: 'fanout-setup', subject, mode: fanoutMode, nats: nats.url }, 'fanout-ready', 10 * 60_000)));
      tcp.natsWithFanout = established(nats.port);
      log(`n=${n}: fan-out subscribers ready (${fanoutMode}); tcp to nats ${tcp.natsWithFanout}`);
      await sleep(2000);

      const fanoutOnce = async (id: string): Promise<number> => {
        await Promise.all(workers.map((w) => w.request({ type: 'fanout-arm', id }, 'fanout-armed', 10_000, (e) => e.id === id)));
        const done = workers.map((w) => w.next((e): e is Extract<SimEvent, { type: 'fanout-done' }> => e.type === 'fanout-done' && e.id === id, 60_000, `fan-out ${id}`));
        const start = now();
        nc.publish(subject, id);
        const results = await Promise.all(done);
        return Math.max(...results.map((r) => r.last)) - start;
      };

      const convergeOnce = async (i: number): Promise<ConvergenceRun> => {
        const catchUps = async (): Promise<number> => (await Promise.all(workers.map((w) => w.request({ type: 'status' }, 'status', 60_000)))).reduce((s, x) => s + x.catchUps, 0);
        const u0 = await catchUps();
        const b0 = bytes();
        const c0 = sampleControllers();
        const w0 = workers.map((w) => sampleProc(w.pid));
        const m0 = sampleMachine();
        const a0 = now();
        const revision = LIST_PREFIXES > 0 ? await addToList([`203.0.${113 + (i >> 8)}.${i & 255}/32`]) : (await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: policy(i), allowLargeGrowth: true }))).revision;
        const a1 = now();
        // Bounded: nodes whose ACK has not arrived by then count as +Infinity in the distribution.
        await until(`${n} ACKs of revision ${revision} at the watcher`, () => watcher.count(revision) >= n, CONVERGE_BOUND_MS).catch(() => undefined);
        const c1 = sampleControllers();
        const m1 = sampleMachine();
        const b1 = bytes();
        const w1 = workers.map((w) => sampleProc(w.pid));
        const arrivals = watcher.arrivals.get(revision) ?? new Map<string, number>();
        const sentAll = await Promise.all(workers.map((w) => w.request({ type: 'acks', revision: String(revision) }, 'acks', 30_000, (e) => e.revision === String(revision))));
        const catchUpsDuring = (await catchUps()) - u0;
        const sent = new Map<string, number>();
        for (const s of sentAll) s.nodes.forEach((node, k) => sent.set(node, s.sentAt[k]!));
        const lag = [...arrivals].map(([node, t]) => t - (sent.get(node) ?? NaN));
        const machine = machineBusy(m0, m1);
        const missing = (xs: number[]): number[] => [...xs, ...Array<number>(Math.max(0, n - xs.length)).fill(Infinity)];
        return {
          revision: String(revision),
          acked: arrivals.size,
          apiMs: round(a1 - a0),
          ack: dist(missing([...arrivals.values()].map((t) => t - a1))),
          sent: dist(missing([...sent.values()].map((t) => t - a1))),
          watchLag: dist(lag),
          catchUps: catchUpsDuring,
          controllerCpuMs: round(cpuMs(c0, c1)),
          workerCpuMs: round(w0.reduce((s, a, k) => s + cpuMs(a, w1[k]!), 0)),
          machine: { cpuMs: round(machine.cpuMs), busyPct: round(machine.busyPct) },
          windowMs: round(c1.at - c0.at),
          bytes: { bus: Math.round(b1.bus - b0.bus - idleBytesPerMs.bus * (c1.at - c0.at)), streams: Math.round(b1.streams - b0.streams - idleBytesPerMs.streams * (c1.at - c0.at)) },
        };
      };

      // -- convergence, alternated with the raw fan-out (order swapped every other round) --
      const runs: ConvergenceRun[] = [];
      const fanoutMs: number[] = [];
      await fanoutOnce('warmup');
      // -- warm-up changes (ports and prefixes of their own: 101, 102, ...) --
      const warmups: ConvergenceRun[] = [];
      for (let w = 1; w <= WARMUP; w++) {
        const r = await convergeOnce(100 + w);
        warmups.push(r);
        log(`n=${n} warm-up change ${w}/${WARMUP} rev ${r.revision}: ack p50/p99/max ${r.ack.p50}/${r.ack.p99}/${r.ack.max} ms (sent max ${r.sent.max}); controller CPU ${r.controllerCpuMs} ms; workers CPU ${r.workerCpuMs} ms`);
        await sleep(500);
      }
      for (let i = 1; i <= K; i++) {
        if (i % 2) {
          fanoutMs.push(await fanoutOnce(`f${i}`));
          await sleep(300);
          runs.push(await convergeOnce(i));
        } else {
          runs.push(await convergeOnce(i));
          await sleep(300);
          fanoutMs.push(await fanoutOnce(`f${i}`));
        }
        const r = runs[runs.length - 1]!;
        log(`n=${n} change ${i}/${K} rev ${r.revision}: ack p50/p99/max ${r.ack.p50}/${r.ack.p99}/${r.ack.max} ms (sent max ${r.sent.max}); fan-out ${round(fanoutMs[fanoutMs.length - 1]!)} ms; controller CPU ${r.controllerCpuMs} ms; machine CPU ${r.machine.cpuMs} ms (${r.machine.busyPct} % busy); catch-ups ${r.catchUps}`);
        await sleep(500);
      }

      // -- nats-server kill -9 and restart --
      const k0 = now();
      await nats.kill('SIGKILL');
      await nats.restart();
      const up = now();
      let revision = 0n;
      await until(
        'an ApplyPolicy accepted after the nats-server restart',
        async () => {
          try {
            revision = (await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: policy(K + 1), allowLargeGrowth: true }))).revision;
            return true;
          } catch {
            return false;
          }
        },
        120_000,
        100,
      );
      const applied = now();
      const allApplied = await Promise.all(
        workers.map((w) =>
          w.request({ type: 'wait-applied', revision: String(revision), id: `restart-${revision}` }, 'applied', 300_000, (e) => e.id === `restart-${revision}`).catch(() => ({ at: Infinity })),
        ),
      );
      await until(`${n} ACKs of revision ${revision} at the watcher`, () => watcher.count(revision) >= n, 120_000).catch(() => undefined);
      const lastAck = watcher.count(revision) >= n ? Math.max(...watcher.arrivals.get(revision)!.values()) : Infinity;
      const restart = {
        natsDownMs: round(up - k0),
        upToApplyMs: round(applied - up),
        upToAllAppliedMs: round(Math.max(...allApplied.map((a) => a.at)) - up),
        applyToAllAckedMs: round(lastAck - applied),
      };
      log(`n=${n}: nats restart: up -> all applied ${restart.upToAllAppliedMs} ms (apply accepted ${restart.upToApplyMs} ms after up)`);
      await sleep(3000);

      // -- telemetry ingest --
      const before = await Promise.all(workers.map((w) => w.request({ type: 'status' }, 'status')));
      workers.forEach((w) => w.send({ type: 'traffic', on: true }));
      await sleep(3000);
      const t0c = sampleControllers();
      const t0w = workers.map((w) => sampleProc(w.pid));
      const mid = await Promise.all(workers.map((w) => w.request({ type: 'status' }, 'status')));
      await sleep(telemetrySeconds(R) * 1000);
      const t1c = sampleControllers();
      const t1w = workers.map((w) => sampleProc(w.pid));
      const after = await Promise.all(workers.map((w) => w.request({ type: 'status' }, 'status')));
      workers.forEach((w) => w.send({ type: 'traffic', on: false }));
      const reports = after.reduce((s, x) => s + x.counterReports, 0) - mid.reduce((s, x) => s + x.counterReports, 0);
      const telemetry = {
        seconds: telemetrySeconds(R),
        counterReportsPerS: round(reports / ((t1c.at - t0c.at) / 1000)),
        controllerCpuPct: round(cpuShare(t0c, t1c)),
        workersCpuPct: round(t0w.reduce((s, a, i) => s + cpuShare(a, t1w[i]!), 0)),
      };
      void before;
      log(`n=${n}: telemetry ${telemetry.counterReportsPerS} reports/s, controller CPU ${telemetry.controllerCpuPct} %`);

      const controllerRssMiB = sampleControllers().rssKb / 1024;
      const workerRss = workers.map((w) => sampleProc(w.pid).rssKb / 1024);

      // -- failover: replica 1 killed with -9, its agents move to the others --
      let failover: FailoverResult | undefined;
      if (R > 1) {
        const moved = established(replicaPorts[1]!);
        const probe = new RequestProbe(c, 'sim0-00000');
        push('failover probe', () => probe.stop());
        await sleep(1000);
        const f0 = now();
        await replicas[1]!.kill('SIGKILL');
        // The killed replica's sockets close with it: its agents see their streams end at once.
        await sleep(500);
        const welcomed = await Promise.all(workers.map((w) => w.request({ type: 'wait-connected', connected: true, id: 'failover' }, 'connected', 20 * 60_000, (e) => e.id === 'failover')));
        const allWelcomedMs = Math.max(...welcomed.map((x) => x.at)) - f0;
        await sleep(1000);
        const probeResult = await probe.stop();
        // Replica 0's view, through the replicas' shared state (its delta every 250 ms, another replica silent for 5 s is expired).
        await sleep(6000);
        let connectedAtReplica0 = 0;
        let pageToken = '';
        do {
          const page = await call(c.fleet, c.fleet.listNodes, { labelSelector: '', pageSize: 1000, pageToken });
          connectedAtReplica0 += page.nodes.filter((x) => x.status?.connected).length;
          pageToken = page.nextPageToken;
        } while (pageToken);
        failover = { moved, allWelcomedMs: round(allWelcomedMs), probe: probeResult, connectedAtReplica0 };
        log(`n=${n}: failover: ${moved} agents of replica 1 moved; all welcomed ${failover.allWelcomedMs} ms after kill -9; requests to replica 0 p99/max ${probeResult.latency.p99}/${probeResult.latency.max} ms (${probeResult.failed} failed); replica 0 lists ${connectedAtReplica0} connected`);
      }

      const p99s = runs.map((r) => r.ack.p99);
      const maxes = runs.map((r) => r.ack.max);
      const fanMed = median(fanoutMs);
      const ctlPer = median(runs.map((r) => r.controllerCpuMs));
      const ctlNet = median(runs.map((r) => r.controllerCpuMs - (idleControllerMsPerS * r.windowMs) / 1000));
      return {
        fanoutMode,
        runs,
        warmups,
        fanoutMs: fanoutMs.map((x) => round(x)),
        convergence: {
          ackP50: round(median(runs.map((r) => r.ack.p50))),
          ackP99: round(median(p99s)),
          ackMax: round(median(maxes)),
          sentP99: round(median(runs.map((r) => r.sent.p99))),
          sentMax: round(median(runs.map((r) => r.sent.max))),
          watchLagP99: round(median(runs.map((r) => r.watchLag.p99))),
          apiMs: round(median(runs.map((r) => r.apiMs))),
        },
        fanout: { medianMs: round(fanMed), ratioP99: round(median(p99s) / fanMed, 2), ratioMax: round(median(maxes) / fanMed, 2) },
        controllerCpuPerChangeMs: round(ctlPer),
        controllerCpuPerChangeNetMs: round(ctlNet),
        workerCpuPerChangeMs: round(median(runs.map((r) => r.workerCpuMs))),
        machinePerChange: { cpuMs: round(median(runs.map((r) => r.machine.cpuMs))), busyPct: round(median(runs.map((r) => r.machine.busyPct))) },
        bytesPerChange: { bus: median(runs.map((r) => r.bytes.bus)), streams: median(runs.map((r) => r.bytes.streams)) },
        restart,
        idle: { controllerCpuPct: round(idleControllerPct, 2), agentCpuPctEach: round(idleWorkersPct / n, 4), workersCpuPct: round(idleWorkersPct, 1) },
        telemetry,
        footprint: {
          controllerRssMiB: round(controllerRssMiB),
          controllerRssAfterStartMiB: round(controllerRssAfterStart),
          workerRssMiB: workerRss.map((x) => round(x)),
          agentRssKiB: round((workerRssAfterStart.reduce((s, x) => s + x, 0) * 1024) / n, 0),
        },
        ...(failover ? { failover } : {}),
      };
    };
    const full = K > 0 ? await phases() : undefined;

    // -- controller kill -9 and start: every agent reconnects --
    let controllerRestart: RestartResult | undefined;
    if (options.controllerRestart) {
      const allUp = (id: string, connected: boolean): Promise<number> =>
        Promise.all(workers.map((w) => w.request({ type: 'wait-connected', connected, id }, 'connected', 20 * 60_000, (e) => e.id === id))).then((r) => Math.max(...r.map((x) => x.at)));
      await allUp('before-restart', true);
      const k0 = now();
      await controller.kill('SIGKILL');
      const down = await allUp('restart-down', false);
      const s0 = now();
      await controller.start();
      const ready = now();
      const pid = controller.pid!;
      const r0 = sampleProc(pid);
      const welcomed = await allUp('restart-up', true);
      const r1 = sampleProc(pid);
      controllerRestart = {
        allDownMs: round(down - k0),
        startToReadyMs: round(ready - s0),
        readyToAllWelcomedMs: round(welcomed - ready),
        startToAllWelcomedMs: round(welcomed - s0),
        controllerCpuMs: round((r1.ticks / CLK_TCK) * 1000),
        controllerCpuAfterReadyMs: round(cpuMs(r0, r1)),
      };
      log(`n=${n}: controller restart: ready after ${controllerRestart.startToReadyMs} ms, all ${n} welcomed ${controllerRestart.readyToAllWelcomedMs} ms after ready; controller CPU ${controllerRestart.controllerCpuMs} ms (${controllerRestart.controllerCpuAfterReadyMs} after ready)`);
    }

    const status = await Promise.all(workers.map((w) => w.request({ type: 'status' }, 'status')));
    const errors = [...status.flatMap((x) => x.errors), ...workers.flatMap((w) => w.errors)];
    return {
      nodes: n,
      replicas: R,
      mtls,
      ...(enroll ? { enroll } : {}),
      ...(controllerRestart ? { controllerRestart } : {}),
      workers: WORKERS,
      stateFile: STATE_FILE,
      startMs: round(startMs),
      tcp,
      startProbe,
      errors: errors.slice(0, 10),
      ...full,
    };
  } finally {
    for (const [what, fn] of local.reverse()) {
      const t = Date.now();
      try {
        await fn();
      } catch (err) {
        process.stderr.write(`cleanup ${what}: ${(err as Error).message}\n`);
      }
      log(`cleanup n=${n}: ${what} (${Date.now() - t} ms)`);
    }
  }
}

// ---- main ------------------------------------------------------------------------------------

/** Least-squares line y = a + b x through the points (two points: the line through them). */
export function fitLine(points: [number, number][]): { a: number; b: number } {
  const n = points.length;
  const mx = points.reduce((t, [x]) => t + x, 0) / n;
  const my = points.reduce((t, [, y]) => t + y, 0) / n;
  const sxx = points.reduce((t, [x]) => t + (x - mx) ** 2, 0);
  const b = sxx === 0 ? 0 : points.reduce((t, [x, y]) => t + (x - mx) * (y - my), 0) / sxx;
  return { a: my - b * mx, b };
}

/** The fleet size the cost model predicts for (issue 15). */
const MODEL_NODES = 100_000;

/**
 * Issue 15's cost model: per replica count measured at two or more fleet sizes, a line through
 * the measured points for each controller cost (a fixed part plus a part per node), and what the
 * lines give at 100,000 nodes. A model: nothing was measured at that size, the lines assume costs
 * stay linear in the fleet (the per-change and per-report work is, by construction: issue 15's
 * batched registry; memory and GC may not be), and the points come from a shared 2-core machine.
 */
function costModel(results: FullResult[]): { text: string; json: unknown } | undefined {
  const byReplicas = new Map<number, FullResult[]>();
  for (const r of results) byReplicas.set(r.replicas, [...(byReplicas.get(r.replicas) ?? []), r]);
  const hb = Number(HEARTBEAT_S);
  const cs = Number(COUNTER_S);
  const lines: string[] = [];
  const json: Record<string, unknown> = {};
  for (const [replicas, rs] of [...byReplicas].sort((x, y) => x[0] - y[0])) {
    const sizes = new Set(rs.map((r) => r.nodes));
    if (sizes.size < 2) continue;
    const fit = (y: (r: FullResult) => number): { a: number; b: number; at: (n: number) => number } => {
      const l = fitLine(rs.map((r) => [r.nodes, y(r)]));
      return { ...l, at: (n) => l.a + l.b * n };
    };
    // Idle: ms of controller CPU per second (all replicas); per node that is the heartbeats (every
    // hb s) and the replicas' shared-state upkeep; the fixed part is the log head and timers.
    const idle = fit((r) => r.idle.controllerCpuPct * 10);
    // Telemetry: what counter reports add to idle, per report (every node every cs s in the phase).
    const perReport = fitLine(rs.map((r) => [r.telemetry.counterReportsPerS, (r.telemetry.controllerCpuPct - r.idle.controllerCpuPct) * 10]));
    const change = fit((r) => r.controllerCpuPerChangeNetMs);
    const bus = fit((r) => r.bytesPerChange.bus);
    const streams = fit((r) => r.bytesPerChange.streams);
    const rss = fit((r) => r.footprint.controllerRssMiB);
    const N = MODEL_NODES;
    const idleAt = idle.at(N);
    const telemetryAt = idleAt + perReport.a + perReport.b * (N / cs);
    const m = {
      replicas,
      sizes: [...sizes].sort((a, b) => a - b),
      idleMsPerS: { fixed: round(idle.a, 2), perNodeUs: round(idle.b * 1000, 3), perHeartbeatUs: round(idle.b * 1000 * hb, 1) },
      counterReportUs: round(perReport.b * 1000, 1),
      changeMs: { fixed: round(change.a, 1), perNodeUs: round(change.b * 1000, 2) },
      bytesPerChange: { bus: { fixed: Math.round(bus.a), perNode: round(bus.b, 1) }, streams: { fixed: Math.round(streams.a), perNode: round(streams.b, 1) } },
      rssMiB: { fixed: round(rss.a), perNodeKiB: round(rss.b * 1024, 2) },
      at100k: {
        idleCpuPctPerReplica: round(idleAt / 10 / replicas),
        telemetryCpuPctPerReplica: round(telemetryAt / 10 / replicas),
        changeCpuMs: round(change.at(N)),
        bytesPerChange: Math.round(bus.at(N) + streams.at(N)),
        rssMiBPerReplica: round(rss.at(N) / replicas),
      },
    };
    json[String(replicas)] = m;
    lines.push(
      `Cost model, ${replicas} replica${replicas > 1 ? 's' : ''} (a line through the measured points at ${m.sizes.map((x) => x.toLocaleString('en-US')).join(' and ')} agents; sums over the replicas):`,
      `- idle controller CPU: ${m.idleMsPerS.fixed} ms/s fixed + ${m.idleMsPerS.perNodeUs} µs/s per node (${m.idleMsPerS.perHeartbeatUs} µs per node per ${hb} s heartbeat interval, log head and shared state included)`,
      `- per counter report: ${m.counterReportUs} µs`,
      `- per change (net of idle): ${m.changeMs.fixed} ms fixed + ${m.changeMs.perNodeUs} µs per node`,
      `- bytes per change: bus ${m.bytesPerChange.bus.fixed} B + ${m.bytesPerChange.bus.perNode} B per node; agent streams ${m.bytesPerChange.streams.fixed} B + ${m.bytesPerChange.streams.perNode} B per node`,
      `- controller RSS: ${m.rssMiB.fixed} MiB + ${m.rssMiB.perNodeKiB} KiB per node`,
      `  MODEL, not measured: at ${N.toLocaleString('en-US')} nodes and ${replicas} replica${replicas > 1 ? 's' : ''}: idle ${m.at100k.idleCpuPctPerReplica} % of a core per replica; telemetry every ${cs} s ${m.at100k.telemetryCpuPctPerReplica} % per replica; ${m.at100k.changeCpuMs} ms of controller CPU per change; ${m.at100k.bytesPerChange.toLocaleString('en-US')} B per change; RSS ${m.at100k.rssMiBPerReplica} MiB per replica`,
    );
  }
  return lines.length ? { text: lines.join('\n'), json } : undefined;
}

/**
 * Issue 15's goals (quick mode, this machine), each run's figure beside its bound. Idle CPU and
 * RSS are per replica (the sums divided by the replicas); telemetry is every --counter-interval.
 */
function goals(results: FullResult[]): string {
  const lines = ['Issue 15 goals:'];
  const mark = (ok: boolean): string => (ok ? 'met' : 'MISSED');
  for (const r of results) {
    const at = `${r.nodes.toLocaleString('en-US')} x ${r.replicas}`;
    if (r.nodes <= 1000) {
      lines.push(`- ${at}: ACK p99 ${r.convergence.ackP99} ms (<= 250): ${mark(r.convergence.ackP99 <= 250)}`);
      continue;
    }
    const idle = r.idle.controllerCpuPct / r.replicas;
    const telemetry = r.telemetry.controllerCpuPct / r.replicas;
    const rss = r.footprint.controllerRssMiB / r.replicas;
    lines.push(
      `- ${at}: ACK p99 ${r.convergence.ackP99} ms (<= 2,000): ${mark(r.convergence.ackP99 <= 2000)}; ` +
        `p99 / raw fan-out ${r.fanout.ratioP99} (<= 5): ${mark(r.fanout.ratioP99 <= 5)}; ` +
        `idle CPU per replica ${round(idle)} % (<= 5): ${mark(idle <= 5)}; ` +
        `telemetry every ${COUNTER_S} s per replica ${round(telemetry)} % (<= 10): ${mark(telemetry <= 10)}; ` +
        `RSS per replica ${round(rss)} MiB (<= 300): ${mark(rss <= 300)}` +
        (r.failover ? `; failover requests max ${r.failover.probe.latency.max} ms (<= 10,000): ${mark(r.failover.probe.latency.max <= 10_000)}` : '') +
        `; start requests max ${r.startProbe.latency.max} ms (<= 10,000): ${mark(r.startProbe.latency.max <= 10_000)}`,
    );
  }
  return lines.join('\n');
}

function table(results: FullResult[]): string {
  const rows: [string, (r: FullResult) => string][] = [
    ['transport; enrollment total, p50 / p99, controller CPU', (r) => (r.enroll ? `mTLS; ${round(r.enroll.totalMs / 1000)} s, ${r.enroll.latency.p50} / ${r.enroll.latency.p99} ms, ${r.enroll.controllerCpuMs} ms` : 'plaintext (--insecure)')],
    ['controller replicas (agents spread evenly)', (r) => `${r.replicas}`],
    ['agents started + connected', (r) => `${round(r.startMs / 1000)} s`],
    ['requests to replica 0 during the start: p99 / max (failed)', (r) => `${r.startProbe.latency.p99} / ${r.startProbe.latency.max} ms (${r.startProbe.failed})`],
    ['TCP: agent->controller / ->nats (+fan-out)', (r) => `${r.tcp.grpc} / ${r.tcp.nats} (${r.tcp.natsWithFanout})`],
    ['ApplyPolicy round trip, median', (r) => `${r.convergence.apiMs} ms`],
    ['warm-up changes before the K measured (--warmup): ACK p99 each', (r) => (r.warmups.length ? r.warmups.map((x) => x.ack.p99).join(' / ') + ' ms' : '-')],
    ['response -> ACK at controller p50 / p99 / max (medians of K)', (r) => `${r.convergence.ackP50} / ${r.convergence.ackP99} / ${r.convergence.ackMax} ms`],
    ['changes fully ACKed within the bound', (r) => `${r.runs.filter((x) => x.acked >= r.nodes).length} of ${r.runs.length} (fewest ACKs ${Math.min(...r.runs.map((x) => x.acked))})`],
    ['agent catch-ups from the stream per change, median', (r) => `${median(r.runs.map((x) => x.catchUps))}`],
    ['response -> ACK sent by agent p99 / max', (r) => `${r.convergence.sentP99} / ${r.convergence.sentMax} ms`],
    ['watcher lag behind agent send, p99', (r) => `${r.convergence.watchLagP99} ms`],
    ['raw NATS fan-out publish -> last receipt, median', (r) => `${r.fanout.medianMs} ms (${r.fanoutMode})`],
    ['ratio ACK p99 / fan-out, ACK max / fan-out', (r) => `${r.fanout.ratioP99} / ${r.fanout.ratioMax}`],
    ['controller CPU per change (gross / net of idle)', (r) => `${r.controllerCpuPerChangeMs} / ${r.controllerCpuPerChangeNetMs} ms`],
    ['workers CPU per change', (r) => `${r.workerCpuPerChangeMs} ms`],
    // What bounds the ACK p99 on a machine the simulated fleet shares with what is measured: all of
    // a change's CPU time (every process and the kernel) spread over every CPU, against the p99.
    [`machine CPU per change (every process, the kernel), busy share of the ${availableParallelism()} CPUs; that CPU / ${availableParallelism()} vs ACK p99`, (r) => `${r.machinePerChange.cpuMs} ms, ${r.machinePerChange.busyPct} %; ${round(r.machinePerChange.cpuMs / availableParallelism())} vs ${r.convergence.ackP99} ms`],
    ['nats kill -9: restart -> all agents applied new rev', (r) => `${r.restart.upToAllAppliedMs} ms (first apply accepted ${r.restart.upToApplyMs} ms after up)`],
    ['idle CPU: controller / per agent', (r) => `${r.idle.controllerCpuPct} % / ${r.idle.agentCpuPctEach} %`],
    ['telemetry (every agent every --counter-interval): reports/s, controller CPU (per replica)', (r) => `${r.telemetry.counterReportsPerS} /s, ${r.telemetry.controllerCpuPct} % (${round(r.telemetry.controllerCpuPct / r.replicas)} %)`],
    ['bytes per change, net of idle: bus / agent streams', (r) => `${r.bytesPerChange.bus.toLocaleString('en-US')} / ${r.bytesPerChange.streams.toLocaleString('en-US')} B`],
    ['failover: replica 1 kill -9 -> its agents welcomed elsewhere; requests p99 / max; connected at replica 0', (r) => (r.failover ? `${r.failover.moved} agents in ${round(r.failover.allWelcomedMs / 1000)} s; ${r.failover.probe.latency.p99} / ${r.failover.probe.latency.max} ms; ${r.failover.connectedAtReplica0}` : '-')],
    ['controller RSS (after start / end)', (r) => `${r.footprint.controllerRssAfterStartMiB} / ${r.footprint.controllerRssMiB} MiB`],
    ['simulated agent RSS each (worker RSS / agents)', (r) => `${r.footprint.agentRssKiB} KiB`],
  ];
  const head = `| figure | ${results.map((r) => `${r.nodes.toLocaleString('en-US')} agents x ${r.replicas}`).join(' | ')} |\n| --- |${results.map(() => ' --- |').join('')}`;
  return [head, ...rows.map(([name, f]) => `| ${name} | ${results.map(f).join(' | ')} |`)].join('\n');
}

/**
 * Runs `body` with a temporary directory under the run's time bound; removes the directory and
 * sets the exit code to 1 if `body` throws. For the benches built on runSize().
 */
export async function benchMain(name: string, boundMs: number, body: (root: string) => Promise<void>): Promise<void> {
  const bound = setTimeout(() => abort.abort(new Error(`time bound of ${boundMs / 60_000} min reached`)), boundMs);
  const root = mkdtempSync(join(tmpdir(), `edgeplane-${name}-`));
  try {
    await body(root);
  } catch (err) {
    process.stderr.write(`${name} bench failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exitCode = 1;
  } finally {
    clearTimeout(bound);
    rmSync(root, { recursive: true, force: true });
  }
}

/** The machine and build, for every bench's JSON line. */
export function machine(): { cpus: number; memGiB: number; kernel: string; node: string; commit: string; loadavg: number[] } {
  return { cpus: availableParallelism(), memGiB: round(totalmem() / 2 ** 30), kernel: release(), node: process.version, commit: execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).trim(), loadavg: loadavg().map((x) => round(x, 2)) };
}

/** JSON with bigints as strings. */
export const toJson = (v: unknown): string => JSON.stringify(v, (_k, x: unknown) => (typeof x === 'bigint' ? String(x) : x));

async function main(): Promise<void> {
  if (PROFILE_DIR) mkdirSync(PROFILE_DIR, { recursive: true });
  await benchMain('fleet', BOUND_MS, async (root) => {
    const results: FullResult[] = [];
    const failed: string[] = [];
    log(`sizes ${SIZES.join(', ')}; K=${K}; workers ${WORKERS}; controller replicas ${REPLICAS.join(', ')}; heartbeat ${HEARTBEAT_S} s, log head ${LOG_HEARTBEAT_S} s, counters ${COUNTER_S} s (replicas share them every ${REPLICA_COUNTERS_S} s); state file ${STATE_FILE}; mtls ${DEFAULT_OPTIONS.mtls}; RLIMIT_NOFILE ${NOFILE}; tmp ${root}`);
    for (const n of SIZES) {
      for (const replicas of REPLICAS) {
        try {
          results.push((await runSize(n, root, { ...DEFAULT_OPTIONS, replicas })) as FullResult);
        } catch (err) {
          // One run's failure (a fleet that did not start in time) leaves the others' figures.
          if (abort.signal.aborted) throw err;
          failed.push(`${n} x ${replicas}: ${(err as Error).message}`);
          log(`n=${n} x ${replicas} replicas failed: ${(err as Error).stack ?? String(err)}`);
          continue;
        }
        // Each run's figures as soon as they exist, so a later run's failure does not lose them.
        process.stderr.write(`${table(results.slice(-1))}\n${toJson({ partial: true, result: results[results.length - 1] })}\n`);
      }
    }
    if (results.length) process.stdout.write(`${LIST_PREFIXES > 0 ? `changes: one prefix added to a ${LIST_PREFIXES}-prefix list\n` : ''}${table(results)}\n\n${goals(results)}\n`);
    const model = costModel(results);
    if (model) process.stdout.write(`\n${model.text}\n`);
    for (const f of failed) process.stdout.write(`run failed: ${f}\n`);
    process.stdout.write(toJson({ bench: 'fleet', quick, k: K, mtls: DEFAULT_OPTIONS.mtls, replicas: REPLICAS, heartbeatS: Number(HEARTBEAT_S), counterS: Number(COUNTER_S), changes: LIST_PREFIXES > 0 ? `one prefix added to a ${LIST_PREFIXES}-prefix list` : 'policy', ...machine(), results, ...(model ? { model: model.json } : {}), failed }) + '\n');
    if (failed.length) process.exitCode = 1;
  });
}

// Run as a script (bench/trust.ts imports the machinery instead).
if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) await main();
