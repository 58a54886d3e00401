// Bounds on what an agent sends over AgentService.Connect: the controller keeps what agents
// report (registry, counter store), so every name, count and text is checked against
// @edgeplane/proto's limits before it is stored. Pure.
import {
  MAX_BACKEND_HEALTH_ENTRIES,
  MAX_CONNECTIONS_LIMIT,
  MAX_HEALTH_REASON_LENGTH,
  MAX_COUNTER_INTERFACES,
  MAX_COUNTER_NAME_LENGTH,
  MAX_COUNTER_RULES,
  MAX_CONDITION_MESSAGE_LENGTH,
  MAX_NODE_CONDITIONS,
  MAX_NODE_INTERFACES,
  MAX_REPORT_TEXT_LENGTH,
  MAX_SHADOW_CANDIDATE_LENGTH,
  MAX_SHADOW_SAMPLES,
  ShadowVerdict,
  checkDnsLabel,
  isAddressProblem,
  parseCanonicalAddress,
  quote,
  validateLabels,
  type AgentHello,
  type BackendHealthReport,
  type ConditionReport,
  type ConnectionsAnswer,
  type CounterReport,
  type FieldViolation,
  type NodeCondition,
  type RevisionReport,
  type ShadowReport,
} from '@edgeplane/proto';

function tooLong(out: FieldViolation[], field: string, text: string, max: number): void {
  if (text.length > max) out.push({ field, description: `${quote(text)}: at most ${max} characters`, reason: 'TOO_LONG' });
}

function conditions(out: FieldViolation[], list: readonly NodeCondition[], path: string): void {
  if (list.length > MAX_NODE_CONDITIONS) {
    out.push({ field: path, description: `${list.length} conditions; at most ${MAX_NODE_CONDITIONS}`, reason: 'TOO_MANY_CONDITIONS' });
    return;
  }
  list.forEach((c, i) => {
    tooLong(out, `${path}[${i}].type`, c.type, MAX_COUNTER_NAME_LENGTH);
    // Types are stable kebab-case words (see NodeCondition); checked after the length, so linear.
    if (c.type.length <= MAX_COUNTER_NAME_LENGTH && !/^[a-z][a-z0-9-]*$/.test(c.type)) out.push({ field: `${path}[${i}].type`, description: `${quote(c.type)}: a kebab-case word`, reason: 'INVALID_TYPE' });
    tooLong(out, `${path}[${i}].message`, c.message, MAX_CONDITION_MESSAGE_LENGTH);
  });
}

/** Returns the problems of a hello (empty when valid): node name, labels as Kubernetes, interface and condition counts, text lengths. */
export function validateHello(hello: AgentHello): FieldViolation[] {
  const out: FieldViolation[] = [];
  const problem = checkDnsLabel(hello.nodeName);
  if (problem) out.push({ field: 'hello.node_name', description: `${quote(hello.nodeName)} ${problem}`, reason: 'INVALID_NAME' });
  out.push(...validateLabels(hello.labels, 'hello.labels'));
  if (hello.interfaces.length > MAX_NODE_INTERFACES) {
    out.push({ field: 'hello.interfaces', description: `${hello.interfaces.length} interfaces; at most ${MAX_NODE_INTERFACES}`, reason: 'TOO_MANY_INTERFACES' });
  } else {
    hello.interfaces.forEach((iface, i) => {
      tooLong(out, `hello.interfaces[${i}].name`, iface.name, MAX_COUNTER_NAME_LENGTH);
      tooLong(out, `hello.interfaces[${i}].attach_mode`, iface.attachMode, MAX_COUNTER_NAME_LENGTH);
    });
  }
  conditions(out, hello.conditions, 'hello.conditions');
  const info = hello.info;
  if (info) {
    for (const [field, text] of [['agent_version', info.agentVersion], ['kernel_release', info.kernelRelease], ['hostname', info.hostname], ['datapath', info.datapath]] as const) {
      tooLong(out, `hello.info.${field}`, text, 256);
    }
  }
  tooLong(out, 'hello.session_id', hello.sessionId, 256);
  if (hello.lastReport) tooLong(out, 'hello.last_report.reason', hello.lastReport.reason, MAX_REPORT_TEXT_LENGTH);
  return out;
}

