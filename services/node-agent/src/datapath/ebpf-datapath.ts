// The eBPF datapath: loads bpf/build/edgeplane.bpf.o (or re-adopts it from a bpffs), installs
// compiled tables into the idle generation and switches to it with one map write, attaches the
// programs, and reads counters. bpf/README.md describes the maps and the switch protocol.
import { existsSync, readdirSync, readFileSync, unlinkSync } from 'node:fs';
import { endianness, release } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import {
  attachXdp,
  BpfMap,
  detachXdp,
  encode,
  ifindex as interfaceIndex,
  interfaces,
  loadObjectSpec,
  Program,
  queryXdp,
  tcxSupported,
  TypedMap,
  u32 as u32Codec,
  u32KeyRange,
  type CodecValue,
  type TcDirection,
} from 'libbpf-ts';
import { createHash } from 'node:crypto';
import { genFlags, RULE_SLOTS, sizes, TableCompiler, TableCompilers, WILD_COUNT, type CompiledTables, type TablesDelta } from './compile-tables.js';
import { connectionMatcher, DEFAULT_CONNTRACK_CONFIG, type ConnectionEntry, type ConnectionFilter, type ConntrackConfig, type ConntrackOccupancy, type ControlEndpoint } from './conntrack.js';
import { BlocklistTables } from './blocklist-tables.js';
import { ListTables, type ListPlacement } from './list-tables.js';
import { ConntrackTables } from './conntrack-tables.js';
import { catchUpConntrack, CT_ENTRY_LAYOUT, CT_KEY_LAYOUT_FROM, relayoutCtElement, relayoutLbBackend } from './conntrack-upgrade.js';
import { CounterTables, sumPerCpu, type GenerationIds } from './counters.js';
import { lazyRules } from './rule-counts.js';
import { dropPreviousPins, installObject, type InstallReport, type InstallStep } from './datapath-install.js';
import { LB_STAT_NAMES, type ApplyResult, type DatapathCounters, type Datapath, type LbCounters, type ShadowCounters, type ShadowDatapath } from './datapath.js';
import type { LbSpec } from './service-compile.js';
import { DEFAULT_LB_CAPACITY, LB_BLOCK_SLOTS, layoutLbTables, lbSizes, type LbCapacity, type LbTablesSpec } from './lb-tables.js';
import { CapacityError, ConntrackInputError, DatapathError, RuleSetError } from './errors.js';
import { CT4_MAX_SLOTS, CT4_MIN_SLOTS } from './ct4-table.js';
import type { InterfaceRole } from './interface-role.js';
import { LAYOUT_MARKER, LAYOUT_VERSION, NEXT_SUFFIX, PREVIOUS_SUFFIX, PROGRAMS_MARKER, readLayoutVersion, readProgramsIdentity, writeLayoutMarker } from './pin-layout.js';
import { DEFAULT_RULE_ID, type RuleSetList, type RuleSetSpec } from './rule-set.js';
import { MAX_SHADOW_NAME_BYTES, ShadowTables } from './shadow-tables.js';
import { candidateOnly, mergeRuleSets, unionTables, type ShadowUnion } from './shadow-union.js';
import { epLbCfg, epMeta, epRule, epShadowSlot } from './table-codecs.js';
import { attachTcHook, defaultTcAttachKind, detachTcHook, tcHookHolds, tcHookPrograms, type TcAttachKind } from './tc-hooks.js';

/** Where the build puts the object: <repo>/bpf/build/edgeplane.bpf.o. */
export const DEFAULT_OBJECT_PATH = fileURLToPath(new URL('../../../../bpf/build/edgeplane.bpf.o', import.meta.url));

/** The programs and the maps the agent pins and re-adopts (ep_scratch stays private to the programs). */
const programNames = ['edge_xdp', 'edge_tc', 'edge_tc_egress', 'ep_ct_sweep', 'ep_blk_clock', 'ep_ct4_count'] as const;
const mapNames = [
  'ep_lpm',
  'ep_cwords',
  'ep_wild',
  'ep_scan',
  'ep_rules',
  'ep_counters',
  'ep_active',
  'ep_buckets',
  'ep_stats',
  'ep_meta',
  'ep_carry',
  'ep_barrier',
  'ep_ct4',
  'ep_ct4_cold',
  'ep_ct',
  'ep_ct_new',
  'ep_ct_cfg',
  'ep_gen_cfg',
  'ep_ct_stats',
  'ep_ct_control',
  'ep_ct_control_ports',
  'ep_lb_vip',
  'ep_lb_slots',
  'ep_lb_backends',
  'ep_lb_cfg',
  'ep_lb_stats',
  'ep_blk4',
  'ep_blk6',
  'ep_blk4h',
  'ep_blk4p',
  'ep_blk_active',
  'ep_blk_stats',
  'ep_blk_clock_out',
  'ep_shadow',
  'ep_shadow_lpm',
  'ep_shadow_cwords',
  'ep_shadow_wild',
  'ep_shadow_rules',
  'ep_shadow_counters',
  'ep_shadow_stats',
  'ep_shadow_samples',
  'ep_shadow_slots',
  'ep_shadow_member',
  'ep_lst4',
  'ep_lst6',
  'ep_lref',
  'ep_lvec',
  'ep_shadow_lref',
  'ep_shadow_lvec',
] as const;
type MapName = (typeof mapNames)[number];
type ProgramName = (typeof programNames)[number];
type Programs = Readonly<Record<ProgramName, Program>>;
type Maps = Readonly<Record<MapName, BpfMap>>;

/** Options of EbpfDatapath.open(). */
export interface EbpfDatapathOptions {
  /** A directory on a bpffs the caller mounted (under /run: `ip netns exec` hides /sys/fs/bpf). */
  pinRoot: string;
  /** Default DEFAULT_OBJECT_PATH. */
  objectPath?: string;
  /** Token buckets kept (LRU); only used when the programs are loaded, not re-adopted. Default 262,144. */
  rateLimitEntries?: number;
  /** Called after each step of a load or an upgrade (not of an adoption): for logs. */
  onInstallStep?: (step: InstallStep) => void;
  /** Entries of ep_ct (flows that have seen a reply, and new flows below its direct mark of half this; preallocated); only used when loaded. Default 262,144. */
  ctEntries?: number;
  /** Entries of ep_ct_new (flows without a reply yet; LRU); only used when loaded. Default 65,536. */
  ctNewEntries?: number;
  /**
   * Slots of ep_ct4, the IPv4 flow table in front of ep_ct (IPv4 TCP/UDP flows without NAT; 80
   * bytes a slot with its cold half; a power of two, CT4_MIN_SLOTS..CT4_MAX_SLOTS); only used
   * when loaded. Default 262,144 (20 MiB).
   */
  ct4Slots?: number;
  /**
   * Connection timeouts written to ep_ct_cfg. Omitted: a fresh load writes
   * DEFAULT_CONNTRACK_CONFIG, an adopted datapath keeps what is pinned.
   */
  conntrack?: ConntrackConfig;
  /**
   * What each generation of the load-balancing maps holds (`--lb-services`, `--lb-slots`,
   * `--lb-backends`; bpf/LB.md, "Maps"); only used when loaded (an adopted datapath keeps the
   * sizes it was loaded with). Default DEFAULT_LB_CAPACITY. A datapath that will never be given
   * services (a workload role's) can pass { services: 1, slots: 32, backends: 1 }.
   */
  lbCapacity?: LbCapacity;
  /**
   * The table compilers this datapath shares with the other datapaths of the same agent (so one
   * rule set object applied to both roles is compiled, and held in memory, once). Default: its own.
   */
  compilers?: TableCompilers;
  /**
   * How attach() puts programs at TC hooks: 'tcx' (kernel 6.6+) or 'cls_bpf' filters on clsact.
   * Default: tcx where the kernel has it. Either way attach() takes the same program from the
   * other kind's place, so a node moves between them without a gap (tc-hooks.ts).
   */
  tcAttach?: TcAttachKind;
  /**
   * A counter read this long (ms) after a switch first runs the barrier, after which the idle
   * generation's counts are final and kept between reads (readCounters). Default
   * COUNTER_FREEZE_MS; 0 freezes at every read after a switch (tests).
   */
  counterFreezeMs?: number;
}

/**
 * What open() did to a pin directory that did not hold a complete datapath of this agent's
 * layout version: a first load (fromVersion undefined) or an upgrade in place.
 */
export interface DatapathInstall extends InstallReport {
  /** The layout version found: undefined for an empty pin directory, 1 for the object before connection tracking. */
  readonly fromVersion: number | undefined;
  /** The hooks of this network namespace that held a superseded program and now hold ours. */
  readonly switched: readonly SwitchedHook[];
  /**
   * Connection entries the superseded programs created while the tables were being migrated,
   * copied into ours after the switch (an upgrade from layout 2; 0 otherwise).
   */
  readonly caughtUpEntries: number;
}

/** One hook switched from a superseded program to this datapath's, in one atomic replace. */
export interface SwitchedHook {
  readonly interface: string;
  readonly ifindex: number;
  readonly hook: 'xdp' | 'tc-ingress' | 'tc-egress';
  readonly fromProgramId: number;
  /** Our program there now; for an uplink's clsact egress, a hook it did not have before, fromProgramId is 0. */
  readonly toProgramId: number;
}

