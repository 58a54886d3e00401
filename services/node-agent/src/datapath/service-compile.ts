// Compiles the services of the intent into this node's load-balancing spec (issue 14): which
// services the node fronts, each normalized and with its Maglev table built. Pure: no kernel, no
// I/O. lb-tables.ts lays the spec out as the bytes of bpf/LB.md's maps; lb-reference.ts is the
// selection the datapath does with them.
import { createHash } from 'node:crypto';
import {
  backendPort,
  defaultMaglevTableSize,
  ForwardingMode,
  matchesLabelSelector,
  parseAddress,
  Protocol,
  SessionAffinity,
  validateService,
  type FieldViolation,
  type Service,
} from '@edgeplane/proto';
import { ServiceCompileError } from './errors.js';
import { backendKey, buildMaglevTable, type MaglevBackend } from './maglev.js';

/**
 * Whether backend (address, port) of service `service` passes its health checks on this node
 * now: the address as the spec spells it (canonical), the port resolved (never 0). An unhealthy
 * backend takes no new flows (bpf/LB.md, "Health"); its established flows keep it.
 */
export type BackendHealthView = (service: string, address: string, port: number) => boolean;

/**
 * The node's route to a backend (bpf/LB.md, "The node's address towards a backend"): the source
 * address the node sends from towards it (4 or 16 bytes) and the route's MTU (0: unknown).
 */
export interface BackendRoute {
  readonly source: Uint8Array;
  readonly mtu: number;
  /**
   * The interface the route leaves through, and whether it is one of the node's uplinks (absent:
   * not known, nothing is checked). A full-NAT backend must be reached through an uplink: the
   * replies to the node's address are turned back only at an uplink's policy hook (bpf/LB.md,
   * "Forwarding modes"); the compile refuses the service otherwise.
   */
  readonly device?: string;
  readonly uplink?: boolean;
}

/**
 * Resolves the node's route to a backend address (canonical text); undefined when there is none.
 * Asked only for the backends of DSR and full-NAT services, once per backend and compile.
 */
export type BackendRouteView = (address: string) => BackendRoute | undefined;

/** One backend of a compiled service, every default resolved. */
export interface LbBackendSpec {
  /** backendKey(): the canonical identity the Maglev table orders and hashes by. */
  readonly key: string;
  /** The address as the spec gives it (canonical text). */
  readonly address: string;
  /** The address's bytes: 4 (IPv4) or 16 (IPv6). */
  readonly addressBytes: Uint8Array;
  /** 1..65535: the backend's port, or the service's when the spec says 0. */
  readonly port: number;
  /** The configured share of new flows (an unset weight is 1); 0 drains. */
  readonly weight: number;
  /** What the health view said (true without one). */
  readonly healthy: boolean;
  /** The weight new-flow selection uses: the weight when healthy, else 0. */
  readonly effectiveWeight: number;
  /**
   * DSR and full NAT: the node's route to the backend (the route view's answer); absent for NAT
   * services, and when the view has no route (the datapath then drops the backend's new flows).
   */
  readonly route?: BackendRoute;
}

/** One service as the node's datapath fronts it. Inert. */
export interface LbServiceSpec {
  readonly name: string;
  /**
   * A stable nonzero id for counters and reverse NAT: FNV-1a of the name, probed upwards past 0
   * and past collisions over every service of the intent in name order (selected by this node or
   * not), so a service has one id on every node; 0 is "no service" in a connection entry.
   */
  readonly svcId: number;
  readonly family: 4 | 6;
  /** The VIP's bytes: 4 or 16. */
  readonly vip: Uint8Array;
  /** The VIP as the spec spells it. */
  readonly vipText: string;
  /** IP protocol: 6 TCP or 17 UDP. */
  readonly protocol: 6 | 17;
  readonly port: number;
  /** SESSION_AFFINITY_UNSPECIFIED is NONE. */
  readonly affinity: 'none' | 'client-ip';
  /** FORWARDING_MODE_UNSPECIFIED is NAT. */
  readonly forwarding: 'nat' | 'dsr' | 'fullnat';
  /** The Maglev table size: the spec's, or the smallest supported one that fits (spec 0). */
  readonly m: number;
  /** The backends in key order (backendKey, UTF-16 code units): the same on every node. */
  readonly backends: readonly LbBackendSpec[];
  /**
   * The Maglev table: for each of m slots the index into `backends` of the backend new flows to
   * that slot get; empty when no backend has a positive effective weight ("no backend": the
   * datapath drops). Shared with the table cache and with services of the same table: read only.
   */
  readonly table: Uint32Array;
  /** sha-256 (base64) of what the table depends on: m and the (key, effective weight) pairs in key order. */
  readonly tableFingerprint: string;
}

