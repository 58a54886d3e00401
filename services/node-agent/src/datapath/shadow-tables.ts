// The shadow candidate's maps of one datapath, seen from the agent (bpf/include/ep_shadow.h;
// bpf/README.md, "Shadow classification"): the flag and the agent's record of the candidate
// (ep_shadow[0]), its counters (ep_shadow_counters by rule slot, ep_shadow_stats) and the
// per-CPU rings of samples (ep_shadow_samples). The union's classification tables
// (ep_shadow_lpm, ep_shadow_cwords, ep_shadow_wild; shadow-union.ts), the candidate's actions
// (ep_shadow_rules) and the union's slots and membership (ep_shadow_slots, ep_shadow_member) are
// written by EbpfDatapath, the tables with the same code that writes a generation whole.
import { formatAddress, MAX_SHADOW_SAMPLES } from '@edgeplane/proto';
import { encode, TypedMap, u32, type BpfMap, type CodecValue } from 'libbpf-ts';
import { RULE_SLOTS } from './compile-tables.js';
import { CounterTables, zeroSlots, type CounterTotals } from './counters.js';
import type { Counter, ShadowCounters, ShadowSample } from './datapath.js';
import { DEFAULT_RULE_ID } from './rule-set.js';
import { epRule, epShadowCfg, epShadowSample } from './table-codecs.js';

/** The maps ShadowTables borrows, by their names in the object. */
export interface ShadowMaps {
  readonly ep_shadow: BpfMap;
  readonly ep_shadow_rules: BpfMap;
  readonly ep_shadow_counters: BpfMap;
  readonly ep_shadow_stats: BpfMap;
  readonly ep_shadow_samples: BpfMap;
}

/**
 * Samples each CPU's ring keeps (EP_SHADOW_SAMPLES), and readShadow() returns at most: the newest
 * of all rings together.
 */
export const SHADOW_RING_SAMPLES = 64;
/**
 * Bytes of UTF-8 a candidate's name may have (EP_SHADOW_NAME_MAX): it is pinned with the
 * candidate. Any name of 1,024 UTF-16 code units fits (at most 3 bytes each).
 */
export const MAX_SHADOW_NAME_BYTES = 3072;

/** EP_SHADOW_F_ON. */
const SHADOW_ON = 0x1;
/** EP_SHADOW_F_ONCE: the stats count each packet once (#readStats). */
const SHADOW_ONCE = 0x2;
/** enum ep_shadow_stat. */
const STAT = { agreed: 0, wouldDrop: 1, wouldAllow: 2, sampled: 3 } as const;
const STAT_COUNT = 4;
/** enum ep_shadow_verdict. */
const VERDICTS: Readonly<Record<number, ShadowSample['verdict']>> = { 1: 'wouldDrop', 2: 'wouldAllow' };
/** EP_PORT_NONE: no destination port (not TCP/UDP, or a non-first fragment). */
const PORT_NONE = 65536;

/** What ep_shadow[0] records of the installed candidate. */
export interface ShadowRecord {
  /** The caller's name for it (ShadowCounters.candidate). */
  readonly name: string;
  readonly ruleCount: number;
  /** sha-256 of the candidate as compiled (TablesSpec.fingerprint). */
  readonly fingerprint: Uint8Array;
  /** ep_gen_cfg.epoch of the enforced rule set the union holds; 0: the candidate alone. */
  readonly epoch: number;
  /** ep_shadow_cfg.flags as read (SHADOW_ON; SHADOW_ONCE unless an older agent set it, not recounted). */
  readonly flags?: number;
}

/**
 * The shadow maps of one pinned datapath. It borrows them (holds no fd of its own) and is usable
 * as long as they are open.
 */
export class ShadowTables {
  readonly #maps: ShadowMaps;
  readonly #cfg: TypedMap<number, CodecValue<typeof epShadowCfg>>;
  readonly #counters: CounterTables;
  /** The installed candidate's rule ids by slot - 1, as written; read back from ep_shadow_rules after a restart. */
  #ruleIds: readonly number[] | undefined;

