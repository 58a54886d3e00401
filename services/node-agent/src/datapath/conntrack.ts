// The connection table as the agent sees it: timeouts, control endpoints, what a connection entry
// says, and filters over them. Pure (no kernel): the eBPF datapath (conntrack-tables.ts) encodes
// and decodes these with the codecs of table-codecs.ts; bpf/CONNTRACK.md is the contract.
import { formatAddress, parseAddress } from '@edgeplane/proto';
import { encode, type CodecValue } from 'libbpf-ts';
import type { Counter } from './datapath.js';
import { ConntrackInputError } from './errors.js';
import { originalTuple, type CtKey } from './conntrack-key.js';
import { epCtControlKey, epCtEntry, epCtKey } from './table-codecs.js';

/** Connection states: enum ep_ct_state, by value. */
export const CONNECTION_STATES = ['none', 'syn_sent', 'syn_recv', 'established', 'fin_wait', 'closing', 'closed', 'udp', 'icmp'] as const;
/** A connection's state (enum ep_ct_state). */
export type ConnectionState = (typeof CONNECTION_STATES)[number];

/** EP_CT_F_* bits of ep_ct_entry.flags, by name. */
export const CONNECTION_FLAGS = { seen_reply: 0x01, fin_orig: 0x02, fin_reply: 0x04, egress: 0x08 } as const;
/** A flag of a connection entry. */
export type ConnectionFlag = keyof typeof CONNECTION_FLAGS;

/**
 * Which table holds an entry: 'established' for ep_ct4 (an IPv4 TCP/UDP flow without NAT, layout
 * 6) and ep_ct (has seen a reply, or was created below ep_ct's direct mark: bpf/CONNTRACK.md),
 * 'new' for ep_ct_new (no reply seen yet, created at or above the mark).
 */
export type ConnectionTable = 'new' | 'established';

/** Connection timeouts, in milliseconds (ep_ct_cfg, enum ep_ct_timeout order). */
export interface ConntrackConfig {
  /** TCP before the handshake completes (SYN_SENT, SYN_RECV). */
  readonly tcpSynMs: number;
  /** TCP established, and half-closed (FIN_WAIT). */
  readonly tcpEstablishedMs: number;
  /** TCP after both FINs or an RST (CLOSING, CLOSED); never extended. */
  readonly tcpClosingMs: number;
  readonly udpMs: number;
  /** ICMP/ICMPv6 echo. */
  readonly icmpMs: number;
}

/** The defaults of CONNTRACK.md (Cilium's): 60 s, 6 h, 10 s, 60 s, 60 s. */
export const DEFAULT_CONNTRACK_CONFIG: ConntrackConfig = Object.freeze({
  tcpSynMs: 60_000,
  tcpEstablishedMs: 6 * 3600_000,
  tcpClosingMs: 10_000,
  udpMs: 60_000,
  icmpMs: 60_000,
});

/** Largest accepted timeout: 30 days (keeps now + timeout far inside u64 nanoseconds). */
export const MAX_CONNTRACK_TIMEOUT_MS = 30 * 86_400_000;

/** Conntrack counters (ep_ct_stats), summed over CPUs: packets and bytes, or events in `packets`. */
export interface ConntrackCounters {
  /** Packets passed by an existing entry. */
  readonly established: Counter;
  /** ICMP errors passed because they concern a tracked flow. */
  readonly related: Counter;
  /** Entries created (the creating packets). */
  readonly created: Counter;
  /** Entries moved from ep_ct_new to ep_ct at their first reply (events; bytes 0). */
  readonly promoted: Counter;
  /** Entries that could not be created or moved because a table was full (events). */
  readonly insertFailed: Counter;
  /** Entries deleted because they expired, by the datapath or the sweeper (events; bytes 0). */
  readonly expired: Counter;
  /** Established flows cut by a rule-set change (CUT). */
  readonly cut: Counter;
  /** Packets from a control endpoint, passed without policy. */
  readonly control: Counter;
}

