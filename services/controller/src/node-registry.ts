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

/** Listener for node changes. */
export type NodeListener = (event: WatchNodesResponse) => void;

/**
 * The fleet's nodes as their agents describe them, with observed status. Persists identity
 * (hello), NACKs and disconnects through the backend, so the registry and every node's last
 * error survive a controller restart; ACKs and last-seen times are written at most every
 * `persistSeenEveryMs` per node, since an agent resends its applied revision in every hello
 * (a durable write per ACK made status cost a JetStream publish per node per change). On load
 * every node is marked disconnected until its agent says hello again.
 */
export class NodeRegistry {
  #nodes = new Map<string, Node>();
  #sessions = new Map<string, string>();
  #listeners = new Set<NodeListener>();
  #backend: NodeStoreBackend;
  #now: () => Date;
  #onError: (message: string, err: unknown) => void;
  #persistSeenEveryMs: number;
  #lastPersisted = new Map<string, number>();
  #pending = new Set<Promise<void>>();

  constructor(backend: NodeStoreBackend, options: { now?: () => Date; onError?: (message: string, err: unknown) => void; persistSeenEveryMs?: number } = {}) {
    this.#backend = backend;
    this.#now = options.now ?? (() => new Date());
    this.#onError = options.onError ?? (() => undefined);
    this.#persistSeenEveryMs = options.persistSeenEveryMs ?? 30_000;
  }

  /** Loads persisted nodes (all marked disconnected). */
  async load(): Promise<void> {
    for (const node of await this.#backend.load()) {
      if (node.status) node.status.connected = false;
      this.#nodes.set(node.name, node);
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

  /** Registers a listener; returns the function that removes it. */
  watch(listener: NodeListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #changed(node: Node, type: NodeEventType, persist = true): void {
    if (persist) {
      this.#lastPersisted.set(node.name, Date.now());
      const p = this.#backend.save(Node.fromPartial(node)).catch((err: unknown) => this.#onError(`persist node ${node.name}`, err));
      this.#pending.add(p);
      void p.finally(() => this.#pending.delete(p));
    }
    for (const l of this.#listeners) {
      try {
        l({ type, node });
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
    this.#nodes.set(node.name, node);
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
      s.lastOutcomeRevision = report.revision;
      s.lastOutcome = report.outcome;
    }
    const nack = report.outcome === RevisionOutcome.REVISION_OUTCOME_NACK;
    if (nack) {
      s.lastError = report.reason;
      s.lastErrorRevision = report.revision;
      s.lastErrorTime = now;
    }
    this.#changed(node, NodeEventType.NODE_EVENT_TYPE_MODIFIED, nack || this.#persistDue(name));
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

  #persistDue(name: string): boolean {
    return Date.now() - (this.#lastPersisted.get(name) ?? 0) >= this.#persistSeenEveryMs;
  }

  /** Records that the node was heard from. */
  seen(name: string): void {
    const node = this.#nodes.get(name);
    if (!node?.status) return;
    node.status.lastSeenTime = this.#now();
    // Heartbeats are not news for watchers; they are persisted now and then.
    if (this.#persistDue(name)) this.#changed(node, NodeEventType.NODE_EVENT_TYPE_MODIFIED);
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
    this.#nodes.set(node.name, node);
    // Like a local heartbeat or counter report, a newer last-seen time alone is not news for watchers.
    if (existing && !statusChanged) return true;
    this.#changed(node, existing ? NodeEventType.NODE_EVENT_TYPE_MODIFIED : NodeEventType.NODE_EVENT_TYPE_ADDED, false);
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
    this.#changed(node, NodeEventType.NODE_EVENT_TYPE_MODIFIED, false);
  }

  /** Waits for pending writes to the backend. */
  async flush(): Promise<void> {
    await Promise.all([...this.#pending]);
  }
}
