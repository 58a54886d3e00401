// Summarizes a V8 .cpuprofile (node --cpu-prof): self time by function and by package, and
// inclusive time of functions whose name matches a filter. Used to say where bench/fleet.ts's
// time goes.
//   node --import=tsx bench/cpuprofile-top.ts FILE.cpuprofile [--top 25] [--match REGEX] [--from S] [--to S]
// --from/--to keep the samples taken between S seconds after the profile started and S seconds
// after (e.g. a fleet run's changes: the worker profile's file name holds its start time).
import { readFileSync } from 'node:fs';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
  startTime: number;
  endTime: number;
}

const [file, ...rest] = process.argv.slice(2);
if (!file) {
  process.stderr.write('usage: cpuprofile-top FILE.cpuprofile [--top N] [--match REGEX]\n');
  process.exit(2);
}
const opt = (name: string): string | undefined => {
  const i = rest.indexOf(name);
  return i >= 0 ? rest[i + 1] : undefined;
};
const top = Number(opt('--top') ?? 25);
const match = opt('--match');
const p = JSON.parse(readFileSync(file, 'utf8')) as Profile;
const byId = new Map(p.nodes.map((n) => [n.id, n]));
const parent = new Map<number, number>();
for (const n of p.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
// A sample's time is the sum of the deltas up to it (µs after startTime).
const fromUs = Number(opt('--from') ?? 0) * 1e6;
const toUs = Number(opt('--to') ?? Infinity) * 1e6;
let at = 0;
const kept = p.samples.map((_, i) => {
  at += p.timeDeltas[i] ?? 0;
  return at >= fromUs && at < toUs;
});
const selfUs = new Map<number, number>();
p.samples.forEach((id, i) => {
  if (kept[i]) selfUs.set(id, (selfUs.get(id) ?? 0) + (p.timeDeltas[i] ?? 0));
});
const total = [...selfUs.values()].reduce((s, x) => s + x, 0);

const pkg = (url: string): string => {
  if (!url) return '(native/vm)';
  const m = /node_modules\/((?:@[^/]+\/)?[^/]+)/.exec(url);
  if (m) return m[1]!;
  const s = /\/(services|packages|proto|bench)\/([^/]+)/.exec(url);
  if (s) return `${s[1]}/${s[2]}`;
  return url.startsWith('node:') ? 'node core' : url;
};
const label = (n: ProfileNode): string => `${n.callFrame.functionName || '(anonymous)'} ${n.callFrame.url.split('/').slice(-2).join('/')}:${n.callFrame.lineNumber + 1}`;

const fnSelf = new Map<string, number>();
const pkgSelf = new Map<string, number>();
for (const [id, us] of selfUs) {
  const n = byId.get(id)!;
  fnSelf.set(label(n), (fnSelf.get(label(n)) ?? 0) + us);
  pkgSelf.set(pkg(n.callFrame.url), (pkgSelf.get(pkg(n.callFrame.url)) ?? 0) + us);
}
const show = (title: string, m: Map<string, number>, k: number): void => {
  process.stdout.write(`\n${title}\n`);
  for (const [name, us] of [...m].sort((a, b) => b[1] - a[1]).slice(0, k)) process.stdout.write(`${(us / 1000).toFixed(0).padStart(8)} ms ${((us / total) * 100).toFixed(1).padStart(5)} %  ${name}\n`);
};
const slice = fromUs > 0 || toUs < Infinity ? ` (samples ${fromUs / 1e6}..${toUs / 1e6} s after the start)` : '';
process.stdout.write(`${file}: ${(total / 1000).toFixed(0)} ms sampled over ${((p.endTime - p.startTime) / 1e6).toFixed(1)} s${slice}\n`);
show('self time by package', pkgSelf, 15);
show('self time by function', fnSelf, top);
if (match) {
  // Inclusive time of each function matching the filter (a sample counts once per function).
  const re = new RegExp(match);
  const incl = new Map<string, number>();
  p.samples.forEach((id, i) => {
    if (!kept[i]) return;
    const seen = new Set<string>();
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      const l = label(byId.get(cur)!);
      if (!seen.has(l) && re.test(l)) {
        seen.add(l);
        incl.set(l, (incl.get(l) ?? 0) + (p.timeDeltas[i] ?? 0));
      }
    }
  });
  show(`inclusive time of functions matching /${match}/`, incl, top);
}