/** enum ep_ct_stat order. */
export const CONNTRACK_STAT_NAMES = ['established', 'related', 'created', 'promoted', 'insertFailed', 'expired', 'cut', 'control'] as const satisfies readonly (keyof ConntrackCounters)[];

/** Live (unexpired) entries per table. */
export interface ConntrackOccupancy {
  /** In ep_ct4 (IPv4 TCP/UDP flows without NAT) and ep_ct: flows that have seen a reply, and new flows created below ep_ct's direct mark (bpf/CONNTRACK.md). */
  readonly established: number;
  /** In ep_ct_new: flows without a reply yet, created while ep_ct was at its direct mark. */
  readonly new: number;
  /**
   * Reverse entries of load-balanced flows (bpf/LB.md), in both tables, counted apart from the
   * two above: one per load-balanced flow, beside its service entry. Absent where none can exist.
   */
  readonly reverseNat?: number;
}

/** A control endpoint: packets FROM it (its address and source port) always pass. */
export interface ControlEndpoint {
  readonly family: 4 | 6;
  readonly proto: 'tcp' | 'udp';
  /** An IPv4 or IPv6 address of `family`. */
  readonly addr: string;
  readonly port: number;
}

/** Most control endpoints (ep_ct_control's max_entries). */
export const MAX_CONTROL_ENDPOINTS = 64;

/** One connection entry, decoded. Addresses and ports are the original direction's. */
export interface ConnectionEntry {
  readonly family: 4 | 6;
  /** IP protocol: 6, 17, 1 or 58. */
  readonly proto: number;
  readonly src: string;
  /** Source port; an ICMP echo's identifier. */
  readonly sport: number;
  readonly dst: string;
  /** Destination port; an ICMP echo's identifier. */
  readonly dport: number;
  readonly state: ConnectionState;
  readonly flags: readonly ConnectionFlag[];
  /** Milliseconds until it expires (0 if past). */
  readonly expiresInMs: number;
  /** Milliseconds since it was created. */
  readonly ageMs: number;
  readonly packets: { readonly original: number; readonly reply: number };
  readonly bytes: { readonly original: number; readonly reply: number };
  /** The rule that admitted it; EGRESS_RULE_ID for egress tracking, DEFAULT_RULE_ID for the default action. */
  readonly ruleId: number;
  /** The rule-set epoch it was last checked against. */
  readonly epoch: number;
  readonly table: ConnectionTable;
  /** True if created by uplink egress tracking (flag EP_CT_F_EGRESS, ruleId EGRESS_RULE_ID). */
  readonly egress: boolean;
  /**
   * A load-balanced flow (bpf/LB.md): the backend its original direction is DNATed to, and the
   * service's id. Absent for a flow that is not load-balanced. (Its reverse entry, keyed by the
   * backend's side, is not listed: ConntrackOccupancy.reverseNat counts those.)
   */
  readonly backend?: { readonly address: string; readonly port: number; readonly svcId: number };
}

/** struct ep_ct_nat.flags bits (EP_CT_NAT_*). */
export const CT_NAT_FLAGS = { dnat: 0x1, revnat: 0x2, dsr: 0x4, snat: 0x8 } as const;

/** Which connections listConnections() returns; every field given must match. */
export interface ConnectionFilter {
  readonly family?: 4 | 6;
  /** IP protocol number or name. */
  readonly proto?: number | 'tcp' | 'udp' | 'icmp' | 'icmpv6';
  /** Either end's address. */
  readonly addr?: string;
  /** Either end's port. */
  readonly port?: number;
  readonly state?: ConnectionState;
  readonly table?: ConnectionTable;
}

/** Most entries one listConnections() call returns. */
export const MAX_LIST_CONNECTIONS = 100_000;

const protoNumbers = { tcp: 6, udp: 17, icmp: 1, icmpv6: 58 } as const;

/**
 * Checks a ConntrackConfig (every timeout an integer number of ms in 1..MAX_CONNTRACK_TIMEOUT_MS).
 * @returns the timeouts in nanoseconds, in ep_ct_cfg order.
 * @throws ConntrackInputError naming the bad field.
 */
