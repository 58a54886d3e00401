// Connection tracking (issue 13): edgeplane's stateful datapath beside netfilter conntrack (nftables
// `ct state established,related accept`, iptables-legacy `-m conntrack --ctstate`), side by side in
// one run, on the rig of bench/netfilter.ts: a client namespace and a node namespace joined by a
// veth pair, the filter on the node (edgeplane: edge_xdp native on the node's veth and
// edge_tc_egress on its egress; netfilter: the node namespace's hooks).
//
//   (a) new TCP connections per core: bench/tcp-churn.c (C, built here) opens connections from
//       the client namespace to a server in the node namespace, each from a tuple never used
//       before; client and server are pinned to one CPU, so everything the connections cost (both
//       TCP stacks, veth, softirq, the filter) is that CPU's work: connections per CPU-second.
//       The filter's own share is the difference to the same load with no filter, and, from perf's
//       samples of that CPU (perf-share.ts, filterShareMs), what the filter's hooks spent:
//       netfilter's hooks (for nftables less the empty iptables table the iptables contender leaves
//       registered in the namespace), edgeplane's programs plus veth's XDP copy plus the tc hook's
//       own work. kernel.bpf_stats_enabled stays off unless EP_BENCH_BPF_STATS=1 (for the "BPF ns"
//       columns): its clock reads around every program run would be counted as the tc hook's.
//   (b) established-flow packets per softirq core with 1,000 / 100,000 / 1,000,000 tracked flows:
//       the tables are filled directly (edgeplane: ep_ct through the codecs; netfilter:
//       `conntrack -R`), then trafgen floods one flow that is in the table; the packets pass the
//       filter and end in the node's UDP stack (no socket there: NoPorts). Figure: softirq ns per
//       passed packet, as bench/netfilter.ts.
//   (c) table maintenance at 1,000,000 entries: netfilter's gc_worker (kworker) CPU from perf
//       cpu-clock samples over a window, against edgeplane's sweep (its own CPU).
//   (d) 1,000 generation switches under traffic: long-lived TCP connections doing request/response
//       and a stream of new connections while the agent applies a changed rule set 1,000 times.
//
// Contenders alternate within each rep; medians are reported. Prints tables, the goals with
// met/missed, and one JSON line. Asserts nothing. Needs root, trafgen, conntrack, perf, cc.
//   node --import=tsx bench/conntrack.ts [--quick] [--parts abcd]
// Environment: EP_BENCH_PERF_DIR=DIR keeps perf's texts and the programs' line tables there (then
// bench/perf-lines.ts DIR places the programs' samples on source lines); EP_BENCH_OBJECT=PATH runs
// another build of bpf/edgeplane.bpf.o (a variant to compare on the whole rig); EP_BENCH_CT_CAPACITY,
// EP_BENCH_FLOWS, EP_BENCH_SWITCHES, EP_BENCH_BPF_STATS below.
import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { EbpfDatapath, nextSweepDelay, type RuleSetSpec } from '@edgeplane/node-agent';
import { ConntrackAccess, conntrackSupported, type PolicyHook } from './conntrack-access.js';
import { HZ, median, threadTicksByPid, ticksBetween } from './cpu-ticks.js';
import { filterShareMs, type FilterCpu } from './perf-share.js';
import { writeLineTables } from './perf-lines.js';
import { BenchRun, benchArgs, CHURN_SOURCES as SOURCES, type ChurnFigures, FLOOD_CPU, fmt, LOAD_CPU, measureBroken, measureChurn, measureFlood, run } from './rig-measure.js';

const { quick, parts, reps, churnSeconds, floodSeconds } = benchArgs('abcd');
const flowSizes = process.env.EP_BENCH_FLOWS?.split(',').map(Number) ?? [1_000, 100_000, 1_000_000];
const switches = Number(process.env.EP_BENCH_SWITCHES ?? (quick ? 100 : 1_000));
const gcWindowSeconds = quick ? 20 : 70;
/** ConntrackSweeper's defaults (conntrack-sweeper.ts): a pass at least every 10 s, at most 0.5 % of a core. */
const SWEEP_PACE = { intervalMs: 10_000, busyIntervalMs: 100, maxCpuShare: 0.005, busyCpuShare: 0.05 };
/**
 * ep_ct entries and netfilter's nf_conntrack_max (and its buckets): room for the largest size plus
 * (a)'s churn. EP_BENCH_CT_CAPACITY sets another (both tables alike; (b)'s sizes must fit).
 */
const CAPACITY = Number(process.env.EP_BENCH_CT_CAPACITY ?? 2_097_152);
if (!Number.isInteger(CAPACITY) || CAPACITY < 1024 || CAPACITY > 1 << 26) throw new Error(`EP_BENCH_CT_CAPACITY=${process.env.EP_BENCH_CT_CAPACITY}: an integer from 1024 to ${1 << 26}`);
if (parts.has('b') && Math.max(...flowSizes) > CAPACITY) throw new Error(`EP_BENCH_CT_CAPACITY=${CAPACITY} cannot hold (b)'s ${Math.max(...flowSizes)} flows (EP_BENCH_FLOWS)`);

const tag = process.pid.toString(36);
const nsClient = `epct-c-${tag}`;
const nsNode = `epct-n-${tag}`;
const clientIf = 'cli0';
const nodeIf = 'node0';
const clientAddress = '10.99.0.1';
const nodeAddress = '10.99.0.2';
/** (a)'s client sources: SOURCE_PREFIX.1 .. SOURCE_PREFIX.SOURCES. */
const SOURCE_PREFIX = '10.98.0';
const TCP_PORT = 8080;
/** (d)'s echo server (edgeplane's rule admits TCP_PORT..ECHO_PORT; netfilter is not in (d)). */
const ECHO_PORT = 8081;
const UDP_PORT = 9;
const FLOW_SPORT = 4000;
// Everything the bench changed on the machine, undone once (BenchRun: from main's end or a signal).
const bench = new BenchRun('bench/conntrack.ts', 'ct', () => {
  tearDown();
  restoreNetfilter();
});
const { workDir } = bench;

