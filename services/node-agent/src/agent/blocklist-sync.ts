// The node's source blocklist from the intent: every prefix list with use DENY_SOURCE whose
// selector matches the node, and every block that selects it and is active, merged into one set
// of prefixes with an expiry each (never, for lists; the block's, moved onto CLOCK_TAI), and
// written into the datapath's tries by difference when it is small (in place, no switch) or whole
// (built beside, one switch). Expired blocks stop matching in the datapath by its own clock; they
// are dropped from the tries lazily, at the next sync or by a timer at the next expiry. A list the
// log changed by a few prefixes since the last sync costs those prefixes, not the list
// (prefixChangesBetween: the change is found from how the list was made).
import type { Cidr, Snapshot } from '@edgeplane/proto';
import { blockActive, matchesLabelSelector, parseCidr, prefixChangesBetween, PrefixListUse, type PrefixList } from '@edgeplane/proto';
import { BLOCKLIST_F_BLOCK, BlocklistPacker, type BlocklistEntry, type BlocklistSpec } from '../datapath/blocklist.js';

/** What BlocklistSync needs of the datapath (EbpfDatapath.blocklist). */
export interface BlocklistWriter {
  /** @returns the entries it holds now, by family (each prefix once). */
  load(spec: BlocklistSpec): { v4: number; v6: number };
  add(entries: readonly BlocklistEntry[]): boolean;
  remove(prefixes: readonly Cidr[]): number;
  readClock(): { taiNs: bigint; utcNs: bigint };
}

/** Options of {@link BlocklistSync}. */
export interface BlocklistSyncOptions {
  /** Wall clock, ms since the epoch (UTC). */
  now?: () => number;
  /** Changes up to this many are written in place; more load the whole set. Default 4096. */
  maxInPlace?: number;
  /** Called after a timer's lazy drop fails (the datapath has stopped matching the entries anyway). */
  onError?: (err: unknown) => void;
}

/** What one sync did. */
export interface BlocklistSyncResult {
  readonly mode: 'unchanged' | 'updated' | 'loaded';
  /** Prefixes the node enforces now. */
  readonly entries: number;
  readonly added: number;
  readonly removed: number;
}

/** One prefix's effective expiry: 0 = never (a list), else ms since the epoch (a block). */
type Desired = Map<string, number>;

/**
 * Keeps one datapath's blocklist equal to the intent. Owns a timer; close() stops it (the tries
 * keep enforcing).
 */
