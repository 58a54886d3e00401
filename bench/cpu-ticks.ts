// CPU accounting the connection benchmarks share (bench/conntrack.ts, bench/lb.ts): softirq time
// of one CPU, the run time of kernel threads (ksoftirqd, kworkers) from /proc, and the median
// the tables print.
import { readdirSync, readFileSync } from 'node:fs';
import { CLK_TCK, procStatCpu } from './proc-sample.js';

/** USER_HZ: the unit of /proc/stat and /proc/PID/stat times. */
export const HZ = CLK_TCK;

/** Softirq jiffies of one CPU from /proc/stat (veth receives in softirq on the sending CPU). */
export function softirqJiffies(cpu: number): number {
  return procStatCpu(`cpu${cpu}`)[6] ?? 0;
}

/** utime+stime (ticks) by pid of the threads whose comm matches. */
export function threadTicksByPid(match: (comm: string) => boolean): Map<string, number> {
  const ticks = new Map<string, number>();
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const comm = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
      if (!match(comm)) continue;
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks.set(pid, Number(f[11]) + Number(f[12]));
    } catch {
      // exited
    }
  }
  return ticks;
}

/** Ticks the threads alive at both reads spent between them (kworkers come and go). */
export function ticksBetween(before: Map<string, number>, after: Map<string, number>): number {
  let total = 0;
  for (const [pid, ticks] of after) {
    const was = before.get(pid);
    if (was !== undefined) total += ticks - was;
  }
  return total;
}

/** The median of the values that are numbers (NaN when none is). */
export function median(values: number[]): number {
  const sorted = values.filter((v) => !Number.isNaN(v)).sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const mid = sorted.length >> 1;
  return sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
}
