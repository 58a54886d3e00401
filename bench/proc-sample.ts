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