/** What this node's load balancer holds. Inert; owns no kernel state. */
export interface LbSpec {
  /** The services that select this node, in key order (lbServiceOrder: family, VIP bytes, port, protocol). */
  readonly services: readonly LbServiceSpec[];
}

/** What compileServices needs besides the services. */
export interface ServiceCompileOptions {
  /** The node's labels, which each service's node_selector is matched against. */
  readonly labels: Readonly<Record<string, string>>;
  /** Backend health on this node; absent: every backend is healthy. */
  readonly health?: BackendHealthView;
  /** Tables built before, reused when their fingerprint matches; absent: every table is built. */
  readonly cache?: MaglevTableCache;
  /** The node's routes to backends, for DSR and full-NAT services; absent: none resolved. */
  readonly routes?: BackendRouteView;
}

/**
 * Built Maglev tables by fingerprint (m and the key-ordered (key, effective weight) pairs), so a
 * recompile rebuilds only the tables whose inputs changed (bpf/LB.md, "Build cost": a full
 * snapshot of 10,000 services is about a second of CPU). A table is kept while some compile of
 * the last two used it: the datapath's two generations hold at most the last two, and a backend
 * that flaps back finds its table still here. Not thread-safe (nothing here is).
 */
export class MaglevTableCache {
  #tables = new Map<string, { table: Uint32Array; used: number }>();
  #compiles = 0;
  #builds = 0;

  /** Tables built (buildMaglevTable calls) since the cache was made. */
  get builds(): number {
    return this.#builds;
  }

  /** Tables held now. */
  get size(): number {
    return this.#tables.size;
  }

  /**
   * The table of `backends()` (in key order) at size m: the cached one when the fingerprint
   * matches, else built (backends() is called only then) and cached.
   * @throws MaglevInputError as buildMaglevTable (nothing is cached then).
   */
  table(fingerprint: string, m: number, backends: () => readonly MaglevBackend[]): Uint32Array {
    const held = this.#tables.get(fingerprint);
    if (held !== undefined) {
      held.used = this.#compiles;
      return held.table;
    }
    const table = buildMaglevTable(backends(), m);
    this.#builds++;
    this.#tables.set(fingerprint, { table, used: this.#compiles });
    return table;
  }

