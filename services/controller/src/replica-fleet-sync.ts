// Controller replicas share what their agents tell them (issue 15): node status and last outcome,
// counters, backend health. Aggregated per replica, never one durable write per node per change:
// a batched delta of the nodes that changed at most every deltaMs on a plain NATS subject, and a
// compacted snapshot of every node the replica owns every snapshotMs in the replicas bucket (a few
// keys per replica). Every replica merges both into its own NodeRegistry, CounterStore and
// ServiceHealthStore, so FleetService and the rollout gates read the whole fleet on any replica.
import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { KV } from '@nats-io/kv';
import { FLEET_STATUS_SUBJECT_PREFIX, encodeBytes, MAX_REPLICA_STATE_BYTES, REPLICA_SNAPSHOT_KEY_PREFIX, ReplicaFleetState, ReplicaNodeState, Node } from '@edgeplane/proto';
import type { CounterStore } from './counter-store.js';
import type { NodeRegistry } from './node-registry.js';
import type { ServiceHealthStore } from './service-health-store.js';

/** Options of {@link ReplicaFleetSync}. */
export interface ReplicaFleetSyncOptions {
  /** The controller id; the replica's instance id is made from it and a per-start suffix. */
  controllerId: string;
  /** How often changed nodes are published (batched). Default 100 ms. */
  deltaMs?: number;
  /** How often a replica publishes even when nothing changed (its liveness). Default 1 s. */
  idleMs?: number;
  /** How often the replica's snapshot is stored. Default 5 s. */
  snapshotMs?: number;
  /** Silence after which another replica's nodes are marked disconnected. Default 5 s. */
  expireMs?: number;
  /**
   * How often an unchanged snapshot is stored again, so that it outlives the replicas bucket's
   * max age (60 s). Default 25 s; a snapshot in which a node changed is stored at the next
   * snapshotMs tick.
   */
  refreshMs?: number;
  /**
   * How often counters that alone changed (a counter report) go out for nodes no rollout judges
   * now (`urgent` false): batched, every countersMs, instead of with the next delta. Backend
   * health is not batched (a verdict that flips is news). Default 0: with the next delta, like
   * every other change.
   */
  countersMs?: number;
  /**
   * Whether other replicas need the node's counters at once (a rollout in progress judges them):
   * those go out with the next delta whatever countersMs says. Unset: every node.
   */
  urgent?: (node: string) => boolean;
  onError?: (message: string, err: unknown) => void;
  log?: (msg: string, fields: Record<string, unknown>) => void;
}

/**
 * How long a node's encoded state is reused by the snapshots while its status does not change.
 * Its heartbeats do not change it (they only move its last-seen time, which deltas do not carry
 * either), so a snapshot shows a last-seen time at most this old (plus refreshMs); encoding every
 * node again every snapshot was most of an idle controller's CPU at 10,000 nodes.
 */
const SNAPSHOT_REUSE_MS = 60_000;

/** ReplicaFleetState.nodes (field 7, length-delimited): the tag of each node appended to an encoded envelope. */
const NODES_TAG = (7 << 3) | 2;

/** A subject and KV key token from a free-form id: letters, digits, '-' and '_' only. */
function token(id: string): string {
  return id.replace(/[^A-Za-z0-9_-]/g, '_').slice(0, 64) || 'controller';
}

/**
 * What a delta sends of a node, in increasing order (a later mark never sends less): its counters
 * and backend health with only the node's name and connect time (counters_only), the whole node,
 * or the whole node with its status changed (receivers tell their node watchers).
 */
const Send = { Counters: 0, Whole: 1, Status: 2 } as const;
type Send = (typeof Send)[keyof typeof Send];
const most = (a: Send, b: Send | undefined): Send => (b !== undefined && b > a ? b : a);

/** What this replica knows of the replica a node's newest state came from. */
interface Owner {
  replica: string;
  sequence: bigint;
}

/**
 * Shares this replica's nodes with the other replicas and merges theirs. A node's state from
 * another replica is taken unless an agent stream to this replica owns the node, or the state
 * held is newer: a later connect time wins (the node's newest stream), and within one connect
 * time the owning replica's later message. When a replica falls silent for expireMs (killed,
 * or cut from NATS), its nodes are marked disconnected and keep the rest of their status, so
 * a node that moves to another replica shows its last outcome throughout.
 * Owns a subscription and timers: close() (idempotent) publishes a last delta, removes this
 * replica's snapshot, and stops; it does not close the NATS connection.
 */
