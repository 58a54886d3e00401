// Programming speed: the time from handing a rule set over to the filter enforcing it, for
// 10,000, 65,536 and 100,000 rules, edgeplane vs iptables-legacy-restore, nft -f and ipset
// restore (each inside a network namespace of its own making). Two flavours: (a) multi-field
// rules (src /32, dst /24, udp, dport) and (b) a source /28 deny list.
//
// edgeplane: EbpfDatapath.apply() (compile + table writes + the generation switch) followed by a
// probe frame through BPF_PROG_TEST_RUN on the program the XDP hook runs, repeated until it
// drops (it always does on the first probe: apply returns after the switch). Netfilter tools:
// wall time of the process, which returns after the kernel committed the table (iptables-restore
// replaces the table in one setsockopt; nft -f is one netlink transaction; ipset restore fills a
// new set that is then swapped in), and a probe is not needed for them to be atomic. Contenders
// run alternately, reps times, in one invocation; medians are reported. Asserts nothing.
//   node --import=tsx bench/programming.ts [--quick]
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, rmdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { buildFrame, EbpfDatapath, type RuleSetSpec, type RuleSpec } from '@edgeplane/node-agent';

const quick = process.argv.includes('--quick');
const reps = quick ? 1 : 3;
const sizes = [10_000, 65_536, 100_000];
const EDGEPLANE_MAX = 65_536;
const ns = `epprog-${process.pid.toString(36)}`;
const work = mkdtempSync(join(tmpdir(), 'ep-bench-prog-'));

type Flavour = 'multi' | 'deny';
type Contender = 'edgeplane' | 'iptables-restore' | 'nft -f' | 'ipset restore' | 'nft set';
const contenders: Contender[] = ['edgeplane', 'iptables-restore', 'nft -f', 'ipset restore', 'nft set'];

const base = (i: number): number => (10 << 24) + i * 16;
const ip = (n: number): string => `${n >>> 24}.${(n >>> 16) & 255}.${(n >>> 8) & 255}.${n & 255}`;
// salt changes every rule's port (multi) or the last octet bit pattern (deny) so that each
// apply is a real change, not a no-op or a rollback to the idle generation.
const rules = (flavour: Flavour, count: number, salt: number): { src: string; dport: number }[] =>
  Array.from({ length: count }, (_, i) => ({
    src: flavour === 'multi' ? `${ip(base(i) + 1)}/32` : `${ip(base(i))}/28`,
    dport: 1_000 + ((i + salt * 7) % 50_000),
  }));

function edgeplaneSpec(flavour: Flavour, list: { src: string; dport: number }[]): RuleSetSpec {
  const specs: RuleSpec[] = list.map((rule, i) =>
    flavour === 'multi'
      ? { id: i, srcCidrs: [rule.src], dstCidrs: ['10.99.0.0/24'], protocol: 'udp', dstPorts: [{ from: rule.dport, to: rule.dport }], action: 'deny' }
      : { id: i, srcCidrs: [rule.src], dstCidrs: [], protocol: 'any', dstPorts: [], action: 'deny' },
  );
  return { rules: specs, defaultAction: 'allow' };
}

function text(contender: Exclude<Contender, 'edgeplane'>, flavour: Flavour, list: { src: string; dport: number }[]): string {
  switch (contender) {
    case 'iptables-restore': {
      const lines = ['*filter', ':INPUT ACCEPT [0:0]', ':FORWARD ACCEPT [0:0]', ':OUTPUT ACCEPT [0:0]'];
      for (const r of list) lines.push(flavour === 'multi' ? `-A INPUT -s ${r.src} -d 10.99.0.0/24 -p udp -m udp --dport ${r.dport} -j DROP` : `-A INPUT -s ${r.src} -j DROP`);
      return `${lines.join('\n')}\nCOMMIT\n`;
    }
    case 'nft -f': {
      const body = list.map((r) => (flavour === 'multi' ? `    ip saddr ${r.src} ip daddr 10.99.0.0/24 udp dport ${r.dport} drop` : `    ip saddr ${r.src} drop`));
      return `flush ruleset\ntable ip bench {\n  chain input {\n    type filter hook input priority 0; policy accept;\n${body.join('\n')}\n  }\n}\n`;
    }
    case 'nft set': {
      const type = flavour === 'multi' ? 'ipv4_addr . ipv4_addr . inet_service' : 'ipv4_addr';
      const elements = list.map((r) => (flavour === 'multi' ? `${r.src.replace('/32', '')} . 10.99.0.0/24 . ${r.dport}` : r.src));
      const match = flavour === 'multi' ? 'meta l4proto udp ip saddr . ip daddr . udp dport @rules' : 'ip saddr @rules';
      return `flush ruleset\ntable ip bench {\n  set rules {\n    type ${type}; flags interval;\n    elements = { ${elements.join(', ')} }\n  }\n  chain input {\n    type filter hook input priority 0; policy accept;\n    ${match} drop\n  }\n}\n`;
    }
    case 'ipset restore': {
      // Fill a new set, swap it with the live one (atomic), drop the old one.
      const type = flavour === 'multi' ? 'hash:net,port,net' : 'hash:net';
      const lines = [`create next ${type} family inet hashsize 65536 maxelem 262144`];
      for (const r of list) lines.push(flavour === 'multi' ? `add next ${r.src.replace('/32', '')},udp:${r.dport},10.99.0.0/24` : `add next ${r.src}`);
      lines.push('swap next live', 'destroy next');
      return `${lines.join('\n')}\n`;
    }
  }
}