  /**
   * @param maps the shadow maps of the object.
   * @throws RangeError if a map's value size differs from its struct.
   */
  constructor(maps: ShadowMaps) {
    for (const [map, size] of [
      [maps.ep_shadow, epShadowCfg.size],
      [maps.ep_shadow_samples, epShadowSample.size],
      [maps.ep_shadow_rules, epRule.size],
    ] as const) {
      if (map.valueSize !== size) throw new RangeError(`map ${map.name}: value size ${map.valueSize}, its struct is ${size} bytes`);
    }
    this.#maps = maps;
    this.#cfg = new TypedMap(maps.ep_shadow, u32, epShadowCfg);
    this.#counters = new CounterTables(maps.ep_shadow_counters, maps.ep_shadow_stats);
  }

  /** @returns the installed candidate, or undefined when none is (the flag is clear). */
  candidate(): ShadowRecord | undefined {
    const cfg = this.#cfg.get(0);
    if (cfg === undefined || (cfg.flags & SHADOW_ON) === 0) return undefined;
    const nameLen = Math.min(cfg.nameLen, MAX_SHADOW_NAME_BYTES);
    return { name: Buffer.from(cfg.name.subarray(0, nameLen)).toString('utf8'), ruleCount: cfg.ruleCount, fingerprint: cfg.fingerprint, epoch: cfg.epoch, flags: cfg.flags };
  }

  /**
   * Clears the flag (and the record): from here on a packet that reads it classifies by the
   * enforced rule set only. Packets that read it before may still be counting: the caller waits
   * for them (an RCU barrier) before it rewrites the candidate's tables or counters.
   */
  disable(): void {
    this.#cfg.set(0, { flags: 0, ruleCount: 0, nameLen: 0, epoch: 0, fingerprint: new Uint8Array(32), name: new Uint8Array(MAX_SHADOW_NAME_BYTES) });
    this.#ruleIds = undefined;
  }

  /**
   * Zeroes the counters a candidate of `ruleCount` rules uses, the shadow stats and every CPU's
   * ring of samples (one batch write each). Only while the flag is clear and no packet still
   * classifies by the candidate.
   */
  zero(ruleCount: number): void {
    this.#counters.zero(0, ruleCount);
    this.#counters.zeroStats(STAT_COUNT);
    zeroSlots(this.#maps.ep_shadow_samples, 0, SHADOW_RING_SAMPLES);
  }

  /**
   * Records the candidate and sets the flag: packets from here on are classified by it too. Its
   * tables must be written and its counters zeroed before.
   * @param ruleIds its rule ids in slot order (slot i + 1 holds ruleIds[i]).
   * @throws RangeError for a name longer than MAX_SHADOW_NAME_BYTES.
   */
  enable(record: ShadowRecord, ruleIds: readonly number[]): void {
    const name = Buffer.from(record.name, 'utf8');
    if (name.length > MAX_SHADOW_NAME_BYTES) throw new RangeError(`shadow candidate name: ${name.length} bytes, at most ${MAX_SHADOW_NAME_BYTES}`);
    const padded = new Uint8Array(MAX_SHADOW_NAME_BYTES);
    padded.set(name);
    this.#ruleIds = [...ruleIds];
    this.#cfg.set(0, { flags: SHADOW_ON | SHADOW_ONCE, ruleCount: record.ruleCount, nameLen: name.length, epoch: record.epoch, fingerprint: record.fingerprint, name: padded });
  }

  /** Rewrites the installed candidate's record with `epoch` (nothing when none is installed). */
  setEpoch(epoch: number): void {
    const cfg = this.#cfg.get(0);
    if (cfg === undefined || (cfg.flags & SHADOW_ON) === 0) return;
    this.#cfg.set(0, { ...cfg, epoch });
  }

  /**
   * After programs that count each packet once replaced ones that did not (an agent upgrade while
   * a candidate was installed: the record has no EP_SHADOW_F_ONCE): zeroes the shadow stats and
   * sets the flag, so the candidate's share is counted afresh by these programs. Its rule
   * counters and samples are kept. Only once the new programs are attached: a packet the old ones
   * were classifying at that instant may still count the old way (one at most per CPU).
   * @returns whether the stats were restarted.
   */
  recount(): boolean {
    const cfg = this.#cfg.get(0);
    if (cfg === undefined || (cfg.flags & SHADOW_ON) === 0 || (cfg.flags & SHADOW_ONCE) !== 0) return false;
    // AGREED, WOULD_DROP, WOULD_ALLOW; not SAMPLED, each CPU's next ring slot.
    this.#counters.zeroStats(STAT.sampled);
    this.#cfg.set(0, { ...cfg, flags: cfg.flags | SHADOW_ONCE });
    return true;
  }

  /**
   * What the installed candidate counted: its rules by id (as readCounters maps the enforced
   * slots: CounterTables.addGeneration), its default action, the shadow stats, and the newest
   * SHADOW_RING_SAMPLES samples of all CPUs, oldest first.
   * @returns null when no candidate is installed.
   */
  read(): ShadowCounters | null {
    const record = this.candidate();
    if (record === undefined) return null;
    const ruleIds = this.#candidateRuleIds(record.ruleCount);
    const totals: CounterTotals = new Map();
    this.#counters.addGeneration(totals, 0, ruleIds);
    const zero = (): Counter => ({ packets: 0, bytes: 0 });
    return {
      candidate: record.name,
      rules: new Map(ruleIds.map((id) => [id, totals.get(id) ?? zero()])),
      defaultAction: totals.get(DEFAULT_RULE_ID) ?? zero(),
      ...this.#readStats(record.flags ?? 0),
      samples: this.#samples(),
    };
  }

  /**
   * The shadow stats. Each packet classified by both rule sets is in exactly one of AGREED,
   * WOULD_DROP and WOULD_ALLOW (enum ep_shadow_stat), so the three read one after the other while
   * packets are counted are still one consistent reading: the packets classified are their sum.
   * (Programs that counted every packet CLASSIFIED and its verdict too left readings torn by the
   * packets counted between two reads: a rollout's reading showed 2,781 classified and 2,780
   * wouldDrop for a change that drops everything.) A candidate set by an agent of such programs,
   * not yet recounted (recount), is read as they counted, its verdicts read first.
   */
  #readStats(flags: number): Pick<ShadowCounters, 'classified' | 'wouldDrop' | 'wouldAllow'> {
    const wouldDrop = this.#counters.readStat(STAT.wouldDrop);
    const wouldAllow = this.#counters.readStat(STAT.wouldAllow);
    // Slot 0: AGREED, or (older programs' count, not recounted) every packet classified.
    const slot0 = this.#counters.readStat(STAT.agreed);
    if ((flags & SHADOW_ONCE) === 0) return { classified: slot0, wouldDrop, wouldAllow };
    return { classified: { packets: slot0.packets + wouldDrop.packets + wouldAllow.packets, bytes: slot0.bytes + wouldDrop.bytes + wouldAllow.bytes }, wouldDrop, wouldAllow };
  }

