// Pure renderers for `get` tables and `describe` text. Every function takes what the server
// returned (and the time to measure ages against) and returns the text to print.
import {
  formatLabelSelector,
  matchesLabelSelector,
  RevisionOutcome,
  type GetNodeResponse,
  type Node,
  type NodeRuleCounters,
  type Policy,
  type RuleCounters,
} from '@edgeplane/proto';
import { formatAge, formatDuration } from './duration.js';
import { actionName, formatPortRange, onDenyName, outcomeName, protocolName, roleName, trackingText } from './resource-format.js';

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

function selectorText(p: Policy): string {
  return formatLabelSelector(p.spec?.nodeSelector) || '<all>';
}

function rolloutText(p: Policy): string {
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
  out += field('Rollout', st?.$case === 'staged' ? `staged: ${st.staged.waves.map((w) => `${w.name || 'wave'}(${w.target?.$case === 'percent' ? `${w.target.percent}%` : formatLabelSelector(w.target?.selector)}${w.bakeTime ? `, bake ${formatDuration(w.bakeTime)}` : ''})`).join(' -> ')}` : 'immediate');
  out += 'Rules:\n';
  const counters = countersByPriority(d.fleetCounters, name);
  const rules = [...(s?.rules ?? [])].sort((a, b) => a.priority - b.priority);
  out += indent(
    renderTable(
      ['PRIORITY', 'NAME', 'ACTION', 'PROTOCOL', 'SOURCE', 'DESTINATION', 'PORTS', 'PACKETS', 'BYTES', 'RATE-LIMITED'],
      rules.map((r) => {
        const c = counters.get(r.priority);
        const action = actionName(r.action) + (r.rateLimit ? `(${r.rateLimit.packetsPerSecond}/s burst ${r.rateLimit.burst})` : '');
        return [String(r.priority), r.name || '-', action, protocolName(r.protocol), r.sourceCidrs.join(',') || '*', r.destinationCidrs.join(',') || '*', r.destinationPorts.map(formatPortRange).join(',') || '*', String(c?.packets ?? 0n), String(c?.bytes ?? 0n), String(c?.rateLimitedPackets ?? 0n)];
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
  out += 'Interface counters:\n';
  out += d.node.interfaceCounters.length
    ? indent(renderTable(['INTERFACE', 'PASSED', 'DROPPED', 'DEFAULT-ACTION', 'NON-IP', 'MALFORMED'], d.node.interfaceCounters.map((c) => [c.interface, `${c.passedPackets} pkts/${c.passedBytes} B`, `${c.droppedPackets} pkts/${c.droppedBytes} B`, String(c.defaultActionPackets), String(c.nonIpPackets), String(c.malformedPackets)])))
    : '  <none>\n';
  return out;
}
