// The agent's answer to a ConnectionsQuery (FleetService.ListConnections, relayed by the
// controller over the agent's stream) and its conntrack status for counter reports. The filter's
// meaning is @edgeplane/proto's (connection-filter.ts), read once there; the datapath only walks
// its tables. Pure over the narrow reader interface.
import {
  ConnectionState,
  MAX_REPORT_TEXT_LENGTH,
  Protocol,
  connectionMatches,
  effectiveConnectionLimit,
  formatAddress,
  parseAddress,
  parseConnectionFilter,
  validateConnectionQuery,
  type Connection,
  type ConnectionMatcher,
  type ConnectionsAnswer,
  type ConnectionsQuery,
  type ConntrackStatus,
} from '@edgeplane/proto';
import type { ConnectionEntry, ConnectionFilter, ConnectionState as StateName, ConntrackCounters, ConntrackOccupancy } from '../datapath/conntrack.js';
import { MAX_LIST_CONNECTIONS } from '../datapath/conntrack.js';
import type { ConnectionReader } from '../datapath/datapath.js';
import type { InterfaceRole } from '../datapath/interface-role.js';
import { DEFAULT_RULE_ID, EGRESS_RULE_ID } from '../datapath/rule-set.js';
import type { RuleOrigin } from './compile.js';

const STATES: Record<StateName, ConnectionState> = {
  none: ConnectionState.CONNECTION_STATE_UNSPECIFIED,
  syn_sent: ConnectionState.CONNECTION_STATE_SYN_SENT,
  syn_recv: ConnectionState.CONNECTION_STATE_SYN_RECV,
  established: ConnectionState.CONNECTION_STATE_ESTABLISHED,
  fin_wait: ConnectionState.CONNECTION_STATE_FIN_WAIT,
  closing: ConnectionState.CONNECTION_STATE_CLOSING,
  closed: ConnectionState.CONNECTION_STATE_CLOSED,
  udp: ConnectionState.CONNECTION_STATE_UDP,
  icmp: ConnectionState.CONNECTION_STATE_ICMP,
};
const STATE_NAMES = new Map<ConnectionState, StateName>(Object.entries(STATES).map(([name, value]) => [value, name as StateName]));

const PROTOCOLS: Record<number, Protocol> = { 6: Protocol.PROTOCOL_TCP, 17: Protocol.PROTOCOL_UDP, 1: Protocol.PROTOCOL_ICMP, 58: Protocol.PROTOCOL_ICMPV6 };

/** What the query needs of the agent: each role's tables and where its rule ids came from. */
export interface ConnectionSources {
  /** The reader of each role. One object may serve both roles (it is read once, as uplink). */
  readers: Record<InterfaceRole, ConnectionReader>;
  /** The policy rule a rule id of `role`'s live rule set came from. */
  origin(role: InterfaceRole, ruleId: number): RuleOrigin | undefined;
}

/** Converts one decoded table entry to the API's Connection. */
export function toConnection(role: InterfaceRole, e: ConnectionEntry, origin: RuleOrigin | undefined): Connection {
  const egress = e.egress || e.ruleId === EGRESS_RULE_ID;
  const def = e.ruleId === DEFAULT_RULE_ID;
  const ms = Math.max(0, Math.floor(e.expiresInMs));
  return {
    role,
    family: e.family,
    protocol: PROTOCOLS[e.proto] ?? Protocol.PROTOCOL_ANY,
    source: e.src,
    sourcePort: e.sport,
    destination: e.dst,
    destinationPort: e.dport,
    state: STATES[e.state] ?? ConnectionState.CONNECTION_STATE_UNSPECIFIED,
    seenReply: e.flags.includes('seen_reply'),
    egress,
    table: e.table,
    expiresIn: { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 },
    originalPackets: BigInt(e.packets.original),
    originalBytes: BigInt(e.bytes.original),
    replyPackets: BigInt(e.packets.reply),
    replyBytes: BigInt(e.bytes.reply),
    rule: !egress && !def && origin ? { policy: origin.policy, priority: origin.priority } : undefined,
    admittedBy: egress ? 'egress' : def ? 'default' : 'rule',
  };
}

/**
 * The datapath's own filter for what it can check itself (family, protocol, one address, port,
 * state), so fewer entries are decoded into answers; the API's matcher (CIDRs, roles) runs on
 * what comes back, so the result is the API's reading either way.
 */
