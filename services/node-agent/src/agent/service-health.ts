// The node's view of its services' backends (issue 14): which backends of the services that
// select this node are probed, how, and whether each takes new flows here. BackendHealth does
// the probing (one target per identical check of one endpoint); this maps its targets back to
// (service, backend), keeps since when each verdict holds, answers the compile step's question
// "may this backend take new flows?" and tells its listeners when an answer changes. Nothing here
// writes a log entry: health acts on this node only, and the controller is only told.
import {
  MAX_HEALTH_REASON_LENGTH,
  backendPort,
  matchesLabelSelector,
  resolveHealthCheck,
  type BackendVerdict,
  type Service,
} from '@edgeplane/proto';
import { BackendHealth, probeTargetKey, type ProbeTarget } from './backend-health.js';
import { serviceViolations } from '../datapath/service-compile.js';

/**
 * Whether a backend of a service may take new flows on this node: the compile step's input.
 * True for every backend of a service without a health check, and for backends not probed.
 */
export type BackendEligibility = (service: string, address: string, port: number) => boolean;

/** Told when a backend's verdict changes (the datapath re-apply hook). */
export type BackendHealthListener = (verdict: BackendVerdict) => void;

/** One backend of one selected, health-checked service, with the probe that judges it. */
export interface ServiceBackendTarget {
  readonly service: string;
  readonly address: string;
  /** The backend's port (the service's when the spec says 0). */
  readonly port: number;
  readonly target: ProbeTarget;
}

/**
 * The backends this node probes: every backend of every valid service with a health check whose
 * node selector matches `labels` (the matcher policies use), with the check resolved (the
 * health check's port, else the backend's, else the service's). Invalid services are skipped
 * (the compile step refuses them). Pure; linear in the services' size.
 */
export function serviceBackendTargets(services: readonly Service[], labels: Readonly<Record<string, string>>): ServiceBackendTarget[] {
  const out: ServiceBackendTarget[] = [];
  for (const s of services) {
    const spec = s.spec;
    if (!spec?.healthCheck || !matchesLabelSelector(spec.nodeSelector, labels) || serviceViolations(s).length > 0) continue;
    const check = resolveHealthCheck(spec.healthCheck);
    const probe = { kind: check.kind, httpPath: check.httpPath, intervalMs: check.intervalMs, timeoutMs: check.timeoutMs, healthyThreshold: check.healthyThreshold, unhealthyThreshold: check.unhealthyThreshold };
    for (const b of spec.backends) {
      const port = backendPort(s, b);
      out.push({ service: s.metadata?.name ?? '', address: b.address, port, target: { address: b.address, port: check.port || port, probe } });
    }
  }
  return out;
}

const entryKey = (service: string, address: string, port: number): string => `${service}\u0000${address}\u0000${port}`;

interface Entry {
  readonly backend: ServiceBackendTarget;
  readonly probeKey: string;
  healthy: boolean;
  reason: string;
  since: Date;
}

/** Options of {@link ServiceHealth}. */
export interface ServiceHealthOptions {
  /** Most probes in flight at once (BackendHealth's). */
  maxConcurrent?: number;
  /** The clock of `since` (tests). */
  now?: () => Date;
}

/**
 * Keeps one BackendHealth probing the backends of the services that select this node, retargeted
 * with {@link ServiceHealth.retarget} on every applied revision and relabel. Owns the prober:
 * close() stops every probe and is idempotent. Listeners are called synchronously and their
 * errors are theirs.
 */
export class ServiceHealth {
  readonly #probes: BackendHealth;
  readonly #now: () => Date;
  /** By entryKey. */
  #entries = new Map<string, Entry>();
  /** probeTargetKey -> the entries that probe judges (identical checks of one endpoint are probed once). */
  #byProbe = new Map<string, Entry[]>();
  #listeners = new Set<BackendHealthListener>();
  #revision = 0n;
  #closed = false;

  constructor(options: ServiceHealthOptions = {}) {
    this.#now = options.now ?? (() => new Date());
    this.#probes = new BackendHealth({
      ...(options.maxConcurrent !== undefined ? { maxConcurrent: options.maxConcurrent } : {}),
      onChange: (key, _target, healthy, reason) => this.#changed(key, healthy, reason),
    });
  }

  /**
   * Probes the backends of `services` that select a node with `labels`, from revision
   * `revision`: backends still probed the same way keep their verdict and since; new ones start
   * healthy (a new service works at once); the others stop.
   * @returns true if the set of probed backends changed (the controller is then sent the whole state).
   */
  retarget(services: readonly Service[], labels: Readonly<Record<string, string>>, revision: bigint): boolean {
    if (this.#closed) return false;
    this.#revision = revision;
    const wanted = serviceBackendTargets(services, labels);
    const next = new Map<string, Entry>();
    const byProbe = new Map<string, Entry[]>();
    const now = this.#now();
    for (const backend of wanted) {
      const probeKey = probeTargetKey(backend.target);
      const key = entryKey(backend.service, backend.address, backend.port);
      const have = this.#entries.get(key);
      const entry: Entry = have && have.probeKey === probeKey ? have : { backend, probeKey, healthy: true, reason: '', since: now };
      next.set(key, entry);
      const list = byProbe.get(probeKey);
      if (list) list.push(entry);
      else byProbe.set(probeKey, [entry]);
    }
    const changed = next.size !== this.#entries.size || [...next].some(([k, e]) => this.#entries.get(k) !== e);
    this.#entries = next;
    this.#byProbe = byProbe;
    // A target that another service already probes keeps that probe's verdict: align with it.
    for (const [probeKey, list] of byProbe) {
      const h = this.#probes.health(probeKey);
      if (!h) continue;
      for (const e of list) {
        if (e.healthy === h.healthy) continue;
        e.healthy = h.healthy;
        e.reason = h.healthy ? '' : h.reason.slice(0, MAX_HEALTH_REASON_LENGTH);
        e.since = now;
      }
    }
    this.#probes.setTargets([...byProbe.values()].map((list) => list[0]!.backend.target));
    return changed;
  }

  /** The compile step's input: false only for a probed backend found unhealthy on this node. */
  readonly eligible: BackendEligibility = (service, address, port) => this.#entries.get(entryKey(service, address, port))?.healthy ?? true;

  /** Every probed backend's verdict, by service then address and port. */
  verdicts(): BackendVerdict[] {
    return [...this.#entries.values()].map(verdictOf).sort((a, b) => (a.service !== b.service ? (a.service < b.service ? -1 : 1) : a.address !== b.address ? (a.address < b.address ? -1 : 1) : a.port - b.port));
  }

  /** The revision of the last retarget. */
  get revision(): bigint {
    return this.#revision;
  }

  /** Calls `listener` whenever a backend's verdict changes; returns the function that stops it. */
  watch(listener: BackendHealthListener): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  #changed(probeKey: string, healthy: boolean, reason: string): void {
    const now = this.#now();
    for (const e of this.#byProbe.get(probeKey) ?? []) {
      e.healthy = healthy;
      e.reason = healthy ? '' : reason.slice(0, MAX_HEALTH_REASON_LENGTH);
      e.since = now;
      const v = verdictOf(e);
      for (const l of this.#listeners) {
        try {
          l(v);
        } catch {
          // The listener's failure is its own; the verdicts stand.
        }
      }
    }
  }

  /** Stops every probe and listener. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#probes.close();
    this.#listeners.clear();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}

function verdictOf(e: Entry): BackendVerdict {
  return { service: e.backend.service, address: e.backend.address, port: e.backend.port, healthy: e.healthy, reason: e.reason, since: e.since };
}
