// Proto messages -> plain manifest objects (camelCase, enum names in lower case, bigints as
// numbers), the shape `-o yaml|json` prints and `apply -f` reads back.
import { stringify } from 'yaml';
import {
  Action,
  ConnectionTracking_EstablishedOnDeny,
  ConnectionState,
  ForwardingMode,
  HealthCheck_Type,
  InterfaceRole,
  LabelSelectorRequirement_Operator,
  Protocol,
  RevisionOutcome,
  Scheduler,
  SessionAffinity,
  type ConnectionTracking,
  type HealthCheck,
  type ObjectMeta,
  type Service,
  type LabelSelector,
  type Node,
  type Policy,
  type PortRange,
  type RolloutStrategy,
  type Rule,
} from '@edgeplane/proto';
import { formatDuration } from './duration.js';
import { API_VERSION } from './manifest.js';

/** A JSON-compatible value. */
export type Plain = string | number | boolean | null | Plain[] | { [key: string]: Plain };

/** Lower-case name of a protocol (`tcp`), or `any` when unspecified. */
export function protocolName(p: Protocol): string {
  return ({ [Protocol.PROTOCOL_TCP]: 'tcp', [Protocol.PROTOCOL_UDP]: 'udp', [Protocol.PROTOCOL_ICMP]: 'icmp', [Protocol.PROTOCOL_ICMPV6]: 'icmpv6' } as Record<number, string>)[p] ?? 'any';
}

/** Lower-case name of an action (`allow`, `deny`, `rate_limit`), or `` when unspecified. */
export function actionName(a: Action): string {
  return ({ [Action.ACTION_ALLOW]: 'allow', [Action.ACTION_DENY]: 'deny', [Action.ACTION_RATE_LIMIT]: 'rate_limit' } as Record<number, string>)[a] ?? '';
}

/** Lower-case name of an interface role; unspecified reads as `all`, as the agent treats it. */
export function roleName(r: InterfaceRole): string {
  return ({ [InterfaceRole.INTERFACE_ROLE_UPLINK]: 'uplink', [InterfaceRole.INTERFACE_ROLE_WORKLOAD]: 'workload' } as Record<number, string>)[r] ?? 'all';
}

/** `keep` or `cut` (unspecified reads as `keep`, as the agent treats it). */
export function onDenyName(o: ConnectionTracking_EstablishedOnDeny): string {
  return o === ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_CUT ? 'cut' : 'keep';
}

/** `stateless`, or `stateful` with what a change does to established flows (`stateful (keep)`). */
export function trackingText(ct: ConnectionTracking | undefined): string {
  return ct?.stateful ? `stateful (established on deny: ${onDenyName(ct.establishedOnDeny)})` : 'stateless';
}

/** Upper-case conntrack-style state name (`ESTABLISHED`, `SYN_SENT`, `UDP`); `-` when unspecified. */
export function connectionStateName(s: ConnectionState): string {
  const name = ConnectionState[s];
  return typeof name === 'string' && s !== ConnectionState.CONNECTION_STATE_UNSPECIFIED ? name.replace(/^CONNECTION_STATE_/, '') : '-';
}

/** `maglev` (unspecified reads as `maglev`, as the agent treats it). */
export function schedulerName(s: Scheduler): string {
  return s === Scheduler.SCHEDULER_MAGLEV || s === Scheduler.SCHEDULER_UNSPECIFIED ? 'maglev' : String(s);
}

/** `none` or `client_ip` (unspecified reads as `none`). */
export function affinityName(a: SessionAffinity): string {
  return a === SessionAffinity.SESSION_AFFINITY_CLIENT_IP ? 'client_ip' : 'none';
}

/** `nat`, `dsr` or `fullnat` (unspecified reads as `nat`). */
export function forwardingName(f: ForwardingMode): string {
  if (f === ForwardingMode.FORWARDING_MODE_DSR) return 'dsr';
  return f === ForwardingMode.FORWARDING_MODE_FULLNAT ? 'fullnat' : 'nat';
}

/** `tcp` or `http` (unspecified reads as `tcp`). */
export function healthCheckTypeName(t: HealthCheck_Type): string {
  return t === HealthCheck_Type.TYPE_HTTP ? 'http' : 'tcp';
}

/** `ACK`, `NACK` or `` for a revision outcome. */
export function outcomeName(o: RevisionOutcome): string {
  return o === RevisionOutcome.REVISION_OUTCOME_ACK ? 'ACK' : o === RevisionOutcome.REVISION_OUTCOME_NACK ? 'NACK' : '';
}

const OPERATOR_NAMES: Record<number, string> = {
  [LabelSelectorRequirement_Operator.OPERATOR_IN]: 'In',
  [LabelSelectorRequirement_Operator.OPERATOR_NOT_IN]: 'NotIn',
  [LabelSelectorRequirement_Operator.OPERATOR_EXISTS]: 'Exists',
  [LabelSelectorRequirement_Operator.OPERATOR_DOES_NOT_EXIST]: 'DoesNotExist',
};

