import { metrics } from '@opentelemetry/api';
import { PatchError, SignatureError, openHistoryReset, openLogHead, type LogEntry, type SignedLogHead, type SignedLogEntry, type SignedSnapshot, type Snapshot, type TrustedKeys } from '@edgeplane/proto';
import type { Subscription } from '@nats-io/transport-node';
import { ChainError, FleetMismatchError, GapError } from './errors.js';
import { IntentChain, type OpenedEntry, type PolicyChange } from './intent-chain.js';
import type { IntentLog } from './intent-log.js';

/**
 * What a {@link ChainFollower} tells its owner. Every handler is optional; handlers must not
 * throw (what they throw is reported to `error`).
 */
export interface ChainFollowerEvents {
  /**
   * The chain moved to `revision`. `entries` are the entries applied since the previous call,
   * oldest first, and `changes` what they did to policies (in the same order). After a
   * catch-up this is called once for the whole read, so an owner far behind applies once.
   */
  advanced?(revision: bigint, entries: LogEntry[], changes: PolicyChange[]): void;
  /**
   * A message was skipped: it does not decode, its signature does not verify with a trusted
   * key, or its sequence does not match the revision it claims. `claimed` is the sequence it
   * was delivered or stored at (not believed: only verified entries are acted upon).
   */
  rejected?(reason: string, claimed: bigint | undefined): void;
  /** (Policy `rebuild`.) The log was rewound or forked: the chain was rebuilt from the stream. */
  resynced?(fromRevision: bigint, toRevision: bigint, reason: string): void;
  /**
   * (Policy `refuse`.) The log offers a shorter or different history than the one held: the
   * chain stays as it was (the owner keeps enforcing it) and nothing more is applied until the
   * log continues the held chain again.
   */
  diverged?(heldRevision: bigint, reason: string): void;
  /**
   * An operator-signed history reset with a new epoch was accepted: the chain was rebuilt from
   * the log as it is now (`resynced` follows) and any refusal lifted. The owner persists `epoch`.
   */
  reset?(epoch: bigint, reason: string): void;
  /** No verified heartbeat for longer than staleAfterMs: the log may be frozen. `sinceMs`: age of the newest. */
  stale?(sinceMs: number): void;
  /** A verified heartbeat arrived after `stale`. */
  fresh?(): void;
  /** Background work failed (a catch-up could not read the stream); it is retried on the next trigger. */
  error?(message: string, err: unknown): void;
}

/** What the follower did, since it was made. Plain numbers, for tests, benchmarks and metrics. */
export interface ChainFollowerStats {
  /** Reads of the stream (after a gap, at start, on request): each is one bounds request and a read. */
  catchUps: number;
  /** Chains rebuilt from scratch after a fork or rewind (policy `rebuild`). */
  resyncs: number;
  /** Times a shorter or different history was refused (policy `refuse`). */
  refusals: number;
  /** Messages skipped: undecodable, unverifiable, or at a sequence other than their revision. */
  rejected: number;
  /** Live entries applied directly, without reading the stream. */
  liveApplied: number;
  /** Entries delivered again that were already held (changed nothing). */
  duplicates: number;
  /**
   * Entries whose policy patch did not apply to the policy held (another base, or a result with
   * another digest): the chain stopped before them and waits for a snapshot that covers them.
   */
  patchFailures: number;
}

