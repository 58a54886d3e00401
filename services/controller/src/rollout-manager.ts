import { SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import {
  RevisionOutcome,
  Rollout,
  RolloutState,
  matchesLabelSelector,
  rolloutKeyOf,
  rolloutKindName,
  type GateReading,
  type RolloutStatus,
  type WaveStatus,
} from '@edgeplane/proto';
import { extractTraceContext } from '@edgeplane/telemetry';
import type { CounterStore } from './counter-store.js';
import type { IntentStore } from './intent-store.js';
import type { NodeRegistry } from './node-registry.js';
import { isActive, revertChange, rolloutSelector, waveMembers } from './rollout-plan.js';

const tracer = trace.getTracer('@edgeplane/controller');

/** Options of {@link RolloutManager}. */
export interface RolloutManagerOptions {
  /** How often active rollouts are evaluated. Default 500 ms. */
  tickMs?: number;
  /** Fewest packets a node must see in its wave before the health gate judges it. Default 10. */
  minGatePackets?: number;
  /** When staged.report_timeout is unset. Default 60 s. */
  defaultReportTimeoutMs?: number;
  now?: () => Date;
  /**
   * Whether this replica may advance rollouts now (it holds the rollout lease). Unset: always
   * (a single controller). Status is served either way.
   */
  isLeader?: () => boolean;
  onError?: (message: string, err: unknown) => void;
  log?: (msg: string, fields: Record<string, unknown>) => void;
}

interface DropTotals {
  packets: bigint;
  dropped: bigint;
}

function ms(d: { seconds: bigint; nanos: number } | undefined): number {
  return d ? Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6) : 0;
}

const pct = (dropped: bigint, packets: bigint): number => (packets === 0n ? 0 : (Number(dropped) / Number(packets)) * 100);

/**
 * Drives staged rollouts of policies and services alike: evaluates each active rollout's gates (NACKs, nodes that do not
 * report in time, the drop-share health signal against each node's pre-change baseline) from
 * the node registry and the counters, and records every decision (next wave, success, revert)
 * as a log entry. All decisions are re-checked against the newest log state when written, so
 * two managers that briefly both act never fork a rollout; with replicas only the holder of the
 * rollout lease ({@link RolloutManagerOptions.isLeader}) acts. State lives in the log: a
 * restarted controller, or the replica that takes the lease over, resumes each rollout at the
 * wave the log says (its health-gate baselines start again from the counters it reads then).
 * Owns a timer: close().
 */
export class RolloutManager {
  #store: IntentStore;
  #registry: NodeRegistry;
  #counters: CounterStore;
  #o: RolloutManagerOptions;
  #timer: NodeJS.Timeout | undefined;
  #busy = false;
  /** Per rollout key + wave: each node's drop totals when it joined the wave. */
  #baselines = new Map<string, Map<string, DropTotals>>();
  #spans = new Map<string, Span>();
  #listeners = new Set<(name: string) => void>();
  #waveSets = new Map<string, { of: string[]; set: Set<string> }>();

  constructor(store: IntentStore, registry: NodeRegistry, counters: CounterStore, options: RolloutManagerOptions = {}) {
    this.#store = store;
    this.#registry = registry;
    this.#counters = counters;
    this.#o = options;
  }

