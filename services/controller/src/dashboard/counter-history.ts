import { DASHBOARD_CHARTED_RULES, DASHBOARD_COUNTER_SAMPLES, type GetPolicyCountersRequest, type GetPolicyCountersResponse } from '@edgeplane/proto';

/** What {@link CounterHistory} reads: the fleet's per-rule totals (FleetApi.getPolicyCounters, as GetPolicyCounters answers). */
export interface FleetCounterReader {
  getPolicyCounters(req: GetPolicyCountersRequest): GetPolicyCountersResponse;
}

/** One rule's fleet-wide totals at one sample. */
export interface RuleSample {
  policy: string;
  priority: number;
  ruleName: string;
  packets: string;
  bytes: string;
}

/** One sample: the busiest rules' totals at a time. */
export interface CounterSample {
  /** Milliseconds since the epoch. */
  at: number;
  rules: RuleSample[];
}

/**
 * The fleet's per-rule counter totals sampled over time for the dashboard's charts: the last
 * DASHBOARD_COUNTER_SAMPLES samples, each holding the DASHBOARD_CHARTED_RULES busiest rules by
 * packets (a fleet may count far more rules than a page can chart). Totals, not rates: the page
 * draws the rate between samples.
 */
export class CounterHistory {
  #samples: CounterSample[] = [];
  #timer: NodeJS.Timeout | undefined;
  #listeners = new Set<(s: CounterSample) => void>();
  #reader: FleetCounterReader;

  constructor(reader: FleetCounterReader) {
    this.#reader = reader;
  }

  /** Samples now and every `intervalMs` until close(). */
  start(intervalMs: number): void {
    if (this.#timer) return;
    this.sample();
    this.#timer = setInterval(() => this.sample(), intervalMs);
    this.#timer.unref();
  }

  /** Takes one sample now and tells the listeners. Returns it. */
  sample(now = Date.now()): CounterSample {
    const fleet = this.#reader.getPolicyCounters({ policy: '', nodeLabelSelector: '', perNode: false }).fleet;
    const rules = fleet
      .filter((c) => c.rule)
      .sort((a, b) => (a.packets < b.packets ? 1 : a.packets > b.packets ? -1 : 0))
      .slice(0, DASHBOARD_CHARTED_RULES)
      .map((c) => ({ policy: c.rule!.policy, priority: c.rule!.priority, ruleName: c.ruleName, packets: c.packets.toString(), bytes: c.bytes.toString() }));
    const s = { at: now, rules };
    this.#samples.push(s);
    if (this.#samples.length > DASHBOARD_COUNTER_SAMPLES) this.#samples.splice(0, this.#samples.length - DASHBOARD_COUNTER_SAMPLES);
    for (const l of this.#listeners) l(s);
    return s;
  }

  /** The samples kept, oldest first. */
  samples(): readonly CounterSample[] {
    return this.#samples;
  }

  /** Calls `listener` with every new sample; returns the function that stops it. */
  onSample(listener: (s: CounterSample) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /** Stops sampling. Idempotent. */
  close(): void {
    clearInterval(this.#timer);
    this.#listeners.clear();
  }
}
