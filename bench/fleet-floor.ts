// The floor under bench/fleet.ts's ACK figure (issue 15): a change's round trip on this machine
// with no agent logic and no controller logic, beside the raw NATS fan-out that issue 15's ratio
// goal divides by, in one run. N stand-in agents in W worker processes (at the simulator's nice
// value, as bench/fleet.ts runs its agents), each with what a real agent has: its own NATS
// connection and its own gRPC channel (TCP connection) with one bidirectional stream open to one
// of S server processes (as agents spread over controller replicas). Rounds take turns, the order
// rotated every round:
//   raw fan-out:     one NATS publish -> each agent's connection received it (bench/fleet.ts's baseline);
//   gRPC round trip: one NATS publish -> each agent writes an 84-byte message (an agent ACK's size,
//                    bench/proto-encode.ts) on its stream at once -> a server read it (the design's
//                    way back: ACKs over each agent's gRPC stream);
//   NATS round trip: the same 84 bytes published on the agent's own NATS connection instead, to a
//                    subject per server, each server subscribed on a connection of its own (the
//                    way back if ACKs went over the bus).
// Figures: p99 and max from the publish, each round trip's ratio to the fan-out, and the CPU of
// the workers, the servers and nats-server per round (net of their idle rate). Nothing is
// decoded, verified, applied, recorded or shared: what a change costs beyond this is the fleet's
// own work. Prints a table and one JSON line; asserts nothing.
//   node --import=tsx bench/fleet-floor.ts [--nodes 1000,10000] [--servers 1,3] [--workers 4] [--rounds 5] [--sim-nice 10] [--quick]
import { fork, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { setPriority } from 'node:os';
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { NatsServer } from '@edgeplane/intent-log';
import { benchMain, cpuMs, dist, machine, median, now, round, sleep, toJson, type Dist } from './fleet.js';
import { sampleProc, type ProcSample } from './proc-sample.js';

/** Messages between this process and its children (servers and workers). */
type FloorCommand = { type: 'arm' } | { type: 'read' } | { type: 'stop' };
type FloorEvent = { type: 'listening'; port: number } | { type: 'ready'; count: number } | { type: 'times'; times: number[] } | { type: 'error'; message: string };

const ACK_BYTES = 84;
const HELLO_BYTES = 4;
const FANOUT_SUBJECT = 'floor.fanout';
const GRPC_SUBJECT = 'floor.grpc';
const NATS_SUBJECT = 'floor.nats';
/** Server k's subject for the NATS round trip. */
const ackSubject = (k: number): string => `floor.ack.${k}`;
/** The stream's one method, messages as raw bytes: no codec in the way. */
const raw = (b: Buffer): Buffer => b;
const SERVICE: grpc.ServiceDefinition = {
  Connect: { path: '/edgeplane.floor.Floor/Connect', requestStream: true, responseStream: true, requestSerialize: raw, requestDeserialize: raw, responseSerialize: raw, responseDeserialize: raw },
};

const send = (e: FloorEvent): void => void process.send?.(e);
/** Arrival times (wall ms) since the last 'arm' (answered with none); a 'read' hands them over. */
let times: number[] = [];
const onCommand = (handle: (c: FloorCommand) => void): void => {
  process.on('message', (c: FloorCommand) => {
    if (c.type === 'arm') {
      times = [];
      send({ type: 'times', times });
    } else if (c.type === 'read') send({ type: 'times', times });
    else handle(c);
  });
};

/** A server (index `k`): counts each ACK-sized message's arrival on any stream, and on its NATS subject. */
async function server(nats: string, k: number): Promise<void> {
  const nc = await connect({ servers: [nats], noAsyncTraces: true });
  nc.subscribe(ackSubject(k), {
    callback: (_e, m) => {
      if (m.data.length === ACK_BYTES) times.push(now());
    },
  });
  const s = new grpc.Server();
  s.addService(SERVICE, {
    Connect: (call: grpc.ServerDuplexStream<Buffer, Buffer>) => {
      call.on('data', (b: Buffer) => {
        if (b.length === ACK_BYTES) times.push(now());
      });
      call.on('error', () => undefined);
    },
  });
  s.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => (err ? send({ type: 'error', message: err.message }) : send({ type: 'listening', port })));
  onCommand(() => {
    s.forceShutdown();
    void nc.close().finally(() => process.exit(0));
  });
}

