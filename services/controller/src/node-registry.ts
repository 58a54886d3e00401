import {
  Node,
  NodeEventType,
  RevisionOutcome,
  type AgentHello,
  type ConditionReport,
  type RevisionReport,
  type WatchNodesResponse,
} from '@edgeplane/proto';

/** Where the registry keeps nodes across controller restarts (a NATS KV bucket in production). */
export interface NodeStoreBackend {
  load(): Promise<Node[]>;
  save(node: Node): Promise<void>;
}

/** Listener for node changes: one event per node that changed since the last batch (its newest state). */
export type NodeListener = (event: WatchNodesResponse) => void;

/** Listener for a batch of node changes: every node that changed within one tick, once, in its newest state. */
export type NodeBatchListener = (events: readonly WatchNodesResponse[]) => void;

/** Options of {@link NodeRegistry}. */
export interface NodeRegistryOptions {
  now?: () => Date;
  onError?: (message: string, err: unknown) => void;
  /**
   * The tick on which changes are told to listeners and written: every node that changed within
   * it is told once (its newest state) and written at most once. 0: at once, one event per change
   * (tests of ordering). Default 50 ms.
   */
  batchMs?: number;
}

/** ACKs and NACKs whose newest outcome is of one revision, counted over the fleet. */
export interface RevisionOutcomes {
  /** Nodes whose newest outcome is an ACK of the revision. */
  acked: number;
  /** Nodes whose newest outcome is a NACK of the revision. */
  nacked: number;
}

/** Whether a change is written to the backend (at the next tick) or only kept here. */
type Persist = 'now' | 'never';

/**
 * The fleet's nodes as their agents describe them, with observed status. Each node's record is
 * updated in place; ACK and NACK outcomes are also counted per revision ({@link outcomes}), so a
 * question about one revision costs the number of revisions nodes last reported, not the fleet.
 *
 * Cost per change is independent of the fleet size (issue 15): a report updates one record and
 * marks the node; once per `batchMs` tick every marked node is told to listeners once (WatchNodes
 * streams, the rollout manager, which takes the whole batch at once) and written at most once.
 * Identity (hello), NACKs, conditions and disconnects are written at the next tick, so the
 * registry and every node's last error survive a controller restart. ACKs and last-seen times
 * are never written on their own (never a durable write per node per change, nor per
 * heartbeat: that was most of an idle controller's CPU at 10,000 nodes); they go with the
 * node's next write (its disconnect at the latest), and an agent resends its applied revision
 * and newest outcome in every hello, so a controller killed with -9 has them back as each
 * agent reconnects. On load every node is marked disconnected until its agent says hello again.
 * Owns a timer (unref'd): close() writes what is pending and stops it.
 */
export class NodeRegistry {
  #nodes = new Map<string, Node>();
  #sessions = new Map<string, string>();
  #listeners = new Set<NodeBatchListener>();
  #backend: NodeStoreBackend;
  #now: () => Date;
  #onError: (message: string, err: unknown) => void;
  #batchMs: number;
  #pending = new Set<Promise<void>>();
  /** Nodes changed since the last tick, with the event listeners get (ADDED wins over MODIFIED). */
  #changes = new Map<string, NodeEventType>();
  #persistNow = new Set<string>();
  #tick: NodeJS.Timeout | undefined;
  /** revision -> outcome -> nodes whose newest outcome that is. */
  #outcomes = new Map<bigint, RevisionOutcomes>();
  #closed = false;

  constructor(backend: NodeStoreBackend, options: NodeRegistryOptions = {}) {
    this.#backend = backend;
    this.#now = options.now ?? (() => new Date());
    this.#onError = options.onError ?? (() => undefined);
    this.#batchMs = options.batchMs ?? 50;
  }

  /** Loads persisted nodes (all marked disconnected). */
  async load(): Promise<void> {
    for (const node of await this.#backend.load()) {
      if (node.status) node.status.connected = false;
      this.#count(this.#nodes.get(node.name), -1);
      this.#nodes.set(node.name, node);
      this.#count(node, 1);
    }
  }

  /** Returns a node, or undefined. Callers must not modify it. */
  get(name: string): Node | undefined {
    return this.#nodes.get(name);
  }