  #candidateRuleIds(ruleCount: number): readonly number[] {
    if (this.#ruleIds !== undefined && this.#ruleIds.length === ruleCount) return this.#ruleIds;
    const ids: number[] = [];
    if (ruleCount > 0) {
      // Slots 1..ruleCount in one batch read (slot 0, the default action, is skipped by starting after it).
      const read = this.#maps.ep_shadow_rules.getBatch(Math.min(ruleCount, RULE_SLOTS - 1), encode(u32, 0));
      for (const value of read.values) ids.push(epRule.decode(value).ruleId);
    }
    this.#ruleIds = ids;
    return ids;
  }

  // Every CPU's ring, merged by the time each sample was taken; the newest MAX_SHADOW_SAMPLES.
  #samples(): ShadowSample[] {
    const read = this.#maps.ep_shadow_samples.getPerCpuBatch(SHADOW_RING_SAMPLES);
    const taken: { ns: bigint; sample: ShadowSample }[] = [];
    for (const perCpu of read.values) {
      for (const bytes of perCpu) {
        const s = epShadowSample.decode(bytes);
        const verdict = VERDICTS[s.verdict];
        if (s.ns === 0n || verdict === undefined || (s.family !== 4 && s.family !== 6)) continue;
        const family = s.family;
        const address = (raw: Uint8Array): string => formatAddress(family, family === 4 ? raw.subarray(0, 4) : raw);
        taken.push({
          ns: s.ns,
          sample: {
            family,
            proto: s.proto,
            src: address(s.src),
            dst: address(s.dst),
            port: s.port === PORT_NONE ? 0 : s.port,
            verdict,
            enforcedRuleId: s.enforcedRuleId,
            candidateRuleId: s.candidateRuleId,
          },
        });
      }
    }
    taken.sort((a, b) => (a.ns < b.ns ? -1 : a.ns > b.ns ? 1 : 0));
    return taken.slice(-MAX_SHADOW_SAMPLES).map(({ sample }) => sample);
  }
}
