// Datapath benchmark: ns per packet through BPF_PROG_TEST_RUN (the kernel's own timing) for rule
// sets of 1, 1,000, 10,000 and 65,536 rules, IPv4 and IPv6, matching the first rule, the last
// rule, or nothing. Prints a table and one JSON line; asserts nothing.
//   node --import=tsx bench/datapath.ts [--quick]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmdirSync } from 'node:fs';
import { buildFrame, EbpfDatapath, type RuleSetSpec, type RuleSpec } from '@edgeplane/node-agent';

const quick = process.argv.includes('--quick');
const repeat = quick ? 100_000 : 1_000_000;
const sizes = [1, 1_000, 10_000, 65_536];

// Rule i: TCP to port 443 from a distinct /24 (IPv4) or /120 (IPv6) source; the last rule of a
// set is also the only one matching its own source, so "last" walks the whole index.
function ruleSet(count: number): RuleSetSpec {
  const rules: RuleSpec[] = [];
  for (let i = 0; i < count; i++) {
    rules.push({
      id: i,
      srcCidrs: [`10.${i >> 8}.${i & 255}.0/24`, `2001:db8:${(i >> 8).toString(16)}:${(i & 255).toString(16)}::/120`],
      dstCidrs: [],
      protocol: 'tcp',
      dstPorts: [{ from: 443, to: 443 }],
      action: i % 2 === 0 ? 'allow' : 'deny',
    });
  }
  return { rules, defaultAction: 'allow' };
}

const source = (family: 4 | 6, i: number): string => (family === 4 ? `10.${i >> 8}.${i & 255}.7` : `2001:db8:${(i >> 8).toString(16)}:${(i & 255).toString(16)}::7`);

const mount = mkdtempSync('/run/edgeplane-bench-');
execFileSync('mount', ['-t', 'bpf', 'bpf', mount]);
const results: { rules: number; family: 4 | 6; match: string; program: string; ns: number }[] = [];
// Wall time of EbpfDatapath.apply() (compile + table writes + switch) per rule count.
const applyMs: Record<number, number> = {};
try {
  const datapath = await EbpfDatapath.open({ pinRoot: mount });
  try {
    for (const count of sizes) {
      const started = Date.now();
      await datapath.apply(ruleSet(count));
      applyMs[count] = Date.now() - started;
      for (const family of [4, 6] as const) {
        const cases = {
          first: buildFrame({ src: source(family, 0), dst: family === 4 ? '192.0.2.1' : '2001:db8:ffff::1', protocol: 'tcp', dstPort: 443 }),
          last: buildFrame({ src: source(family, count - 1), dst: family === 4 ? '192.0.2.1' : '2001:db8:ffff::1', protocol: 'tcp', dstPort: 443 }),
          none: buildFrame({ src: family === 4 ? '11.0.0.1' : '2001:db9::1', dst: family === 4 ? '192.0.2.1' : '2001:db8:ffff::1', protocol: 'tcp', dstPort: 443 }),
        };
        for (const [match, frame] of Object.entries(cases)) {
          for (const program of [datapath.xdpProgram, datapath.tcProgram]) {
            program.testRun({ data: frame, repeat: 1000 });
            const ns = program.testRun({ data: frame, repeat }).durationNs;
            results.push({ rules: count, family, match, program: program.name, ns });
          }
        }
      }
      process.stderr.write(`${count} rules applied in ${applyMs[count]} ms\n`);
    }
  } finally {
    datapath.close();
  }
} finally {
  execFileSync('umount', [mount]);
  rmdirSync(mount);
}

const header = ['rules', 'family', 'match', 'xdp ns', 'tc ns'];
console.log(header.map((h) => h.padStart(8)).join(' '));
for (const count of sizes) {
  for (const family of [4, 6]) {
    for (const match of ['first', 'last', 'none']) {
      const of = (program: string): string => (results.find((r) => r.rules === count && r.family === family && r.match === match && r.program === program)?.ns ?? NaN).toFixed(1);
      console.log([String(count), `v${family}`, match, of('edge_xdp'), of('edge_tc')].map((c) => c.padStart(8)).join(' '));
    }
  }
}
const worst = (count: number): number => Math.max(...results.filter((r) => r.rules === count).map((r) => r.ns));
const ratio = worst(65_536) / worst(1);
const perCase = results.filter((r) => r.rules === 1).map((r) => {
  const big = results.find((b) => b.rules === 65_536 && b.family === r.family && b.match === r.match && b.program === r.program);
  return (big?.ns ?? NaN) / r.ns;
});
console.log(`65,536 vs 1 rule: worst case ${ratio.toFixed(2)}x, per case max ${Math.max(...perCase).toFixed(2)}x (repeat ${repeat})`);
console.log(`apply (compile + write + switch): ${sizes.map((count) => `${count} rules ${applyMs[count]} ms`).join(', ')}`);
console.log(JSON.stringify({ bench: 'datapath', repeat, ratio65536vs1: Number(ratio.toFixed(3)), applyMs, results }));