/** Options of {@link ChainFollower}. */
export interface ChainFollowerOptions {
  /** The keys whose signatures are accepted. */
  trusted: TrustedKeys;
  /** The fleet this follower belongs to: entries and snapshots of any other fleet are skipped. Unset: any. */
  fleetId?: string;
  /** The state to continue from (e.g. an agent's state file: already verified by its owner). */
  start?: Snapshot;
  /**
   * What to do when the log does not continue the held chain (a fork, or a log rewound after
   * storage loss): `rebuild` the chain from what the stream stores (the writer: what is stored
   * is the truth it must write after), or `refuse` it and keep the held chain (agents: a
   * shorter or different history may be an attack). Default `rebuild`.
   */
  onDivergence?: 'rebuild' | 'refuse';
  /**
   * When the stream reports fewer entries than the follower has seen, wait this long and ask
   * again before calling it a rewind: stream info can lag a just-acknowledged publish. Default 250 ms.
   */
  lagRetryMs?: number;
  /**
   * (Policy refuse.) While a refused history is on offer, a live entry that does not link
   * triggers a read of the stream at most this often. Default 30000 ms.
   */
  divergedRetryMs?: number;
  /**
   * (Policy refuse.) The newest (revision, entry hash) verified before (persisted by the owner
   * across restarts): a history that ends below it, or holds another entry at its revision, is
   * refused even while the chain (e.g. from an older state file) is still below it.
   */
  floor?: { revision: bigint; hash: Uint8Array };
  /** Operator reset keys: a HistoryReset signed by one of them lifts a refusal (see README). Unset: none accepted. */
  resetKeys?: TrustedKeys;
  /** The highest reset epoch accepted before (persisted by the owner); only a higher one is accepted. Default 0. */
  resetEpoch?: bigint;
  /**
   * A live entry below the held revision (the stream stored it anew: a rewound log, or a
   * replay) makes the follower read the stream's bounds, at most this often. Default 5000 ms.
   */
  rewindCheckMs?: number;
  /**
   * Follow the controller's signed heartbeat and report `stale` when the newest verified one
   * is older than this (by this node's clock, from when it arrived), `fresh` when one arrives
   * again. Unset: heartbeats are not followed (the controller's own follower).
   */
  staleAfterMs?: number;
  /** Live entries kept while a catch-up or resync runs (more are read from the stream instead). Default 4096. */
  maxBuffered?: number;
  events?: ChainFollowerEvents;
}

interface Delivered {
  signed: SignedLogEntry;
  seq: bigint;
}

/** The message of an error, for {@link ChainFollowerEvents.rejected}. */
function reasonOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Why a message was skipped, as the `reason` attribute of the rejected-messages counter (a closed set). */
export type RejectKind = 'undecodable' | 'signature' | 'fleet' | 'sequence';

function kindOf(err: unknown): RejectKind {
  if (err instanceof FleetMismatchError) return 'fleet';
  if (err instanceof SignatureError) return /^decode/.test(err.message) ? 'undecodable' : 'signature';
  return 'undecodable';
}

/**
 * Messages followers skipped, by reason (undecodable, signature, fleet, sequence): a rate above
 * zero means someone publishes on the log subjects who should not. Through @opentelemetry/api:
 * a no-op until the owner's process starts an SDK.
 */
const rejectedCounter = metrics.getMeter('@edgeplane/intent-log').createCounter('edgeplane.log.rejected_messages', {
  description: 'Log messages skipped because they did not verify (junk, bad signature, another fleet, wrong sequence)',
});

/**
 * Follows the signed intent chain on an {@link IntentLog}: the one implementation both the
 * controller (its IntentStore) and every agent use.
 *
 * - Live: subscribes to the entries the stream stores. A live entry that continues the held
 *   chain is applied at once, whatever its create time (lateness is judged by sequence, never
 *   by clock: a backlog delivered after an outage is applied entry by entry, and the owner
 *   coalesces). Only an entry that does not link to the held chain and is beyond the next
 *   revision (a gap) triggers a catch-up; an entry already held is a duplicate and ignored.
 * - Catch-up and resync run under ONE single-flight lock: concurrent requests share one run,
 *   nothing is appended to a chain that is being replaced, and live entries arriving meanwhile
 *   are kept and applied (or found to be duplicates) once the run is over.
 * - Compaction: when the entries after the held revision were purged, the signed snapshot is
 *   restored and the entries after it are read.
 * - Forks and rewinds go to the {@link ChainFollowerOptions.onDivergence} policy.
 * - Messages that do not verify are skipped and counted, never fatal; a stream sequence is
 *   believed only for an entry that verifies.
 *
 * Owns its subscription: close() ends it (idempotent). Does not own the log or its connection.
 */