/** `443` for a single port, `8000-8100` for a range. */
export function formatPortRange(r: PortRange): number | string {
  return r.last === 0 || r.last === r.first ? r.first : `${r.first}-${r.last}`;
}

function nonEmpty(o: Record<string, string>): Record<string, string> | undefined {
  return Object.keys(o).length > 0 ? o : undefined;
}

/** Drops undefined members so YAML and JSON output stay terse. */
function compact(o: Record<string, Plain | undefined>): { [key: string]: Plain } {
  const out: { [key: string]: Plain } = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) out[k] = v;
  return out;
}

function selectorToPlain(s: LabelSelector | undefined): Plain | undefined {
  if (!s || (Object.keys(s.matchLabels).length === 0 && s.matchExpressions.length === 0)) return undefined;
  return compact({
    matchLabels: nonEmpty(s.matchLabels),
    matchExpressions: s.matchExpressions.length
      ? s.matchExpressions.map((e) => compact({ key: e.key, operator: OPERATOR_NAMES[e.operator] ?? String(e.operator), values: e.values.length ? e.values : undefined }))
      : undefined,
  });
}

function ruleToPlain(r: Rule): Plain {
  return compact({
    priority: r.priority,
    name: r.name || undefined,
    sourceCIDRs: r.sourceCidrs.length ? r.sourceCidrs : undefined,
    destinationCIDRs: r.destinationCidrs.length ? r.destinationCidrs : undefined,
    sourcePrefixLists: r.sourcePrefixLists.length ? r.sourcePrefixLists : undefined,
    destinationPrefixLists: r.destinationPrefixLists.length ? r.destinationPrefixLists : undefined,
    protocol: r.protocol === Protocol.PROTOCOL_UNSPECIFIED ? undefined : protocolName(r.protocol),
    destinationPorts: r.destinationPorts.length ? r.destinationPorts.map(formatPortRange) : undefined,
    action: actionName(r.action) || undefined,
    rateLimit: r.rateLimit ? { packetsPerSecond: Number(r.rateLimit.packetsPerSecond), burst: Number(r.rateLimit.burst) } : undefined,
  });
}

function rolloutToPlain(r: RolloutStrategy | undefined): Plain | undefined {
  const s = r?.strategy;
  if (!s) return undefined;
  if (s.$case === 'immediate') return { immediate: {} };
  const st = s.staged;
  return {
    staged: compact({
      waves: st.waves.map((w) =>
        compact({
          name: w.name || undefined,
          percent: w.target?.$case === 'percent' ? w.target.percent : undefined,
          selector: w.target?.$case === 'selector' ? (selectorToPlain(w.target.selector) ?? {}) : undefined,
          bakeTime: w.bakeTime ? formatDuration(w.bakeTime) : undefined,
          shadowBakeTime: w.shadowBakeTime ? formatDuration(w.shadowBakeTime) : undefined,
        }),
      ),
      gates: st.gates
        ? compact({
            ignoreNacks: st.gates.ignoreNacks || undefined,
            maxDropRatioIncreasePoints: st.gates.maxDropRatioIncreasePoints || undefined,
            maxUnreportedPercent: st.gates.maxUnreportedPercent || undefined,
            maxWouldDropPercent: st.gates.maxWouldDropPercent || undefined,
            minShadowPackets: st.gates.minShadowPackets ? Number(st.gates.minShadowPackets) : undefined,
          })
        : undefined,
      reportTimeout: st.reportTimeout ? formatDuration(st.reportTimeout) : undefined,
    }),
  };
}

/** Options of {@link policyToManifest} and {@link serviceToManifest}. */
export interface PolicyManifestOptions {
  /** Include the output-only metadata (resourceVersion, createRevision, timestamps). */
  outputOnly: boolean;
}

function metadataToPlain(m: ObjectMeta | undefined, options: PolicyManifestOptions): { [key: string]: Plain } {
  return compact({
    name: m?.name ?? '',
    labels: m ? nonEmpty(m.labels) : undefined,
    annotations: m ? nonEmpty(m.annotations) : undefined,
    ...(options.outputOnly && m
      ? {
          resourceVersion: m.resourceVersion ? Number(m.resourceVersion) : undefined,
          createRevision: m.createRevision ? Number(m.createRevision) : undefined,
          createTime: m.createTime?.toISOString(),
          updateTime: m.updateTime?.toISOString(),
        }
      : {}),
  });
}

function healthCheckToPlain(h: HealthCheck): Plain {
  return compact({
    type: h.type === HealthCheck_Type.TYPE_UNSPECIFIED ? undefined : healthCheckTypeName(h.type),
    httpPath: h.httpPath || undefined,
    port: h.port || undefined,
    interval: h.interval ? formatDuration(h.interval) : undefined,
    timeout: h.timeout ? formatDuration(h.timeout) : undefined,
    healthyThreshold: h.healthyThreshold || undefined,
    unhealthyThreshold: h.unhealthyThreshold || undefined,
  });
}