export function conntrackTimeoutsNs(config: ConntrackConfig): bigint[] {
  const order: (keyof ConntrackConfig)[] = ['tcpSynMs', 'tcpEstablishedMs', 'tcpClosingMs', 'udpMs', 'icmpMs'];
  return order.map((field) => {
    const value = config[field];
    if (!Number.isInteger(value) || value < 1 || value > MAX_CONNTRACK_TIMEOUT_MS) {
      throw new ConntrackInputError(field, `must be an integer number of milliseconds in 1..${MAX_CONNTRACK_TIMEOUT_MS}, got ${String(value)}`);
    }
    return BigInt(value) * 1_000_000n;
  });
}

/**
 * Checks control endpoints and encodes them as ep_ct_control keys.
 * @returns one key per distinct endpoint.
 * @throws ConntrackInputError for a bad family, protocol, address or port, or more than
 * MAX_CONTROL_ENDPOINTS endpoints.
 */
export function encodeControlEndpoints(endpoints: readonly ControlEndpoint[]): Uint8Array[] {
  if (endpoints.length > MAX_CONTROL_ENDPOINTS) throw new ConntrackInputError('endpoints', `at most ${MAX_CONTROL_ENDPOINTS}, got ${endpoints.length}`);
  const keys = new Map<string, Uint8Array>();
  endpoints.forEach((endpoint, i) => {
    const at = `endpoints[${i}]`;
    if (endpoint.family !== 4 && endpoint.family !== 6) throw new ConntrackInputError(`${at}.family`, `must be 4 or 6, got ${String(endpoint.family)}`);
    if (endpoint.proto !== 'tcp' && endpoint.proto !== 'udp') throw new ConntrackInputError(`${at}.proto`, `must be tcp or udp, got ${String(endpoint.proto)}`);
    const addr = typeof endpoint.addr === 'string' ? parseAddress(endpoint.addr) : undefined;
    if (addr === undefined || addr.length !== (endpoint.family === 4 ? 4 : 16)) {
      throw new ConntrackInputError(`${at}.addr`, `not an IPv${endpoint.family} address: ${JSON.stringify(endpoint.addr)}`);
    }
    if (!Number.isInteger(endpoint.port) || endpoint.port < 1 || endpoint.port > 65535) throw new ConntrackInputError(`${at}.port`, `must be in 1..65535, got ${String(endpoint.port)}`);
    const padded = new Uint8Array(16);
    padded.set(addr);
    const key = encode(epCtControlKey, { family: endpoint.family, proto: protoNumbers[endpoint.proto], port: endpoint.port, addr: padded });
    keys.set(Buffer.from(key).toString('hex'), key);
  });
  return [...keys.values()];
}

/**
 * Decodes one entry of ep_ct or ep_ct_new.
 * @param nowNs CLOCK_MONOTONIC now (process.hrtime.bigint(), the clock of bpf_ktime_get_ns).
 * @returns the entry; a new object.
 */
export function decodeConnection(key: Uint8Array, value: Uint8Array, table: ConnectionTable, nowNs: bigint): ConnectionEntry {
  const stored = epCtKey.decode(key);
  return describeConnection({ ...stored, family: stored.family === 6 ? 6 : 4 }, epCtEntry.decode(value), table, nowNs);
}

/**
 * One connection as listings show it, from its table key and entry (decoded: ep_ct's, or an
 * ep_ct4 line's as ct4Entry() gives it).
 * @returns a new object.
 */
