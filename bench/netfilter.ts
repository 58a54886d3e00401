// Datapath vs netfilter: the same rule sets (0, 1,000, 10,000, 100,000 rules) as edgeplane XDP
// (native, on veth), iptables-legacy (linear rules in INPUT), nftables (linear rules), and, where
// the rules can be put in one set, ipset (+ one iptables rule) and an nftables set. A UDP flood
// from a generator namespace crosses a veth into a receiver namespace that holds the filter.
//
// Method (see BENCHMARKS.md): every packet matches the *last* rule, and that rule drops it (with 0
// rules the default action drops), so every contender does its whole search and nothing is
// delivered: the receiving side's cost is the filter's. On veth the receive path runs in softirq
// on the sending CPU, so the figure that compares filters is what the receiver can process per
// CPU-second of softirq (packets dropped / softirq seconds, from /proc/stat), beside the packets
// per second the flood actually got through. Contenders run alternately, reps times, in one
// invocation; medians are reported. Prints a table and one JSON line per flavour; asserts nothing.
//   node --import=tsx bench/netfilter.ts [--quick]
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { EbpfDatapath, type RuleSetSpec, type RuleSpec } from '@edgeplane/node-agent';

const quick = process.argv.includes('--quick');
const seconds = quick ? 1 : 2;
const reps = quick ? 1 : 3;
const sizes = process.env.EP_BENCH_SIZES?.split(",").map(Number) ?? [0, 1_000, 10_000, 100_000];
const EDGEPLANE_MAX = 65_536;

const tag = process.pid.toString(36);
const nsGen = `epnf-g-${tag}`;
const nsRecv = `epnf-r-${tag}`;
const genIf = 'gen0';
const recvIf = 'recv0';
const genAddress = '10.99.0.1';
const recvAddress = '10.99.0.2';
const flowPort = 9;
const work = mkdtempSync(join(tmpdir(), 'ep-bench-nf-'));

type Flavour = 'multi' | 'deny';
type Contender = 'edgeplane' | 'iptables' | 'nft' | 'ipset' | 'nft-set';
const contenders: Record<Flavour, Contender[]> = {
  multi: ['edgeplane', 'iptables', 'nft', 'ipset', 'nft-set'],
  deny: ['edgeplane', 'iptables', 'nft', 'ipset', 'nft-set'],
};

const run = (command: string, ...args: string[]): string => execFileSync(command, args, { encoding: 'utf8', maxBuffer: 1 << 28 });
const inRecv = (...args: string[]): string => run('ip', 'netns', 'exec', nsRecv, ...args);
const restoreInRecv = (file: string, ...command: string[]): void => {
  execFileSync('ip', ['netns', 'exec', nsRecv, ...command], { input: readFileSync(file), stdio: ['pipe', 'ignore', 'pipe'], maxBuffer: 1 << 28 });
};