export class ChainFollower {
  #log: IntentLog;
  #options: ChainFollowerOptions;
  #events: ChainFollowerEvents;
  #chain: IntentChain;
  /** The highest stream sequence examined: the chain's revision, or a skipped message above it. */
  #position: bigint;
  #sub: Subscription | undefined;
  #headSub: Subscription | undefined;
  #staleTimer: NodeJS.Timeout | undefined;
  /** When (this node's clock) the newest verified heartbeat arrived, and the time it carries. */
  #headAt = Date.now();
  #headTime = 0;
  #headRevision = 0n;
  #stale = false;
  #closed = false;
  #stats: ChainFollowerStats = { catchUps: 0, resyncs: 0, refusals: 0, rejected: 0, liveApplied: 0, duplicates: 0, patchFailures: 0 };
  /** The single-flight run of catch-ups and resyncs, while one is in progress. */
  #work: Promise<void> | undefined;
  #wantCatchUp = false;
  #wantResync: string | undefined;
  #buffered: Delivered[] = [];
  #overflowed = false;
  /** Entries and changes applied but not yet announced. */
  #pending: LogEntry[] = [];
  #pendingChanges: PolicyChange[] = [];
  #announced: bigint;
  /** Set while a refused history is on offer (policy refuse): the reason. */
  #divergence: string | undefined;
  #divergedReadAt = 0;
  #rewindCheckAt = 0;
  #floor: { revision: bigint; hash: Uint8Array } | undefined;
  #resetEpoch: bigint;
  /**
   * Set when an entry's policy patch did not apply to the chain held: the revision of that
   * entry. The chain stays below it (fail closed: the owner keeps what it enforces) until a
   * snapshot at or above it is stored, which the next catch-up loads.
   */
  #needSnapshot: bigint | undefined;
  /** A verified reset waiting for the resync that adopts it. */
  #pendingReset: { epoch: bigint; reason: string } | undefined;

  /** @param log the log to follow; not owned. */
  constructor(log: IntentLog, options: ChainFollowerOptions) {
    this.#log = log;
    this.#options = options;
    this.#events = options.events ?? {};
    this.#chain = new IntentChain(options.trusted, options.fleetId);
    if (options.start) this.#chain.load(options.start);
    this.#position = this.#chain.revision;
    this.#announced = this.#chain.revision;
    this.#floor = options.floor && options.floor.revision > this.#chain.revision ? options.floor : undefined;
    this.#resetEpoch = options.resetEpoch ?? 0n;
  }

  /** The highest history-reset epoch accepted. */
  get resetEpoch(): bigint {
    return this.#resetEpoch;
  }

  /**
   * Returns the reset an entry carries if it is valid and new (signed by a reset key, of this
   * fleet, epoch above the accepted one); else undefined.
   */
  #validReset(entry: LogEntry): { epoch: bigint; reason: string } | undefined {
    if (!entry.historyReset || !this.#options.resetKeys) return undefined;
    try {
      const reset = openHistoryReset(entry.historyReset, this.#options.resetKeys);
      if (this.#options.fleetId && reset.fleetId !== this.#options.fleetId) return undefined;
      if (reset.epoch <= this.#resetEpoch || (this.#pendingReset && reset.epoch <= this.#pendingReset.epoch)) return undefined;
      return { epoch: reset.epoch, reason: reset.reason };
    } catch {
      return undefined;
    }
  }

  /** Whether applying `opened` would contradict the floor (the history verified before). */
  #belowFloor(opened: OpenedEntry, chain: IntentChain): string | undefined {
    const floor = this.#floor;
    if (!floor || chain !== this.#chain || chain.revision >= floor.revision) return undefined;
    const { entry, hash } = opened;
    if (entry.revision === floor.revision && !equalHash(hash, floor.hash)) return `the log holds another entry at revision ${floor.revision} than the one this node verified`;
    if (entry.revision > floor.revision) return `the log goes from ${chain.revision} to ${entry.revision} without the entry at ${floor.revision} this node verified`;
    return undefined;
  }

  #passFloor(): void {
    if (this.#floor && this.#chain.revision >= this.#floor.revision) this.#floor = undefined;
  }

  /**
   * The verified intent as far as it has been followed. A rebuild replaces the object: read
   * this property again rather than keeping it. Callers must not append to it.
   */
  get chain(): IntentChain {
    return this.#chain;
  }

  /** The highest stream sequence examined (the chain's revision, or a skipped message above it): a writer appends after it. */
  get position(): bigint {
    return this.#position;
  }

  /** Counters since construction (a copy). */
  get stats(): ChainFollowerStats {
    return { ...this.#stats };
  }

  /** The reason a history was refused, while the log does not continue the held chain (policy refuse); else undefined. */
  get divergence(): string | undefined {
    return this.#divergence;
  }

  /**
   * Subscribes live, then catches up (so nothing stored between the two is missed).
   * @throws LogUnavailableError if the stream cannot be read now (the subscription stays:
   *   call catchUp() again, or start() again, which does not subscribe twice).
   */
  async start(): Promise<void> {
    if (this.#closed) return;
    this.#sub ??= this.#log.subscribe(
      (signed, seq) => this.#onLive({ signed, seq }),
      (err) => this.#reject(`live message: ${err.message}`, undefined, 'undecodable'),
    );
    const staleAfter = this.#options.staleAfterMs;
    if (staleAfter !== undefined && !this.#headSub) {
      this.#headAt = Date.now();
      this.#headSub = this.#log.subscribeHeads(
        (head) => this.#onHead(head),
        (err) => this.#reject(`heartbeat: ${err.message}`, undefined, 'undecodable'),
      );
      this.#staleTimer = setInterval(() => this.#checkStale(), Math.max(100, Math.min(staleAfter / 4, 5000)));
      this.#staleTimer.unref?.();
    }
    await this.catchUp();
  }

  /**
   * Reads what the stream holds beyond the held position (after a reconnect, a write conflict,
   * or a gap). Shares the run in progress, if any, and makes it read once more.
   * @throws LogUnavailableError if the stream cannot be read.
   */
  catchUp(): Promise<void> {
    this.#wantCatchUp = true;
    return this.#run();
  }

  /**
   * Treats an entry the owner holds (e.g. the one its own append just stored at `seq`) as if
   * it had arrived live. Applied now unless a catch-up is running.
   */
  offer(signed: SignedLogEntry, seq: bigint): void {
    this.#onLive({ signed, seq });
  }

  #run(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    this.#work ??= (async () => {
      try {
        while (!this.#closed && (this.#wantResync !== undefined || this.#wantCatchUp)) {
          const reason = this.#wantResync;
          this.#wantResync = undefined;
          this.#wantCatchUp = false;
          if (reason !== undefined) await this.#resync(reason);
          else await this.#readAhead();
          this.#drainBuffered();
        }
      } catch (err) {
        // The entries kept meanwhile are in the stream: the next catch-up reads them.
        this.#buffered = [];
        this.#overflowed = false;
        this.#wantCatchUp = false;
        this.#wantResync = undefined;
        throw err;
      } finally {
        this.#work = undefined;
        this.#flush();
      }
    })();
    return this.#work;
  }