/** Returns the problems of a counter report (empty when valid): entry counts, and policy, rule and interface names of bounded length. */
export function validateCounterReport(report: CounterReport): FieldViolation[] {
  const out: FieldViolation[] = [];
  if (report.rules.length > MAX_COUNTER_RULES) {
    out.push({ field: 'counters.rules', description: `${report.rules.length} entries; at most ${MAX_COUNTER_RULES} per report`, reason: 'TOO_MANY_ENTRIES' });
  } else {
    report.rules.forEach((c, i) => {
      tooLong(out, `counters.rules[${i}].rule.policy`, c.rule?.policy ?? '', MAX_COUNTER_NAME_LENGTH);
      tooLong(out, `counters.rules[${i}].rule_name`, c.ruleName, MAX_COUNTER_NAME_LENGTH);
    });
  }
  if (report.interfaces.length > MAX_COUNTER_INTERFACES) {
    out.push({ field: 'counters.interfaces', description: `${report.interfaces.length} entries; at most ${MAX_COUNTER_INTERFACES} per report`, reason: 'TOO_MANY_ENTRIES' });
  } else {
    report.interfaces.forEach((c, i) => tooLong(out, `counters.interfaces[${i}].interface`, c.interface, MAX_COUNTER_NAME_LENGTH));
  }
  perRole(out, 'counters.conntrack', report.conntrack);
  perRole(out, 'counters.blocklists', report.blocklists);
  if (report.shadow) shadowReport(out, report.shadow);
  return out;
}

/** The problems of a list of per-role statuses (conntrack, blocklists): one per interface role, each once. */
function perRole(out: FieldViolation[], field: string, statuses: readonly { role: string }[]): void {
  if (statuses.length > 2) {
    out.push({ field, description: `${statuses.length} entries; at most 2 (one per interface role)`, reason: 'TOO_MANY_ENTRIES' });
    return;
  }
  const roles = new Set<string>();
  statuses.forEach((c, i) => {
    if (c.role !== 'uplink' && c.role !== 'workload') out.push({ field: `${field}[${i}].role`, description: `${quote(c.role)}: uplink or workload`, reason: 'INVALID_ROLE' });
    else if (roles.has(c.role)) out.push({ field: `${field}[${i}].role`, description: `${c.role} reported twice`, reason: 'DUPLICATE' });
    roles.add(c.role);
  });
}

/** Characters of an address as text (an IPv6 address with an embedded IPv4 one). */
const MAX_ADDRESS_TEXT = 45;

/**
 * The problems of a shadow report: a node name, a candidate name of bounded length, differing
 * packets no more than those classified, at most MAX_COUNTER_RULES rules and MAX_SHADOW_SAMPLES
 * samples of bounded texts. Whether it describes the node that sent it is the caller's check.
 */
function shadowReport(out: FieldViolation[], s: ShadowReport): void {
  const problem = checkDnsLabel(s.node);
  if (problem) out.push({ field: 'counters.shadow.node', description: `${quote(s.node)} ${problem}`, reason: 'INVALID_NAME' });
  tooLong(out, 'counters.shadow.candidate', s.candidate, MAX_SHADOW_CANDIDATE_LENGTH);
  if (s.wouldDrop + s.wouldAllow > s.classified) out.push({ field: 'counters.shadow.classified', description: `${s.classified} packets classified, fewer than the ${s.wouldDrop + s.wouldAllow} whose verdict differed`, reason: 'INCONSISTENT' });
  if (s.rules.length > MAX_COUNTER_RULES) out.push({ field: 'counters.shadow.rules', description: `${s.rules.length} entries; at most ${MAX_COUNTER_RULES} per report`, reason: 'TOO_MANY_ENTRIES' });
  else s.rules.forEach((c, i) => {
    tooLong(out, `counters.shadow.rules[${i}].rule.policy`, c.rule?.policy ?? '', MAX_COUNTER_NAME_LENGTH);
    tooLong(out, `counters.shadow.rules[${i}].rule_name`, c.ruleName, MAX_COUNTER_NAME_LENGTH);
  });
  if (s.samples.length > MAX_SHADOW_SAMPLES) {
    out.push({ field: 'counters.shadow.samples', description: `${s.samples.length} samples; at most ${MAX_SHADOW_SAMPLES}`, reason: 'TOO_MANY_ENTRIES' });
    return;
  }
  s.samples.forEach((x, i) => {
    const path = `counters.shadow.samples[${i}]`;
    if (x.family !== 4 && x.family !== 6) out.push({ field: `${path}.family`, description: `${x.family}: 4 or 6`, reason: 'OUT_OF_RANGE' });
    if (x.protocol > 255) out.push({ field: `${path}.protocol`, description: `${x.protocol}: an IP protocol number (0..255)`, reason: 'OUT_OF_RANGE' });
    if (x.port > 65_535) out.push({ field: `${path}.port`, description: `${x.port}: 0..65535`, reason: 'OUT_OF_RANGE' });
    if (x.verdict !== ShadowVerdict.SHADOW_VERDICT_WOULD_DROP && x.verdict !== ShadowVerdict.SHADOW_VERDICT_WOULD_ALLOW) out.push({ field: `${path}.verdict`, description: 'would-drop or would-allow', reason: 'INVALID_VERDICT' });
    tooLong(out, `${path}.node`, x.node, MAX_COUNTER_NAME_LENGTH);
    tooLong(out, `${path}.source`, x.source, MAX_ADDRESS_TEXT);
    tooLong(out, `${path}.destination`, x.destination, MAX_ADDRESS_TEXT);
    tooLong(out, `${path}.enforced_rule.policy`, x.enforcedRule?.policy ?? '', MAX_COUNTER_NAME_LENGTH);
    tooLong(out, `${path}.candidate_rule.policy`, x.candidateRule?.policy ?? '', MAX_COUNTER_NAME_LENGTH);
    tooLong(out, `${path}.candidate_rule_name`, x.candidateRuleName, MAX_COUNTER_NAME_LENGTH);
  });
}

