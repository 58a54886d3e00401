import { SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import {
  MAX_RECORDED_GATE_READINGS,
  RevisionOutcome,
  Rollout,
  RolloutState,
  WavePhase,
  matchesLabelSelector,
  rolloutKeyOf,
  rolloutKindName,
  shadowCandidateCovers,
  type GateReading,
  type RolloutStatus,
  type ShadowFlow,
  type ShadowReading,
  type WaveStatus,
} from '@edgeplane/proto';
import { extractTraceContext } from '@edgeplane/telemetry';
import type { CounterStore, NodeShadow } from './counter-store.js';
import type { IntentStore } from './intent-store.js';
import type { NodeRegistry } from './node-registry.js';
import { enterWave, hasShadowPhase, isActive, passShadow, revertChange, rolloutSelector, waveMembers } from './rollout-plan.js';

const tracer = trace.getTracer('@edgeplane/controller');

/** Options of {@link RolloutManager}. */
export interface RolloutManagerOptions {
  /** How often active rollouts are evaluated. Default 500 ms. */
  tickMs?: number;
  /**
   * Fewest packets a node must have counted since it enforced the change before the drop-share
   * gate judges its reading (the controller's --gate-min-packets). Readings are cumulative since
   * the switch, so every packet weighs the same; a reading of fewer packets (3 packets of which 1
   * dropped is 33 %) never fails a wave on its own. Default {@link DEFAULT_GATE_MIN_PACKETS}.
   */
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

/** The default of {@link RolloutManagerOptions.minGatePackets}. */
export const DEFAULT_GATE_MIN_PACKETS = 20;

function ms(d: { seconds: bigint; nanos: number } | undefined): number {
  return d ? Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6) : 0;
}

const pct = (dropped: bigint, packets: bigint): number => (packets === 0n ? 0 : (Number(dropped) / Number(packets)) * 100);

/**
 * Drives staged rollouts of policies and services alike: evaluates each active rollout's gates (NACKs, nodes that do not
 * report in time, the drop-share health signal against each node's pre-change baseline) from
 * the node registry and the counters, and records every decision (next wave, success, revert)
 * as a log entry. The drop-share gate reads what each node counted since it enforced the
 * wave's record (CounterStore.since) and is judged for that node as each of its counter reports
 * arrives, so the first reading over the limit (of at least minGatePackets packets) decides.
 * The record that ends a rollout keeps the nodes that enforced the change and the last gate
 * readings. All decisions are re-checked against the newest log state when written, so
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
  /** Rollouts (key@resourceVersion) a gate failed and whose revert is being written. */
  #failing = new Set<string>();
  #spans = new Map<string, Span>();
  /** Shadow phase spans, by rollout key + change revision + wave. */
  #shadowSpans = new Map<string, Span>();
  #listeners = new Set<(name: string) => void>();
  #waveSets = new Map<string, { of: string[]; set: Set<string> }>();
  /** The rollouts in progress as of the log's revision #activeAt (judges()). */
  #active: [string, Rollout][] = [];
  #activeAt = -1n;

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
    // The drop gate is judged for a node as each of its counter reports arrives, not at the next tick.
    this.#counters.watch((node) => this.#countersArrived(node));
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
          if (!wave.has(n) && !r.shadowNodes.includes(n)) continue;
          this.#notify(key);
          break;
        }
      }
    });
  }

  /**
   * Whether a rollout in progress judges this node's counters now: the node is in its current
   * wave or shadows its candidate. Replicas share such a node's counters at once, others in
   * batches (ReplicaFleetSync's countersMs).
   */
  judges(node: string): boolean {
    const chain = this.#store.chain;
    // The rollouts in progress, found again only when the log moved (asked once per counter report).
    if (this.#activeAt !== chain.revision) {
      this.#active = [...chain.rollouts].filter(([, r]) => isActive(r));
      this.#activeAt = chain.revision;
    }
    for (const [key, r] of this.#active) if (this.#waveSet(key, r).has(node) || r.shadowNodes.includes(node)) return true;
    return false;
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

  /**
   * One node's drop-share reading in rollout `r`'s wave: what it counted since it enforced the
   * wave's record (r.resourceVersion) against its share before. `overLimit`: over the gate's
   * limit with at least minGatePackets packets.
   */
  #reading(r: Rollout, node: string): GateReading {
    const counted = this.#counters.since(node, r.resourceVersion);
    const limit = r.strategy?.gates?.maxDropRatioIncreasePoints ?? 0;
    if (!counted) return { node, baselineDropPercent: 0, currentDropPercent: 0, packets: 0n, droppedPackets: 0n, overLimit: false, time: undefined };
    const before = pct(counted.before.dropped, counted.before.packets);
    const during = pct(counted.since.dropped, counted.since.packets);
    const enough = counted.since.packets >= BigInt(this.#o.minGatePackets ?? DEFAULT_GATE_MIN_PACKETS);
    return { node, baselineDropPercent: before, currentDropPercent: during, packets: counted.since.packets, droppedPackets: counted.since.dropped, overLimit: limit > 0 && enough && during - before > limit, time: this.#now() };
  }

  /** Why a reading over the limit fails the wave. */
  #overLimit(r: Rollout, g: GateReading): string {
    return `wave ${r.currentWave + 1}: node ${g.node} drops ${g.currentDropPercent.toFixed(1)}% of ${g.packets} packets since it enforced the change, up from ${g.baselineDropPercent.toFixed(1)}% before the change (more than ${r.strategy?.gates?.maxDropRatioIncreasePoints ?? 0} points)`;
  }

  /** A counter report of `node` arrived: judges its drop gate in every progressing rollout whose wave holds it. */
  #countersArrived(node: string): void {
    if (this.#o.isLeader && !this.#o.isLeader()) return;
    for (const [key, r] of this.#store.chain.rollouts) {
      if (r.state !== RolloutState.ROLLOUT_STATE_PROGRESSING || !((r.strategy?.gates?.maxDropRatioIncreasePoints ?? 0) > 0)) continue;
      if (!this.#waveSet(key, r).has(node)) continue;
      const g = this.#reading(r, node);
      if (!g.overLimit) continue;
      void this.#fail(r, this.#overLimit(r, g)).catch((err: unknown) => this.#o.onError?.(`fail rollout of ${rolloutKindName(r.kind)} ${r.name}`, err));
    }
  }

  /**
   * What the record that ends rollout `r` keeps: the nodes that enforced the change (every
   * node of the earlier waves, which advanced only once all of theirs had applied, and the
   * current wave's nodes that applied its record) and the current wave's gate readings, those
   * over the limit first, then by rise, at most MAX_RECORDED_GATE_READINGS. A node that applies
   * the change between this decision and the revert entry (milliseconds) is not in the list.
   */
  ending(r: Rollout): Pick<Rollout, 'enforcedNodes' | 'finalGateReadings'> {
    const earlier = r.currentWave > 0 && r.strategy ? new Set(waveMembers(r.strategy, r.changeRevision, this.#selectedNodes(r), r.currentWave - 1)) : new Set<string>();
    const enforcedNodes = r.waveNodes.filter((n) => earlier.has(n) || (this.#registry.get(n)?.status?.appliedRevision ?? 0n) >= r.resourceVersion);
    const readings = r.waveNodes.map((n) => this.#reading(r, n));
    const rise = (g: GateReading): number => g.currentDropPercent - g.baselineDropPercent;
    readings.sort((a, b) => Number(b.overLimit) - Number(a.overLimit) || rise(b) - rise(a) || (a.node < b.node ? -1 : 1));
    return { enforcedNodes, finalGateReadings: readings.slice(0, MAX_RECORDED_GATE_READINGS) };
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
    /** The wave each node joined (for shadow readings). */
    const waveOf = new Map<string, number>();
    // Once reverted, the record says which nodes enforced the change: the others applied only
    // the revert, or neither (yet).
    const reverted = r.state === RolloutState.ROLLOUT_STATE_FAILED || r.state === RolloutState.ROLLOUT_STATE_ABORTED;
    const enforced = new Set(r.enforcedNodes);
    const succeeded = r.state === RolloutState.ROLLOUT_STATE_SUCCEEDED;
    for (let i = 0; i < (strategy?.waves.length ?? 0); i++) {
      // The log's record is the authority for the current wave; earlier ones are recomputed.
      const members = i === r.currentWave ? [...r.waveNodes, ...r.shadowNodes] : i < r.currentWave ? waveMembers(strategy!, r.changeRevision, selected, i) : [];
      const mine = members.filter((n) => !before.has(n));
      before = new Set(members);
      let done = 0;
      let failed = 0;
      const ends = { nodesEnforced: 0, nodesRevertOnly: 0, nodesNeither: 0 };
      for (const n of mine) {
        const s = this.#registry.get(n)?.status;
        if (s?.lastOutcome === RevisionOutcome.REVISION_OUTCOME_NACK && s.lastOutcomeRevision >= r.changeRevision && !enforced.has(n) && (reverted || s.appliedRevision < r.resourceVersion)) failed++;
        else if (s && s.appliedRevision >= r.resourceVersion) done++;
        if (!reverted) continue;
        if (enforced.has(n)) ends.nodesEnforced++;
        else if (s && s.appliedRevision >= r.resourceVersion) ends.nodesRevertOnly++;
        else ends.nodesNeither++;
      }
      const current = i === r.currentWave;
      const start = current ? r.waveStartTime : undefined;
      const bake = ms(strategy!.waves[i]!.bakeTime);
      for (const n of mine) waveOf.set(n, i);
      const shadowing = current && r.wavePhase === WavePhase.WAVE_PHASE_SHADOW;
      const shadowUntil = shadowing && isActive(r) ? this.#shadowBakeStart(r) : undefined;
      const settled = (i < r.currentWave && !reverted) || succeeded;
      waves.push({
        phase: current ? (r.wavePhase === WavePhase.WAVE_PHASE_SHADOW ? WavePhase.WAVE_PHASE_SHADOW : WavePhase.WAVE_PHASE_ENFORCING) : WavePhase.WAVE_PHASE_UNSPECIFIED,
        shadowUntilTime: shadowUntil === undefined ? undefined : new Date(shadowUntil + ms(strategy!.waves[i]!.shadowBakeTime)),
        index: i,
        name: strategy!.waves[i]!.name,
        nodes: mine,
        nodesDone: reverted ? ends.nodesEnforced : settled ? mine.length : done,
        nodesFailed: failed,
        nodesPending: reverted || settled ? 0 : Math.max(0, mine.length - done - failed),
        startTime: start,
        bakeUntilTime: start ? new Date(start.getTime() + bake) : undefined,
        ...ends,
      });
    }
    const gate = r.state === RolloutState.ROLLOUT_STATE_PROGRESSING || r.state === RolloutState.ROLLOUT_STATE_PAUSED ? r.waveNodes.map((n) => this.#reading(r, n)) : r.finalGateReadings;
    const { readings, samples } = this.#shadowReadings(r, waveOf);
    return { rollout: r, waves, gateReadings: gate, shadowReadings: readings, shadowSamples: samples };
  }

  /**
   * Each node's newest shadow counters of `r`'s candidate (nodes of its waves, `waveOf`), and their
   * sampled flows with the node named: kept by the counter store after the rollout ends.
   */
  #shadowReadings(r: Rollout, waveOf: ReadonlyMap<string, number>): { readings: ShadowReading[]; samples: ShadowFlow[] } {
    const readings: ShadowReading[] = [];
    const samples: ShadowFlow[] = [];
    const strategy = r.strategy;
    if (!strategy?.waves.some((_, i) => hasShadowPhase(strategy, i))) return { readings, samples };
    for (const [node, wave] of [...waveOf].sort((a, b) => a[1] - b[1] || (a[0] < b[0] ? -1 : 1))) {
      const s = this.#shadowOf(r, node);
      if (!s) continue;
      const x = s.report;
      readings.push({ node, wave, classified: x.classified, wouldDrop: x.wouldDrop, wouldAllow: x.wouldAllow, wouldDropPercent: pct(x.wouldDrop, x.classified), since: s.since, rules: x.rules });
      for (const f of x.samples) samples.push({ ...f, node });
    }
    return { readings, samples };
  }

  /** A node's newest shadow counters if they are of `r`'s candidate. */
  #shadowOf(r: Rollout, node: string): NodeShadow | undefined {
    const s = this.#counters.nodeShadow(node);
    return s && shadowCandidateCovers(s.report.candidate, r) ? s : undefined;
  }

  /**
   * When the shadow bake of `r`'s current wave starts (ms): when the last of its shadow nodes was
   * first heard shadowing the candidate; undefined while one of them was not.
   */
  #shadowBakeStart(r: Rollout): number | undefined {
    let start = r.waveStartTime?.getTime() ?? 0;
    for (const n of r.shadowNodes) {
      const s = this.#shadowOf(r, n);
      if (!s) return undefined;
      start = Math.max(start, s.since.getTime());
    }
    return start;
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
    this.#endShadowSpan(r, RolloutState[r.state].replace('ROLLOUT_STATE_', '').toLowerCase());
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
    if (r.wavePhase === WavePhase.WAVE_PHASE_SHADOW) return this.#evaluateShadow(r);
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
    // Gate 3: the share of dropped packets since each node enforced the change against its
    // share before (also judged as each counter report arrives: #countersArrived).
    if ((gates?.maxDropRatioIncreasePoints ?? 0) > 0) {
      for (const n of applied) {
        const g = this.#reading(r, n.name);
        if (g.overLimit) return this.#fail(r, this.#overLimit(r, g));
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
        ? Rollout.fromPartial({ ...current, ...this.ending(current), state: RolloutState.ROLLOUT_STATE_SUCCEEDED, updateTime: now })
        : Rollout.fromPartial({
            ...current,
            currentWave: current.currentWave + 1,
            ...enterWave(current.strategy!, current.changeRevision, this.#selectedNodes(current), current.currentWave + 1, current.waveNodes),
            waveStartTime: now,
            updateTime: now,
          });
      this.#o.log?.(last ? 'rollout succeeded' : 'rollout wave started', { [rolloutKindName(r.kind)]: r.name, wave: next.currentWave + 1, nodes: next.waveNodes.length });
      return { upserts: [], deletes: [], rollouts: [next], serviceUpserts: [], serviceDeletes: [], policyPatches: [] };
    }, r.traceContext);
  }

  async #fail(r: Rollout, reason: string): Promise<void> {
    // One revert per decision: a gate judged on every counter report may fire again while it is written.
    const key = `${rolloutKeyOf(r)}@${r.resourceVersion}`;
    if (this.#failing.has(key)) return;
    this.#failing.add(key);
    try {
      await this.#store.write((chain) => {
        const current = chain.rollouts.get(rolloutKeyOf(r));
        if (!current || current.resourceVersion !== r.resourceVersion || current.state !== RolloutState.ROLLOUT_STATE_PROGRESSING) return undefined;
        this.#o.log?.('rollout failed', { [rolloutKindName(r.kind)]: r.name, reason });
        return revertChange(Rollout.fromPartial({ ...current, ...this.ending(current) }), RolloutState.ROLLOUT_STATE_FAILED, reason, this.#now());
      }, r.traceContext);
    } finally {
      this.#failing.delete(key);
    }
  }

  /** Starts the span of `r`'s current shadow phase (once): its figures are set when it is decided. */
  #shadowSpan(r: Rollout): Span {
    const key = `${rolloutKeyOf(r)}@${r.changeRevision}#${r.currentWave}`;
    let span = this.#shadowSpans.get(key);
    if (span) return span;
    const parent = extractTraceContext(r.traceContext?.traceparent ? { traceparent: r.traceContext.traceparent, tracestate: r.traceContext.tracestate } : undefined);
    span = tracer.startSpan(
      'edgeplane.rollout.shadow',
      { startTime: r.waveStartTime ?? new Date(), attributes: { [`edgeplane.${rolloutKindName(r.kind)}`]: r.name, 'edgeplane.rollout.kind': rolloutKindName(r.kind), 'edgeplane.wave': r.currentWave, 'edgeplane.shadow.nodes': r.shadowNodes.length, 'edgeplane.revision': Number(r.changeRevision) } },
      parent,
    );
    this.#shadowSpans.set(key, span);
    return span;
  }

  /** Ends `r`'s open shadow span(s) with `outcome` (and an error status for a failure). */
  #endShadowSpan(r: Rollout, outcome: string, error?: string): void {
    for (const [k, s] of this.#shadowSpans) {
      if (!k.startsWith(`${rolloutKeyOf(r)}@${r.changeRevision}#`)) continue;
      s.setAttribute('edgeplane.outcome', outcome);
      if (error !== undefined) s.setStatus({ code: SpanStatusCode.ERROR, message: error });
      s.end();
      this.#shadowSpans.delete(k);
    }
  }

  /**
   * The shadow phase of `r`'s current wave: its shadow nodes enforce the previous version and
   * classify by the change. Gates, in order: a NACK of the change by a shadow node (its
   * candidate did not compile or its datapath refused it); nodes not heard shadowing the
   * candidate within the report timeout; then, once the shadow bake has run from the last node's
   * first shadow report, each node must have classified min_shadow_packets (waited for at most
   * the report timeout past the bake) and would drop at most max_would_drop_percent of them. A
   * failure ends the rollout (nothing was enforced: the record just ends, the stored resource
   * goes back to its previous version); a pass makes the same nodes enforce the change.
   */
  async #evaluateShadow(r: Rollout): Promise<void> {
    const span = this.#shadowSpan(r);
    const strategy = r.strategy!;
    const gates = strategy.gates;
    const now = this.#now().getTime();
    const wave = `wave ${r.currentWave + 1} (shadow)`;
    const nodes = r.shadowNodes.map((name) => ({ name, status: this.#registry.get(name)?.status, shadow: this.#shadowOf(r, name) }));
    const totals = (): Record<string, number> => {
      let classified = 0n;
      let wouldDrop = 0n;
      let wouldAllow = 0n;
      let worst = 0;
      for (const n of nodes) {
        if (!n.shadow) continue;
        classified += n.shadow.report.classified;
        wouldDrop += n.shadow.report.wouldDrop;
        wouldAllow += n.shadow.report.wouldAllow;
        worst = Math.max(worst, pct(n.shadow.report.wouldDrop, n.shadow.report.classified));
      }
      return { 'edgeplane.shadow.classified': Number(classified), 'edgeplane.shadow.would_drop': Number(wouldDrop), 'edgeplane.shadow.would_allow': Number(wouldAllow), 'edgeplane.shadow.would_drop_percent': pct(wouldDrop, classified), 'edgeplane.shadow.max_node_would_drop_percent': worst };
    };
    const fail = async (reason: string): Promise<void> => {
      span.setAttributes(totals());
      await this.#fail(r, `${reason}; nothing was enforced`);
      // Ended here with the figures unless another writer moved the rollout on first.
      if (this.#store.chain.rollouts.get(rolloutKeyOf(r))?.state === RolloutState.ROLLOUT_STATE_FAILED) this.#endShadowSpan(r, 'failed', reason);
    };
    if (!gates?.ignoreNacks && this.#registry.nackedSince(r.changeRevision) > 0) {
      const nack = nodes.find((n) => n.status?.lastOutcome === RevisionOutcome.REVISION_OUTCOME_NACK && n.status.lastOutcomeRevision >= r.changeRevision && n.status.appliedRevision < r.resourceVersion);
      if (nack) return fail(`${wave}: node ${nack.name} NACKed revision ${nack.status!.lastOutcomeRevision}: ${nack.status!.lastError}`);
    }
    const timeout = ms(strategy.reportTimeout) || (this.#o.defaultReportTimeoutMs ?? 60_000);
    const waveStart = r.waveStartTime?.getTime() ?? now;
    const pending = nodes.filter((n) => !n.shadow);
    if (pending.length > 0) {
      if (now - waveStart > timeout && (pending.length / nodes.length) * 100 > (gates?.maxUnreportedPercent ?? 0)) {
        return fail(`${wave}: ${pending.length} of ${nodes.length} nodes did not report shadowing the change within ${timeout} ms (${pending.map((n) => n.name).join(', ')})`);
      }
      return;
    }
    const promoted = r.promotedWave === r.currentWave;
    const bakeEnd = this.#shadowBakeStart(r)! + ms(strategy.waves[r.currentWave]?.shadowBakeTime);
    if (!promoted && now < bakeEnd) return;
    const min = gates?.minShadowPackets || 1n;
    const short = promoted ? [] : nodes.filter((n) => n.shadow!.report.classified < min);
    if (short.length > 0) {
      if (now - bakeEnd > timeout) return fail(`${wave}: ${short.map((n) => `node ${n.name} classified ${n.shadow!.report.classified}`).join(', ')} of the ${min} packets a shadow verdict needs, ${timeout} ms after the shadow bake`);
      return;
    }
    const limit = gates?.maxWouldDropPercent ?? 0;
    if (limit > 0) {
      for (const n of nodes) {
        const x = n.shadow!.report;
        const share = pct(x.wouldDrop, x.classified);
        if (share > limit) return fail(`${wave}: node ${n.name} would drop ${share.toFixed(1)}% of the packets it classified (${x.wouldDrop} of ${x.classified}; more than ${limit}%)`);
      }
    }
    span.setAttributes(totals());
    if (await this.#passShadow(r)) this.#endShadowSpan(r, 'passed');
  }

  /** Writes the pass of `r`'s shadow phase (the same nodes enforce the change), if the log still holds the rollout as evaluated. @returns whether it was written. */
  async #passShadow(r: Rollout): Promise<boolean> {
    let written = false;
    await this.#store.write((chain) => {
      const current = chain.rollouts.get(rolloutKeyOf(r));
      if (!current || current.resourceVersion !== r.resourceVersion || current.state !== RolloutState.ROLLOUT_STATE_PROGRESSING || current.wavePhase !== WavePhase.WAVE_PHASE_SHADOW) return undefined;
      const now = this.#now();
      const next = Rollout.fromPartial({ ...current, ...passShadow(current), waveStartTime: now, updateTime: now });
      this.#o.log?.('rollout shadow passed', { [rolloutKindName(r.kind)]: r.name, wave: next.currentWave + 1, nodes: next.waveNodes.length });
      written = true;
      return { upserts: [], deletes: [], rollouts: [next], serviceUpserts: [], serviceDeletes: [], policyPatches: [] };
    }, r.traceContext);
    return written;
  }

  /** Stops evaluating; ends open wave spans. Idempotent. */
  close(): void {
    clearInterval(this.#timer);
    for (const s of this.#spans.values()) s.end();
    this.#spans.clear();
    for (const s of this.#shadowSpans.values()) s.end();
    this.#shadowSpans.clear();
  }
}
