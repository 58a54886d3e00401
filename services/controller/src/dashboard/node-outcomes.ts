import {
  DASHBOARD_OUTCOMES_PER_NODE,
  DASHBOARD_TIMELINE_NODES,
  DASHBOARD_TIMELINE_ROLLOUTS,
  NodeEventType,
  RevisionOutcome,
  RolloutState,
  rolloutKeyOf,
  rolloutKindName,
  type RolloutStatus,
  type WatchNodesRequest,
  type WatchNodesResponse,
} from '@edgeplane/proto';

/** One outcome a node reported, with the time this controller saw it. */
export interface SeenOutcome {
  revision: bigint;
  ack: boolean;
  /** Milliseconds since the epoch when the report arrived here. */
  at: number;
  /** The NACK's reason ('' for an ACK). */
  error: string;
}

/** What {@link NodeOutcomes} reads: the fleet's node watch (FleetApi.watchNodes, the one WatchNodes stream). */
export interface NodeWatch {
  watchNodes(req: WatchNodesRequest, send: (e: WatchNodesResponse) => void, signal: AbortSignal): Promise<void>;
}

/** One step of a rollout's timeline. */
export interface TimelineEvent {
  /** Milliseconds since the epoch. */
  at: number;
  kind: 'accepted' | 'wave' | 'bake' | 'ack' | 'nack' | 'finished';
  text: string;
  wave?: number;
  node?: string;
  revision?: string;
}

/** A rollout's timeline, from the API call to the last node's ACK, as {@link NodeOutcomes.timeline} builds it. */
export interface RolloutTimeline {
  events: TimelineEvent[];
  /** Nodes of its waves that have reported no outcome of the change yet (their names, capped). */
  pending: string[];
  /** Nodes left out of `events` and `pending` past DASHBOARD_TIMELINE_NODES. */
  omitted: number;
  /** Milliseconds from the API call to the last node's ACK seen so far (undefined before any). */
  toLastAckMs?: number;
}

const ms = (d: Date | undefined): number | undefined => (d ? d.getTime() : undefined);

/**
 * The outcomes (ACK/NACK) each node reported, with the time this controller saw them: the last
 * DASHBOARD_OUTCOMES_PER_NODE per node, from the fleet's node watch. Node status keeps only the
 * newest outcome and no time; a rollout's timeline needs when each node took the change.
 * Outcomes that predate start() have no time and are not recorded.
 */
