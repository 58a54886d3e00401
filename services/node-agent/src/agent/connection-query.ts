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
  parseConnectionFilter,
  validateConnectionQuery,
  type Connection,
  type ConnectionsAnswer,
  type ConnectionsQuery,
  type ConntrackStatus,
} from '@edgeplane/proto';
import type { ConnectionEntry, ConnectionReader, ConnectionStateName, ConntrackCounters } from '../datapath/datapath.js';
import type { InterfaceRole } from '../datapath/interface-role.js';
import { DEFAULT_RULE_ID } from '../datapath/rule-set.js';
import type { RuleOrigin } from './compile.js';

/** ep_ct_entry.rule_id of an entry created by uplink egress tracking (EP_CT_RULE_EGRESS). */
export const CT_RULE_EGRESS = 0xffff_fffe;
/** ep_ct_entry.flags bits (EP_CT_F_*). */
export const CT_F_SEEN_REPLY = 0x01;
export const CT_F_EGRESS = 0x08;

const STATES: Record<ConnectionStateName, ConnectionState> = {
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

const PROTOCOLS: Record<number, Protocol> = { 6: Protocol.PROTOCOL_TCP, 17: Protocol.PROTOCOL_UDP, 1: Protocol.PROTOCOL_ICMP, 58: Protocol.PROTOCOL_ICMPV6 };

/** What the query needs of the agent: each role's tables and where its rule ids came from. */
export interface ConnectionSources {
  /** The reader of each role, undefined where the datapath keeps no connections. One object may serve both roles. */
  readers: Record<InterfaceRole, ConnectionReader | undefined>;
  /** The policy rule a rule id of `role`'s live rule set came from. */
  origin(role: InterfaceRole, ruleId: number): RuleOrigin | undefined;
}

/** Converts one decoded table entry to the API's Connection. */
export function toConnection(role: InterfaceRole, e: ConnectionEntry, origin: RuleOrigin | undefined): Connection {
  const egress = e.ruleId === CT_RULE_EGRESS || (e.flags & CT_F_EGRESS) !== 0;
  const def = e.ruleId === DEFAULT_RULE_ID;
  const ms = Math.max(0, Math.floor(e.expiresInMs));
  return {
    role,
    family: e.family,
    protocol: PROTOCOLS[e.proto] ?? Protocol.PROTOCOL_ANY,
    source: formatAddress(e.family, e.src.subarray(0, e.family === 4 ? 4 : 16)),
    sourcePort: e.sport,
    destination: formatAddress(e.family, e.dst.subarray(0, e.family === 4 ? 4 : 16)),
    destinationPort: e.dport,
    state: STATES[e.state] ?? ConnectionState.CONNECTION_STATE_UNSPECIFIED,
    seenReply: (e.flags & CT_F_SEEN_REPLY) !== 0,
    egress,
    table: e.table,
    expiresIn: { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 },
    originalPackets: BigInt(e.packets[0]),
    originalBytes: BigInt(e.bytes[0]),
    replyPackets: BigInt(e.packets[1]),
    replyBytes: BigInt(e.bytes[1]),
    rule: !egress && !def && origin ? { policy: origin.policy, priority: origin.priority } : undefined,
    admittedBy: egress ? 'egress' : def ? 'default' : 'rule',
  };
}

/**
 * Answers a ConnectionsQuery from the datapaths' tables: checks the query again (an agent does
 * not trust the bus any more than the controller trusts agents), walks each role's tables once
 * with the filter, and returns at most the query's limit (MAX_CONNECTIONS_LIMIT at most) with
 * the count of every match. Never throws: a bad query or a failed read is the answer's `error`.
 */
export function answerConnectionsQuery(sources: ConnectionSources, query: ConnectionsQuery): ConnectionsAnswer {
  const answer: ConnectionsAnswer = { requestId: query.requestId, connections: [], matched: 0n, error: '' };
  const problems = validateConnectionQuery(query.filter, query.limit);
  if (problems.length > 0) return { ...answer, error: `invalid query: ${problems[0]!.field}: ${problems[0]!.description}`.slice(0, MAX_REPORT_TEXT_LENGTH) };
  const matcher = parseConnectionFilter(query.filter);
  let room = query.countOnly ? 0 : effectiveConnectionLimit(query.limit);
  let matched = 0;
  const seen = new Set<ConnectionReader>();
  try {
    for (const role of ['uplink', 'workload'] as const) {
      const reader = sources.readers[role];
      if (!reader || seen.has(reader) || (matcher.role !== undefined && matcher.role !== role)) continue;
      seen.add(reader);
      const accept = (e: ConnectionEntry): boolean =>
        connectionMatches(matcher, { family: e.family, protocol: e.proto, source: e.src.subarray(0, e.family === 4 ? 4 : 16), sourcePort: e.sport, destination: e.dst.subarray(0, e.family === 4 ? 4 : 16), destinationPort: e.dport, state: STATES[e.state] ?? ConnectionState.CONNECTION_STATE_UNSPECIFIED, role });
      const listing = reader.listConnections(accept, room);
      matched += listing.matched;
      for (const e of listing.connections.slice(0, room)) answer.connections.push(toConnection(role, e, sources.origin(role, e.ruleId)));
      room = Math.max(0, room - listing.connections.length);
    }
  } catch (err) {
    return { ...answer, connections: [], error: `read connection table: ${(err as Error).message}`.slice(0, MAX_REPORT_TEXT_LENGTH) };
  }
  return { ...answer, matched: BigInt(matched) };
}

/** The conntrack status of one role for a counter report (totals, not deltas). */
export function conntrackStatus(role: InterfaceRole, c: ConntrackCounters): ConntrackStatus {
  return {
    role,
    entries: BigInt(c.entries),
    capacity: BigInt(c.capacity),
    newEntries: BigInt(c.newEntries),
    newCapacity: BigInt(c.newCapacity),
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