/** A worker: `count` stand-in agents from index `first`, agent i on server i mod S. */
async function worker(nats: string, ports: string[], first: number, count: number): Promise<void> {
  const conns: NatsConnection[] = [];
  const streams: grpc.ClientDuplexStream<Buffer, Buffer>[] = [];
  const clients: grpc.Client[] = [];
  onCommand(() => {
    for (const s of streams) s.cancel();
    for (const c of clients) c.close();
    void Promise.all(conns.map((c) => c.close().catch(() => undefined))).then(() => process.exit(0));
  });
  const Client = grpc.makeGenericClientConstructor(SERVICE, 'Floor');
  const ack = Buffer.alloc(ACK_BYTES, 1);
  const start = async (i: number): Promise<void> => {
    // A channel of its own (its own subchannel pool: its own TCP connection), as each agent has.
    const client = new Client(`127.0.0.1:${ports[i % ports.length]}`, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 });
    clients.push(client);
    const stream = (client as unknown as { Connect(): grpc.ClientDuplexStream<Buffer, Buffer> }).Connect();
    stream.on('error', () => undefined);
    stream.write(Buffer.alloc(HELLO_BYTES));
    streams.push(stream);
    const nc = await connect({ servers: [nats], noAsyncTraces: true, timeout: 20_000 });
    conns.push(nc);
    nc.subscribe(FANOUT_SUBJECT, { callback: () => void times.push(now()) });
    nc.subscribe(GRPC_SUBJECT, { callback: () => void stream.write(ack) });
    const subject = ackSubject(i % ports.length);
    nc.subscribe(NATS_SUBJECT, { callback: () => nc.publish(subject, ack) });
  };
  // 50 at a time: the start is not what is measured.
  for (let i = first; i < first + count; i += 50) await Promise.all(Array.from({ length: Math.min(50, first + count - i) }, (_x, k) => start(i + k)));
  await Promise.all(conns.map((c) => c.flush()));
  // Every channel connected (its stream opened) before the first round.
  await Promise.all(clients.map((c) => new Promise<void>((resolve, reject) => c.waitForReady(Date.now() + 60_000, (err) => (err ? reject(err) : resolve())))));
  send({ type: 'ready', count });
}

// ---- the bench -------------------------------------------------------------------------------

