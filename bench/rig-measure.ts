// The measuring the connection benchmarks share (bench/conntrack.ts, bench/lb.ts), once: their
// arguments, the run's clean-up and goals, and the three measurements both make on a rig of
// network namespaces with bench/tcp-churn.c and trafgen:
//   - new connections per CPU-second: tcp-churn's client pinned to one CPU (its servers and that
//     CPU's ksoftirqd with it), each connection from a tuple never used before;
//   - an established flow's packets per softirq CPU-second: trafgen floods one UDP flow from one
//     CPU (veth receives in softirq on the sending CPU);
//   - broken connections across changes: long-lived connections echo in turn and new ones churn
//     while the bench changes what the node runs.
// Each measurement also samples its CPU with perf (bench/perf-share.ts) for the filter's or the
// load balancer's own share.
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HZ, softirqJiffies, threadTicksByPid, ticksBetween } from './cpu-ticks.js';
import { sampleCpu, type FilterCpu } from './perf-share.js';

/** The CPU the connection load is pinned to (client, servers, that CPU's ksoftirqd); trafgen floods from the other one. */
export const LOAD_CPU = 1;
export const FLOOD_CPU = 0;
/** tcp-churn's client sources: PREFIX.1 .. PREFIX.200, 64,000 ports each, so every connection has a fresh tuple. */
export const CHURN_SOURCES = 200;

export const run = (command: string, ...args: string[]): string => execFileSync(command, args, { encoding: 'utf8', maxBuffer: 1 << 28 });
export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));
export const fmt = (n: number): string => (Number.isNaN(n) ? 'n/a' : Math.round(n).toLocaleString('en-US'));
export const firstLine = (error: unknown): string => (error instanceof Error ? error.message : String(error)).split('\n')[0] ?? '';
/** The last JSON line tcp-churn printed (its summary), {} when none. */
export const lastJson = (text: string): Record<string, number> => JSON.parse(text.split('\n').filter((l) => l.startsWith('{')).pop() ?? '{}') as Record<string, number>;

export interface BenchArgs {
  quick: boolean;
  /** The parts to run: `--parts` (letters), all of `allParts` without it. */
  parts: Set<string>;
  reps: number;
  churnSeconds: number;
  floodSeconds: number;
}

/** `[--quick] [--parts LETTERS]`: --quick runs 1 rep of 1 s churns and floods, else 3 of 3 s and 2 s. */
export function benchArgs(allParts: string, argv: readonly string[] = process.argv): BenchArgs {
  const quick = argv.includes('--quick');
  const partsArg = argv[argv.indexOf('--parts') + 1];
  const parts = new Set((argv.includes('--parts') && partsArg !== undefined ? partsArg : allParts).split(''));
  return { quick, parts, reps: quick ? 1 : 3, churnSeconds: quick ? 1 : 3, floodSeconds: quick ? 1 : 2 };
}

export interface Goal {
  goal: string;
  figure: string;
  /** null: no figure to judge. */
  met: boolean | null;
}

/** A process started in a namespace, owned by its BenchRun. */
export interface NsProcess {
  readonly child: ChildProcess;
  /** SIGTERM, wait for the exit; its stdout. */
  stop(): Promise<string>;
}

/**
 * One benchmark run: its work directory, its children, its bpffs mount, goals and failures, and
 * one clean-up of everything it changed on the machine, from main's finally or from a signal (the
 * bench may be busy in a synchronous step, so the handler cleans up and exits).
 */
export class BenchRun {
  readonly workDir: string;
  /** Every process the bench runs (perf included), killed at clean-up. */
  readonly children = new Set<ChildProcess>();
  readonly goals: Goal[] = [];
  readonly failures: string[] = [];
  readonly #tag: string;
  readonly #undo: () => void;
  #mount: string | undefined;
  #mounted = false;
  #cleaned = false;
  #nextTuple = 0;

  /**
   * @param script how the signal handler names the bench (`bench/lb.ts`).
   * @param tag in the work directory's and the mount's names.
   * @param undo the bench's own clean-up (its namespaces, sysctls), run once after its children are killed.
   */
  constructor(script: string, tag: string, undo: () => void) {
    this.workDir = mkdtempSync(join(tmpdir(), `ep-bench-${tag}-`));
    this.#tag = tag;
    this.#undo = undo;
    for (const signal of ['SIGINT', 'SIGTERM'] as const) {
      process.on(signal, () => {
        process.stderr.write(`${script}: ${signal}, cleaning up\n`);
        this.cleanUp();
        process.exit(130);
      });
    }
  }