  #now(): Date {
    return this.#o.now?.() ?? new Date();
  }

  /** Starts evaluating. */
  start(): void {
    this.#timer = setInterval(() => void this.tick(), this.#o.tickMs ?? 500);
    this.#store.onChange(() => {
      for (const key of this.#store.chain.rollouts.keys()) this.#notify(key);
    });
    // One batch per registry tick (every node that changed in it, once): each active rollout is
    // looked at once per batch, not once per node's report.
    this.#registry.watchBatch((events) => {
      const active = [...this.#store.chain.rollouts].filter(([, r]) => isActive(r));
      if (active.length === 0) return;
      const changed = new Set<string>();
      for (const e of events) if (e.node) changed.add(e.node.name);
      for (const [key, r] of active) {
        const wave = this.#waveSet(key, r);
        for (const n of changed) {
          if (!wave.has(n)) continue;
          this.#notify(key);
          break;
        }
      }
    });
  }

  /** The current wave's nodes of a rollout as a set, made once per wave (the log's record is replaced on every change). */
  #waveSet(key: string, r: Rollout): Set<string> {
    const have = this.#waveSets.get(key);
    if (have?.of === r.waveNodes) return have.set;
    const set = new Set(r.waveNodes);
    this.#waveSets.set(key, { of: r.waveNodes, set });
    return set;
  }

  /** Calls `listener(key)` (rolloutKey) whenever a rollout's status may have changed; returns the remover. */
  watch(listener: (key: string) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #notify(key: string): void {
    for (const l of this.#listeners) l(key);
  }

  #totals(node: string): DropTotals {
    let packets = 0n;
    let dropped = 0n;
    for (const i of this.#counters.nodeInterfaces(node)) {
      packets += i.passedPackets + i.droppedPackets;
      dropped += i.droppedPackets;
    }
    return { packets, dropped };
  }

  #baseline(r: Rollout): Map<string, DropTotals> {
    const key = `${rolloutKeyOf(r)}@${r.changeRevision}#${r.currentWave}`;
    let b = this.#baselines.get(key);
    if (!b) this.#baselines.set(key, (b = new Map()));
    for (const n of r.waveNodes) if (!b.has(n)) b.set(n, this.#totals(n));
    return b;
  }

  /** Keys (rolloutKey: kind and name) of every rollout the log holds. */
  names(): string[] {
    return [...this.#store.chain.rollouts.keys()];
  }

  /** Live status of one rollout by its key (rolloutKey), or undefined if there is none. */
  status(key: string): RolloutStatus | undefined {
    const r = this.#store.chain.rollouts.get(key);
    if (!r) return undefined;
    const waves: WaveStatus[] = [];
    const strategy = r.strategy;
    const selected = this.#selectedNodes(r);
    let before = new Set<string>();
    for (let i = 0; i < (strategy?.waves.length ?? 0); i++) {
      // The log's record is the authority for the current wave; earlier ones are recomputed.
      const members = i === r.currentWave ? r.waveNodes : i < r.currentWave ? waveMembers(strategy!, r.changeRevision, selected, i) : [];
      const mine = members.filter((n) => !before.has(n));
      before = new Set(members);
      let done = 0;
      let failed = 0;
      for (const n of mine) {
        const s = this.#registry.get(n)?.status;
        if (s && s.appliedRevision >= r.resourceVersion) done++;
        else if (s && s.lastOutcome === RevisionOutcome.REVISION_OUTCOME_NACK && s.lastOutcomeRevision >= r.changeRevision) failed++;
      }
      const current = i === r.currentWave;
      const start = current ? r.waveStartTime : undefined;
      const bake = ms(strategy!.waves[i]!.bakeTime);
      waves.push({
        index: i,
        name: strategy!.waves[i]!.name,
        nodes: mine,
        nodesDone: i < r.currentWave || r.state === RolloutState.ROLLOUT_STATE_SUCCEEDED ? mine.length : done,
        nodesFailed: failed,
        nodesPending: i < r.currentWave || r.state === RolloutState.ROLLOUT_STATE_SUCCEEDED ? 0 : Math.max(0, mine.length - done - failed),
        startTime: start,
        bakeUntilTime: start ? new Date(start.getTime() + bake) : undefined,
      });
    }
    const gate: GateReading[] = [];
    if (isActive(r)) {
      const base = this.#baseline(r);
      for (const n of r.waveNodes) {
        const b = base.get(n)!;
        const now = this.#totals(n);
        gate.push({ node: n, baselineDropPercent: pct(b.dropped, b.packets), currentDropPercent: pct(now.dropped - b.dropped, now.packets - b.packets), packets: now.packets - b.packets });
      }
    }
    return { rollout: r, waves, gateReadings: gate };
  }

  #selectedNodes(r: Rollout): { name: string; labels: Record<string, string> }[] {
    const selector = rolloutSelector(this.#store.chain, r);
    return this.#registry
      .list()
      .filter((n) => matchesLabelSelector(selector, n.labels))
      .map((n) => ({ name: n.name, labels: n.labels }));
  }

  /** Evaluates every active rollout once (also called by the timer). */
  async tick(): Promise<void> {
    if (this.#busy || (this.#o.isLeader && !this.#o.isLeader())) return;
    this.#busy = true;
    try {
      for (const r of [...this.#store.chain.rollouts.values()]) {
        if (r.state !== RolloutState.ROLLOUT_STATE_PROGRESSING) {
          this.#endSpan(r);
          continue;
        }
        await this.#evaluate(r).catch((err: unknown) => this.#o.onError?.(`evaluate rollout of ${rolloutKindName(r.kind)} ${r.name}`, err));
      }
    } finally {
      this.#busy = false;
    }
  }

  #span(r: Rollout): void {
    const key = `${rolloutKeyOf(r)}@${r.changeRevision}#${r.currentWave}`;
    if (this.#spans.has(key)) return;
    for (const [k, s] of this.#spans) {
      if (k.startsWith(`${rolloutKeyOf(r)}@`)) {
        s.setAttribute('edgeplane.outcome', 'advanced');
        s.end();
        this.#spans.delete(k);
      }
    }
    const parent = extractTraceContext(r.traceContext?.traceparent ? { traceparent: r.traceContext.traceparent, tracestate: r.traceContext.tracestate } : undefined);
    const span = tracer.startSpan(
      'edgeplane.rollout.wave',
      { startTime: r.waveStartTime ?? new Date(), attributes: { [`edgeplane.${rolloutKindName(r.kind)}`]: r.name, 'edgeplane.rollout.kind': rolloutKindName(r.kind), 'edgeplane.wave': r.currentWave, 'edgeplane.wave.nodes': r.waveNodes.length, 'edgeplane.revision': Number(r.changeRevision) } },
      parent,
    );
    this.#spans.set(key, span);
  }

  #endSpan(r: Rollout): void {
    for (const [k, s] of this.#spans) {
      if (!k.startsWith(`${rolloutKeyOf(r)}@${r.changeRevision}#`)) continue;
      const failed = r.state === RolloutState.ROLLOUT_STATE_FAILED || r.state === RolloutState.ROLLOUT_STATE_ABORTED;
      s.setAttribute('edgeplane.outcome', RolloutState[r.state].replace('ROLLOUT_STATE_', '').toLowerCase());
      if (failed) s.setStatus({ code: SpanStatusCode.ERROR, message: r.reason });
      s.end();
      this.#spans.delete(k);
    }
  }

  async #evaluate(r: Rollout): Promise<void> {
    this.#span(r);
    const strategy = r.strategy!;
    const gates = strategy.gates;
    const now = this.#now();
    const waveStart = r.waveStartTime?.getTime() ?? now.getTime();
    const nodes = r.waveNodes.map((n) => ({ name: n, status: this.#registry.get(n)?.status }));
    // Gate 1: a NACK of the change (or a later revision) by a node of the wave.
    // The registry counts NACKs per revision: with none of the change or later, no node to look for.
    if (!gates?.ignoreNacks && this.#registry.nackedSince(r.changeRevision) > 0) {
      const nack = nodes.find((n) => n.status?.lastOutcome === RevisionOutcome.REVISION_OUTCOME_NACK && n.status.lastOutcomeRevision >= r.changeRevision && n.status.appliedRevision < r.resourceVersion);
      if (nack) return this.#fail(r, `wave ${r.currentWave + 1}: node ${nack.name} NACKed revision ${nack.status!.lastOutcomeRevision}: ${nack.status!.lastError}`);
    }
    const applied = nodes.filter((n) => (n.status?.appliedRevision ?? 0n) >= r.resourceVersion);
    const pending = nodes.filter((n) => !applied.includes(n));
    // Gate 2: nodes that do not report in time.
    const timeout = ms(strategy.reportTimeout) || (this.#o.defaultReportTimeoutMs ?? 60_000);
    if (pending.length > 0 && now.getTime() - waveStart > timeout) {
      const share = (pending.length / nodes.length) * 100;
      if (share > (gates?.maxUnreportedPercent ?? 0)) {
        return this.#fail(r, `wave ${r.currentWave + 1}: ${pending.length} of ${nodes.length} nodes did not report within ${timeout} ms (${pending.map((n) => n.name).join(', ')})`);
      }
    }
    // Gate 3: the share of dropped packets against each node's pre-change baseline.
    const limit = gates?.maxDropRatioIncreasePoints ?? 0;
    if (limit > 0) {
      const base = this.#baseline(r);
      for (const n of applied) {
        const b = base.get(n.name)!;
        const t = this.#totals(n.name);
        const packets = t.packets - b.packets;
        if (packets < BigInt(this.#o.minGatePackets ?? 10)) continue;
        const before = pct(b.dropped, b.packets);
        const during = pct(t.dropped - b.dropped, packets);
        if (during - before > limit) {
          return this.#fail(r, `wave ${r.currentWave + 1}: node ${n.name} drops ${during.toFixed(1)}% of packets, up from ${before.toFixed(1)}% before the change (more than ${limit} points)`);
        }
      }
    }
    if (pending.length > 0) return;
    const bake = ms(strategy.waves[r.currentWave]?.bakeTime);
    if (r.promotedWave !== r.currentWave && now.getTime() < waveStart + bake) return;
    await this.#advance(r);
  }

  /** Writes the next wave (or success), if the log still holds the rollout as evaluated. */
  async #advance(r: Rollout): Promise<void> {
    await this.#store.write((chain) => {
      const current = chain.rollouts.get(rolloutKeyOf(r));
      if (!current || current.resourceVersion !== r.resourceVersion || current.state !== RolloutState.ROLLOUT_STATE_PROGRESSING) return undefined;
      const now = this.#now();
      const last = current.currentWave + 1 >= (current.strategy?.waves.length ?? 0);
      const next = last
        ? Rollout.fromPartial({ ...current, state: RolloutState.ROLLOUT_STATE_SUCCEEDED, updateTime: now })
        : Rollout.fromPartial({
            ...current,
            currentWave: current.currentWave + 1,
            waveNodes: waveMembers(current.strategy!, current.changeRevision, this.#selectedNodes(current), current.currentWave + 1),
            waveStartTime: now,
            updateTime: now,
          });
      this.#o.log?.(last ? 'rollout succeeded' : 'rollout wave started', { [rolloutKindName(r.kind)]: r.name, wave: next.currentWave + 1, nodes: next.waveNodes.length });
      return { upserts: [], deletes: [], rollouts: [next], serviceUpserts: [], serviceDeletes: [], policyPatches: [] };
    }, r.traceContext);
  }

  async #fail(r: Rollout, reason: string): Promise<void> {
    await this.#store.write((chain) => {
      const current = chain.rollouts.get(rolloutKeyOf(r));
      if (!current || current.resourceVersion !== r.resourceVersion || current.state !== RolloutState.ROLLOUT_STATE_PROGRESSING) return undefined;
      this.#o.log?.('rollout failed', { [rolloutKindName(r.kind)]: r.name, reason });
      return revertChange(current, RolloutState.ROLLOUT_STATE_FAILED, reason, this.#now());
    }, r.traceContext);
  }

  /** Stops evaluating; ends open wave spans. Idempotent. */
  close(): void {
    clearInterval(this.#timer);
    for (const s of this.#spans.values()) s.end();
    this.#spans.clear();
  }
}
