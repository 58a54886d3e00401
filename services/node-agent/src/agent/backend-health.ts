// The agent's own health checks of service backends (issue 14): every node that fronts a service
// probes its backends itself and takes a failing one out of new-flow selection on its own, with
// no log entry; the controller only hears about it. Probes are a TCP connect or an HTTP/1.1 GET.
// A backend starts healthy (a new service works at once, as in Envoy and HAProxy), goes
// unhealthy after `unhealthyThreshold` failed probes in a row and healthy again after
// `healthyThreshold` passes in a row. With the defaults (2, an interval I, a timeout T < I) a
// backend that dies is out within 2 I + T of its death.
//
// Identical checks of one backend (the same address, port and probe, from several services) are
// one target, probed once. Each target keeps its own timer, first fired at a random phase of its
// interval so a large set does not probe in bursts; at most `maxConcurrent` probes are in flight,
// and a probe that cannot start before its next one is due is skipped (counted), so a slow
// network never builds a backlog.
import { connect, type Socket } from 'node:net';
import { request } from 'node:http';

/** One health check, resolved: every default applied, the port to probe known. */
export interface HealthProbeSpec {
  readonly kind: 'tcp' | 'http';
  /** The request path of an HTTP probe ("/" for TCP, unused). */
  readonly httpPath: string;
  readonly intervalMs: number;
  readonly timeoutMs: number;
  readonly healthyThreshold: number;
  readonly unhealthyThreshold: number;
}

/** A backend endpoint to probe and how. */
export interface ProbeTarget {
  /** IPv4 or IPv6 address. */
  readonly address: string;
  /** The port probed (the health check's, else the backend's). */
  readonly port: number;
  readonly probe: HealthProbeSpec;
}

/** What is known of one target. */
export interface TargetHealth {
  readonly healthy: boolean;
  /** Why the last probe failed ('' after a pass). */
  readonly reason: string;
  /** Probes in a row with the same outcome as the last one. */
  readonly streak: number;
  /** Probes run and probes skipped (no slot before the next was due). */
  readonly probes: number;
  readonly skipped: number;
}

/** Options of BackendHealth. */
export interface BackendHealthOptions {
  /** Told when a target turns healthy or unhealthy (never for its initial healthy state). */
  onChange: (key: string, target: ProbeTarget, healthy: boolean, reason: string) => void;
  /** Most probes in flight at once. Default 256. */
  maxConcurrent?: number;
}

/** The identity of a target: two equal keys are the same probe of the same endpoint. */
export function probeTargetKey(t: ProbeTarget): string {
  const p = t.probe;
  const endpoint = t.address.includes(':') ? `[${t.address}]:${t.port}` : `${t.address}:${t.port}`;
  return `${p.kind} ${endpoint}${p.kind === 'http' ? p.httpPath : ''} every ${p.intervalMs} ms, timeout ${p.timeoutMs} ms, ${p.healthyThreshold}/${p.unhealthyThreshold}`;
}

/** Upper bound of an HTTP probe's path (the API's bound is lower; this guards other callers). */
const MAX_PATH = 1024;

interface Tracked {
  readonly target: ProbeTarget;
  timer: NodeJS.Timeout | undefined;
  healthy: boolean;
  reason: string;
  streak: number;
  lastPass: boolean;
  probes: number;
  skipped: number;
  inFlight: boolean;
  /** Set when the target is removed: a probe in flight then reports nothing. */
  removed: boolean;
}

/**
 * Probes a set of backend endpoints on their intervals. Owns its timers and the probes' sockets:
 * close() stops both and is idempotent. Timers do not keep the process alive.
 */
export class BackendHealth {
  readonly #targets = new Map<string, Tracked>();
  readonly #onChange: BackendHealthOptions['onChange'];
  readonly #maxConcurrent: number;
  readonly #sockets = new Set<Socket>();
  #inFlight = 0;
  #closed = false;

