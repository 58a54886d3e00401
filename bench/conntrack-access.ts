// What bench/conntrack.ts does to edgeplane's connection table (bpf/CONNTRACK.md) beyond the
// agent's API: attach the uplink programs inside another network namespace (ip/tc, as
// bench/netfilter.ts does), fill ep_ct directly to a given size, empty it, count it, and time the
// sweeper. Bench code: the agent never fills or empties the table.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { BpfMap, bytes, encode, Program, struct, u16, u32, u64, u8 } from 'libbpf-ts';
import type { EbpfDatapath, EbpfDatapathOptions } from '@edgeplane/node-agent';

// Layouts of bpf/include/ep_tables.h (CONNTRACK.md "Tables").
const ctKey = struct({ family: u8, proto: u8, pad: u16, sport: u16, dport: u16, src: bytes(16), dst: bytes(16) });
const ctEntry = struct({
  expiresNs: u64,
  createdNs: u64,
  packetsOrig: u64,
  packetsReply: u64,
  bytesOrig: u64,
  bytesReply: u64,
  ruleId: u32,
  epoch: u32,
  state: u8,
  flags: u8,
  pad0: u16,
  pad1: u32,
});
const counter = struct({ packets: u64, bytes: u64 });
const sweepArgs = struct({ budget: u32, pad: u32 });
const EP_CT_UDP = 7;
const EP_CT_F_SEEN_REPLY = 0x01;
const EP_CT_STAT_ESTABLISHED = 0;
const PROTO_UDP = 17;
/** Entries written per bpf_map_update_batch call. */
const BATCH = 65_536;

/** One flow's original-direction tuple (IPv4). */
export interface FlowTuple {
  src: string;
  sport: number;
  dst: string;
  dport: number;
}

const v4 = (address: string): Uint8Array => {
  const out = new Uint8Array(16);
  address.split('.').forEach((octet, i) => (out[i] = Number(octet)));
  return out;
};

/** True if `datapath` was built with the connection table (ep_ct pinned beside the programs). */
export function conntrackSupported(datapath: EbpfDatapath): boolean {
  return existsSync(join(datapath.pinRoot, 'ep_ct'));
}

/**
 * The bench's handle on one datapath's connection table. Borrows the datapath's pins; close()
 * releases its own fds only.
 */
export class ConntrackAccess {
  readonly #pinRoot: string;
  readonly #ct: BpfMap;
  readonly #ctNew: BpfMap;
  readonly #stats: BpfMap;
  readonly #sweep: Program;
  readonly #xdp: Program;
  readonly #egress: Program;
  #closed = false;

  /** Options for EbpfDatapath.open() that size ep_ct to `capacity` entries. */
  static openOptions(capacity: number): Partial<EbpfDatapathOptions> {
    return { ctEntries: capacity } as Partial<EbpfDatapathOptions>;
  }

  /** @throws if the datapath has no connection table (see conntrackSupported). */
  constructor(datapath: EbpfDatapath) {
    this.#pinRoot = datapath.pinRoot;
    this.#ct = BpfMap.openPinned(join(this.#pinRoot, 'ep_ct'));
    this.#ctNew = BpfMap.openPinned(join(this.#pinRoot, 'ep_ct_new'));
    this.#stats = BpfMap.openPinned(join(this.#pinRoot, 'ep_ct_stats'));
    this.#sweep = Program.openPinned(join(this.#pinRoot, 'ep_ct_sweep'));
    this.#xdp = Program.openPinned(join(this.#pinRoot, 'edge_xdp'));
    this.#egress = Program.openPinned(join(this.#pinRoot, 'edge_tc_egress'));
  }