  cleanUp(): void {
    if (this.#cleaned) return;
    this.#cleaned = true;
    for (const child of this.children) child.kill('SIGKILL');
    this.#undo();
    if (this.#mounted && this.#mount !== undefined) spawnSync('umount', [this.#mount]);
    if (this.#mount !== undefined && existsSync(this.#mount)) rmdirSync(this.#mount);
    rmSync(this.workDir, { recursive: true, force: true });
  }

  /** A bpffs of the run's own (the datapath's pin root), unmounted at clean-up. */
  mountBpf(): string {
    this.#mount = mkdtempSync(`/run/edgeplane-bench-${this.#tag}-`);
    execFileSync('mount', ['-t', 'bpf', 'bpf', this.#mount]);
    this.#mounted = true;
    return this.#mount;
  }

  /** Compiles bench/tcp-churn.c into the work directory. @returns the binary. */
  buildLoad(): string {
    const out = join(this.workDir, 'tcp-churn');
    run('cc', '-O2', '-Wall', '-o', out, fileURLToPath(new URL('./tcp-churn.c', import.meta.url)));
    return out;
  }

  /** The first of tcp-churn's tuples no run used yet. */
  get nextTuple(): number {
    return this.#nextTuple;
  }

  /** Moves past the tuples a churn used (its summary's `next`). */
  usedTuples(summary: Record<string, number>): void {
    this.#nextTuple = summary.next ?? this.#nextTuple + 1_000_000;
  }

  /** perf's shares of CPU `cpu` while `work` runs, perf owned like the run's other children. */
  sampleCpu<T>(cpu: number, work: () => Promise<T> | T): Promise<{ result: T; cpu: FilterCpu }> {
    return sampleCpu(cpu, work, { dir: this.workDir, children: this.children });
  }

  /**
   * Starts `command args` in `ns` (on `cpu` if given); with `ready`, waits for it to print "ready".
   * @throws if it is not ready within 4 s.
   */
  async spawnIn(ns: string, command: string, args: string[], options: { ready?: boolean; cpu?: number } = {}): Promise<NsProcess> {
    const argv = options.cpu === undefined ? [command, ...args] : ['taskset', '-c', String(options.cpu), command, ...args];
    const child = spawn('ip', ['netns', 'exec', ns, ...argv], { stdio: ['ignore', 'pipe', 'inherit'] });
    this.children.add(child);
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    const stop = async (): Promise<string> => {
      child.kill('SIGTERM');
      await exited;
      this.children.delete(child);
      return out;
    };
    if (options.ready) {
      for (let i = 0; i < 200 && !out.includes('ready'); i++) await sleep(20);
      if (!out.includes('ready')) {
        await stop();
        throw new Error(`${args[0] ?? command} in ${ns} did not start`);
      }
    }
    return { child, stop };
  }

  /** Runs `main`; a throw is the failure `bench: STACK`. Then cleans up and prints the goals, the failures and the JSON line. */
  async main(report: Record<string, unknown>, main: () => Promise<void>): Promise<void> {
    try {
      await main();
    } catch (error) {
      this.failures.push(`bench: ${(error as Error).stack ?? String(error)}`);
    } finally {
      this.cleanUp();
    }
    const { goals, failures } = this;
    console.log('\ngoals');
    for (const g of goals) console.log(`    ${g.met === null ? 'n/a   ' : g.met ? 'met   ' : 'missed'}  ${g.goal}: ${g.figure}`);
    if (failures.length > 0) console.log(`failures:\n    ${failures.join('\n    ')}`);
    console.log(JSON.stringify({ ...report, goals, failures }));
    if (failures.some((f) => f.startsWith('bench:'))) process.exitCode = 1;
  }
}

/** tcp-churn's churn: from `prefix`.1 .. `prefix`.`sources` to `dst`:`port` (connection k to `dst` + k % `targets`, see tcp-churn.c). */
export interface ChurnTarget {
  prefix: string;
  sources: number;
  dst: string;
  port: number;
  /** How many addresses from `dst` on it goes round (tcp-churn's NDST); one when not given. */
  targets?: number;
}
const churnArgs = (t: ChurnTarget, seconds: number, parallel: number, firstTuple: number): string[] => [
  'churn',
  t.prefix,
  String(t.sources),
  t.dst,
  String(t.port),
  String(seconds),
  String(parallel),
  String(firstTuple),
  ...(t.targets === undefined ? [] : [String(t.targets)]),
];

/** New connections per CPU-second (measureChurn). */
export interface ChurnFigures {
  connections: number;
  failed: number;
  perSecond: number;
  /** Client, servers and ksoftirqd of the CPU: user + system. */
  cpuUsPerConnection: number;
  perCoreSecond: number;
  /** perf's split of the CPU over the churn. */
  cpu: FilterCpu;
}

/**
 * New connections per CPU-second: tcp-churn's client in `ns` pinned to `cpu` for `seconds` (16 at
 * once, fresh tuples), the CPU sampled by perf; then `stopServers` (servers pinned to the same
 * CPU) gives the servers' outputs. CPU = client + servers (their JSON lines) + that CPU's
 * ksoftirqd.
 */
export async function measureChurn(bench: BenchRun, o: { load: string; ns: string; cpu: number; seconds: number; target: ChurnTarget; stopServers: () => Promise<string[]> }): Promise<ChurnFigures> {
  const ksoftirqd = `ksoftirqd/${o.cpu}`;
  const kBefore = threadTicksByPid((c) => c === ksoftirqd);
  const { result: out, cpu } = await bench.sampleCpu(o.cpu, () => run('ip', 'netns', 'exec', o.ns, 'taskset', '-c', String(o.cpu), o.load, ...churnArgs(o.target, o.seconds, 16, bench.nextTuple)));
  const kAfter = threadTicksByPid((c) => c === ksoftirqd);
  const client = JSON.parse(out.trim().split('\n').pop() ?? '{}') as Record<string, number>;
  const served = (await o.stopServers()).map((text) => JSON.parse(text.split('\n').find((l) => l.startsWith('{')) ?? '{}') as Record<string, number>);
  bench.usedTuples(client);
  const connections = client.connections ?? 0;
  const serverUs = served.reduce((sum, s) => sum + (s.userUs ?? 0) + (s.sysUs ?? 0), 0);
  const cpuUs = (client.userUs ?? 0) + (client.sysUs ?? 0) + serverUs + (ticksBetween(kBefore, kAfter) * 1e6) / HZ;
  return { connections, failed: client.failed ?? 0, perSecond: connections / o.seconds, cpuUsPerConnection: cpuUs / connections, perCoreSecond: connections / (cpuUs / 1e6), cpu };
}

export interface FloodFigures {
  /** Packets `received` counted over the flood. */
  packets: number;
  pps: number;
  /** Softirq of the flooding CPU per packet received. */
  nsPerPacket: number;
  perCoreSecond: number;
  cpu: FilterCpu;
}

/**
 * An established flow's packets per softirq CPU-second: trafgen in `ns` out of `dev`, pinned to
 * `cpu`, floods one UDP flow (`frame`, 18 bytes of payload) for `seconds` (then `settleMs` more
 * inside perf's window); `received` counts the packets that arrived where they should.
 */
export async function measureFlood(
  bench: BenchRun,
  o: { ns: string; dev: string; cpu: number; seconds: number; frame: { mac: string; src: string; dst: string; sport: number; dport: number }; received: () => number; settleMs?: number },
): Promise<FloodFigures> {
  const { mac, src, dst, sport, dport } = o.frame;
  const config = join(bench.workDir, 'flood.cfg');
  writeFileSync(config, `{ eth(da=${mac}), ipv4(saddr=${src}, daddr=${dst}, ttl=64), udp(sp=${sport}, dp=${dport}), fill(0x41, 18) }\n`);
  const before = o.received();
  const softBefore = softirqJiffies(o.cpu);
  const { cpu } = await bench.sampleCpu(o.cpu, async () => {
    spawnSync('ip', ['netns', 'exec', o.ns, 'timeout', '-s', 'INT', String(o.seconds), 'taskset', '-c', String(o.cpu), 'trafgen', '-o', o.dev, '-i', config, '-P', '1', '--no-sock-mem', '-Q', '-C'], { stdio: 'ignore' });
    if (o.settleMs !== undefined) await sleep(o.settleMs);
  });
  const soft = (softirqJiffies(o.cpu) - softBefore) / HZ;
  const packets = o.received() - before;
  return { packets, pps: packets / o.seconds, nsPerPacket: (soft * 1e9) / packets, perCoreSecond: packets / soft, cpu };
}

export interface BrokenFigures {
  changes: number;
  seconds: number;
  /** tcp-churn persist's summary (connections, roundTrips, broken, errors, eofs, stalls, over200ms, maxMs). */
  persistent: Record<string, number>;
  /** tcp-churn churn's summary (connections, failed, next). */
  churn: Record<string, number>;
  /** Long-lived connections broken plus new connections failed. */
  broken: number;
}

/**
 * Broken connections across `changes` changes: in `ns`, `held` long-lived connections from
 * `client` to `echo` (64 bytes in turn, a stall over 2 s breaks one) and a churn of new
 * connections to `target` (4 at once), both for at least 60 s; `change(i)` makes change i; after
 * the last, `drainMs` before both stop.
 */
export async function measureBroken(
  bench: BenchRun,
  o: {
    load: string;
    ns: string;
    /** How a process is started in `ns` (the run's spawnIn unless a rig owns them). */
    start?: (ns: string, command: string, args: string[], options: { ready?: boolean }) => Promise<NsProcess>;
    client: string;
    echo: { dst: string; port: number };
    held: number;
    target: ChurnTarget;
    changes: number;
    change: (i: number) => Promise<void>;
    drainMs: number;
  },
): Promise<BrokenFigures> {
  const budget = Math.max(60, o.changes * 0.5);
  const start = o.start ?? ((ns, command, args, options) => bench.spawnIn(ns, command, args, options));
  const persistent = await start(o.ns, o.load, ['persist', o.client, o.echo.dst, String(o.echo.port), String(o.held), String(budget), '2000'], { ready: true });
  const churn = await start(o.ns, o.load, churnArgs(o.target, budget, 4, bench.nextTuple), {});
  const started = performance.now();
  for (let i = 0; i < o.changes; i++) await o.change(i);
  const seconds = (performance.now() - started) / 1000;
  await sleep(o.drainMs);
  const [pOut, cOut] = await Promise.all([persistent.stop(), churn.stop()]);
  const p = lastJson(pOut);
  const c = lastJson(cOut);
  bench.usedTuples(c);
  return { changes: o.changes, seconds, persistent: p, churn: c, broken: (p.broken ?? NaN) + (c.failed ?? NaN) };
}
