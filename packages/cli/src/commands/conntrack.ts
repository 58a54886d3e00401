import {
  ConnectionState,
  InterfaceRole,
  MAX_CONNECTIONS_LIMIT,
  Protocol,
  validateConnectionQuery,
  type Connection,
  type ConnectionFilter,
  type ListConnectionsResponse,
} from '@edgeplane/proto';
import type { Command, CommandContext, Flags } from '../command.js';
import { UsageError } from '../errors.js';
import { ExitCode, type ExitCodeValue } from '../exit-codes.js';
import { renderTable } from '../render.js';
import { connectionStateName, protocolName, toJson, type Plain } from '../resource-format.js';

const USAGE = 'usage: edgeplane conntrack list|count NODE [--proto P] [--family 4|6] [--address A] [--port N] [--state S] [--role R] [--limit N] [-o json|wide]';
const PROTOCOLS: Record<string, Protocol> = { tcp: Protocol.PROTOCOL_TCP, udp: Protocol.PROTOCOL_UDP, icmp: Protocol.PROTOCOL_ICMP, icmpv6: Protocol.PROTOCOL_ICMPV6 };
const STATES = ['syn_sent', 'syn_recv', 'established', 'fin_wait', 'closing', 'closed', 'udp', 'icmp'] as const;
const ROLES: Record<string, InterfaceRole> = { uplink: InterfaceRole.INTERFACE_ROLE_UPLINK, workload: InterfaceRole.INTERFACE_ROLE_WORKLOAD };
const OUTPUTS = ['conntrack', 'wide', 'json'] as const;

/** A whole decimal number in min..max, or a usage error naming the flag. */
function intFlag(flags: Flags, name: string, min: number, max: number): number | undefined {
  const text = flags.string(name);
  if (text === undefined) return undefined;
  if (!/^\d{1,6}$/.test(text) || Number(text) < min || Number(text) > max) throw new UsageError(`--${name}: ${JSON.stringify(text.slice(0, 32))} is not a number in ${min}..${max}`);
  return Number(text);
}

/** The filter the flags describe, checked as the server will check it. @throws UsageError */
export function filterFromFlags(flags: Flags): ConnectionFilter {
  const proto = flags.string('proto');
  const state = flags.string('state');
  const role = flags.string('role');
  const filter: ConnectionFilter = {
    family: intFlag(flags, 'family', 4, 6) ?? 0,
    protocol: Protocol.PROTOCOL_UNSPECIFIED,
    address: flags.string('address') ?? '',
    port: intFlag(flags, 'port', 1, 65535) ?? 0,
    state: ConnectionState.CONNECTION_STATE_UNSPECIFIED,
    interfaceRole: InterfaceRole.INTERFACE_ROLE_UNSPECIFIED,
  };
  if (filter.family === 5) throw new UsageError('--family: 4 or 6');
  if (proto !== undefined) {
    const p = PROTOCOLS[proto.toLowerCase()];
    if (p === undefined) throw new UsageError(`--proto: ${JSON.stringify(proto.slice(0, 32))} is not one of ${Object.keys(PROTOCOLS).join(', ')}`);
    filter.protocol = p;
  }
  if (state !== undefined) {
    const key = `CONNECTION_STATE_${state.toUpperCase().replace(/-/g, '_')}` as keyof typeof ConnectionState;
    const s = (STATES as readonly string[]).includes(state.toLowerCase().replace(/-/g, '_')) ? ConnectionState[key] : undefined;
    if (s === undefined) throw new UsageError(`--state: ${JSON.stringify(state.slice(0, 32))} is not one of ${STATES.join(', ')}`);
    filter.state = s;
  }
  if (role !== undefined) {
    const r = ROLES[role];
    if (r === undefined) throw new UsageError(`--role: ${JSON.stringify(role.slice(0, 32))} is not uplink or workload`);
    filter.interfaceRole = r;
  }
  const problems = validateConnectionQuery(filter, 0);
  if (problems.length > 0) throw new UsageError(`--${problems[0]!.field.replace('filter.', '')}: ${problems[0]!.description}`);
  return filter;
}

