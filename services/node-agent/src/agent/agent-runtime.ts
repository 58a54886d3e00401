// The agent's runtime: everything between the concrete adapters main.ts constructs and the
// agent's logic. The agent process (main.ts) and the simulated fleet (bench/fleet-sim.ts) both
// run this, so the fleet benchmark measures the agent itself.
import type * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import {
  InterfaceRole as ProtoRole,
  type NodeInfo,
  type ControllerWelcome,
  type CounterReport,
  type NodeInterface,
  type RevisionReport,
  type Snapshot,
  type TrustedKeys,
} from '@edgeplane/proto';
import { ChainFollower, IntentLog, type ChainFollowerStats } from '@edgeplane/intent-log';
import { BlocklistSync, type BlocklistWriter } from './blocklist-sync.js';
import type { InterfaceRole } from '../datapath/interface-role.js';
import type { LbSpec } from '../datapath/service-compile.js';
import { BackendRoutes } from './backend-routes.js';
import { answerConnectionsQuery } from './connection-query.js';
import { ControllerLink } from './controller-link.js';
import { ServiceHealth } from './service-health.js';
import {
  CONDITION_INTENT_STALE,
  CONDITION_LOG_MESSAGE_REJECTED,
  CONDITION_ROLLBACK_REFUSED,
  NodeAgent,
  type AgentDatapath,
  type AgentLogger,
  type AgentStatus,
} from './node-agent.js';
import type { StateStore } from './state-file.js';
import type { Head } from './verified-head.js';

/** Where the newest verified log head is kept across restarts (rollback protection). */
export interface HeadStore {
  /** @returns the saved head, or undefined if there is none. @throws if it is unreadable. */
  read(): Head | undefined;
  /** Saves the head durably. @throws if it cannot. */
  write(head: Head): void;
}

/** How long the log-message-rejected condition holds after the newest rejected message. */
const REJECTED_QUIET_MS = 600_000;

/** Attaches the datapath's programs to interfaces (the eBPF datapath; nothing in a simulation). */
export interface InterfaceAttacher {
  /** Attaches `role`'s program to `iface` unless it is attached. @returns true if it attached now. @throws if the interface is not there. */
  ensureAttached(iface: string, role: InterfaceRole): boolean;
  /** Whether `role`'s program is attached to `iface`. @throws if the interface is not there. */
  isAttached(iface: string, role: InterfaceRole): boolean;
  /** The kernel's id of `role`'s program. */
  programId(role: InterfaceRole): number;
  /**
   * How `role`'s program is attached to `iface` now, for the hello (NodeInterface.attach_mode:
   * `xdp-native`, `xdp-generic`, `xdp-offload` or `tc`; '' when it is not attached).
   * @throws if the interface is not there.
   */
  attachMode(iface: string, role: InterfaceRole): string;
  /** The kernel's index of `iface`. @throws if the interface is not there. */
  ifindex(iface: string): number;
}

/** Measurement hooks (the fleet benchmark); none changes what the agent does. */
export interface AgentRuntimeHooks {
  /** Every ACK/NACK, as it is handed to the controller link. */
  report?: (report: RevisionReport) => void;
  /** Every counter report the link sends. */
  counters?: (report: CounterReport) => void;
}

