// What bench/conntrack.ts does to edgeplane's connection table (bpf/CONNTRACK.md) beyond the
// agent's API: attach the uplink programs inside another network namespace (ip/tc, as
// bench/netfilter.ts does), fill the tables directly to a given size (IPv4 flows into ep_ct4 as
// the datapath places them, layout 6), empty them, count them, and time the sweeper. Bench code:
// the agent never fills or empties the tables.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { BpfMap, encode, type Program } from 'libbpf-ts';
import {
  CONNECTION_FLAGS,
  CONNECTION_STATES,
  CT4_DEAD,
  CT4_EMPTY,
  CT4_LIVE,
  CT4_MAX_SLOTS,
  CT4_PROBES,
  ct4Line,
  ct4Place,
  ctKeyOfFlow,
  epCt4Slot,
  epCtEntry,
  epCtKey,
  NO_CT_NAT,
  type EbpfDatapath,
  type EbpfDatapathOptions,
} from '@edgeplane/node-agent';

const PROTO_UDP = 17;
/** Entries written or read per batch syscall. */
const BATCH = 65_536;

/**
 * Where the uplink's policy program runs: edge_xdp (native XDP), or edge_tc at clsact ingress
 * (a cls_bpf filter), or edge_tc first in the tcx ingress chain (kernel 6.6+, as the agent
 * attaches where it can). edge_tc_egress is at the same kind of TC hook (clsact egress for xdp
 * and tc, tcx for tcx).
 */
export type PolicyHook = 'xdp' | 'tc' | 'tcx';

/** The programs on one device: the XDP program's id, the clsact ingress and egress programs' ids (bpftool), the tcx chains' (netns-tcx.ts). */
export interface AttachedPrograms {
  xdp: number[];
  tcIngress: number[];
  tcEgress: number[];
  tcxIngress: number[];
  tcxEgress: number[];
}

