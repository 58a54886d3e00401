// What each node says of the backends it health-checks (issue 14), as its agent reported it over
// AgentService.Connect. The node acts on its verdicts itself; the controller only shows them.
import { MAX_BACKEND_HEALTH_PER_NODE, backendPort, type Backend, type BackendHealthReport, type BackendVerdict, type Service } from '@edgeplane/proto';

const key = (service: string, address: string, port: number): string => `${service}\u0000${address}\u0000${port}`;

/**
 * The newest backend verdicts per node: a report with `replace` replaces the node's whole state,
 * others update it. Per node at most MAX_BACKEND_HEALTH_PER_NODE verdicts are kept (new keys past
 * that are dropped and counted), and a node's state is forgotten when its stream ends
 * ({@link forget}): its backends are then unknown, so memory is bounded by the connected nodes.
 * Like CounterStore, one replica's: it holds what the nodes connected to this replica said.
 */
export class ServiceHealthStore {
  #nodes = new Map<string, Map<string, BackendVerdict>>();
  #dropped = 0;

  /** Verdicts dropped because their node already had MAX_BACKEND_HEALTH_PER_NODE. */
  get dropped(): number {
    return this.#dropped;
  }

  /** Records a validated report of `node` (AgentSessions checks it against the intent first). */
  add(node: string, report: BackendHealthReport): void {
    let verdicts = this.#nodes.get(node);
    if (!verdicts || report.replace) this.#nodes.set(node, (verdicts = new Map()));
    for (const v of report.backends) {
      const k = key(v.service, v.address, v.port);
      if (!verdicts.has(k) && verdicts.size >= MAX_BACKEND_HEALTH_PER_NODE) {
        this.#dropped++;
        continue;
      }
      verdicts.set(k, { ...v });
    }
  }

  /** Forgets what `node` said (its stream ended, or it was removed). */
  forget(node: string): void {
    this.#nodes.delete(node);
  }

  /** What `node` says of one backend of `service`, or undefined when it has not said. */
  verdict(node: string, service: string, address: string, port: number): BackendVerdict | undefined {
    return this.#nodes.get(node)?.get(key(service, address, port));
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
  if (!keys) backendKeys.set(service, (keys = new Set((service.spec?.backends ?? []).map((b: Backend) => `${b.address} ${backendPort(service, b)}`))));
  return keys.has(`${address} ${port}`);
}