// Rule i's source: 10.0.0.0/8 carved into /28s (100,000 of them fit), host .1 of it for /32 rules.
const base = (i: number): number => (10 << 24) + i * 16;
const ip = (n: number): string => `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
interface Rule {
  src: string;
  dport: number;
}
// (a) multi-field: src /32 + dst /24 + udp + dport, the matching rule last; (b) source /28 deny list.
function rules(flavour: Flavour, count: number): Rule[] {
  return Array.from({ length: count }, (_, i) => ({
    src: flavour === 'multi' ? `${ip(base(i) + 1)}/32` : `${ip(base(i))}/28`,
    dport: i === count - 1 ? flowPort : 1_000 + (i % 50_000),
  }));
}
const flowSource = (count: number): string => ip(base(Math.max(0, count - 1)) + 1);

function edgeplaneSpec(flavour: Flavour, list: Rule[]): RuleSetSpec {
  // Only the last 65,536 rules fit one rule set; the matching rule is among them.
  const kept = list.slice(Math.max(0, list.length - EDGEPLANE_MAX));
  const specs: RuleSpec[] = kept.map((rule, i) =>
    flavour === 'multi'
      ? { id: i, srcCidrs: [rule.src], dstCidrs: [`${recvAddress.replace(/\d+$/, '0')}/24`], protocol: 'udp', dstPorts: [{ from: rule.dport, to: rule.dport }], action: 'deny' }
      : { id: i, srcCidrs: [rule.src], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'deny' },
  );
  return { rules: specs, defaultAction: 'deny' };
}

function iptablesText(flavour: Flavour, list: Rule[]): string {
  const lines = ['*filter', ':INPUT DROP [0:0]', ':FORWARD ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]'];
  for (const rule of list) {
    lines.push(flavour === 'multi' ? `-A INPUT -s ${rule.src} -d 10.99.0.0/24 -p udp -m udp --dport ${rule.dport} -j DROP` : `-A INPUT -s ${rule.src} -j DROP`);
  }
  lines.push('COMMIT', '');
  return lines.join('\n');
}

function nftText(flavour: Flavour, list: Rule[]): string {
  const body = list.map((rule, i) => {
    const counter = i === list.length - 1 ? 'counter ' : '';
    return flavour === 'multi' ? `    ip saddr ${rule.src} ip daddr 10.99.0.0/24 udp dport ${rule.dport} ${counter}drop` : `    ip saddr ${rule.src} ${counter}drop`;
  });
  return `flush ruleset\ntable ip bench {\n  chain input {\n    type filter hook input priority 0; policy drop;\n${body.join('\n')}\n  }\n}\n`;
}

function nftSetText(flavour: Flavour, list: Rule[]): string {
  const type = flavour === 'multi' ? 'ipv4_addr . ipv4_addr . inet_service' : 'ipv4_addr';
  const elements = list.map((rule) => (flavour === 'multi' ? `${rule.src.replace('/32', '')} . 10.99.0.0/24 . ${rule.dport}` : rule.src));
  const match = flavour === 'multi' ? 'meta l4proto udp ip saddr . ip daddr . udp dport @rules' : 'ip saddr @rules';
  const set = `  set rules {\n    type ${type}; flags interval;${elements.length > 0 ? `\n    elements = { ${elements.join(', ')} }` : ''}\n  }`;
  return `flush ruleset\ntable ip bench {\n${set}\n  chain input {\n    type filter hook input priority 0; policy drop;\n    ${match} counter drop\n  }\n}\n`;
}

function ipsetText(flavour: Flavour, list: Rule[]): string {
  const type = flavour === 'multi' ? 'hash:net,port,net' : 'hash:net';
  const lines = [`create rules ${type} family inet hashsize 65536 maxelem 262144`];
  for (const rule of list) lines.push(flavour === 'multi' ? `add rules ${rule.src.replace('/32', '')},udp:${rule.dport},10.99.0.0/24` : `add rules ${rule.src}`);
  return `${lines.join('\n')}\n`;
}
const ipsetRule = (flavour: Flavour): string => (flavour === 'multi' ? '-A INPUT -m set --match-set rules src,dst,dst -j DROP' : '-A INPUT -m set --match-set rules src -j DROP');

// --- topology --------------------------------------------------------------------------------

function setUp(): void {
  run('ip', 'netns', 'add', nsGen);
  run('ip', 'netns', 'add', nsRecv);
  run('ip', 'link', 'add', genIf, 'netns', nsGen, 'type', 'veth', 'peer', 'name', recvIf, 'netns', nsRecv);
  for (const [ns, dev, address] of [
    [nsGen, genIf, genAddress],
    [nsRecv, recvIf, recvAddress],
  ] as const) {
    run('ip', '-n', ns, 'link', 'set', 'lo', 'up');
    run('ip', '-n', ns, 'addr', 'add', `${address}/24`, 'dev', dev);
    run('ip', '-n', ns, 'link', 'set', dev, 'up');
  }
  // Spoofed sources in 10.0.0.0/8 must reach INPUT: no reverse-path filter, a route back.
  inRecv('sysctl', '-q', '-w', 'net.ipv4.conf.all.rp_filter=0', `net.ipv4.conf.${recvIf}.rp_filter=0`, 'net.ipv4.conf.default.rp_filter=0');
  run('ip', '-n', nsRecv, 'route', 'add', '10.0.0.0/8', 'dev', recvIf);
}

function tearDown(): void {
  for (const ns of [nsGen, nsRecv]) spawnSync('ip', ['netns', 'del', ns]);
  rmSync(work, { recursive: true, force: true });
}

function recvMac(): string {
  const link = JSON.parse(run('ip', '-n', nsRecv, '-j', 'link', 'show', recvIf)) as { address: string }[];
  return link[0]?.address ?? 'ff:ff:ff:ff:ff:ff';
}

function linkStats(ns: string, dev: string): { rx: number; tx: number; rxDropped: number } {
  const link = JSON.parse(run('ip', '-n', ns, '-j', '-s', 'link', 'show', dev)) as { stats64: { rx: { packets: number; dropped: number }; tx: { packets: number } } }[];
  const stats = link[0]?.stats64;
  return { rx: stats?.rx.packets ?? 0, tx: stats?.tx.packets ?? 0, rxDropped: stats?.rx.dropped ?? 0 };
}

// Jiffies (USER_HZ) summed over CPUs: softirq, and system (the sender's kernel time).
function cpuTimes(): { softirq: number; system: number; all: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
  const f = line.trim().split(/\s+/).slice(1).map(Number);
  return { softirq: f[6] ?? 0, system: f[2] ?? 0, all: f.reduce((a, b) => a + b, 0) };
}
const HZ = Number(run('getconf', 'CLK_TCK').trim()) || 100;

function flood(count: number, mac: string): void {
  const [s1, s2, s3, s4] = flowSource(count).split('.');
  const frame = `{ eth(da=${mac}), ipv4(saddr=${s1}.${s2}.${s3}.${s4}, daddr=${recvAddress}, ttl=64), udp(sp=4000, dp=${flowPort}), fill(0x41, 18) }`;
  const config = join(work, 'flood.cfg');
  writeFileSync(config, `${frame}\n`);
  // One sender process on CPU 0; --no-sock-mem/-Q: leave the host's socket memory and IRQ affinity alone.
  spawnSync('ip', ['netns', 'exec', nsGen, 'timeout', '-s', 'INT', String(seconds), 'taskset', '-c', '0', 'trafgen', '-o', genIf, '-i', config, '-P', '1', '--no-sock-mem', '-Q', '-C'], {
    stdio: 'ignore',
  });
}

// --- contenders -------------------------------------------------------------------------------

interface Installed {
  /** Packets the filter itself counted as dropped by the matching rule or the default. */
  dropped(): number;
  remove(): void;
}

function flushNetfilter(): void {
  spawnSync('ip', ['netns', 'exec', nsRecv, 'iptables-legacy', '-F', 'INPUT']);
  spawnSync('ip', ['netns', 'exec', nsRecv, 'iptables-legacy', '-P', 'INPUT', 'ACCEPT']);
  spawnSync('ip', ['netns', 'exec', nsRecv, 'iptables-legacy', '-Z']);
  spawnSync('ip', ['netns', 'exec', nsRecv, 'ipset', 'destroy']);
  spawnSync('ip', ['netns', 'exec', nsRecv, 'nft', 'flush', 'ruleset']);
}

// Policy + every rule's counters of INPUT, summed (iptables -L is linear in the rule count, but
// only the last rule and the policy count here, so read those two).
function iptablesDropped(ruleCount: number): number {
  const policy = /policy DROP (\d+) packets/.exec(inRecv('iptables-legacy', '-L', 'INPUT', '-vnx', '--line-numbers').split('\n', 1)[0] ?? '');
  let last = 0;
  if (ruleCount > 0) {
    const rule = inRecv('iptables-legacy', '-L', 'INPUT', String(ruleCount), '-vnx').trim().split(/\s+/);
    last = Number(rule[0] ?? 0);
  }
  return Number(policy?.[1] ?? 0) + last;
}

function nftDropped(): number {
  const text = inRecv('nft', 'list', 'chain', 'ip', 'bench', 'input');
  let total = 0;
  for (const match of text.matchAll(/counter packets (\d+)/g)) total += Number(match[1]);
  return total;
}

async function install(contender: Contender, flavour: Flavour, list: Rule[], datapath: EbpfDatapath): Promise<Installed> {
  const file = join(work, `${contender}.rules`);
  switch (contender) {
    case 'edgeplane': {
      await datapath.apply(edgeplaneSpec(flavour, list));
      run('ip', '-n', nsRecv, 'link', 'set', 'dev', recvIf, 'xdpdrv', 'pinned', join(datapath.pinRoot, 'edge_xdp'));
      const count = (): number => {
        const c = datapath.readCounters();
        let total = c.defaultAction.packets;
        for (const counter of c.rules.values()) total += counter.packets;
        return total;
      };
      const before = count();
      return {
        dropped: () => count() - before,
        remove: () => run('ip', '-n', nsRecv, 'link', 'set', 'dev', recvIf, 'xdpdrv', 'off'),
      };
    }
    case 'iptables':
      writeFileSync(file, iptablesText(flavour, list));
      restoreInRecv(file, 'iptables-legacy-restore');
      return { dropped: () => iptablesDropped(list.length), remove: flushNetfilter };
    case 'ipset':
      writeFileSync(file, ipsetText(flavour, list));
      restoreInRecv(file, 'ipset', 'restore');
      writeFileSync(file, `*filter\n:INPUT DROP [0:0]\n${ipsetRule(flavour)}\nCOMMIT\n`);
      restoreInRecv(file, 'iptables-legacy-restore');
      return { dropped: () => iptablesDropped(1), remove: flushNetfilter };
    case 'nft':
    case 'nft-set':
      writeFileSync(file, contender === 'nft' ? nftText(flavour, list) : nftSetText(flavour, list));
      inRecv('nft', '-f', file);
      return { dropped: nftDropped, remove: flushNetfilter };
  }
}

interface Sample {
  flavour: Flavour;
  rules: number;
  contender: Contender;
  /** Rules actually installed (edgeplane: at most 65,536). */
  installed: number;
  sentPps: number;
  reachedPps: number;
  droppedPps: number;
  deliveredPps: number;
  softirqCpu: number;
  /** Packets dropped per softirq CPU-second: what one receiving core could filter. */
  perSoftirqSecond: number;
  nsPerPacket: number;
}

async function measure(contender: Contender, flavour: Flavour, count: number, datapath: EbpfDatapath, mac: string): Promise<Sample> {
  const list = rules(flavour, count);
  const installed = await install(contender, flavour, list, datapath);
  try {
    const udp = (): number => {
      const snmp = inRecv('cat', '/proc/net/snmp').split('\n').filter((l) => l.startsWith('Udp:'));
      const names = (snmp[0] ?? '').split(/\s+/);
      const values = (snmp[1] ?? '').split(/\s+/).map(Number);
      return (values[names.indexOf('InDatagrams')] ?? 0) + (values[names.indexOf('NoPorts')] ?? 0);
    };
    const genBefore = linkStats(nsGen, genIf);
    const recvBefore = linkStats(nsRecv, recvIf);
    const udpBefore = udp();
    const cpuBefore = cpuTimes();
    const started = performance.now();
    flood(count, mac);
    await new Promise((resolve) => setTimeout(resolve, 100));
    const elapsed = (performance.now() - started - 100) / 1000;
    const cpuAfter = cpuTimes();
    const genAfter = linkStats(nsGen, genIf);
    const recvAfter = linkStats(nsRecv, recvIf);
    const delivered = udp() - udpBefore;
    let dropped = installed.dropped();
    const reached = recvAfter.rx - recvBefore.rx;
    // A policy drop with no rule (nft) or a set rule that never matched counts nowhere: use the
    // veth's receive count minus what the stack delivered.
    if (dropped === 0 && contender !== 'edgeplane') dropped = reached - delivered;
    const softirq = (cpuAfter.softirq - cpuBefore.softirq) / HZ;
    return {
      flavour,
      rules: count,
      contender,
      installed: contender === 'edgeplane' ? Math.min(count, EDGEPLANE_MAX) : count,
      sentPps: Math.round((genAfter.tx - genBefore.tx) / elapsed),
      reachedPps: Math.round(reached / elapsed),
      droppedPps: Math.round(dropped / elapsed),
      deliveredPps: Math.round(delivered / elapsed),
      softirqCpu: Number((softirq / elapsed).toFixed(3)),
      perSoftirqSecond: softirq > 0 ? Math.round(dropped / softirq) : NaN,
      nsPerPacket: dropped > 0 ? Number(((softirq * 1e9) / dropped).toFixed(1)) : NaN,
    };
  } finally {
    installed.remove();
  }
}

const median = (values: number[]): number => {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
};

const mount = mkdtempSync('/run/edgeplane-bench-nf-');
let mounted = false;
const samples: Sample[] = [];
const failures: string[] = [];
try {
  setUp();
  execFileSync('mount', ['-t', 'bpf', 'bpf', mount]);
  mounted = true;
  const datapath = await EbpfDatapath.open({ pinRoot: mount });
  try {
    const mac = recvMac();
    for (const flavour of ['multi', 'deny'] as const) {
      for (const count of sizes) {
        for (let rep = 0; rep < reps; rep++) {
          // Alternate the contenders; rotate the starting one per rep.
          const order = contenders[flavour].map((_, i, all) => all[(i + rep) % all.length] as Contender);
          for (const contender of order) {
            try {
              const sample = await measure(contender, flavour, count, datapath, mac);
              samples.push(sample);
              process.stderr.write(`${flavour} ${count} ${contender} rep ${rep}: ${sample.droppedPps} pps dropped, ${sample.nsPerPacket} ns/pkt softirq\n`);
            } catch (error) {
              const message = `${flavour} ${count} ${contender}: ${(error as Error).message.split('\n').slice(0, 3).join(' | ')}`;
              if (rep === 0) failures.push(message);
              process.stderr.write(`${message}\n`);
              flushNetfilter();
            }
          }
        }
      }
    }
  } finally {
    datapath.close();
  }
} finally {
  if (mounted) execFileSync('umount', [mount]);
  rmdirSync(mount);
  tearDown();
}

for (const flavour of ['multi', 'deny'] as const) {
  console.log(`\n${flavour === 'multi' ? '(a) multi-field rules (src /32, dst /24, udp, dport), match last' : '(b) source-CIDR deny list (/28), match last'}`);
  const header = ['rules', 'contender', 'installed', 'sent pps', 'dropped pps', 'delivered', 'softirq cpu', 'ns/pkt', 'pps/core'];
  console.log(header.map((h) => h.padStart(11)).join(' '));
  const rows: Record<string, number | string>[] = [];
  for (const count of sizes) {
    for (const contender of contenders[flavour]) {
      const of = samples.filter((s) => s.flavour === flavour && s.rules === count && s.contender === contender);
      if (of.length === 0) continue;
      const row = {
        rules: count,
        contender,
        installed: of[0]?.installed ?? 0,
        sentPps: median(of.map((s) => s.sentPps)),
        droppedPps: median(of.map((s) => s.droppedPps)),
        deliveredPps: median(of.map((s) => s.deliveredPps)),
        softirqCpu: median(of.map((s) => s.softirqCpu)),
        nsPerPacket: median(of.map((s) => s.nsPerPacket)),
        perSoftirqSecond: median(of.map((s) => s.perSoftirqSecond)),
        runs: of.length,
      };
      rows.push(row);
      console.log(
        [row.rules, row.contender, row.installed, row.sentPps, row.droppedPps, row.deliveredPps, row.softirqCpu, row.nsPerPacket, row.perSoftirqSecond].map((c) => String(c).padStart(11)).join(' '),
      );
    }
  }
  const get = (count: number, contender: Contender, field: 'perSoftirqSecond' | 'droppedPps'): number => Number(rows.find((r) => r.rules === count && r.contender === contender)?.[field] ?? NaN);
  const ratios: Record<string, number> = {};
  for (const other of contenders[flavour].filter((c) => c !== 'edgeplane')) {
    for (const count of sizes) ratios[`edgeplane/${other}@${count}`] = Number((get(count, 'edgeplane', 'perSoftirqSecond') / get(count, other, 'perSoftirqSecond')).toFixed(2));
  }
  ratios['edgeplane@100000/edgeplane@0'] = Number((get(100_000, 'edgeplane', 'perSoftirqSecond') / get(0, 'edgeplane', 'perSoftirqSecond')).toFixed(3));
  console.log(`ratios (pps per softirq core): ${Object.entries(ratios).map(([k, v]) => `${k} ${v}x`).join(', ')}`);
  console.log(JSON.stringify({ bench: 'netfilter', flavour, seconds, reps, edgeplaneMaxRules: EDGEPLANE_MAX, rows, ratios, failures: failures.filter((f) => f.startsWith(flavour)) }));
}
