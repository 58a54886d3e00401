// Paces the deletion of expired connection entries. The datapath deletes the expired entries it
// meets; entries of flows that simply stop are deleted here, by the ep_ct_sweep program, which
// walks the tables in the kernel (bpf_for_each_map_elem) and deletes at most a budget per run.
// A full walk touches every entry (memory-bound: about 0.2 s of CPU at 1,000,000 entries, see
// bench/conntrack-sweep.ts), so the pace adapts to what a run costs: the next run waits at least
// `intervalMs` and long enough that sweeping stays under `maxCpuShare` of one core; a run that
// used its whole budget (a mass expiry) or new insert failures (a full table) bring the next
// run forward, within `busyCpuShare`. Expired entries that wait for the sweeper are harmless to
// traffic: the datapath treats them as absent and occupancy does not count them.

/** What the sweeper needs of a datapath. */
export interface ConntrackSweepTarget {
  /** Deletes up to `budget` expired entries. @returns how many it deleted. */
  sweepConntrack(budget: number): number;
  /** Entries that could not be created or moved so far (a full table); optional. */
  conntrackInsertFailures?(): number;
}

/** Options of ConntrackSweeper. */
export interface ConntrackSweeperOptions {
  /** Shortest time between runs. Default 10,000 ms. */
  intervalMs?: number;
  /** Shortest time between runs while there is more to delete or the table is full. Default 100 ms. */
  busyIntervalMs?: number;
  /** Share of one core the steady state may use (run time / time between runs). Default 0.005. */
  maxCpuShare?: number;
  /** The same while there is more to delete or the table is full. Default 0.05. */
  busyCpuShare?: number;
  /** Most entries one run deletes. Default 65,536. */
  budget?: number;
  /** Told of a run that threw; the sweeper keeps its pace. */
  onError?: (error: unknown) => void;
}

/** What one run found, for choosing the delay before the next. */
export interface SweepRun {
  /** Wall time the run took (an upper bound of its CPU time). */
  readonly ms: number;
  /** Whether it used its whole budget (more may be expired). */
  readonly full: boolean;
  /** Whether insert failures grew since the previous run (a table is full). */
  readonly pressure: boolean;
}

/**
 * The delay before the next run: at least the interval, and long enough that runs like this one
 * use at most the CPU share (both the busy ones when the run was full or under pressure).
 * @returns milliseconds.
 */
export function nextSweepDelay(run: SweepRun, options: Required<Pick<ConntrackSweeperOptions, 'intervalMs' | 'busyIntervalMs' | 'maxCpuShare' | 'busyCpuShare'>>): number {
  const busy = run.full || run.pressure;
  const floor = busy ? options.busyIntervalMs : options.intervalMs;
  const share = busy ? options.busyCpuShare : options.maxCpuShare;
  return Math.max(floor, Math.ceil(run.ms / share));
}

/**
 * Runs `target.sweepConntrack()` on a timer until closed. The timer does not keep the process
 * alive. Owns only its timer: close() stops it and is idempotent.
 */
export class ConntrackSweeper {
  readonly #target: ConntrackSweepTarget;
  readonly #pace: Parameters<typeof nextSweepDelay>[1];
  readonly #budget: number;
  #failures: number;
  readonly #onError: (error: unknown) => void;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #deleted = 0;
  #runs = 0;

  /**
   * Starts the first run after `intervalMs`.
   * @throws RangeError for a non-positive interval or budget, a CPU share outside (0, 1].
   */
  constructor(target: ConntrackSweepTarget, options: ConntrackSweeperOptions = {}) {
    this.#target = target;
    this.#pace = {
      intervalMs: positive('intervalMs', options.intervalMs ?? 10_000),
      busyIntervalMs: positive('busyIntervalMs', options.busyIntervalMs ?? 100),
      maxCpuShare: share('maxCpuShare', options.maxCpuShare ?? 0.005),
      busyCpuShare: share('busyCpuShare', options.busyCpuShare ?? 0.05),
    };
    this.#budget = positive('budget', options.budget ?? 65_536);
    this.#onError = options.onError ?? (() => {});
    this.#failures = this.#readFailures();
    this.#schedule(this.#pace.intervalMs);
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

  #readFailures(): number {
    try {
      return this.#target.conntrackInsertFailures?.() ?? 0;
    } catch (error) {
      this.#onError(error);
      return this.#failures;
    }
  }

  #schedule(ms: number): void {
    if (this.#closed) return;
    this.#timer = setTimeout(() => {
      let next = this.#pace.intervalMs;
      try {
        const started = process.hrtime.bigint();
        const deleted = this.runOnce();
        const runMs = Number(process.hrtime.bigint() - started) / 1e6;
        const failures = this.#readFailures();
        const pressure = failures > this.#failures;
        this.#failures = failures;
        next = nextSweepDelay({ ms: runMs, full: deleted >= this.#budget, pressure }, this.#pace);
      } catch (error) {
        this.#onError(error);
      }
      this.#schedule(next);
    }, ms);
    this.#timer.unref();
  }
}

function share(name: string, value: number): number {
  if (!(value > 0 && value <= 1)) throw new RangeError(`conntrack sweeper ${name} must be in (0, 1], got ${value}`);
  return value;
}

function positive(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`conntrack sweeper ${name} must be a positive integer, got ${value}`);
  return value;
}