/**
 * Returns the manifest object of a service: what `get -o yaml` prints and `apply -f` reads
 * back to the same service. A backend's weight is printed only when set (0 drains; unset is 1).
 */
export function serviceToManifest(service: Service, options: PolicyManifestOptions = { outputOnly: true }): { [key: string]: Plain } {
  const s = service.spec;
  return {
    apiVersion: API_VERSION,
    kind: 'Service',
    metadata: metadataToPlain(service.metadata, options),
    spec: s
      ? compact({
          description: s.description || undefined,
          nodeSelector: selectorToPlain(s.nodeSelector),
          vip: s.vip,
          protocol: protocolName(s.protocol),
          port: s.port,
          backends: s.backends.map((b) => compact({ address: b.address, port: b.port || undefined, weight: b.weight })),
          scheduler: s.scheduler === Scheduler.SCHEDULER_UNSPECIFIED ? undefined : schedulerName(s.scheduler),
          maglevTableSize: s.maglevTableSize || undefined,
          healthCheck: s.healthCheck ? healthCheckToPlain(s.healthCheck) : undefined,
          sessionAffinity: s.sessionAffinity === SessionAffinity.SESSION_AFFINITY_UNSPECIFIED ? undefined : affinityName(s.sessionAffinity),
          forwardingMode: s.forwardingMode === ForwardingMode.FORWARDING_MODE_UNSPECIFIED ? undefined : forwardingName(s.forwardingMode),
          rolloutStrategy: rolloutToPlain(s.rolloutStrategy),
        })
      : {},
  };
}

/**
 * Returns the manifest object of a policy: what `get -o yaml` prints and `apply -f` reads
 * back to the same policy.
 */
export function policyToManifest(policy: Policy, options: PolicyManifestOptions = { outputOnly: true }): { [key: string]: Plain } {
  const m = policy.metadata;
  const s = policy.spec;
  return {
    apiVersion: API_VERSION,
    kind: 'Policy',
    metadata: metadataToPlain(m, options),
    spec: s
      ? compact({
          description: s.description || undefined,
          nodeSelector: selectorToPlain(s.nodeSelector),
          interfaceRole: s.interfaceRole === InterfaceRole.INTERFACE_ROLE_UNSPECIFIED ? undefined : roleName(s.interfaceRole),
          defaultAction: actionName(s.defaultAction) || undefined,
          rolloutStrategy: rolloutToPlain(s.rolloutStrategy),
          connectionTracking: s.connectionTracking
            ? compact({
                stateful: s.connectionTracking.stateful,
                establishedOnDeny: s.connectionTracking.establishedOnDeny === ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_UNSPECIFIED ? undefined : onDenyName(s.connectionTracking.establishedOnDeny),
              })
            : undefined,
          rules: s.rules.map(ruleToPlain),
        })
      : {},
  };
}

/** Returns the manifest-shaped object of a node (read-only: nodes are registered by agents). */
export function nodeToManifest(node: Node): { [key: string]: Plain } {
  const st = node.status;
  const info = node.info;
  return {
    apiVersion: API_VERSION,
    kind: 'Node',
    metadata: compact({ name: node.name, labels: nonEmpty(node.labels) }),
    info: info
      ? compact({
          agentVersion: info.agentVersion,
          kernelRelease: info.kernelRelease,
          hostname: info.hostname,
          datapath: info.datapath,
          capabilities: info.capabilities ? { ...info.capabilities } : undefined,
        })
      : {},
    interfaces: node.interfaces.map((i) => ({ name: i.name, ifindex: i.ifindex, role: roleName(i.role), attachMode: i.attachMode, attached: i.attached, programId: i.programId })),
    status: st
      ? compact({
          connected: st.connected,
          lastSeenTime: st.lastSeenTime?.toISOString(),
          connectTime: st.connectTime?.toISOString(),
          receivedRevision: Number(st.receivedRevision),
          appliedRevision: Number(st.appliedRevision),
          appliedUnknown: st.appliedUnknown || undefined,
          lastOutcomeRevision: Number(st.lastOutcomeRevision),
          lastOutcome: outcomeName(st.lastOutcome) || undefined,
          lastError: st.lastError || undefined,
          lastErrorRevision: st.lastErrorRevision ? Number(st.lastErrorRevision) : undefined,
          lastErrorTime: st.lastErrorTime?.toISOString(),
          conditions: st.conditions.length ? st.conditions.map((c) => compact({ type: c.type, message: c.message, since: c.since?.toISOString(), revision: c.revision ? Number(c.revision) : undefined })) : undefined,
        })
      : {},
  };
}

/** Wraps several manifests kubectl-style: `{ apiVersion: v1, kind: List, items }`. */
export function listOf(items: Plain[]): { [key: string]: Plain } {
  return { apiVersion: API_VERSION, kind: 'List', items };
}

/** YAML text of a manifest object. */
export function toYaml(value: Plain): string {
  return stringify(value, { lineWidth: 0 });
}

/** Indented JSON text of a manifest object, with a final newline. */
export function toJson(value: Plain): string {
  return JSON.stringify(value, null, 2) + '\n';
}
