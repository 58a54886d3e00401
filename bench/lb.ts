// L4 load balancing (issue 14): edgeplane beside IPVS (ipvsadm, NAT/masquerade mode, kube-proxy's
// IPVS mode) and iptables DNAT (kube-proxy's iptables mode: statistic --mode random chains per
// service), side by side in one run, on the load-balancing rig (test/support/lb-rig.ts): a client
// namespace, a node namespace that fronts the VIPs, 12 backend namespaces. Each contender has a
// rig of its own, so one's hooks (netfilter's conntrack and NAT stay registered in a namespace
// once used) never tax another; contenders alternate within each rep.
//
// At 10 / 1,000 / 10,000 services x 10 backends (TCP VIP k:80 -> the 10 backends' port 8080, and
// one of them the UDP service for (b); 10,000 is the most the intent holds):
//   (a) new TCP connections per core through the VIPs: bench/tcp-churn.c opens connections from
//       the client to VIP k (k = 0, 1, ... round the TCP services), each from a tuple never used
//       before; client, the 10 backend servers (accept, close) and ksoftirqd are pinned to one
//       CPU, so the whole path (both TCP stacks, veth, the node's forwarding, the load balancer)
//       is that CPU's work: connections per CPU-second. `none` connects to the backends' own
//       addresses through the node with no load balancer; `LB us/conn` is the difference.
//   (b) established-flow packets per second per core: trafgen floods one UDP flow to the UDP
//       service's VIP (the first packet makes the flow, the rest are established) and the node
//       forwards it to a backend; the figure is the packets the backends received per second of
//       softirq on the flooding CPU (veth receives in softirq on the sending CPU).
//   (c) broken connections across 100 backend changes (10 services, with one echo service
//       beside each): long-lived connections through VIP 0 echo 64 bytes in turn while the bench
//       adds a spare backend, drains the oldest (weight 0), then removes it, in turn, 100 changes
//       to every service; new connections run meanwhile. Broken = a long-lived connection that
//       errors, sees EOF or waits over 2 s for its echo, plus new connections that fail.
//
// edgeplane: an EbpfDatapath on the node's uplink (edge_xdp, edge_tc_egress), services compiled
// with compileServices and applied with apply(ruleSet, lb). `edgeplane-tc` is the same datapath
// (one object, one set of maps) with the policy program at TC ingress, as `--xdp-mode tc` runs it:
// on veth, native XDP copies every skb into an XDP frame first (a NIC does not), and the tc
// contender shows the load balancer's cost without that copy. A refusal at apply prints as that
// contender's row, not a figure. A peer the kernel lacks (IPVS without CONFIG_IP_VS) prints why
// instead of figures, the same way.
//
// Goals printed beside the figures: edgeplane's new connections per core >= 1.8x IPVS's (LoxiLB
// publishes 1.85x); <= 5 % loss from 10 to 10,000 services (new connections and established
// packets per core); 0 broken connections across 100 backend changes. Asserts nothing. Needs
// root, cc, trafgen, iptables-legacy, ipvsadm, ethtool, python3.
//   node --import=tsx bench/lb.ts [--quick] [--parts abc]
import { spawnSync } from 'node:child_process';
import { compileServices, EbpfDatapath, LB_TARGET_CAPACITY, MaglevTableCache } from '@edgeplane/node-agent';
import { Protocol, Service } from '@edgeplane/proto';
import { LbRig } from '../test/support/lb-rig.js';
import { IptablesPeer, IpvsPeer, type LbPeer, type RigService } from '../test/support/lb-peers.js';
import { ConntrackAccess, conntrackSupported } from './conntrack-access.js';
import { median } from './cpu-ticks.js';
import { filterShareMs, type FilterCpu } from './perf-share.js';
import { BenchRun, benchArgs, type BrokenFigures, CHURN_SOURCES as SOURCES, type ChurnFigures, firstLine, FLOOD_CPU, fmt, LOAD_CPU, measureBroken, measureChurn, measureFlood, sleep } from './rig-measure.js';

