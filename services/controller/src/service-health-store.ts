// What each node says of the backends it health-checks (issue 14), as its agent reported it over
// AgentService.Connect. The node acts on its verdicts itself; the controller only shows them.
import { MAX_BACKEND_HEALTH_PER_NODE, backendPort, type Backend, type BackendHealthReport, type BackendVerdict, type Service } from '@edgeplane/proto';

/** The key of one backend within a service: its address and port, as agents report them. */
export function backendKey(address: string, port: number): string {
  return `${address} ${port}`;
}

/** One node's verdict on one backend, as kept (compact: the service and backend are its keys). */
export interface StoredVerdict {
  readonly healthy: boolean;
  readonly reason: string;
  /** Since when, ms since the epoch (0: the node did not say). */
  readonly sinceMs: number;
}

interface NodeVerdicts {
  count: number;
  /** service -> backendKey -> verdict */
  services: Map<string, Map<string, StoredVerdict>>;
}

/**
 * The newest backend verdicts per node: a report with `replace` replaces the node's whole state,
 * others update it. Per node at most MAX_BACKEND_HEALTH_PER_NODE verdicts are kept (new keys past
 * that are dropped and counted), and a node's state is forgotten when its stream ends
 * ({@link forget}): its backends are then unknown, so memory is bounded by the connected nodes.
 * Kept by node, then service, so one service's verdicts are read without a lookup per backend.
 * Like CounterStore, one replica's: it holds what the nodes connected to this replica said.
 */
export class ServiceHealthStore {
  #nodes = new Map<string, NodeVerdicts>();
  #dropped = 0;

  /** Verdicts dropped because their node already had MAX_BACKEND_HEALTH_PER_NODE. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Records a validated report of `node` (AgentSessions checks it against the intent first). */
  add(node: string, report: BackendHealthReport): void {
    let state = this.#nodes.get(node);
    if (!state || report.replace) this.#nodes.set(node, (state = { count: 0, services: new Map() }));
    for (const v of report.backends) {
      let verdicts = state.services.get(v.service);
      if (!verdicts) state.services.set(v.service, (verdicts = new Map()));
      const k = backendKey(v.address, v.port);
      if (!verdicts.has(k)) {
        if (state.count >= MAX_BACKEND_HEALTH_PER_NODE) {
          this.#dropped++;
          continue;
        }
        state.count++;
      }
      verdicts.set(k, { healthy: v.healthy, reason: v.reason, sinceMs: v.since?.getTime() ?? 0 });
    }
  }

  /** Forgets what `node` said (its stream ended, or it was removed). */
  forget(node: string): void {
    this.#nodes.delete(node);
  }

  /** What `node` says of the backends of `service` (by {@link backendKey}), or undefined when it said nothing of it. Callers must not modify it. */
  serviceVerdicts(node: string, service: string): ReadonlyMap<string, StoredVerdict> | undefined {
    return this.#nodes.get(node)?.services.get(service);
  }

  /** What `node` says of one backend of `service`, or undefined when it has not said. */
  verdict(node: string, service: string, address: string, port: number): StoredVerdict | undefined {
    return this.serviceVerdicts(node, service)?.get(backendKey(address, port));
  }

  /** Everything `node` says (empty when nothing), as verdicts a report would carry: what replicas share. */
  nodeVerdicts(node: string): BackendVerdict[] {
    const out: BackendVerdict[] = [];
    for (const [service, verdicts] of this.#nodes.get(node)?.services ?? []) {
      for (const [k, v] of verdicts) {
        const i = k.lastIndexOf(' ');
        out.push({ service, address: k.slice(0, i), port: Number(k.slice(i + 1)), healthy: v.healthy, reason: v.reason, since: v.sinceMs ? new Date(v.sinceMs) : undefined });
      }
    }
    return out;
  }

  /** Nodes with a reported state. */
  get size(): number {
    return this.#nodes.size;
  }
}

// Services are immutable once in the chain: index each one's backends once.
const backendKeys = new WeakMap<Service, Set<string>>();

/** Whether `service` has a backend at `address`:`port` (the port resolved as agents resolve it). Constant time after the first call per service. */
export function hasBackend(service: Service, address: string, port: number): boolean {
  let keys = backendKeys.get(service);
  if (!keys) backendKeys.set(service, (keys = new Set((service.spec?.backends ?? []).map((b: Backend) => backendKey(b.address, backendPort(service, b))))));
  return keys.has(backendKey(address, port));
}