const TCX_HELPER = fileURLToPath(new URL('./netns-tcx.ts', import.meta.url));

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
  readonly #datapath: EbpfDatapath;
  readonly #pinRoot: string;
  readonly #ct: BpfMap;
  readonly #ctNew: BpfMap;
  readonly #ct4: BpfMap;
  readonly #ct4Cold: BpfMap;
  #closed = false;

  /**
   * Options for EbpfDatapath.open() that size ep_ct to `capacity` entries and ep_ct4 to
   * `ct4Slots` (default: the power of two at or above `capacity`); EP_BENCH_OBJECT=PATH loads that
   * build of the datapath object instead of bpf/build/edgeplane.bpf.o (a variant to compare on
   * the same rig: it must declare the maps this agent pins).
   */
  static openOptions(capacity: number, ct4Slots = Math.min(CT4_MAX_SLOTS, 2 ** Math.ceil(Math.log2(capacity)))): Partial<EbpfDatapathOptions> {
    return { ctEntries: capacity, ct4Slots, ...(process.env.EP_BENCH_OBJECT ? { objectPath: process.env.EP_BENCH_OBJECT } : {}) };
  }

  /** Borrows `datapath` (which must outlive this). @throws if it has no connection table (see conntrackSupported). */
  constructor(datapath: EbpfDatapath) {
    this.#datapath = datapath;
    this.#pinRoot = datapath.pinRoot;
    this.#ct = BpfMap.openPinned(join(this.#pinRoot, 'ep_ct'));
    this.#ctNew = BpfMap.openPinned(join(this.#pinRoot, 'ep_ct_new'));
    this.#ct4 = BpfMap.openPinned(join(this.#pinRoot, 'ep_ct4'));
    this.#ct4Cold = BpfMap.openPinned(join(this.#pinRoot, 'ep_ct4_cold'));
  }

  /**
   * Runs and run time so far of the policy program at `hook` (edge_xdp or edge_tc) and of
   * edge_tc_egress (bpftool; counted only while the kernel.bpf_stats_enabled sysctl is 1).
   */
  programStats(hook: PolicyHook = 'xdp'): { policy: { runs: number; ns: number }; egress: { runs: number; ns: number } } {
    const one = (program: Program): { runs: number; ns: number } => {
      const info = JSON.parse(execFileSync('bpftool', ['-j', 'prog', 'show', 'id', String(program.id)], { encoding: 'utf8' })) as { run_cnt?: number; run_time_ns?: number };
      return { runs: info.run_cnt ?? 0, ns: info.run_time_ns ?? 0 };
    };
    return { policy: one(this.policyProgram(hook)), egress: one(this.#datapath.tcEgressProgram) };
  }

  /** The datapath's policy program for `hook`: edge_xdp or edge_tc (both run ep_datapath at EP_HOOK_POLICY). */
  policyProgram(hook: PolicyHook): Program {
    return hook === 'xdp' ? this.#datapath.xdpProgram : this.#datapath.tcProgram;
  }

  /**
   * Attaches the uplink's programs to `dev` in namespace `ns`, as the agent's uplink role does:
   * the policy program at `hook` (edge_xdp native, or edge_tc at clsact ingress, direct action, or
   * at tcx ingress) and edge_tc_egress at clsact egress (tcx egress for 'tcx'). @throws if ip or
   * tc fails (call detach() to undo a part).
   */
  attach(ns: string, dev: string, hook: PolicyHook = 'xdp'): void {
    if (hook === 'tcx') {
      execFileSync('ip', ['netns', 'exec', ns, process.execPath, '--import=tsx', TCX_HELPER, 'attach', this.#pinRoot, dev]);
      return;
    }
    if (hook === 'xdp') execFileSync('ip', ['-n', ns, 'link', 'set', 'dev', dev, 'xdpdrv', 'pinned', join(this.#pinRoot, 'edge_xdp')]);
    spawnSync('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'add', 'dev', dev, 'clsact'], { stdio: 'ignore' });
    if (hook === 'tc') execFileSync('ip', ['netns', 'exec', ns, 'tc', 'filter', 'replace', 'dev', dev, 'ingress', 'pref', '1', 'handle', '1', 'bpf', 'da', 'pinned', join(this.#pinRoot, 'edge_tc')]);
    execFileSync('ip', ['netns', 'exec', ns, 'tc', 'filter', 'replace', 'dev', dev, 'egress', 'pref', '1', 'handle', '1', 'bpf', 'da', 'pinned', join(this.#pinRoot, 'edge_tc_egress')]);
  }

  /** Removes what attach() added, whichever hook: the XDP program, the clsact qdisc (with its filters), the tcx chains. */
  detach(ns: string, dev: string): void {
    execFileSync('ip', ['-n', ns, 'link', 'set', 'dev', dev, 'xdpdrv', 'off']);
    spawnSync('ip', ['netns', 'exec', ns, 'tc', 'qdisc', 'del', 'dev', dev, 'clsact'], { stdio: 'ignore' });
    execFileSync('ip', ['netns', 'exec', ns, process.execPath, '--import=tsx', TCX_HELPER, 'detach', this.#pinRoot, dev]);
  }

  /** The program ids attached to `dev` in namespace `ns`: bpftool (`bpftool net show dev`) for XDP and clsact, netns-tcx.ts for tcx. */
  attached(ns: string, dev: string): AttachedPrograms {
    type Net = { xdp?: { id: number }[]; tc?: { kind: string; prog_id?: number; id?: number }[] };
    const [net] = JSON.parse(execFileSync('ip', ['netns', 'exec', ns, 'bpftool', '-j', 'net', 'show', 'dev', dev], { encoding: 'utf8' })) as Net[];
    const tcOf = (kind: string): number[] => (net?.tc ?? []).filter((t) => t.kind === kind).map((t) => t.prog_id ?? t.id ?? 0);
    const tcx = JSON.parse(execFileSync('ip', ['netns', 'exec', ns, process.execPath, '--import=tsx', TCX_HELPER, 'query', this.#pinRoot, dev], { encoding: 'utf8' }).trim().split('\n').at(-1)!) as { ingress: number[]; egress: number[] };
    return { xdp: (net?.xdp ?? []).map((x) => x.id), tcIngress: tcOf('clsact/ingress'), tcEgress: tcOf('clsact/egress'), tcxIngress: tcx.ingress, tcxEgress: tcx.egress };
  }

  /**
   * Checks that exactly the uplink's programs for `hook` are on `dev`: the policy program (XDP,
   * or clsact or tcx ingress with no XDP program at all) and edge_tc_egress (clsact, or tcx).
   * @returns what bpftool showed. @throws Error naming what differs.
   */
  verifyAttached(ns: string, dev: string, hook: PolicyHook): AttachedPrograms {
    const seen = this.attached(ns, dev);
    const policy = this.policyProgram(hook).id;
    const egress = this.#datapath.tcEgressProgram.id;
    const none = { tcxIngress: [], tcxEgress: [] };
    const want: AttachedPrograms =
      hook === 'xdp' ? { xdp: [policy], tcIngress: [], tcEgress: [egress], ...none } : hook === 'tc' ? { xdp: [], tcIngress: [policy], tcEgress: [egress], ...none } : { xdp: [], tcIngress: [], tcEgress: [], tcxIngress: [policy], tcxEgress: [egress] };
    if (JSON.stringify(seen) !== JSON.stringify(want)) throw new Error(`verify ${hook} attach dev=${dev}: the device holds ${JSON.stringify(seen)}, expected ${JSON.stringify(want)}`);
    return seen;
  }

  /** Packets passed by an entry (the datapath's `established` conntrack counter). */
  establishedPackets(): number {
    return this.#datapath.readCounters().conntrack.established.packets;
  }

  /**
   * Writes flows [from, to) as established UDP flows (reply seen, an hour to live): index 0 is
   * `flow`, index i > 0 comes from `filler(i)` to `flow.dst:flow.dport`. Each under its flow's key
   * (layout 3: ctKeyOfFlow), EP_CT_F_ORIG_B set where the originator is side b, where the
   * datapath would create it: in ep_ct4's first free slot of its window (the slots taken read
   * from the kernel first), else in ep_ct. `expired` (default 0): the first that many of the
   * range are written already past their deadline.
   */
  fill(from: number, to: number, flow: FlowTuple, filler: (i: number) => { src: string; sport: number }, expired = 0): void {
    const now = process.hrtime.bigint(); // CLOCK_MONOTONIC: the entries' clock (bpf_ktime_get_coarse_ns) is at most a tick behind
    const entry = {
      expiresNs: now + 3_600_000_000_000n,
      createdNs: now,
      packets: [1n, 1n],
      bytes: [60n, 60n],
      ruleId: 2,
      epoch: this.#datapath.epoch,
      state: CONNECTION_STATES.indexOf('udp'),
      flags: CONNECTION_FLAGS.seen_reply,
      pad0: 0,
      pad1: 0,
      nat: NO_CT_NAT,
    };
    const past = now - 1n;
    // One encoded value per originator side and deadline.
    const values = new Map<string, Uint8Array>();
    const valueFor = (origFlag: number, gone: boolean): Uint8Array => {
      let value = values.get(`${origFlag} ${gone}`);
      if (value === undefined) values.set(`${origFlag} ${gone}`, (value = encode(epCtEntry, { ...entry, flags: entry.flags | origFlag, ...(gone ? { expiresNs: past } : {}) })));
      return value;
    };
    const dst = v4(flow.dst);
    const slots = this.#ct4.maxEntries;
    const taken = this.#ct4Taken();
    for (let start = from; start < to; start += BATCH) {
      const keys: Uint8Array[] = [];
      const batchValues: Uint8Array[] = [];
      const lines = { index: new Uint8Array(BATCH * 4), line: new Uint8Array(BATCH * epCt4Slot.size), cold: new Uint8Array(BATCH * this.#ct4Cold.valueSize), count: 0 };
      for (let i = start; i < Math.min(to, start + BATCH); i++) {
        const tuple = i === 0 ? flow : filler(i);
        const { key, origFlag } = ctKeyOfFlow({ family: 4, proto: PROTO_UDP, sport: tuple.sport, dport: flow.dport, src: v4(tuple.src), dst });
        const { home, busy } = ct4Place(key, slots);
        let slot = -1;
        for (let probe = 0; probe < CT4_PROBES && slot < 0; probe++) if (taken[(home + probe) & (slots - 1)] === 0) slot = (home + probe) & (slots - 1);
        if (slot < 0) {
          keys.push(encode(epCtKey, { ...key, pad: 0 }));
          batchValues.push(valueFor(origFlag, i - from < expired));
          continue;
        }
        taken[slot] = 1;
        const { line, cold } = ct4Line(key, { ...entry, flags: entry.flags | origFlag, ...(i - from < expired ? { expiresNs: past } : {}) }, busy);
        new DataView(lines.index.buffer).setUint32(lines.count * 4, slot, true);
        lines.line.set(line, lines.count * epCt4Slot.size);
        lines.cold.set(cold, lines.count * cold.length);
        lines.count++;
      }
      if (keys.length > 0) this.#ct.setBatch(keys, batchValues);
      if (lines.count > 0) {
        const n = lines.count;
        this.#ct4Cold.setBatchPacked(lines.index.subarray(0, n * 4), lines.cold.subarray(0, n * this.#ct4Cold.valueSize));
        this.#ct4.setBatchPacked(lines.index.subarray(0, n * 4), lines.line.subarray(0, n * epCt4Slot.size));
      }
    }
  }

  // One byte per ep_ct4 slot: 1 where the line holds a flow (a live tag, expired or not) or is being written.
  #ct4Taken(): Uint8Array {
    const taken = new Uint8Array(this.#ct4.maxEntries);
    for (const { count, keys, values } of this.#ct4.getBatches(BATCH)) {
      const kv = new DataView(keys.buffer, keys.byteOffset, keys.byteLength);
      const vv = new DataView(values.buffer, values.byteOffset, values.byteLength);
      for (let i = 0; i < count; i++) {
        const tag = vv.getUint32(i * epCt4Slot.size, true);
        if (tag !== CT4_EMPTY && tag !== CT4_DEAD) taken[kv.getUint32(i * 4, true)] = 1;
      }
    }
    return taken;
  }

  /** Entries in ep_ct, and flows in ep_ct4 (expired or not). */
  count(): number {
    let total = 0;
    for (const { count } of this.#ct.getBatches(BATCH)) total += count;
    for (const { count, values } of this.#ct4.getBatches(BATCH)) {
      const view = new DataView(values.buffer, values.byteOffset, values.byteLength);
      for (let i = 0; i < count; i++) if ((view.getUint32(i * epCt4Slot.size, true) & CT4_LIVE) !== 0) total++;
    }
    return total;
  }

  /** Deletes every entry of ep_ct and ep_ct_new, and makes every ep_ct4 slot EMPTY (as new). */
  clear(): void {
    const slots = this.#ct4.maxEntries;
    for (let first = 0; first < slots; first += BATCH) {
      const n = Math.min(BATCH, slots - first);
      const index = new Uint8Array(n * 4);
      const view = new DataView(index.buffer);
      for (let i = 0; i < n; i++) view.setUint32(i * 4, first + i, true);
      this.#ct4.setBatchPacked(index, new Uint8Array(n * epCt4Slot.size));
    }
    for (const map of [this.#ct, this.#ctNew]) {
      // Read every key first: the batch cursor is a bucket position, deleting under it skips.
      const chunks = [...map.getBatches(BATCH)].map(({ count, keys }) => ({ count, keys: keys.slice() }));
      const size = map.keySize;
      for (const { count, keys } of chunks) for (let i = 0; i < count; i++) map.delete(keys.subarray(i * size, (i + 1) * size));
    }
  }

  /**
   * Runs the sweeper (EbpfDatapath.sweepConntrack: ep_ct_sweep through BPF_PROG_TEST_RUN, what
   * the agent's ConntrackSweeper calls) once over the whole table, with no budget limit. @returns its wall time, this process's CPU for it, the entries it visited and
   * how many expired ones it removed.
   */
  sweepTimed(): { ms: number; cpuMs: number; entries: number; removed: number } {
    const entries = this.count();
    const cpu = process.cpuUsage();
    const started = performance.now();
    const removed = this.#datapath.sweepConntrack(0xffff_ffff);
    const ms = performance.now() - started;
    const used = process.cpuUsage(cpu);
    return { ms, cpuMs: (used.user + used.system) / 1000, entries, removed };
  }

  /** Releases this handle's fds; idempotent. The tables and pins stay. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const held of [this.#ct, this.#ctNew, this.#ct4, this.#ct4Cold]) held.close();
  }
}
