// Connection-table garbage collection: the cost of one ep_ct_sweep run (BPF_PROG_TYPE_SYSCALL,
// bpf_for_each_map_elem over ep_ct, ep_ct_new and ep_ct4) with 1,000,000 live entries in ep_ct
// (--table=ct) or in ep_ct4 (--table=ct4: IPv4 flows, where layout 6 keeps them; ep_ct4 of twice
// as many slots, filled as the datapath places flows), and with a share of them expired; plus an
// occupancy read at that size. The steady-state cost is one run per ConntrackSweeper interval
// (default 10 s). Prints a table and one JSON line; asserts nothing. Needs root (CAP_BPF) and
// about 300 MB of kernel memory.
//   node --import=tsx bench/conntrack-sweep.ts [--entries=1000000] [--interval-ms=10000] [--table=ct|ct4]
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmdirSync } from 'node:fs';
import { join } from 'node:path';
import { BpfMap, encode } from 'libbpf-ts';
import { EbpfDatapath, epCtEntry, epCtKey, nextSweepDelay, NO_CT_NAT } from '@edgeplane/node-agent';
import { ConntrackAccess } from './conntrack-access.js';

const arg = (name: string, fallback: number): number => Number(process.argv.find((a) => a.startsWith(`--${name}=`))?.split('=')[1] ?? fallback);
const entries = arg('entries', 1_000_000);
const intervalMs = arg('interval-ms', 10_000);
const budget = 65_536;
const ct4 = process.argv.includes('--table=ct4');

const pinRoot = mkdtempSync('/run/edgeplane-bench-ct-');
execFileSync('mount', ['-t', 'bpf', 'bpf', pinRoot]);
const datapath = await EbpfDatapath.open({ pinRoot, ctEntries: entries, ...(ct4 ? { ct4Slots: 2 ** Math.ceil(Math.log2(2 * entries)) } : {}) });
const table = BpfMap.openPinned(join(pinRoot, 'ep_ct'));
const access = new ConntrackAccess(datapath);

try {
  /** ep_ct4: the flows [0, count) written afresh (the table emptied first), the first `expired` past their deadline. */
  const fill4 = (count: number, expired: number): void => {
    const source = (n: number): { src: string; sport: number } => ({ src: `10.${(n >> 16) & 255}.${(n >> 8) & 255}.${n & 255}`, sport: 1024 + (n % 60_000) });
    access.clear();
    access.fill(0, count, { ...source(0), dst: '192.0.2.1', dport: 53 }, source, expired);
  };
  /** Writes `count` entries starting at flow `first`; `expired` of them (the first ones) already past their deadline. */
  const fill = (first: number, count: number, expired: number): void => {
    if (ct4) return fill4(entries, expired); // the whole table again, its first `expired` flows past their deadline
    const now = process.hrtime.bigint();
    const chunk = 50_000;
    for (let base = 0; base < count; base += chunk) {
      const keys: Uint8Array[] = [];
      const values: Uint8Array[] = [];
      for (let i = base; i < Math.min(count, base + chunk); i++) {
        const n = first + i;
        const src = new Uint8Array(16);
        src.set([10, (n >> 16) & 255, (n >> 8) & 255, n & 255]);
        const dst = new Uint8Array(16);
        dst.set([192, 0, 2, 1]);
        // 10.x sorts before 192.0.2.1: the tuple is already its flow's key (side a = src, no EP_CT_F_ORIG_B).
        keys.push(encode(epCtKey, { family: 4, proto: 17, pad: 0, sport: 1024 + (n % 60_000), dport: 53, src, dst }));
        const expires = i < expired ? now - 1n : now + 3_600_000_000_000n;
        values.push(encode(epCtEntry, { expiresNs: expires, createdNs: now, packets: [1n, 1n], bytes: [64n, 64n], ruleId: 1, epoch: 1, state: 7, flags: 1, pad0: 0, pad1: 0, nat: NO_CT_NAT }));
      }
      table.setBatch(keys, values);
    }
  };
  // Wall time, and CPU time of this process (the syscall runs the program in our context): on a
  // shared machine the wall time includes waiting for a core, the CPU time does not.
  const timed = <T>(fn: () => T): { ms: number; cpuMs: number; result: T } => {
    const cpu = process.cpuUsage();
    const start = process.hrtime.bigint();
    const result = fn();
    const used = process.cpuUsage(cpu);
    return { ms: Number(process.hrtime.bigint() - start) / 1e6, cpuMs: (used.user + used.system) / 1000, result };
  };
  const median = (xs: number[]): number => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)] as number;

  fill(0, entries, 0);
  const live = timed(() => datapath.readConntrackOccupancy());
  const steady: number[] = [];
  const steadyCpu: number[] = [];
  for (let i = 0; i < 7; i++) {
    const run = timed(() => datapath.sweepConntrack(budget));
    steady.push(run.ms);
    steadyCpu.push(run.cpuMs);
  }
  const steadyMs = median(steady);
  const steadyCpuMs = median(steadyCpu);

  // A tenth of the table expires at once: runs with the full budget until it is gone.
  const expiredCount = Math.floor(entries / 10);
  fill(0, expiredCount, expiredCount);
  const drain: { ms: number; cpuMs: number; deleted: number }[] = [];
  for (;;) {
    const run = timed(() => datapath.sweepConntrack(budget));
    drain.push({ ms: run.ms, cpuMs: run.cpuMs, deleted: run.result });
    if (run.result < budget) break;
  }
  const after = datapath.readConntrackOccupancy();

  const sharePercent = (steadyCpuMs / intervalMs) * 100;
  // ConntrackSweeper's defaults: at least 10 s apart, and at most 0.5 % of a core by wall time.
  const pace = { intervalMs: 10_000, busyIntervalMs: 100, maxCpuShare: 0.005, busyCpuShare: 0.05 };
  const adaptiveDelayMs = nextSweepDelay({ ms: steadyMs, full: false, pressure: false }, pace);
  const adaptivePercent = (steadyCpuMs / adaptiveDelayMs) * 100;
  console.log(`${ct4 ? 'ep_ct4 flows' : 'ep_ct entries'}:                 ${entries.toLocaleString('en')} live (occupancy read ${live.ms.toFixed(0)} ms: ${JSON.stringify(live.result)})`);
  console.log(`sweep, nothing expired:        ${steadyCpuMs.toFixed(2)} ms CPU, ${steadyMs.toFixed(2)} ms wall per run (medians of 7; CPU ${steadyCpu.map((ms) => ms.toFixed(1)).join(', ')})`);
  console.log(`steady state, one run / ${intervalMs / 1000} s: ${sharePercent.toFixed(3)} % of one core (CPU time)`);
  console.log(`steady state, ConntrackSweeper pace: one run / ${(adaptiveDelayMs / 1000).toFixed(1)} s: ${adaptivePercent.toFixed(3)} % of one core (CPU time)`);
  console.log(`sweep, ${expiredCount.toLocaleString('en')} expired: ${drain.map((run) => `${run.deleted} in ${run.cpuMs.toFixed(1)} ms CPU`).join(', ')}; left ${JSON.stringify(after)}`);
  console.log(JSON.stringify({ bench: 'conntrack-sweep', table: ct4 ? 'ep_ct4' : 'ep_ct', entries, budget, intervalMs, steadyMs, steadyCpuMs, sharePercent, adaptiveDelayMs, adaptivePercent, occupancyReadMs: live.ms, drain }));
} finally {
  access.close();
  table.close();
  datapath.close();
  datapath.unpin();
  execFileSync('umount', [pinRoot]);
  rmdirSync(pinRoot);
}