export class ReplicaFleetSync {
  readonly replica: string;
  #nc: NatsConnection;
  #kv: KV;
  #registry: NodeRegistry;
  #counters: CounterStore;
  #health: ServiceHealthStore | undefined;
  #o: ReplicaFleetSyncOptions;
  #sequence = 0n;
  /** Nodes to send with the next delta, and what of them (the largest of the changes marked). */
  #dirty = new Map<string, Send>();
  /**
   * Owned nodes whose counters or backend health changed after the snapshot encoded them: encoded
   * again at the next refresh (refreshMs), not at every snapshot tick.
   */
  #telemetryStale = new Set<string>();
  /** Owned nodes whose counters alone changed and no rollout judges: sent with the next countersMs batch. */
  #countersLater = new Set<string>();
  #owners = new Map<string, Owner>();
  /** The owned nodes' encoded states as the last snapshot stored them, and when each was encoded (performance.now()). */
  #encoded = new Map<string, { bytes: Uint8Array; at: number }>();
  /** Other replicas: when each was last heard from (performance.now()). */
  #heard = new Map<string, number>();
  #lastPublish = 0;
  #lastExpire = performance.now();
  #snapshotParts = 0;
  /** When the snapshot was last stored (performance.now()), -Infinity before the first. */
  #storedAt = -Infinity;
  #sub: Subscription | undefined;
  #timers: NodeJS.Timeout[] = [];
  #rereads = new Set<NodeJS.Timeout>();
  #closed = false;
  #storing = false;

  constructor(nc: NatsConnection, kv: KV, stores: { registry: NodeRegistry; counters: CounterStore; health?: ServiceHealthStore }, options: ReplicaFleetSyncOptions) {
    this.#nc = nc;
    this.#kv = kv;
    this.#registry = stores.registry;
    this.#counters = stores.counters;
    this.#health = stores.health;
    this.#o = options;
    this.replica = `${token(options.controllerId)}_${randomBytes(3).toString('hex')}`;
  }

  /**
   * The replica whose agent stream holds `node`, as this replica last heard from it: undefined
   * for a node connected here, or to no live replica.
   */
  ownerOf(node: string): string | undefined {
    return this.#owners.get(node)?.replica;
  }

