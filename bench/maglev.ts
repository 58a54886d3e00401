// How long the agent takes to build Maglev lookup tables when a snapshot arrives (issue 14):
//   snapshot:  10,000 services x 10 backends at m = 1021 (the default size for 10), equal weights,
//              then the same with mixed weights 1..100;
//   large:     one service of 1,000 backends at m = 131071, equal and mixed weights;
//   skewed:    one service of 1,000 backends, one of weight 10,000 and the rest 1 (the case a
//              round-by-round weighted fill pays O(rounds x backends) for).
// Keys are built once (backendKey), outside the timing, as the agent would keep them with the
// service. Prints one JSON line per (case, round) and a summary: the median over rounds of the
// wall time and of the process's CPU time (user + system), in ms; on a shared machine the CPU
// time is the steadier figure. No kernel, no root.
//
//   node --import=tsx bench/maglev.ts [--rounds 5]
import { backendKey, buildMaglevTable, type MaglevBackend } from '@edgeplane/node-agent';

const arg = (name: string): string | undefined => {
  const i = process.argv.indexOf(name);
  return i < 0 ? undefined : process.argv[i + 1];
};
const rounds = Number(arg('--rounds') ?? 5);

const median = (values: number[]): number => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
};

// Service s, backend b: 10.(s >> 8).(s & 255).b : 8080 + b, so no two services share a backend.
const services = (count: number, backends: number, weight: (b: number) => number): MaglevBackend[][] =>
  Array.from({ length: count }, (_, s) =>
    Array.from({ length: backends }, (_, b) => ({ key: backendKey(`10.${s >> 8}.${s & 255}.${b & 255}`, 8080 + b), weight: weight(b) })),
  );
const large = (weight: (b: number) => number): MaglevBackend[][] => [Array.from({ length: 1000 }, (_, b) => ({ key: backendKey(`10.200.${b >> 8}.${b & 255}`, 80), weight: weight(b) }))];

const cases: { name: string; services: MaglevBackend[][]; m: number }[] = [
  { name: 'snapshot 10000x10 m=1021 equal', services: services(10_000, 10, () => 1), m: 1021 },
  { name: 'snapshot 10000x10 m=1021 mixed', services: services(10_000, 10, (b) => 1 + ((b * 37) % 100)), m: 1021 },
  { name: 'large 1x1000 m=131071 equal', services: large(() => 1), m: 131071 },
  { name: 'large 1x1000 m=131071 mixed', services: large((b) => 1 + ((b * 37) % 100)), m: 131071 },
  { name: 'skewed 1x1000 m=131071', services: large((b) => (b === 0 ? 10_000 : 1)), m: 131071 },
];

const wallMs: Record<string, number> = {};
const cpuMs: Record<string, number> = {};
for (const c of cases) {
  const wall: number[] = [];
  const cpu: number[] = [];
  let slots = 0;
  for (let round = 0; round < rounds; round++) {
    const start = process.hrtime.bigint();
    const startCpu = process.cpuUsage();
    for (const backends of c.services) slots += buildMaglevTable(backends, c.m).length;
    const used = process.cpuUsage(startCpu);
    wall.push(Number(process.hrtime.bigint() - start) / 1e6);
    cpu.push((used.user + used.system) / 1e3);
    console.log(JSON.stringify({ case: c.name, round, wallMs: Number((wall.at(-1) as number).toFixed(1)), cpuMs: Number((cpu.at(-1) as number).toFixed(1)) }));
  }
  wallMs[c.name] = Number(median(wall).toFixed(1));
  cpuMs[c.name] = Number(median(cpu).toFixed(1));
  if (slots !== rounds * c.services.length * c.m) throw new Error(`${c.name}: tables of the wrong size`);
}
console.log(JSON.stringify({ bench: 'maglev', rounds, medianWallMs: wallMs, medianCpuMs: cpuMs }));