  /** @throws RangeError for a maxConcurrent below 1. */
  constructor(options: BackendHealthOptions) {
    this.#onChange = options.onChange;
    this.#maxConcurrent = options.maxConcurrent ?? 256;
    if (!Number.isInteger(this.#maxConcurrent) || this.#maxConcurrent < 1) throw new RangeError(`maxConcurrent ${this.#maxConcurrent}: at least 1`);
  }

  /**
   * Makes `targets` the probed set: new targets start healthy and are probed from a random phase
   * of their interval; targets no longer listed stop (a probe in flight is dropped); the others
   * keep their state.
   * @throws RangeError for a probe spec out of range (the API validates the same bounds).
   */
  setTargets(targets: readonly ProbeTarget[]): void {
    if (this.#closed) return;
    const wanted = new Map<string, ProbeTarget>();
    for (const t of targets) {
      checkSpec(t);
      wanted.set(probeTargetKey(t), t);
    }
    for (const [key, tracked] of this.#targets) {
      if (wanted.has(key)) continue;
      clearTimeout(tracked.timer);
      tracked.removed = true;
      this.#targets.delete(key);
    }
    for (const [key, target] of wanted) {
      if (this.#targets.has(key)) continue;
      const tracked: Tracked = { target, timer: undefined, healthy: true, reason: '', streak: 0, lastPass: true, probes: 0, skipped: 0, inFlight: false, removed: false };
      this.#targets.set(key, tracked);
      this.#schedule(key, tracked, Math.floor(Math.random() * target.probe.intervalMs));
    }
  }

  /** The state of target `key` (probeTargetKey), or undefined when it is not probed. */
  health(key: string): TargetHealth | undefined {
    const t = this.#targets.get(key);
    return t && { healthy: t.healthy, reason: t.reason, streak: t.streak, probes: t.probes, skipped: t.skipped };
  }

  /** Every probed target's key and state. */
  entries(): [string, TargetHealth][] {
    return [...this.#targets.keys()].map((key) => [key, this.health(key) as TargetHealth]);
  }

  /** Probes in flight now. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Stops every timer and destroys the probes' sockets. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#targets.values()) {
      clearTimeout(t.timer);
      t.removed = true;
    }
    this.#targets.clear();
    for (const s of this.#sockets) s.destroy();
    this.#sockets.clear();
  }

  #schedule(key: string, tracked: Tracked, delayMs: number): void {
    tracked.timer = setTimeout(() => this.#due(key, tracked), delayMs);
    tracked.timer.unref();
  }

  #due(key: string, tracked: Tracked): void {
    if (tracked.removed) return;
    this.#schedule(key, tracked, tracked.target.probe.intervalMs);
    // The previous probe still runs (its timeout is below the interval, so only a stalled
    // process gets here), or no slot is free: skip rather than queue.
    if (tracked.inFlight || this.#inFlight >= this.#maxConcurrent) {
      tracked.skipped++;
      return;
    }
    tracked.inFlight = true;
    this.#inFlight++;
    void this.#probe(tracked.target).then((reason) => {
      tracked.inFlight = false;
      this.#inFlight--;
      if (tracked.removed) return;
      tracked.probes++;
      this.#record(key, tracked, reason);
    });
  }

  #record(key: string, tracked: Tracked, reason: string): void {
    const pass = reason === '';
    tracked.streak = pass === tracked.lastPass ? tracked.streak + 1 : 1;
    tracked.lastPass = pass;
    if (!pass) tracked.reason = reason;
    const p = tracked.target.probe;
    if (tracked.healthy && !pass && tracked.streak >= p.unhealthyThreshold) {
      tracked.healthy = false;
      this.#tell(key, tracked, false, reason);
    } else if (!tracked.healthy && pass && tracked.streak >= p.healthyThreshold) {
      tracked.healthy = true;
      tracked.reason = '';
      this.#tell(key, tracked, true, '');
    }
  }

  #tell(key: string, tracked: Tracked, healthy: boolean, reason: string): void {
    try {
      this.#onChange(key, tracked.target, healthy, reason);
    } catch {
      // The listener's failure is its own; the monitor keeps probing.
    }
  }

  /** Runs one probe. @returns '' when it passed, else why it failed. Never throws. */
  #probe(t: ProbeTarget): Promise<string> {
    return new Promise((resolve) => {
      let done = false;
      let socket: Socket | undefined;
      const finish = (reason: string): void => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        if (socket) {
          this.#sockets.delete(socket);
          socket.destroy();
        }
        resolve(reason);
      };
      const timer = setTimeout(() => finish(`no answer within ${t.probe.timeoutMs} ms`), t.probe.timeoutMs);
      timer.unref();
      if (t.probe.kind === 'tcp') {
        socket = connect({ host: t.address, port: t.port });
        this.#sockets.add(socket);
        socket.once('connect', () => finish(''));
        socket.once('error', (err: NodeJS.ErrnoException) => finish(`connect: ${err.code ?? err.message}`));
        return;
      }
      const req = request({ host: t.address, port: t.port, path: t.probe.httpPath, method: 'GET', agent: false, headers: { 'user-agent': 'edgeplane-health-check/1', connection: 'close' } });
      req.once('socket', (s: Socket) => {
        socket = s;
        if (done) s.destroy();
        else this.#sockets.add(s);
      });
      req.once('response', (res) => {
        const status = res.statusCode ?? 0;
        // The status line decides; the body is not read.
        res.destroy();
        finish(status >= 200 && status < 400 ? '' : `HTTP ${status}`);
      });
      req.once('error', (err: NodeJS.ErrnoException) => finish(`http: ${err.code ?? err.message}`));
      req.end();
    });
  }
}

function checkSpec(t: ProbeTarget): void {
  const p = t.probe;
  const bad = (what: string): never => {
    throw new RangeError(`health check of ${t.address}:${t.port}: ${what}`);
  };
  if (!Number.isInteger(t.port) || t.port < 1 || t.port > 65_535) bad(`port ${t.port}`);
  if (!(p.intervalMs >= 1) || !(p.timeoutMs >= 1) || p.timeoutMs > p.intervalMs) bad(`interval ${p.intervalMs} ms, timeout ${p.timeoutMs} ms: the timeout must be positive and at most the interval`);
  if (!Number.isInteger(p.healthyThreshold) || p.healthyThreshold < 1 || !Number.isInteger(p.unhealthyThreshold) || p.unhealthyThreshold < 1) bad('thresholds must be at least 1');
  if (p.kind === 'http' && (!p.httpPath.startsWith('/') || p.httpPath.length > MAX_PATH || !/^[\x21-\x7e]*$/.test(p.httpPath))) bad('the HTTP path must start with "/" and be printable ASCII without spaces');
}