const inNs = (input: Buffer | undefined, ...command: string[]): void => {
  execFileSync('ip', ['netns', 'exec', ns, ...command], { input, stdio: ['pipe', 'ignore', 'pipe'], maxBuffer: 1 << 28 });
};

interface Sample {
  flavour: Flavour;
  rules: number;
  contender: Contender;
  installed: number;
  ms: number;
}

async function once(contender: Contender, flavour: Flavour, count: number, salt: number, datapath: EbpfDatapath): Promise<Sample> {
  if (contender === 'edgeplane') {
    const installed = Math.min(count, EDGEPLANE_MAX);
    const list = rules(flavour, installed, salt);
    const spec = edgeplaneSpec(flavour, list);
    const last = list[list.length - 1] as { src: string; dport: number };
    const probe = buildFrame({ src: ip(base(installed - 1) + 1), dst: '10.99.0.2', protocol: 'udp', dstPort: last.dport });
    const started = performance.now();
    await datapath.apply(spec);
    // XDP_DROP = 1: the last rule is enforced. apply() returns after the switch, so the first
    // probe drops; a few misses in a row would mean the probe is wrong.
    for (let tries = 0; datapath.xdpProgram.testRun({ data: probe, repeat: 1 }).retval !== 1; tries++) {
      if (tries > 100) throw new Error('probe not dropped after apply');
    }
    return { flavour, rules: count, contender, installed, ms: performance.now() - started };
  }
  const list = rules(flavour, count, salt);
  const file = join(work, 'rules.txt');
  writeFileSync(file, text(contender, flavour, list));
  const input = readFileSync(file);
  const command =
    contender === 'iptables-restore' ? ['iptables-legacy-restore'] : contender === 'ipset restore' ? ['ipset', 'restore'] : ['nft', '-f', '-'];
  const started = performance.now();
  inNs(input, ...command);
  return { flavour, rules: count, contender, installed: count, ms: performance.now() - started };
}

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
};

const mount = mkdtempSync('/run/edgeplane-bench-prog-');
let mounted = false;
const samples: Sample[] = [];
const failures: string[] = [];
try {
  execFileSync('ip', ['netns', 'add', ns]);
  execFileSync('mount', ['-t', 'bpf', 'bpf', mount]);
  mounted = true;
  const datapath = await EbpfDatapath.open({ pinRoot: mount });
  try {
    let salt = 0;
    for (const flavour of ['multi', 'deny'] as const) {
      // ipset swap needs a live set of the same type.
      spawnSync('ip', ['netns', 'exec', ns, 'ipset', 'destroy']);
      spawnSync('ip', ['netns', 'exec', ns, 'ipset', 'create', 'live', flavour === 'multi' ? 'hash:net,port,net' : 'hash:net', 'family', 'inet']);
      for (const count of sizes) {
        for (let rep = 0; rep < reps; rep++) {
          for (const contender of contenders.map((_, i, all) => all[(i + rep) % all.length] as Contender)) {
            salt++;
            try {
              const sample = await once(contender, flavour, count, salt, datapath);
              samples.push(sample);
              process.stderr.write(`${flavour} ${count} ${contender}: ${sample.ms.toFixed(0)} ms\n`);
            } catch (error) {
              const message = `${flavour} ${count} ${contender}: ${(error as Error).message.split('\n').slice(0, 2).join(' | ')}`;
              if (rep === 0) failures.push(message);
              process.stderr.write(`${message}\n`);
            }
          }
        }
      }
      spawnSync('ip', ['netns', 'exec', ns, 'nft', 'flush', 'ruleset']);
      spawnSync('ip', ['netns', 'exec', ns, 'iptables-legacy', '-F']);
    }
  } finally {
    datapath.close();
  }
} finally {
  if (mounted) execFileSync('umount', [mount]);
  rmdirSync(mount);
  spawnSync('ip', ['netns', 'del', ns]);
  rmSync(work, { recursive: true, force: true });
}

for (const flavour of ['multi', 'deny'] as const) {
  console.log(`\n${flavour === 'multi' ? '(a) multi-field rules' : '(b) source /28 deny list'}: ms from hand-over to enforcement (median of ${reps})`);
  console.log(['rules', ...contenders].map((h) => h.padStart(17)).join(' '));
  const rows: { rules: number; contender: Contender; installed: number; ms: number; runs: number }[] = [];
  for (const count of sizes) {
    const cells = contenders.map((contender) => {
      const of = samples.filter((s) => s.flavour === flavour && s.rules === count && s.contender === contender);
      if (of.length === 0) return 'failed';
      const ms = median(of.map((s) => s.ms));
      const installed = of[0]?.installed ?? count;
      rows.push({ rules: count, contender, installed, ms: Number(ms.toFixed(1)), runs: of.length });
      return installed === count ? ms.toFixed(0) : `${ms.toFixed(0)} (${installed})`;
    });
    console.log([String(count), ...cells].map((c) => c.padStart(17)).join(' '));
  }
  const edge = rows.find((r) => r.rules === 65_536 && r.contender === 'edgeplane')?.ms ?? NaN;
  const ratios = Object.fromEntries(
    contenders.filter((c) => c !== 'edgeplane').map((c) => [`${c}@65536/edgeplane@65536`, Number(((rows.find((r) => r.rules === 65_536 && r.contender === c)?.ms ?? NaN) / edge).toFixed(2))]),
  );
  console.log(`ratios: ${Object.entries(ratios).map(([k, v]) => `${k} ${v}x`).join(', ')}`);
  console.log(JSON.stringify({ bench: 'programming', flavour, reps, edgeplaneMaxRules: EDGEPLANE_MAX, rows, ratios, failures: failures.filter((f) => f.startsWith(flavour)) }));
}
