import type { Subscription } from '@nats-io/transport-node';
import type { LogEntry, SignedLogEntry, Snapshot, TrustedKeys } from '@edgeplane/proto';
import { ChainError, GapError, IntentChain, type IntentLog } from '@edgeplane/intent-log';

/** What the follower tells its owner. */
export interface FollowerEvents {
  /** The chain moved to `revision`; `entries` are the entries applied since the last call (oldest first). */
  advanced(revision: bigint, entries: LogEntry[]): void;
  /** A live message was refused (bad signature, not decodable, a sequence that does not fit). */
  rejected(reason: string, claimedRevision: bigint | undefined): void;
  /** The log was rewound or forked under us: the chain was rebuilt from the stream. */
  resynced(fromRevision: bigint, toRevision: bigint, reason: string): void;
  error(message: string, err: unknown): void;
}

/**
 * Follows the intent log for an agent: a live subscription to what the stream stores, gap
 * detection and catch-up from the stream (or from the snapshot when the stream was compacted),
 * and a full resync when the chain does not continue (a rewound or forked log). Entries
 * delivered twice change nothing. Owns its subscription; close() ends it.
 */
export class IntentFollower {
  #log: IntentLog;
  #trusted: TrustedKeys;
  #events: FollowerEvents;
  #chain: IntentChain;
  #sub: Subscription | undefined;
  #pending: LogEntry[] = [];
  #catchingUp: Promise<void> | undefined;
  #again = false;
  #announced: bigint;

  #staleAfterMs: number;

  /**
   * @param start the state to continue from (the agent's state file), if any.
   * @param staleAfterMs a live entry created longer ago than this arrived late (the node was
   *   cut off and TCP is delivering the backlog): catch up from the stream in one read instead.
   */
  constructor(log: IntentLog, trusted: TrustedKeys, events: FollowerEvents, start?: Snapshot, staleAfterMs = 1000) {
    this.#staleAfterMs = staleAfterMs;
    this.#log = log;
    this.#trusted = trusted;
    this.#events = events;
    this.#chain = new IntentChain(trusted);
    if (start) this.#chain.load(start);
    this.#announced = this.#chain.revision;
  }

  /** The verified intent as far as it has been followed. */
  get chain(): IntentChain {
    return this.#chain;
  }

  /** Subscribes live and catches up. @throws LogUnavailableError if the stream cannot be read now. */
  async start(): Promise<void> {
    this.#sub = this.#log.subscribe(
      (signed, seq) => this.#onLive(signed, seq),
      (err) => this.#events.rejected(`undecodable live message: ${err.message}`, undefined),
    );
    await this.catchUp();
  }

  #flush(): void {
    if (this.#chain.revision === this.#announced && this.#pending.length === 0) return;
    const entries = this.#pending;
    this.#pending = [];
    this.#announced = this.#chain.revision;
    this.#events.advanced(this.#chain.revision, entries);
  }

  #onLive(signed: SignedLogEntry, seq: bigint): void {
    if (this.#catchingUp) {
      // A catch-up is reading the stream; it will see this entry too (or run again).
      this.#again = true;
      return;
    }
    try {
      const opened = this.#chain.open(signed);
      const entry = opened.entry;
      if (entry.revision <= this.#chain.revision) return;
      const age = entry.createTime ? Date.now() - entry.createTime.getTime() : 0;
      if (age > this.#staleAfterMs) {
        void this.catchUp().catch((e: unknown) => this.#events.error('catch up after a late entry', e));
        return;
      }
      const r = this.#chain.appendOpened(opened, seq);
      if (r.applied) this.#pending.push(r.entry);
      this.#flush();
    } catch (err) {
      if (err instanceof GapError) void this.catchUp().catch((e: unknown) => this.#events.error('catch up after a gap', e));
      else if (err instanceof ChainError) void this.#resync(err.message).catch((e: unknown) => this.#events.error('resync', e));
      else this.#events.rejected((err as Error).message, seq);
    }
  }

  /**
   * Reads what the stream holds beyond the chain; the owner hears one `advanced` for the whole
   * read, so an agent far behind applies the final state once.
   */
  catchUp(): Promise<void> {
    if (this.#catchingUp) {
      this.#again = true;
      return this.#catchingUp;
    }
    this.#catchingUp = (async () => {
      try {
        do {
          this.#again = false;
          await this.#readAhead();
        } while (this.#again);
      } finally {
        this.#catchingUp = undefined;
        this.#flush();
      }
    })();
    return this.#catchingUp;
  }

  async #readAhead(): Promise<void> {
    let { first, last } = await this.#log.bounds();
    if (last < this.#chain.revision) {
      // Stream info can lag a just-stored entry for a moment; only a shortfall that persists
      // means storage was lost and the log rewound.
      await new Promise((r) => setTimeout(r, 250));
      ({ first, last } = await this.#log.bounds());
      if (last < this.#chain.revision) {
        await this.#resync(`the log ends at ${last} but this node has seen ${this.#chain.revision}`);
        return;
      }
    }
    if (last === this.#chain.revision) return;
    if (first > this.#chain.revision + 1n) {
      const snapshot = await this.#log.readSnapshot();
      if (!snapshot) throw new ChainError(`entries before ${first} were compacted and there is no snapshot`);
      this.#chain.restore(snapshot);
    }
    try {
      for await (const { signed, revision } of this.#log.read(this.#chain.revision + 1n, last)) {
        const r = this.#chain.append(signed, revision);
        if (r.applied) this.#pending.push(r.entry);
      }
    } catch (err) {
      if (err instanceof ChainError) await this.#resync(err.message);
      else throw err;
    }
  }

  /** Rebuilds the chain from scratch (snapshot, then every entry after it). */
  async #resync(reason: string): Promise<void> {
    const from = this.#chain.revision;
    const chain = new IntentChain(this.#trusted);
    const snapshot = await this.#log.readSnapshot();
    if (snapshot) chain.restore(snapshot);
    const { last } = await this.#log.bounds();
    const entries: LogEntry[] = [];
    for await (const { signed, revision } of this.#log.read(chain.revision + 1n, last)) entries.push(chain.append(signed, revision).entry);
    this.#chain = chain;
    this.#pending = entries;
    this.#events.resynced(from, chain.revision, reason);
  }

  /** Stops following. Idempotent. */
  close(): void {
    this.#sub?.unsubscribe();
    this.#sub = undefined;
  }
}