function datapathFilter(m: ConnectionMatcher): ConnectionFilter {
  const single = m.address && m.address.prefixLength === m.address.address.length * 8 && m.address.address.length > 0;
  const state = m.state === undefined ? undefined : STATE_NAMES.get(m.state);
  return {
    ...(m.family === 4 || m.family === 6 ? { family: m.family } : {}),
    ...(m.protocol !== undefined && m.protocol >= 0 ? { proto: m.protocol } : {}),
    ...(single ? { addr: formatAddress(m.address!.family, m.address!.address) } : {}),
    ...(m.port !== undefined ? { port: m.port } : {}),
    ...(state !== undefined ? { state } : {}),
  };
}

/**
 * Answers a ConnectionsQuery from the datapaths' tables: checks the query again (an agent does
 * not trust the bus any more than the controller trusts agents), walks each role's tables once,
 * and returns at most the query's limit (MAX_CONNECTIONS_LIMIT at most) with the count of every
 * match. An unfiltered count is the tables' occupancy; a filtered one counts at most
 * MAX_LIST_CONNECTIONS entries per role (the most one walk decodes). Never throws: a bad query
 * or a failed read is the answer's `error`.
 */
export function answerConnectionsQuery(sources: ConnectionSources, query: ConnectionsQuery): ConnectionsAnswer {
  const answer: ConnectionsAnswer = { requestId: query.requestId, connections: [], matched: 0n, error: '' };
  const problems = validateConnectionQuery(query.filter, query.limit);
  if (problems.length > 0) return { ...answer, error: `invalid query: ${problems[0]!.field}: ${problems[0]!.description}`.slice(0, MAX_REPORT_TEXT_LENGTH) };
  const matcher = parseConnectionFilter(query.filter);
  const unfiltered = matcher.family === undefined && matcher.protocol === undefined && matcher.address === undefined && matcher.port === undefined && matcher.state === undefined;
  let room = query.countOnly ? 0 : effectiveConnectionLimit(query.limit);
  let matched = 0;
  const seen = new Set<ConnectionReader>();
  try {
    for (const role of ['uplink', 'workload'] as const) {
      const reader = sources.readers[role];
      if (seen.has(reader) || (matcher.role !== undefined && matcher.role !== role)) continue;
      seen.add(reader);
      if (unfiltered) {
        // Every live entry matches: the count is the occupancy, and only the rows shown are decoded.
        const o = reader.readConntrackOccupancy();
        const rows = room > 0 ? reader.listConnections({}, room) : [];
        matched += Math.max(o.established + o.new, rows.length);
        for (const e of rows) answer.connections.push(toConnection(role, e, sources.origin(role, e.ruleId)));
        room = Math.max(0, room - rows.length);
        continue;
      }
      // Addresses are parsed only when a CIDR of their family is asked for (the datapath already matched the rest).
      const none = new Uint8Array(0);
      const cidrFamily = matcher.address?.family;
      const accept = (e: ConnectionEntry): boolean =>
        connectionMatches(matcher, {
          family: e.family,
          protocol: e.proto,
          source: cidrFamily === e.family ? (parseAddress(e.src) ?? none) : none,
          sourcePort: e.sport,
          destination: cidrFamily === e.family ? (parseAddress(e.dst) ?? none) : none,
          destinationPort: e.dport,
          state: STATES[e.state] ?? ConnectionState.CONNECTION_STATE_UNSPECIFIED,
          role,
        });
      const found = reader.listConnections(datapathFilter(matcher), MAX_LIST_CONNECTIONS).filter(accept);
      matched += found.length;
      for (const e of found.slice(0, room)) answer.connections.push(toConnection(role, e, sources.origin(role, e.ruleId)));
      room = Math.max(0, room - found.length);
    }
  } catch (err) {
    return { ...answer, connections: [], error: `read connection table: ${(err as Error).message}`.slice(0, MAX_REPORT_TEXT_LENGTH) };
  }
  return { ...answer, matched: BigInt(matched) };
}

/**
 * The conntrack status of one role for a counter report: occupancy now, capacity (unknown: 0),
 * and the datapath's totals (not deltas).
 */
export function conntrackStatus(role: InterfaceRole, c: ConntrackCounters, occupancy: ConntrackOccupancy, capacity: ConntrackOccupancy | undefined): ConntrackStatus {
  return {
    role,
    entries: BigInt(occupancy.established),
    capacity: BigInt(capacity?.established ?? 0),
    newEntries: BigInt(occupancy.new),
    newCapacity: BigInt(capacity?.new ?? 0),
    establishedPackets: BigInt(c.established.packets),
    relatedPackets: BigInt(c.related.packets),
    created: BigInt(c.created.packets),
    promoted: BigInt(c.promoted.packets),
    insertFailed: BigInt(c.insertFailed.packets),
    expired: BigInt(c.expired.packets),
    cut: BigInt(c.cut.packets),
    controlPackets: BigInt(c.control.packets),
  };
}