/** What reset() removed. */
export interface DatapathReset {
  /** Every pin that was under the pin root. */
  readonly unpinned: readonly string[];
  /** Filters detached: uplinks' clsact egress filters, which an older agent would not replace. */
  readonly detached: readonly { interface: string; ifindex: number; hook: 'tc-egress' }[];
}

/**
 * Where an uplink's policy program runs: XDP ('native', 'generic', or 'auto': native, else
 * generic), or 'tc': the object's edge_tc at clsact ingress and no XDP program. Generic XDP (veth,
 * NICs without native XDP) copies every packet before the program runs; TC ingress does not.
 */
export type UplinkMode = 'native' | 'generic' | 'auto' | 'tc';

/** Options of EbpfDatapath.attach(), isAttached() and detach(). */
export interface AttachOptions {
  /** The uplink mode; default 'auto' (native XDP, else generic). Workload interfaces ignore it. */
  xdpMode?: UplinkMode;
}

/**
 * The eBPF datapath on this node. Programs and maps are pinned under the pin root, so they
 * outlive the agent: close() releases this process's fds and never detaches, unpins or stops
 * enforcement; detach() removes the programs from an interface.
 */
export class EbpfDatapath implements Datapath, ShadowDatapath {
  /** True if open() found a complete datapath of this layout version and of this object's programs pinned and adopted it as it was. */
  readonly adopted: boolean;
  #installed: DatapathInstall | undefined;
  readonly #pinRoot: string;
  readonly #tcAttach: TcAttachKind;
  readonly #programs: Programs;
  readonly #maps: Maps;
  readonly #barrierInner: BpfMap;
  readonly #meta: TypedMap<number, CodecValue<typeof epMeta>>;
  readonly #counters: CounterTables;
  readonly #conntrack: ConntrackTables;
  readonly #blocklist: BlocklistTables;
  readonly #shadow: ShadowTables;
  readonly #lists: ListTables;
  /** The epoch of the latest apply (ep_gen_cfg), never 0 once applied. */
  #epoch: number;
  /**
   * The rule set this process last saw enforced, its generation and that generation's epoch: what
   * setShadow() merges a candidate with (checked against ep_active and ep_gen_cfg before use).
   */
  #enforced: { readonly spec: RuleSetSpec; readonly generation: number; readonly epoch: number } | undefined;
  readonly #ruleIds: [number[] | undefined, number[] | undefined] = [undefined, undefined];
  /**
   * What each generation holds, as this process wrote it (undefined: not known, e.g. after a
   * restart or a failed write: the next apply there writes it whole). Kept to update the idle
   * generation by difference; trusted only while its fingerprint is the one in ep_meta.
   */
  readonly #held: [HeldGeneration | undefined, HeldGeneration | undefined] = [undefined, undefined];
  /** This datapath's own table compiler (it may compile with another one of the pool). */
  readonly #compiler = new TableCompiler();
  readonly #compilers: TableCompilers;
  /** The background write that brings the idle generation up to date after a whole rebuild; never rejects. */
  #bringingUp: Promise<void> = Promise.resolve();
  #barrierPending = true;
  /** When this process last switched generations (performance.now()), or opened. */
  #switchedAt = performance.now();
  #counterFreezeMs = COUNTER_FREEZE_MS;
  #closed = false;

  private constructor(pinRoot: string, programs: Programs, maps: Maps, adopted: boolean, compilers: TableCompilers | undefined, tcAttach: TcAttachKind) {
    this.#pinRoot = pinRoot;
    this.#tcAttach = tcAttach;
    this.#compilers = compilers ?? new TableCompilers();
    this.#programs = programs;
    this.#maps = maps;
    this.adopted = adopted;
    this.#meta = new TypedMap(maps.ep_meta, u32Codec, epMeta);
    this.#counters = new CounterTables(maps.ep_counters, maps.ep_stats, maps.ep_carry);
    this.#conntrack = new ConntrackTables(maps, programs.ep_ct_sweep, programs.ep_ct4_count);
    this.#blocklist = new BlocklistTables(maps, programs.ep_blk_clock);
    // A datapath that never had a list loaded skips the blocklist lookup from the start.
    this.#blocklist.markUnloadedEmpty();
    this.#shadow = new ShadowTables(maps);
    this.#lists = new ListTables(maps);
    // The epoch survives restarts: it is the larger of the two pinned generations' epochs.
    this.#epoch = Math.max(this.#conntrack.readGeneration(0).epoch, this.#conntrack.readGeneration(1).epoch);
    this.#barrierInner = BpfMap.create({ type: 'array', name: 'ep_barrier_in', keySize: 4, valueSize: 4, maxEntries: 1 });
  }

