// The node's route to each backend of a DSR or full-NAT service (bpf/LB.md, "The node's address
// towards a backend"): the source address the kernel would send from towards it (DSR's outer
// source, full NAT's new source) and the route's MTU (DSR's too-big check). Asked through
// `ip -j route get`, the kernel's own route lookup (policy routing, VRFs and source hints
// included), once per backend address between two applies: the agent calls forget() after each
// apply, so a route that changed is seen at the next one.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { parseAddress } from '@edgeplane/proto';
import type { BackendRoute, BackendRouteView } from '../datapath/service-compile.js';

/** Runs `ip` with arguments; its stdout. Replaceable for a namespace (`ip -n`), never mocked in tests. */
export type IpCommand = (args: readonly string[]) => string;

const runIp: IpCommand = (args) => execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 5_000 });

/** Routes to backends, cached per address until forget(). Not thread-safe (nothing here is). */
export class BackendRoutes {
  #cache = new Map<string, BackendRoute | undefined>();
  #ip: IpCommand;
  #uplinks: ReadonlySet<string> | undefined;
  #failures = 0;

  /**
   * @param uplinks the node's uplink interfaces: each route then says whether it leaves through
   *   one (BackendRoute.uplink; a full-NAT backend must). Absent: not said (no interfaces, as in a
   *   simulation).
   */
  constructor(ip: IpCommand = runIp, uplinks?: readonly string[]) {
    this.#ip = ip;
    if (uplinks !== undefined) this.#uplinks = new Set(uplinks);
  }

  /** Lookups that found no route (or failed), since construction. */
  get failures(): number {
    return this.#failures;
  }

  /**
   * The route view compileServices takes: the node's source address and MTU towards `address`,
   * or undefined when the kernel has no route to it (the datapath then drops that backend's new
   * DSR and full-NAT flows). Never throws.
   */
  readonly view: BackendRouteView = (address) => {
    if (this.#cache.has(address)) return this.#cache.get(address);
    const route = this.#lookup(address);
    if (route === undefined) this.#failures++;
    this.#cache.set(address, route);
    return route;
  };

  /** Drops every cached route: the next compile asks the kernel again. */
  forget(): void {
    this.#cache.clear();
  }

  #lookup(address: string): BackendRoute | undefined {
    const bytes = parseAddress(address);
    if (bytes === undefined) return undefined;
    let routes: unknown;
    try {
      routes = JSON.parse(this.#ip([bytes.length === 4 ? '-4' : '-6', '-j', 'route', 'get', address]));
    } catch {
      return undefined;
    }
    const r = Array.isArray(routes) ? (routes[0] as { prefsrc?: unknown; dev?: unknown; metrics?: unknown } | undefined) : undefined;
    if (r === undefined || typeof r.prefsrc !== 'string') return undefined;
    const source = parseAddress(r.prefsrc);
    if (source === undefined || source.length !== bytes.length) return undefined;
    const route = { source, mtu: routeMtu(r.metrics) ?? deviceMtu(r.dev) ?? 0 };
    if (this.#uplinks === undefined || typeof r.dev !== 'string') return route;
    return { ...route, device: r.dev, uplink: this.#uplinks.has(r.dev) };
  }
}

/** An MTU the route itself sets (`ip route ... mtu N`). */
function routeMtu(metrics: unknown): number | undefined {
  if (!Array.isArray(metrics)) return undefined;
  for (const m of metrics as unknown[]) {
    const mtu = (m as { mtu?: unknown } | null)?.mtu;
    if (typeof mtu === 'number' && Number.isInteger(mtu) && mtu > 0) return mtu;
  }
  return undefined;
}

/** The egress device's MTU (sysfs of the agent's own network namespace). */
function deviceMtu(dev: unknown): number | undefined {
  if (typeof dev !== 'string' || !/^[\w.@:-]{1,15}$/.test(dev)) return undefined;
  try {
    const mtu = Number(readFileSync(`/sys/class/net/${dev}/mtu`, 'utf8').trim());
    return Number.isInteger(mtu) && mtu > 0 ? mtu : undefined;
  } catch {
    return undefined;
  }
}
