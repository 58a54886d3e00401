// Datapath benchmark: ns per packet through BPF_PROG_TEST_RUN (the kernel's own timing) for rule
// sets of 1, 1,000, 10,000 and 65,536 rules, IPv4 and IPv6, matching the first rule, the last
// rule, or nothing; each without a shadow candidate, and with one (issue 18; bpf/README.md,
// "Shadow classification"): the same rule set as candidate (every packet classified by both, the
// verdicts agree), its opposite (every action and the default flipped: every packet differs, is
// counted as a would-be drop or allow and written as a sample) and one rule changed (the middle
// rule's port: a staged change as a rollout makes it; at 65,536 rules the union of both sets
// exceeds the 65,536-bit vector, so there the candidate is classified apart, twice).
// Goal: at most 1.5x the packet's cost while shadowing, nothing more without a candidate (compare
// the 'none' column with this benchmark on the commit before shadow classification).
// Each candidate lives in a datapath of its own (same enforced rule set), and each case is timed
// in rounds that take every datapath in turn (the median of the rounds), so a slow moment of the
// machine weighs on all columns alike. Prints a table and one JSON line; asserts nothing.
//   node --import=tsx bench/datapath.ts [--quick] [--sizes=1,1000] [--rounds=N]
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { buildFrame, EbpfDatapath, type RuleSetSpec, type RuleSpec } from '@edgeplane/node-agent';

const quick = process.argv.includes('--quick');
const repeat = quick ? 50_000 : 500_000;
const argOf = (name: string): string | undefined => process.argv.find((arg) => arg.startsWith(`--${name}=`))?.slice(name.length + 3);
const sizes = argOf('sizes')?.split(',').map(Number) ?? [1, 1_000, 10_000, 65_536];
const rounds = Number(argOf('rounds') ?? (quick ? 7 : 11));
/** The shadow candidates measured: none, the enforced rule set itself, its opposite, one rule changed. */
const shadows = ['none', 'same', 'opposite', 'changed'] as const;
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

// The middle rule replaced by one for port 8443 (a new id): a one-rule change.
function changed(set: RuleSetSpec): RuleSetSpec {
  const middle = set.rules.length >> 1;
  return { ...set, rules: set.rules.map((rule, i) => (i === middle ? { ...rule, id: 1_000_000, dstPorts: [{ from: 8443, to: 8443 }] } : rule)) };
}

const candidates: Record<Exclude<Shadow, 'none'>, (set: RuleSetSpec) => RuleSetSpec> = { same: (set) => set, opposite, changed };

const source = (family: 4 | 6, i: number): string => (family === 4 ? `10.${i >> 8}.${i & 255}.7` : `2001:db8:${(i >> 8).toString(16)}:${(i & 255).toString(16)}::7`);
const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[sorted.length >> 1] as number;
};