const { quick, parts, reps, churnSeconds, floodSeconds } = benchArgs('abc');
const sizes = process.env.EP_BENCH_SERVICES?.split(',').map(Number) ?? [10, 1_000, 10_000];
const CHANGES = Number(process.env.EP_BENCH_CHANGES ?? 100);
const HELD = quick ? 256 : 1_000;
/** Backends per service, and the rig's backends: two spares for (c)'s adds. */
const BACKENDS = 10;
const POOL = BACKENDS + 2;
const VIP_PORT = 80;
const ECHO_VIP_PORT = 81;
const CLOSE_PORT = 8080;
const ECHO_PORT = 8081;
/** (b)'s UDP service: VIP 0 port 80, to the backends' port 9 (no socket there: NoPorts). */
const UDP_BACKEND_PORT = 9;
const FLOW_SPORT = 4000;

type Contender = 'none' | 'iptables' | 'ipvs' | 'edgeplane' | 'edgeplane-tc';
const LBS = ['iptables', 'ipvs', 'edgeplane', 'edgeplane-tc'] as const;
/** The two edgeplane contenders: one datapath (object and maps), its policy program at XDP or at TC ingress. */
const EDGEPLANE = ['edgeplane', 'edgeplane-tc'] as const;
type EdgeplaneContender = (typeof EDGEPLANE)[number];
const isEdgeplane = (c: Contender): c is EdgeplaneContender => (EDGEPLANE as readonly Contender[]).includes(c);

const pct = (x: number): string => (Number.isFinite(x) ? `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)} %` : 'n/a');

// --- services ---------------------------------------------------------------------------------

/** The rig's backends `indices` at `port`, weight 1 unless `weights` says (0 drains). */
const backendsOf = (rig: LbRig, indices: readonly number[], port: number, weights: ReadonlyMap<number, number> = new Map()): RigService['backends'] =>
  indices.map((i) => ({ address: rig.backends[i]!.v4, port, weight: weights.get(i) ?? 1 }));

/**
 * (a) and (b): `count` services in all (10,000 is the most the intent and the datapath hold):
 * count - 1 TCP services VIP k:80 -> backends 0..9 port 8080, and the UDP service VIP 0:80 -> port 9.
 */
function sizedServices(rig: LbRig, count: number): RigService[] {
  const all = Array.from({ length: BACKENDS }, (_, i) => i);
  const tcp = backendsOf(rig, all, CLOSE_PORT);
  const services: RigService[] = Array.from({ length: count - 1 }, (_, k) => ({ vip: LbRig.vip(k), port: VIP_PORT, protocol: 'tcp', backends: tcp }));
  services.push({ vip: LbRig.vip(0), port: VIP_PORT, protocol: 'udp', backends: backendsOf(rig, all, UDP_BACKEND_PORT) });
  return services;
}

/** (c): 10 services VIP k:80 -> port 8080 (closing) and VIP k:81 -> port 8081 (echo), to `indices` with `weights`. */
function changeServices(rig: LbRig, indices: readonly number[], weights: ReadonlyMap<number, number>): RigService[] {
  return Array.from({ length: BACKENDS }, (_, k) => [
    { vip: LbRig.vip(k), port: VIP_PORT, protocol: 'tcp' as const, backends: backendsOf(rig, indices, CLOSE_PORT, weights) },
    { vip: LbRig.vip(k), port: ECHO_VIP_PORT, protocol: 'tcp' as const, backends: backendsOf(rig, indices, ECHO_PORT, weights) },
  ]).flat();
}

// --- edgeplane as a peer ---------------------------------------------------------------------------

/**
 * edgeplane in the rig's node namespace: the rig's services as Service resources, compiled for
 * the node (compileServices, with a Maglev table cache as the agent keeps), applied with an
 * allow-all rule set (apply(ruleSet, lb): one generation switch), and the uplink's programs
 * attached to the node's uplink after the first apply succeeds (edge_xdp native, edge_tc_egress).
 */
