// One replica at a time runs the rollout manager (issue 15): a lease in the replicas bucket,
// taken by an atomic create, renewed by a revision-checked update, and taken over when its
// revision stops changing. No clocks are compared between machines: a contender measures the
// holder's silence on its own monotonic clock, the holder its own time since its last renewal.
import { performance } from 'node:perf_hooks';
import type { KV } from '@nats-io/kv';
import { ROLLOUT_LEASE_KEY } from '@edgeplane/proto';

/** Options of {@link RolloutLease}. */
export interface RolloutLeaseOptions {
  /** The holder's name written into the lease (the replica's instance id). */
  holder: string;
  /** How often the lease is renewed or looked at. Default 1 s. */
  renewMs?: number;
  /**
   * How long a lease whose revision does not change is honoured: a contender takes it after
   * seeing the same revision for this long; the holder stops acting renewMs before that after
   * its last renewal began. Default 3 s (a killed holder's lease moves within about 4 s).
   */
  ttlMs?: number;
  /** Told when this replica gains or loses the lease. */
  onChange?: (held: boolean) => void;
  onError?: (message: string, err: unknown) => void;
}

/**
 * The rollout lease, as seen by one replica. {@link held} is true only while this replica holds
 * a lease it renewed recently enough that no other replica can have taken it. Owns a timer:
 * close() (idempotent) stops renewing and gives the lease up when held, so another replica takes
 * it at once.
 */
export class RolloutLease {
  #kv: KV;
  #o: RolloutLeaseOptions;
  #timer: NodeJS.Timeout | undefined;
  /** Our lease's revision while we hold it. */
  #revision: number | undefined;
  /** When our last successful renewal began (performance.now()). */
  #renewedAt = 0;
  /** Another holder's revision and when we first saw it. */
  #seen: { revision: number; at: number } | undefined;
  #busy = false;
  #closed = false;
  #wasHeld = false;

  constructor(kv: KV, options: RolloutLeaseOptions) {
    this.#kv = kv;
    this.#o = options;
  }

  get #ttl(): number {
    return this.#o.ttlMs ?? 3000;
  }

  get #renew(): number {
    return this.#o.renewMs ?? 1000;
  }

  /** Whether this replica holds the lease now. */
  get held(): boolean {
    return this.#revision !== undefined && performance.now() - this.#renewedAt < this.#ttl - this.#renew;
  }

  /** Starts taking or renewing the lease (the first attempt at once). */
  start(): void {
    this.#timer = setInterval(() => void this.tick(), this.#renew);
    void this.tick();
  }

  /** One attempt to take or renew the lease (the timer calls it). Never throws. */
  async tick(): Promise<void> {
    if (this.#busy || this.#closed) return;
    this.#busy = true;
    const began = performance.now();
    try {
      if (this.#revision !== undefined) {
        try {
          this.#revision = await this.#kv.update(ROLLOUT_LEASE_KEY, this.#o.holder, this.#revision);
          this.#renewedAt = began;
        } catch (err) {
          // Taken by another replica after we went silent, or NATS is unreachable: look again next time.
          this.#revision = undefined;
          this.#o.onError?.('renew the rollout lease', err);
        }
        return;
      }
      const e = await this.#kv.get(ROLLOUT_LEASE_KEY);
      if (!e || e.operation !== 'PUT') {
        this.#revision = await this.#kv.create(ROLLOUT_LEASE_KEY, this.#o.holder);
        this.#renewedAt = began;
        return;
      }
      if (this.#seen?.revision !== e.revision) {
        this.#seen = { revision: e.revision, at: began };
        return;
      }
      if (began - this.#seen.at < this.#ttl) return;
      // The holder fell silent: take the lease from the revision we watched, or lose the race.
      this.#revision = await this.#kv.update(ROLLOUT_LEASE_KEY, this.#o.holder, e.revision);
      this.#renewedAt = began;
    } catch {
      // Another replica won the create or the takeover, or NATS is unreachable: try again next time.
    } finally {
      this.#busy = false;
      const held = this.held;
      if (held !== this.#wasHeld) {
        this.#wasHeld = held;
        this.#o.onChange?.(held);
      }
    }
  }

  /** Stops; a held lease is deleted so another replica takes it without waiting. Idempotent; never throws. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#timer);
    const revision = this.#revision;
    this.#revision = undefined;
    if (revision !== undefined) await this.#kv.delete(ROLLOUT_LEASE_KEY, { previousSeq: revision }).catch((err: unknown) => this.#o.onError?.('give up the rollout lease', err));
  }
}
