// The load-balancing rig (issue 14), shared by the traffic tests and bench/lb.ts: a client
// namespace ("the internet"), a node namespace with an uplink veth to it and one veth per backend
// namespace, and N backend namespaces. IPv4 and IPv6 everywhere; the client routes the VIPs to the
// node, which owns none of them (a load balancer in the node DNATs before the stack routes); the
// node forwards. Transmit checksum offload is off on every veth end, so every packet leaves with
// a full checksum and a receiver really drops one that a NAT got wrong.
//
// Addresses (nothing here is reachable from outside the namespaces):
//   client  10.97.0.1/24, fd00:97::1/64 on its uplink; `clientSources` more /32s 10.97.1.1...
//   node    10.97.0.254/24, fd00:97::fe/64 on its uplink; 10.98.255.254/32, fd00:98::fffe/128 on
//           every backend link (one gateway address, as Calico does), a host route per backend
//   backend i  10.98.0.(i+1)/32, fd00:98::(i+1)/128, default route via the node's gateway address
//   VIP k   10.96.0.0/16 + k + 1, fd00:96::(k + 1): routed by the client to the node
//
// With `nodes: 2`, a second node namespace is built like the first (the same addresses on its
// uplink and backend links), with its own uplink veth to the client (`c-up2`, no address of its
// own but the client's IPv6 one) and its own veth to every backend (`b-eth2` in the backend, which holds its address on
// both links). via(k) moves the client's VIP routes and every backend's default route to node k,
// so the same client tuple can be sent through either node and its replies come back the same
// way. startAgent() gives a node a management link to the root namespace and runs the real agent
// there (uplink `n-up`, the backend links as workload interfaces).
//
// Traffic runs through test/support/lb-traffic.py (servers that answer with their name, clients
// that say which backend each connection reached, holders of long-lived connections). Every
// process the rig starts and every namespace it makes is removed by remove(), which never throws.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NetnsProcesses, TRAFFIC, type ReachReport, type RigProcess } from './netns-process.js';

export type { ReachReport } from './netns-process.js';
import { managementLink, managementPrefix, PIN_PARENT, removePinBase, startNodeAgent, unmountPins, type ControlPlane } from './fleet.js';
import type { Supervised } from './supervisor.js';
import { sh, Topology } from './topology.js';

/** What LbRig.create builds. */
export interface LbRigOptions {
  /** Backend namespaces, 1..250. */
  backends: number;
  /** More IPv4 source addresses on the client (10.97.1.1 ...), for loads that need many tuples. Default 0, at most 250. */
  clientSources?: number;
  /** Node namespaces, each linked to the client and to every backend (see the header). Default 1. */
  nodes?: 1 | 2;
}

/** One backend namespace. */
export interface RigBackend {
  readonly index: number;
  /** `b<index>`: what its server answers with. */
  readonly name: string;
  readonly ns: string;
  readonly v4: string;
  readonly v6: string;
  /** The node's end of this backend's veth (the same name in every node namespace). */
  readonly nodeLink: string;
}

/** One connection of flows(): the client's source port and the backend it reached (or why not). */
export interface FlowReport {
  sport: number;
  backend?: string;
  failure?: string;
}

/** Where the connections of a connect() went. */

/** One long-lived connection that broke. */
export interface BrokenConnection {
  index: number;
  backend: string;
  /** reset, eof, stall (no echo within stallMs), or the error's name. */
  reason: string;
}

/** What bulk() saw: the backend reached, the bytes sent and echoed back, the socket's path MTU. */
export interface BulkReport {
  backend?: string;
  sent: number;
  echoed: number;
  /** IP_MTU / IPV6_MTU of the connected socket at the end: the path MTU its stack learned. */
  pathMtu?: number;
  /** stall (not all echoed within the bound), reset, eof, ... */
  failure?: string;
}

/** What a holder saw from start to stop. */
export interface HoldReport {
  connections: number;
  backends: Record<string, number>;
  rounds: number;
  roundTrips: number;
  broken: BrokenConnection[];
}

/** Long-lived connections echoing periodically. stop() ends them and returns the report. */
export interface Holder {
  /** How many connections each backend holds, as they were opened. */
  readonly backends: Record<string, number>;
  stop(): Promise<HoldReport>;
}

/** A process the rig started in a namespace; killed by the rig's remove() if still running. */


