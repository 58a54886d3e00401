// Process footprint from /proc, shared by the benchmarks that measure agents and controllers.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** Clock ticks per second, the unit of utime/stime in /proc/PID/stat. */
export const CLK_TCK = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** One reading of a process. */
export interface ProcSample {
  /** Wall time, ms since the epoch (high resolution). */
  at: number;
  rssKb: number;
  /** The anonymous part of VmRSS (RssAnon: the process's own memory; the rest is mostly the node binary's pages, shared and clean). */
  anonKb: number;
  /** utime + stime, in ticks. */
  ticks: number;
}

/** Reads VmRSS and utime+stime of `pid`. @throws if the process is gone. */
export function sampleProc(pid: number): ProcSample {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after "(comm)": state is field 3, utime 14, stime 15 (proc(5)).
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return { at: performance.timeOrigin + performance.now(), rssKb: Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? NaN), anonKb: Number(/RssAnon:\s+(\d+)/.exec(status)?.[1] ?? NaN), ticks: Number(f[11]) + Number(f[12]) };
}

/** One reading of the whole machine's CPU time (the first line of /proc/stat), in ticks. */
export interface MachineSample {
  /** Wall time, ms since the epoch (high resolution). */
  at: number;
  /** user + nice + system + irq + softirq + steal: every process, the kernel's own work and interrupts. */
  busyTicks: number;
  /** busyTicks + idle + iowait. */
  totalTicks: number;
}

/**
 * The times (ticks) of one line of /proc/stat: `cpu` for the whole machine, `cpuN` for CPU N; in
 * proc(5)'s order: user nice system idle iowait irq softirq steal (guest time is inside user and
 * nice). Empty when there is no such line.
 */
export function procStatCpu(name: string): number[] {
  const line = readFileSync('/proc/stat', 'utf8').split('\n').find((l) => l.startsWith(`${name} `)) ?? '';
  return line.trim().split(/\s+/).slice(1).map(Number);
}

/** Reads the machine's CPU time from /proc/stat. */
export function sampleMachine(): MachineSample {
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = procStatCpu('cpu');
  const busyTicks = user + nice + system + irq + softirq + steal;
  return { at: performance.timeOrigin + performance.now(), busyTicks, totalTicks: busyTicks + idle + iowait };
}

/** Between two readings: the machine's busy CPU time (ms) and the share of all its CPUs' time that was busy (%). */
export function machineBusy(a: MachineSample, b: MachineSample): { cpuMs: number; busyPct: number } {
  const busy = b.busyTicks - a.busyTicks;
  const total = b.totalTicks - a.totalTicks;
  return { cpuMs: (busy * 1000) / CLK_TCK, busyPct: total > 0 ? (100 * busy) / total : 0 };
}
