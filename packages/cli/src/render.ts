// Pure renderers for `get` tables and `describe` text. Every function takes what the server
// returned (and the time to measure ages against) and returns the text to print.
import {
  defaultMaglevTableSize,
  formatLabelSelector,
  matchesLabelSelector,
  RevisionOutcome,
  resolveHealthCheck,
  type GetNodeResponse,
  type Node,
  type NodeRuleCounters,
  type Policy,
  type RuleCounters,
  type Service,
  type ServiceHealth,
} from '@edgeplane/proto';
import { formatAge, formatDuration, formatMs } from './duration.js';
import { actionName, affinityName, forwardingName, formatPortRange, healthCheckTypeName, onDenyName, outcomeName, protocolName, roleName, schedulerName, trackingText } from './resource-format.js';

/** Formats rows as kubectl does: upper-case headers, columns padded and separated by 3 spaces. */
export function renderTable(headers: readonly string[], rows: readonly (readonly string[])[]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!)))
      .join('   ')
      .trimEnd();
  return [line(headers), ...rows.map(line)].join('\n') + '\n';
}

function labels(l: Record<string, string>): string {
  const s = Object.entries(l)
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([k, v]) => `${k}=${v}`)
    .join(',');
  return s || '<none>';
}

function selectorText(p: Policy | Service): string {
  return formatLabelSelector(p.spec?.nodeSelector) || '<all>';
}

function rolloutText(p: Policy | Service): string {
  const s = p.spec?.rolloutStrategy?.strategy;
  return s?.$case === 'staged' ? `staged(${s.staged.waves.length} waves)` : 'immediate';
}

/** The `get policies` table; `wide` adds labels, rollout and description. */
export function renderPolicyTable(policies: readonly Policy[], now: Date, wide = false): string {
  const headers = ['NAME', 'NODE-SELECTOR', 'INTERFACES', 'RULES', 'DEFAULT', 'REVISION', 'AGE'];
  if (wide) headers.push('TRACKING', 'LABELS', 'ROLLOUT', 'DESCRIPTION');
  const rows = policies.map((p) => {
    const row = [
      p.metadata?.name ?? '',
      selectorText(p),
      roleName(p.spec?.interfaceRole ?? 0),
      String(p.spec?.rules.length ?? 0),
      actionName(p.spec?.defaultAction ?? 0) || '<none>',
      String(p.metadata?.resourceVersion ?? 0n),
      formatAge(p.metadata?.createTime, now),
    ];
    if (wide) row.push(p.spec?.connectionTracking?.stateful ? `stateful/${onDenyName(p.spec.connectionTracking.establishedOnDeny)}` : 'stateless', labels(p.metadata?.labels ?? {}), rolloutText(p), p.spec?.description ?? '');
    return row;
  });
  return renderTable(headers, rows);
}

function nodeStatus(n: Node): string {
  return n.status?.connected ? 'Connected' : 'Disconnected';
}

/** The applied revision, or `unknown(last N)` when the agent cannot tell what its datapath enforces. */
function appliedText(n: Node): string {
  const rev = String(n.status?.appliedRevision ?? 0n);
  return n.status?.appliedUnknown ? `unknown(last ${rev})` : rev;
}

/** The node's condition types, or `<none>`. */
function conditionsText(n: Node): string {
  return n.status?.conditions.map((c) => c.type).join(',') || '<none>';
}

function lastOutcome(n: Node): string {
  const st = n.status;
  if (!st || st.lastOutcome === RevisionOutcome.REVISION_OUTCOME_UNSPECIFIED) return '<none>';
  return `${outcomeName(st.lastOutcome)}@${st.lastOutcomeRevision}`;
}