/** Options of {@link AgentRuntime}. */
export interface AgentRuntimeOptions {
  nodeName: string;
  labels: Record<string, string>;
  /** The datapath of each role (may be one object for both; shadow support optional: AgentDatapath). Owned by the caller. */
  datapaths: Record<InterfaceRole, AgentDatapath>;
  /**
   * The source blocklists to keep equal to the intent's prefix lists and blocks (each role's
   * EbpfDatapath.blocklist); absent or empty: not enforced (the in-memory datapath).
   */
  blocklists?: BlocklistWriter[];
  stateFile: StateStore;
  /** Interfaces to keep attached, checked every `interfaceCheckMs`; needs `attacher`. */
  interfaces?: { name: string; role: InterfaceRole }[];
  attacher?: InterfaceAttacher;
  /** Default 2000. */
  interfaceCheckMs?: number;
  natsServers: string[];
  /**
   * More NATS connection options: the node's credentials (authenticator, its own inbox prefix)
   * and TLS, as agentNatsOptions() builds them. Servers, reconnect and timeouts are the runtime's.
   */
  natsOptions?: NodeConnectionOptions;
  /** The NATS connect and request timeout, ms. Default 5000. */
  natsTimeoutMs?: number;
  trustedKeys: TrustedKeys;
  /** The controller (or its replicas, tried in turn: ControllerLinkOptions.address) and the credentials for it. */
  controller: { address: string | readonly string[]; credentials: grpc.ChannelCredentials };
  /** What the hello says about the agent. */
  info: NodeInfo;
  /** Told apart from a reconnect by the controller: one per process (or simulated agent). */
  sessionId: string;
  heartbeatIntervalMs?: number;
  counterIntervalMs?: number;
  log: AgentLogger;
  /** Accept only log entries of this fleet (unset: any fleet signed by a trusted key). */
  fleetId?: string;
  /**
   * Called with the labels the controller says are bound to the node, from every welcome (the
   * agent main stores them with the node's credentials). The runtime has already recompiled for
   * them by then when they changed.
   */
  onEnrolledLabels?: (labels: Record<string, string>) => void;
  /** Operator keys whose signed history reset lifts a refused rollback (none: only a new state dir does). */
  resetKeys?: TrustedKeys;
  /** Raise intent-stale when no verified controller heartbeat arrived for this long, ms. Default 30000. */
  staleAfterMs?: number;
  /**
   * The newest verified (revision, hash) across restarts: the follower refuses a shorter or
   * different history than it. Without one, rollback protection holds only for the process's life.
   */
  verifiedHead?: HeadStore;
  /** Backoff of NodeAgent's retries, ms (see NodeAgentOptions). */
  retryMinMs?: number;
  retryMaxMs?: number;
  /** Hands a large apply's garbage back to the system (see NodeAgentOptions.reclaim). */
  reclaim?: () => void;
  hooks?: AgentRuntimeHooks;
  /** Makes the node's settings what the uplink's services need, before they are applied (NodeAgentOptions.prepareUplink). */
  prepareUplink?: (lb: LbSpec | undefined) => void;
}