  /** Replicas heard from within expireMs, this one included. */
  replicas(): string[] {
    return [this.replica, ...this.#heard.keys()].sort();
  }

  /**
   * Marks a node whose status (`status` true) or only its counters or backend health changed
   * here: it goes out with the next delta (telemetry only while another replica is heard), and
   * with the next snapshot (telemetry only with the next refresh). Counters alone (`counters`
   * true: a counter report) of a node no rollout judges go with the next countersMs batch.
   */
  changed(node: string, status = true, counters = false): void {
    if (counters && !status && (this.#o.countersMs ?? 0) > 0 && !this.#dirty.has(node) && !(this.#o.urgent?.(node) ?? true)) {
      this.#countersLater.add(node);
      this.#telemetryStale.add(node);
      return;
    }
    this.#countersLater.delete(node);
    this.#dirty.set(node, most(status ? Send.Status : Send.Counters, this.#dirty.get(node)));
    if (status) this.#encoded.delete(node);
    else this.#telemetryStale.add(node);
  }

  /**
   * Subscribes to the other replicas' deltas, then merges their stored snapshots, then starts
   * publishing. @throws when NATS fails (the caller closes).
   */
  async start(): Promise<void> {
    this.#sub = this.#nc.subscribe(`${FLEET_STATUS_SUBJECT_PREFIX}.*`, {
      callback: (err, msg) => {
        if (err) return this.#o.onError?.('fleet status subscription', err);
        this.#receive(msg.data);
      },
    });
    await this.#readSnapshots(`${REPLICA_SNAPSHOT_KEY_PREFIX}.>`);
    const every = (ms: number, fn: () => void): void => void this.#timers.push(setInterval(fn, ms));
    every(this.#o.deltaMs ?? 100, () => void this.#publishDelta());
    every(this.#o.snapshotMs ?? 5000, () => void this.#storeSnapshot());
    if ((this.#o.countersMs ?? 0) > 0) every(this.#o.countersMs!, () => this.#counterBatch());
    every(Math.min(1000, this.#expireMs), () => this.#expire());
    this.#expire();
    await this.#storeSnapshot();
  }

  /** Puts the counters held back since the last batch into the next delta. */
  #counterBatch(): void {
    for (const node of this.#countersLater) if (!this.#dirty.has(node)) this.#dirty.set(node, Send.Counters);
    this.#countersLater.clear();
  }

  /** Merges the stored snapshots under `filter` (KV keys). */
  async #readSnapshots(filter: string): Promise<void> {
    for await (const key of await this.#kv.keys(filter)) {
      const e = await this.#kv.get(key);
      if (!e || e.operation !== 'PUT' || e.value.length === 0) continue;
      // A stored snapshot counts as heard when it was written (the server's time), or a little
      // before now, whichever is later: a live replica stores an unchanged snapshot only every
      // refreshMs, and proves it is alive by its deltas (every idleMs). So a replica whose
      // snapshot is old is given two idleMs to be heard before its nodes count as disconnected.
      const now = performance.now();
      const written = now - Math.max(0, Date.now() - e.created.getTime());
      this.#receive(e.value, Math.min(now, Math.max(written, now - this.#expireMs + 2 * (this.#o.idleMs ?? 1000))), true);
    }
  }

  #receive(data: Uint8Array, heardAt = performance.now(), stored = false): void {
    let state: ReplicaFleetState;
    try {
      state = ReplicaFleetState.decode(data);
    } catch (err) {
      return this.#o.onError?.('decode replica fleet state', err);
    }
    if (state.replica === this.replica || !state.replica) return;
    if (!stored && !this.#heard.has(state.replica)) {
      // A replica new to this one, or back after it was silent (its nodes were marked
      // disconnected here): its deltas carry only what changes, its snapshot has every node.
      // Older than deltas already merged, the snapshot loses to them node by node (sequence).
      // Read again once it stored a newer one: a change it published while this replica did
      // not hear it (a node that disconnected) is in that one.
      const read = (): void => void this.#readSnapshots(`${REPLICA_SNAPSHOT_KEY_PREFIX}.${state.replica}.>`).catch((err: unknown) => this.#o.onError?.(`read the snapshot of replica ${state.replica}`, err));
      read();
      // It may have read this replica's snapshot before counters changed here that no delta
      // carried (none goes out while no replica is heard) or that went out before it
      // subscribed: every node owned here goes to it with the next delta, a snapshot's worth of
      // encoding once per replica heard. Sending only the nodes changed since the last snapshot
      // would miss those of a snapshot stored after it read the previous one.
      for (const name of this.#registry.localNames()) this.#dirty.set(name, most(Send.Whole, this.#dirty.get(name)));
      this.#countersLater.clear();
      const again = setTimeout(() => {
        this.#rereads.delete(again);
        if (!this.#closed) read();
      }, (this.#o.snapshotMs ?? 5000) + 500);
      this.#rereads.add(again);
    }
    this.#heard.set(state.replica, Math.max(this.#heard.get(state.replica) ?? 0, heardAt));
    for (const n of state.nodes) if (n.node) this.#merge(state.replica, state.sequence, n);
  }

  #merge(replica: string, sequence: bigint, n: ReplicaNodeState): void {
    const node = n.node!;
    if (this.#registry.isLocal(node.name)) return;
    const held = this.#registry.get(node.name);
    const owner = this.#owners.get(node.name);
    const heldAt = held?.status?.connectTime?.getTime() ?? 0;
    const at = node.status?.connectTime?.getTime() ?? 0;
    if (n.countersOnly) {
      // Only for the node as held from that replica's same connection; anything else waits for
      // the whole node (its next status change, or the snapshot read when a replica is heard anew).
      if (!held?.status || at !== heldAt || owner?.replica !== replica || sequence < owner.sequence) return;
      owner.sequence = sequence;
      // As a whole node without a status change would: no news for node watchers.
      if (node.status?.lastSeenTime) held.status.lastSeenTime = node.status.lastSeenTime;
    } else {
      if (held && at < heldAt) return;
      if (held && at === heldAt && owner && (owner.replica === replica ? sequence < owner.sequence : replica < owner.replica)) return;
      this.#owners.set(node.name, { replica, sequence });
      this.#registry.applyRemote(node, n.statusChanged);
    }
    this.#counters.replace(node.name, n);
    if (n.backendHealth.length === 0) this.#health?.forget(node.name);
    else this.#health?.add(node.name, { replace: true, backends: n.backendHealth, revision: 0n });
  }

  get #expireMs(): number {
    return this.#o.expireMs ?? 5000;
  }

  /** Other replicas silent for expireMs: their nodes are disconnected (status otherwise kept). */
  #expire(): void {
    const now = performance.now();
    const late = now - this.#lastExpire > 2 * Math.min(1000, this.#expireMs);
    this.#lastExpire = now;
    // A late timer means this process stalled: other replicas' messages may be waiting unread
    // (timers run before input is read). Judge silence on the next round.
    if (late) return;
    const limit = now - this.#expireMs;
    for (const [replica, at] of this.#heard) {
      if (at >= limit) continue;
      this.#heard.delete(replica);
      this.#o.log?.('controller replica silent; its nodes are disconnected until they reconnect', { replica });
      for (const [name, owner] of this.#owners) {
        if (owner.replica !== replica) continue;
        this.#owners.delete(name);
        this.#registry.remoteLost(name);
        this.#health?.forget(name);
      }
    }
  }

  #state(name: string, send: Send): ReplicaNodeState | undefined {
    const node: Node | undefined = this.#registry.get(name);
    if (!node) return undefined;
    const countersOnly = send === Send.Counters;
    return {
      // Counters alone: what a receiver needs to know it holds this node from this connection,
      // and when the node was last heard (what a whole node would have moved).
      node: countersOnly ? Node.fromPartial({ name, status: { connectTime: node.status?.connectTime, lastSeenTime: node.status?.lastSeenTime } }) : node,
      rules: this.#counters.nodeRules(name),
      interfaces: this.#counters.nodeInterfaces(name),
      conntrack: this.#counters.nodeConntrack(name),
      blocklists: this.#counters.nodeBlocklists(name),
      loadBalancer: this.#counters.nodeLoadBalancer(name),
      shadow: this.#counters.nodeShadow(name)?.report,
      counterMarks: this.#counters.nodeMarks(name),
      backendHealth: this.#health?.nodeVerdicts(name) ?? [],
      statusChanged: send === Send.Status,
      countersOnly,
    };
  }

  /** One node's state, encoded (a ReplicaNodeState), or undefined for a node the registry does not hold. */
  #encode(name: string, send: Send): Uint8Array | undefined {
    const s = this.#state(name, send);
    return s && encodeBytes(ReplicaNodeState, s);
  }

  /**
   * Puts encoded node states into messages of at most MAX_REPLICA_STATE_BYTES (a larger node
   * alone); `snapshot` messages are numbered parts of one whole. Each node is encoded once, by
   * the caller: the envelope is encoded without nodes and the nodes appended as its field 7
   * (protobuf's encoding of a message is the concatenation of its fields' encodings).
   */
  #messages(nodes: readonly Uint8Array[], snapshot: boolean): Uint8Array[] {
    const groups: Uint8Array[][] = [[]];
    let bytes = 0;
    for (const node of nodes) {
      const size = node.length + 8;
      // 1 KiB is left for the envelope (replica, sequence, time, part), so a message stays within it.
      if (bytes + size > MAX_REPLICA_STATE_BYTES - 1024 && groups.at(-1)!.length > 0) {
        groups.push([]);
        bytes = 0;
      }
      groups.at(-1)!.push(node);
      bytes += size;
    }
    const sequence = ++this.#sequence;
    return groups.map((group, i) => {
      const w = ReplicaFleetState.encode({ replica: this.replica, sequence, time: new Date(), snapshot, part: snapshot ? i : 0, parts: snapshot ? groups.length : 0, nodes: [] });
      for (const node of group) w.uint32(NODES_TAG).bytes(node);
      return w.finish();
    });
  }

  /**
   * Publishes the nodes changed since the last delta, or an empty delta when idleMs passed
   * (liveness). While no other replica is heard, only liveness goes out: nobody listens, so no
   * node is encoded (a lone replica spent most of its fleet-sync CPU on ACKs nobody read). What
   * changed stays marked, a status change as one, and goes to the first replica heard with every
   * other node (#receive); a replica that starts also reads the snapshot.
   */
  async #publishDelta(force = false): Promise<void> {
    const now = performance.now();
    const idle = now - this.#lastPublish >= (this.#o.idleMs ?? 1000);
    if (this.#dirty.size === 0 && !idle && !force) return;
    const alone = this.#heard.size === 0 && !force;
    if (alone && !idle) return;
    const nodes: Uint8Array[] = [];
    if (!alone) {
      for (const [name, send] of this.#dirty) {
        const bytes = this.#encode(name, send);
        if (bytes) nodes.push(bytes);
      }
      this.#dirty.clear();
    }
    this.#lastPublish = now;
    try {
      for (const m of this.#messages(nodes, false)) this.#nc.publish(`${FLEET_STATUS_SUBJECT_PREFIX}.${this.replica}`, m);
    } catch (err) {
      // NATS is unreachable (the client buffers while reconnecting; this is a closed connection):
      // the next snapshot carries these nodes again.
      this.#o.onError?.('publish fleet status delta', err);
    }
  }

  /** Stores the state of every node an agent stream to this replica owns, in parts. */
  async #storeSnapshot(): Promise<void> {
    if (this.#storing || this.#closed) return;
    this.#storing = true;
    try {
      // Status "changed" for a reader that starts: everything is news to it. A node whose status
      // did not change since the last snapshot is not encoded again before the refresh, and then
      // only if its telemetry changed or its encoding is SNAPSHOT_REUSE_MS old.
      const now = performance.now();
      const refresh = now - this.#storedAt >= (this.#o.refreshMs ?? 25_000);
      const encoded = new Map<string, { bytes: Uint8Array; at: number }>();
      let fresh = false;
      // The owned nodes only (every 5 s; a walk of the whole fleet's nodes was a share of it).
      for (const name of this.#registry.localNames()) {
        const held = this.#encoded.get(name);
        if (held && !(refresh && (this.#telemetryStale.has(name) || now - held.at >= SNAPSHOT_REUSE_MS))) encoded.set(name, held);
        else {
          const bytes = this.#encode(name, Send.Status);
          if (bytes) encoded.set(name, { bytes, at: now });
          this.#telemetryStale.delete(name);
          fresh = true;
        }
      }
      for (const name of this.#telemetryStale) if (!encoded.has(name)) this.#telemetryStale.delete(name);
      // Every node reused from the last snapshot, and none gone: that snapshot stays as it is until
      // the refresh (an idle controller at 10,000 nodes spent a ~3 MB put every 5 s on this).
      const same = !fresh && encoded.size === this.#encoded.size;
      this.#encoded = encoded;
      if (same && !refresh) return;
      const parts = this.#messages([...encoded.values()].map((e) => e.bytes), true);
      for (let i = 0; i < parts.length; i++) await this.#kv.put(`${REPLICA_SNAPSHOT_KEY_PREFIX}.${this.replica}.${i}`, parts[i]!);
      // Parts of a larger earlier snapshot are stale: remove them (the bucket's max age would too).
      for (let i = parts.length; i < this.#snapshotParts; i++) await this.#kv.delete(`${REPLICA_SNAPSHOT_KEY_PREFIX}.${this.replica}.${i}`);
      this.#snapshotParts = parts.length;
      this.#storedAt = now;
    } catch (err) {
      // Stored again at the next tick, changed or not.
      this.#storedAt = -Infinity;
      this.#o.onError?.('store fleet status snapshot', err);
    } finally {
      this.#storing = false;
    }
  }

  /**
   * Publishes what changed (the streams closed at shutdown), removes this replica's snapshot
   * and stops. Call before the NATS connection drains. Idempotent; never throws.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#timers) clearInterval(t);
    for (const t of this.#rereads) clearTimeout(t);
    this.#timers = [];
    this.#rereads.clear();
    this.#sub?.unsubscribe();
    // Counters held back for the next batch go out now: the agents' next replica starts from them.
    this.#counterBatch();
    await this.#publishDelta(true);
    for (let i = 0; i < this.#snapshotParts; i++) await this.#kv.purge(`${REPLICA_SNAPSHOT_KEY_PREFIX}.${this.replica}.${i}`).catch((err: unknown) => this.#o.onError?.('remove fleet status snapshot', err));
  }
}