function seconds(c: Connection): number {
  return Number(c.expiresIn?.seconds ?? 0n);
}

function protoNumber(p: Protocol): number {
  return ({ [Protocol.PROTOCOL_TCP]: 6, [Protocol.PROTOCOL_UDP]: 17, [Protocol.PROTOCOL_ICMP]: 1, [Protocol.PROTOCOL_ICMPV6]: 58 } as Record<number, number>)[p] ?? 0;
}

function ruleText(c: Connection): string {
  return c.admittedBy === 'rule' && c.rule ? `${c.rule.policy}/${c.rule.priority}` : c.admittedBy || '-';
}

/**
 * One line per entry as `conntrack -L` prints it: protocol name and number, seconds left,
 * state, the original tuple with its counters, the reply tuple (addresses and ports swapped:
 * edgeplane does no NAT) with its counters, [ASSURED] once a reply was seen (as Linux marks a
 * flow that saw traffic both ways), then edgeplane's own fields.
 */
export function conntrackLine(c: Connection): string {
  const icmp = c.protocol === Protocol.PROTOCOL_ICMP || c.protocol === Protocol.PROTOCOL_ICMPV6;
  const ports = (s: number, d: number): string => (icmp ? `id=${s}` : `sport=${s} dport=${d}`);
  const state = c.state === ConnectionState.CONNECTION_STATE_UDP || c.state === ConnectionState.CONNECTION_STATE_ICMP ? '' : `${connectionStateName(c.state)} `;
  return [
    `${protocolName(c.protocol).padEnd(8)} ${String(protoNumber(c.protocol)).padEnd(2)} ${seconds(c)} ${state}src=${c.source} dst=${c.destination} ${ports(c.sourcePort, c.destinationPort)} packets=${c.originalPackets} bytes=${c.originalBytes}`,
    `src=${c.destination} dst=${c.source} ${ports(c.destinationPort, c.sourcePort)} packets=${c.replyPackets} bytes=${c.replyBytes}`,
    ...(c.seenReply ? ['[ASSURED]'] : []),
    `role=${c.role} table=${c.table} admitted=${ruleText(c)}`,
  ].join(' ');
}

/** The `-o wide` table. */
export function renderConnectionTable(list: readonly Connection[]): string {
  return renderTable(
    ['ROLE', 'PROTO', 'SOURCE', 'SPORT', 'DESTINATION', 'DPORT', 'STATE', 'TABLE', 'EXPIRES', 'PACKETS(O/R)', 'BYTES(O/R)', 'ADMITTED-BY'],
    list.map((c) => [c.role, protocolName(c.protocol), c.source, String(c.sourcePort), c.destination, String(c.destinationPort), connectionStateName(c.state), c.table, `${seconds(c)}s`, `${c.originalPackets}/${c.replyPackets}`, `${c.originalBytes}/${c.replyBytes}`, ruleText(c)]),
  );
}

function connectionToPlain(c: Connection): Plain {
  return {
    role: c.role,
    family: c.family,
    protocol: protocolName(c.protocol),
    source: c.source,
    sourcePort: c.sourcePort,
    destination: c.destination,
    destinationPort: c.destinationPort,
    state: connectionStateName(c.state).toLowerCase(),
    seenReply: c.seenReply,
    egress: c.egress,
    table: c.table,
    expiresInSeconds: seconds(c),
    original: { packets: Number(c.originalPackets), bytes: Number(c.originalBytes) },
    reply: { packets: Number(c.replyPackets), bytes: Number(c.replyBytes) },
    admittedBy: c.admittedBy,
    ...(c.rule ? { rule: { policy: c.rule.policy, priority: c.rule.priority } } : {}),
  };
}

/** `-o json` of a list answer. */
export function connectionsToJson(node: string, res: ListConnectionsResponse): string {
  return toJson({ node, matched: Number(res.matched), truncated: res.truncated, connections: res.connections.map(connectionToPlain) });
}