  /**
   * Re-adopts the datapath pinned under `pinRoot` when it is a complete one of this agent's
   * layout version (LAYOUT_VERSION) loaded from this agent's object (the programs marker holds
   * its sha256): same program ids, tables and counters. Otherwise loads the object there: into
   * an empty directory, or over an older layout or other programs as an upgrade in place (maps
   * whose definition is unchanged are reused, live contents included; new and changed ones are
   * created and filled first; then every hook of this network namespace that holds a superseded
   * program is switched to ours with one atomic replace, the layout marker is written and the
   * superseded programs are unpinned). A pin directory of a newer layout is refused.
   * bpf/README.md, "Upgrades and the pinned layout".
   * @returns an EbpfDatapath the caller owns (close() it); `install` says what a load did.
   * @throws DatapathError with the libbpf-ts error as cause (VerifierError carries the log); for
   * a newer layout, before anything is touched. A failed upgrade leaves every hook enforcing
   * with the programs it had or with ours, and the next open() finishes it.
   */
  static async open(options: EbpfDatapathOptions): Promise<EbpfDatapath> {
    if (endianness() !== 'LE') throw new DatapathError(`open datapath: tables are compiled little-endian, this host is ${endianness()}`);
    if (options.tcAttach === 'tcx' && !tcxSupported()) throw new DatapathError(`open datapath: tcx attach asked for (--tc-attach tcx), but this kernel (${release()}) has no tcx (6.6+); use auto or cls_bpf`);
    const pinRoot = options.pinRoot;
    const pin = (name: string): string => join(pinRoot, name);
    const found = readLayoutVersion(pinRoot);
    if (found !== undefined && found > LAYOUT_VERSION) {
      throw new DatapathError(
        `adopt datapath pinRoot=${pinRoot}: its layout version ${found} is newer than this agent's ${LAYOUT_VERSION}; refused, nothing was changed (to run this agent there, start it with --reset-datapath, which loses counters and the connection table: bpf/README.md, "Upgrades and the pinned layout")`,
      );
    }
    const objectPath = options.objectPath ?? DEFAULT_OBJECT_PATH;
    // This layout with other programs (or programs of unknown origin) is upgraded like an older
    // one, every map reused: a fix in BPF code ships on restart, not on the next reboot.
    const objectId = objectIdentity(objectPath);
    const samePrograms = found === LAYOUT_VERSION && equalBytes(readProgramsIdentity(pinRoot) ?? new Uint8Array(0), objectId);
    const adopt = samePrograms && [...programNames, ...mapNames].every((name) => existsSync(pin(name)));
    let installed: (InstallReport & { fromVersion: number | undefined; sinceNs: bigint }) | undefined;
    if (!adopt) {
      // No program pinned: nothing enforces from here. Maps left by a first load that stopped
      // part-way are dropped, so a first load always starts clean.
      if (found === undefined) {
        for (const name of [...mapNames, ...programNames]) if (existsSync(pin(name))) unlinkSync(pin(name));
      }
      let spec;
      try {
        spec = await loadObjectSpec(objectPath);
      } catch (cause) {
        throw new DatapathError(`load datapath object=${objectPath} pinRoot=${pinRoot}`, { cause });
      }
      const mapMaxEntries: Record<string, number> = {};
      if (spec.maps.has('ep_buckets')) mapMaxEntries.ep_buckets = options.rateLimitEntries ?? 262_144;
      if (spec.maps.has('ep_ct')) mapMaxEntries.ep_ct = options.ctEntries ?? 262_144;
      if (spec.maps.has('ep_ct_new')) mapMaxEntries.ep_ct_new = options.ctNewEntries ?? 65_536;
      const ct4Slots = options.ct4Slots ?? 262_144;
      if (!Number.isInteger(ct4Slots) || ct4Slots < CT4_MIN_SLOTS || ct4Slots > CT4_MAX_SLOTS || (ct4Slots & (ct4Slots - 1)) !== 0) {
        throw new DatapathError(`open datapath pinRoot=${pinRoot}: ct4Slots must be a power of two in ${CT4_MIN_SLOTS}..${CT4_MAX_SLOTS}, got ${ct4Slots}`);
      }
      for (const name of ['ep_ct4', 'ep_ct4_cold']) if (spec.maps.has(name)) mapMaxEntries[name] = ct4Slots;
      for (const [name, entries] of Object.entries(lbMapEntries(options.lbCapacity ?? DEFAULT_LB_CAPACITY))) if (spec.maps.has(name)) mapMaxEntries[name] = entries;
      // Layout 2 keyed the connection tables by the original direction, layouts 3 and 4 by the
      // flow's direction-independent key; layout 4's entry is longer (its NAT): both older
      // layouts' tables are converted, not reused. Layout 5 grows the entry again (the NAT's
      // second address) and the backend (the node's source address towards it, its MTU).
      // Layout 6 changes neither: it adds ep_ct4 in front of ep_ct, created empty, and the
      // flows layout 5 left in ep_ct stay there, found after an ep_ct4 miss.
      const older = found !== undefined && found >= CT_KEY_LAYOUT_FROM && found < CT_ENTRY_LAYOUT;
      const convertMaps = older ? { ep_ct: relayoutCtElement, ep_ct_new: relayoutCtElement, ...(found >= 4 ? { ep_lb_backends: relayoutLbBackend } : {}) } : undefined;
      // Entries carry the datapath's clock (layout 3 on: CLOCK_MONOTONIC_COARSE, up to a tick
      // behind this one): start the catch-up window a tick early (HZ >= 100: 10 ms); what it
      // over-includes is already in the new tables and skipped there.
      const sinceNs = process.hrtime.bigint() - 10_000_000n;
      installed = { fromVersion: found, sinceNs, ...(await installObject(spec, { pinRoot, programNames, mapNames, mapMaxEntries, onStep: options.onInstallStep, convertMaps })) };
    }
    const opened: { close(): void }[] = [];
    let datapath: EbpfDatapath;
    try {
      const open = <T extends { close(): void }>(value: T): T => {
        opened.push(value);
        return value;
      };
      const programs = Object.fromEntries(programNames.map((name) => [name, open(Program.openPinned(pin(name)))])) as Record<ProgramName, Program>;
      const maps = Object.fromEntries(mapNames.map((name) => [name, open(BpfMap.openPinned(pin(name)))])) as Record<MapName, BpfMap>;
      datapath = new EbpfDatapath(pinRoot, programs, maps, adopt, options.compilers, options.tcAttach ?? defaultTcAttachKind());
      if (options.counterFreezeMs !== undefined) datapath.#counterFreezeMs = options.counterFreezeMs;
      // Before any hook is switched to the new programs: they read their timeouts from here
      // (pinned ones of this layout are kept, as an adoption keeps them).
      const config = options.conntrack ?? (adopt || found === LAYOUT_VERSION ? undefined : DEFAULT_CONNTRACK_CONFIG);
      if (config !== undefined) datapath.#conntrack.writeConfig(config);
      // The control ports' bitmap is new in layout 3: derive it from the endpoints already
      // there, before a hook runs the new programs (and heal a crash in setControlEndpoints).
      datapath.#conntrack.syncControlPorts();
      // Layout 4: the programs index a generation's slots and backends by these (the maps' halves).
      datapath.#writeLbCfg();
      // The union's slots and membership are newer than the first shadow maps: a candidate that
      // an older object pinned holds its own tables, the union of the candidate alone. Say so
      // before a hook runs the new programs.
      if (installed?.createdMaps.includes('ep_shadow_member')) datapath.#writeCandidateAlone();
      // A new ep_ct4 has every page written once before a hook runs the programs: on some
      // hosts a page's first write costs microseconds (BENCHMARKS.md, "A flow in one line").
      for (const name of ['ep_ct4', 'ep_ct4_cold'] as const) if (installed?.createdMaps.includes(name)) writeEveryPage(datapath.#maps[name]);
    } catch (cause) {
      for (const value of opened) value.close();
      throw new DatapathError(`${adopt ? 'adopt' : 'open'} pinned datapath pinRoot=${pinRoot}`, { cause });
    }
    try {
      if (installed !== undefined) {
        const switched = datapath.#switchHooks(installed.previousPrograms);
        options.onInstallStep?.('switched');
        // No hook runs the superseded programs now: if they counted a pinned candidate's packets
        // the older way (CLASSIFIED and a verdict), its share is counted afresh (ShadowTables.recount).
        datapath.#shadow.recount();
        // The superseded programs wrote the old tables until now (they stay alive, pinned as
        // -prev, until dropPreviousPins below): copy the flows they opened since the copy began.
        let caughtUpEntries = 0;
        for (const name of ['ep_ct', 'ep_ct_new'] as const) {
          const previous = installed.previousMaps.get(name);
          if (previous !== undefined && found !== undefined && found >= CT_KEY_LAYOUT_FROM) caughtUpEntries += catchUpConntrack(previous, datapath.#maps[name], installed.sinceNs);
        }
        writeLayoutMarker(pinRoot, LAYOUT_VERSION, objectId);
        options.onInstallStep?.('marked');
        const { sinceNs: _sinceNs, ...report } = installed;
        datapath.#installed = { ...report, switched, caughtUpEntries };
      }
      // Superseded programs stay pinned until their hooks are switched; an install that
      // stopped after its marker leaves them to the next open.
      dropPreviousPins(pinRoot, [...programNames, ...mapNames, LAYOUT_MARKER, PROGRAMS_MARKER]);
    } catch (cause) {
      datapath.close();
      throw new DatapathError(`upgrade datapath pinRoot=${pinRoot} from layout ${installed?.fromVersion ?? 'none'} to ${LAYOUT_VERSION}`, { cause });
    }
    return datapath;
  }

  /**
   * Forgets the datapath pinned under `pinRoot`, whatever its layout version, so that the next
   * open() loads the object fresh: every pin there is removed, and the clsact egress filters of
   * uplinks that hold a pinned program are detached (they only track connections, and an older
   * agent would never replace them). The XDP programs and workload filters stay attached and
   * keep enforcing what they enforce, with the tables they hold, until the next agent replaces
   * them after applying its rule set. Lost: counters, token buckets, the connection table.
   * @returns what was unpinned and detached.
   * @throws DatapathError.
   */
  static reset(pinRoot: string): DatapathReset {
    try {
      const entries = existsSync(pinRoot) ? readdirSync(pinRoot) : [];
      const egressIds = new Set<number>();
      for (const name of ['edge_tc_egress', `edge_tc_egress${PREVIOUS_SUFFIX}`, `edge_tc_egress${NEXT_SUFFIX}`]) {
        if (!entries.includes(name)) continue;
        const program = Program.openPinned(join(pinRoot, name));
        egressIds.add(program.id);
        program.close();
      }
      const detached: { interface: string; ifindex: number; hook: 'tc-egress' }[] = [];
      if (egressIds.size > 0) {
        for (const { name, index } of interfaces()) {
          let removed = false;
          for (const id of tcHookPrograms(index, 'egress')) if (egressIds.has(id)) removed = detachTcHook(index, 'egress', id) || removed;
          if (removed) detached.push({ interface: name, ifindex: index, hook: 'tc-egress' });
        }
      }
      for (const name of entries) unlinkSync(join(pinRoot, name));
      return { unpinned: entries, detached };
    } catch (cause) {
      throw new DatapathError(`reset datapath pinRoot=${pinRoot}`, { cause });
    }
  }

  /** What open() loaded, if it loaded the object (a first load or an upgrade); undefined if it adopted. */
  get install(): DatapathInstall | undefined {
    return this.#installed;
  }

  /** The source blocklist's tries (bpf/README.md, "The blocklist"); owned by this datapath. */
  get blocklist(): BlocklistTables {
    return this.#blocklist;
  }

  /** The XDP program (uplinks). Owned by this datapath; valid until close(). */
  get xdpProgram(): Program {
    return this.#programs.edge_xdp;
  }

  /** How attach() puts programs at TC hooks (EbpfDatapathOptions.tcAttach). */
  get tcAttach(): TcAttachKind {
    return this.#tcAttach;
  }

  /** The TC program (workload ingress and egress). Owned by this datapath; valid until close(). */
  get tcProgram(): Program {
    return this.#programs.edge_tc;
  }

  /** The uplink clsact egress program (connection tracking only). Owned by this datapath; valid until close(). */
  get tcEgressProgram(): Program {
    return this.#programs.edge_tc_egress;
  }

  /** The rule-set epoch of the latest apply (0 before the first), from ep_gen_cfg. */
  get epoch(): number {
    return this.#epoch;
  }

  /** The live generation, 0 or 1. */
  get generation(): number {
    return this.#readActive();
  }

  /** The pin root this datapath lives under. */
  get pinRoot(): string {
    return this.#pinRoot;
  }

  /**
   * Compiles `ruleSet`, lays `lb` out (bpf/LB.md), writes both into the idle generation and
   * switches policy and services to it with one write to ep_active. Before touching the idle
   * generation it waits (one RCU grace period, via a map-in-map write) until no packet still runs
   * with it; see bpf/README.md, "Switching". The generation's fingerprint (ep_meta) covers the
   * rule set and the load-balancing tables, so an unchanged pair is 'unchanged' and the pair of
   * the idle generation (a rollback) only 'switched'.
   * @throws RuleSetError, CapacityError before anything is touched; DatapathError (the live
   * generation keeps running).
   */
  async apply(ruleSet: RuleSetSpec, lb?: LbSpec): Promise<ApplyResult> {
    await this.#bringingUp;
    const tables = this.#compilers.compile(ruleSet, this.#compiler);
    const active = this.#readActive();
    const target = active ^ 1;
    const lbTables = layoutLbTables(lb ?? NO_SERVICES, this.lbCapacity, target === 0 ? 0 : 1);
    const flags = tables.genFlags | (lbTables.vip.count > 0 ? genFlags.services : 0);
    // The prefix lists the rules name, held (and brought up to date) before anything else: where
    // they are is part of the generation (bpf/README.md, "Prefix lists in rules"). A new name
    // takes a slot no table names, the idle generation's included (packets of the last switch may
    // still read it until the barrier below).
    const lists = this.#placeLists(tables.lists, ruleSet.lists, new Set([...this.#lists.namedBy(0), ...this.#lists.namedBy(1), ...this.#lists.namedBy('shadow')]));
    // Policy, services and list slots are one generation: one fingerprint over them (the LB
    // layout's is the same in both generations: its generation byte is taken as 0).
    let fingerprint = tables.fingerprint;
    if (lbTables.vip.count > 0 || lists.key !== '') {
      const hash = createHash('sha256').update(tables.fingerprint);
      if (lbTables.vip.count > 0) hash.update(lbTables.fingerprint);
      if (lists.key !== '') hash.update(`lists ${lists.key}`);
      fingerprint = new Uint8Array(hash.digest());
    }
    const summary = { ruleCount: tables.ruleCount, classCount: tables.classCount, lpmEntries: tables.lpmCount, classWords: tables.wordCount, services: lbTables.vip.count };
    const activeMeta = this.#readMeta(active);
    if (activeMeta.valid && equalBytes(activeMeta.fingerprint, fingerprint)) {
      this.#enforced = { spec: ruleSet, generation: active, epoch: this.#conntrack.readGeneration(active).epoch };
      return { generation: active, mode: 'unchanged', ...summary };
    }
    const targetMeta = this.#readMeta(target);
    if (targetMeta.valid && equalBytes(targetMeta.fingerprint, fingerprint)) {
      this.#writeGenCfg(target, flags);
      this.#switchTo(target);
      this.#enforced = { spec: ruleSet, generation: target, epoch: this.#epoch };
      return { generation: target, mode: 'switched', ...summary };
    }
    // The idle generation holds tables this process wrote with the same compiler a few compiles
    // ago: write only the compiler's deltas since (bpf/README.md, "Generations and the switch":
    // no packet reads it after the barrier). Anything else (a restart, a failed write, a fresh
    // compile, tables too different): whole.
    const held = this.#held[target];
    const known = targetMeta.valid && held !== undefined && equalBytes(held.fingerprint, targetMeta.fingerprint) ? held : undefined;
    const deltas = known?.compiler === tables.compiler ? tables.compiler.deltasSince(known.version) : undefined;
    let write: 'updated' | 'rebuilt' = 'rebuilt';
    let written = 0;
    try {
      this.#barrier();
      // Its rule ids, read before the generation is marked invalid (which forgets them).
      const targetIds = targetMeta.valid ? this.#generationRuleIds(target, targetMeta.ruleCount) : [];
      this.#writeMeta(target, 0, false, new Uint8Array(32));
      this.#held[target] = undefined;
      const update = known && deltas && this.#update(target, known, tables, deltas, targetIds, active);
      let room: InnerRoom;
      if (update) {
        write = 'updated';
        written = update.written;
        room = update;
      } else {
        if (targetMeta.valid) this.#counters.fold(target, targetIds);
        room = this.#install(target, tables);
        written = tables.lpmCount + tables.wordCount + tables.ruleCount + 1 + WILD_COUNT + (tables.scan === undefined ? 0 : 1);
      }
      if (!known || !equalBytes(known.lbFingerprint, lbTables.fingerprint)) this.#installLb(target, lbTables);
      this.#lists.writeTables(target, tables.lists, lists);
      this.#writeMeta(target, tables.ruleCount, true, fingerprint);
      this.#ruleIds[target] = [...tables.ruleIds];
      this.#held[target] = { compiler: tables.compiler, version: tables.version, lbFingerprint: lbTables.fingerprint, fingerprint, ...room };
      if (!update) this.#counters.pruneCarry(new Set([...tables.ruleIds, ...this.#generationRuleIds(active), DEFAULT_RULE_ID]));
    } catch (cause) {
      throw new DatapathError(`apply rules=${tables.ruleCount} services=${lbTables.vip.count} generation=${target}`, { cause });
    }
    this.#writeGenCfg(target, flags);
    this.#switchTo(target);
    this.#enforced = { spec: ruleSet, generation: target, epoch: this.#epoch };
    // After a whole rebuild the generation just left holds an older rule set, so the next change
    // would rebuild again: bring it up to date now, after this apply returns (the next apply
    // waits for it), and the next change is an update.
    // Not with services: flows established under the generation just left still read its backend
    // table (LB.md, "Apply and the switch"), so it stays as it is until the next apply there.
    if (write === 'rebuilt' && lbTables.vip.count === 0) this.#bringUp(active, tables, lbTables, lists, fingerprint);
    return { generation: target, mode: 'installed', write, written, ...summary };
  }

  // Writes `tables` (and `lbTables`) whole into the idle `generation` in the background, without
  // a switch: the next apply finds there the rule set now live, and updates it by difference.
  // The tables are read from their compiler then (in chunks, as the apply wrote them): nothing
  // compiles with it meanwhile (apply waits for this first; another role's datapath takes its
  // result only for the very rule set it compiled last, which compiles nothing), and if it had,
  // the generation is left for the next apply to write whole.
  #bringUp(generation: number, tables: CompiledTables, lbTables: LbTablesSpec, lists: ListPlacement, fingerprint: Uint8Array): void {
    this.#bringingUp = new Promise<void>((resolve) => {
      setImmediate(() => {
        try {
          if (this.#closed || this.#readActive() === generation || tables.compiler.version !== tables.version) return;
          this.#barrier();
          const meta = this.#readMeta(generation);
          const ids = meta.valid ? this.#generationRuleIds(generation, meta.ruleCount) : [];
          this.#writeMeta(generation, 0, false, new Uint8Array(32));
          this.#held[generation] = undefined;
          if (meta.valid) this.#counters.fold(generation, ids);
          const room = this.#install(generation, tables);
          this.#installLb(generation, lbTables);
          this.#lists.writeTables(generation, tables.lists, lists);
          this.#writeMeta(generation, tables.ruleCount, true, fingerprint);
          this.#ruleIds[generation] = [...tables.ruleIds];
          this.#held[generation] = { compiler: tables.compiler, version: tables.version, lbFingerprint: lbTables.fingerprint, fingerprint, ...room };
          // The counts of the rule set overwritten here stay carried (not pruned): until this
          // bring-up that set was the idle generation's, so a rollback to it kept counting where
          // it stopped, and it still does (now by an update). The next whole install prunes them.
        } catch {
          // The generation stays marked invalid (or holds what it held): the next apply there writes it whole.
        } finally {
          resolve();
        }
      });
    });
  }

