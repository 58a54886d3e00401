import { mkdirSync, mkdtempSync, rmdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Supervised } from './supervisor.js';
import { NetnsProcesses, TRAFFIC, type ReachReport, type RigProcess } from './netns-process.js';
import { Topology, sh } from './topology.js';

export const AGENT_MAIN = fileURLToPath(new URL('../../services/node-agent/dist/main.js', import.meta.url));
/** AGENT_MAIN and all it imports in one file (scripts/bundle-agent.mjs): what the launcher runs. */
export const AGENT_BUNDLE = fileURLToPath(new URL('../../services/node-agent/dist/bundle/agent.mjs', import.meta.url));
/** The agent's launcher (node with its memory settings, then AGENT_BUNDLE): how nodes run the agent. */
export const AGENT_LAUNCHER = fileURLToPath(new URL('../../services/node-agent/bin/edgeplane-agent', import.meta.url));
export const CONTROLLER_MAIN = fileURLToPath(new URL('../../services/controller/dist/main.js', import.meta.url));

/**
 * A test fleet's network: an "internet" namespace (traffic sources), and per node a namespace
 * with three links:
 *   mgmt  - to the root namespace, where NATS and the controller listen (never filtered),
 *   up0   - uplink to the internet namespace (XDP),
 *   wl0   - workload link to a namespace of its own (TC).
 * Addresses: internet side of node i's uplink 172.31.i.1/24 (plus .3 as a second source),
 * node side 172.31.i.2; workload 172.30.i.1 (node) / 172.30.i.2 (workload); management a /30
 * per node from a 10.x.y.0/24 chosen per topology, so concurrent test files never collide.
 */
export class FleetNetwork {
  readonly topo = new Topology();
  readonly inet: string;
  readonly nodes: FleetNode[] = [];
  readonly pinBase: string;
  readonly stateBase: string;
  /** Servers and clients the tests run in the namespaces (killed by remove()). */
  readonly processes = new NetnsProcesses();
  #mgmtPrefix: string;

  constructor() {
    this.inet = this.topo.namespace('inet');
    this.#mgmtPrefix = managementPrefix(this.topo);
    this.pinBase = join(PIN_PARENT, this.topo.id);
    this.stateBase = mkdtempSync(join(tmpdir(), `ep-fleet-${this.topo.id}-`));
  }

  /** Adds node `i` (1..60) with its namespaces and links. */
  addNode(i: number, name: string): FleetNode {
    const ns = this.topo.namespace(`n${i}`);
    const wl = this.topo.namespace(`w${i}`);
    const { mgmtRoot, hostIp, nodeIp } = managementLink(this.topo, this.#mgmtPrefix, ns, i);
    const inetIf = this.topo.name(`u${i}`);
    this.topo.veth({ ns: this.inet, name: inetIf, address: `172.31.${i}.1/24` }, { ns, name: 'up0', address: `172.31.${i}.2/24` });
    this.topo.exec(this.inet, 'ip', ['addr', 'add', `172.31.${i}.3/24`, 'dev', inetIf]);
    this.topo.veth({ ns, name: 'wl0', address: `172.30.${i}.1/24` }, { ns: wl, name: 'eth0', address: `172.30.${i}.2/24` });
    const node = new FleetNode(this, { index: i, name, ns, workloadNs: wl, mgmtRoot, hostIp, nodeIp, pinRoot: join(this.pinBase, name), stateDir: join(this.stateBase, name) });
    this.nodes.push(node);
    return node;
  }

  /** Stops agents, removes namespaces and links, unmounts pin roots. Never throws. */
  async remove(): Promise<void> {
    for (const n of this.nodes) await n.agent?.stop(3000).catch(() => undefined);
    this.processes.killAll();
    this.topo.remove();
    for (const n of this.nodes) n.unmountPins();
    removePinBase(this.pinBase);
    rmSync(this.stateBase, { recursive: true, force: true });
  }
}

/** Where an agent finds the control plane. */
export interface ControlPlane {
  natsPort: number;
  grpcPort: number;
  publicKeyB64: string;
  /**
   * The agent's trust flags for node `name`: a fresh join token carrying `labels` (bound at
   * enrollment) and the CA fingerprint (the agent uses its stored identity once enrolled).
   * Unset: `--insecure` (a control plane on loopback).
   */
  agentTrustArgs?(name: string, labels: Record<string, string>): Promise<string[]>;
}

/** One node of a {@link FleetNetwork}. */
export class FleetNode {
  readonly index: number;
  readonly name: string;
  readonly ns: string;
  readonly workloadNs: string;
  readonly mgmtRoot: string;
  readonly hostIp: string;
  readonly nodeIp: string;
  readonly pinRoot: string;
  readonly stateDir: string;
  agent: Supervised | undefined;
  #net: FleetNetwork;

