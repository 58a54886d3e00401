import {
  MAX_SERVICE_HEALTH_NAMES,
  MAX_UNHEALTHY_NODES_LISTED,
  MAX_UNHEALTHY_VERDICTS_LISTED,
  NodeEventType,
  backendPort,
  checkDnsLabel,
  type BackendHealthSummary,
  type FieldViolation,
  type GetServiceHealthRequest,
  type GetServiceHealthResponse,
  type Service,
  type ServiceHealth,
  effectiveConnectionLimit,
  quote,
  validateConnectionQuery,
  type ConnectionsAnswer,
  type ConnectionsQuery,
  type ListConnectionsRequest,
  type ListConnectionsResponse,
  RevisionOutcome,
  matchesLabelSelector,
  type GetNodeRequest,
  type GetNodeResponse,
  type GetPolicyCountersRequest,
  type GetPolicyCountersResponse,
  type GetRevisionStatusRequest,
  type GetRevisionStatusResponse,
  type ListNodesRequest,
  type ListNodesResponse,
  type Node,
  type NodeRevisionState,
  type WatchNodesRequest,
  type WatchNodesResponse,
  RolloutState,
  rolloutKey,
  rolloutKindName,
  type GetRolloutRequest,
  type GetRolloutResponse,
  type ListRolloutsRequest,
  type ListRolloutsResponse,
  type RolloutStatus,
  type WatchRolloutRequest,
  type WatchRolloutResponse,
} from '@edgeplane/proto';
import type { CounterStore } from './counter-store.js';
import { NotFoundError, ValidationError } from './errors.js';
import type { NodeRegistry } from './node-registry.js';
import { paginate } from './page-token.js';
import { backendKey, type ServiceHealthStore } from './service-health-store.js';
import { selectorParam } from './selector-param.js';
import { checkRolloutKind } from './rollout-plan.js';

/** What FleetService needs of the rollouts, each named by its key (rolloutKey: kind and name). */
export interface RolloutReader {
  status(key: string): RolloutStatus | undefined;
  names(): string[];
  watch(listener: (key: string) => void): () => void;
}

/** What FleetService needs to ask an agent for its connection table (AgentSessions). */
export interface ConnectionQuerier {
  /** @throws PreconditionError, UnavailableError, DeadlineExceededError (see AgentSessions.queryConnections). */
  queryConnections(node: string, query: Omit<ConnectionsQuery, 'requestId'>, timeoutMs: number): Promise<ConnectionsAnswer>;
}

/** What GetServiceHealth reads: the nodes' reported verdicts and the intent's services. */
export interface ServiceHealthSource {
  store: ServiceHealthStore;
  /** The service of that name in the intent now, or undefined. */
  service(name: string): Service | undefined;
}

/** How long ListConnections waits for the agent by default. */
export const DEFAULT_CONNECTIONS_TIMEOUT_MS = 10_000;

/** FleetService's behaviour, independent of gRPC. */
export class FleetApi {
  #registry: NodeRegistry;
  #counters: CounterStore;
  #revision: () => bigint;

  #rollouts: RolloutReader | undefined;
  #connections: ConnectionQuerier | undefined;
  #connectionsTimeoutMs: number;
  #health: ServiceHealthSource | undefined;

  constructor(
    registry: NodeRegistry,
    counters: CounterStore,
    currentRevision: () => bigint,
    rollouts?: RolloutReader,
    connections?: { querier: ConnectionQuerier; timeoutMs?: number },
    health?: ServiceHealthSource,
  ) {
    this.#health = health;
    this.#rollouts = rollouts;
    this.#connections = connections?.querier;
    this.#connectionsTimeoutMs = connections?.timeoutMs ?? DEFAULT_CONNECTIONS_TIMEOUT_MS;
    this.#registry = registry;
    this.#counters = counters;
    this.#revision = currentRevision;
  }

