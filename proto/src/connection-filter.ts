// The one reading of a ConnectionFilter: what the controller checks before it asks an agent, and
// what the agent matches its connection table against. Pure and linear.
import type { Connection, ConnectionFilter } from '../gen/edgeplane/v1/connections.js';
import { ConnectionState } from '../gen/edgeplane/v1/connections.js';
import { InterfaceRole, Protocol } from '../gen/edgeplane/v1/policy.js';
import { cidrContains, parseAddress, parseCidr, type Cidr } from './cidr.js';
import { DEFAULT_CONNECTIONS_LIMIT, MAX_CONNECTIONS_LIMIT, quote } from './limits.js';
import type { FieldViolation } from './status-details.js';

/** A ConnectionFilter after {@link parseConnectionFilter}: "any" spelled as undefined. */
export interface ConnectionMatcher {
  /** 4 or 6 (-1 for an invalid family: matches nothing). */
  readonly family: number | undefined;
  /** IP protocol number (6, 17, 1, 58; -1 for an unknown protocol: matches nothing). */
  readonly protocol: number | undefined;
  /** An unparseable address is an empty IPv4 /0 of no bytes: it contains nothing. */
  readonly address: Cidr | undefined;
  readonly port: number | undefined;
  readonly state: ConnectionState | undefined;
  readonly role: 'uplink' | 'workload' | undefined;
}

const PROTOCOL_NUMBERS: Partial<Record<Protocol, number>> = { [Protocol.PROTOCOL_TCP]: 6, [Protocol.PROTOCOL_UDP]: 17, [Protocol.PROTOCOL_ICMP]: 1, [Protocol.PROTOCOL_ICMPV6]: 58 };

/**
 * Checks a filter and a limit as ListConnections takes them (`path` prefixes the field paths).
 * @returns the problems (empty when valid): family not 0/4/6, an unknown protocol, state or
 *   role, an address that is neither an address nor a CIDR, a port past 65535, a limit past
 *   MAX_CONNECTIONS_LIMIT.
 */
export function validateConnectionQuery(filter: ConnectionFilter | undefined, limit: number, path = ''): FieldViolation[] {
  const out: FieldViolation[] = [];
  const at = (f: string): string => (path ? `${path}.${f}` : f);
  if (limit > MAX_CONNECTIONS_LIMIT) out.push({ field: at('limit'), description: `${limit}; at most ${MAX_CONNECTIONS_LIMIT}`, reason: 'OUT_OF_RANGE' });
  if (!filter) return out;
  if (filter.family !== 0 && filter.family !== 4 && filter.family !== 6) out.push({ field: at('filter.family'), description: `${filter.family}; 4, 6 or 0 for both`, reason: 'OUT_OF_RANGE' });
  if (!(filter.protocol in Protocol) || filter.protocol === Protocol.UNRECOGNIZED) out.push({ field: at('filter.protocol'), description: `unknown protocol ${filter.protocol}`, reason: 'INVALID_ENUM' });
  if (!(filter.state in ConnectionState) || filter.state === ConnectionState.UNRECOGNIZED) out.push({ field: at('filter.state'), description: `unknown state ${filter.state}`, reason: 'INVALID_ENUM' });
  if (!(filter.interfaceRole in InterfaceRole) || filter.interfaceRole === InterfaceRole.UNRECOGNIZED) out.push({ field: at('filter.interface_role'), description: `unknown interface role ${filter.interfaceRole}`, reason: 'INVALID_ENUM' });
  if (filter.address !== '' && parseCidr(filter.address) === undefined) out.push({ field: at('filter.address'), description: `${quote(filter.address)} is not an IPv4 or IPv6 address or CIDR`, reason: 'MALFORMED_ADDRESS' });
  if (filter.port > 65535) out.push({ field: at('filter.port'), description: `${filter.port} is not in 1..65535`, reason: 'OUT_OF_RANGE' });
  const cidr = filter.address === '' ? undefined : parseCidr(filter.address);
  if (cidr && filter.family !== 0 && cidr.family !== filter.family) out.push({ field: at('filter.address'), description: `${quote(filter.address)} is IPv${cidr.family} but family is ${filter.family}`, reason: 'FAMILY_MISMATCH' });
  return out;
}