  /** All nodes. Callers must not modify them. */
  list(): Node[] {
    return [...this.#nodes.values()];
  }

  /**
   * Nodes whose newest outcome is an ACK or a NACK of `revision` (a node counts once, for the
   * revision of its newest report): O(1), whatever the fleet size.
   */
  outcomes(revision: bigint): RevisionOutcomes {
    const o = this.#outcomes.get(revision);
    return { acked: o?.acked ?? 0, nacked: o?.nacked ?? 0 };
  }

  /** Nodes whose newest outcome is a NACK of `revision` or a later one: O(revisions nodes last reported). */
  nackedSince(revision: bigint): number {
    let n = 0;
    for (const [r, o] of this.#outcomes) if (r >= revision) n += o.nacked;
    return n;
  }

  #count(node: Node | undefined, by: 1 | -1): void {
    const s = node?.status;
    if (!s) return;
    const ack = s.lastOutcome === RevisionOutcome.REVISION_OUTCOME_ACK;
    if (!ack && s.lastOutcome !== RevisionOutcome.REVISION_OUTCOME_NACK) return;
    let o = this.#outcomes.get(s.lastOutcomeRevision);
    if (!o) this.#outcomes.set(s.lastOutcomeRevision, (o = { acked: 0, nacked: 0 }));
    if (ack) o.acked += by;
    else o.nacked += by;
    if (o.acked === 0 && o.nacked === 0) this.#outcomes.delete(s.lastOutcomeRevision);
  }

  /**
   * Registers a listener of single events (one per node and tick, in its newest state); returns
   * the function that removes it.
   */
  watch(listener: NodeListener): () => void {
    return this.watchBatch((events) => {
      for (const e of events) listener(e);
    });
  }

  /** Registers a listener of whole ticks' batches; returns the function that removes it. */
  watchBatch(listener: NodeBatchListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #changed(node: Node, type: NodeEventType, persist: Persist = 'now', notify = true): void {
    if (persist === 'now') this.#persistNow.add(node.name);
    if (notify && this.#changes.get(node.name) !== NodeEventType.NODE_EVENT_TYPE_ADDED) this.#changes.set(node.name, type);
    if (this.#batchMs === 0) return this.#flushTick();
    if (!this.#tick && !this.#closed) {
      this.#tick = setTimeout(() => this.#flushTick(), this.#batchMs);
      this.#tick.unref();
    }
  }

  #write(name: string): void {
    const node = this.#nodes.get(name);
    if (!node) return;
    const p = this.#backend.save(Node.fromPartial(node)).catch((err: unknown) => this.#onError(`persist node ${name}`, err));
    this.#pending.add(p);
    void p.finally(() => this.#pending.delete(p));
  }

  /** Tells listeners of this tick's changes (each node once) and writes the nodes due now. */
  #flushTick(): void {
    clearTimeout(this.#tick);
    this.#tick = undefined;
    for (const name of this.#persistNow) this.#write(name);
    this.#persistNow.clear();
    if (this.#changes.size === 0) return;
    const events: WatchNodesResponse[] = [];
    for (const [name, type] of this.#changes) {
      const node = this.#nodes.get(name);
      if (node) events.push({ type, node });
    }
    this.#changes.clear();
    for (const l of this.#listeners) {
      try {
        l(events);
      } catch (err) {
        this.#onError('node listener', err);
      }
    }
  }

  /** Records a hello: identity, labels, capabilities, and a new session that now owns the node. */
  hello(hello: AgentHello, sessionId: string): Node {
    const now = this.#now();
    const existing = this.#nodes.get(hello.nodeName);
    const node = Node.fromPartial({
      name: hello.nodeName,
      labels: hello.labels,
      info: hello.info,
      interfaces: hello.interfaces,
      status: {
        ...existing?.status,
        connected: true,
        connectTime: now,
        lastSeenTime: now,
        receivedRevision: hello.receivedRevision,
        appliedRevision: hello.appliedRevision,
        conditions: hello.conditions,
        appliedUnknown: hello.appliedUnknown,
      },
    });
    // The agent's newest outcome: what this controller may not have stored (it restarted after
    // an ACK it persisted only lazily, or the node comes from another replica).
    const last = hello.lastReport;
    const s = node.status!;
    if (last && last.outcome !== RevisionOutcome.REVISION_OUTCOME_UNSPECIFIED && last.revision >= s.lastOutcomeRevision) {
      s.lastOutcomeRevision = last.revision;
      s.lastOutcome = last.outcome;
      if (last.outcome === RevisionOutcome.REVISION_OUTCOME_NACK && last.revision >= s.lastErrorRevision) {
        s.lastError = last.reason;
        s.lastErrorRevision = last.revision;
        s.lastErrorTime = last.time ?? now;
      }
    }
    this.#count(existing, -1);
    this.#nodes.set(node.name, node);
    this.#count(node, 1);
    this.#sessions.set(node.name, sessionId);
    this.#changed(node, existing ? NodeEventType.NODE_EVENT_TYPE_MODIFIED : NodeEventType.NODE_EVENT_TYPE_ADDED);
    return node;
  }

  /**
   * Replaces a known node's labels (an admin's SetNodeLabels), so selection and rollout gates
   * use them before the node says hello again. Returns false for a node never seen.
   */
  relabel(name: string, labels: Record<string, string>): boolean {
    const existing = this.#nodes.get(name);
    if (!existing) return false;
    const node = Node.fromPartial({ ...existing, labels });
    this.#nodes.set(name, node);
    this.#changed(node, NodeEventType.NODE_EVENT_TYPE_MODIFIED);
    return true;
  }

  /** Whether `sessionId` is the node's current session (a newer connection replaces an older one). */
  isCurrent(name: string, sessionId: string): boolean {
    return this.#sessions.get(name) === sessionId;
  }

  /** Records an ACK or NACK. */
  report(name: string, report: RevisionReport): void {
    const node = this.#nodes.get(name);
    if (!node?.status) return;
    const s = node.status;
    const now = this.#now();
    s.lastSeenTime = now;
    if (report.revision > s.receivedRevision) s.receivedRevision = report.revision;
    s.appliedRevision = report.appliedRevision;
    s.appliedUnknown = report.appliedUnknown;
    if (report.revision >= s.lastOutcomeRevision) {
      // In place: the per-revision counts move with the node's newest outcome.
      this.#count(node, -1);
      s.lastOutcomeRevision = report.revision;
      s.lastOutcome = report.outcome;
      this.#count(node, 1);
    }
    const nack = report.outcome === RevisionOutcome.REVISION_OUTCOME_NACK;
    if (nack) {
      s.lastError = report.reason;
      s.lastErrorRevision = report.revision;
      s.lastErrorTime = now;
    }
    this.#changed(node, NodeEventType.NODE_EVENT_TYPE_MODIFIED, nack ? 'now' : 'never');
  }

  /** Records the agent's conditions (the whole set, replacing what it said before); persisted, since they are rare and matter. */
  conditions(name: string, report: ConditionReport): void {
    const node = this.#nodes.get(name);
    if (!node?.status) return;
    node.status.lastSeenTime = this.#now();
    node.status.conditions = report.conditions;
    node.status.appliedUnknown = report.appliedUnknown;
    this.#changed(node, NodeEventType.NODE_EVENT_TYPE_MODIFIED);
  }

  /**
   * Records that the node was heard from. Not news for watchers, and not written on its own: the
   * node's next write (a NACK, conditions, its disconnect) carries the time.
   */
  seen(name: string): void {
    const node = this.#nodes.get(name);
    if (!node?.status) return;
    node.status.lastSeenTime = this.#now();
  }

  /** Marks the node disconnected, if `sessionId` still owns it. */
  disconnect(name: string, sessionId: string): void {
    if (!this.isCurrent(name, sessionId)) return;
    this.#sessions.delete(name);
    const node = this.#nodes.get(name);
    if (!node?.status) return;
    node.status.connected = false;
    node.status.lastSeenTime = this.#now();
    this.#changed(node, NodeEventType.NODE_EVENT_TYPE_MODIFIED);
  }

  /** Whether an agent stream to this replica owns the node now (its status is this replica's to tell). */
  isLocal(name: string): boolean {
    return this.#sessions.has(name);
  }

  /** The names of the nodes {@link isLocal} says this replica owns (a live view: copy it to change the registry while iterating). */
  localNames(): IterableIterator<string> {
    return this.#sessions.keys();
  }

  /**
   * Takes a node's state from the replica its agent is connected to (ReplicaFleetSync decides
   * which replica's word is newest): replaces what was held and, unless only its counters or
   * backend health changed (`statusChanged` false), tells listeners; no write to the backend
   * (that replica persists it). Ignored, returning false, while a stream
   * to this replica owns the node.
   */
  applyRemote(node: Node, statusChanged = true): boolean {
    if (this.#sessions.has(node.name)) return false;
    const existing = this.#nodes.get(node.name);
    this.#count(existing, -1);
    this.#nodes.set(node.name, node);
    this.#count(node, 1);
    // Like a local heartbeat or counter report, a newer last-seen time alone is not news for watchers.
    if (existing && !statusChanged) return true;
    this.#changed(node, existing ? NodeEventType.NODE_EVENT_TYPE_MODIFIED : NodeEventType.NODE_EVENT_TYPE_ADDED, 'never');
    return true;
  }

  /**
   * Marks a node disconnected whose replica stopped publishing (it died or lost NATS); the rest
   * of its status (revisions, last outcome, last error) stays. Not persisted. Ignored while a
   * stream to this replica owns the node.
   */
  remoteLost(name: string): void {
    const node = this.#nodes.get(name);
    if (this.#sessions.has(name) || !node?.status?.connected) return;
    node.status.connected = false;
    this.#changed(node, NodeEventType.NODE_EVENT_TYPE_MODIFIED, 'never');
  }

  /** Tells listeners and writes what is pending now, then waits for the writes. */
  async flush(): Promise<void> {
    this.#flushTick();
    await Promise.all([...this.#pending]);
  }

  /** Writes what is pending and stops the tick; later changes are told and written at once. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    this.#batchMs = 0;
    await this.flush();
  }
}