  #select(text: string, field: string): Node[] {
    const selector = selectorParam(text, field);
    return this.#registry.list().filter((n) => matchesLabelSelector(selector, n.labels));
  }

  /** @throws ValidationError */
  listNodes(req: ListNodesRequest): ListNodesResponse {
    const page = paginate(this.#select(req.labelSelector, 'label_selector'), (n) => n.name, req.pageSize, req.pageToken);
    return { nodes: page.items, nextPageToken: page.nextPageToken };
  }

  /** @throws NotFoundError */
  getNode(req: GetNodeRequest): GetNodeResponse {
    const node = this.#registry.get(req.name);
    if (!node) throw new NotFoundError(`node ${req.name} not found`);
    return { node, counters: this.#counters.nodeRules(node.name), interfaceCounters: this.#counters.nodeInterfaces(node.name), conntrack: this.#counters.nodeConntrack(node.name), loadBalancer: this.#counters.nodeLoadBalancer(node.name), blocklists: this.#counters.nodeBlocklists(node.name) };
  }

  /**
   * Lists or counts the entries of one node's connection tables, asking its agent over its
   * stream; at most the request's limit (default 1,000, at most 10,000) rows.
   * @throws ValidationError (bad node name, filter or limit); NotFoundError (unknown node);
   *   PreconditionError NODE_NOT_CONNECTED; UnavailableError; DeadlineExceededError.
   */
  async listConnections(req: ListConnectionsRequest): Promise<ListConnectionsResponse> {
    const problems = validateConnectionQuery(req.filter, req.limit);
    const nameProblem = req.node === '' ? 'required' : checkDnsLabel(req.node);
    if (nameProblem) problems.unshift({ field: 'node', description: req.node === '' ? 'required' : `${quote(req.node)} ${nameProblem}`, reason: req.node === '' ? 'REQUIRED' : 'INVALID_NAME' });
    if (problems.length > 0) throw new ValidationError(`invalid request: ${problems[0]!.field}: ${problems[0]!.description}`, problems);
    if (!this.#registry.get(req.node)) throw new NotFoundError(`node ${req.node} not found`);
    if (!this.#connections) throw new NotFoundError('this controller does not relay connection queries');
    const limit = effectiveConnectionLimit(req.limit);
    const answer = await this.#connections.queryConnections(req.node, { filter: req.filter, limit, countOnly: req.countOnly }, this.#connectionsTimeoutMs);
    const connections = req.countOnly ? [] : answer.connections;
    return { connections, matched: answer.matched, truncated: !req.countOnly && answer.matched > BigInt(connections.length) };
  }

  /**
   * Each named service's backends as the nodes its selector matches judge them: per backend, the
   * nodes that find it healthy, unhealthy (listed with their reasons, capped) or have not said.
   * @throws ValidationError (no names, more than MAX_SERVICE_HEALTH_NAMES, a bad name);
   *   NotFoundError (a service not in the intent).
   */
  getServiceHealth(req: GetServiceHealthRequest): GetServiceHealthResponse {
    const problems: FieldViolation[] = [];
    if (req.names.length === 0) problems.push({ field: 'names', description: 'name at least one service', reason: 'REQUIRED' });
    else if (req.names.length > MAX_SERVICE_HEALTH_NAMES) problems.push({ field: 'names', description: `${req.names.length} names; at most ${MAX_SERVICE_HEALTH_NAMES} per request`, reason: 'TOO_MANY_NAMES' });
    else
      req.names.forEach((name, i) => {
        const problem = checkDnsLabel(name);
        if (problem) problems.push({ field: `names[${i}]`, description: `${quote(name)} ${problem}`, reason: name ? 'INVALID_NAME' : 'REQUIRED' });
      });
    if (problems.length > 0) throw new ValidationError(`invalid request: ${problems[0]!.field}: ${problems[0]!.description}`, problems);
    const services = req.names.map((name) => {
      const service = this.#health?.service(name);
      if (!service) throw new NotFoundError(`service ${name} not found`);
      return service;
    });
    const nodes = this.#registry.list();
    const listed = { count: 0 };
    return { services: services.map((s) => this.#serviceHealth(s, nodes, listed)) };
  }

  /**
   * One service's summary. Reads only what the selected nodes reported of this service (one map
   * per node), each verdict placed by its backend key: linear in the verdicts, not a lookup per
   * node and backend.
   */
  #serviceHealth(service: Service, nodes: Node[], listed: { count: number }): ServiceHealth {
    const name = service.metadata?.name ?? '';
    const selected = nodes.filter((n) => matchesLabelSelector(service.spec?.nodeSelector, n.labels)).sort((a, b) => (a.name < b.name ? -1 : 1));
    const checked = service.spec?.healthCheck !== undefined;
    const backends = (service.spec?.backends ?? []).map((b): BackendHealthSummary => ({ address: b.address, port: backendPort(service, b), nodesHealthy: 0, nodesUnhealthy: 0, nodesUnknown: 0, unhealthy: [] }));
    const store = this.#health?.store;
    // Without a check no node says anything: every selected node is unknown.
    if (checked && store) {
      const index = new Map(backends.map((b, i) => [backendKey(b.address, b.port), i]));
      for (const n of selected) {
        for (const [k, v] of store.serviceVerdicts(n.name, name) ?? []) {
          const b = backends[index.get(k) ?? -1];
          if (!b) continue;
          if (v.healthy) b.nodesHealthy++;
          else {
            b.nodesUnhealthy++;
            if (b.unhealthy.length < MAX_UNHEALTHY_NODES_LISTED && listed.count < MAX_UNHEALTHY_VERDICTS_LISTED) {
              listed.count++;
              b.unhealthy.push({ node: n.name, reason: v.reason, since: v.sinceMs ? new Date(v.sinceMs) : undefined });
            }
          }
        }
      }
    }
    for (const b of backends) b.nodesUnknown = selected.length - b.nodesHealthy - b.nodesUnhealthy;
    // The selected nodes' load-balancer counters: per node in the datapath, so node-wide sums.
    return { name, healthChecked: checked, nodesSelected: selected.length, backends, loadBalancer: this.#counters.sumLoadBalancer(selected.map((n) => n.name)) };
  }

  /** Streams node changes until `signal` aborts. @throws ValidationError */
  async watchNodes(req: WatchNodesRequest, send: (e: WatchNodesResponse) => void, signal: AbortSignal): Promise<void> {
    const selector = selectorParam(req.labelSelector, 'label_selector');
    const off = this.#registry.watch((e) => {
      if (e.node && matchesLabelSelector(selector, e.node.labels)) send(e);
    });
    try {
      if (req.sendInitial) {
        for (const n of this.#registry.list().sort((a, b) => (a.name < b.name ? -1 : 1))) {
          if (matchesLabelSelector(selector, n.labels)) send({ type: NodeEventType.NODE_EVENT_TYPE_ADDED, node: n });
        }
      }
      await new Promise<void>((resolve) => (signal.aborted ? resolve() : signal.addEventListener('abort', () => resolve(), { once: true })));
    } finally {
      off();
    }
  }

  /** @throws ValidationError */
  getPolicyCounters(req: GetPolicyCountersRequest): GetPolicyCountersResponse {
    const nodes = this.#select(req.nodeLabelSelector, 'node_label_selector').map((n) => n.name);
    const policy = req.policy || undefined;
    return {
      fleet: this.#counters.fleetRules(policy, req.nodeLabelSelector ? nodes : undefined),
      nodes: req.perNode ? nodes.sort().map((node) => ({ node, counters: this.#counters.nodeRules(node, policy) })).filter((n) => n.counters.length > 0) : [],
    };
  }

  /** @throws ValidationError */
  getRevisionStatus(req: GetRevisionStatusRequest): GetRevisionStatusResponse {
    const revision = req.revision || this.#revision();
    const states: NodeRevisionState[] = this.#select(req.nodeLabelSelector, 'node_label_selector')
      .sort((a, b) => (a.name < b.name ? -1 : 1))
      .map((n) => {
        const s = n.status;
        // A node whose datapath state is unknown is at no revision, whatever it applied before.
        const applied = (s?.appliedRevision ?? 0n) >= revision && !s?.appliedUnknown;
        const failed = !applied && ((s?.lastErrorRevision ?? 0n) >= revision || (s?.appliedUnknown ?? false));
        return {
          node: n.name,
          appliedRevision: s?.appliedRevision ?? 0n,
          outcome: applied ? RevisionOutcome.REVISION_OUTCOME_ACK : failed ? RevisionOutcome.REVISION_OUTCOME_NACK : RevisionOutcome.REVISION_OUTCOME_UNSPECIFIED,
          error: failed ? (s?.lastError ?? '') : '',
          connected: s?.connected ?? false,
        };
      });
    const applied = states.filter((s) => s.outcome === RevisionOutcome.REVISION_OUTCOME_ACK).length;
    const failed = states.filter((s) => s.outcome === RevisionOutcome.REVISION_OUTCOME_NACK).length;
    return { revision, nodesTotal: states.length, nodesApplied: applied, nodesFailed: failed, nodesPending: states.length - applied - failed, nodes: states };
  }

  /** @throws NotFoundError */
  getRollout(req: GetRolloutRequest): GetRolloutResponse {
    checkRolloutKind(req.kind);
    const status = this.#rollouts?.status(rolloutKey(req.kind, req.name));
    if (!status) throw new NotFoundError(`${rolloutKindName(req.kind)} ${req.name} has no rollout`);
    return { status };
  }

  /** Rollouts, newest change first. @throws ValidationError */
  listRollouts(req: ListRolloutsRequest): ListRolloutsResponse {
    const all = (this.#rollouts?.names() ?? [])
      .map((n) => this.#rollouts!.status(n)!)
      .filter((s) => !req.activeOnly || s.rollout?.state === RolloutState.ROLLOUT_STATE_PROGRESSING || s.rollout?.state === RolloutState.ROLLOUT_STATE_PAUSED);
    // Newest first: the page key sorts descending by change revision.
    const key = (s: RolloutStatus): string => (0xffffffffffffn - (s.rollout?.changeRevision ?? 0n)).toString(16).padStart(13, '0') + (s.rollout?.name ?? '');
    const page = paginate(all, key, req.pageSize, req.pageToken);
    return { rollouts: page.items, nextPageToken: page.nextPageToken };
  }

  /** Streams a rollout's status on every change until it ends or `signal` aborts. @throws NotFoundError */
  async watchRollout(req: WatchRolloutRequest, send: (r: WatchRolloutResponse) => void, signal: AbortSignal): Promise<void> {
    const first = this.getRollout(req).status!;
    const key = rolloutKey(req.kind, req.name);
    send({ status: first });
    const finished = (s: RolloutStatus | undefined): boolean => !!s && s.rollout?.state !== RolloutState.ROLLOUT_STATE_PROGRESSING && s.rollout?.state !== RolloutState.ROLLOUT_STATE_PAUSED;
    if (finished(first)) return;
    let last = JSON.stringify(first, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
    await new Promise<void>((resolve) => {
      let off = (): void => undefined;
      const stop = (): void => {
        off();
        clearInterval(poll);
        resolve();
      };
      const check = (): void => {
        const s = this.#rollouts?.status(key);
        if (!s) return stop();
        const text = JSON.stringify(s, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
        if (text !== last) {
          last = text;
          send({ status: s });
        }
        if (finished(s)) stop();
      };
      off = this.#rollouts?.watch((changed) => changed === key && check()) ?? off;
      // Gate readings move with counters, which notify nobody: look every second as well.
      const poll = setInterval(check, 1000);
      if (signal.aborted) stop();
      signal.addEventListener('abort', stop, { once: true });
    });
  }
}