/** The limit a request means: 0 is DEFAULT_CONNECTIONS_LIMIT, the rest is capped at MAX_CONNECTIONS_LIMIT. */
export function effectiveConnectionLimit(limit: number): number {
  return limit === 0 ? DEFAULT_CONNECTIONS_LIMIT : Math.min(limit, MAX_CONNECTIONS_LIMIT);
}

/**
 * Parses a filter for matching. An invalid field (see {@link validateConnectionQuery}, which
 * callers run first) matches nothing rather than everything.
 */
export function parseConnectionFilter(filter: ConnectionFilter | undefined): ConnectionMatcher {
  if (!filter) return { family: undefined, protocol: undefined, address: undefined, port: undefined, state: undefined, role: undefined };
  const address = filter.address === '' ? undefined : (parseCidr(filter.address) ?? { family: 4, address: new Uint8Array(0), prefixLength: 0 });
  return {
    family: filter.family === 4 || filter.family === 6 ? filter.family : filter.family === 0 ? undefined : -1,
    protocol: filter.protocol === Protocol.PROTOCOL_UNSPECIFIED || filter.protocol === Protocol.PROTOCOL_ANY ? undefined : (PROTOCOL_NUMBERS[filter.protocol] ?? -1),
    address,
    port: filter.port === 0 ? undefined : filter.port,
    state: filter.state === ConnectionState.CONNECTION_STATE_UNSPECIFIED ? undefined : filter.state,
    role: filter.interfaceRole === InterfaceRole.INTERFACE_ROLE_UPLINK ? 'uplink' : filter.interfaceRole === InterfaceRole.INTERFACE_ROLE_WORKLOAD ? 'workload' : undefined,
  };
}

/** One flow as the matcher sees it: addresses as bytes (4 or 16), the IP protocol number. */
export interface ConnectionTuple {
  readonly family: 4 | 6;
  readonly protocol: number;
  readonly source: Uint8Array;
  readonly sourcePort: number;
  readonly destination: Uint8Array;
  readonly destinationPort: number;
  readonly state: ConnectionState;
  readonly role: 'uplink' | 'workload';
}

/**
 * Whether a flow matches: every set field holds; the address matches the source or the
 * destination, the port the source or the destination port (as `conntrack -L --src/--dst`
 * together would).
 */
export function connectionMatches(m: ConnectionMatcher, c: ConnectionTuple): boolean {
  if (m.family !== undefined && c.family !== m.family) return false;
  if (m.protocol !== undefined && c.protocol !== m.protocol) return false;
  if (m.state !== undefined && c.state !== m.state) return false;
  if (m.role !== undefined && c.role !== m.role) return false;
  if (m.port !== undefined && c.sourcePort !== m.port && c.destinationPort !== m.port) return false;
  if (m.address !== undefined && !cidrContains(m.address, c.source) && !cidrContains(m.address, c.destination)) return false;
  return true;
}

/** The IP protocol number of a Connection's protocol (0 for any). */
export function protocolNumber(p: Protocol): number {
  return PROTOCOL_NUMBERS[p] ?? 0;
}

/** The tuple of a Connection message (for matching rows already converted). Unparseable addresses become empty (they match no address filter). */
export function connectionTuple(c: Connection): ConnectionTuple {
  return {
    family: c.family === 6 ? 6 : 4,
    protocol: protocolNumber(c.protocol),
    source: parseAddress(c.source) ?? new Uint8Array(0),
    sourcePort: c.sourcePort,
    destination: parseAddress(c.destination) ?? new Uint8Array(0),
    destinationPort: c.destinationPort,
    state: c.state,
    role: c.role === 'workload' ? 'workload' : 'uplink',
  };
}