export function describeConnection(stored: CtKey, e: CodecValue<typeof epCtEntry>, table: ConnectionTable, nowNs: bigint): ConnectionEntry {
  // The table's key is direction-independent: the listing shows the flow as it was opened.
  const k = originalTuple(stored, e.flags);
  const family = k.family === 6 ? 6 : 4;
  const address = (bytes: Uint8Array): string => formatAddress(family, family === 4 ? bytes.subarray(0, 4) : bytes);
  const ms = (ns: bigint): number => Number(ns / 1_000_000n);
  return {
    family,
    proto: k.proto,
    src: address(k.src),
    sport: k.sport,
    dst: address(k.dst),
    dport: k.dport,
    state: CONNECTION_STATES[e.state] ?? 'none',
    flags: (Object.keys(CONNECTION_FLAGS) as ConnectionFlag[]).filter((name) => (e.flags & CONNECTION_FLAGS[name]) !== 0),
    expiresInMs: e.expiresNs > nowNs ? ms(e.expiresNs - nowNs) : 0,
    ageMs: nowNs > e.createdNs ? ms(nowNs - e.createdNs) : 0,
    packets: { original: Number(e.packets[0] ?? 0n), reply: Number(e.packets[1] ?? 0n) },
    bytes: { original: Number(e.bytes[0] ?? 0n), reply: Number(e.bytes[1] ?? 0n) },
    ruleId: e.ruleId,
    epoch: e.epoch,
    table,
    egress: (e.flags & CONNECTION_FLAGS.egress) !== 0,
    // A service entry's backend: NAT and full NAT (DNAT), DSR (encapsulated to it).
    ...((e.nat.flags & (CT_NAT_FLAGS.dnat | CT_NAT_FLAGS.dsr)) !== 0 ? { backend: { address: address(e.nat.addr), port: e.nat.port, svcId: e.nat.svcId } } : {}),
  };
}

/**
 * Checks a filter and a limit.
 * @returns a predicate over decoded entries.
 * @throws ConntrackInputError naming the bad field.
 */
export function connectionMatcher(filter: ConnectionFilter, limit: number): (entry: ConnectionEntry) => boolean {
  if (!Number.isInteger(limit) || limit < 1 || limit > MAX_LIST_CONNECTIONS) throw new ConntrackInputError('limit', `must be an integer in 1..${MAX_LIST_CONNECTIONS}, got ${String(limit)}`);
  if (filter.family !== undefined && filter.family !== 4 && filter.family !== 6) throw new ConntrackInputError('filter.family', `must be 4 or 6, got ${String(filter.family)}`);
  let proto: number | undefined;
  if (filter.proto !== undefined) {
    proto = typeof filter.proto === 'number' ? filter.proto : protoNumbers[filter.proto];
    if (!Number.isInteger(proto) || (proto as number) < 0 || (proto as number) > 255) throw new ConntrackInputError('filter.proto', `not a protocol: ${String(filter.proto)}`);
  }
  let addr: string | undefined;
  if (filter.addr !== undefined) {
    const bytes = typeof filter.addr === 'string' ? parseAddress(filter.addr) : undefined;
    if (bytes === undefined) throw new ConntrackInputError('filter.addr', `not an address: ${JSON.stringify(filter.addr)}`);
    addr = formatAddress(bytes.length === 4 ? 4 : 6, bytes);
  }
  if (filter.port !== undefined && (!Number.isInteger(filter.port) || filter.port < 0 || filter.port > 65535)) throw new ConntrackInputError('filter.port', `must be in 0..65535, got ${String(filter.port)}`);
  if (filter.state !== undefined && !CONNECTION_STATES.includes(filter.state)) throw new ConntrackInputError('filter.state', `unknown state ${JSON.stringify(filter.state)}`);
  if (filter.table !== undefined && filter.table !== 'new' && filter.table !== 'established') throw new ConntrackInputError('filter.table', `must be new or established, got ${JSON.stringify(filter.table)}`);
  return (entry) =>
    (filter.family === undefined || entry.family === filter.family) &&
    (proto === undefined || entry.proto === proto) &&
    (addr === undefined || entry.src === addr || entry.dst === addr) &&
    (filter.port === undefined || entry.sport === filter.port || entry.dport === filter.port) &&
    (filter.state === undefined || entry.state === filter.state) &&
    (filter.table === undefined || entry.table === filter.table);
}

/** Counters that are all zero (the memory datapath's, and before anything counted). */
export const ZERO_CONNTRACK_COUNTERS: ConntrackCounters = Object.freeze(
  Object.fromEntries(CONNTRACK_STAT_NAMES.map((name) => [name, Object.freeze({ packets: 0, bytes: 0 })])) as unknown as ConntrackCounters,
);