const mount = mkdtempSync('/run/edgeplane-bench-');
execFileSync('mount', ['-t', 'bpf', 'bpf', mount]);
const results: { rules: number; family: 4 | 6; match: string; program: string; shadow: Shadow; ns: number }[] = [];
// Wall time of EbpfDatapath.apply() (compile + table writes + switch) per rule count.
const applyMs: Record<number, number> = {};
try {
  const datapaths = new Map<Shadow, EbpfDatapath>();
  try {
    for (const shadow of shadows) {
      const pinRoot = join(mount, shadow);
      mkdirSync(pinRoot);
      datapaths.set(shadow, await EbpfDatapath.open({ pinRoot, rateLimitEntries: 1024, ctEntries: 1024, ctNewEntries: 1024 }));
    }
    for (const count of sizes) {
      const enforced = ruleSet(count);
      for (const [shadow, datapath] of datapaths) {
        const started = Date.now();
        await datapath.apply(enforced);
        if (shadow === 'none') applyMs[count] = Date.now() - started;
        if (shadow !== 'none') await datapath.setShadow(candidates[shadow](enforced), `bench:${shadow}`);
      }
      for (const family of [4, 6] as const) {
        const cases = {
          first: buildFrame({ src: source(family, 0), dst: family === 4 ? '192.0.2.1' : '2001:db8:ffff::1', protocol: 'tcp', dstPort: 443 }),
          last: buildFrame({ src: source(family, count - 1), dst: family === 4 ? '192.0.2.1' : '2001:db8:ffff::1', protocol: 'tcp', dstPort: 443 }),
          none: buildFrame({ src: family === 4 ? '11.0.0.1' : '2001:db9::1', dst: family === 4 ? '192.0.2.1' : '2001:db8:ffff::1', protocol: 'tcp', dstPort: 443 }),
        };
        for (const [match, frame] of Object.entries(cases)) {
          for (const programName of ['edge_xdp', 'edge_tc'] as const) {
            const program = (datapath: EbpfDatapath) => (programName === 'edge_xdp' ? datapath.xdpProgram : datapath.tcProgram);
            const timings = new Map<Shadow, number[]>(shadows.map((shadow) => [shadow, []]));
            for (const datapath of datapaths.values()) program(datapath).testRun({ data: frame, repeat: 1000 });
            for (let round = 0; round < rounds; round++) {
              // Each round takes the datapaths in a different order.
              for (let k = 0; k < shadows.length; k++) {
                const shadow = shadows[(round + k) % shadows.length] as Shadow;
                timings.get(shadow)?.push(program(datapaths.get(shadow) as EbpfDatapath).testRun({ data: frame, repeat }).durationNs);
              }
            }
            for (const [shadow, ns] of timings) results.push({ rules: count, family, match, program: programName, shadow, ns: median(ns) });
          }
        }
      }
      for (const datapath of datapaths.values()) await datapath.setShadow(null);
      process.stderr.write(`${count} rules applied in ${applyMs[count]} ms\n`);
    }
  } finally {
    for (const datapath of datapaths.values()) datapath.close();
  }
} finally {
  execFileSync('umount', [mount]);
  rmdirSync(mount);
}

// Columns: per program, ns without a candidate, then the ratio to it with each candidate.
const header = ['rules', 'family', 'match', 'xdp ns', 'x same', 'x opp', 'x chg', 'tc ns', 'x same', 'x opp', 'x chg'];
console.log(header.map((h) => h.padStart(8)).join(' '));
const nsOf = (count: number, family: number, match: string, program: string, shadow: Shadow): number =>
  results.find((r) => r.rules === count && r.family === family && r.match === match && r.program === program && r.shadow === shadow)?.ns ?? NaN;
for (const count of sizes) {
  for (const family of [4, 6]) {
    for (const match of ['first', 'last', 'none']) {
      const cells = ['edge_xdp', 'edge_tc'].flatMap((program) => {
        const base = nsOf(count, family, match, program, 'none');
        return [base.toFixed(1), ...(['same', 'opposite', 'changed'] as const).map((shadow) => (nsOf(count, family, match, program, shadow) / base).toFixed(2))];
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
console.log(`${biggest.toLocaleString('en')} vs ${Math.min(...sizes)} rule(s): worst case ${ratio.toFixed(2)}x, per case max ${Math.max(...perCase).toFixed(2)}x (repeat ${repeat}, median of ${rounds} rounds)`);
const shadowRatio = (shadow: Shadow, fits = true): number =>
  Math.max(...unshadowed.filter((r) => !fits || r.rules < 65_536 || shadow !== 'changed').map((r) => nsOf(r.rules, r.family, r.match, r.program, shadow) / r.ns));
console.log(
  `shadowing, per case max vs no candidate: same rule set ${shadowRatio('same').toFixed(2)}x, opposite ${shadowRatio('opposite').toFixed(2)}x, one rule changed ${shadowRatio('changed').toFixed(2)}x (below 65,536 rules; ${shadowRatio('changed', false).toFixed(2)}x with 65,536, classified twice) (goal: at most 1.5x)`,
);
console.log(`apply (compile + write + switch): ${sizes.map((count) => `${count} rules ${applyMs[count]} ms`).join(', ')}`);
console.log(
  JSON.stringify({
    bench: 'datapath',
    repeat,
    rounds,
    sizes,
    ratio65536vs1: Number(ratio.toFixed(3)),
    shadowMax: { same: Number(shadowRatio('same').toFixed(3)), opposite: Number(shadowRatio('opposite').toFixed(3)), changed: Number(shadowRatio('changed').toFixed(3)), changedAll: Number(shadowRatio('changed', false).toFixed(3)) },
    applyMs,
    results,
  }),
);
