// The node's source blocklist from the intent: every prefix list with use DENY_SOURCE whose
// selector matches the node, and every block that selects it and is active, merged into one set
// of prefixes with an expiry each (never, for lists; the block's, moved onto CLOCK_TAI), and
// written into the datapath's tries by difference when it is small (in place, no switch) or whole
// (built beside, one switch). Expired blocks stop matching in the datapath by its own clock; they
// are dropped from the tries lazily, at the next sync or by a timer at the next expiry.
import type { Cidr, Snapshot } from '@edgeplane/proto';
import { blockActive, matchesLabelSelector, parseCidr, PrefixListUse, type PrefixList } from '@edgeplane/proto';
import { BLOCKLIST_F_BLOCK, BlocklistPacker, type BlocklistEntry, type BlocklistSpec } from '../datapath/blocklist.js';

/** What BlocklistSync needs of the datapath (EbpfDatapath.blocklist). */
export interface BlocklistWriter {
  load(spec: BlocklistSpec): unknown;
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
    const desired: Desired = new Map();
    let nextExpiry = Infinity;
    for (const list of snapshot.prefixLists) if (selects(list, labels)) for (const p of list.spec!.prefixes) desired.set(p, 0);
    for (const block of snapshot.blocks) {
      if (!blockActive(block, now) || !matchesLabelSelector(block.nodeSelector, labels)) continue;
      const expires = block.expireTime!.getTime();
      nextExpiry = Math.min(nextExpiry, expires);
      for (const p of block.prefixes) {
        const held = desired.get(p);
        if (held === undefined || (held !== 0 && held < expires)) desired.set(p, expires);
      }
    }
    this.#schedule(nextExpiry, now);
    const clock = this.#writer.readClock();
    const offset = clock.taiNs - clock.utcNs;
    const entry = (p: string, expires: number): BlocklistEntry => ({ cidr: parseCidr(p)!, expiresTaiNs: expires === 0 ? 0n : BigInt(expires) * 1_000_000n + offset, flags: expires === 0 ? 0 : BLOCKLIST_F_BLOCK });

    const held = this.#held;
    if (held !== undefined) {
      const adds: BlocklistEntry[] = [];
      const removes: Cidr[] = [];
      for (const [p, expires] of desired) {
        if (held.get(p) !== expires) adds.push(entry(p, expires));
        if (adds.length > this.#maxInPlace) break;
      }
      if (adds.length <= this.#maxInPlace) {
        for (const p of held.keys()) if (!desired.has(p)) removes.push(parseCidr(p)!);
        if (adds.length + removes.length === 0) return { mode: 'unchanged', entries: desired.size, added: 0, removed: 0 };
        if (adds.length + removes.length <= this.#maxInPlace) {
          this.#held = undefined; // unknown until both writes are done
          if (this.#writer.add(adds)) {
            this.#writer.remove(removes);
            this.#held = desired;
            return { mode: 'updated', entries: desired.size, added: adds.length, removed: removes.length };
          }
        }
      }
    }
    // Straight from the text into the packed keys: no object per prefix (a million-prefix list).
    const packer = new BlocklistPacker({ v4: desired.size });
    for (const [p, expires] of desired) packer.addText(p, expires === 0 ? 0n : BigInt(expires) * 1_000_000n + offset, expires === 0 ? 0 : BLOCKLIST_F_BLOCK);
    this.#held = undefined;
    this.#writer.load(packer.finish());
    this.#held = desired;
    return { mode: 'loaded', entries: desired.size, added: desired.size, removed: 0 };
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
        this.#held = undefined;
        this.#onError(err);
      }
    }, delay);
    this.#timer.unref();
  }
}

function selects(list: PrefixList, labels: Readonly<Record<string, string>>): boolean {
  return list.spec?.use === PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE && matchesLabelSelector(list.spec.nodeSelector, labels);
}