  constructor(net: FleetNetwork, o: { index: number; name: string; ns: string; workloadNs: string; mgmtRoot: string; hostIp: string; nodeIp: string; pinRoot: string; stateDir: string }) {
    this.#net = net;
    this.index = o.index;
    this.name = o.name;
    this.ns = o.ns;
    this.workloadNs = o.workloadNs;
    this.mgmtRoot = o.mgmtRoot;
    this.hostIp = o.hostIp;
    this.nodeIp = o.nodeIp;
    this.pinRoot = o.pinRoot;
    this.stateDir = o.stateDir;
    mkdirSync(this.stateDir, { recursive: true });
  }

  /** The node's uplink address, as seen from the internet namespace. */
  get uplinkIp(): string {
    return `172.31.${this.index}.2`;
  }

  /** The two source addresses the internet namespace has on this node's link. */
  get sources(): [string, string] {
    return [`172.31.${this.index}.1`, `172.31.${this.index}.3`];
  }

  /** Starts (or restarts) the agent in the node's network namespace. */
  async startAgent(cp: ControlPlane, labels: Record<string, string>, extra: string[] = []): Promise<Supervised> {
    this.agent = await startNodeAgent({ name: this.name, ns: this.ns, hostIp: this.hostIp, pinRoot: this.pinRoot, stateDir: this.stateDir, interfaces: ['up0=uplink', 'wl0=workload'] }, cp, labels, extra);
    return this.agent;
  }

  /** Starts a TCP server on the node (every address, `port`) that greets each connection with the node's name. */
  async serveTcp(port: number): Promise<RigProcess> {
    return this.#net.processes.spawn(this.ns, 'python3', [TRAFFIC, 'serve', this.name, String(port)], { ready: true });
  }

  /** `count` new TCP connections from the internet namespace to the node's uplink address, `port`: how many were answered, how many failed. */
  connectTcp(port: number, count: number): Promise<ReachReport> {
    return this.#net.processes.report<ReachReport>(this.#net.inet, ['connect', this.uplinkIp, String(port), String(count)]);
  }

  /** Cuts (or restores) the node's management link: NATS and controller unreachable. */
  mgmt(state: 'up' | 'down'): void {
    this.#net.topo.link(this.ns, 'mgmt', state);
  }

