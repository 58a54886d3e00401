// Paces the deletion of expired connection entries. The datapath deletes the expired entries it
// meets; entries of flows that simply stop are deleted here, by the ep_ct_sweep program, which
// walks the tables in the kernel (bpf_for_each_map_elem) and deletes at most a budget per run.
// A run that used its whole budget is followed by another soon; otherwise the next run waits a
// full interval. bench/conntrack-sweep.ts measures a run's cost at 1,000,000 entries.

/** What the sweeper needs of a datapath. */
export interface ConntrackSweepTarget {
  /** Deletes up to `budget` expired entries. @returns how many it deleted. */
  sweepConntrack(budget: number): number;
}

/** Options of ConntrackSweeper. */
export interface ConntrackSweeperOptions {
  /** Time between runs when the previous one found fewer than `budget` expired entries. Default 10,000 ms. */
  intervalMs?: number;
  /** Time between runs while runs use their whole budget. Default 100 ms. */
  busyIntervalMs?: number;
  /** Most entries one run deletes. Default 65,536. */
  budget?: number;
  /** Told of a run that threw; the sweeper keeps its pace. */
  onError?: (error: unknown) => void;
}

/**
 * Runs `target.sweepConntrack()` on a timer until closed. The timer does not keep the process
 * alive. Owns only its timer: close() stops it and is idempotent.
 */
export class ConntrackSweeper {
  readonly #target: ConntrackSweepTarget;
  readonly #intervalMs: number;
  readonly #busyIntervalMs: number;
  readonly #budget: number;
  readonly #onError: (error: unknown) => void;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #deleted = 0;
  #runs = 0;

  /**
   * Starts the first run after `intervalMs`.
   * @throws RangeError for a non-positive interval or budget.
   */
  constructor(target: ConntrackSweepTarget, options: ConntrackSweeperOptions = {}) {
    this.#target = target;
    this.#intervalMs = positive('intervalMs', options.intervalMs ?? 10_000);
    this.#busyIntervalMs = positive('busyIntervalMs', options.busyIntervalMs ?? 100);
    this.#budget = positive('budget', options.budget ?? 65_536);
    this.#onError = options.onError ?? (() => {});
    this.#schedule(this.#intervalMs);
  }

  /** Entries deleted and runs made so far. */
  get stats(): { readonly deleted: number; readonly runs: number } {
    return { deleted: this.#deleted, runs: this.#runs };
  }

  /**
   * Runs one sweep now (outside the timer's pace).
   * @returns how many entries it deleted.
   * @throws what the target throws.
   */
  runOnce(): number {
    const deleted = this.#target.sweepConntrack(this.#budget);
    this.#deleted += deleted;
    this.#runs++;
    return deleted;
  }

  /** Stops the timer; idempotent. */
  close(): void {
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** For `await using`: close(). */
  async [Symbol.asyncDispose](): Promise<void> {
    this.close();
  }

  #schedule(ms: number): void {
    if (this.#closed) return;
    this.#timer = setTimeout(() => {
      let next = this.#intervalMs;
      try {
        if (this.runOnce() >= this.#budget) next = this.#busyIntervalMs;
      } catch (error) {
        this.#onError(error);
      }
      this.#schedule(next);
    }, ms);
    this.#timer.unref();
  }
}

function positive(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`conntrack sweeper ${name} must be a positive integer, got ${value}`);
  return value;
}