/** The `get nodes` table (an unknown applied revision reads `unknown(last N)`); `wide` adds kernel, datapath, interfaces and labels. */
export function renderNodeTable(nodes: readonly Node[], now: Date, wide = false): string {
  const headers = ['NAME', 'STATUS', 'APPLIED', 'LAST-OUTCOME', 'LAST-SEEN', 'AGENT', 'CONDITIONS'];
  if (wide) headers.push('KERNEL', 'DATAPATH', 'INTERFACES', 'LABELS');
  const rows = nodes.map((n) => {
    const row = [n.name, nodeStatus(n), appliedText(n), lastOutcome(n), formatAge(n.status?.lastSeenTime, now), n.info?.agentVersion ?? '', conditionsText(n)];
    if (wide) row.push(n.info?.kernelRelease ?? '', n.info?.datapath ?? '', n.interfaces.map((i) => `${i.name}(${roleName(i.role)})`).join(',') || '<none>', labels(n.labels));
    return row;
  });
  return renderTable(headers, rows);
}

function indent(text: string, by = 2): string {
  return text
    .split('\n')
    .map((l) => (l ? ' '.repeat(by) + l : l))
    .join('\n');
}

function field(name: string, value: string): string {
  return `${(name + ':').padEnd(20)}${value}\n`;
}

function countersByPriority(counters: readonly RuleCounters[], policy: string): Map<number, RuleCounters> {
  return new Map(counters.filter((c) => c.rule?.policy === policy).map((c) => [c.rule!.priority, c]));
}

/** Inputs of {@link describePolicy}. */
export interface PolicyDescription {
  policy: Policy;
  /** Fleet-wide rule counters from GetPolicyCounters. */
  fleetCounters: readonly RuleCounters[];
  /** Per-node counters (may be empty). */
  nodeCounters: readonly NodeRuleCounters[];
  /** Every node, to show which ones the policy selects and where they are. */
  nodes: readonly Node[];
}

/** `describe policy NAME`: metadata, spec, rules with fleet counters, selected nodes and their state. */
export function describePolicy(d: PolicyDescription, now: Date): string {
  const p = d.policy;
  const m = p.metadata;
  const s = p.spec;
  const name = m?.name ?? '';
  let out = '';
  out += field('Name', name);
  out += field('Labels', labels(m?.labels ?? {}));
  if (m && Object.keys(m.annotations).length) out += field('Annotations', labels(m.annotations));
  out += field('Resource version', String(m?.resourceVersion ?? 0n));
  out += field('Created', m?.createTime ? `${m.createTime.toISOString()} (${formatAge(m.createTime, now)} ago, revision ${m.createRevision})` : '<unknown>');
  if (s?.description) out += field('Description', s.description);
  out += field('Node selector', selectorText(p));
  out += field('Interfaces', roleName(s?.interfaceRole ?? 0));
  out += field('Default action', actionName(s?.defaultAction ?? 0) || '<none>');
  out += field('Conntrack', trackingText(s?.connectionTracking));
  const st = s?.rolloutStrategy?.strategy;
  out += field('Rollout', st?.$case === 'staged' ? `staged: ${st.staged.waves.map((w) => `${w.name || 'wave'}(${w.target?.$case === 'percent' ? `${w.target.percent}%` : formatLabelSelector(w.target?.selector)}${w.shadowBakeTime ? `, shadow ${formatDuration(w.shadowBakeTime)}` : ''}${w.bakeTime ? `, bake ${formatDuration(w.bakeTime)}` : ''})`).join(' -> ')}` : 'immediate');
  out += 'Rules:\n';
  const counters = countersByPriority(d.fleetCounters, name);
  const rules = [...(s?.rules ?? [])].sort((a, b) => a.priority - b.priority);
  out += indent(
    renderTable(
      ['PRIORITY', 'NAME', 'ACTION', 'PROTOCOL', 'SOURCE', 'DESTINATION', 'PORTS', 'PACKETS', 'BYTES', 'RATE-LIMITED'],
      rules.map((r) => {
        const c = counters.get(r.priority);
        const action = actionName(r.action) + (r.rateLimit ? `(${r.rateLimit.packetsPerSecond}/s burst ${r.rateLimit.burst})` : '');
        return [String(r.priority), r.name || '-', action, protocolName(r.protocol), addresses(r.sourceCidrs, r.sourcePrefixLists), addresses(r.destinationCidrs, r.destinationPrefixLists), r.destinationPorts.map(formatPortRange).join(',') || '*', String(c?.packets ?? 0n), String(c?.bytes ?? 0n), String(c?.rateLimitedPackets ?? 0n)];
      }),
    ),
  );
  const selected = d.nodes.filter((n) => matchesLabelSelector(s?.nodeSelector, n.labels));
  const rv = m?.resourceVersion ?? 0n;
  out += `Nodes (${selected.length} selected; ${selected.filter((n) => (n.status?.appliedRevision ?? 0n) >= rv).length} at revision ${rv} or later):\n`;
  if (selected.length === 0) out += '  <none>\n';
  else {
    const perNode = new Map(d.nodeCounters.map((n) => [n.node, n.counters.filter((c) => c.rule?.policy === name).reduce((sum, c) => sum + c.packets, 0n)]));
    out += indent(
      renderTable(
        ['NODE', 'STATUS', 'APPLIED', 'STATE', 'PACKETS', 'LAST-ERROR'],
        selected.map((n) => [n.name, nodeStatus(n), appliedText(n), revisionState(n, rv), String(perNode.get(n.name) ?? 0n), n.status?.lastError ? `${n.status.lastError} (revision ${n.status.lastErrorRevision})` : '']),
      ),
    );
  }
  return out;
}