/**
 * Returns the problems of an agent's answer to a connections query (empty when valid): at most
 * `limit` (and MAX_CONNECTIONS_LIMIT) rows, bounded texts, a matched count no smaller than the
 * rows sent.
 */
export function validateConnectionsAnswer(answer: ConnectionsAnswer, limit: number): FieldViolation[] {
  const out: FieldViolation[] = [];
  tooLong(out, 'connections.error', answer.error, MAX_REPORT_TEXT_LENGTH);
  const max = Math.min(limit, MAX_CONNECTIONS_LIMIT);
  if (answer.connections.length > max) {
    out.push({ field: 'connections.connections', description: `${answer.connections.length} rows; the query asked for at most ${max}`, reason: 'TOO_MANY_ENTRIES' });
    return out;
  }
  if (answer.matched < BigInt(answer.connections.length)) out.push({ field: 'connections.matched', description: `${answer.matched} is fewer than the ${answer.connections.length} rows sent`, reason: 'INCONSISTENT' });
  answer.connections.forEach((c, i) => {
    tooLong(out, `connections.connections[${i}].source`, c.source, MAX_ADDRESS_TEXT);
    tooLong(out, `connections.connections[${i}].destination`, c.destination, MAX_ADDRESS_TEXT);
    tooLong(out, `connections.connections[${i}].role`, c.role, 16);
    tooLong(out, `connections.connections[${i}].table`, c.table, 16);
    tooLong(out, `connections.connections[${i}].admitted_by`, c.admittedBy, 16);
    tooLong(out, `connections.connections[${i}].rule.policy`, c.rule?.policy ?? '', MAX_COUNTER_NAME_LENGTH);
  });
  return out;
}

/** Returns the problems of a revision report: a NACK reason of bounded length. */
export function validateRevisionReport(report: RevisionReport): FieldViolation[] {
  const out: FieldViolation[] = [];
  tooLong(out, 'report.reason', report.reason, MAX_REPORT_TEXT_LENGTH);
  return out;
}

/** Returns the problems of a condition report: count and text lengths. */
export function validateConditionReport(report: ConditionReport): FieldViolation[] {
  const out: FieldViolation[] = [];
  conditions(out, report.conditions, 'conditions.conditions');
  return out;
}

/**
 * Returns the problems of a backend health report (empty when valid): at most
 * MAX_BACKEND_HEALTH_ENTRIES entries, each naming a service by a DNS label, a canonical address
 * and a port in 1..65535, once; a reason of bounded length, only on an unhealthy verdict. Whether
 * the services and backends exist is the caller's check (it needs the intent). Linear.
 */
export function validateBackendHealthReport(report: BackendHealthReport): FieldViolation[] {
  const out: FieldViolation[] = [];
  if (report.backends.length > MAX_BACKEND_HEALTH_ENTRIES) {
    out.push({ field: 'backend_health.backends', description: `${report.backends.length} entries; at most ${MAX_BACKEND_HEALTH_ENTRIES} per report`, reason: 'TOO_MANY_ENTRIES' });
    return out;
  }
  const seen = new Set<string>();
  report.backends.forEach((b, i) => {
    const path = `backend_health.backends[${i}]`;
    const problem = checkDnsLabel(b.service);
    if (problem) out.push({ field: `${path}.service`, description: `${quote(b.service)} ${problem}`, reason: 'INVALID_NAME' });
    const address = parseCanonicalAddress(b.address);
    if (isAddressProblem(address)) out.push({ field: `${path}.address`, description: address.description, reason: address.reason });
    if (!Number.isInteger(b.port) || b.port < 1 || b.port > 65_535) out.push({ field: `${path}.port`, description: `port ${b.port} is not in 1..65535`, reason: 'PORT_OUT_OF_RANGE' });
    tooLong(out, `${path}.reason`, b.reason, MAX_HEALTH_REASON_LENGTH);
    if (b.healthy && b.reason !== '') out.push({ field: `${path}.reason`, description: 'only an unhealthy verdict has a reason', reason: 'NOT_ALLOWED' });
    // Checked after the name and address are bounded, so the key is short.
    if (problem || isAddressProblem(address)) return;
    const key = `${b.service} ${b.address} ${b.port}`;
    if (seen.has(key)) out.push({ field: path, description: `${b.service} ${b.address}:${b.port} reported twice`, reason: 'DUPLICATE' });
    seen.add(key);
  });
  return out;
}