  #onHead(signed: SignedLogHead): void {
    if (this.#closed) return;
    let head;
    try {
      head = openLogHead(signed, this.#chain.trusted);
      if (this.#options.fleetId && head.fleetId !== this.#options.fleetId) throw new FleetMismatchError(`heartbeat of fleet ${JSON.stringify(head.fleetId.slice(0, 64))}`);
    } catch (err) {
      this.#reject(`heartbeat: ${reasonOf(err)}`, undefined, kindOf(err));
      return;
    }
    const time = head.time?.getTime() ?? 0;
    // A replayed (older) heartbeat proves nothing about now.
    if (time <= this.#headTime) return;
    this.#headTime = time;
    this.#headAt = Date.now();
    // The head says the log reached a revision: if this follower is still below the previous
    // head's revision one heartbeat later, it missed entries (e.g. the last live one): read.
    if (this.#headRevision > this.#position && !this.#work) {
      this.#wantCatchUp = true;
      void this.#run().catch((err: unknown) => this.#emit('error', () => this.#events.error?.('catch up after a heartbeat', err)));
    }
    this.#headRevision = head.revision;
    if (this.#stale) {
      this.#stale = false;
      this.#emit('fresh', () => this.#events.fresh?.());
    }
  }

  #checkStale(): void {
    const age = Date.now() - this.#headAt;
    if (this.#stale || this.#closed || age <= (this.#options.staleAfterMs ?? Infinity)) return;
    this.#stale = true;
    this.#emit('stale', () => this.#events.stale?.(age));
  }

  #drainBuffered(): void {
    const kept = this.#buffered;
    this.#buffered = [];
    if (this.#overflowed) {
      this.#overflowed = false;
      this.#wantCatchUp = true;
    }
    for (const d of kept) this.#handle(d);
  }

  #onLive(d: Delivered): void {
    if (this.#closed) return;
    if (this.#work) {
      // Never append to a chain a catch-up or resync is working on: keep it for afterwards.
      if (this.#buffered.length < (this.#options.maxBuffered ?? 4096)) this.#buffered.push(d);
      else this.#overflowed = true;
      return;
    }
    this.#handle(d);
    this.#flush();
    if (this.#wantCatchUp || this.#wantResync !== undefined) {
      void this.#run().catch((err: unknown) => this.#emit('error', () => this.#events.error?.('catch up', err)));
    }
  }

  /** Applies one delivered entry or decides what it needs (sets the want flags). Never throws. */
  #handle(d: Delivered): void {
    let opened: OpenedEntry;
    try {
      opened = this.#chain.open(d.signed);
    } catch (err) {
      this.#reject(reasonOf(err), d.seq, kindOf(err));
      return;
    }
    if (opened.entry.revision !== d.seq) {
      this.#reject(`entry for revision ${opened.entry.revision} delivered as sequence ${d.seq}`, d.seq, 'sequence');
      return;
    }
    const reset = this.#validReset(opened.entry);
    const floor = this.#belowFloor(opened, this.#chain);
    if (floor) {
      if (reset) this.#requestReset(reset);
      else this.#diverge(floor);
      return;
    }
    try {
      const r = this.#chain.appendOpened(opened);
      if (!r.applied) {
        if (reset) this.#requestReset(reset);
        this.#stats.duplicates++;
        // The stream republishes only what it newly stored: a stored entry below the held
        // revision means its sequences went backwards (a rewound log) or someone replays old
        // entries. Check the stream's bounds, at most every rewindCheckMs.
        if (r.entry.revision < this.#chain.revision && Date.now() - this.#rewindCheckAt >= (this.#options.rewindCheckMs ?? 5000)) {
          this.#rewindCheckAt = Date.now();
          this.#wantCatchUp = true;
        }
        return;
      }
      this.#stats.liveApplied++;
      this.#applied(r.entry, r.changes, d.seq);
      if (reset) this.#acceptReset(reset);
    } catch (err) {
      if (reset) {
        this.#requestReset(reset);
        return;
      }
      if (err instanceof GapError) {
        // While a refused history is on offer every entry of it is a gap: read the stream
        // again at most every divergedRetryMs, not per message.
        if (this.#divergence === undefined || Date.now() - this.#divergedReadAt >= (this.#options.divergedRetryMs ?? 30_000)) {
          this.#divergedReadAt = Date.now();
          this.#wantCatchUp = true;
        }
      } else if (err instanceof ChainError) this.#diverge(err.message);
      else if (err instanceof PatchError) this.#patchFailed(opened.entry.revision, err);
      else this.#reject(reasonOf(err), d.seq, kindOf(err));
    }
  }

  /**
   * A verified entry's policy patch does not apply to the chain held: nothing of it is applied
   * (fail closed) and the follower catches up from a snapshot that covers it (see #needSnapshot).
   */
  #patchFailed(revision: bigint, err: PatchError, catchUp = true): void {
    this.#stats.patchFailures++;
    if (this.#needSnapshot === undefined || revision > this.#needSnapshot) this.#needSnapshot = revision;
    if (catchUp) this.#wantCatchUp = true;
    this.#emit('error', () => this.#events.error?.(`apply entry ${revision}: waiting for a snapshot at or above it`, err));
  }

  /** A valid reset that does not continue the held chain: rebuild from the log under the lock. */
  #requestReset(reset: { epoch: bigint; reason: string }): void {
    this.#pendingReset = reset;
    this.#wantResync = `history reset epoch ${reset.epoch}: ${reset.reason}`;
  }

  /** A valid reset that continues the held chain: nothing to rebuild. */
  #acceptReset(reset: { epoch: bigint; reason: string }): void {
    this.#resetEpoch = reset.epoch;
    this.#floor = undefined;
    this.#divergence = undefined;
    this.#emit('reset', () => this.#events.reset?.(reset.epoch, reset.reason));
  }