  /**
   * Resolves when background work on the idle generation (bringing it up to date after a whole
   * rebuild) is done. apply() waits for it itself; tests and benchmarks wait to measure apart.
   */
  async settled(): Promise<void> {
    await this.#bringingUp;
  }

  /** What one generation of the load-balancing maps holds: half of each map, as loaded. */
  get lbCapacity(): LbCapacity {
    return {
      services: Math.floor(this.#maps.ep_lb_vip.maxEntries / 2),
      slots: Math.floor(this.#maps.ep_lb_slots.maxEntries / 2) * LB_BLOCK_SLOTS,
      backends: Math.floor(this.#maps.ep_lb_backends.maxEntries / 2),
    };
  }

  /**
   * Attaches to interface `iface` (a name or an index, in this thread's network namespace): on an
   * uplink the connection-tracking program at TC egress and the policy program, at XDP or
   * (xdpMode 'tc') this object's edge_tc at TC ingress; on a workload interface the TC program
   * at TC ingress and egress. At TC, programs go into the tcx chain (first) or onto clsact as the
   * filter at our handle, as {@link EbpfDatapathOptions.tcAttach} says (tc-hooks.ts), in place of
   * an earlier program of ours; XDP replaces whatever program holds the hook. Switching an
   * uplink's mode puts the new hook in place first and then removes our program from the old one,
   * so no packet passes unchecked in between (for a moment both run: a packet XDP passed meets the
   * same policy again at TC ingress).
   * @throws DatapathError with the libbpf-ts error as cause.
   */
  attach(iface: string | number, role: InterfaceRole, options: AttachOptions = {}): void {
    const index = typeof iface === 'number' ? iface : interfaceIndex(iface);
    const mode = options.xdpMode ?? 'auto';
    try {
      if (role === 'uplink') {
        // Egress first: by the time inbound policy runs, the node's outbound flows are tracked.
        attachTcHook(this.#programs.edge_tc_egress, index, 'egress', this.#tcAttach);
        if (mode === 'tc') {
          attachTcHook(this.#programs.edge_tc, index, 'ingress', this.#tcAttach);
          if (queryXdp(index)?.progId === this.#programs.edge_xdp.id) detachXdp(index);
          return;
        }
        this.#attachXdp(index, mode);
        detachTcHook(index, 'ingress', this.#programs.edge_tc);
        return;
      }
      for (const direction of TC_DIRECTIONS) attachTcHook(this.#programs.edge_tc, index, direction, this.#tcAttach);
    } catch (cause) {
      throw new DatapathError(`attach ${role} iface=${iface}`, { cause });
    }
  }

  /**
   * How `role`'s program of this datapath is attached to `iface` now, as the kernel says: on an
   * uplink `xdp-native`, `xdp-generic` or `xdp-offload` (the mode bpf_xdp_query reports for our
   * XDP program, whatever mode was asked: 'auto' falls back to generic) or, at TC ingress, `tcx`
   * (our program in the tcx chain) or `tc` (as our clsact filter); on a workload interface `tcx`
   * or `tc` the same way (at both hooks). '' when it is not attached there.
   * @throws DatapathError with the libbpf-ts error as cause (an interface that is not there).
   */
  attachMode(iface: string | number, role: InterfaceRole): string {
    const index = typeof iface === 'number' ? iface : interfaceIndex(iface);
    try {
      const id = this.#programs.edge_tc.id;
      const tcMode = (directions: readonly TcDirection[]): string => {
        if (directions.every((d) => tcHookHolds(index, d, id, 'tcx'))) return 'tcx';
        return directions.every((d) => tcHookPrograms(index, d).includes(id)) ? 'tc' : '';
      };
      if (role === 'workload') return tcMode(TC_DIRECTIONS);
      const xdp = queryXdp(index);
      if (xdp?.progId === this.#programs.edge_xdp.id) return xdp.mode === 'multi' ? 'xdp-native' : `xdp-${xdp.mode}`;
      return tcMode(['ingress']);
    } catch (cause) {
      throw new DatapathError(`query ${role} iface=${iface}`, { cause });
    }
  }

  /**
   * Whether our programs for `role` are attached to `iface` as `options` asks (uplink: XDP, or
   * with xdpMode 'tc' TC ingress and no XDP program of ours, and TC egress; workload: TC ingress
   * and egress), at TC the way this datapath attaches them (tcAttach): a program still on clsact
   * where tcx is asked for is not attached as asked, so the agent's next check moves it.
   * @throws DatapathError if the interface does not exist.
   */
  isAttached(iface: string | number, role: InterfaceRole, options: AttachOptions = {}): boolean {
    const index = typeof iface === 'number' ? iface : interfaceIndex(iface);
    try {
      const holds = (direction: TcDirection, program: Program): boolean => tcHookHolds(index, direction, program.id, this.#tcAttach);
      if (role === 'uplink') {
        if (!holds('egress', this.#programs.edge_tc_egress)) return false;
        const xdp = queryXdp(index)?.progId === this.#programs.edge_xdp.id;
        if (options.xdpMode === 'tc') return holds('ingress', this.#programs.edge_tc) && !xdp;
        return xdp && !tcHookPrograms(index, 'ingress').includes(this.#programs.edge_tc.id);
      }
      return TC_DIRECTIONS.every((direction) => holds(direction, this.#programs.edge_tc));
    } catch (cause) {
      throw new DatapathError(`query ${role} iface=${iface}`, { cause });
    }
  }

  /**
   * Removes our programs from `iface`, whichever uplink mode put them there (an uplink: our XDP
   * program, our TC ingress and egress programs, tcx or clsact); another program at our hooks
   * stays.
   * @returns false if nothing of ours was attached there.
   * @throws DatapathError.
   */
  detach(iface: string | number, role: InterfaceRole): boolean {
    const index = typeof iface === 'number' ? iface : interfaceIndex(iface);
    try {
      // Only our own programs (or an earlier object's of the same name): another program at our
      // hooks, or at our clsact handle, is not ours to remove.
      if (role === 'uplink') {
        const ingress = detachTcHook(index, 'ingress', this.#programs.edge_tc);
        const egress = detachTcHook(index, 'egress', this.#programs.edge_tc_egress);
        if (queryXdp(index)?.progId !== this.#programs.edge_xdp.id) return ingress || egress;
        return detachXdp(index) || ingress || egress;
      }
      let removed = false;
      for (const direction of TC_DIRECTIONS) removed = detachTcHook(index, direction, this.#programs.edge_tc) || removed;
      return removed;
    } catch (cause) {
      throw new DatapathError(`detach ${role} iface=${iface}`, { cause });
    }
  }

  // Our XDP program on `index`, replacing atomically whatever XDP program is there.
  #attachXdp(index: number, mode: 'native' | 'generic' | 'auto'): void {
    const program = this.#programs.edge_xdp;
    const current = queryXdp(index);
    if (current?.progId === program.id) return;
    if (current === undefined) {
      attachXdp(program, index, { mode });
      return;
    }
    const old = Program.fromId(current.progId);
    try {
      attachXdp(program, index, { mode, replace: old });
    } finally {
      old.close();
    }
  }

  /**
   * Counters of the live rule set by rule id, including what earlier generations counted for the
   * same ids (packed by slot too), and (retired) of the rules the idle generation and the carry
   * still count that the live rule set does not have, those that counted anything.
   * @throws DatapathError.
   */
  readCounters(): DatapathCounters {
    try {
      const active = this.#readActive();
      const valid = (generation: number): GenerationIds | undefined => (this.#readMeta(generation).valid ? { generation, ids: this.#generationRuleIds(generation) } : undefined);
      // Packets that read ep_active before the last switch may still count in the idle
      // generation until the barrier; a read a while after the switch runs it (one
      // synchronize_rcu per switch), and the idle generation's counts are then kept between reads.
      if (this.#barrierPending && performance.now() - this.#switchedAt >= this.#counterFreezeMs) this.#barrier();
      const { packed, retired, defaultAction } = this.#counters.readTotals(valid(active), valid(active ^ 1), !this.#barrierPending);
      const rules = lazyRules(packed);
      return {
        get rules() {
          return rules();
        },
        packed,
        retired,
        defaultAction,
        ...this.#counters.readStats(),
        conntrack: this.#conntrack.readStats(),
        lb: this.#readLbStats(),
      };
    } catch (cause) {
      throw new DatapathError('read counters', { cause });
    }
  }

  /** Live entries of ep_ct4 (counted in the kernel), ep_ct and ep_ct_new (batch reads). @throws DatapathError. */
  readConntrackOccupancy(): ConntrackOccupancy {
    try {
      return this.#conntrack.occupancy();
    } catch (cause) {
      throw new DatapathError('read conntrack occupancy', { cause });
    }
  }

  /**
   * Capacity of the tables, for occupancy reports: 'established' is ep_ct4's slots and ep_ct's
   * max_entries (an open-addressing ep_ct4 sends a flow to ep_ct once its window is full, well
   * before every slot is), 'new' ep_ct_new's.
   */
  get conntrackCapacity(): ConntrackOccupancy {
    return { established: this.#maps.ep_ct4.maxEntries + this.#maps.ep_ct.maxEntries, new: this.#maps.ep_ct_new.maxEntries };
  }

  /**
   * Up to `limit` unexpired connection entries matching `filter`: ep_ct4, ep_ct, ep_ct_new.
   * @returns decoded entries; new objects the caller owns.
   * @throws ConntrackInputError for a bad filter or limit; DatapathError.
   */
  listConnections(filter: ConnectionFilter, limit: number): ConnectionEntry[] {
    const match = connectionMatcher(filter, limit);
    try {
      return this.#conntrack.list(match, limit);
    } catch (cause) {
      throw new DatapathError('list connections', { cause });
    }
  }

  /**
   * Replaces the control endpoints (ep_ct_control): packets from them always pass.
   * @throws ConntrackInputError (nothing changed); DatapathError.
   */
  setControlEndpoints(endpoints: readonly ControlEndpoint[]): void {
    try {
      this.#conntrack.setControlEndpoints(endpoints);
    } catch (cause) {
      if (cause instanceof ConntrackInputError) throw cause;
      throw new DatapathError('set control endpoints', { cause });
    }
  }

  /** Entries that could not be created or moved so far (ep_ct_stats INSERT_FAILED, summed over CPUs). @throws DatapathError. */
  conntrackInsertFailures(): number {
    try {
      return this.#conntrack.readStats().insertFailed.packets;
    } catch (cause) {
      throw new DatapathError('read conntrack insert failures', { cause });
    }
  }

  /** The connection timeouts in force (ep_ct_cfg; zero slots read as the defaults). @throws DatapathError. */
  get conntrackConfig(): ConntrackConfig {
    try {
      return this.#conntrack.readConfig();
    } catch (cause) {
      throw new DatapathError('read conntrack config', { cause });
    }
  }

  /**
   * Writes the connection timeouts (ep_ct_cfg); they apply to each entry at its next packet.
   * @throws ConntrackInputError (nothing written); DatapathError.
   */
  setConntrackConfig(config: ConntrackConfig): void {
    try {
      this.#conntrack.writeConfig(config);
    } catch (cause) {
      if (cause instanceof ConntrackInputError) throw cause;
      throw new DatapathError('write conntrack config', { cause });
    }
  }

  /**
   * Deletes up to `budget` expired connection entries (ep_ct, then ep_ct_new) with one run of
   * the ep_ct_sweep program in the kernel. ConntrackSweeper paces it.
   * @returns how many were deleted; `budget` means there may be more.
   * @throws DatapathError.
   */
  sweepConntrack(budget: number): number {
    try {
      return this.#conntrack.sweep(budget);
    } catch (cause) {
      throw new DatapathError(`sweep conntrack budget=${budget}`, { cause });
    }
  }

  /** Releases this process's fds; idempotent. Attached programs keep enforcing; pins stay. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#blocklist.close();
    this.#lists.close();
    for (const program of Object.values(this.#programs)) program.close();
    for (const map of Object.values(this.#maps)) map.close();
    this.#barrierInner.close();
  }

  /** For `await using`: close(). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  /**
   * Removes every pin under the pin root (programs stay loaded while attached or open).
   * @throws DatapathError.
   */
  unpin(): void {
    try {
      for (const name of [LAYOUT_MARKER, PROGRAMS_MARKER, ...programNames, ...mapNames]) {
        const path = join(this.#pinRoot, name);
        if (existsSync(path)) unlinkSync(path);
      }
      dropPreviousPins(this.#pinRoot, [LAYOUT_MARKER, PROGRAMS_MARKER, ...programNames, ...mapNames]);
    } catch (cause) {
      throw new DatapathError(`unpin pinRoot=${this.#pinRoot}`, { cause });
    }
  }

  // The target generation's conntrack flags and a new epoch (never 0), written before the switch
  // so that a packet that reads the new generation sees its epoch.
  #writeGenCfg(generation: number, flags: number): void {
    const epoch = this.#epoch >= 0xffff_ffff ? 1 : this.#epoch + 1;
    try {
      this.#conntrack.writeGeneration(generation, flags, epoch);
    } catch (cause) {
      throw new DatapathError(`write generation config generation=${generation}`, { cause });
    }
    this.#epoch = epoch;
  }

  // The upgrade's switch: every hook of this network namespace that holds a superseded program
  // (`previous`: id -> program name) gets ours, through attach(), whose replaces are atomic (XDP:
  // XDP_FLAGS_REPLACE with the program found there; TC: in place in the tcx chain, or first there
  // and then off our clsact handle, or cls_bpf replace at that handle), so the hook never runs
  // without a program and no packet meets half a datapath. A TC hook's program is the superseded
  // one found there (tcx chain or our filter), else whatever runs first.
  #switchHooks(previous: ReadonlyMap<number, string>): SwitchedHook[] {
    if (previous.size === 0) return [];
    const switched: SwitchedHook[] = [];
    const tcAt = (index: number, direction: TcDirection): number => {
      const ids = tcHookPrograms(index, direction);
      return ids.find((id) => previous.has(id)) ?? ids[0] ?? 0;
    };
    for (const { name, index } of interfaces()) {
      const before = { xdp: queryXdp(index)?.progId ?? 0, 'tc-ingress': tcAt(index, 'ingress'), 'tc-egress': tcAt(index, 'egress') };
      const roles = new Set<InterfaceRole>();
      if (previous.has(before.xdp)) roles.add('uplink');
      for (const id of [before['tc-ingress'], before['tc-egress']]) {
        const program = previous.get(id);
        if (program !== undefined) roles.add(program === 'edge_tc' ? 'workload' : 'uplink');
      }
      // An uplink in tc mode: edge_tc at ingress beside edge_tc_egress, no XDP program of ours.
      const uplinkTc = previous.get(before['tc-ingress']) === 'edge_tc' && previous.get(before['tc-egress']) === 'edge_tc_egress' && !previous.has(before.xdp);
      if (uplinkTc) roles.delete('workload');
      if (roles.size === 0) continue;
      for (const role of roles) this.attach(index, role, uplinkTc ? { xdpMode: 'tc' } : {});
      const after = { xdp: queryXdp(index)?.progId ?? 0, 'tc-ingress': tcAt(index, 'ingress'), 'tc-egress': tcAt(index, 'egress') };
      for (const hook of ['xdp', 'tc-ingress', 'tc-egress'] as const) {
        if (after[hook] !== before[hook] && (before[hook] === 0 || previous.has(before[hook]))) switched.push({ interface: name, ifindex: index, hook, fromProgramId: before[hook], toProgramId: after[hook] });
      }
    }
    return switched;
  }

  // The one write that switches rule sets. The next install must first wait for packets that
  // read the previous value to finish.
  #switchTo(generation: number): void {
    try {
      this.#maps.ep_active.set(u32Bytes(0), u32Bytes(generation));
    } catch (cause) {
      throw new DatapathError(`switch generation=${generation}`, { cause });
    }
    this.#barrierPending = true;
    this.#switchedAt = performance.now();
  }

  // Writing a map-in-map element returns only after synchronize_rcu() (maybe_wait_bpf_programs
  // in kernel/bpf/syscall.c). XDP and TC programs run inside RCU read-side sections, so once it
  // returns, every packet that read ep_active before our last switch has finished.
  #barrier(): void {
    if (!this.#barrierPending) return;
    this.#waitForPackets();
  }

  // The barrier itself, unconditional: when it returns, every packet that began before it has
  // finished, whatever generation or shadow flag it read.
  #waitForPackets(): void {
    this.#maps.ep_barrier.setInnerMap(u32Bytes(0), this.#barrierInner);
    this.#barrierPending = false;
  }

  // Writes `tables` whole into `generation`: its counters zeroed, its rules and wildcard vectors,
  // and fresh inner maps (with room for later updates in place) swapped into the outer maps.
  #install(generation: number, tables: WholeTables): InnerRoom {
    // One bpf_map_update_batch zeroes every slot the new rule set uses (one syscall, not one per slot).
    this.#counters.zero(generation, tables.ruleCount);
    const { ep_rules: rules, ep_wild: wild, ep_lpm: lpm, ep_cwords: cwords } = this.#maps;
    const room = writeTablesWhole({ slot: generation, rules, wild, lpm, cwords }, tables, withRoom);
    this.#writeScan(generation, tables.scan);
    return room;
  }

  // A small generation's scan table (ep_scan), read by the programs only when its flags
  // (written after it, before the switch) say genFlags.scan; left as it is otherwise.
  #writeScan(generation: number, scan: Uint8Array | undefined): void {
    if (scan !== undefined) this.#maps.ep_scan.set(u32Bytes(generation), scan);
  }

  /**
   * Installs `ruleSet` as the shadow candidate, or removes it (null): bpf/README.md, "Shadow
   * classification". The candidate is compiled afresh by a TableCompiler of its own (apply()'s
   * code), so the enforced generations' compilers and their deltas are left alone; and
   * merged with the rule set this process applied last, when it is still the live generation's,
   * into the union the programs walk once for both ("One walk for both rule sets": its tables, the
   * slot of each union rule in each set, which set each union rule belongs to, and the live
   * generation's epoch). Without that rule set (an agent restarted and not yet applying, the union
   * over MAX_RULES or over the class capacity) the union is the candidate alone, and packets are
   * classified twice.
   * Then: the flag is cleared, packets still classifying by the previous candidate are waited
   * for (one RCU grace period), its counters, stats and samples are zeroed, its tables written
   * whole into fresh inner maps as a generation's are, and the flag set with the record of the
   * candidate (its name, rule count, fingerprint and the union's epoch), all pinned: a restarted
   * agent finds it classifying and counting. null clears the flag and frees the candidate's inner
   * maps.
   *
   * Shadow state is apart from apply(): an apply never reads, writes or clears it, so a candidate
   * stays installed and counting across applies until it is replaced or removed here. An apply
   * gives the live generation a new epoch: from then on the union no longer holds the enforced
   * rule set, and packets are classified twice (the enforced verdict from the generation's own
   * tables, the candidate's from the union) until the candidate is set again. Applying the
   * candidate itself (a promotion) works as any apply; from then on both classifications agree,
   * so wouldDrop and wouldAllow stop growing while its rule counters keep counting what the
   * enforced ones count. The caller removes the candidate after a promotion (setShadow(null)).
   * @param candidate the caller's name for it (ShadowCounters.candidate), at most
   * MAX_SHADOW_NAME_BYTES of UTF-8; default the hex of its compiled fingerprint.
   * @throws RuleSetError (a bad rule, or a name too long), CapacityError: nothing touched.
   * DatapathError: the kernel refused a write; no candidate is installed then (the flag stays clear).
   */
  async setShadow(ruleSet: RuleSetSpec | null, candidate?: string): Promise<void> {
    const { ep_shadow_rules: rules, ep_shadow_wild: wild, ep_shadow_lpm: lpm, ep_shadow_cwords: cwords } = this.#maps;
    if (ruleSet === null) {
      try {
        this.#shadow.disable();
        // Packets that read the flag before still hold the inner maps they took (freed after them).
        for (const outer of [lpm, cwords]) outer.delete(u32Bytes(0));
        // The union names no list now: its list slots are free for others.
        this.#lists.writeTables('shadow', [], { slots: [], key: '' });
      } catch (cause) {
        throw new DatapathError('remove shadow candidate', { cause });
      }
      return;
    }
    const tables = new TableCompiler().compile(ruleSet);
    const name = candidate ?? Buffer.from(tables.fingerprint).toString('hex');
    const nameBytes = Buffer.byteLength(name, 'utf8');
    if (nameBytes > MAX_SHADOW_NAME_BYTES) throw new RuleSetError('candidate', `the candidate's name is ${nameBytes} bytes of UTF-8, at most ${MAX_SHADOW_NAME_BYTES}`);
    const { union, unionSpec, epoch } = this.#shadowUnion(ruleSet, tables);
    try {
      this.#shadow.disable();
      this.#waitForPackets();
      // After the previous union is out of use: a slot it named may be taken now.
      const lists = this.#placeLists(unionSpec.lists, { ...this.#enforced?.spec.lists, ...ruleSet.lists }, new Set([...this.#lists.namedBy(0), ...this.#lists.namedBy(1)]));
      this.#shadow.zero(tables.ruleCount);
      // No update in place ever writes the union: its inner maps are sized to it exactly. The
      // union's match tables, the candidate's actions.
      writeTablesWhole({ slot: 0, rules, wild, lpm, cwords }, { ...unionSpec, rules: tables.rules }, (count) => Math.max(1, count));
      this.#lists.writeTables('shadow', unionSpec.lists, lists);
      this.#writeUnionMaps(union);
      this.#shadow.enable({ name, ruleCount: tables.ruleCount, fingerprint: tables.fingerprint, epoch }, tables.ruleIds);
    } catch (cause) {
      throw new DatapathError(`set shadow candidate=${name} rules=${tables.ruleCount}`, { cause });
    }
  }

  // The lists of `vectors` (a compile's, in name order) held with their prefixes from `prefixes`, and where.
  #placeLists(vectors: readonly { name: string }[], prefixes: RuleSetSpec['lists'], busy: ReadonlySet<number>): ListPlacement {
    const lists = vectors.map((v): RuleSetList => ({ name: v.name, prefixes: prefixes?.[v.name] ?? [] }));
    return this.#lists.place(lists, busy);
  }

  // The slots and membership of the installed candidate's union as the candidate alone (its
  // rules, each its own slot; none the enforced set's), with the record's epoch cleared.
  #writeCandidateAlone(): void {
    const record = this.#shadow.candidate();
    if (record === undefined) return;
    this.#writeUnionMaps(candidateOnly(record.ruleCount));
    this.#shadow.setEpoch(0);
  }

  // The union's slot of each rule in each set (ep_shadow_slots) and which set each belongs to (ep_shadow_member).
  #writeUnionMaps(union: ShadowUnion): void {
    const { slots, member } = unionTables(union);
    if (slots.length > 0) writeArray(this.#maps.ep_shadow_slots, 0, slots, epShadowSlot.size);
    this.#maps.ep_shadow_member.set(u32Bytes(0), member);
  }

  // The union of the live rule set (when this process applied it and it is still live, as ep_active
  // and the generation's epoch say) and the candidate, compiled; else the candidate alone, epoch 0.
  #shadowUnion(ruleSet: RuleSetSpec, candidateTables: CompiledTables): { union: ShadowUnion; unionSpec: CompiledTables; epoch: number } {
    const alone = { union: candidateOnly(ruleSet.rules.length, ruleSet.rules), unionSpec: candidateTables, epoch: 0 };
    const enforced = this.#enforced;
    const active = this.#readActive();
    if (enforced === undefined || enforced.generation !== active || this.#conntrack.readGeneration(active).epoch !== enforced.epoch) return alone;
    const union = mergeRuleSets(enforced.spec, ruleSet);
    if (union === undefined) return alone;
    try {
      return { union, unionSpec: new TableCompiler().compile({ rules: union.rules, defaultAction: 'allow', ...(union.lists ? { lists: union.lists } : {}) }), epoch: enforced.epoch };
    } catch (error) {
      if (error instanceof CapacityError) return alone;
      throw error;
    }
  }

  /**
   * How packets are classified while a candidate is set: 'one' walk of the union for both rule
   * sets (the union holds the live generation's rule set), or 'two' classifications (it does not:
   * an apply since, or no enforced rule set known when the candidate was set).
   * @returns undefined when no candidate is set.
   * @throws DatapathError.
   */
  shadowWalk(): 'one' | 'two' | undefined {
    try {
      const record = this.#shadow.candidate();
      if (record === undefined) return undefined;
      return record.epoch !== 0 && record.epoch === this.#conntrack.readGeneration(this.#readActive()).epoch ? 'one' : 'two';
    } catch (cause) {
      throw new DatapathError('read shadow candidate', { cause });
    }
  }

  /**
   * What the shadow candidate counted since it was installed (ShadowDatapath): its rules by id,
   * its default action, the packets both classified and those whose verdicts differed, and the
   * newest SHADOW_RING_SAMPLES differing packets of all CPUs, oldest first.
   * @returns null when no candidate is installed.
   * @throws DatapathError.
   */
  readShadow(): ShadowCounters | null {
    try {
      return this.#shadow.read();
    } catch (cause) {
      throw new DatapathError('read shadow counters', { cause });
    }
  }

  /**
   * Turns `generation`'s tables from `held` into `tables` by writing the compiler's deltas in
   * order: rule slots and wildcard vectors they touch, inner-map entries they delete and write.
   * Counters: a slot whose rule id stays keeps counting for it (readCounters sums generations and
   * carry by id, so the totals are a whole install's); a slot whose rule id changes has its count
   * moved to the carry under the old id and is zeroed, as a whole install does for every slot.
   * @param heldIds the rule ids of the generation's slots 1.. now.
   * @returns the inner maps' room and the entries written, or undefined (nothing written) when
   * the inner maps cannot hold the new tables or the difference is so large that a whole install
   * writes less.
   */
  #update(generation: number, held: HeldGeneration, tables: CompiledTables, deltas: readonly TablesDelta[], heldIds: readonly number[], active: number): (InnerRoom & { written: number }) | undefined {
    const lpmWrites = deltas.reduce((n, d) => n + d.lpmDeletes.length + d.lpm.count, 0);
    const wordWrites = deltas.reduce((n, d) => n + d.wordDeletes.length + d.classWords.count, 0);
    if (deltas.some((d) => d.lpmCount > held.lpmCapacity || d.wordCount > held.wordsCapacity)) return undefined;
    if (lpmWrites > Math.max(1024, tables.lpmCount / 2) || wordWrites > Math.max(1024, tables.wordCount / 2)) return undefined;
    const slots = [...new Set(deltas.flatMap((d) => d.ruleSlots))].sort((a, b) => a - b);
    const moved = slots.filter((slot) => slot > 0 && heldIds[slot - 1] !== tables.ruleIds[slot - 1]);
    if (moved.length > MAX_MOVED_SLOTS) return undefined;
    this.#counters.moveSlots(generation, heldIds, moved);
    if (slots.length > 0) {
      this.#maps.ep_rules.setBatch(
        slots.map((slot) => u32Bytes(generation * RULE_SLOTS + slot)),
        slots.map((slot) => tables.rules.subarray(slot * sizes.rule, (slot + 1) * sizes.rule)),
      );
    }
    const wild = deltas.some((d) => d.wild);
    if (wild) writeArray(this.#maps.ep_wild, generation * WILD_COUNT, tables.wild, sizes.bitvec);
    // Whole, like the wildcard vectors: one element of a few KiB, and any prefix or wildcard
    // change may move every entry's bits.
    this.#writeScan(generation, tables.scan);
    for (const [outer, pick] of [
      [this.#maps.ep_lpm, (d: TablesDelta) => ({ deletes: d.lpmDeletes, entries: d.lpm })],
      [this.#maps.ep_cwords, (d: TablesDelta) => ({ deletes: d.wordDeletes, entries: d.classWords })],
    ] as const) {
      const id = outer.get(u32Bytes(generation));
      if (id === undefined) throw new DatapathError(`update generation=${generation}: ${outer.name} holds no inner map`);
      const inner = BpfMap.fromId(u32Codec.decode(id));
      try {
        for (const delta of deltas) {
          const { deletes, entries } = pick(delta);
          for (const key of deletes) inner.delete(key);
          if (entries.count > 0) writeEntries(inner, entries);
        }
      } finally {
        inner.close();
      }
    }
    // Counts of ids that left this generation and are in neither generation now are dropped, as
    // a whole install's prune does (only the ids moved out can have become such).
    const activeIds = this.#generationRuleIds(active);
    const gone = moved.map((slot) => heldIds[slot - 1] as number).filter((id) => id !== DEFAULT_RULE_ID && !tables.ruleIds.includes(id) && !activeIds.includes(id));
    if (gone.length > 0) this.#counters.dropCarry(gone);
    return { lpmCapacity: held.lpmCapacity, wordsCapacity: held.wordsCapacity, written: lpmWrites + wordWrites + slots.length + (wild ? WILD_COUNT : 0) + moved.length + (tables.scan === undefined ? 0 : 1) };
  }

  // Generation `generation`'s load-balancing tables (LB.md, "Apply and the switch"): its stale VIP
  // entries deleted, then its backends, slot blocks and VIP entries written with batch updates.
  // The whole generation is rewritten (LB.md's per-service "writing little" is not built yet;
  // apply() skips this when the generation already holds the same layout).
  #installLb(generation: number, lb: LbTablesSpec): void {
    const cfg = this.#lbCfg();
    const wanted = new Set<string>();
    for (let i = 0; i < lb.vip.count; i++) wanted.add(Buffer.from(lb.vip.keys.subarray(i * lbSizes.vipKey, (i + 1) * lbSizes.vipKey)).toString('hex'));
    const stale: Uint8Array[] = [];
    for (const key of this.#maps.ep_lb_vip.keys()) if (key[0] === generation && !wanted.has(Buffer.from(key).toString('hex'))) stale.push(key);
    for (const key of stale) this.#maps.ep_lb_vip.delete(key);
    if (lb.backendCount > 0) writeArray(this.#maps.ep_lb_backends, generation * cfg.backends, lb.backends, lbSizes.backend);
    if (lb.blockCount > 0) writeArray(this.#maps.ep_lb_slots, generation * cfg.blocks, lb.slots, lbSizes.block);
    if (lb.vip.count > 0) writeEntries(this.#maps.ep_lb_vip, lb.vip);
  }

  #readLbStats(): LbCounters {
    const key = new Uint8Array(4);
    return Object.fromEntries(
      LB_STAT_NAMES.map((name, index) => {
        u32Codec.encode(index, key);
        return [name, sumPerCpu(this.#maps.ep_lb_stats.getPerCpu(key) ?? [])];
      }),
    ) as unknown as LbCounters;
  }

  // The per-generation sizes the programs index ep_lb_slots and ep_lb_backends by.
  #lbCfg(): { blocks: number; backends: number } {
    return { blocks: Math.floor(this.#maps.ep_lb_slots.maxEntries / 2), backends: Math.floor(this.#maps.ep_lb_backends.maxEntries / 2) };
  }

  #writeLbCfg(): void {
    this.#maps.ep_lb_cfg.set(u32Bytes(0), encode(epLbCfg, this.#lbCfg()));
  }

  #generationRuleIds(generation: number, ruleCount?: number): number[] {
    const cached = this.#ruleIds[generation];
    if (cached !== undefined) return cached;
    const count = ruleCount ?? this.#readMeta(generation).ruleCount;
    const ids: number[] = [];
    for (let index = 1; index <= count; index++) {
      const value = this.#maps.ep_rules.get(u32Bytes(generation * RULE_SLOTS + index));
      ids.push(value === undefined ? DEFAULT_RULE_ID : epRule.decode(value).ruleId);
    }
    this.#ruleIds[generation] = ids;
    return ids;
  }

  #readActive(): number {
    const value = this.#maps.ep_active.get(u32Bytes(0));
    return value === undefined ? 0 : u32Codec.decode(value) & 1;
  }

  #readMeta(generation: number): { ruleCount: number; valid: boolean; fingerprint: Uint8Array } {
    const meta = this.#meta.get(generation);
    return meta === undefined ? { ruleCount: 0, valid: false, fingerprint: new Uint8Array(32) } : { ruleCount: meta.ruleCount, valid: meta.valid === 1, fingerprint: meta.fingerprint };
  }

  #writeMeta(generation: number, ruleCount: number, valid: boolean, fingerprint: Uint8Array): void {
    this.#meta.set(generation, { ruleCount, valid: valid ? 1 : 0, fingerprint });
    if (!valid) this.#ruleIds[generation] = undefined;
  }
}

/**
 * Where one rule set's tables are written whole: slot `slot` of the rules and wildcard arrays
 * (at slot * RULE_SLOTS, slot * WILD_COUNT) and of the LPM and class-word outer maps. A
 * generation's slot of the generation maps, or slot 0 of the shadow candidate's maps.
 */
interface TablesSlot {
  readonly slot: number;
  readonly rules: BpfMap;
  readonly wild: BpfMap;
  readonly lpm: BpfMap;
  readonly cwords: BpfMap;
}

/** What a generation written whole takes from a compile: the arrays, and the variable tables in chunks. */
type WholeTables = Pick<CompiledTables, 'ruleCount' | 'rules' | 'wild' | 'scan' | 'lpmCount' | 'wordCount' | 'lpmChunks' | 'wordChunks'>;

/**
 * Writes `tables` whole into `at`: its rules and wildcard vectors, and fresh inner maps of
 * `capacity(entries)` entries swapped into the outer maps (each swap returns after an RCU grace
 * period). Counters are the caller's.
 * @returns the inner maps' capacities.
 */
function writeTablesWhole(at: TablesSlot, tables: WholeTables, capacity: (count: number) => number): InnerRoom {
  writeArray(at.rules, at.slot * RULE_SLOTS, tables.rules, sizes.rule);
  writeArray(at.wild, at.slot * WILD_COUNT, tables.wild, sizes.bitvec);
  const room = { lpmCapacity: capacity(tables.lpmCount), wordsCapacity: capacity(tables.wordCount) };
  const lpm = BpfMap.create({ type: 'lpm_trie', name: 'ep_lpm_in', keySize: sizes.lpmKey, valueSize: sizes.classRef, maxEntries: room.lpmCapacity, flags: 1 /* BPF_F_NO_PREALLOC */ });
  const words = BpfMap.create({ type: 'hash', name: 'ep_cwords_in', keySize: sizes.wordKey, valueSize: sizes.word, maxEntries: room.wordsCapacity });
  try {
    for (const chunk of tables.lpmChunks()) writeEntries(lpm, chunk);
    for (const chunk of tables.wordChunks()) writeEntries(words, chunk);
    at.lpm.setInnerMap(u32Bytes(at.slot), lpm);
    at.cwords.setInnerMap(u32Bytes(at.slot), words);
  } finally {
    // The outer maps now hold the references.
    lpm.close();
    words.close();
  }
  return room;
}

/** Entries an inner map holds (max_entries) beyond the tables written whole into it. */
interface InnerRoom {
  readonly lpmCapacity: number;
  readonly wordsCapacity: number;
}

/** What one generation holds, as this process wrote it. */
interface HeldGeneration extends InnerRoom {
  /** The compiler and its compile whose tables the generation holds. */
  readonly compiler: TableCompiler;
  readonly version: number;
  readonly lbFingerprint: Uint8Array;
  /** As in ep_meta: the tables' and the load-balancing layout's together. */
  readonly fingerprint: Uint8Array;
}

/**
 * max_entries of an inner map written whole with `count` entries: 1/8 more (at least 64), so
 * that later changes fit in place. The LPM trie allocates per entry (BPF_F_NO_PREALLOC); the
 * class-word hash must match its template's flags (ep_maps.h: preallocated), so its room costs
 * about 1/8 more of its kernel memory.
 */
function withRoom(count: number): number {
  return count + Math.max(64, Math.ceil(count / 8));
}

/** Counter slots an update in place moves one by one; more: the generation is written whole (batches). */
const MAX_MOVED_SLOTS = 4096;

/**
 * A counter read this long (ms) after a switch runs the barrier first, so the idle generation's
 * counts are final and kept between reads (CounterTables.readTotals). Sooner (the flush right
 * after an apply) it reads the idle generation again instead: the barrier's synchronize_rcu
 * stays off the apply's path.
 */
export const COUNTER_FREEZE_MS = 1000;

const TC_DIRECTIONS: readonly TcDirection[] = ['ingress', 'egress'];

/** A load-balancing spec without services. */
const NO_SERVICES: LbSpec = { services: [] };

/** max_entries of the load-balancing maps for `capacity` per generation (two generations each). */
function lbMapEntries(capacity: LbCapacity): Record<string, number> {
  const blocks = Math.floor(capacity.slots / LB_BLOCK_SLOTS);
  for (const [name, value] of [
    ['services', capacity.services],
    ['slot blocks', blocks],
    ['backends', capacity.backends],
  ] as const) {
    if (!Number.isInteger(value) || value < 1 || value > 2 ** 30) throw new DatapathError(`open datapath: lbCapacity ${name} must be an integer in 1..2^30, got ${value}`);
  }
  return { ep_lb_vip: 2 * capacity.services, ep_lb_slots: 2 * blocks, ep_lb_backends: 2 * capacity.backends };
}

// Tables are built packed (keys and values back to back), and written so: one batch update with
// no array per element. A 65,536-rule whole write made ~2 million small views and key buffers
// (subarray and u32Bytes per element), a third of the first apply's garbage (BENCHMARKS.md).
function writeArray(map: BpfMap, first: number, bytes: Uint8Array, size: number): void {
  if (size !== map.valueSize) throw new RangeError(`map ${map.name}: ${size}-byte elements, the map holds ${map.valueSize}`);
  map.setBatchPacked(u32KeyRange(first, Math.ceil(bytes.length / size)), bytes);
}

function writeEntries(map: BpfMap, entries: { keySize: number; valueSize: number; count: number; keys: Uint8Array; values: Uint8Array }): void {
  if (entries.keySize !== map.keySize || entries.valueSize !== map.valueSize) throw new RangeError(`map ${map.name}: ${entries.keySize}/${entries.valueSize}-byte entries, the map holds ${map.keySize}/${map.valueSize}`);
  map.setBatchPacked(entries.keys.subarray(0, entries.count * entries.keySize), entries.values.subarray(0, entries.count * entries.valueSize));
}

function u32Bytes(value: number): Uint8Array {
  return encode(u32Codec, value);
}

// The identity of the programs an object holds, as the programs marker records it: the sha256
// of the whole file (any change to it, even one that leaves every instruction alone, loads the
// programs again; that costs an atomic replace of each hook, never a packet).
function objectIdentity(objectPath: string): Uint8Array {
  try {
    return new Uint8Array(createHash('sha256').update(readFileSync(objectPath)).digest());
  } catch (cause) {
    throw new DatapathError(`load datapath object=${objectPath}`, { cause });
  }
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((byte, i) => byte === b[i]);
}

/**
 * Writes zeros over one element in every 4 KiB page of `map` (an ARRAY just created, so all
 * zeros already): the page's first write is taken here, not by a packet.
 */
function writeEveryPage(map: BpfMap): void {
  const step = Math.max(1, Math.floor(4096 / map.valueSize));
  const count = Math.ceil(map.maxEntries / step);
  for (let first = 0; first < count; first += 8192) {
    const n = Math.min(8192, count - first);
    const keys = new Uint8Array(n * 4);
    const view = new DataView(keys.buffer);
    for (let i = 0; i < n; i++) view.setUint32(i * 4, (first + i) * step, true);
    map.setBatchPacked(keys, new Uint8Array(n * map.valueSize));
  }
}