/**
 * `edgeplane` runs its policy program as XDP (edge_xdp, native on the veth); `edgeplane-tc` runs
 * the same ep_datapath at the same hook (EP_HOOK_POLICY) as edge_tc at clsact ingress: on veth,
 * XDP copies every skb into an xdp_buff (veth_xdp_rcv_skb), which a NIC's native XDP does not, so
 * the tc contender shows the datapath's cost without the rig's copy. `edgeplane-tcx` runs the
 * same two TC programs first in the tcx chains instead of as clsact filters, as the agent attaches
 * them on a kernel with tcx: no qdisc walk and no cls_bpf. Its hook (tcx_run) is inlined into
 * __netif_receive_skb_core and __dev_queue_xmit, so the perf split cannot tell it apart and its
 * filter figure leaves it out, while the clsact hook (tcf_classify, cls_bpf) is counted for
 * edgeplane-tc: compare them on the whole path too. Same object, same maps.
 */
type Contender = 'none' | 'edgeplane' | 'edgeplane-tc' | 'edgeplane-tcx' | 'nft' | 'iptables';
const EDGEPLANE: readonly Contender[] = ['edgeplane', 'edgeplane-tc', 'edgeplane-tcx'];
const isEdgeplane = (c: Contender): boolean => EDGEPLANE.includes(c);
const hookOf = (c: Contender): PolicyHook => (c === 'edgeplane-tc' ? 'tc' : c === 'edgeplane-tcx' ? 'tcx' : 'xdp');