const v4 = (n: number): string => `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
const VIP4_BASE = (10 << 24) + (96 << 16);

/**
 * The rig: namespaces, veths, addresses, routes, and the processes started in them. Built by
 * create(); everything it made goes with remove() (for test.after.always and a bench's finally).
 */
export class LbRig {
  static readonly CLIENT_V4 = '10.97.0.1';
  static readonly CLIENT_V6 = 'fd00:97::1';
  static readonly NODE_V4 = '10.97.0.254';
  static readonly NODE_V6 = 'fd00:97::fe';
  static readonly GATEWAY_V4 = '10.98.255.254';
  static readonly GATEWAY_V6 = 'fd00:98::fffe';
  /** Prefix of the client's extra sources: `${SOURCE_PREFIX}.1` ... (three octets, as tcp-churn takes it). */
  static readonly SOURCE_PREFIX = '10.97.1';
  /** The VIP ranges the client routes to the node. */
  static readonly VIP_RANGE_V4 = '10.96.0.0/16';
  static readonly VIP_RANGE_V6 = 'fd00:96::/64';

  readonly topology: Topology;
  /** The client namespace ("the internet"). */
  readonly client: string;
  /** The node namespace (where a load balancer runs): nodes[0]. */
  readonly node: string;
  /** Every node namespace; the client's VIP routes point at nodes[0] until via(). */
  readonly nodes: readonly string[];
  /** The uplink veth: its client end and its node end (where edgeplane's XDP goes). */
  readonly uplink: { readonly client: string; readonly node: string };
  readonly backends: readonly RigBackend[];
  #processes = new NetnsProcesses();
  #servers = new Map<number, RigProcess>();
  #serverPorts: number[] = [];
  #agents = new Map<number, Supervised>();
  #hostIps = new Map<number, string>();
  #pinBase: string;
  #stateBase: string | undefined;

  private constructor(topology: Topology, client: string, nodes: string[], backends: RigBackend[]) {
    this.topology = topology;
    this.client = client;
    this.node = nodes[0]!;
    this.nodes = nodes;
    this.#pinBase = join(PIN_PARENT, `lb-${topology.id}`);
    this.uplink = { client: 'c-up', node: 'n-up' };
    this.backends = backends;
  }

  /**
   * Builds the rig. @throws Error (from `ip`, `sysctl`, `ethtool`) naming the command that failed;
   * whatever was made before is removed first.
   */
  static create(options: LbRigOptions): LbRig {
    const count = options.backends;
    const sources = options.clientSources ?? 0;
    const nodeCount = options.nodes ?? 1;
    if (nodeCount !== 1 && nodeCount !== 2) throw new RangeError(`lb rig: nodes=${String(nodeCount)}, want 1 or 2`);
    if (!Number.isInteger(count) || count < 1 || count > 250) throw new RangeError(`lb rig: backends=${count}, want 1..250`);
    if (!Number.isInteger(sources) || sources < 0 || sources > 250) throw new RangeError(`lb rig: clientSources=${sources}, want 0..250`);
    const topology = new Topology();
    try {
      const client = topology.namespace('lbc');
      const nodes = [topology.namespace('lbn'), ...(nodeCount === 2 ? [topology.namespace('lbn2')] : [])];
      const backends: RigBackend[] = [];
      for (let i = 0; i < count; i++) {
        backends.push({ index: i, name: `b${i}`, ns: topology.namespace(`lbb${i}`), v4: v4((10 << 24) + (98 << 16) + i + 1), v6: `fd00:98::${(i + 1).toString(16)}`, nodeLink: `n-b${i}` });
      }
      const rig = new LbRig(topology, client, nodes, backends);
      rig.#build(sources);
      return rig;
    } catch (error) {
      topology.remove();
      throw error;
    }
  }

  #build(sources: number): void {
    const t = this.topology;
    t.veth(
      { ns: this.client, name: this.uplink.client, ipv6: true, addresses: [`${LbRig.CLIENT_V4}/24`, `${LbRig.CLIENT_V6}/64`] },
      { ns: this.node, name: this.uplink.node, ipv6: true, addresses: [`${LbRig.NODE_V4}/24`, `${LbRig.NODE_V6}/64`] },
    );
    for (let k = 1; k < this.nodes.length; k++) {
      // The client's IPv6 address on this link too: a node answers neighbour solicitations only
      // for addresses of the link they came in on.
      t.veth({ ns: this.client, name: this.#clientUplink(k), ipv6: true, addresses: [`${LbRig.CLIENT_V6}/64`] }, { ns: this.nodes[k]!, name: this.uplink.node, ipv6: true, addresses: [`${LbRig.NODE_V4}/24`, `${LbRig.NODE_V6}/64`] });
    }
    if (sources > 0) {
      const batch = Array.from({ length: sources }, (_, i) => `addr add ${LbRig.SOURCE_PREFIX}.${i + 1}/32 dev ${this.uplink.client}`).join('\n');
      execFileSync('ip', ['-n', this.client, '-batch', '-'], { input: `${batch}\n`, stdio: ['pipe', 'ignore', 'pipe'] });
    }
    for (const route of [`${LbRig.VIP_RANGE_V4} via ${LbRig.NODE_V4}`, `10.98.0.0/16 via ${LbRig.NODE_V4}`]) sh('ip', ['-n', this.client, 'route', 'add', ...route.split(' ')]);
    for (const route of [`${LbRig.VIP_RANGE_V6} via ${LbRig.NODE_V6}`, `fd00:98::/64 via ${LbRig.NODE_V6}`]) sh('ip', ['-n', this.client, '-6', 'route', 'add', ...route.split(' ')]);
    // Each node forwards, answers the client's extra sources on the uplink, and checks no source path.
    for (const [k, node] of this.nodes.entries()) {
      t.exec(node, 'sysctl', ['-qw', 'net.ipv4.ip_forward=1', 'net.ipv6.conf.all.forwarding=1', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0']);
      sh('ip', ['-n', node, 'route', 'add', `${LbRig.SOURCE_PREFIX}.0/24`, 'dev', this.uplink.node]);
      for (const b of this.backends) {
        const link = this.#backendLink(k);
        t.veth({ ns: node, name: b.nodeLink, ipv6: true, addresses: [`${LbRig.GATEWAY_V4}/32`, `${LbRig.GATEWAY_V6}/128`] }, { ns: b.ns, name: link, ipv6: true, addresses: [`${b.v4}/32`, `${b.v6}/128`] });
        sh('ip', ['-n', node, 'route', 'add', `${b.v4}/32`, 'dev', b.nodeLink]);
        sh('ip', ['-n', node, '-6', 'route', 'add', `${b.v6}/128`, 'dev', b.nodeLink]);
        if (k > 0) continue;
        sh('ip', ['-n', b.ns, 'route', 'add', LbRig.GATEWAY_V4, 'dev', link]);
        sh('ip', ['-n', b.ns, 'route', 'add', 'default', 'via', LbRig.GATEWAY_V4, 'dev', link]);
        sh('ip', ['-n', b.ns, '-6', 'route', 'add', LbRig.GATEWAY_V6, 'dev', link]);
        sh('ip', ['-n', b.ns, '-6', 'route', 'add', 'default', 'via', LbRig.GATEWAY_V6, 'dev', link]);
      }
    }
    // With two nodes a backend and the client take packets on a link their route does not
    // point at (until via() moves it): no source path check there either.
    if (this.nodes.length > 1) {
      for (const ns of [this.client, ...this.backends.map((b) => b.ns)]) t.exec(ns, 'sysctl', ['-qw', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0']);
    }
    // Every packet leaves a veth with its checksum complete (no CHECKSUM_PARTIAL), so receivers verify it.
    for (const [ns, dev] of this.veths()) t.exec(ns, 'ethtool', ['-K', dev, 'tx', 'off']);
  }

  /** Every veth end of the rig: [namespace, device]. */
  veths(): [string, string][] {
    return this.nodes.flatMap((node, k): [string, string][] => [
      [this.client, this.#clientUplink(k)],
      [node, this.uplink.node],
      ...this.backends.flatMap((b): [string, string][] => [[node, b.nodeLink], [b.ns, this.#backendLink(k)]]),
    ]);
  }

  /** The client's end of node k's uplink: c-up, c-up2. */
  #clientUplink(k: number): string {
    return k === 0 ? this.uplink.client : `${this.uplink.client}${k + 1}`;
  }

  /** A backend's end of its link to node k: b-eth, b-eth2. */
  #backendLink(k: number): string {
    return k === 0 ? 'b-eth' : `b-eth${k + 1}`;
  }

  /**
   * Routes the client's VIPs and every backend's replies through node k (0-based): the next
   * connection of any tuple goes through that node's load balancer. @throws Error from `ip`.
   */
  via(k: number): void {
    if (this.nodes[k] === undefined) throw new RangeError(`lb rig: no node ${k}`);
    const up = this.#clientUplink(k);
    // The gateways have the same addresses on every node; `onlink` names the link to reach them by.
    for (const range of [LbRig.VIP_RANGE_V4, '10.98.0.0/16']) sh('ip', ['-n', this.client, 'route', 'replace', range, 'via', LbRig.NODE_V4, 'dev', up, 'onlink']);
    for (const range of [LbRig.VIP_RANGE_V6, 'fd00:98::/64']) sh('ip', ['-n', this.client, '-6', 'route', 'replace', range, 'via', LbRig.NODE_V6, 'dev', up]);
    const link = this.#backendLink(k);
    for (const b of this.backends) {
      sh('ip', ['-n', b.ns, 'route', 'replace', LbRig.GATEWAY_V4, 'dev', link]);
      sh('ip', ['-n', b.ns, 'route', 'replace', 'default', 'via', LbRig.GATEWAY_V4, 'dev', link, 'onlink']);
      sh('ip', ['-n', b.ns, '-6', 'route', 'replace', LbRig.GATEWAY_V6, 'dev', link]);
      sh('ip', ['-n', b.ns, '-6', 'route', 'replace', 'default', 'via', LbRig.GATEWAY_V6, 'dev', link, 'onlink']);
    }
  }

  /**
   * Starts the real agent in node k's namespace (k 0-based), named `name`: a management link to
   * the root namespace first (once per node), where `cp` listens; `--interface n-up=uplink` and
   * every backend link as a workload interface; its own pin root and state directory. Resolves
   * at its ready event. The rig owns the process: remove() kills it and unmounts its pins.
   */
  async startAgent(k: number, name: string, cp: ControlPlane, labels: Record<string, string>, extra: string[] = []): Promise<Supervised> {
    const ns = this.nodes[k];
    if (ns === undefined) throw new RangeError(`lb rig: no node ${k}`);
    if (this.#agents.has(k)) throw new Error(`lb rig: node ${k} runs an agent already`);
    let hostIp = this.#hostIps.get(k);
    if (hostIp === undefined) {
      hostIp = managementLink(this.topology, managementPrefix(this.topology), ns, k + 1).hostIp;
      this.#hostIps.set(k, hostIp);
    }
    this.#stateBase ??= mkdtempSync(join(tmpdir(), `ep-lb-${this.topology.id}-`));
    const interfaces = [`${this.uplink.node}=uplink`, ...this.backends.map((b) => `${b.nodeLink}=workload`)];
    const agent = await startNodeAgent({ name, ns, hostIp, pinRoot: this.#pinRoot(k), stateDir: join(this.#stateBase, `node${k}`), interfaces }, cp, labels, extra);
    this.#agents.set(k, agent);
    return agent;
  }

  #pinRoot(k: number): string {
    return join(this.#pinBase, `node${k}`);
  }

  /** The output of every agent the rig started, for a failure's message. */
  agentOutput(): string {
    return [...this.#agents.values()].map((a) => a.output).join('\n');
  }

  /** VIP k (0-based): 10.96.0.0/16 + k + 1, or fd00:96::(k + 1). */
  static vip(k: number, family: 4 | 6 = 4): string {
    if (!Number.isInteger(k) || k < 0 || k >= 65_534) throw new RangeError(`lb rig: vip ${k}, want 0..65533`);
    return family === 4 ? v4(VIP4_BASE + k + 1) : `fd00:96::${(k + 1).toString(16)}`;
  }

  /** Runs a command in a namespace; stdout. @throws Error with its stderr. */
  exec(ns: string, command: string, args: string[]): string {
    return this.topology.exec(ns, command, args);
  }

  /**
   * Starts `command args` in `ns`, owned by the rig. With `ready`, resolves once it printed a line
   * starting with "ready". @throws Error if it exits or stays silent (READY_MS) first.
   */
  spawn(ns: string, command: string, args: string[], options: { ready?: boolean; cpu?: number } = {}): Promise<RigProcess> {
    return this.#processes.spawn(ns, command, args, options);
  }


  /** Starts every backend's identity server (TCP and UDP on each of `ports`, IPv4 and IPv6). */
  async startBackends(ports: number[]): Promise<void> {
    this.#serverPorts = [...ports];
    await Promise.all(this.backends.map((b) => this.restartBackend(b.index)));
  }

  /** Kills backend i's server (SIGKILL: its connections are reset by the kernel). Idempotent. */
  async killBackend(i: number): Promise<void> {
    const server = this.#servers.get(i);
    this.#servers.delete(i);
    await server?.kill();
  }

  /** Starts backend i's server again (killing it first if it runs). */
  async restartBackend(i: number): Promise<void> {
    const b = this.backends[i];
    if (b === undefined) throw new RangeError(`lb rig: no backend ${i}`);
    if (this.#serverPorts.length === 0) throw new Error('lb rig: startBackends() first');
    await this.killBackend(i);
    this.#servers.set(i, await this.spawn(b.ns, 'python3', [TRAFFIC, 'serve', b.name, ...this.#serverPorts.map(String)], { ready: true }));
  }

  /** `count` new connections (TCP) or datagrams from new sockets (UDP) from the client to host:port. */
  async connect(host: string, port: number, count: number, protocol: 'tcp' | 'udp' = 'tcp'): Promise<ReachReport> {
    return this.#processes.report<ReachReport>(this.client, [protocol === 'tcp' ? 'connect' : 'udp', host, String(port), String(count)]);
  }

  /**
   * `count` TCP connections from the client to host:port, from source ports firstSport,
   * firstSport + 1, ... (0: ports the kernel picks), each closed with a reset: which backend each
   * source port reached. @throws Error if the client printed no report.
   */
  async flows(host: string, port: number, count: number, firstSport = 0): Promise<FlowReport[]> {
    return (await this.#processes.report<{ flows: FlowReport[] }>(this.client, ['flows', host, String(port), String(count), String(firstSport)])).flows;
  }

  /**
   * One TCP connection from the client to host:port that sends `bytes` in full-sized segments and
   * reads them echoed, giving up after `boundMs` (a bound for a failure to surface, not a
   * measurement). @throws Error if the client printed no report.
   */
  async bulk(host: string, port: number, bytes: number, boundMs: number): Promise<BulkReport> {
    return this.#processes.report<BulkReport>(this.client, ['bulk', host, String(port), String(bytes), String(boundMs)]);
  }

  /** Kills the agents startAgent() started and waits for them to exit (remove() does it too, without waiting). */
  async stopAgents(): Promise<void> {
    await Promise.all([...this.#agents.values()].map((a) => a.kill().catch(() => undefined)));
  }

  /** Opens `count` long-lived connections from the client to host:port that echo every intervalMs. */
  async hold(host: string, port: number, count: number, options: { intervalMs?: number; stallMs?: number } = {}): Promise<Holder> {
    const p = await this.spawn(this.client, 'python3', [TRAFFIC, 'hold', host, String(port), String(count), String(options.intervalMs ?? 200), String(options.stallMs ?? 2_000)], { ready: true });
    const readyLine = /^ready (.*)$/m.exec(p.output())?.[1] ?? '{}';
    const backends = (JSON.parse(readyLine) as { backends?: Record<string, number> }).backends ?? {};
    return {
      backends,
      stop: async () => {
        const out = await p.stop();
        const line = out.trim().split('\n').pop() ?? '';
        try {
          return JSON.parse(line) as HoldReport;
        } catch {
          throw new Error(`lb rig: hold ${host}:${port} printed ${JSON.stringify(line)}`);
        }
      },
    };
  }

  /** Sends one UDP datagram with a wrong checksum from the client to dst:port (raw socket). */
  sendBadChecksum(dst: string, port: number): void {
    this.exec(this.client, 'python3', [TRAFFIC, 'badsum', dst, String(port)]);
  }

  /** A namespace's IPv4 UDP counters (/proc/net/snmp): InDatagrams, NoPorts, InErrors, InCsumErrors, ... */
  udpCounters(ns: string): Record<string, number> {
    const lines = this.exec(ns, 'cat', ['/proc/net/snmp']).split('\n').filter((l) => l.startsWith('Udp:'));
    const names = (lines[0] ?? '').split(/\s+/).slice(1);
    const values = (lines[1] ?? '').split(/\s+/).slice(1).map(Number);
    return Object.fromEntries(names.map((n, i) => [n, values[i] ?? NaN]));
  }

  /** Kills every process the rig started and deletes every namespace. Idempotent; never throws. */
  remove(): void {
    this.#processes.killAll();
    this.#servers.clear();
    // The agents (SIGKILL: their pins stay mounted until the unmount below, which takes them).
    for (const agent of this.#agents.values()) void agent.kill().catch(() => undefined);
    this.topology.remove();
    for (const k of this.#agents.keys()) unmountPins(this.#pinRoot(k));
    this.#agents.clear();
    removePinBase(this.#pinBase);
    if (this.#stateBase !== undefined) rmSync(this.#stateBase, { recursive: true, force: true });
  }
}