class EdgeplanePeer implements LbPeer {
  readonly name: EdgeplaneContender;
  readonly #datapath: EbpfDatapath;
  readonly #access: ConntrackAccess;
  readonly #ns: string;
  readonly #dev: string;
  readonly #cache = new MaglevTableCache();
  #attached = false;

  constructor(name: EdgeplaneContender, datapath: EbpfDatapath, access: ConntrackAccess, ns: string, dev: string) {
    this.name = name;
    this.#datapath = datapath;
    this.#access = access;
    this.#ns = ns;
    this.#dev = dev;
  }

  unavailable(): string | undefined {
    return undefined;
  }

  async apply(services: readonly RigService[]): Promise<void> {
    const resources = services.map((s) =>
      Service.fromPartial({
        metadata: { name: `${s.protocol}-${s.port}-${s.vip.replaceAll(/[.:]/g, '-')}` },
        spec: { vip: s.vip, protocol: s.protocol === 'tcp' ? Protocol.PROTOCOL_TCP : Protocol.PROTOCOL_UDP, port: s.port, backends: s.backends.map((b) => ({ address: b.address, port: b.port, weight: b.weight })) },
      }),
    );
    const lb = compileServices(resources, { labels: {}, cache: this.#cache });
    await this.#datapath.apply({ rules: [], defaultAction: 'allow' }, lb);
    if (!this.#attached) {
      this.#access.attach(this.#ns, this.#dev, this.name === 'edgeplane-tc' ? 'tc' : 'xdp');
      this.#attached = true;
    }
  }

  /** Empties its connection table (between runs, as `conntrack -F` for netfilter). */
  clear(): void {
    this.#access.clear();
  }

  remove(): void {
    if (!this.#attached) return;
    this.#attached = false;
    try {
      this.#access.detach(this.#ns, this.#dev);
    } catch {
      // The namespace is gone: so are its attachments.
    }
  }
}

// --- contenders -----------------------------------------------------------------------------------

interface Stand {
  contender: Contender;
  rig: LbRig;
  peer?: LbPeer;
  /** Why this contender has no figures (a refusal, a missing kernel feature). */
  unavailable?: string;
}

function flushTables(stand: Stand): void {
  spawnSync('ip', ['netns', 'exec', stand.rig.node, 'conntrack', '-F'], { stdio: 'ignore' });
  if (stand.peer instanceof IpvsPeer) spawnSync('ip', ['netns', 'exec', stand.rig.node, 'ipvsadm', '-Z'], { stdio: 'ignore' });
  if (stand.peer instanceof EdgeplanePeer) stand.peer.clear();
}

// --- (a) new connections ----------------------------------------------------------------------

interface ChurnSample extends Omit<ChurnFigures, 'cpu'> {
  contender: Contender;
  services: number;
  /** perf: the load balancer's own CPU per connection (netfilter's hooks for iptables and IPVS; edgeplane's programs, veth's XDP copy and the tc hook). */
  lbUs: number;
}

/** The load balancer's share of a perf profile (perf-share.ts, filterShareMs): netfilter's hooks (conntrack, NAT, IPVS), or edgeplane's programs, the copy veth makes for XDP and the tc hook's own work. */
const lbMs = (contender: Contender, cpu: FilterCpu): number => filterShareMs(isEdgeplane(contender) ? 'edgeplane' : contender === 'none' ? 'none' : 'iptables', cpu);

async function churnOnce(stand: Stand, services: number, load: string): Promise<ChurnSample> {
  const { rig } = stand;
  const servers = await Promise.all(rig.backends.slice(0, BACKENDS).map((b) => rig.spawn(b.ns, load, ['server', b.v4, String(CLOSE_PORT), 'close'], { ready: true, cpu: LOAD_CPU })));
  try {
    const [dst, port, targets] = stand.contender === 'none' ? [rig.backends[0]!.v4, CLOSE_PORT, BACKENDS] : [LbRig.vip(0), VIP_PORT, services - 1];
    const { cpu, ...figures } = await measureChurn(bench, {
      load,
      ns: rig.client,
      cpu: LOAD_CPU,
      seconds: churnSeconds,
      target: { prefix: LbRig.SOURCE_PREFIX, sources: SOURCES, dst, port, targets },
      stopServers: () => Promise.all(servers.map((s) => s.stop())),
    });
    return { contender: stand.contender, services, ...figures, lbUs: (lbMs(stand.contender, cpu) * 1000) / figures.connections };
  } finally {
    await Promise.all(servers.map((s) => s.kill()));
    flushTables(stand);
  }
}

// --- (b) established flow ---------------------------------------------------------------------

interface FloodSample {
  contender: Contender;
  services: number;
  forwardedPps: number;
  nsPerPacket: number;
  perCoreSecond: number;
  /** perf: the load balancer's own CPU per forwarded packet. */
  lbNs: number;
}

/** Packets the backends' veths received, summed. */
const backendRx = (rig: LbRig): number => rig.backends.reduce((sum, b) => sum + Number(rig.exec(b.ns, 'cat', ['/sys/class/net/b-eth/statistics/rx_packets']).trim()), 0);

async function floodOnce(stand: Stand, services: number): Promise<FloodSample> {
  const { rig } = stand;
  const mac = rig.exec(rig.node, 'cat', [`/sys/class/net/${rig.uplink.node}/address`]).trim();
  const [dst, dport] = stand.contender === 'none' ? [rig.backends[0]!.v4, UDP_BACKEND_PORT] : [LbRig.vip(0), VIP_PORT];
  try {
    const f = await measureFlood(bench, {
      ns: rig.client,
      dev: rig.uplink.client,
      cpu: FLOOD_CPU,
      seconds: floodSeconds,
      frame: { mac, src: LbRig.CLIENT_V4, dst, sport: FLOW_SPORT, dport },
      received: () => backendRx(rig),
    });
    return { contender: stand.contender, services, forwardedPps: f.pps, nsPerPacket: f.nsPerPacket, perCoreSecond: f.perCoreSecond, lbNs: (lbMs(stand.contender, f.cpu) * 1e6) / f.packets };
  } finally {
    flushTables(stand);
  }
}

// --- (c) backend changes ----------------------------------------------------------------------

interface ChangeResult extends BrokenFigures {
  contender: Contender;
}

async function changesUnderTraffic(stand: Stand, load: string): Promise<ChangeResult> {
  const { rig, peer } = stand;
  if (peer === undefined) throw new Error('no load balancer');
  const servers = await Promise.all(
    rig.backends.flatMap((b) => [rig.spawn(b.ns, load, ['server', b.v4, String(CLOSE_PORT), 'close'], { ready: true }), rig.spawn(b.ns, load, ['server', b.v4, String(ECHO_PORT), 'echo'], { ready: true })]),
  );
  try {
    // Backends 0..9 serve, 10 and 11 are spares. A round: add the first spare, drain the oldest
    // serving backend, remove it (it becomes a spare, still running): three changes.
    const serving = Array.from({ length: BACKENDS }, (_, i) => i);
    const spares = [BACKENDS, BACKENDS + 1];
    const weights = new Map<number, number>();
    await peer.apply(changeServices(rig, serving, weights));
    const figures = await measureBroken(bench, {
      load,
      ns: rig.client,
      start: (ns, command, args, options) => rig.spawn(ns, command, args, options),
      client: LbRig.CLIENT_V4,
      echo: { dst: LbRig.vip(0), port: ECHO_VIP_PORT },
      held: HELD,
      target: { prefix: LbRig.SOURCE_PREFIX, sources: SOURCES, dst: LbRig.vip(0), port: VIP_PORT, targets: BACKENDS },
      changes: CHANGES,
      change: async (i) => {
        const step = i % 3;
        if (step === 0) {
          const added = spares.shift()!;
          serving.push(added);
          weights.delete(added);
        } else if (step === 1) {
          weights.set(serving[0]!, 0);
        } else {
          const removed = serving.shift()!;
          weights.delete(removed);
          spares.push(removed);
        }
        await peer.apply(changeServices(rig, serving, weights));
        // Traffic between changes: every long-lived connection makes round trips under each configuration.
        await sleep(50);
      },
      // Longer than the stall bound, so a connection the last changes cut is counted.
      drainMs: 2_500,
    });
    return { contender: stand.contender, ...figures };
  } finally {
    await Promise.all(servers.map((s) => s.kill()));
    flushTables(stand);
  }
}

// --- main ---------------------------------------------------------------------------------------

const stands: Stand[] = [];
const report: Record<string, unknown> = { bench: 'lb', quick, reps, churnSeconds, floodSeconds, sizes, backends: BACKENDS, changes: CHANGES, held: HELD };
let datapath: EbpfDatapath | undefined;
const bench = new BenchRun('bench/lb.ts', 'lb', () => {
  for (const stand of stands) {
    stand.peer?.remove();
    stand.rig.remove();
  }
  datapath?.close();
});
const { goals, failures } = bench;

await bench.main(report, async () => {
  const load = bench.buildLoad();
  const mount = bench.mountBpf();
  for (const contender of ['none', ...LBS] as const) {
    const rig = LbRig.create({ backends: POOL, clientSources: SOURCES });
    const stand: Stand = { contender, rig };
    stands.push(stand);
    if (contender === 'iptables') stand.peer = new IptablesPeer(rig.node);
    else if (contender === 'ipvs') stand.peer = new IpvsPeer(rig.node);
    else if (isEdgeplane(contender)) {
      try {
        // LB.md's target capacity: 10,000 services x 10 backends at m = 1,021 (the default holds ~1,000).
        // Both edgeplane contenders share it; each run applies its own rig's services first.
        datapath ??= await EbpfDatapath.open({ pinRoot: mount, lbCapacity: LB_TARGET_CAPACITY });
        if (!conntrackSupported(datapath)) throw new Error('this build has no connection table (ep_ct)');
        stand.peer = new EdgeplanePeer(contender, datapath, new ConntrackAccess(datapath), rig.node, rig.uplink.node);
      } catch (error) {
        stand.unavailable = `open datapath: ${firstLine(error)}`;
      }
    }
    if (stand.unavailable === undefined) stand.unavailable = stand.peer?.unavailable();
    if (stand.unavailable !== undefined) process.stderr.write(`${contender}: unavailable: ${stand.unavailable}\n`);
  }
  const live = (): Stand[] => stands.filter((s) => s.unavailable === undefined);
  const rotate = (rep: number): Stand[] => live().map((_, i, all) => all[(i + rep) % all.length] as Stand);
  report.unavailable = Object.fromEntries(stands.filter((s) => s.unavailable !== undefined).map((s) => [s.contender, s.unavailable]));

  const churnSamples: ChurnSample[] = [];
  const floodSamples: FloodSample[] = [];
  const installMs: Record<string, Record<number, number>> = {};
  if (parts.has('a') || parts.has('b')) {
    for (const size of sizes) {
      for (const stand of live()) {
        if (stand.peer === undefined) continue;
        const t = performance.now();
        try {
          await stand.peer.apply(sizedServices(stand.rig, size));
          (installMs[stand.contender] ??= {})[size] = Math.round(performance.now() - t);
        } catch (error) {
          // A refusal at install (edgeplane until its datapath balances load) is that contender's row.
          stand.unavailable = `apply ${size} services: ${firstLine(error)}`;
          process.stderr.write(`${stand.contender}: ${stand.unavailable}\n`);
          report.unavailable = { ...(report.unavailable as object), [stand.contender]: stand.unavailable };
        }
      }
      for (let rep = 0; rep < reps; rep++) {
        for (const stand of rotate(rep)) {
          if (parts.has('a')) {
            try {
              const s = await churnOnce(stand, size, load);
              churnSamples.push(s);
              process.stderr.write(`(a) ${size} ${stand.contender} rep ${rep}: ${s.connections} connections (${s.failed} failed), ${s.cpuUsPerConnection.toFixed(1)} us CPU each\n`);
            } catch (error) {
              failures.push(`(a) ${size} ${stand.contender}: ${firstLine(error)}`);
            }
          }
          if (parts.has('b')) {
            try {
              const s = await floodOnce(stand, size);
              floodSamples.push(s);
              process.stderr.write(`(b) ${size} ${stand.contender} rep ${rep}: ${fmt(s.forwardedPps)} pps forwarded, ${s.nsPerPacket.toFixed(0)} ns/pkt softirq\n`);
            } catch (error) {
              failures.push(`(b) ${size} ${stand.contender}: ${firstLine(error)}`);
            }
          }
        }
      }
    }
  }
  report.installMs = installMs;

  const noFigure = (c: Contender): string | undefined => stands.find((s) => s.contender === c)?.unavailable;
  const churnRow = (c: Contender, size: number) => {
    const of = churnSamples.filter((s) => s.contender === c && s.services === size);
    return {
      contender: c,
      services: size,
      runs: of.length,
      perSecond: median(of.map((s) => s.perSecond)),
      failed: of.reduce((a, s) => a + s.failed, 0),
      cpuUsPerConnection: median(of.map((s) => s.cpuUsPerConnection)),
      perCoreSecond: median(of.map((s) => s.perCoreSecond)),
      lbUsPerConnection: median(of.map((s) => s.lbUs)),
    };
  };
  const floodRow = (c: Contender, size: number) => {
    const of = floodSamples.filter((s) => s.contender === c && s.services === size);
    return {
      contender: c,
      services: size,
      runs: of.length,
      forwardedPps: median(of.map((s) => s.forwardedPps)),
      nsPerPacket: median(of.map((s) => s.nsPerPacket)),
      perCoreSecond: median(of.map((s) => s.perCoreSecond)),
      lbNsPerPacket: median(of.map((s) => s.lbNs)),
    };
  };
  const contenders: Contender[] = ['none', ...LBS];

  if (parts.has('a')) {
    const rows = sizes.flatMap((size) => contenders.map((c) => churnRow(c, size)));
    report.newConnections = rows;
    console.log(`\n(a) new TCP connections through the VIPs (connect, server FIN, close; a fresh tuple each, VIP k round the services), client + 10 servers on CPU ${LOAD_CPU}, ${churnSeconds} s, medians of ${reps}`);
    console.log(['services', 'contender', 'conn/s', 'failed', 'CPU us/conn', 'conn/core-s', 'over none us', 'LB us/conn', 'LB conn/core-s'].map((h) => h.padStart(15)).join(''));
    for (const r of rows) {
      const none = rows.find((x) => x.contender === 'none' && x.services === r.services);
      const overNone = r.cpuUsPerConnection - (none?.cpuUsPerConnection ?? NaN);
      const why = noFigure(r.contender);
      if (why !== undefined && r.runs === 0) {
        console.log([fmt(r.services), r.contender].map((c) => c.padStart(15)).join('') + `   ${why}`);
        continue;
      }
      console.log(
        [
          fmt(r.services),
          r.contender,
          fmt(r.perSecond),
          String(r.failed),
          r.cpuUsPerConnection.toFixed(1),
          fmt(r.perCoreSecond),
          r.contender === 'none' ? '-' : overNone.toFixed(1),
          r.contender === 'none' ? '-' : r.lbUsPerConnection.toFixed(2),
          r.contender === 'none' ? '-' : fmt(1e6 / r.lbUsPerConnection),
        ]
          .map((c) => c.padStart(15))
          .join(''),
      );
    }
  }

  if (parts.has('b')) {
    const rows = sizes.flatMap((size) => contenders.map((c) => floodRow(c, size)));
    report.establishedFlow = rows;
    console.log(`\n(b) one established UDP flow through the UDP service's VIP, trafgen on CPU ${FLOOD_CPU} (softirq of that CPU), ${floodSeconds} s, medians of ${reps}`);
    console.log(['services', 'contender', 'forwarded pps', 'softirq ns/pkt', 'pps/core', 'LB ns/pkt', 'LB pps/core'].map((h) => h.padStart(15)).join(''));
    for (const r of rows) {
      const why = noFigure(r.contender);
      if (why !== undefined && r.runs === 0) {
        console.log([fmt(r.services), r.contender].map((c) => c.padStart(15)).join('') + `   ${why}`);
        continue;
      }
      console.log(
        [fmt(r.services), r.contender, fmt(r.forwardedPps), fmt(r.nsPerPacket), fmt(r.perCoreSecond), r.contender === 'none' ? '-' : fmt(r.lbNsPerPacket), r.contender === 'none' ? '-' : fmt(1e9 / r.lbNsPerPacket)]
          .map((c) => c.padStart(15))
          .join(''),
      );
    }
  }

  const changeResults: ChangeResult[] = [];
  if (parts.has('c')) {
    console.log(`\n(c) ${CHANGES} backend changes (add a spare, drain the oldest, remove it; to all ${BACKENDS * 2} services) under traffic: ${HELD} long-lived connections through VIP 0:${ECHO_VIP_PORT}, new connections meanwhile`);
    for (const stand of stands.filter((s) => s.contender !== 'none')) {
      if (stand.unavailable === undefined && stand.peer !== undefined) {
        // A refusal of the services themselves (edgeplane until its datapath balances load) is that
        // contender's row, not a failure of the bench.
        try {
          await stand.peer.apply(changeServices(stand.rig, Array.from({ length: BACKENDS }, (_, i) => i), new Map()));
        } catch (error) {
          stand.unavailable = `apply ${BACKENDS * 2} services: ${firstLine(error)}`;
        }
      }
      if (stand.unavailable !== undefined) {
        console.log(`    ${stand.contender.padEnd(10)} ${stand.unavailable}`);
        continue;
      }
      try {
        const r = await changesUnderTraffic(stand, load);
        changeResults.push(r);
        const p = r.persistent;
        console.log(
          `    ${stand.contender.padEnd(10)} ${r.changes} changes in ${r.seconds.toFixed(1)} s: broken ${fmt(r.broken)} (long-lived: ${p.broken} of ${p.connections}: errors ${p.errors}, EOF ${p.eofs}, stalled > 2 s ${p.stalls}; ${fmt(p.roundTrips ?? NaN)} round trips, over 200 ms ${p.over200ms}, max ${p.maxMs} ms; new connections ${fmt(r.churn.connections ?? NaN)}, failed ${r.churn.failed})`,
        );
      } catch (error) {
        console.log(`    ${stand.contender.padEnd(10)} failed: ${firstLine(error)}`);
        failures.push(`(c) ${stand.contender}: ${firstLine(error)}`);
      }
    }
    report.backendChanges = changeResults;
  }

  // Goals, for each edgeplane contender (XDP, TC), each with the peers' figures beside.
  const small = Math.min(...sizes);
  const large = Math.max(...sizes);
  for (const ep of EDGEPLANE) {
    const epWhy = noFigure(ep);
    const naFigure = (what: string): string => `no ${ep} figure (${epWhy ?? 'not measured'}); ${what}`;
    if (parts.has('a')) {
      const ratios = sizes.map((size) => churnRow(ep, size).perCoreSecond / churnRow('ipvs', size).perCoreSecond);
      const ipvsWhy = noFigure('ipvs');
      const beside = sizes.map((size) => `${fmt(size)}: ${ep} ${fmt(churnRow(ep, size).perCoreSecond)}, ipvs ${fmt(churnRow('ipvs', size).perCoreSecond)}, iptables ${fmt(churnRow('iptables', size).perCoreSecond)}`).join('; ');
      goals.push({
        goal: `${ep} new connections per core >= 1.8x IPVS at every size`,
        figure: ratios.every(Number.isFinite)
          ? sizes
              .map((size, i) => {
                const mine = churnRow(ep, size);
                const ipvs = churnRow('ipvs', size);
                return `${fmt(size)} services: ${fmt(mine.perCoreSecond)} vs ${fmt(ipvs.perCoreSecond)} conn/core-s, ${ratios[i]!.toFixed(2)}x (load balancer alone ${fmt(1e6 / mine.lbUsPerConnection)} vs ${fmt(1e6 / ipvs.lbUsPerConnection)}, ${(ipvs.lbUsPerConnection / mine.lbUsPerConnection).toFixed(2)}x)`;
              })
              .join('; ')
          : epWhy !== undefined
            ? naFigure(`peers' conn/core-s: ${beside}${ipvsWhy === undefined ? '' : ` (ipvs: ${ipvsWhy})`}`)
            : `no ipvs figure (${ipvsWhy ?? 'not measured'}); ${beside}`,
        met: ratios.every(Number.isFinite) ? ratios.every((r) => r >= 1.8) : null,
      });
    }
    if ((parts.has('a') || parts.has('b')) && sizes.length > 1) {
      const loss = (c: Contender): { conn: number; pps: number; lbConn: number; lbPps: number } => ({
        conn: churnRow(c, large).perCoreSecond / churnRow(c, small).perCoreSecond - 1,
        pps: floodRow(c, large).perCoreSecond / floodRow(c, small).perCoreSecond - 1,
        // The load balancer's own CPU per connection (packet) grows: its rate per core falls by as much.
        lbConn: churnRow(c, small).lbUsPerConnection / churnRow(c, large).lbUsPerConnection - 1,
        lbPps: floodRow(c, small).lbNsPerPacket / floodRow(c, large).lbNsPerPacket - 1,
      });
      const peers = (['iptables', 'ipvs'] as const)
        .map((c) => (noFigure(c) === undefined ? `${c} new ${pct(loss(c).conn)}, established ${pct(loss(c).pps)} (alone ${pct(loss(c).lbConn)}, ${pct(loss(c).lbPps)})` : `${c} n/a`))
        .join('; ');
      const mine = loss(ep);
      const measured = [parts.has('a') ? mine.conn : undefined, parts.has('b') ? mine.pps : undefined].filter((x): x is number => x !== undefined);
      goals.push({
        goal: `${ep} <= 5 % loss per core from ${fmt(small)} to ${fmt(large)} services (new connections and established packets)`,
        figure: measured.every(Number.isFinite) ? `new connections ${pct(mine.conn)}, established ${pct(mine.pps)} (load balancer alone ${pct(mine.lbConn)}, ${pct(mine.lbPps)}); ${peers}` : naFigure(peers),
        met: measured.length > 0 && measured.every(Number.isFinite) ? measured.every((x) => x >= -0.05) : null,
      });
    }
    if (parts.has('c')) {
      const mine = changeResults.find((r) => r.contender === ep);
      const peers = changeResults
        .filter((r) => !isEdgeplane(r.contender))
        .map((r) => `${r.contender} ${fmt(r.broken)}`)
        .concat((['iptables', 'ipvs'] as const).filter((c) => noFigure(c) !== undefined).map((c) => `${c} n/a`))
        .join(', ');
      goals.push({
        goal: `${ep}: 0 broken connections across ${CHANGES} backend changes`,
        figure: mine !== undefined ? `${ep} ${fmt(mine.broken)}; ${peers}` : naFigure(peers),
        met: mine !== undefined && Number.isFinite(mine.broken) ? mine.broken === 0 : null,
      });
    }
  }
});