/** A node's relation to a revision: `applied`, `NACK` (it rejected it or a later one), `unknown` (its datapath state is) or `pending`. */
function revisionState(n: Node, revision: bigint): string {
  const st = n.status;
  if (!st) return 'pending';
  if (st.appliedUnknown) return 'unknown';
  if (st.appliedRevision >= revision) return 'applied';
  if (st.lastOutcome === RevisionOutcome.REVISION_OUTCOME_NACK && st.lastOutcomeRevision >= revision) return 'NACK';
  return 'pending';
}

/** Inputs of {@link describeNode}. */
export interface NodeDescription {
  node: GetNodeResponse;
  /** Every policy, to list the ones selecting this node. */
  policies: readonly Policy[];
}

/** `describe node NAME`: labels, agent and kernel, interfaces, revision status (ACK/NACK, last error), policies, counters. */
export function describeNode(d: NodeDescription, now: Date): string {
  const n = d.node.node;
  if (!n) return '';
  const st = n.status;
  const info = n.info;
  let out = '';
  out += field('Name', n.name);
  out += field('Labels', labels(n.labels));
  out += field('Status', `${nodeStatus(n)}${st?.lastSeenTime ? `, last seen ${formatAge(st.lastSeenTime, now)} ago` : ''}`);
  if (st?.connectTime) out += field('Connected since', st.connectTime.toISOString());
  out += field('Agent', info?.agentVersion ?? '');
  out += field('Hostname', info?.hostname ?? '');
  out += field('Kernel', info?.kernelRelease ?? '');
  out += field('Datapath', info?.datapath ?? '');
  const caps = info?.capabilities;
  if (caps) out += field('Capabilities', [caps.xdpNative && 'xdp-native', caps.xdpGeneric && 'xdp-generic', caps.tc && 'tc', caps.ipv6 && 'ipv6', `max-rules=${caps.maxRules}`].filter(Boolean).join(', '));
  out += field('Received revision', String(st?.receivedRevision ?? 0n));
  out += field('Applied revision', st?.appliedUnknown ? `unknown (the datapath state cannot be told; last known revision ${st.appliedRevision})` : String(st?.appliedRevision ?? 0n));
  out += field('Last outcome', st && st.lastOutcome !== RevisionOutcome.REVISION_OUTCOME_UNSPECIFIED ? `${outcomeName(st.lastOutcome)} (revision ${st.lastOutcomeRevision})` : '<none>');
  out += field('Last error', st?.lastError ? `${st.lastError} (revision ${st.lastErrorRevision}${st.lastErrorTime ? `, ${st.lastErrorTime.toISOString()}` : ''})` : '<none>');
  out += 'Conditions:\n';
  out += st?.conditions.length
    ? indent(renderTable(['TYPE', 'REVISION', 'SINCE', 'MESSAGE'], st.conditions.map((c) => [c.type, c.revision ? String(c.revision) : '-', c.since ? `${formatAge(c.since, now)} ago` : '-', c.message])))
    : '  <none>\n';
  out += 'Interfaces:\n';
  out += n.interfaces.length
    ? indent(renderTable(['NAME', 'IFINDEX', 'ROLE', 'MODE', 'ATTACHED', 'PROGRAM'], n.interfaces.map((i) => [i.name, String(i.ifindex), roleName(i.role), i.attachMode, String(i.attached), String(i.programId)])))
    : '  <none>\n';
  const selecting = d.policies.filter((p) => matchesLabelSelector(p.spec?.nodeSelector, n.labels));
  out += 'Policies:\n';
  out += selecting.length ? indent(renderTable(['NAME', 'REVISION', 'RULES'], selecting.map((p) => [p.metadata?.name ?? '', String(p.metadata?.resourceVersion ?? 0n), String(p.spec?.rules.length ?? 0)]))) : '  <none>\n';
  out += 'Rule counters:\n';
  const counters = [...d.node.counters].sort((a, b) => (a.rule?.policy ?? '').localeCompare(b.rule?.policy ?? '') || (a.rule?.priority ?? 0) - (b.rule?.priority ?? 0));
  out += counters.length
    ? indent(renderTable(['POLICY', 'PRIORITY', 'RULE', 'PACKETS', 'BYTES', 'RATE-LIMITED'], counters.map((c) => [c.rule?.policy ?? '', String(c.rule?.priority ?? 0), c.ruleName || '-', String(c.packets), String(c.bytes), String(c.rateLimitedPackets)])))
    : '  <none>\n';
  out += 'Connection tracking:\n';
  const ct = d.node.conntrack ?? [];
  out += ct.length
    ? indent(
        renderTable(
          ['ROLE', 'ESTABLISHED', 'NEW', 'CREATED', 'PROMOTED', 'INSERT-FAILED', 'EXPIRED', 'CUT', 'RELATED', 'CONTROL'],
          ct.map((c) => [c.role, `${c.entries}/${c.capacity}`, `${c.newEntries}/${c.newCapacity}`, String(c.created), String(c.promoted), String(c.insertFailed), String(c.expired), String(c.cut), String(c.relatedPackets), String(c.controlPackets)]),
        ),
      )
    : '  <none reported>\n';
  out += 'Source blocklist:\n';
  const blk = d.node.blocklists ?? [];
  out += blk.length
    ? indent(
        renderTable(
          ['ROLE', 'IPV4-PREFIXES', 'IPV6-PREFIXES', 'DROPPED-IPV4', 'DROPPED-IPV6'],
          blk.map((b) => [b.role, String(b.ipv4Entries), String(b.ipv6Entries), `${b.ipv4DroppedPackets} pkts/${b.ipv4DroppedBytes} B`, `${b.ipv6DroppedPackets} pkts/${b.ipv6DroppedBytes} B`]),
        ),
      )
    : '  <none reported>\n';
  out += 'Interface counters:\n';
  out += d.node.interfaceCounters.length
    ? indent(renderTable(['INTERFACE', 'PASSED', 'DROPPED', 'DEFAULT-ACTION', 'NON-IP', 'MALFORMED'], d.node.interfaceCounters.map((c) => [c.interface, `${c.passedPackets} pkts/${c.passedBytes} B`, `${c.droppedPackets} pkts/${c.droppedBytes} B`, String(c.defaultActionPackets), String(c.nonIpPackets), String(c.malformedPackets)])))
    : '  <none>\n';
  return out;
}