const argv = process.argv.slice(2);
const opt = (name: string): string | undefined => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : undefined;
};
const SIZES = (opt('--nodes') ?? '1000,10000').split(',').map((s) => Number(s.replace(/_/g, '')));
const SERVERS = (opt('--servers') ?? '1,3').split(',').map(Number);
const WORKERS = Number(opt('--workers') ?? 4);
const ROUNDS = Number(opt('--rounds') ?? (argv.includes('--quick') ? 3 : 5));
const SIM_NICE = Number(opt('--sim-nice') ?? 10);
const IDLE_S = 5;
const ROUND_BOUND_MS = 60_000;
const SELF = fileURLToPath(import.meta.url);
const log = (msg: string): void => void process.stderr.write(`[fleet-floor ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);

class Child {
  readonly proc: ChildProcess;
  #listeners = new Set<(e: FloorEvent) => void>();
  constructor(args: string[], nice: number) {
    this.proc = fork(SELF, args, { execArgv: ['--import=tsx', '--max-old-space-size=16384'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    if (nice !== 0) setPriority(this.proc.pid!, nice);
    this.proc.on('message', (e: FloorEvent) => {
      if (e.type === 'error') log(`child ${this.proc.pid}: ${e.message}`);
      for (const l of this.#listeners) l(e);
    });
  }
  /** Sends `command` (if any) and resolves with the next event of type `type`. */
  next<T extends FloorEvent['type']>(type: T, command?: FloorCommand, ms = 10 * 60_000): Promise<Extract<FloorEvent, { type: T }>> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#listeners.delete(l);
        reject(new Error(`child ${this.proc.pid}: no '${type}' within ${ms} ms`));
      }, ms);
      const l = (e: FloorEvent): void => {
        if (e.type !== type) return;
        clearTimeout(timer);
        this.#listeners.delete(l);
        resolve(e as Extract<FloorEvent, { type: T }>);
      };
      this.#listeners.add(l);
      if (command) this.proc.send(command);
    });
  }
  stop(): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return Promise.resolve();
    const exited = new Promise<void>((resolve) => this.proc.once('exit', () => resolve()));
    this.proc.send({ type: 'stop' } satisfies FloorCommand);
    const kill = setTimeout(() => this.proc.kill('SIGKILL'), 5000);
    return exited.finally(() => clearTimeout(kill));
  }
}

const KINDS = ['fanout', 'grpc', 'nats'] as const;
type Kind = (typeof KINDS)[number];
const SUBJECTS: Record<Kind, string> = { fanout: FANOUT_SUBJECT, grpc: GRPC_SUBJECT, nats: NATS_SUBJECT };

interface Round {
  kind: Kind;
  received: number;
  latency: Dist;
  workersCpuMs: number;
  serversCpuMs: number;
  natsCpuMs: number;
}

interface SizeResult {
  nodes: number;
  servers: number;
  workers: number;
  /** Per kind, medians over the rounds; ratioP99 is the kind's p99 over the fan-out's. */
  kinds: Record<Kind, { p99: number; max: number; ratioP99: number; workersCpuMs: number; serversCpuMs: number; natsCpuMs: number }>;
  rounds: Round[];
  idle: { workersCpuPct: number; serversCpuPct: number; natsCpuPct: number };
}

const cpuOf = (a: ProcSample[], b: ProcSample[]): number => a.reduce((sum, s, i) => sum + cpuMs(s, b[i]!), 0);

async function runSize(n: number, servers: number, root: string): Promise<SizeResult> {
  const nats = await NatsServer.start({ dataDir: join(root, `nats-${n}-${servers}`), host: '127.0.0.1' });
  const children: Child[] = [];
  try {
    const serverProcs: Child[] = [];
    for (let s = 0; s < servers; s++) serverProcs.push(new Child(['server', nats.url, String(s)], 0));
    children.push(...serverProcs);
    const ports = await Promise.all(serverProcs.map((c) => c.next('listening', undefined, 60_000)));
    const workers: Child[] = [];
    const per = Math.ceil(n / WORKERS);
    for (let w = 0; w < WORKERS && w * per < n; w++) workers.push(new Child(['worker', nats.url, ports.map((p) => p.port).join(','), String(w * per), String(Math.min(per, n - w * per))], SIM_NICE));
    children.push(...workers);
    const t = now();
    await Promise.all(workers.map((w) => w.next('ready')));
    log(`n=${n} x ${servers} servers: ${n} stand-in agents connected in ${round((now() - t) / 1000)} s`);
    const bus = await connect({ servers: [nats.url] });
    const sampleAll = (): { w: ProcSample[]; s: ProcSample[]; n: ProcSample[] } => ({ w: workers.map((c) => sampleProc(c.proc.pid!)), s: serverProcs.map((c) => sampleProc(c.proc.pid!)), n: [sampleProc(nats.pid!)] });
    // The idle rate, so each round's CPU can be given net of it.
    await sleep(2000);
    const i0 = sampleAll();
    await sleep(IDLE_S * 1000);
    const i1 = sampleAll();
    const idleMs = i1.w[0]!.at - i0.w[0]!.at;
    const idle = { w: cpuOf(i0.w, i1.w) / idleMs, s: cpuOf(i0.s, i1.s) / idleMs, n: cpuOf(i0.n, i1.n) / idleMs };
    const rounds: Round[] = [];
    for (let r = 0; r < ROUNDS; r++) {
      const order = KINDS.map((_k, i) => KINDS[(i + r) % KINDS.length]!);
      for (const kind of order) {
        const counters = kind === 'fanout' ? workers : serverProcs;
        await Promise.all(counters.map((c) => c.next('times', { type: 'arm' })));
        const a = sampleAll();
        const t0 = now();
        bus.publish(SUBJECTS[kind], new Uint8Array(8));
        let all: number[] = [];
        const deadline = t0 + ROUND_BOUND_MS;
        for (;;) {
          await sleep(50);
          all = (await Promise.all(counters.map((c) => c.next('times', { type: 'read' })))).flatMap((e) => e.times);
          if (all.length >= n || now() > deadline) break;
        }
        const b = sampleAll();
        const windowMs = b.w[0]!.at - a.w[0]!.at;
        const latency = all.map((x) => x - t0);
        // Missing ones count as never arriving.
        for (let k = all.length; k < n; k++) latency.push(Infinity);
        const round_: Round = {
          kind,
          received: all.length,
          latency: dist(latency),
          workersCpuMs: round(cpuOf(a.w, b.w) - idle.w * windowMs),
          serversCpuMs: round(cpuOf(a.s, b.s) - idle.s * windowMs),
          natsCpuMs: round(cpuOf(a.n, b.n) - idle.n * windowMs),
        };
        rounds.push(round_);
        log(`n=${n} x ${servers} round ${r + 1}/${ROUNDS} ${kind}: ${round_.received} received, p99/max ${round_.latency.p99}/${round_.latency.max} ms; CPU workers ${round_.workersCpuMs}, servers ${round_.serversCpuMs}, nats-server ${round_.natsCpuMs} ms`);
        await sleep(1000);
      }
    }
    await bus.close();
    const med = (kind: Kind, f: (x: Round) => number): number => round(median(rounds.filter((x) => x.kind === kind).map(f)));
    const fanoutP99 = med('fanout', (x) => x.latency.p99);
    const kinds = Object.fromEntries(
      KINDS.map((k) => {
        const p99 = med(k, (x) => x.latency.p99);
        return [k, { p99, max: med(k, (x) => x.latency.max), ratioP99: round(p99 / fanoutP99, 2), workersCpuMs: med(k, (x) => x.workersCpuMs), serversCpuMs: med(k, (x) => x.serversCpuMs), natsCpuMs: med(k, (x) => x.natsCpuMs) }];
      }),
    ) as SizeResult['kinds'];
    return { nodes: n, servers, workers: workers.length, kinds, rounds, idle: { workersCpuPct: round(idle.w * 100, 2), serversCpuPct: round(idle.s * 100, 2), natsCpuPct: round(idle.n * 100, 2) } };
  } finally {
    await Promise.all(children.map((c) => c.stop()));
    await nats.close();
  }
}

function table(results: SizeResult[]): string {
  const rows: [string, (r: SizeResult) => string][] = [
    ['raw NATS fan-out, publish -> received: p99 / max (median of rounds)', (r) => `${r.kinds.fanout.p99} / ${r.kinds.fanout.max} ms`],
    ['5x the fan-out p99 (issue 15\'s ratio goal at 10,000)', (r) => `${round(5 * r.kinds.fanout.p99)} ms`],
    ['round trip, 84 B back on each agent\'s gRPC stream: p99 / max; p99 / fan-out p99', (r) => `${r.kinds.grpc.p99} / ${r.kinds.grpc.max} ms; ${r.kinds.grpc.ratioP99}x`],
    ['round trip, 84 B back on each agent\'s NATS connection: p99 / max; p99 / fan-out p99', (r) => `${r.kinds.nats.p99} / ${r.kinds.nats.max} ms; ${r.kinds.nats.ratioP99}x`],
    ['CPU per round, fan-out: workers / nats-server', (r) => `${r.kinds.fanout.workersCpuMs} / ${r.kinds.fanout.natsCpuMs} ms`],
    ['CPU per round, gRPC round trip: workers / servers / nats-server', (r) => `${r.kinds.grpc.workersCpuMs} / ${r.kinds.grpc.serversCpuMs} / ${r.kinds.grpc.natsCpuMs} ms`],
    ['CPU per round, NATS round trip: workers / servers / nats-server', (r) => `${r.kinds.nats.workersCpuMs} / ${r.kinds.nats.serversCpuMs} / ${r.kinds.nats.natsCpuMs} ms`],
    ['idle CPU: workers / servers / nats-server', (r) => `${r.idle.workersCpuPct} / ${r.idle.serversCpuPct} / ${r.idle.natsCpuPct} %`],
  ];
  const head = `| figure | ${results.map((r) => `${r.nodes.toLocaleString('en-US')} x ${r.servers}`).join(' | ')} |\n| --- |${results.map(() => ' --- |').join('')}`;
  return [head, ...rows.map(([name, f]) => `| ${name} | ${results.map(f).join(' | ')} |`)].join('\n');
}

async function main(): Promise<void> {
  await benchMain('fleet-floor', 30 * 60_000 * SIZES.length * SERVERS.length, async (root) => {
    log(`sizes ${SIZES.join(', ')}; servers ${SERVERS.join(', ')}; workers ${WORKERS} at nice ${SIM_NICE}; ${ROUNDS} rounds of each`);
    const results: SizeResult[] = [];
    for (const n of SIZES) for (const s of SERVERS) results.push(await runSize(n, s, root));
    process.stdout.write(`${table(results)}\n`);
    process.stdout.write(toJson({ bench: 'fleet-floor', workers: WORKERS, simNice: SIM_NICE, rounds: ROUNDS, ...machine(), results }) + '\n');
  });
}

const role = process.argv[2];
// A child whose bench died (even by kill -9) does not linger with its connections.
if (role !== undefined) process.on('disconnect', () => process.exit(0));
if (role === 'server') {
  server(process.argv[3]!, Number(process.argv[4])).catch((err: Error) => {
    send({ type: 'error', message: err.stack ?? err.message });
    process.exit(1);
  });
}
else if (role === 'worker') {
  const [, , , nats, ports, first, count] = process.argv;
  worker(nats!, ports!.split(','), Number(first), Number(count)).catch((err: Error) => {
    send({ type: 'error', message: err.stack ?? err.message });
    process.exit(1);
  });
} else await main();