/** `edgeplane conntrack list|count NODE`. */
export const conntrackCommand: Command = {
  name: 'conntrack',
  summary: "List or count a node's tracked connections (through the controller)",
  usage: ['conntrack list NODE [FILTERS] [--limit N] [-o json|wide]', 'conntrack count NODE [FILTERS]'],
  details: `Asks the node's agent, through the controller, for the entries of its connection tables
(both interface roles unless --role). Output is like conntrack -L: the original tuple, the reply
tuple, [ASSURED] once a reply was seen, then the interface role, the table (established, which
also holds new flows while it is less than half full; new: no reply yet) and what admitted the
flow (a policy/priority, the default action, or egress tracking). The count of entries shown and
matched goes to standard error. count prints the number of matching entries, like conntrack -C.

Filters (all must hold): --proto tcp|udp|icmp|icmpv6, --family 4|6, --address ADDR or CIDR
(source or destination), --port N (source or destination), --state ${STATES.join('|')},
--role uplink|workload. --limit: at most N rows (default 1000, at most ${MAX_CONNECTIONS_LIMIT}).

Examples:
  edgeplane conntrack list edge-17 --proto tcp --port 443 --state established
  edgeplane conntrack list edge-17 --address 192.0.2.0/24 -o wide
  edgeplane conntrack count edge-17 --proto udp`,
  arguments: ['list', 'count'],
  options: {
    proto: { type: 'string', value: 'PROTO', description: 'tcp, udp, icmp or icmpv6', choices: Object.keys(PROTOCOLS) },
    family: { type: 'string', value: '4|6', description: 'IPv4 or IPv6 only', choices: ['4', '6'] },
    address: { type: 'string', value: 'ADDR', description: 'an address or CIDR the source or destination is in' },
    port: { type: 'string', value: 'N', description: 'the source or destination port' },
    state: { type: 'string', value: 'STATE', description: 'a connection state (established, syn_sent, udp, ...)', choices: STATES },
    role: { type: 'string', value: 'ROLE', description: 'uplink or workload tables only', choices: Object.keys(ROLES) },
    limit: { type: 'string', value: 'N', description: `most rows to list (default 1000, at most ${MAX_CONNECTIONS_LIMIT})` },
    output: { type: 'string', short: 'o', value: 'FORMAT', description: 'json or wide (default: conntrack -L lines)', choices: ['json', 'wide'] },
  },
  async run(ctx: CommandContext, positionals: string[], flags: Flags): Promise<ExitCodeValue> {
    const [verb, node, ...rest] = positionals;
    if ((verb !== 'list' && verb !== 'count') || node === undefined || rest.length > 0) throw new UsageError(USAGE);
    const filter = filterFromFlags(flags);
    if (verb === 'count') {
      if (flags.string('limit') !== undefined || flags.string('output') !== undefined) throw new UsageError('--limit and -o go with conntrack list');
      const res = await ctx.api().listConnections({ node, filter, limit: 0, countOnly: true });
      ctx.io.stdout.write(`${res.matched}\n`);
      return ExitCode.OK;
    }
    const output = flags.choice('output', OUTPUTS, 'conntrack');
    const limit = intFlag(flags, 'limit', 1, MAX_CONNECTIONS_LIMIT) ?? 0;
    const res = await ctx.api().listConnections({ node, filter, limit, countOnly: false });
    if (output === 'json') ctx.io.stdout.write(connectionsToJson(node, res));
    else if (output === 'wide') ctx.io.stdout.write(res.connections.length ? renderConnectionTable(res.connections) : '');
    else for (const c of res.connections) ctx.io.stdout.write(conntrackLine(c) + '\n');
    if (output !== 'json') ctx.io.stderr.write(`edgeplane conntrack: ${res.connections.length} flow entries shown${res.truncated ? ` (${res.matched} matched; raise --limit to see more)` : ''}.\n`);
    return ExitCode.OK;
  },
};