  #applied(entry: LogEntry, changes: PolicyChange[], seq: bigint): void {
    this.#passFloor();
    if (seq > this.#position) this.#position = seq;
    this.#divergence = undefined;
    this.#pending.push(entry);
    this.#pendingChanges.push(...changes);
  }

  #reject(reason: string, claimed: bigint | undefined, kind: RejectKind): void {
    this.#stats.rejected++;
    rejectedCounter.add(1, { reason: kind });
    this.#emit('rejected', () => this.#events.rejected?.(reason, claimed));
  }

  /** A fork or rewind was seen: rebuild (scheduled on the lock) or refuse, by policy. */
  #diverge(reason: string): void {
    if ((this.#options.onDivergence ?? 'rebuild') === 'rebuild') {
      this.#wantResync ??= reason;
      return;
    }
    this.#stats.refusals++;
    const first = this.#divergence === undefined;
    this.#divergence = reason;
    this.#divergedReadAt = Date.now();
    // One more pass looks for a stored operator reset (for a node away when it went by).
    if (first && this.#options.resetKeys) this.#wantCatchUp = true;
    if (first) this.#emit('diverged', () => this.#events.diverged?.(this.#chain.revision, reason));
  }

  #emit(what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      if (what !== 'error') this.#emit('error', () => this.#events.error?.(`${what} handler`, err));
    }
  }

  #flush(): void {
    if (this.#chain.revision === this.#announced && this.#pending.length === 0) return;
    const entries = this.#pending;
    const changes = this.#pendingChanges;
    this.#pending = [];
    this.#pendingChanges = [];
    this.#announced = this.#chain.revision;
    this.#emit('advanced', () => this.#events.advanced?.(this.#chain.revision, entries, changes));
  }

  /** One catch-up: the stream's bounds, the snapshot if the entries needed were compacted, then the entries. */
  async #readAhead(): Promise<void> {
    this.#stats.catchUps++;
    if (this.#divergence !== undefined && this.#options.resetKeys) {
      const stored = await this.#log.readHistoryReset();
      const reset = stored ? this.#validReset({ historyReset: stored } as LogEntry) : undefined;
      if (reset) {
        this.#requestReset(reset);
        return;
      }
    }
    let { first, last } = await this.#log.bounds();
    const held = this.#floor && this.#floor.revision > this.#position ? this.#floor.revision : this.#position;
    if (last < held) {
      // Stream info can lag a just-stored entry for a moment, a direct get from a replica too;
      // only a shortfall the leader confirms after a pause means the log was rewound.
      await new Promise((r) => setTimeout(r, this.#options.lagRetryMs ?? 250));
      ({ first, last } = await this.#log.bounds({ exact: true }));
      if (last < held) {
        this.#diverge(`the log ends at ${last} but this node has verified up to ${held}`);
        return;
      }
    }
    if (last === this.#position) return;
    // A follower that holds nothing starts from the snapshot even when the entries below it
    // are still kept: one read instead of up to retain-entries.
    let signed: SignedSnapshot | undefined;
    const needed = this.#needSnapshot;
    if (first > this.#position + 1n || this.#position === 0n || needed !== undefined) {
      signed = await this.#log.readSnapshot();
      if (!signed && first > this.#position + 1n) throw new ChainError(`entries before ${first} were compacted and there is no snapshot`);
    }
    const opened = signed ? this.#chain.openSnapshot(signed) : undefined;
    if (needed !== undefined && (opened === undefined || opened.revision < needed) && first <= this.#position + 1n && this.#position !== 0n) {
      // Reading on would meet the patch again: stay below it until a snapshot covers it.
      this.#emit('error', () => this.#events.error?.('catch up', new PatchError(`the entry at ${needed} patches a policy this chain does not hold as its writer did, and the newest snapshot (${opened?.revision ?? 'none'}) is older: waiting for a newer one`)));
      return;
    }
    if (opened) {
      const snapshot = opened;
      const floor = this.#floor ?? { revision: this.#chain.revision, hash: this.#chain.lastHash };
      if (snapshot.revision < floor.revision || (snapshot.revision === floor.revision && !equalHash(snapshot.lastHash, floor.hash))) {
        this.#diverge(`the snapshot at ${snapshot.revision} does not continue the chain verified up to ${floor.revision}`);
        return;
      }
      if (snapshot.revision + 1n < first) throw new ChainError(`entries ${snapshot.revision + 1n}..${first - 1n} were compacted beyond the newest snapshot`);
      this.#chain.load(snapshot);
      if (needed !== undefined && snapshot.revision >= needed) this.#needSnapshot = undefined;
      this.#passFloor();
      this.#position = this.#chain.revision;
      this.#pending = [];
      this.#pendingChanges = [];
    }
    const read = await this.#readInto(this.#chain, this.#position + 1n, last, (entry, changes) => this.#applied(entry, changes, entry.revision));
    if (read.position > this.#position) this.#position = read.position;
    if (read.purged) this.#wantCatchUp = true;
    else if (read.broken instanceof PatchError) this.#patchFailed(read.position + 1n, read.broken, false);
    else if (read.broken && this.#pendingReset === undefined) this.#diverge(read.broken.message);
  }

  /**
   * Reads `from..to` into `chain`, skipping (and counting) what does not verify. Returns the
   * highest sequence examined before the end, or before `broken`: an entry that does not
   * continue the chain (read in order from the held position, a gap means entries are missing
   * from the stream, which is no better than a fork), or before `purged`: sequences were
   * compacted under the read (read again: the snapshot covers them).
   */
  async #readInto(chain: IntentChain, from: bigint, to: bigint, applied: (entry: LogEntry, changes: PolicyChange[]) => void): Promise<{ position: bigint; broken?: Error; purged?: boolean }> {
    let position = from - 1n;
    for await (const m of this.#log.messages(from, to)) {
      if (this.#closed) break;
      // The stream denies deletes, so sequences are contiguous except below a compaction: a
      // skipped sequence means entries were purged while this read ran.
      if (m.revision > position + 1n) return { position, purged: true };
      let opened: OpenedEntry;
      try {
        if (m.error) throw m.error;
        opened = chain.open(m.signed);
        if (opened.entry.revision !== m.revision) throw new SequenceMismatch(`entry for revision ${opened.entry.revision} is stored at sequence ${m.revision}`);
      } catch (err) {
        this.#reject(`stored message at ${m.revision}: ${reasonOf(err)}`, m.revision, err instanceof SequenceMismatch ? 'sequence' : kindOf(err));
        position = m.revision;
        continue;
      }
      const reset = chain === this.#chain ? this.#validReset(opened.entry) : undefined;
      const floor = this.#belowFloor(opened, chain);
      if (floor) {
        if (reset) this.#requestReset(reset);
        return { position, broken: new ChainError(floor) };
      }
      try {
        const r = chain.appendOpened(opened);
        if (r.applied) applied(r.entry, r.changes);
        else this.#stats.duplicates++;
        if (reset && r.applied) this.#acceptReset(reset);
        else if (reset) this.#requestReset(reset);
      } catch (err) {
        if (err instanceof ChainError || err instanceof GapError || err instanceof PatchError) {
          if (reset) this.#requestReset(reset);
          return { position, broken: err };
        }
        throw err;
      }
      position = m.revision;
    }
    return { position };
  }

  /** Rebuilds the chain from scratch (snapshot, then every entry after it) and replaces it. */
  async #resync(reason: string): Promise<void> {
    this.#stats.resyncs++;
    const from = this.#chain.revision;
    const chain = new IntentChain(this.#options.trusted, this.#options.fleetId);
    const snapshot = await this.#log.readSnapshot();
    if (snapshot) chain.restore(snapshot);
    const { first, last } = await this.#log.bounds();
    if (chain.revision + 1n < first) throw new ChainError(`resync: entries ${chain.revision + 1n}..${first - 1n} were compacted beyond the newest snapshot`);
    const entries: LogEntry[] = [];
    const changes: PolicyChange[] = [];
    const read = await this.#readInto(chain, chain.revision + 1n, last, (entry, c) => {
      entries.push(entry);
      changes.push(...c);
    });
    if (read.purged) {
      // Compacted while reading: the newer snapshot covers what was purged; start over.
      this.#stats.resyncs--;
      this.#wantResync = reason;
      return;
    }
    if (read.broken) {
      // What is stored does not chain either: keep what verified up to there.
      const broken = read.broken;
      this.#emit('error', () => this.#events.error?.('resync: the stored log does not chain', broken));
    }
    this.#chain = chain;
    this.#position = read.position > chain.revision ? read.position : chain.revision;
    this.#pending = entries;
    this.#pendingChanges = changes;
    this.#announced = -1n;
    this.#divergence = undefined;
    this.#floor = undefined;
    const reset = this.#pendingReset;
    this.#pendingReset = undefined;
    if (reset) {
      this.#resetEpoch = reset.epoch;
      this.#emit('reset', () => this.#events.reset?.(reset.epoch, reset.reason));
    }
    this.#emit('resynced', () => this.#events.resynced?.(from, chain.revision, reason));
  }

  /** Stops following: unsubscribes; a run in progress stops at the next entry. Idempotent. */
  close(): void {
    this.#closed = true;
    this.#sub?.unsubscribe();
    this.#sub = undefined;
    this.#headSub?.unsubscribe();
    this.#headSub = undefined;
    clearInterval(this.#staleTimer);
    this.#buffered = [];
  }
}

/** Internal: an entry read at a sequence other than its revision. */
class SequenceMismatch extends Error {}

function equalHash(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}