/** `192.0.2.10:443/tcp`, `[2001:db8::10]:53/udp`. */
function endpointText(s: Service): string {
  const vip = s.spec?.vip ?? '';
  return `${vip.includes(':') ? `[${vip}]` : vip}:${s.spec?.port ?? 0}/${protocolName(s.spec?.protocol ?? 0)}`;
}

/** A backend's weight as the datapath reads it: unset is 1. */
function weightOf(w: number | undefined): number {
  return w ?? 1;
}

/** `3` backends, or `3 (1 drained)`. */
function backendsText(s: Service): string {
  const all = s.spec?.backends ?? [];
  const drained = all.filter((b) => weightOf(b.weight) === 0).length;
  return drained ? `${all.length} (${drained} drained)` : String(all.length);
}

/** The lookup-table size the agents build: the one set, or the smallest that fits (`default`). */
function tableSizeText(s: Service): string {
  const set = s.spec?.maglevTableSize ?? 0;
  if (set) return String(set);
  const size = defaultMaglevTableSize(s.spec?.backends.length ?? 0);
  return size === undefined ? 'none fits' : `${size} (default)`;
}

/** One line for a health check: what a probe does, how often, and the thresholds; `none` without one. */
function healthCheckText(s: Service): string {
  const h = s.spec?.healthCheck;
  if (!h) return 'none (every backend of positive weight takes new flows)';
  // The defaults as the agents apply them (one resolver, in @edgeplane/proto).
  const r = resolveHealthCheck(h);
  const what = r.kind === 'http' ? `http GET ${r.httpPath}` : 'tcp connect';
  return `${what}${r.port ? ` port ${r.port}` : ''} every ${formatMs(r.intervalMs)}, timeout ${formatMs(r.timeoutMs)}, healthy after ${r.healthyThreshold}, unhealthy after ${r.unhealthyThreshold}`;
}