/** The configured interfaces with their attachment state, as the hello describes them. */
function describeInterfaces(o: AgentRuntimeOptions): NodeInterface[] {
  const attacher = o.attacher;
  return (o.interfaces ?? []).map(({ name, role }) => {
    // An interface that is not there (yet) is described with index 0 and no attachment.
    const ask = <T>(fn: () => T, otherwise: T): T => {
      try {
        return fn();
      } catch {
        return otherwise;
      }
    };
    const attached = ask(() => attacher?.isAttached(name, role) ?? false, false);
    return {
      name,
      ifindex: ask(() => attacher?.ifindex(name) ?? 0, 0),
      role: role === 'uplink' ? ProtoRole.INTERFACE_ROLE_UPLINK : ProtoRole.INTERFACE_ROLE_WORKLOAD,
      attachMode: ask(() => attacher?.attachMode(name, role) ?? '', ''),
      attached,
      programId: attacher?.programId(role) ?? 0,
    };
  });
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** The catch-up after a NATS reconnect waits up to this long at first, doubling per failure up to the max. */
const RECONNECT_CATCH_UP_FIRST_MS = 1000;
const RECONNECT_CATCH_UP_MAX_MS = 15_000;

/**
 * One node agent, wired: the state file is enforced first (tables filled before any program is
 * attached, so a node that booted without pins is fail-static from the first packet), then the
 * interface watcher attaches and keeps programs attached, the controller link says hello (with
 * the agent's conditions, and a ConditionReport whenever they change), and NATS is reached in
 * the background: a connection that reconnects forever, the intent log opened with backoff, the
 * follower started with retries, and a catch-up after every reconnect.
 * Owns the link, the NATS connection, the follower and the agent's timers; close() ends them
 * and never touches the datapath (the caller's: programs stay attached).
 */
export class AgentRuntime {
  readonly agent: NodeAgent;
  /**
   * The health checks of the backends of the services that select this node (retargeted on
   * every applied revision and relabel): `eligible` is what the service compile takes out
   * unhealthy backends by, `watch` tells of every change. Owned by the runtime (closed with it).
   */
  readonly serviceHealth: ServiceHealth;
  #o: AgentRuntimeOptions;
  #link: ControllerLink;
  #nc: NatsConnection | undefined;
  #follower: ChainFollower | undefined;
  #rejectedQuiet: NodeJS.Timeout | undefined;
  #watcher: NodeJS.Timeout | undefined;
  #attached = new Map<string, boolean>();
  #closed = false;
  /** NATS reconnects seen: a catch-up retried after one stops when another began. */
  #reconnects = 0;
  #started = false;
  #synced: Promise<void> | undefined;
  #blocklists: BlocklistSync[] = [];

  private constructor(options: AgentRuntimeOptions, agent: NodeAgent, link: ControllerLink, serviceHealth: ServiceHealth) {
    this.#o = options;
    this.agent = agent;
    this.#link = link;
    this.serviceHealth = serviceHealth;
  }

  /**
   * Enforces the state file, attaches the interfaces, starts the controller link and, in the
   * background, the intent sync ({@link AgentRuntime.synced} says when it follows the log).
   * @returns a runtime the caller owns (close() it).
   * @throws what enforcing the state file throws (StateFileError, a datapath error); nothing is left running then.
   */
  static async start(options: AgentRuntimeOptions): Promise<AgentRuntime> {
    // The agent reports through the link, and the link's hello reads the agent: tie the knot.
    const ref: { link?: ControllerLink } = {};
    const hooks = options.hooks ?? {};
    // Health checks follow what the datapath enforces: the services of the applied revision,
    // for the labels it was compiled with. A verdict changes on this node only, with no log
    // entry; the controller is told (the whole state when the probed set changed).
    const health = new ServiceHealth();
    health.watch((v) => {
      options.log(v.healthy ? 'info' : 'warn', v.healthy ? 'backend healthy again' : 'backend unhealthy', { service: v.service, backend: `${v.address}:${v.port}`, reason: v.reason });
      ref.link?.backendVerdict(v, health.revision);
    });
    // DSR and full NAT send from the node's address towards each backend: resolved once per
    // backend between two applies.
    const uplinks = options.interfaces?.filter((i) => i.role === 'uplink').map((i) => i.name);
    const routes = new BackendRoutes(undefined, uplinks?.length ? uplinks : undefined);
    const blocklists = (options.blocklists ?? []).map((writer) => new BlocklistSync(writer, { onError: (err) => options.log('warn', 'dropping expired blocks failed (the datapath stopped matching them already)', { reason: (err as Error).message }) }));
    const agent = new NodeAgent({
      ...(blocklists.length > 0 ? { blocklist: { sync: (snapshot: Snapshot, labels: Readonly<Record<string, string>>) => blocklists.map((b) => b.sync(snapshot, labels)) } } : {}),
      applied: (snapshot, labels) => {
        routes.forget();
        if (health.retarget(snapshot.services, labels, snapshot.revision)) ref.link?.backendHealthState();
      },
      // The service compile takes unhealthy backends out of new-flow selection.
      health: health.eligible,
      routes: routes.view,
      ...(options.prepareUplink ? { prepareUplink: options.prepareUplink } : {}),
      nodeName: options.nodeName,
      labels: options.labels,
      datapaths: options.datapaths,
      stateFile: options.stateFile,
      report: (r) => {
        hooks.report?.(r);
        ref.link?.report(r);
      },
      conditions: (c) => ref.link?.conditions(c),
      flushCounters: (c) => {
        const sent = ref.link?.counters(c) ?? false;
        if (sent) hooks.counters?.(c);
        return sent;
      },
      log: options.log,
      ...(options.retryMinMs !== undefined ? { retryMinMs: options.retryMinMs } : {}),
      ...(options.retryMaxMs !== undefined ? { retryMaxMs: options.retryMaxMs } : {}),
      ...(options.reclaim ? { reclaim: options.reclaim } : {}),
    });
    // A verdict change re-applies the revision in force with the new health, at once and with no
    // log entry (bpf/LB.md, "Health": within the check's thresholds plus one apply).
    health.watch(() => agent.healthChanged());
    let booted: Snapshot | undefined;
    try {
      // Tables first, attach second: a program attached before its tables passes everything.
      booted = await agent.boot();
    } catch (err) {
      agent.close();
      health.close();
      for (const b of blocklists) b.close();
      throw err;
    }
    const link = new ControllerLink({
      address: options.controller.address,
      credentials: options.controller.credentials,
      ...(options.heartbeatIntervalMs !== undefined ? { heartbeatIntervalMs: options.heartbeatIntervalMs } : {}),
      ...(options.counterIntervalMs !== undefined ? { counterIntervalMs: options.counterIntervalMs } : {}),
      hello: () => {
        const { conditions, appliedUnknown } = agent.conditions;
        return {
          nodeName: options.nodeName,
          // The labels of now: the controller may have changed them since the agent started.
          labels: agent.labels,
          info: options.info,
          interfaces: describeInterfaces(options),
          receivedRevision: agent.status.received,
          appliedRevision: agent.status.applied,
          sessionId: options.sessionId,
          conditions,
          appliedUnknown,
          lastReport: agent.lastReport,
        };
      },
      counters: () => {
        const c = agent.counterDeltas();
        if (c) hooks.counters?.(c);
        return c;
      },
      backendHealth: () => ({ revision: health.revision, verdicts: health.verdicts() }),
      onStateChange: (up, reason) => options.log('info', up ? 'controller connected' : 'controller disconnected', { reason }),
      onConnectionsQuery: (query) =>
        answerConnectionsQuery({ readers: options.datapaths, origin: (role, id) => agent.ruleOrigin(role, id) }, query),
      // The controller is the authority on the node's labels: every welcome says which are bound
      // to it (an admin's change closes the node's stream, so the next welcome brings it), and
      // policies select on them from then on, without a restart.
      onWelcome: (w: ControllerWelcome) => {
        const labels = { ...w.enrolledLabels };
        if (agent.setLabels(labels)) options.log('warn', 'the controller changed this node\'s labels; compiling for them', { labels });
        options.onEnrolledLabels?.(labels);
      },
    });
    ref.link = link;
    const runtime = new AgentRuntime(options, agent, link, health);
    runtime.#blocklists = blocklists;
    runtime.#checkInterfaces();
    if (options.attacher && options.interfaces?.length) runtime.#watcher = setInterval(() => runtime.#checkInterfaces(), options.interfaceCheckMs ?? 2000);
    link.start();
    runtime.#started = true;
    runtime.#synced = runtime.#sync(booted);
    runtime.#synced.catch((err: unknown) => options.log('error', 'intent sync stopped', { error: (err as Error).message }));
    return runtime;
  }

  /** Whether the controller stream is open and welcomed. */
  get connected(): boolean {
    return this.#link.connected;
  }

  /** The NATS connection, once made (the runtime owns it). */
  get nats(): NatsConnection | undefined {
    return this.#nc;
  }

  /** How the agent stands. */
  get status(): AgentStatus {
    return this.agent.status;
  }

  /**
   * Resolves once the follower has started (subscribed and caught up), or when the runtime
   * closed first. Never rejects: failures are retried (and logged).
   */
  synced(): Promise<void> {
    return (this.#synced ?? Promise.resolve()).catch(() => undefined);
  }

  /** The interfaces as the hello describes them. */
  interfaces(): NodeInterface[] {
    return describeInterfaces(this.#o);
  }

  #checkInterfaces(): void {
    const attacher = this.#o.attacher;
    if (!attacher || this.#closed) return;
    for (const { name, role } of this.#o.interfaces ?? []) {
      try {
        if (attacher.ensureAttached(name, role)) this.#o.log('info', 'attached', { interface: name, role });
        this.#attached.set(name, true);
      } catch (err) {
        if (this.#attached.get(name) !== false) this.#o.log('warn', 'interface not ready', { interface: name, role, error: (err as Error).message, cause: String((err as Error).cause ?? '') });
        this.#attached.set(name, false);
      }
    }
  }

  // NATS last, in the background: it may be down for a long time; the datapath does not care.
  /** The follower's counters (catch-ups, resyncs, refusals, rejected messages), zero before it starts. */
  get followerStats(): ChainFollowerStats {
    return this.#follower?.stats ?? { catchUps: 0, resyncs: 0, refusals: 0, rejected: 0, liveApplied: 0, duplicates: 0, patchFailures: 0 };
  }

  async #sync(booted: Snapshot | undefined): Promise<void> {
    const o = this.#o;
    const timeout = o.natsTimeoutMs ?? 5000;
    // The first connect is retried here rather than with waitOnFirstConnect, so close() stops
    // it; once connected, the client reconnects forever on its own.
    let nc: NatsConnection | undefined;
    for (let attempt = 0; !nc; attempt++) {
      if (this.#closed) return;
      try {
        nc = await connect({ ...o.natsOptions, waitOnFirstConnect: false, servers: o.natsServers, name: `edgeplane-agent ${o.nodeName}`, maxReconnectAttempts: -1, reconnectTimeWait: 500, reconnectJitter: 250, timeout });
      } catch (err) {
        if (attempt === 0) o.log('warn', 'nats not reachable yet; retrying', { error: (err as Error).message });
        await sleep(Math.min(5000, 250 * 2 ** Math.min(attempt, 8)));
      }
    }
    if (this.#closed) return void (await nc.close());
    this.#nc = nc;
    o.log('info', 'nats connected', { server: nc.getServer() });
    let log: IntentLog | undefined;
    for (let attempt = 0; !log; attempt++) {
      if (this.#closed) return;
      try {
        log = await IntentLog.open(nc, { create: false, timeoutMs: timeout });
      } catch (err) {
        if (attempt === 0) o.log('warn', 'intent log not available yet', { error: (err as Error).message });
        await sleep(Math.min(5000, 250 * 2 ** Math.min(attempt, 8)));
      }
    }
    const agent = this.agent;
    const floor = o.verifiedHead?.read();
    const follower = new ChainFollower(log, {
      trusted: o.trustedKeys,
      ...(o.fleetId ? { fleetId: o.fleetId } : {}),
      ...(booted ? { start: booted } : {}),
      // A shorter or different history than this node verified may be an attack (a rolled back
      // bus): keep enforcing, raise rollback-refused, until an operator-signed reset.
      onDivergence: 'refuse',
      ...(floor ? { floor: { revision: floor.revision, hash: floor.hash }, resetEpoch: floor.resetEpoch } : {}),
      ...(o.resetKeys ? { resetKeys: o.resetKeys } : {}),
      staleAfterMs: o.staleAfterMs ?? 30_000,
      events: {
        advanced: (_revision, entries) => {
          try {
            o.verifiedHead?.write({ revision: follower.chain.revision, hash: follower.chain.lastHash, resetEpoch: follower.resetEpoch });
          } catch (err) {
            o.log('error', 'write verified head', { error: (err as Error).message });
          }
          agent.intentAdvanced(follower.chain, entries);
        },
        stale: (ms) => {
          o.log('warn', 'no verified controller heartbeat: the log may be frozen', { sinceMs: ms });
          agent.raiseCondition(CONDITION_INTENT_STALE, `no verified controller heartbeat for ${Math.round(ms / 1000)} s`, follower.chain.revision);
        },
        fresh: () => agent.clearCondition(CONDITION_INTENT_STALE),
        diverged: (held, reason) => {
          o.log('error', 'refused a shorter or different log history; enforcing the last good revision', { held: String(held), reason });
          agent.raiseCondition(CONDITION_ROLLBACK_REFUSED, reason, held);
        },
        reset: (epoch, reason) => {
          o.log('warn', 'accepted an operator history reset', { epoch: String(epoch), reason });
          agent.clearCondition(CONDITION_ROLLBACK_REFUSED);
        },
        // Skipped and counted (edgeplane.log.rejected_messages), logged, raised as a condition:
        // never a NACK, which would speak of a revision that was never in the log.
        rejected: (reason, claimed) => {
          o.log('warn', 'rejected log message', { reason, claimedRevision: claimed === undefined ? undefined : String(claimed) });
          agent.raiseCondition(CONDITION_LOG_MESSAGE_REJECTED, `${follower.stats.rejected} log messages failed verification and were skipped; the newest: ${reason}`);
          clearTimeout(this.#rejectedQuiet);
          this.#rejectedQuiet = setTimeout(() => agent.clearCondition(CONDITION_LOG_MESSAGE_REJECTED), REJECTED_QUIET_MS).unref();
        },
        resynced: (from, to, reason) => o.log('warn', 'resynced the intent log', { from: String(from), to: String(to), reason }),
        error: (message, err) => o.log('error', message, { error: (err as Error)?.message }),
      },
    });
    this.#follower = follower;
    await this.#retry('catch up failed; retrying', () => follower.start(), () => !this.#closed, (attempt) => (attempt === 0 ? 0 : Math.min(5000, 1000 * 2 ** Math.min(attempt - 1, 3))));
    void this.#watchNats(nc, follower);
  }

  async #watchNats(nc: NatsConnection, source: ChainFollower): Promise<void> {
    for await (const s of nc.status()) {
      if (s.type === 'reconnect') {
        this.#o.log('info', 'nats reconnected');
        void this.#catchUpAfterReconnect(source, ++this.#reconnects);
      } else if (s.type === 'disconnect') this.#o.log('warn', 'nats disconnected');
    }
  }

  /**
   * Catches up after a NATS reconnect, after a random pause and retried with exponential
   * backoff and full jitter until it succeeds, the next reconnect takes over, or the runtime
   * closes. A restarted nats-server sees the whole fleet reconnect within a second: asked at
   * once, and again at once after each timeout, it never caught up with 10,000 agents.
   */
  #catchUpAfterReconnect(source: ChainFollower, generation: number): Promise<void> {
    return this.#retry(
      'catch up after reconnect; retrying',
      () => source.catchUp(),
      () => !this.#closed && generation === this.#reconnects,
      (attempt) => Math.random() * Math.min(RECONNECT_CATCH_UP_MAX_MS, RECONNECT_CATCH_UP_FIRST_MS * 2 ** attempt),
    );
  }

  /**
   * Runs `step` until it succeeds or is no longer `wanted`: before attempt N it pauses
   * `pauseMs(N)`, and each failure is logged as `warning`.
   */
  async #retry(warning: string, step: () => Promise<void>, wanted: () => boolean, pauseMs: (attempt: number) => number): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      const pause = pauseMs(attempt);
      if (pause > 0) await sleep(pause);
      if (!wanted()) return;
      try {
        await step();
        return;
      } catch (err) {
        this.#o.log('warn', warning, { error: (err as Error).message, attempt });
      }
    }
  }

  /**
   * Stops: the interface watcher, the agent's retries, the backend health checks, the follower,
   * the link, and drains NATS.
   * Idempotent. Never detaches: the datapath keeps enforcing.
   */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#watcher);
    this.agent.close();
    this.serviceHealth.close();
    for (const b of this.#blocklists) b.close();
    clearTimeout(this.#rejectedQuiet);
    this.#follower?.close();
    this.#link.close();
    const nc = this.#nc;
    if (nc && !nc.isClosed()) await nc.drain().catch(() => nc.close());
    if (this.#started) await this.agent.settled();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