  /** Deletes the uplink veth pair and creates it again (new ifindex, nothing attached). */
  recreateUplink(): void {
    const inetIf = this.#net.topo.name(`u${this.index}`);
    sh('ip', ['-n', this.#net.inet, 'link', 'del', inetIf]);
    this.#net.topo.veth({ ns: this.#net.inet, name: inetIf, address: `172.31.${this.index}.1/24` }, { ns: this.ns, name: 'up0', address: `172.31.${this.index}.2/24` });
    this.#net.topo.exec(this.#net.inet, 'ip', ['addr', 'add', `172.31.${this.index}.3/24`, 'dev', inetIf]);
  }

  /** The XDP program id on the uplink (0 if none). */
  xdpProgramId(): number {
    const out = sh('ip', ['-n', this.ns, '-j', '-d', 'link', 'show', 'up0']);
    const j = JSON.parse(out) as { xdp?: { prog?: { id: number } } }[];
    return j[0]?.xdp?.prog?.id ?? 0;
  }

  /** Replies out of `count` pings from the internet side, from source 0 or 1. */
  ping(source: 0 | 1, count = 3): Promise<number> {
    return this.#net.topo.ping(this.#net.inet, this.uplinkIp, { count, source: this.sources[source], intervalS: 0.1, waitS: 1 });
  }

  /** What a reboot does to the datapath: programs detached (XDP, tcx, clsact), pins gone. */
  wipeDatapath(): void {
    sh('ip', ['netns', 'exec', this.ns, process.execPath, '--import=tsx', fileURLToPath(new URL('./wipe-hooks.ts', import.meta.url)), 'up0', 'wl0']);
    this.unmountPins();
    rmSync(this.pinRoot, { recursive: true, force: true });
  }

  unmountPins(): void {
    unmountPins(this.pinRoot);
  }
}

/** Where and how one agent process runs: its node namespace, how it reaches the control plane, its own directories. */
export interface NodeAgentPlacement {
  name: string;
  ns: string;
  /** The root namespace's end of the node's management link: where NATS and the controller are reached. */
  hostIp: string;
  pinRoot: string;
  stateDir: string;
  /** `--interface` values: `dev=role`. */
  interfaces: string[];
}

/**
 * Starts the real agent (services/node-agent/dist/main.js) in `p.ns`, enrolled with `cp`'s trust
 * flags, with 1 s heartbeats, counters and interface checks; resolves at its ready event. The
 * caller owns the process (stop or kill it) and the pin root (unmountPins).
 */
/**
 * A bound for the real agent's "ready" (not a measurement): only how long a failure takes to
 * surface. The agent loads its datapath object (under a second of verification, bpf/README.md
 * "Verifier cost"), enrolls and connects; on the shared 2-core machine under a full test run
 * that has taken over a minute.
 */
const AGENT_READY_MS = 180_000;

export async function startNodeAgent(p: NodeAgentPlacement, cp: ControlPlane, labels: Record<string, string>, extra: string[] = []): Promise<Supervised> {
  mkdirSync(p.stateDir, { recursive: true });
  const args = [
    '--node-name', p.name,
    '--labels', Object.entries(labels).map(([k, v]) => `${k}=${v}`).join(','),
    '--controller', `${p.hostIp}:${cp.grpcPort}`,
    '--nats', `nats://${p.hostIp}:${cp.natsPort}`,
    ...p.interfaces.flatMap((i) => ['--interface', i]),
    '--pin-root', p.pinRoot,
    '--state-dir', p.stateDir,
    '--trusted-key', cp.publicKeyB64,
    ...(cp.agentTrustArgs ? await cp.agentTrustArgs(p.name, labels) : ['--insecure']),
    '--heartbeat-interval', '1',
    '--counter-interval', '1',
    '--interface-check', '1',
    ...extra,
  ];
  // nsenter --net keeps the host's mount namespace, so the agent's bpffs (and its pins)
  // outlive the agent; `ip netns exec` would mount a private one that dies with it. The agent
  // runs through its launcher, as deployed (this node binary); nsenter and the launcher exec,
  // so the supervised pid is node's.
  return Supervised.start(`agent-${p.name}`, { command: 'nsenter', args: [`--net=/run/netns/${p.ns}`, '--', AGENT_LAUNCHER, ...args], env: { NODE: process.execPath }, readyEvent: 'ready', readyTimeoutMs: AGENT_READY_MS });
}

/** Unmounts an agent's pin root (its bpffs), if mounted. Never throws. */
export function unmountPins(pinRoot: string): void {
  try {
    sh('umount', [pinRoot]);
  } catch {
    // not mounted
  }
}

/** Where the rigs put their agents' pin roots: a directory per rig under it. */
export const PIN_PARENT = '/run/edgeplane-test';

/**
 * Removes a rig's pin directory (its pin roots unmounted first), and the parent too once no other
 * rig has one there. Never throws. rmdir fails on a directory that is not empty, and the rigs and
 * the agent create their directories recursively (a parent removed between two of their steps is
 * created again), so a rig starting beside this one keeps its own.
 */
export function removePinBase(pinBase: string): void {
  rmSync(pinBase, { recursive: true, force: true });
  try {
    rmdirSync(PIN_PARENT);
  } catch {
    // another rig's pins are there, or it is gone already
  }
}

/** The /24 a topology's management links take /30s from: chosen by its id, so concurrent test files never collide. */
export function managementPrefix(topo: Topology): string {
  const b = Buffer.from(topo.id, 'hex');
  return `10.${100 + (b[0]! % 100)}.${b[1]!}`;
}

/**
 * Links node namespace `ns` (the `i`th, 1..60) to the root namespace: `mgmt` in the node with
 * `nodeIp`/30, the root end with `hostIp`/30 (where NATS and the controller listen). Removed with
 * the topology.
 */
export function managementLink(topo: Topology, prefix: string, ns: string, i: number): { mgmtRoot: string; hostIp: string; nodeIp: string } {
  const mgmtRoot = topo.name(`m${i}r`);
  const hostIp = `${prefix}.${4 * i + 1}`;
  const nodeIp = `${prefix}.${4 * i + 2}`;
  topo.veth({ name: mgmtRoot, address: `${hostIp}/30` }, { ns, name: 'mgmt', address: `${nodeIp}/30` });
  return { mgmtRoot, hostIp, nodeIp };
}