  /**
   * Runs and run time so far of edge_xdp and edge_tc_egress (bpftool; counted only while the
   * kernel.bpf_stats_enabled sysctl is 1).
   */
  programStats(): { xdp: { runs: number; ns: number }; egress: { runs: number; ns: number } } {
    const one = (program: Program): { runs: number; ns: number } => {
      const info = JSON.parse(execFileSync('bpftool', ['-j', 'prog', 'show', 'id', String(program.id)], { encoding: 'utf8' })) as { run_cnt?: number; run_time_ns?: number };
      return { runs: info.run_cnt ?? 0, ns: info.run_time_ns ?? 0 };
    };
    return { xdp: one(this.#xdp), egress: one(this.#egress) };
  }

  /** Attaches edge_xdp (native) and edge_tc_egress to `dev` in namespace `ns`, as the agent's uplink role does. */
  attach(ns: string, dev: string): void {
    execFileSync('ip', ['-n', ns, 'link', 'set', 'dev', dev, 'xdpdrv', 'pinned', join(this.#pinRoot, 'edge_xdp')]);
    spawnSync('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', dev, 'clsact'], { stdio: 'ignore' });
    execFileSync('ip', ['netns', 'exec', ns, 'tc', 'filter', 'replace', 'dev', dev, 'egress', 'pref', '1', 'handle', '1', 'bpf', 'da', 'pinned', join(this.#pinRoot, 'edge_tc_egress')]);
  }

  /** Removes what attach() added. */
  detach(ns: string, dev: string): void {
    execFileSync('ip', ['-n', ns, 'link', 'set', 'dev', dev, 'xdpdrv', 'off']);
    spawnSync('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'del', 'dev', dev, 'clsact'], { stdio: 'ignore' });
  }

  /** Packets passed by an entry (EP_CT_STAT_ESTABLISHED), summed over CPUs. */
  establishedPackets(): number {
    const key = encode(u32, EP_CT_STAT_ESTABLISHED);
    return (this.#stats.getPerCpu(key) ?? []).reduce((sum, value) => sum + Number(counter.decode(value).packets), 0);
  }

  /**
   * Writes flows [from, to) into ep_ct as established UDP flows (reply seen, an hour to live):
   * index 0 is `flow`, index i > 0 comes from `filler(i)` to `flow.dst:flow.dport`.
   */
  fill(from: number, to: number, flow: FlowTuple, filler: (i: number) => { src: string; sport: number }): void {
    const now = process.hrtime.bigint(); // CLOCK_MONOTONIC, as bpf_ktime_get_ns()
    const value = encode(ctEntry, {
      expiresNs: now + 3_600_000_000_000n,
      createdNs: now,
      packetsOrig: 1n,
      packetsReply: 1n,
      bytesOrig: 60n,
      bytesReply: 60n,
      ruleId: 2,
      epoch: 0,
      state: EP_CT_UDP,
      flags: EP_CT_F_SEEN_REPLY,
      pad0: 0,
      pad1: 0,
    });
    const dst = v4(flow.dst);
    for (let start = from; start < to; start += BATCH) {
      const keys: Uint8Array[] = [];
      for (let i = start; i < Math.min(to, start + BATCH); i++) {
        const tuple = i === 0 ? flow : filler(i);
        keys.push(encode(ctKey, { family: 4, proto: PROTO_UDP, pad: 0, sport: tuple.sport, dport: flow.dport, src: v4(tuple.src), dst }));
      }
      this.#ct.setBatch(keys, keys.map(() => value));
    }
  }

  /** Entries in ep_ct. */
  count(): number {
    let total = 0;
    let after: Uint8Array | undefined;
    for (;;) {
      const { keys } = this.#ct.getBatch(BATCH, after);
      total += keys.length;
      if (keys.length < BATCH) return total;
      after = keys[keys.length - 1];
    }
  }

  /** Deletes every entry of ep_ct and ep_ct_new. */
  clear(): void {
    for (const map of [this.#ct, this.#ctNew]) {
      for (;;) {
        const { keys } = map.getBatch(BATCH);
        if (keys.length === 0) break;
        for (const key of keys) map.delete(key);
      }
    }
  }

  /**
   * Runs the sweeper (ep_ct_sweep through BPF_PROG_TEST_RUN, as the agent does) over the whole
   * table once. @returns its wall time, this process's CPU for it, the entries it visited and
   * how many expired ones it removed.
   */
  sweepTimed(): { ms: number; cpuMs: number; entries: number; removed: number } {
    const entries = this.count();
    const cpu = process.cpuUsage();
    const started = performance.now();
    const result = this.#sweep.testRun({ data: new Uint8Array(0), ctxIn: encode(sweepArgs, { budget: 0xffff_ffff, pad: 0 }) });
    const ms = performance.now() - started;
    const used = process.cpuUsage(cpu);
    return { ms, cpuMs: (used.user + used.system) / 1000, entries, removed: result.retval };
  }

  /** Releases this handle's fds; idempotent. The tables and pins stay. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const held of [this.#ct, this.#ctNew, this.#stats, this.#sweep, this.#xdp, this.#egress]) held.close();
  }
}