  /** Ends one compile: drops the tables neither this compile nor the one before used. */
  endCompile(): void {
    for (const [fingerprint, held] of this.#tables) if (held.used < this.#compiles - 1) this.#tables.delete(fingerprint);
    this.#compiles++;
  }
}

// Services are immutable once in the chain, and the same object is carried from revision to
// revision until it changes: validate each one once (as compile.ts does policies).
const validated = new WeakMap<Service, FieldViolation[]>();
/** validateService of `s`, computed once per Service object (the compile and the health checks share it). */
export function serviceViolations(s: Service): FieldViolation[] {
  let v = validated.get(s);
  if (!v) validated.set(s, (v = validateService(s)));
  return v;
}

/**
 * The order services are laid out in, the same on every node: family (IPv4 first), VIP bytes,
 * port, protocol. Unique among a node's services (compileServices refuses two on one key).
 */
export function lbServiceOrder(a: LbServiceSpec, b: LbServiceSpec): number {
  if (a.family !== b.family) return a.family - b.family;
  for (let i = 0; i < a.vip.length; i++) if (a.vip[i] !== b.vip[i]) return (a.vip[i] as number) - (b.vip[i] as number);
  return a.port - b.port || a.protocol - b.protocol;
}

/** 32-bit FNV-1a of a string's UTF-8 bytes. */
function fnv1a(text: string): number {
  let h = 0x811c9dc5;
  for (const byte of Buffer.from(text)) {
    h ^= byte;
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h;
}

/** A cheap, exact fingerprint of the table's inputs (sha-256 of a canonical text). */
function tableFingerprint(m: number, backends: readonly MaglevBackend[]): string {
  const hash = createHash('sha256');
  hash.update(`maglev v1 m=${m}\n`);
  for (const b of backends) hash.update(`${b.key} ${b.weight}\n`);
  return hash.digest('base64');
}

/**
 * Compiles the services of the intent for this node: validates every service again (as the
 * controller did; validateService), keeps those whose node_selector matches the node's labels
 * (matchesLabelSelector, the matcher policies use), resolves the spec's defaults (an unset weight
 * is 1, backend port 0 the service's port, table size 0 the smallest that fits, each enum's
 * UNSPECIFIED its documented default), takes the weight of a backend the health view calls
 * unhealthy as 0, and builds each service's Maglev table (from `cache` when its fingerprint
 * matches).
 *
 * **An invalid service refuses the whole revision**, as an invalid policy does (compile.ts): the
 * controller validated it before writing, so failing here means the node and the controller
 * disagree (version skew, a bug, a forged entry); applying the rest would make this node front a
 * different set of services than its peers while reporting the revision applied. The NACK names
 * the service, and the previous revision stays in force. Likewise two selected services on one
 * (VIP, port, protocol), which the controller refuses (VIP_IN_USE).
 *
 * @returns a new LbSpec the caller owns (its tables are shared read-only with the cache).
 * @throws ServiceCompileError naming the first invalid or conflicting service; nothing is cached
 *   then beyond tables already built.
 */
export function compileServices(services: Iterable<Service>, options: ServiceCompileOptions): LbSpec {
  const all: Service[] = [];
  for (const s of services) {
    const violations = serviceViolations(s);
    const name = s.metadata?.name ?? '?';
    if (violations.length > 0) throw new ServiceCompileError(name, `service ${name} is invalid: ${violations[0]!.field}: ${violations[0]!.description}`, violations);
    all.push(s);
  }
  // Ids over every service of the intent in name order, selected or not, so a service has the
  // same id on every node and whatever order the services came in.
  all.sort((a, b) => (a.metadata!.name < b.metadata!.name ? -1 : a.metadata!.name > b.metadata!.name ? 1 : 0));
  const ids = new Set<number>();
  const out: LbServiceSpec[] = [];
  for (const s of all) {
    let id = fnv1a(s.metadata!.name);
    while (id === 0 || ids.has(id)) id = (id + 1) >>> 0;
    ids.add(id);
    if (matchesLabelSelector(s.spec!.nodeSelector, options.labels)) out.push(compileService(s, id, options));
  }
  out.sort(lbServiceOrder);
  for (let i = 1; i < out.length; i++) {
    const a = out[i - 1] as LbServiceSpec;
    const b = out[i] as LbServiceSpec;
    if (lbServiceOrder(a, b) === 0) {
      throw new ServiceCompileError(b.name, `services ${a.name} and ${b.name} both select this node on ${b.vipText} port ${b.port} ${b.protocol === 6 ? 'TCP' : 'UDP'}; one VIP, port and protocol is one service`);
    }
  }
  options.cache?.endCompile();
  return { services: out };
}

/** What a service compiles to before health: computed once per Service object (they are immutable). */
interface ResolvedService {
  readonly fields: Omit<LbServiceSpec, 'svcId' | 'backends' | 'table' | 'tableFingerprint'>;
  /** Key order, all healthy. */
  readonly backends: readonly LbBackendSpec[];
  /** tableFingerprint with every backend healthy. */
  readonly fingerprint: string;
}

// Parsing addresses and building keys is most of a recompile's cost when few tables change
// (100,000 backends), and the chain carries one Service object until it changes.
const resolved = new WeakMap<Service, ResolvedService>();

function resolve(s: Service): ResolvedService {
  let r = resolved.get(s);
  if (r !== undefined) return r;
  const spec = s.spec!;
  // Valid (validateService): canonical addresses of one family, ports in range, known enums.
  const vip = parseAddress(spec.vip) as Uint8Array;
  const backends: LbBackendSpec[] = spec.backends.map((b) => {
    const port = backendPort(s, b);
    const weight = b.weight ?? 1;
    return { key: backendKey(b.address, port), address: b.address, addressBytes: parseAddress(b.address) as Uint8Array, port, weight, healthy: true, effectiveWeight: weight };
  });
  backends.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
  const m = spec.maglevTableSize === 0 ? (defaultMaglevTableSize(backends.length) as number) : spec.maglevTableSize;
  r = {
    fields: {
      name: s.metadata!.name,
      family: vip.length === 4 ? 4 : 6,
      vip,
      vipText: spec.vip,
      protocol: spec.protocol === Protocol.PROTOCOL_UDP ? 17 : 6,
      port: spec.port,
      affinity: spec.sessionAffinity === SessionAffinity.SESSION_AFFINITY_CLIENT_IP ? 'client-ip' : 'none',
      forwarding: forwardingOf(spec.forwardingMode),
      m,
    },
    backends,
    fingerprint: tableFingerprint(m, backends.map((b) => ({ key: b.key, weight: b.effectiveWeight }))),
  };
  resolved.set(s, r);
  return r;
}

function compileService(s: Service, svcId: number, options: ServiceCompileOptions): LbServiceSpec {
  const r = resolve(s);
  const { name, m } = r.fields;
  let backends = r.backends;
  let fingerprint = r.fingerprint;
  const health = options.health;
  // The view is asked once per backend and compile.
  const healthy = health === undefined ? undefined : backends.map((b) => health(name, b.address, b.port));
  if (healthy !== undefined && healthy.includes(false)) {
    backends = backends.map((b, i) => (healthy[i] ? b : { ...b, healthy: false, effectiveWeight: 0 }));
    fingerprint = tableFingerprint(m, backends.map((b) => ({ key: b.key, weight: b.effectiveWeight })));
  }
  const inputs = (): MaglevBackend[] => backends.map((b) => ({ key: b.key, weight: b.effectiveWeight }));
  const table = options.cache ? options.cache.table(fingerprint, m, inputs) : buildMaglevTable(inputs(), m);
  // DSR and full NAT send from the node's address towards each backend (the table does not depend on it).
  const routes = options.routes;
  if (r.fields.forwarding !== 'nat' && routes !== undefined) {
    backends = backends.map((b) => {
      const route = routes(b.address);
      // Full NAT's replies come back to the node's address through the interface the route
      // leaves by; only an uplink's hook turns them back (a workload interface's programs have
      // their own connection tables, without the flow): refused rather than half working.
      if (route?.uplink === false && r.fields.forwarding === 'fullnat') {
        throw new ServiceCompileError(name, `service ${name}: full-NAT backend ${b.address} is routed through ${route.device ?? 'an interface'}, not an uplink; full NAT's replies are translated only at an uplink (bpf/LB.md, "Forwarding modes"): reach the backend through an uplink, or use NAT or DSR mode`);
      }
      return route === undefined ? b : { ...b, route };
    });
  }
  return { ...r.fields, svcId, backends, table, tableFingerprint: fingerprint };
}

function forwardingOf(mode: ForwardingMode): LbServiceSpec['forwarding'] {
  if (mode === ForwardingMode.FORWARDING_MODE_DSR) return 'dsr';
  return mode === ForwardingMode.FORWARDING_MODE_FULLNAT ? 'fullnat' : 'nat';
}
