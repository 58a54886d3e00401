// Where one CPU's time goes while a load runs, from perf's cpu-clock samples with call chains:
// netfilter's hooks, edgeplane's programs, veth's XDP copy. Shared by bench/conntrack.ts and
// bench/lb.ts, which report a filter's or a load balancer's own CPU beside the whole path's.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, openSync, readSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';

/** CPU time (ms) perf's cpu-clock samples of one CPU put in each place. */
export interface FilterCpu {
  /** Every sample of the CPU. */
  totalMs: number;
  /** Samples under nf_hook_slow: every netfilter hook (conntrack in/confirm, nft or iptables chains, NAT, IPVS). */
  netfilterMs: number;
  /** Samples in edgeplane's JITed programs (edge_xdp, edge_tc_egress, their subprograms) and the helpers they call. */
  bpfMs: number;
  /** Samples in veth_xdp_rcv_skb outside the program: veth turning an skb into an xdp_buff (it copies; a NIC driver runs XDP before any skb). */
  vethXdpMs: number;
  /**
   * Samples under tc_run or tcf_classify (or tcx_run) outside edgeplane's programs: the tc hook's
   * own work (its walk of the classifiers, cls_bpf), which a program at TC pays as a netfilter
   * rule pays nf_hook_slow's own. Where the kernel inlined the hook into its caller
   * (__netif_receive_skb_core, __dev_queue_xmit) those samples are not told apart and not counted.
   * With kernel.bpf_stats_enabled its clock reads around every run land here too.
   */
  tcHookMs: number;
  /** Samples under ipt_do_table (part of netfilterMs): iptables' tables, also an empty one left registered in the namespace. */
  iptablesMs: number;
}

/** What a contender is, for its share of a profile (filterShareMs). */
export type FilterKind = 'edgeplane' | 'nftables' | 'iptables' | 'none';

/**
 * A filter's own CPU in a profile, each kind with the hook it runs at: edgeplane's programs, veth's
 * XDP copy and the tc hook's own work; nftables' netfilter hooks less iptables' tables (an
 * iptables table once made in a namespace stays registered there, empty, and is no part of an
 * nftables filter); iptables' netfilter hooks; for `none`, whatever of all those still ran.
 */
export function filterShareMs(kind: FilterKind, cpu: FilterCpu): number {
  switch (kind) {
    case 'edgeplane':
      return cpu.bpfMs + cpu.vethXdpMs + cpu.tcHookMs;
    case 'nftables':
      return cpu.netfilterMs - cpu.iptablesMs;
    case 'iptables':
      return cpu.netfilterMs;
    case 'none':
      return cpu.netfilterMs + cpu.bpfMs + cpu.vethXdpMs + cpu.tcHookMs;
  }
}
const PERF_HZ = 4000;

/**
 * Samples CPU `cpu` with perf (cpu-clock at 4 kHz, call chains) while `work` runs, and splits the
 * samples into FilterCpu's places. perf's files and control fifos go in `dir`; perf is in
 * `children` while it runs (so a bench's clean-up can kill it). EP_BENCH_PERF_DIR keeps each
 * `perf script` text there. @returns work's result and the split. @throws if perf fails.
 */
export async function sampleCpu<T>(cpu: number, work: () => Promise<T> | T, options: { dir: string; children?: Set<ChildProcess> }): Promise<{ result: T; cpu: FilterCpu }> {
  const { dir, children } = options;
  const data = join(dir, `perf-${cpu}.data`);
  // perf starts disabled and is enabled through its control fifo, with an ack: sampling covers
  // exactly `work`, however long perf itself takes to start on a busy machine.
  const ctlPath = join(dir, 'perf-ctl');
  const ackPath = join(dir, 'perf-ack');
  for (const path of [ctlPath, ackPath]) if (!existsSync(path)) execFileSync('mkfifo', [path]);
  const perf = spawn('perf', ['record', '-q', '-D', '-1', '--control', `fifo:${ctlPath},${ackPath}`, '-e', 'cpu-clock', '-F', String(PERF_HZ), '-C', String(cpu), '-g', '-o', data], { stdio: 'ignore' });
  children?.add(perf);
  const exited = new Promise<void>((resolve) => perf.on('exit', () => resolve()));
  const ctl = openSync(ctlPath, 'w');
  const ack = openSync(ackPath, 'r');
  const command = (text: string): void => {
    writeSync(ctl, `${text}\n`);
    readSync(ack, Buffer.alloc(16));
  };
  let result: T;
  try {
    command('enable');
    result = await work();
    command('disable');
  } finally {
    closeSync(ctl);
    closeSync(ack);
    perf.kill('SIGINT');
    await exited;
    children?.delete(perf);
  }
  const script = execFileSync('perf', ['script', '-i', data, '-F', 'period,ip,sym'], { encoding: 'utf8', maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'ignore'] });
  if (process.env.EP_BENCH_PERF_DIR !== undefined) writeFileSync(join(process.env.EP_BENCH_PERF_DIR, `perf-${cpu}-${Date.now()}.txt`), script);
  const out: FilterCpu = { totalMs: 0, netfilterMs: 0, bpfMs: 0, vethXdpMs: 0, tcHookMs: 0, iptablesMs: 0 };
  for (const block of script.split(/\n\s*\n/)) {
    const period = Number(/^\s*(\d+)/.exec(block)?.[1] ?? 0) / 1e6;
    if (period === 0) continue;
    out.totalMs += period;
    if (/ nf_hook_slow$/m.test(block)) {
      out.netfilterMs += period;
      if (/ ipt_do_table$/m.test(block)) out.iptablesMs += period;
    } else if (/ bpf_prog_[0-9a-f]+_(edge_|ep_)\w*$/m.test(block)) out.bpfMs += period;
    else if (/ veth_xdp_rcv_skb$/m.test(block)) out.vethXdpMs += period;
    else if (/ (tcf_classify|tc_run|tcx_run)$/m.test(block)) out.tcHookMs += period;
  }
  return { result, cpu: out };
}