const inNode = (...args: string[]): string => run('ip', 'netns', 'exec', nsNode, ...args);
const ip = (n: number): string => `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;

// --- the rig ------------------------------------------------------------------------------

function setUp(): void {
  run('ip', 'netns', 'add', nsClient);
  run('ip', 'netns', 'add', nsNode);
  run('ip', 'link', 'add', clientIf, 'netns', nsClient, 'type', 'veth', 'peer', 'name', nodeIf, 'netns', nsNode);
  for (const [ns, dev, address] of [
    [nsClient, clientIf, clientAddress],
    [nsNode, nodeIf, nodeAddress],
  ] as const) {
    run('ip', '-n', ns, 'link', 'set', 'lo', 'up');
    run('ip', '-n', ns, 'addr', 'add', `${address}/24`, 'dev', dev);
    run('ip', '-n', ns, 'link', 'set', dev, 'up');
  }
  const batch = Array.from({ length: SOURCES }, (_, i) => `addr add ${SOURCE_PREFIX}.${i + 1}/32 dev ${clientIf}`).join('\n');
  execFileSync('ip', ['-n', nsClient, '-batch', '-'], { input: `${batch}\n` });
  // The node answers (a)'s sources and (b)'s filler flows on the link, no reverse-path filter.
  inNode('sysctl', '-q', '-w', 'net.ipv4.conf.all.rp_filter=0', `net.ipv4.conf.${nodeIf}.rp_filter=0`, 'net.ipv4.conf.default.rp_filter=0');
  run('ip', '-n', nsNode, 'route', 'add', '10.0.0.0/8', 'dev', nodeIf);
  run('ip', '-n', nsClient, 'route', 'add', '10.0.0.0/8', 'dev', clientIf);
}

function tearDown(): void {
  spawnSync('ip', ['netns', 'exec', nsNode, 'conntrack', '-F'], { stdio: 'ignore' });
  for (const ns of [nsClient, nsNode]) spawnSync('ip', ['netns', 'del', ns]);
}

// netfilter's table size is global (init namespace): raised for the bench, restored after.
const sysctls = { max: '/proc/sys/net/netfilter/nf_conntrack_max', hashsize: '/sys/module/nf_conntrack/parameters/hashsize' };
const bpfStats = '/proc/sys/kernel/bpf_stats_enabled';
/** EP_BENCH_BPF_STATS=1: kernel.bpf_stats_enabled on, for the "BPF ns" columns (it adds two clock reads to every program run). */
const withBpfStats = process.env.EP_BENCH_BPF_STATS === '1';
const saved = { max: readFileSync(sysctls.max, 'utf8').trim(), hashsize: readFileSync(sysctls.hashsize, 'utf8').trim(), bpfStats: readFileSync(bpfStats, 'utf8').trim() };
function sizeNetfilter(): void {
  // Same bucket count as edgeplane's ep_ct hash (the kernel rounds max_entries up to a power of 2).
  writeFileSync(sysctls.hashsize, String(CAPACITY));
  writeFileSync(sysctls.max, String(CAPACITY));
  // edgeplane's own run time per run (bpf_prog_info run_time_ns), only when asked: the kernel's
  // clock reads around every run would land in the tc hook's share of the perf split.
  writeFileSync(bpfStats, withBpfStats ? '1' : '0');
}
function restoreNetfilter(): void {
  writeFileSync(sysctls.max, saved.max);
  writeFileSync(sysctls.hashsize, saved.hashsize);
  writeFileSync(bpfStats, saved.bpfStats);
}

function udpPassed(): number {
  const snmp = inNode('cat', '/proc/net/snmp').split('\n').filter((l) => l.startsWith('Udp:'));
  const names = (snmp[0] ?? '').split(/\s+/);
  const values = (snmp[1] ?? '').split(/\s+/).map(Number);
  const field = (name: string): number => values[names.indexOf(name)] ?? 0;
  return field('InDatagrams') + field('NoPorts') + field('InCsumErrors');
}

// --- contenders ---------------------------------------------------------------------------

// The policy every contender enforces: established and related pass; new TCP to TCP_PORT and new
// UDP to UDP_PORT are admitted (and tracked); everything else is dropped. edgeplane keeps admitted
// flows across changes (KEEP, as netfilter) except in (d), which re-checks them (cutOnDeny) after
// every switch. `extraPort` adds a deny rule that changes the rule set without touching the load.
const edgeplaneRules = (extraPort?: number, cutOnDeny = false): RuleSetSpec => ({
  rules: [
    { id: 1, srcCidrs: [], dstCidrs: [], protocol: 'tcp', dstPorts: [{ from: TCP_PORT, to: ECHO_PORT }], action: 'allow', track: true },
    { id: 2, srcCidrs: [], dstCidrs: [], protocol: 'udp', dstPorts: [{ from: UDP_PORT, to: UDP_PORT }], action: 'allow', track: true },
    ...(extraPort === undefined ? [] : [{ id: 3 + (extraPort % 2), srcCidrs: ['192.0.2.0/24'], dstCidrs: [], protocol: 'tcp' as const, dstPorts: [{ from: extraPort, to: extraPort }], action: 'deny' as const }]),
  ],
  defaultAction: 'deny',
  trackEgress: false,
  cutOnDeny,
});

const NFT_RULES = `flush ruleset
table inet bench {
  chain input {
    type filter hook input priority 0; policy drop;
    ct state established,related counter accept
    ct state invalid drop
    tcp dport ${TCP_PORT} ct state new counter accept
    udp dport ${UDP_PORT} ct state new counter accept
  }
}
`;
const IPTABLES_RULES = `*filter
:INPUT DROP [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A INPUT -m conntrack --ctstate INVALID -j DROP
-A INPUT -p tcp --dport ${TCP_PORT} -m conntrack --ctstate NEW -j ACCEPT
-A INPUT -p udp --dport ${UDP_PORT} -m conntrack --ctstate NEW -j ACCEPT
COMMIT
`;

function flushNetfilter(): void {
  spawnSync('ip', ['netns', 'exec', nsNode, 'iptables-legacy', '-F', 'INPUT']);
  spawnSync('ip', ['netns', 'exec', nsNode, 'iptables-legacy', '-P', 'INPUT', 'ACCEPT']);
  spawnSync('ip', ['netns', 'exec', nsNode, 'nft', 'flush', 'ruleset']);
}

/** Packets the "established" rule passed (netfilter) or entries passed (edgeplane), for the record. */
interface Installed {
  established(): number;
  /** edgeplane: ns per run of edge_xdp and edge_tc_egress since install (kernel.bpf_stats_enabled). */
  bpfNs(): { policy: number; egress: number };
  remove(): void;
}
const noBpf = (): { policy: number; egress: number } => ({ policy: NaN, egress: NaN });

function install(contender: Contender, ct: ConntrackAccess | undefined): Installed {
  switch (contender) {
    case 'none':
      return { established: () => NaN, bpfNs: noBpf, remove: () => undefined };
    case 'edgeplane':
    case 'edgeplane-tc':
    case 'edgeplane-tcx': {
      if (ct === undefined) throw new Error('edgeplane conntrack is not in this build');
      const hook = hookOf(contender);
      try {
        ct.attach(nsNode, nodeIf, hook);
        // bpftool: the policy program is where this contender says and nowhere else (edgeplane-tc:
        // no XDP program at all, so veth makes no xdp_buff copy).
        ct.verifyAttached(nsNode, nodeIf, hook);
      } catch (error) {
        ct.detach(nsNode, nodeIf);
        throw error;
      }
      const before = ct.establishedPackets();
      const stats = ct.programStats(hook);
      const bpfNs = (): { policy: number; egress: number } => {
        const now = ct.programStats(hook);
        return { policy: (now.policy.ns - stats.policy.ns) / (now.policy.runs - stats.policy.runs), egress: (now.egress.ns - stats.egress.ns) / (now.egress.runs - stats.egress.runs) };
      };
      return { established: () => ct.establishedPackets() - before, bpfNs, remove: () => ct.detach(nsNode, nodeIf) };
    }
    case 'nft': {
      const file = join(workDir, 'nft.rules');
      writeFileSync(file, NFT_RULES);
      inNode('nft', '-f', file);
      const established = (): number => Number(/established,related counter packets (\d+)/.exec(inNode('nft', 'list', 'chain', 'inet', 'bench', 'input'))?.[1] ?? NaN);
      return { established, bpfNs: noBpf, remove: flushNetfilter };
    }
    case 'iptables': {
      execFileSync('ip', ['netns', 'exec', nsNode, 'iptables-legacy-restore'], { input: IPTABLES_RULES });
      const established = (): number => Number(inNode('iptables-legacy', '-L', 'INPUT', '1', '-vnx').trim().split(/\s+/)[0] ?? NaN);
      return { established, bpfNs: noBpf, remove: flushNetfilter };
    }
  }
}

/** Starts tcp-churn's server (`mode` close or echo) at `port` in the node namespace on LOAD_CPU, ready. */
const serveInNode = (load: string, port: number, mode: 'close' | 'echo') => bench.spawnIn(nsNode, load, ['server', nodeAddress, String(port), mode], { ready: true, cpu: LOAD_CPU });

// --- the filter check -----------------------------------------------------------------------

/** A UDP port the policy denies (no rule admits it; every contender's default is drop). */
const DENIED_UDP_PORT = 19;
const PROBE_PACKETS = 200;
/** Packets to `dport` from a source port used by nothing else, so each probe is a new flow. */
function probe(mac: string, sport: number, dport: number): number {
  const config = join(workDir, 'probe.cfg');
  writeFileSync(config, `{ eth(da=${mac}), ipv4(saddr=${clientAddress}, daddr=${nodeAddress}, ttl=64), udp(sp=${sport}, dp=${dport}), fill(0x42, 18) }\n`);
  const before = udpPassed();
  execFileSync('ip', ['netns', 'exec', nsClient, 'trafgen', '-o', clientIf, '-i', config, '-n', String(PROBE_PACKETS), '-q', '--no-sock-mem'], { stdio: 'ignore' });
  return udpPassed() - before;
}
let probeSport = 30_000;
/**
 * Installs `contender`, sends new UDP to the admitted and to the denied port and counts what
 * reaches the node's UDP stack: a filter passes all of the first and none of the second (`none`
 * passes both). edgeplane contenders are also checked with bpftool (install() throws otherwise).
 */
function filterCheck(contender: Contender, mac: string, ct: ConntrackAccess | undefined): { contender: Contender; admitted: number; denied: number; hooks?: unknown; ok: boolean } {
  let installed: Installed | undefined;
  try {
    installed = install(contender, ct);
    const hooks = isEdgeplane(contender) ? ct?.attached(nsNode, nodeIf) : undefined;
    const admitted = probe(mac, probeSport++, UDP_PORT);
    const denied = probe(mac, probeSport++, DENIED_UDP_PORT);
    const ok = admitted === PROBE_PACKETS && denied === (contender === 'none' ? PROBE_PACKETS : 0);
    return { contender, admitted, denied, hooks, ok };
  } catch (error) {
    return { contender, admitted: NaN, denied: NaN, hooks: (error as Error).message.split('\n')[0], ok: false };
  } finally {
    installed?.remove();
    if (installed === undefined) flushNetfilter();
    spawnSync('ip', ['netns', 'exec', nsNode, 'conntrack', '-F'], { stdio: 'ignore' });
    ct?.clear();
  }
}

// --- (a) new connections ----------------------------------------------------------------------

interface ChurnSample extends Omit<ChurnFigures, 'cpu'> {
  contender: Contender;
  policyNs: number;
  egressNs: number;
  /** perf: the filter's own CPU per connection (netfilter hooks, or edgeplane's programs + veth's XDP copy + the tc hook). */
  filterUs: number;
  vethXdpUs: number;
  programUs: number;
  tcHookUs: number;
}
/** The filter's share of a perf profile (perf-share.ts, filterShareMs): netfilter's hooks, or edgeplane's programs, the copy veth makes for XDP and the tc hook's own work. */
const filterMs = (contender: Contender, cpu: FilterCpu): number => filterShareMs(contender === 'nft' ? 'nftables' : contender === 'iptables' || contender === 'none' ? contender : 'edgeplane', cpu);

async function churnOnce(contender: Contender, load: string, ct: ConntrackAccess | undefined): Promise<ChurnSample> {
  const installed = install(contender, ct);
  try {
    const server = await serveInNode(load, TCP_PORT, 'close');
    const { cpu, ...figures } = await measureChurn(bench, {
      load,
      ns: nsClient,
      cpu: LOAD_CPU,
      seconds: churnSeconds,
      target: { prefix: SOURCE_PREFIX, sources: SOURCES, dst: nodeAddress, port: TCP_PORT },
      stopServers: async () => [await server.stop()],
    });
    const bpf = installed.bpfNs();
    const { connections } = figures;
    return {
      contender,
      ...figures,
      policyNs: bpf.policy,
      egressNs: bpf.egress,
      filterUs: (filterMs(contender, cpu) * 1000) / connections,
      vethXdpUs: (cpu.vethXdpMs * 1000) / connections,
      programUs: (cpu.bpfMs * 1000) / connections,
      tcHookUs: (cpu.tcHookMs * 1000) / connections,
    };
  } finally {
    installed.remove();
    // Each run starts from an empty table: drop what the connections left (TIME_WAIT, CLOSE).
    spawnSync('ip', ['netns', 'exec', nsNode, 'conntrack', '-F'], { stdio: 'ignore' });
    ct?.clear();
  }
}

// --- (b) established flows --------------------------------------------------------------------

/** Filler flow i: 10.64.0.0 + i, source port 1024 + i % 60000, to the node's UDP_PORT. */
const fillerSource = (i: number): string => ip((10 << 24) + (64 << 16) + i);
const fillerPort = (i: number): number => 1024 + (i % 60_000);

function fillNetfilter(from: number, to: number): void {
  const lines: string[] = [];
  const entry = (src: string, sport: number): string => `-I -p udp -s ${src} -d ${nodeAddress} --sport ${sport} --dport ${UDP_PORT} --status ASSURED,SEEN_REPLY --timeout 7200`;
  if (from === 0) lines.push(entry(clientAddress, FLOW_SPORT));
  for (let i = Math.max(from, 1); i < to; i++) lines.push(entry(fillerSource(i), fillerPort(i)));
  const file = join(workDir, 'ct.load');
  writeFileSync(file, `${lines.join('\n')}\n`);
  execFileSync('ip', ['netns', 'exec', nsNode, 'conntrack', '-R', file], { stdio: 'ignore' });
}

function netfilterCount(): number {
  return Number(/(\d+)/.exec(run('ip', 'netns', 'exec', nsNode, 'conntrack', '-C'))?.[1] ?? NaN);
}

interface FlowSample {
  flows: number;
  contender: Contender;
  passedPps: number;
  establishedShare: number;
  nsPerPacket: number;
  perCoreSecond: number;
  policyNs: number;
  /** perf: the filter's own CPU per passed packet. */
  filterNs: number;
  /** perf: edgeplane's programs alone per passed packet (without veth's XDP conversion). */
  programNs: number;
}

async function floodOnce(contender: Contender, flows: number, mac: string, ct: ConntrackAccess | undefined): Promise<FlowSample> {
  const installed = install(contender, ct);
  try {
    const { packets: passed, pps, nsPerPacket, perCoreSecond, cpu } = await measureFlood(bench, {
      ns: nsClient,
      dev: clientIf,
      cpu: FLOOD_CPU,
      seconds: floodSeconds,
      frame: { mac, src: clientAddress, dst: nodeAddress, sport: FLOW_SPORT, dport: UDP_PORT },
      received: udpPassed,
      settleMs: 100,
    });
    const established = installed.established();
    return {
      flows,
      contender,
      passedPps: pps,
      establishedShare: established / passed,
      nsPerPacket,
      perCoreSecond,
      policyNs: installed.bpfNs().policy,
      filterNs: (filterMs(contender, cpu) * 1e6) / passed,
      programNs: (cpu.bpfMs * 1e6) / passed,
    };
  } finally {
    installed.remove();
  }
}

// --- (c) table maintenance --------------------------------------------------------------------

/** CPU ms that perf's cpu-clock samples put under `symbol` (anywhere in the call chain) over `seconds`. */
function perfSymbolMs(symbol: string, seconds: number): { ms: number; samples: number } {
  const data = join(workDir, 'perf.data');
  execFileSync('perf', ['record', '-q', '-e', 'cpu-clock', '-F', '1000', '-a', '-g', '-o', data, '--', 'sleep', String(seconds)], { stdio: 'ignore' });
  const script = execFileSync('perf', ['script', '-i', data, '-F', 'period,ip,sym'], { encoding: 'utf8', maxBuffer: 1 << 30 });
  let ns = 0;
  let samples = 0;
  for (const block of script.split(/\n\s*\n/)) {
    if (!block.includes(symbol)) continue;
    const period = /^\s*(\d+)/.exec(block)?.[1];
    ns += Number(period ?? 0);
    samples++;
  }
  return { ms: ns / 1e6, samples };
}

// --- (d) generation switches --------------------------------------------------------------------

interface SwitchResult {
  switches: number;
  seconds: number;
  persistent: Record<string, number>;
  churn: Record<string, number>;
}

async function switchesUnderTraffic(load: string, ct: ConntrackAccess, datapath: EbpfDatapath): Promise<SwitchResult> {
  await datapath.apply(edgeplaneRules(undefined, true));
  ct.attach(nsNode, nodeIf);
  const server = await serveInNode(load, TCP_PORT, 'close');
  const echo = await serveInNode(load, ECHO_PORT, 'echo');
  try {
    const r = await measureBroken(bench, {
      load,
      ns: nsClient,
      client: clientAddress,
      echo: { dst: nodeAddress, port: ECHO_PORT },
      held: 64,
      target: { prefix: SOURCE_PREFIX, sources: SOURCES, dst: nodeAddress, port: TCP_PORT },
      changes: switches,
      change: async (i) => {
        await datapath.apply(edgeplaneRules(20_000 + i, true));
        if (i % 100 === 99) process.stderr.write(`(d) ${i + 1} switches\n`);
      },
      drainMs: 500,
    });
    return { switches, seconds: r.seconds, persistent: r.persistent, churn: r.churn };
  } finally {
    await server.stop();
    await echo.stop();
    ct.detach(nsNode, nodeIf);
  }
}

// --- main ---------------------------------------------------------------------------------------

const report: Record<string, unknown> = { bench: 'conntrack', quick, reps, churnSeconds, floodSeconds, capacity: CAPACITY };
const { goals, failures } = bench;

await bench.main(report, async () => {
  setUp();
  sizeNetfilter();
  const load = bench.buildLoad();
  const mount = bench.mountBpf();
  const datapath = await EbpfDatapath.open({ pinRoot: mount, ...ConntrackAccess.openOptions(CAPACITY) });
  const ct = conntrackSupported(datapath) ? new ConntrackAccess(datapath) : undefined;
  if (ct === undefined) failures.push('edgeplane: this build has no connection table (ep_ct); edgeplane rows are missing');
  try {
    if (ct !== undefined) await datapath.apply(edgeplaneRules());
    // EP_BENCH_PERF_DIR: the programs' line tables beside perf's texts (bench/perf-lines.ts).
    const perfDir = process.env.EP_BENCH_PERF_DIR;
    if (perfDir !== undefined && ct !== undefined) writeLineTables(perfDir, workDir, [ct.policyProgram('xdp').id, ct.policyProgram('tc').id, datapath.tcEgressProgram.id]);
    const contenders: Contender[] = ct === undefined ? ['none', 'nft', 'iptables'] : ['none', 'edgeplane', 'edgeplane-tc', 'edgeplane-tcx', 'nft', 'iptables'];
    const rotate = (rep: number): Contender[] => contenders.map((_, i, all) => all[(i + rep) % all.length] as Contender);

    // Every contender must filter: a contender that passes what its policy denies is worthless.
    if (parts.has('a') || parts.has('b')) {
      const mac = (JSON.parse(run('ip', '-n', nsNode, '-j', 'link', 'show', nodeIf)) as { address: string }[])[0]?.address ?? 'ff:ff:ff:ff:ff:ff';
      const checks = contenders.map((contender) => filterCheck(contender, mac, ct));
      report.filterChecks = checks;
      console.log(`\nfilter check: ${PROBE_PACKETS} new UDP packets to the admitted port ${UDP_PORT} and ${PROBE_PACKETS} to the denied port ${DENIED_UDP_PORT}, reaching the node's UDP stack`);
      for (const c of checks) console.log(`    ${c.contender.padEnd(13)} admitted ${c.admitted}, denied ${c.denied}${c.hooks === undefined ? '' : `; bpftool: ${JSON.stringify(c.hooks)}`}: ${c.ok ? 'ok' : 'NOT FILTERING'}`);
      for (const c of checks) if (!c.ok) failures.push(`filter check ${c.contender}: admitted ${c.admitted}, denied ${c.denied} of ${PROBE_PACKETS} (expected ${PROBE_PACKETS} and ${c.contender === 'none' ? PROBE_PACKETS : 0})`);
    }

    // (a)
    if (parts.has('a')) {
      const samples: (ChurnSample & { rep: number })[] = [];
      for (let rep = 0; rep < reps; rep++) {
        for (const contender of rotate(rep)) {
          try {
            const s = await churnOnce(contender, load, ct);
            samples.push({ ...s, rep });
            process.stderr.write(`(a) ${contender} rep ${rep}: ${s.connections} connections (${s.failed} failed), ${s.cpuUsPerConnection.toFixed(1)} us CPU each, filter ${s.filterUs.toFixed(2)} us\n`);
          } catch (error) {
            failures.push(`(a) ${contender}: ${(error as Error).message.split('\n')[0]}`);
            flushNetfilter();
          }
        }
      }
      const noneUs = median(samples.filter((s) => s.contender === 'none').map((s) => s.cpuUsPerConnection));
      const rows = contenders.map((contender) => {
        const of = samples.filter((s) => s.contender === contender);
        const us = median(of.map((s) => s.cpuUsPerConnection));
        const filterUs = median(of.map((s) => s.filterUs));
        return {
          contender,
          runs: of.length,
          connectionsPerSecond: median(of.map((s) => s.perSecond)),
          failed: of.reduce((a, s) => a + s.failed, 0),
          cpuUsPerConnection: us,
          perCoreSecond: median(of.map((s) => s.perCoreSecond)),
          cpuUsOverNone: us - noneUs,
          filterUsPerConnection: filterUs,
          filterPerCoreSecond: filterUs > 0 ? 1e6 / filterUs : NaN,
          vethXdpUsPerConnection: median(of.map((s) => s.vethXdpUs)),
          programUsPerConnection: median(of.map((s) => s.programUs)),
          tcHookUsPerConnection: median(of.map((s) => s.tcHookUs)),
          policyNsPerRun: median(of.map((s) => s.policyNs)),
          egressNsPerRun: median(of.map((s) => s.egressNs)),
        };
      });
      console.log(`\n(a) new TCP connections (connect, server FIN, close; a fresh tuple each), client + server on CPU ${LOAD_CPU}, ${churnSeconds} s, medians of ${reps}`);
      console.log(['contender', 'conn/s', 'failed', 'CPU us/conn', 'conn/core-s', 'over none us', 'filter us/conn', 'filter conn/core-s', 'prog+veth+tc us', 'BPF ns pol/egr'].map((h) => h.padStart(19)).join(''));
      for (const r of rows) {
        console.log(
          [
            r.contender,
            fmt(r.connectionsPerSecond),
            String(r.failed),
            r.cpuUsPerConnection.toFixed(1),
            fmt(r.perCoreSecond),
            r.contender === 'none' ? '-' : r.cpuUsOverNone.toFixed(1),
            r.contender === 'none' ? '-' : r.filterUsPerConnection.toFixed(2),
            r.contender === 'none' ? '-' : fmt(r.filterPerCoreSecond),
            isEdgeplane(r.contender) ? `${r.programUsPerConnection.toFixed(2)}+${r.vethXdpUsPerConnection.toFixed(2)}+${r.tcHookUsPerConnection.toFixed(2)}` : '-',
            isEdgeplane(r.contender) ? `${fmt(r.policyNsPerRun)}/${fmt(r.egressNsPerRun)}` : '-',
          ]
            .map((c) => c.padStart(19))
            .join(''),
        );
      }
      report.newConnections = rows;
      const get = (c: Contender): (typeof rows)[number] | undefined => rows.find((r) => r.contender === c);
      // Per edgeplane contender, against each netfilter contender: the goal on the filter's whole
      // CPU (programs, plus veth's XDP copy for the XDP contender), and the programs alone.
      for (const c of EDGEPLANE) {
        const ep = get(c);
        if (ep === undefined) continue;
        for (const other of ['nft', 'iptables'] as const) {
          const nf = get(other);
          if (nf === undefined) continue;
          const ratio = nf.filterUsPerConnection / ep.filterUsPerConnection;
          const programs = nf.filterUsPerConnection / ep.programUsPerConnection;
          // The same ratio rep by rep: a rep's contenders run back to back, so a rep taken while
          // the shared machine is slower (connections per rep here fall by a third at times,
          // every contender's alike) moves both sides of its ratio.
          const paired = samples
            .filter((s) => s.contender === c && s.filterUs > 0)
            .flatMap((s) => samples.filter((o) => o.contender === other && o.rep === s.rep).map((o) => o.filterUs / s.filterUs));
          const pairedText = paired.length === 0 ? '' : `; rep by rep ${median(paired).toFixed(2)}x (${Math.min(...paired).toFixed(2)}-${Math.max(...paired).toFixed(2)})`;
          goals.push({
            goal: `(a) ${c} new connections per filtering core >= 2x ${other}`,
            figure: `filter ${fmt(ep.filterPerCoreSecond)} vs ${fmt(nf.filterPerCoreSecond)} conn/core-s: ${ratio.toFixed(2)}x (filter CPU ${ep.filterUsPerConnection.toFixed(2)} vs ${nf.filterUsPerConnection.toFixed(2)} us/conn, of which veth XDP copy ${ep.vethXdpUsPerConnection.toFixed(2)}, tc hook ${ep.tcHookUsPerConnection.toFixed(2)})${pairedText}; programs only ${fmt(1e6 / ep.programUsPerConnection)} conn/core-s: ${programs.toFixed(2)}x (${ep.programUsPerConnection.toFixed(2)} us/conn); whole path ${(ep.perCoreSecond / nf.perCoreSecond).toFixed(2)}x`,
            met: Number.isFinite(ratio) ? ratio >= 2 : null,
          });
        }
      }
    }

    // (b)
    if (parts.has('b')) {
      const mac = (JSON.parse(run('ip', '-n', nsNode, '-j', 'link', 'show', nodeIf)) as { address: string }[])[0]?.address ?? 'ff:ff:ff:ff:ff:ff';
      const samples: FlowSample[] = [];
      let filled = 0;
      const fillMs: Record<string, number[]> = { edgeplane: [], netfilter: [] };
      for (const flows of flowSizes) {
        let t = performance.now();
        fillNetfilter(filled, flows);
        fillMs.netfilter?.push(performance.now() - t);
        t = performance.now();
        ct?.fill(filled, flows, { src: clientAddress, sport: FLOW_SPORT, dst: nodeAddress, dport: UDP_PORT }, (i) => ({ src: fillerSource(i), sport: fillerPort(i) }));
        fillMs.edgeplane?.push(performance.now() - t);
        filled = flows;
        process.stderr.write(`(b) ${flows} flows: netfilter holds ${netfilterCount()}, edgeplane ep_ct4 + ep_ct hold ${ct?.count() ?? 'n/a'}\n`);
        for (let rep = 0; rep < reps; rep++) {
          for (const contender of rotate(rep)) {
            try {
              const s = await floodOnce(contender, flows, mac, ct);
              samples.push(s);
              process.stderr.write(`(b) ${flows} ${contender} rep ${rep}: ${fmt(s.passedPps)} pps passed, ${s.nsPerPacket.toFixed(0)} ns/pkt softirq\n`);
            } catch (error) {
              failures.push(`(b) ${flows} ${contender}: ${(error as Error).message.split('\n')[0]}`);
              flushNetfilter();
            }
          }
        }
      }
      const rows = flowSizes.flatMap((flows) =>
        contenders.map((contender) => {
          const of = samples.filter((s) => s.flows === flows && s.contender === contender);
          return {
            flows,
            contender,
            runs: of.length,
            passedPps: median(of.map((s) => s.passedPps)),
            establishedShare: median(of.map((s) => s.establishedShare)),
            nsPerPacket: median(of.map((s) => s.nsPerPacket)),
            perCoreSecond: median(of.map((s) => s.perCoreSecond)),
            policyNsPerPacket: median(of.map((s) => s.policyNs)),
            filterNsPerPacket: median(of.map((s) => s.filterNs)),
            programNsPerPacket: median(of.map((s) => s.programNs)),
          };
        }),
      );
      console.log(`\n(b) one established UDP flow among N tracked flows, trafgen on CPU ${FLOOD_CPU} (softirq of that CPU), ${floodSeconds} s, medians of ${reps}`);
      console.log(['flows', 'contender', 'passed pps', 'by entry', 'softirq ns/pkt', 'pps/core', 'filter ns/pkt', 'filter pps/core', 'program ns/pkt', 'BPF ns/run'].map((h) => h.padStart(16)).join(''));
      for (const r of rows) {
        console.log([fmt(r.flows), r.contender, fmt(r.passedPps), Number.isNaN(r.establishedShare) ? '-' : `${(r.establishedShare * 100).toFixed(0)} %`, fmt(r.nsPerPacket), fmt(r.perCoreSecond), r.contender === 'none' ? '-' : fmt(r.filterNsPerPacket), r.contender === 'none' ? '-' : fmt(1e9 / r.filterNsPerPacket), isEdgeplane(r.contender) ? fmt(r.programNsPerPacket) : '-', isEdgeplane(r.contender) ? fmt(r.policyNsPerPacket) : '-'].map((c) => c.padStart(16)).join(''));
      }
      report.establishedFlows = rows;
      report.fillMs = fillMs;
      const cost = (flows: number, c: Contender, field: 'filterNsPerPacket' | 'nsPerPacket' | 'programNsPerPacket' | 'policyNsPerPacket' | 'perCoreSecond'): number => rows.find((r) => r.flows === flows && r.contender === c)?.[field] ?? NaN;
      const small = Math.min(...flowSizes);
      const large = Math.max(...flowSizes);
      const pct = (x: number): string => `${x >= 0 ? '+' : ''}${(x * 100).toFixed(1)} %`;
      for (const c of contenders.filter((x) => x !== 'none')) {
        const growth = cost(large, c, 'filterNsPerPacket') / cost(small, c, 'filterNsPerPacket') - 1;
        const whole = cost(large, c, 'nsPerPacket') / cost(small, c, 'nsPerPacket') - 1;
        const line = `${c}: filter ${fmt(cost(small, c, 'filterNsPerPacket'))} -> ${fmt(cost(large, c, 'filterNsPerPacket'))} ns/pkt (${pct(growth)}); softirq ${fmt(cost(small, c, 'nsPerPacket'))} -> ${fmt(cost(large, c, 'nsPerPacket'))} ns/pkt (${pct(whole)})`;
        console.log(`    ${line}`);
      }
      // Per edgeplane contender, two readings of the goal, each beside netfilter's change:
      // established-flow packets per second per core (the whole path of the softirq CPU that
      // filters, the issue's wording) and the programs' own ns per packet (perf), which veth's
      // XDP copy (the XDP contender only) does not blur.
      const change = (c: Contender, field: 'perCoreSecond' | 'programNsPerPacket' | 'policyNsPerPacket' | 'filterNsPerPacket'): number => cost(large, c, field) / cost(small, c, field) - 1;
      const netfilterPps = (['nft', 'iptables'] as const).map((o) => `${o} ${fmt(cost(small, o, 'perCoreSecond'))} -> ${fmt(cost(large, o, 'perCoreSecond'))} (${pct(change(o, 'perCoreSecond'))})`).join(', ');
      const netfilterNs = (['nft', 'iptables'] as const).map((o) => `${o} filter ${fmt(cost(small, o, 'filterNsPerPacket'))} -> ${fmt(cost(large, o, 'filterNsPerPacket'))} ns/pkt (${pct(change(o, 'filterNsPerPacket'))})`).join(', ');
      for (const c of EDGEPLANE.filter((x) => contenders.includes(x))) {
        const pps = change(c, 'perCoreSecond');
        goals.push({
          goal: `(b) ${c} established-flow pps per core at ${fmt(large)} flows within 10 % of ${fmt(small)}`,
          figure: `${fmt(cost(small, c, 'perCoreSecond'))} -> ${fmt(cost(large, c, 'perCoreSecond'))} pkt/core-s (${pct(pps)}; softirq CPU, whole path); ${netfilterPps}`,
          met: Number.isFinite(pps) ? pps >= -0.1 : null,
        });
        const program = change(c, 'programNsPerPacket');
        goals.push({
          goal: `(b) ${c} programs' ns/pkt at ${fmt(large)} flows within 10 % of ${fmt(small)}`,
          figure: `programs ${fmt(cost(small, c, 'programNsPerPacket'))} -> ${fmt(cost(large, c, 'programNsPerPacket'))} ns/pkt (${pct(program)}; bpf_stats ${fmt(cost(small, c, 'policyNsPerPacket'))} -> ${fmt(cost(large, c, 'policyNsPerPacket'))} ns/run, ${pct(change(c, 'policyNsPerPacket'))}; filter incl. veth XDP copy ${fmt(cost(small, c, 'filterNsPerPacket'))} -> ${fmt(cost(large, c, 'filterNsPerPacket'))}); ${netfilterNs}`,
          met: Number.isFinite(program) ? program <= 0.1 : null,
        });
      }
    }

    // (c)
    if (parts.has('c')) {
      const flows = Math.max(...flowSizes);
      if (!parts.has('b')) {
        fillNetfilter(0, flows);
        ct?.fill(0, flows, { src: clientAddress, sport: FLOW_SPORT, dst: nodeAddress, dport: UDP_PORT }, (i) => ({ src: fillerSource(i), sport: fillerPort(i) }));
      }
      const entries = netfilterCount();
      process.stderr.write(`(c) perf cpu-clock for ${gcWindowSeconds} s, netfilter holding ${entries} entries\n`);
      const kw = threadTicksByPid((c) => c.startsWith('kworker'));
      const gc = perfSymbolMs('gc_worker', gcWindowSeconds);
      const kworkerMs = (ticksBetween(kw, threadTicksByPid((c) => c.startsWith('kworker'))) * 1000) / HZ;
      let sweep: { ms: number; cpuMs: number; entries: number; removed: number } | undefined;
      if (ct !== undefined) sweep = ct.sweepTimed();
      const result = { netfilterEntries: entries, windowSeconds: gcWindowSeconds, gcWorkerMs: gc.ms, gcWorkerSamples: gc.samples, allKworkersMs: kworkerMs, edgeplaneSweep: sweep };
      report.maintenance = result;
      console.log(`\n(c) table maintenance at ${fmt(entries)} live entries`);
      console.log(`    netfilter gc_worker: ${gc.ms.toFixed(1)} ms CPU in ${gcWindowSeconds} s (${gc.samples} perf samples at 1 kHz; all kworkers ${kworkerMs.toFixed(0)} ms)`);
      if (sweep !== undefined) {
        console.log(`    edgeplane sweep: ${sweep.ms.toFixed(1)} ms wall, ${sweep.cpuMs.toFixed(1)} ms CPU for one pass over ${fmt(sweep.entries)} entries (${sweep.removed} expired removed)`);
        const delayMs = nextSweepDelay({ ms: sweep.ms, full: false, pressure: false }, SWEEP_PACE);
        console.log(`    at the agent's pace (ConntrackSweeper: next pass after ${(delayMs / 1000).toFixed(1)} s): ${((sweep.cpuMs * gcWindowSeconds * 1000) / delayMs).toFixed(0)} ms CPU per ${gcWindowSeconds} s, against gc_worker's ${gc.ms.toFixed(1)} ms`);
      }
    }

    // (d)
    if (parts.has('d') && ct !== undefined) {
      const result = await switchesUnderTraffic(load, ct, datapath);
      report.switches = result;
      const broken = (result.persistent.broken ?? NaN) + (result.churn.failed ?? NaN);
      console.log(`\n(d) ${result.switches} generation switches in ${result.seconds.toFixed(1)} s under traffic`);
      console.log(`    64 long-lived connections: ${fmt(result.persistent.roundTrips ?? NaN)} round trips, broken ${result.persistent.broken} (errors ${result.persistent.errors}, EOF ${result.persistent.eofs}, stalled > 2 s ${result.persistent.stalls}), round trips over 200 ms ${result.persistent.over200ms}, max ${result.persistent.maxMs} ms`);
      console.log(`    new connections meanwhile: ${fmt(result.churn.connections ?? NaN)}, failed ${result.churn.failed}`);
      goals.push({ goal: `(d) 0 broken connections across ${result.switches} switches`, figure: `${broken} broken`, met: Number.isFinite(broken) ? broken === 0 : null });
    }
  } finally {
    ct?.close();
    datapath.close();
  }
});