export class NodeOutcomes {
  #seen = new Map<string, SeenOutcome[]>();
  /** Per rollout (key and change revision): each wave's start as its log record said it (the status has only the current wave's). */
  #waveStarts = new Map<string, number[]>();
  #abort = new AbortController();
  #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** Follows `fleet`'s node watch until close(). Errors of the watch go to `onError`. */
  start(fleet: NodeWatch, onError: (message: string, err: unknown) => void): void {
    let live = false;
    fleet
      .watchNodes({ labelSelector: '', sendInitial: true }, (e) => {
        const name = e.node?.name;
        if (!name) return;
        if (e.type === NodeEventType.NODE_EVENT_TYPE_DELETED) {
          this.#seen.delete(name);
          return;
        }
        const s = e.node?.status;
        const revision = s?.lastOutcomeRevision ?? 0n;
        if (revision === 0n) return;
        // The initial listing says what nodes reported before, not when: remembered as a
        // baseline (no event), so only later reports make timeline entries.
        if (!live) {
          this.#seen.set(name, [{ revision, ack: s?.lastOutcome === RevisionOutcome.REVISION_OUTCOME_ACK, at: Number.NaN, error: s?.lastError ?? '' }]);
          return;
        }
        this.record(name, revision, s?.lastOutcome === RevisionOutcome.REVISION_OUTCOME_ACK, s?.lastError ?? '');
      }, this.#abort.signal)
      .catch((err: unknown) => onError('dashboard node watch', err));
    // watchNodes sends the initial listing synchronously before it awaits.
    live = true;
  }

  /** Records one outcome (a report repeating the newest one is ignored). */
  record(node: string, revision: bigint, ack: boolean, error: string): void {
    const list = this.#seen.get(node) ?? [];
    const last = list[list.length - 1];
    if (last && last.revision === revision && last.ack === ack) return;
    list.push({ revision, ack, at: this.#now(), error: ack ? '' : error });
    if (list.length > DASHBOARD_OUTCOMES_PER_NODE) list.splice(0, list.length - DASHBOARD_OUTCOMES_PER_NODE);
    this.#seen.set(node, list);
  }

  /**
   * Remembers the start of a rollout's current wave from its status (the log record keeps only
   * the current wave's start): call it on every rollout change. Keeps the last
   * DASHBOARD_TIMELINE_ROLLOUTS rollouts.
   */
  noteRollout(status: RolloutStatus): void {
    const r = status.rollout;
    const start = ms(r?.waveStartTime);
    if (!r || start === undefined) return;
    const key = `${rolloutKeyOf(r)}@${r.changeRevision}`;
    const starts = this.#waveStarts.get(key) ?? [];
    starts[r.currentWave] ??= start;
    this.#waveStarts.delete(key);
    this.#waveStarts.set(key, starts);
    for (const old of this.#waveStarts.keys()) {
      if (this.#waveStarts.size <= DASHBOARD_TIMELINE_ROLLOUTS) break;
      this.#waveStarts.delete(old);
    }
  }

  /** The outcomes recorded for a node, oldest first (a copy). */
  outcomes(node: string): SeenOutcome[] {
    return (this.#seen.get(node) ?? []).filter((o) => !Number.isNaN(o.at));
  }

  /**
   * A rollout's timeline: the API call (the rollout's creation), each wave's start and bake, each
   * node's first outcome of the change after its wave started (with the time this controller saw
   * it), and the end. Sorted by time.
   */
  timeline(status: RolloutStatus): RolloutTimeline {
    const r = status.rollout;
    const events: TimelineEvent[] = [];
    const pending: string[] = [];
    let omitted = 0;
    let listed = 0;
    if (!r) return { events, pending, omitted };
    const change = r.changeRevision;
    const created = ms(r.createTime) ?? 0;
    events.push({ at: created, kind: 'accepted', text: `${rolloutKindName(r.kind)} ${r.name}: revision ${change} accepted`, revision: change.toString() });
    let lastAck: number | undefined;
    const noted = this.#waveStarts.get(`${rolloutKeyOf(r)}@${change}`) ?? [];
    let previous = created;
    for (const w of status.waves) {
      // A wave that has not started yet has no nodes; an earlier one's start is what was noted
      // (or, before the dashboard saw it, no earlier than the wave before it).
      const start = ms(w.startTime) ?? noted[w.index] ?? (w.nodes.length > 0 ? previous : undefined);
      if (start === undefined) continue;
      previous = start;
      events.push({ at: start, kind: 'wave', wave: w.index, text: `wave ${w.index + 1}${w.name ? ` (${w.name})` : ''} started: ${w.nodes.length} node${w.nodes.length === 1 ? '' : 's'}` });
      const bake = ms(w.bakeUntilTime);
      if (bake !== undefined && bake > start) events.push({ at: bake, kind: 'bake', wave: w.index, text: `wave ${w.index + 1} baked` });
      for (const node of w.nodes) {
        // Wave decisions are made by the replica holding the lease (its clock): a second of slack.
        const took = (this.#seen.get(node) ?? []).find((o) => !Number.isNaN(o.at) && o.revision >= change && o.at >= start - 1000);
        if (listed >= DASHBOARD_TIMELINE_NODES) {
          omitted++;
          if (took?.ack) lastAck = Math.max(lastAck ?? 0, took.at);
          continue;
        }
        listed++;
        if (!took) {
          pending.push(node);
          continue;
        }
        if (took.ack) lastAck = Math.max(lastAck ?? 0, took.at);
        events.push({
          at: took.at,
          kind: took.ack ? 'ack' : 'nack',
          wave: w.index,
          node,
          revision: took.revision.toString(),
          text: took.ack ? `${node} ACKed revision ${took.revision}` : `${node} NACKed revision ${took.revision}: ${took.error}`,
        });
      }
    }
    const done = r.state !== RolloutState.ROLLOUT_STATE_PROGRESSING && r.state !== RolloutState.ROLLOUT_STATE_PAUSED;
    const updated = ms(r.updateTime);
    if (done && updated !== undefined) {
      const state = RolloutState[r.state].replace('ROLLOUT_STATE_', '').toLowerCase();
      events.push({ at: updated, kind: 'finished', text: `rollout ${state}${r.reason ? `: ${r.reason}` : ''}` });
    }
    events.sort((a, b) => a.at - b.at);
    return { events, pending, omitted, ...(lastAck !== undefined ? { toLastAckMs: lastAck - created } : {}) };
  }

  /** Stops following the watch. Idempotent. */
  close(): void {
    this.#abort.abort();
    this.#waveStarts.clear();
  }
}
