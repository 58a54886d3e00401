// Datapath benchmark: ns per packet through BPF_PROG_TEST_RUN (the kernel's own timing) for rule
// sets of 1, 1,000, 10,000 and 65,536 rules, IPv4 and IPv6, matching the first rule, the last
// rule, or nothing; each without a shadow candidate, and with one (issue 18; bpf/README.md,
// "Shadow classification"): the same rule set as candidate (every packet classified twice, the
// verdicts agree) and its opposite (every action and the default flipped: every packet differs,
// is counted as a would-be drop or allow and written as a sample). Goal: at most 1.5x the
// packet's cost while shadowing, nothing more without a candidate (compare the 'none' column with
// this benchmark on the commit before shadow classification). Prints a table and one JSON line;
// asserts nothing.
//   node --import=tsx bench/datapath.ts [--quick] [--sizes=1,1000]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmdirSync } from 'node:fs';
import { buildFrame, EbpfDatapath, type RuleSetSpec, type RuleSpec } from '@edgeplane/node-agent';

const quick = process.argv.includes('--quick');
const repeat = quick ? 100_000 : 1_000_000;
const sizesArg = process.argv.find((arg) => arg.startsWith('--sizes='));
const sizes = sizesArg === undefined ? [1, 1_000, 10_000, 65_536] : sizesArg.slice('--sizes='.length).split(',').map(Number);
/** The shadow candidates measured: none, the enforced rule set itself, its opposite. */
const shadows = ['none', 'same', 'opposite'] as const;
type Shadow = (typeof shadows)[number];

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

// Every action and the default flipped: each packet's verdict differs from `set`'s.
function opposite(set: RuleSetSpec): RuleSetSpec {
  return { rules: set.rules.map((rule) => ({ ...rule, action: rule.action === 'allow' ? 'deny' : 'allow' })), defaultAction: set.defaultAction === 'allow' ? 'deny' : 'allow' };
}

const source = (family: 4 | 6, i: number): string => (family === 4 ? `10.${i >> 8}.${i & 255}.7` : `2001:db8:${(i >> 8).toString(16)}:${(i & 255).toString(16)}::7`);

const mount = mkdtempSync('/run/edgeplane-bench-');
execFileSync('mount', ['-t', 'bpf', 'bpf', mount]);
const results: { rules: number; family: 4 | 6; match: string; program: string; shadow: Shadow; ns: number }[] = [];
// Wall time of EbpfDatapath.apply() (compile + table writes + switch) per rule count.
const applyMs: Record<number, number> = {};
try {
  const datapath = await EbpfDatapath.open({ pinRoot: mount });
  try {
    for (const count of sizes) {
      const enforced = ruleSet(count);
      const started = Date.now();
      await datapath.apply(enforced);
      applyMs[count] = Date.now() - started;
      for (const shadow of shadows) {
        if (shadow !== 'none') await datapath.setShadow(shadow === 'same' ? enforced : opposite(enforced), `bench:${shadow}`);
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
              results.push({ rules: count, family, match, program: program.name, shadow, ns });
            }
          }
        }
      }
      await datapath.setShadow(null);
      process.stderr.write(`${count} rules applied in ${applyMs[count]} ms\n`);
    }
  } finally {
    datapath.close();
  }
} finally {
  execFileSync('umount', [mount]);
  rmdirSync(mount);
}

// Columns: per program, ns without a candidate, then the ratio to it with the same rule set and
// with its opposite as candidate.
const header = ['rules', 'family', 'match', 'xdp ns', 'x same', 'x opp', 'tc ns', 'x same', 'x opp'];
console.log(header.map((h) => h.padStart(8)).join(' '));
const nsOf = (count: number, family: number, match: string, program: string, shadow: Shadow): number =>
  results.find((r) => r.rules === count && r.family === family && r.match === match && r.program === program && r.shadow === shadow)?.ns ?? NaN;
for (const count of sizes) {
  for (const family of [4, 6]) {
    for (const match of ['first', 'last', 'none']) {
      const cells = ['edge_xdp', 'edge_tc'].flatMap((program) => {
        const base = nsOf(count, family, match, program, 'none');
        return [base.toFixed(1), (nsOf(count, family, match, program, 'same') / base).toFixed(2), (nsOf(count, family, match, program, 'opposite') / base).toFixed(2)];
      });
      console.log([String(count), `v${family}`, match, ...cells].map((c) => c.padStart(8)).join(' '));
    }
  }
}
const unshadowed = results.filter((r) => r.shadow === 'none');
const worst = (count: number): number => Math.max(...unshadowed.filter((r) => r.rules === count).map((r) => r.ns));
const biggest = Math.max(...sizes);
const ratio = worst(biggest) / worst(Math.min(...sizes));
const perCase = unshadowed.filter((r) => r.rules === Math.min(...sizes)).map((r) => nsOf(biggest, r.family, r.match, r.program, 'none') / r.ns);
console.log(`${biggest.toLocaleString('en')} vs ${Math.min(...sizes)} rule(s): worst case ${ratio.toFixed(2)}x, per case max ${Math.max(...perCase).toFixed(2)}x (repeat ${repeat})`);
const shadowRatio = (shadow: Shadow): number => Math.max(...unshadowed.map((r) => nsOf(r.rules, r.family, r.match, r.program, shadow) / r.ns));
console.log(`shadowing, per case max vs no candidate: same rule set ${shadowRatio('same').toFixed(2)}x, opposite ${shadowRatio('opposite').toFixed(2)}x (goal: at most 1.5x)`);
console.log(`apply (compile + write + switch): ${sizes.map((count) => `${count} rules ${applyMs[count]} ms`).join(', ')}`);
console.log(JSON.stringify({ bench: 'datapath', repeat, sizes, ratio65536vs1: Number(ratio.toFixed(3)), shadowMax: { same: Number(shadowRatio('same').toFixed(3)), opposite: Number(shadowRatio('opposite').toFixed(3)) }, applyMs, results }));