/**
 * The HEALTHY column, read like kubectl's READY: `H/T`, the backends that no node finds
 * unhealthy (and at least one node finds healthy) out of all; `<none>` without a health check;
 * `<unknown>` while no selected node has said anything.
 */
export function healthyText(h: ServiceHealth | undefined): string {
  if (!h) return '<unknown>';
  if (!h.healthChecked) return '<none>';
  if (!h.backends.some((b) => b.nodesHealthy + b.nodesUnhealthy > 0)) return '<unknown>';
  return `${h.backends.filter((b) => b.nodesUnhealthy === 0 && b.nodesHealthy > 0).length}/${h.backends.length}`;
}

/**
 * The `get services` table; `wide` adds the scheduler and table size, health check, affinity,
 * forwarding, labels and description. `health` (by service name) fills the HEALTHY column.
 */
export function renderServiceTable(services: readonly Service[], now: Date, wide = false, health: ReadonlyMap<string, ServiceHealth> = new Map()): string {
  const headers = ['NAME', 'VIP', 'BACKENDS', 'HEALTHY', 'NODE-SELECTOR', 'REVISION', 'AGE'];
  if (wide) headers.push('SCHEDULER', 'TABLE-SIZE', 'HEALTH-CHECK', 'AFFINITY', 'FORWARDING', 'LABELS', 'DESCRIPTION');
  const rows = services.map((s) => {
    const name = s.metadata?.name ?? '';
    const row = [name, endpointText(s), backendsText(s), healthyText(health.get(name)), selectorText(s), String(s.metadata?.resourceVersion ?? 0n), formatAge(s.metadata?.createTime, now)];
    if (wide) {
      const h = s.spec?.healthCheck;
      row.push(schedulerName(s.spec?.scheduler ?? 0), tableSizeText(s), h ? healthCheckTypeName(h.type) : '<none>', affinityName(s.spec?.sessionAffinity ?? 0), forwardingName(s.spec?.forwardingMode ?? 0), labels(s.metadata?.labels ?? {}), s.spec?.description ?? '');
    }
    return row;
  });
  return renderTable(headers, rows);
}

/** Inputs of {@link describeService}. */
export interface ServiceDescription {
  service: Service;
  /** Every node, to count the ones the service selects. */
  nodes: readonly Node[];
  /** What the selected nodes' health checks say of the backends (GetServiceHealth). */
  health?: ServiceHealth;
}

/**
 * `describe service NAME`: metadata, the VIP, port and protocol, scheduler and table size,
 * health check, affinity and forwarding, the selector with the nodes it selects, and the
 * backends with their weights and shares of new flows.
 */