export class BlocklistSync {
  readonly #writer: BlocklistWriter;
  readonly #now: () => number;
  readonly #maxInPlace: number;
  readonly #onError: (err: unknown) => void;
  /** What the tries hold, as this object wrote it (undefined: unknown, the next sync loads whole). */
  #held: Desired | undefined;
  /**
   * The tries hold what #lists and #blocks ask, but #held and #shared are not made yet: a whole
   * load does not build its map of every prefix (0.9 s for a million) before the ACK, and a
   * change to a lone list with no blocks is written from the change alone (#byOneList), so that
   * map is made only when a sync needs it (#heldMap).
   */
  #derived = false;
  /** With #held or #derived: how many prefixes the tries hold. */
  #entries = 0;
  /** With #held: the prefixes array of each deny list it holds, by name. */
  #lists: ReadonlyMap<string, readonly string[]> = new Map();
  /** With #held: prefixes in more than one of those lists, and in how many more than one. */
  #shared = new Map<string, number>();
  /** With #held: the active blocks' prefixes and the latest expiry of each (ms). */
  #blocks: Desired = new Map();
  /** Per list, the object its prefixes came from and their parsed form, so an unchanged list costs nothing. */
  #last: { snapshot: Snapshot; labels: Readonly<Record<string, string>> } | undefined;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(writer: BlocklistWriter, options: BlocklistSyncOptions = {}) {
    this.#writer = writer;
    this.#now = options.now ?? Date.now;
    this.#maxInPlace = options.maxInPlace ?? 4096;
    this.#onError = options.onError ?? (() => undefined);
  }

  /**
   * Makes the tries hold what `snapshot` asks of a node with `labels`. Linear in the prefixes of
   * the lists that select the node.
   * @throws DatapathError (the tries keep what they held: a whole load is one switch; an in-place
   * update that fails part-way is loaded whole by the next sync).
   */
  sync(snapshot: Snapshot, labels: Readonly<Record<string, string>>): BlocklistSyncResult {
    this.#last = { snapshot, labels };
    const now = this.#now();
    const lists = new Map<string, readonly string[]>();
    for (const list of snapshot.prefixLists) if (selects(list, labels)) lists.set(list.metadata?.name ?? '', list.spec!.prefixes);
    const blocks: Desired = new Map();
    let nextExpiry = Infinity;
    for (const block of snapshot.blocks) {
      if (!blockActive(block, now) || !matchesLabelSelector(block.nodeSelector, labels)) continue;
      const expires = block.expireTime!.getTime();
      nextExpiry = Math.min(nextExpiry, expires);
      for (const p of block.prefixes) blocks.set(p, Math.max(blocks.get(p) ?? 0, expires));
    }
    this.#schedule(nextExpiry, now);
    const clock = this.#writer.readClock();
    const offset = clock.taiNs - clock.utcNs;
    const entry = (p: string, expires: number): BlocklistEntry => ({ cidr: parseCidr(p)!, expiresTaiNs: expires === 0 ? 0n : BigInt(expires) * 1_000_000n + offset, flags: expires === 0 ? 0 : BLOCKLIST_F_BLOCK });
    const changed = this.#byChanges(lists, blocks, entry);
    if (changed === 'too-big' || !this.#known) return this.#loadWhole(lists, blocks, offset);
    if (changed !== undefined) return changed;

    const { desired, shared } = desiredOf(lists, blocks);
    const hold = (): void => {
      this.#held = desired;
      this.#derived = false;
      this.#entries = desired.size;
      this.#lists = lists;
      this.#shared = shared;
      this.#blocks = blocks;
    };

    const held = this.#heldMap();
    if (held !== undefined) {
      const adds: BlocklistEntry[] = [];
      const removes: Cidr[] = [];
      for (const [p, expires] of desired) {
        if (held.get(p) !== expires) adds.push(entry(p, expires));
        if (adds.length > this.#maxInPlace) break;
      }
      if (adds.length <= this.#maxInPlace) {
        for (const p of held.keys()) if (!desired.has(p)) removes.push(parseCidr(p)!);
        if (adds.length + removes.length === 0) {
          hold();
          return { mode: 'unchanged', entries: desired.size, added: 0, removed: 0 };
        }
        if (adds.length + removes.length <= this.#maxInPlace) {
          this.#forget(); // unknown until both writes are done
          if (this.#writer.add(adds)) {
            this.#writer.remove(removes);
            hold();
            return { mode: 'updated', entries: desired.size, added: adds.length, removed: removes.length };
          }
        }
      }
    }
    return this.#loadWhole(lists, blocks, offset);
  }

  // The whole set, loaded from the lists and blocks straight into the packer (which keeps each
  // prefix once: permanent beats expiring): no map of every prefix (#held, for the next syncs'
  // differences: made when one needs it).
  #loadWhole(lists: ReadonlyMap<string, readonly string[]>, blocks: Desired, offset: bigint): BlocklistSyncResult {
    let size = 0;
    for (const prefixes of lists.values()) size += prefixes.length;
    // Straight from the text into the packed keys: no object per prefix (a million-prefix list).
    const packer = new BlocklistPacker({ v4: size, hashed: true });
    for (const prefixes of lists.values()) for (const p of prefixes) packer.addText(p);
    for (const [p, expires] of blocks) packer.addText(p, BigInt(expires) * 1_000_000n + offset, BLOCKLIST_F_BLOCK);
    this.#forget();
    const loaded = this.#writer.load(packer.finish());
    this.#derived = true;
    this.#lists = lists;
    this.#blocks = blocks;
    const entries = loaded.v4 + loaded.v6;
    this.#entries = entries;
    return { mode: 'loaded', entries, added: entries, removed: 0 };
  }

  /** Whether the tries hold what #lists and #blocks ask (a map of it made or not). */
  get #known(): boolean {
    return this.#held !== undefined || this.#derived;
  }

  /** Nothing is known of what the tries hold: the next sync loads whole. */
  #forget(): void {
    this.#held = undefined;
    this.#derived = false;
  }

  /** #held (and #shared), made from #lists and #blocks if they were not yet. */
  #heldMap(): Desired | undefined {
    if (this.#derived) {
      const { desired, shared } = desiredOf(this.#lists, this.#blocks);
      this.#held = desired;
      this.#shared = shared;
      this.#derived = false;
    }
    return this.#held;
  }

  // A change to the one list the node holds, no block before or after, while #held is not made:
  // what the change added and removed is what the tries must (the list held every prefix it
  // removed and none it added, as applyPrefixListChange checked), so no map is made.
  // @returns undefined when it does not apply (nothing done).
  #byOneList(lists: ReadonlyMap<string, readonly string[]>, blocks: Desired, entry: (p: string, expires: number) => BlocklistEntry): BlocklistSyncResult | 'too-big' | undefined {
    if (!this.#derived || lists.size !== 1 || this.#lists.size !== 1 || blocks.size !== 0 || this.#blocks.size !== 0) return undefined;
    const [name, after] = [...lists][0]!;
    const before = this.#lists.get(name);
    if (before === undefined) return undefined;
    if (before === after) return { mode: 'unchanged', entries: this.#entries, added: 0, removed: 0 };
    const change = prefixChangesBetween(before, after, LINEAGE_LIMIT);
    if (change === undefined) return undefined;
    if (change.add.length + change.remove.length > this.#maxInPlace) return 'too-big';
    this.#forget(); // unknown until both writes are done
    if (change.remove.length > 0) this.#writer.remove(change.remove.map((p) => parseCidr(p)!));
    if (!this.#writer.add(change.add.map((p) => entry(p, 0)))) return undefined;
    this.#derived = true;
    this.#lists = lists;
    this.#entries += change.add.length - change.remove.length;
    return { mode: 'updated', entries: this.#entries, added: change.add.length, removed: change.remove.length };
  }

  // The sync by the changes of the lists since the last one (prefixChangesBetween, or a list
  // selecting or no longer selecting the node whole) and of the blocks: in the size of those
  // changes. @returns undefined (nothing done) when it cannot: nothing held, a list changed
  // otherwise, or no room in place; 'too-big' (nothing done) when the changes are known to be
  // more than maxInPlace prefixes (a whole load, with no difference computed).
  #byChanges(lists: ReadonlyMap<string, readonly string[]>, blocks: Desired, entry: (p: string, expires: number) => BlocklistEntry): BlocklistSyncResult | 'too-big' | undefined {
    const lone = this.#byOneList(lists, blocks, entry);
    if (lone !== undefined || !this.#known) return lone;
    const held = this.#heldMap()!;
    // Per prefix, how many more (or fewer) lists hold it.
    const delta = new Map<string, number>();
    let size = 0;
    for (const name of new Set([...this.#lists.keys(), ...lists.keys()])) {
      const before = this.#lists.get(name);
      const after = lists.get(name);
      if (before === after) continue;
      const change = before === undefined ? { add: after!, remove: [] } : after === undefined ? { add: [], remove: before } : prefixChangesBetween(before, after, LINEAGE_LIMIT);
      if (change === undefined) return undefined;
      size += change.add.length + change.remove.length;
      if (size > this.#maxInPlace) return 'too-big';
      for (const p of change.remove) delta.set(p, (delta.get(p) ?? 0) - 1);
      for (const p of change.add) delta.set(p, (delta.get(p) ?? 0) + 1);
    }
    const touched = new Set([...delta.keys(), ...this.#blocks.keys(), ...blocks.keys()]);
    if (touched.size > this.#maxInPlace) return 'too-big';
    const adds: BlocklistEntry[] = [];
    const removes: Cidr[] = [];
    const next: { p: string; count: number; expires: number | undefined }[] = [];
    for (const p of touched) {
      const was = held.get(p);
      const count = (was === 0 ? 1 + (this.#shared.get(p) ?? 0) : 0) + (delta.get(p) ?? 0);
      // A list never expires: it wins over a block of the same prefix.
      const expires = count > 0 ? 0 : blocks.get(p);
      next.push({ p, count, expires });
      if (expires === was) continue;
      if (expires === undefined) removes.push(parseCidr(p)!);
      else adds.push(entry(p, expires));
    }
    if (adds.length + removes.length === 0 && delta.size === 0) {
      this.#blocks = blocks;
      return { mode: 'unchanged', entries: held.size, added: 0, removed: 0 };
    }
    this.#forget(); // unknown until both writes are done
    if (removes.length > 0) this.#writer.remove(removes);
    if (!this.#writer.add(adds)) return undefined;
    for (const { p, count, expires } of next) {
      if (expires === undefined) held.delete(p);
      else held.set(p, expires);
      if (count > 1) this.#shared.set(p, count - 1);
      else this.#shared.delete(p);
    }
    this.#held = held;
    this.#entries = held.size;
    this.#lists = lists;
    this.#blocks = blocks;
    return { mode: adds.length + removes.length === 0 ? 'unchanged' : 'updated', entries: held.size, added: adds.length, removed: removes.length };
  }

  /** Stops the expiry timer; idempotent. The tries keep enforcing. */
  close(): void {
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  // The lazy drop: a sync of the last intent just after the next block expires (the datapath
  // stopped matching it at the expiry by its own clock; this only frees the entries).
  #schedule(at: number, now: number): void {
    clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#closed || at === Infinity) return;
    // setTimeout holds at most 2^31-1 ms; a later expiry is rescheduled on the way.
    const delay = Math.min(Math.max(0, at - now) + 1000, 2 ** 31 - 1);
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      const last = this.#last;
      if (last === undefined || this.#closed) return;
      try {
        this.sync(last.snapshot, last.labels);
      } catch (err) {
        this.#forget();
        this.#onError(err);
      }
    }, delay);
    this.#timer.unref();
  }
}

/**
 * Prefixes of a list's lineage composed at most (prefixChangesBetween), so that a change larger
 * than is written in place is known as such (a whole load, no difference: one API change holds
 * up to 50,000) rather than as a list of unknown origin (a map of every prefix, then a difference).
 */
const LINEAGE_LIMIT = 1 << 20;

/** Every prefix of the lists (never expiring) and of the blocks not in a list; and the prefixes in more than one list, with how many more. */
function desiredOf(lists: ReadonlyMap<string, readonly string[]>, blocks: Desired): { desired: Desired; shared: Map<string, number> } {
  const desired: Desired = new Map();
  const shared = new Map<string, number>();
  for (const prefixes of lists.values()) {
    for (const p of prefixes) {
      if (desired.has(p)) shared.set(p, (shared.get(p) ?? 0) + 1);
      else desired.set(p, 0);
    }
  }
  for (const [p, expires] of blocks) if (!desired.has(p)) desired.set(p, expires);
  return { desired, shared };
}

function selects(list: PrefixList, labels: Readonly<Record<string, string>>): boolean {
  return list.spec?.use === PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE && matchesLabelSelector(list.spec.nodeSelector, labels);
}