export function describeService(d: ServiceDescription, now: Date): string {
  const s = d.service;
  const m = s.metadata;
  const spec = s.spec;
  let out = '';
  out += field('Name', m?.name ?? '');
  out += field('Labels', labels(m?.labels ?? {}));
  if (m && Object.keys(m.annotations).length) out += field('Annotations', labels(m.annotations));
  out += field('Resource version', String(m?.resourceVersion ?? 0n));
  out += field('Created', m?.createTime ? `${m.createTime.toISOString()} (${formatAge(m.createTime, now)} ago, revision ${m.createRevision})` : '<unknown>');
  if (spec?.description) out += field('Description', spec.description);
  out += field('VIP', spec?.vip ?? '');
  out += field('Port', String(spec?.port ?? 0));
  out += field('Protocol', protocolName(spec?.protocol ?? 0));
  out += field('Scheduler', `${schedulerName(spec?.scheduler ?? 0)}, table size ${tableSizeText(s)}`);
  out += field('Session affinity', affinityName(spec?.sessionAffinity ?? 0));
  out += field('Forwarding', forwardingName(spec?.forwardingMode ?? 0));
  out += field('Health check', healthCheckText(s));
  out += field('Rollout', rolloutText(s));
  const selected = d.nodes.filter((n) => matchesLabelSelector(spec?.nodeSelector, n.labels));
  out += field('Node selector', `${selectorText(s)} (${selected.length} of ${d.nodes.length} nodes)`);
  const backends = spec?.backends ?? [];
  const total = backends.reduce((sum, b) => sum + weightOf(b.weight), 0);
  // Health per backend, as the nodes judge it: the response lists backends in the spec's order.
  const health = d.health?.healthChecked ? d.health : undefined;
  out += `Backends (${backendsText(s)}${health ? `, healthy ${healthyText(health)}` : ''}):\n`;
  out += backends.length
    ? indent(
        renderTable(
          ['ADDRESS', 'PORT', 'WEIGHT', 'SHARE', ...(health ? ['NODES-HEALTHY', 'UNHEALTHY', 'UNKNOWN'] : [])],
          backends.map((b, i) => {
            const w = weightOf(b.weight);
            const row = [b.address, String(b.port || spec?.port || 0), String(w), w === 0 ? 'drained' : `${((100 * w) / total).toFixed(1)}%`];
            const h = health?.backends[i];
            if (health) row.push(String(h?.nodesHealthy ?? 0), String(h?.nodesUnhealthy ?? 0), String(h?.nodesUnknown ?? 0));
            return row;
          }),
        ),
      )
    : '  <none>\n';
  if (backends.length && total === 0) out += '  every backend is drained: the service takes no new flows; established flows keep their backends\n';
  if (health && health.backends.some((b) => b.nodesUnknown > 0)) out += '  unknown: selected nodes not connected to this controller, or that have not reported yet\n';
  const unhealthy = health?.backends.filter((b) => b.nodesUnhealthy > 0) ?? [];
  if (unhealthy.length) {
    out += 'Unhealthy backends (no new flows on these nodes):\n';
    for (const b of unhealthy) {
      const endpoint = b.address.includes(':') ? `[${b.address}]:${b.port}` : `${b.address}:${b.port}`;
      for (const u of b.unhealthy) out += `  ${endpoint} on ${u.node}${u.since ? ` for ${formatAge(u.since, now)}` : ''}: ${u.reason || '<no reason given>'}\n`;
      if (b.nodesUnhealthy > b.unhealthy.length) out += `  ${endpoint} on ${b.nodesUnhealthy - b.unhealthy.length} more nodes\n`;
    }
  }
  // The datapath counts per node: the selected nodes' counters cover every service they front.
  const lb = d.health?.loadBalancer;
  if (lb) {
    out += 'Load balancer (packets, summed over the selected nodes, every service they front):\n';
    out += indent(
      renderTable(
        ['SELECTED', 'NO-BACKEND', 'REVERSE-NAT', 'ORPHANED', 'ENCAPSULATED', 'SNAT-FAILED', 'TOO-BIG'],
        [[lb.selected, lb.noBackend, lb.reverseNat, lb.orphaned, lb.encapsulated, lb.snatFailed, lb.tooBig].map(String)],
      ),
    );
  }
  return out;
}

/** A rule's address field for a table: its CIDRs and its prefix lists (list:NAME), or * for any. */
function addresses(cidrs: readonly string[], lists: readonly string[]): string {
  return [...cidrs, ...lists.map((name) => `list:${name}`)].join(',') || '*';
}
