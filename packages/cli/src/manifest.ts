// Manifests: YAML or JSON documents in kubectl's shape (apiVersion / kind / metadata / spec,
// camelCase field names) turned into proto Policy and Service messages. Pure: the caller reads
// the files. Every field read records its position under its proto field path, so a field
// violation (from validatePolicy or validateService here, or from the server's BadRequest)
// points at the line it is about.
import { LineCounter, isAlias, isMap, isScalar, isSeq, parseAllDocuments, type Node } from 'yaml';
import {
  Action,
  ConnectionTracking_EstablishedOnDeny,
  ForwardingMode,
  HealthCheck_Type,
  InterfaceRole,
  LabelSelectorRequirement_Operator,
  LabelSelectorSyntaxError,
  type Policy,
  Protocol,
  Scheduler,
  ServiceSpec,
  SessionAffinity,
  type Service,
  parseLabelSelector,
  type Backend,
  type HealthCheck,
  type ObjectMeta,
  type LabelSelector,
  type PortRange,
  type RolloutStrategy,
  type RolloutStrategy_Staged,
  type Duration,
  type Rule,
  type Wave,
  MAX_COLLECTED_VIOLATIONS,
  MAX_MANIFEST_BYTES,
  quote,
  type ParseStats,
  type PrefixList,
  PrefixListUse,
} from '@edgeplane/proto';
import { msToDuration, parseDurationMs } from './duration.js';
import { parsePortRange } from './port-range.js';
import type { ManifestProblem, SourcePosition } from './errors.js';

/** The apiVersion every edgeplane manifest carries. */
export const API_VERSION = 'edgeplane.io/v1';

/** One input: a file's name (or `<stdin>`) and its text. */
export interface ManifestSource {
  file: string;
  text: string;
}

/** A policy read from a manifest, with a way back from proto field paths to the input. */
export interface PolicyManifest {
  kind: 'policy';
  policy: Policy;
  /** Where the document starts. */
  position: SourcePosition;
  /**
   * The position of a proto field path (`policy.spec.rules[2].source_cidrs[0]`), or of the
   * nearest enclosing field that has one, or of the document.
   */
  locate(field: string): SourcePosition;
}

/** A service read from a manifest, with a way back from proto field paths to the input. */
export interface ServiceManifest {
  kind: 'service';
  service: Service;
  /** Where the document starts. */
  position: SourcePosition;
  /** The position of a proto field path (`service.spec.backends[1].address`), as {@link PolicyManifest.locate}. */
  locate(field: string): SourcePosition;
}

/**
 * A prefix list read from a manifest (kind: PrefixList). Its prefixes are the inline ones; those
 * of `prefixesFile` are read by the caller (loadManifests) and appended.
 */
export interface PrefixListManifest {
  kind: 'prefixlist';
  prefixList: PrefixList;
  /** spec.prefixesFile as written (relative to the manifest's folder), and where. */
  prefixesFile?: { path: string; position: SourcePosition };
  /** Where the document starts. */
  position: SourcePosition;
  /** The position of a proto field path (`prefix_list.spec.prefixes[3]`), as {@link PolicyManifest.locate}. */
  locate(field: string): SourcePosition;
}

/** One resource read from a manifest. */
export type ResourceManifest = PolicyManifest | ServiceManifest | PrefixListManifest;

/** Result of {@link parseManifests}: the resources, or every problem found. */
export interface ParsedManifests {
  /** Every resource, in the order of the documents. */
  resources: ResourceManifest[];
  /** The policies among them. */
  policies: PolicyManifest[];
  /** The services among them. */
  services: ServiceManifest[];
  problems: ManifestProblem[];
}

/** Proto field path prefix of a policy in ApplyPolicyRequest (and for validatePolicy). */
export const POLICY_PATH = 'policy';

/** Proto field path prefix of a service in ApplyServiceRequest (and for validateService). */
export const SERVICE_PATH = 'service';

/** Proto field path prefix of a prefix list in UpdatePrefixListRequest (and for validatePrefixList). */
export const PREFIX_LIST_PATH = 'prefix_list';

/**
 * Parses every document of every source. Empty documents are skipped. Returns the problems
 * (syntax errors, unknown fields, wrong types) of all documents instead of stopping at the
 * first, at most MAX_COLLECTED_VIOLATIONS and then one that counts the rest; policies with
 * problems are left out. A source larger than MAX_MANIFEST_BYTES is refused unparsed.
 * Values are quoted in messages at most MAX_QUOTED_LENGTH characters. Linear in the input:
 * `stats.steps` counts the characters handed to the YAML parser, the nodes the reader visits
 * and the characters its own scanners (selectors, ports) visit.
 */
export function parseManifests(sources: readonly ManifestSource[], stats?: ParseStats): ParsedManifests {
  const resources: ResourceManifest[] = [];
  const problems: ManifestProblem[] = [];
  const result = (): ParsedManifests => {
    const policies = resources.filter((r): r is PolicyManifest => r.kind === 'policy');
    const services = resources.filter((r): r is ServiceManifest => r.kind === 'service');
    if (problems.length <= MAX_COLLECTED_VIOLATIONS) return { resources, policies, services, problems };
    const more = problems.length - MAX_COLLECTED_VIOLATIONS;
    return { resources, policies, services, problems: [...problems.slice(0, MAX_COLLECTED_VIOLATIONS), { message: `and ${more} more problems not listed` }] };
  };
  for (const source of sources) {
    if (source.text.length > MAX_MANIFEST_BYTES) {
      problems.push({ file: source.file, message: `${source.text.length} characters; a manifest is at most ${MAX_MANIFEST_BYTES} bytes` });
      continue;
    }
    if (stats) stats.steps += source.text.length;
    const lineCounter = new LineCounter();
    // uniqueKeys is off: the yaml package checks it by scanning the map for every key
    // (quadratic in a map's size); the reader finds duplicate keys with a set instead.
    const docs = parseAllDocuments(source.text, { lineCounter, prettyErrors: false, uniqueKeys: false });
    const at = (offset: number): SourcePosition => ({ file: source.file, ...lineCounter.linePos(offset) });
    for (const doc of docs) {
      if (doc.errors.length > 0) {
        for (const e of doc.errors) problems.push({ position: at(e.pos[0]), message: e.message });
        continue;
      }
      if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null)) continue;
      for (const root of listItems(doc.contents) ?? [doc.contents]) {
        const reader = new DocumentReader(at, stats);
        const resource = reader.resource(root);
        if (reader.problems.length > 0 || !resource) {
          problems.push(...reader.problems);
          continue;
        }
        const fields = reader.fields;
        const position = at(root.range?.[0] ?? 0);
        const locate = (field: string): SourcePosition => locateField(fields, field) ?? position;
        if (resource.kind === 'policy') resources.push({ kind: 'policy', policy: resource.policy, position, locate });
        else if (resource.kind === 'service') resources.push({ kind: 'service', service: resource.service, position, locate });
        else resources.push({ kind: 'prefixlist', prefixList: resource.prefixList, ...(resource.prefixesFile ? { prefixesFile: resource.prefixesFile } : {}), position, locate });
      }
    }
  }
  return result();
}

/** The items of a `kind: List` document (what `get -o yaml` prints for several resources), else undefined. */
function listItems(root: Node): Node[] | undefined {
  if (!isMap(root) || root.get('kind') !== 'List') return undefined;
  const items = root.get('items', true) as Node | undefined;
  return items && isSeq(items) ? items.items.filter((i): i is Node => i !== null && typeof i === 'object') : [];
}

/** Strips trailing `.name` / `[i]` segments until a recorded path matches. */
function locateField(fields: ReadonlyMap<string, SourcePosition>, field: string): SourcePosition | undefined {
  let path = field;
  for (;;) {
    const hit = fields.get(path);
    if (hit) return hit;
    const cut = Math.max(path.lastIndexOf('.'), path.lastIndexOf('['));
    if (cut <= 0) return undefined;
    path = path.slice(0, cut);
  }
}

type Entries = Map<string, { key: Node; value: Node | null }>;

const PROTOCOLS: Record<string, Protocol> = {
  any: Protocol.PROTOCOL_ANY,
  tcp: Protocol.PROTOCOL_TCP,
  udp: Protocol.PROTOCOL_UDP,
  icmp: Protocol.PROTOCOL_ICMP,
  icmpv6: Protocol.PROTOCOL_ICMPV6,
};
const ACTIONS: Record<string, Action> = { allow: Action.ACTION_ALLOW, deny: Action.ACTION_DENY, ratelimit: Action.ACTION_RATE_LIMIT };
const ROLES: Record<string, InterfaceRole> = { uplink: InterfaceRole.INTERFACE_ROLE_UPLINK, workload: InterfaceRole.INTERFACE_ROLE_WORKLOAD, all: InterfaceRole.INTERFACE_ROLE_ALL };
const ON_DENY: Record<string, ConnectionTracking_EstablishedOnDeny> = { keep: ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_KEEP, cut: ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_CUT };
const SCHEDULERS: Record<string, Scheduler> = { maglev: Scheduler.SCHEDULER_MAGLEV };
const AFFINITIES: Record<string, SessionAffinity> = { none: SessionAffinity.SESSION_AFFINITY_NONE, clientip: SessionAffinity.SESSION_AFFINITY_CLIENT_IP };
const FORWARDING: Record<string, ForwardingMode> = { nat: ForwardingMode.FORWARDING_MODE_NAT, dsr: ForwardingMode.FORWARDING_MODE_DSR, fullnat: ForwardingMode.FORWARDING_MODE_FULLNAT };
const USES: Record<string, PrefixListUse> = { none: PrefixListUse.PREFIX_LIST_USE_UNSPECIFIED, unspecified: PrefixListUse.PREFIX_LIST_USE_UNSPECIFIED, denysource: PrefixListUse.PREFIX_LIST_USE_DENY_SOURCE };
const HEALTH_TYPES: Record<string, HealthCheck_Type> = { tcp: HealthCheck_Type.TYPE_TCP, http: HealthCheck_Type.TYPE_HTTP };
const OPERATORS: Record<string, LabelSelectorRequirement_Operator> = {
  in: LabelSelectorRequirement_Operator.OPERATOR_IN,
  notin: LabelSelectorRequirement_Operator.OPERATOR_NOT_IN,
  exists: LabelSelectorRequirement_Operator.OPERATOR_EXISTS,
  doesnotexist: LabelSelectorRequirement_Operator.OPERATOR_DOES_NOT_EXIST,
};

/** Reads one document, recording problems and field positions. */
class DocumentReader {
  readonly problems: ManifestProblem[] = [];
  readonly fields = new Map<string, SourcePosition>();
  #at: (offset: number) => SourcePosition;
  readonly #stats: ParseStats | undefined;

  constructor(at: (offset: number) => SourcePosition, stats?: ParseStats) {
    this.#at = at;
    this.#stats = stats;
  }

  /** Reads a document of kind Policy, Service or PrefixList. */
  resource(root: Node): { kind: 'policy'; policy: Policy } | { kind: 'service'; service: Service } | { kind: 'prefixlist'; prefixList: PrefixList; prefixesFile?: { path: string; position: SourcePosition } } | undefined {
    const top = this.#map(root, 'the document', ['apiVersion', 'kind', 'metadata', 'spec']);
    if (!top) return undefined;
    const apiVersion = this.#string(top.get('apiVersion'), root, 'apiVersion');
    const kind = this.#string(top.get('kind'), root, 'kind');
    if (apiVersion !== undefined && apiVersion !== API_VERSION) this.#fail(top.get('apiVersion')!.value, `apiVersion: ${quote(apiVersion)} is not supported; use ${API_VERSION}`);
    if (kind !== undefined && kind !== 'Policy' && kind !== 'Service' && kind !== 'PrefixList') this.#fail(top.get('kind')!.value, `kind: ${quote(kind)} is not supported; edgeplane manifests are of kind Policy, Service or PrefixList`);
    if (apiVersion === undefined || kind === undefined) return undefined;
    const path = kind === 'Service' ? SERVICE_PATH : kind === 'PrefixList' ? PREFIX_LIST_PATH : POLICY_PATH;
    this.#record(path, root);
    const meta = top.get('metadata');
    let metadata: ObjectMeta | undefined;
    if (!meta) this.#fail(root, 'metadata: required');
    else metadata = this.#metadata(meta, `${path}.metadata`);
    const spec = top.get('spec');
    if (!spec) this.#fail(root, 'spec: required');
    if (kind === 'Service') return { kind: 'service', service: { metadata, spec: spec ? this.#serviceSpec(spec.value, spec.key) : undefined } };
    if (kind === 'PrefixList') {
      const read = spec ? this.#prefixListSpec(spec.value, spec.key) : undefined;
      return { kind: 'prefixlist', prefixList: { metadata, spec: read?.spec }, ...(read?.file ? { prefixesFile: read.file } : {}) };
    }
    return { kind: 'policy', policy: { metadata, spec: spec ? this.#spec(spec.value, spec.key) : undefined } };
  }

  #metadata(meta: { key: Node; value: Node | null }, path: string): ObjectMeta | undefined {
    this.#record(path, meta.key);
    const m = this.#map(meta.value, 'metadata', ['name', 'labels', 'annotations', 'resourceVersion', 'createRevision', 'creationTimestamp', 'createTime', 'updateTime']);
    if (!m) return undefined;
    const metadata: ObjectMeta = { name: '', labels: {}, annotations: {}, resourceVersion: 0n, createRevision: 0n, createTime: undefined, updateTime: undefined };
    const name = m.get('name');
    if (name) {
      this.#record(`${path}.name`, name.value ?? name.key);
      metadata.name = this.#string(name, name.key, 'metadata.name') ?? '';
    }
    metadata.labels = this.#stringMap(m.get('labels'), `${path}.labels`);
    metadata.annotations = this.#stringMap(m.get('annotations'), `${path}.annotations`);
    return metadata;
  }

  #serviceSpec(node: Node | null, keyNode: Node): ServiceSpec {
    const sp = `${SERVICE_PATH}.spec`;
    this.#record(sp, keyNode);
    const spec = ServiceSpec.fromPartial({});
    const m = this.#map(node ?? keyNode, 'spec', ['nodeSelector', 'vip', 'protocol', 'port', 'backends', 'scheduler', 'maglevTableSize', 'healthCheck', 'sessionAffinity', 'forwardingMode', 'rolloutStrategy', 'description']);
    if (!m) return spec;
    const sel = m.get('nodeSelector');
    if (sel) spec.nodeSelector = this.#selector(sel.value, sel.key, `${sp}.node_selector`);
    const vip = m.get('vip');
    if (vip) {
      this.#record(`${sp}.vip`, vip.value ?? vip.key);
      spec.vip = this.#string(vip, vip.key, 'vip') ?? '';
    }
    const protocol = m.get('protocol');
    if (protocol) spec.protocol = this.#enum(protocol, `${sp}.protocol`, PROTOCOLS, 'tcp or udp') ?? spec.protocol;
    const port = m.get('port');
    if (port) spec.port = this.#uint(port, `${sp}.port`, 0xffff_ffff) ?? 0;
    const backends = m.get('backends');
    if (backends) {
      this.#record(`${sp}.backends`, backends.key);
      this.#seq(backends.value, backends.key, 'backends').forEach((item, i) => {
        const backend = this.#backend(item, `${sp}.backends[${i}]`);
        if (backend) spec.backends.push(backend);
      });
    }
    const scheduler = m.get('scheduler');
    if (scheduler) spec.scheduler = this.#enum(scheduler, `${sp}.scheduler`, SCHEDULERS, 'maglev') ?? spec.scheduler;
    const size = m.get('maglevTableSize');
    if (size) spec.maglevTableSize = this.#uint(size, `${sp}.maglev_table_size`, 0xffff_ffff) ?? 0;
    const hc = m.get('healthCheck');
    if (hc) spec.healthCheck = this.#healthCheck(hc.value, hc.key, `${sp}.health_check`);
    const affinity = m.get('sessionAffinity');
    if (affinity) spec.sessionAffinity = this.#enum(affinity, `${sp}.session_affinity`, AFFINITIES, 'none or client_ip') ?? spec.sessionAffinity;
    const forwarding = m.get('forwardingMode');
    if (forwarding) spec.forwardingMode = this.#enum(forwarding, `${sp}.forwarding_mode`, FORWARDING, 'nat, dsr or fullnat') ?? spec.forwardingMode;
    const rollout = m.get('rolloutStrategy');
    if (rollout) spec.rolloutStrategy = this.#rollout(rollout.value, rollout.key, `${sp}.rollout_strategy`);
    const desc = m.get('description');
    if (desc) {
      this.#record(`${sp}.description`, desc.value ?? desc.key);
      spec.description = this.#string(desc, desc.key, 'description') ?? '';
    }
    return spec;
  }

  #prefixListSpec(node: Node | null, keyNode: Node): { spec: NonNullable<PrefixList['spec']>; file?: { path: string; position: SourcePosition } } {
    const sp = `${PREFIX_LIST_PATH}.spec`;
    this.#record(sp, keyNode);
    const spec: NonNullable<PrefixList['spec']> = { nodeSelector: undefined, use: PrefixListUse.PREFIX_LIST_USE_UNSPECIFIED, prefixes: [], description: '' };
    const m = this.#map(node ?? keyNode, 'spec', ['nodeSelector', 'use', 'prefixes', 'prefixesFile', 'description']);
    if (!m) return { spec };
    const sel = m.get('nodeSelector');
    if (sel) spec.nodeSelector = this.#selector(sel.value, sel.key, `${sp}.node_selector`);
    const use = m.get('use');
    if (use) spec.use = this.#enum(use, `${sp}.use`, USES, 'deny_source or none') ?? spec.use;
    const desc = m.get('description');
    if (desc) {
      this.#record(`${sp}.description`, desc.value ?? desc.key);
      spec.description = this.#string(desc, desc.key, 'description') ?? '';
    }
    const prefixes = m.get('prefixes');
    if (prefixes) {
      this.#record(`${sp}.prefixes`, prefixes.key);
      spec.prefixes = this.#seq(prefixes.value, prefixes.key, 'prefixes').map((item, i) => {
        this.#record(`${sp}.prefixes[${i}]`, item);
        return this.#scalarText(item, `prefixes[${i}]`) ?? '';
      });
    }
    const file = m.get('prefixesFile');
    if (!file) return { spec };
    const path = this.#string(file, file.key, 'prefixesFile');
    if (path === undefined) return { spec };
    if (path === '') this.#fail(file.value ?? file.key, 'prefixesFile: give a file of one prefix per line');
    return { spec, file: { path, position: this.#pos(file.value ?? file.key) } };
  }

  #backend(node: Node, bp: string): Backend | undefined {
    this.#record(bp, node);
    const m = this.#map(node, 'a backend', ['address', 'port', 'weight']);
    if (!m) return undefined;
    const backend: Backend = { address: '', port: 0, weight: undefined };
    const address = m.get('address');
    if (!address) this.#fail(node, 'address: required', `${bp}.address`);
    else {
      this.#record(`${bp}.address`, address.value ?? address.key);
      backend.address = this.#string(address, address.key, 'address') ?? '';
    }
    const port = m.get('port');
    if (port) backend.port = this.#uint(port, `${bp}.port`, 0xffff_ffff) ?? 0;
    // Unset and 0 differ: unset is weight 1, 0 drains the backend.
    const weight = m.get('weight');
    if (weight) backend.weight = this.#uint(weight, `${bp}.weight`, 0xffff_ffff);
    return backend;
  }

  #healthCheck(node: Node | null, keyNode: Node, hp: string): HealthCheck | undefined {
    this.#record(hp, keyNode);
    const m = this.#map(node ?? keyNode, 'healthCheck', ['type', 'httpPath', 'port', 'interval', 'timeout', 'healthyThreshold', 'unhealthyThreshold']);
    if (!m) return undefined;
    const hc: HealthCheck = { type: HealthCheck_Type.TYPE_UNSPECIFIED, httpPath: '', port: 0, interval: undefined, timeout: undefined, healthyThreshold: 0, unhealthyThreshold: 0 };
    const type = m.get('type');
    if (type) hc.type = this.#enum(type, `${hp}.type`, HEALTH_TYPES, 'tcp or http') ?? hc.type;
    const path = m.get('httpPath');
    if (path) {
      this.#record(`${hp}.http_path`, path.value ?? path.key);
      hc.httpPath = this.#string(path, path.key, 'httpPath') ?? '';
    }
    const port = m.get('port');
    if (port) hc.port = this.#uint(port, `${hp}.port`, 0xffff_ffff) ?? 0;
    const interval = m.get('interval');
    if (interval) hc.interval = this.#duration(interval, `${hp}.interval`);
    const timeout = m.get('timeout');
    if (timeout) hc.timeout = this.#duration(timeout, `${hp}.timeout`);
    const healthy = m.get('healthyThreshold');
    if (healthy) hc.healthyThreshold = this.#uint(healthy, `${hp}.healthy_threshold`, 0xffff_ffff) ?? 0;
    const unhealthy = m.get('unhealthyThreshold');
    if (unhealthy) hc.unhealthyThreshold = this.#uint(unhealthy, `${hp}.unhealthy_threshold`, 0xffff_ffff) ?? 0;
    return hc;
  }

  #spec(node: Node | null, keyNode: Node): Policy['spec'] {
    const sp = `${POLICY_PATH}.spec`;
    this.#record(sp, keyNode);
    const spec: NonNullable<Policy['spec']> = { nodeSelector: undefined, interfaceRole: InterfaceRole.INTERFACE_ROLE_UNSPECIFIED, rules: [], defaultAction: Action.ACTION_UNSPECIFIED, rolloutStrategy: undefined, description: '', connectionTracking: undefined };
    const m = this.#map(node ?? keyNode, 'spec', ['nodeSelector', 'interfaceRole', 'rules', 'defaultAction', 'rolloutStrategy', 'description', 'connectionTracking']);
    if (!m) return spec;
    const sel = m.get('nodeSelector');
    if (sel) spec.nodeSelector = this.#selector(sel.value, sel.key, `${sp}.node_selector`);
    const role = m.get('interfaceRole');
    if (role) spec.interfaceRole = this.#enum(role, `${sp}.interface_role`, ROLES, 'uplink, workload or all') ?? spec.interfaceRole;
    const def = m.get('defaultAction');
    if (def) spec.defaultAction = this.#enum(def, `${sp}.default_action`, ACTIONS, 'allow or deny') ?? spec.defaultAction;
    const desc = m.get('description');
    if (desc) {
      this.#record(`${sp}.description`, desc.value ?? desc.key);
      spec.description = this.#string(desc, desc.key, 'description') ?? '';
    }
    const rules = m.get('rules');
    if (rules) {
      this.#record(`${sp}.rules`, rules.key);
      this.#seq(rules.value, rules.key, 'rules').forEach((item, i) => {
        const rule = this.#rule(item, `${sp}.rules[${i}]`);
        if (rule) spec.rules.push(rule);
      });
    }
    const rollout = m.get('rolloutStrategy');
    if (rollout) spec.rolloutStrategy = this.#rollout(rollout.value, rollout.key, `${sp}.rollout_strategy`);
    const ct = m.get('connectionTracking');
    if (ct) {
      const cp = `${sp}.connection_tracking`;
      this.#record(cp, ct.key);
      const c = this.#map(ct.value ?? ct.key, 'connectionTracking', ['stateful', 'establishedOnDeny']);
      if (c) {
        const stateful = c.get('stateful');
        const onDeny = c.get('establishedOnDeny');
        spec.connectionTracking = {
          stateful: stateful ? (this.#bool(stateful, `${cp}.stateful`) ?? false) : false,
          establishedOnDeny: onDeny ? (this.#enum(onDeny, `${cp}.established_on_deny`, ON_DENY, 'keep or cut') ?? ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_UNSPECIFIED) : ConnectionTracking_EstablishedOnDeny.ESTABLISHED_ON_DENY_UNSPECIFIED,
        };
      }
    }
    return spec;
  }

  #rule(node: Node, rp: string): Rule | undefined {
    this.#record(rp, node);
    const m = this.#map(node, 'a rule', ['priority', 'name', 'sourceCIDRs', 'sourceCidrs', 'destinationCIDRs', 'destinationCidrs', 'sourcePrefixLists', 'destinationPrefixLists', 'protocol', 'destinationPorts', 'action', 'rateLimit']);
    if (!m) return undefined;
    const rule: Rule = { priority: 0, name: '', sourceCidrs: [], destinationCidrs: [], protocol: Protocol.PROTOCOL_UNSPECIFIED, destinationPorts: [], action: Action.ACTION_UNSPECIFIED, rateLimit: undefined, sourcePrefixLists: [], destinationPrefixLists: [] };
    const priority = m.get('priority');
    if (!priority) this.#fail(node, 'priority: required', `${rp}.priority`);
    else rule.priority = this.#uint(priority, `${rp}.priority`, 0xffff_ffff) ?? 0;
    const name = m.get('name');
    if (name) {
      this.#record(`${rp}.name`, name.value ?? name.key);
      rule.name = this.#string(name, name.key, 'name') ?? '';
    }
    for (const [field, keys] of [
      ['source_cidrs', ['sourceCIDRs', 'sourceCidrs']],
      ['destination_cidrs', ['destinationCIDRs', 'destinationCidrs']],
      ['source_prefix_lists', ['sourcePrefixLists']],
      ['destination_prefix_lists', ['destinationPrefixLists']],
    ] as const) {
      const present = keys.filter((k) => m.has(k));
      if (present.length > 1) this.#fail(m.get(present[1]!)!.key, `${present.join(' and ')} are the same field; give one`);
      const entry = present[0] === undefined ? undefined : m.get(present[0]);
      if (!entry) continue;
      this.#record(`${rp}.${field}`, entry.key);
      const list = this.#seq(entry.value, entry.key, present[0]!).map((item, j) => {
        this.#record(`${rp}.${field}[${j}]`, item);
        return this.#scalarText(item, `${present[0]}[${j}]`) ?? '';
      });
      if (field === 'source_cidrs') rule.sourceCidrs = list;
      else if (field === 'destination_cidrs') rule.destinationCidrs = list;
      else if (field === 'source_prefix_lists') rule.sourcePrefixLists = list;
      else rule.destinationPrefixLists = list;
    }
    const protocol = m.get('protocol');
    if (protocol) rule.protocol = this.#enum(protocol, `${rp}.protocol`, PROTOCOLS, 'tcp, udp, icmp, icmpv6 or any') ?? rule.protocol;
    const ports = m.get('destinationPorts');
    if (ports) {
      this.#record(`${rp}.destination_ports`, ports.key);
      this.#seq(ports.value, ports.key, 'destinationPorts').forEach((item, j) => {
        const range = this.#portRange(item, `${rp}.destination_ports[${j}]`);
        if (range) rule.destinationPorts.push(range);
      });
    }
    const action = m.get('action');
    if (!action) this.#fail(node, 'action: required (allow, deny or rate_limit)', `${rp}.action`);
    else rule.action = this.#enum(action, `${rp}.action`, ACTIONS, 'allow, deny or rate_limit') ?? rule.action;
    const rl = m.get('rateLimit');
    if (rl) {
      this.#record(`${rp}.rate_limit`, rl.key);
      const r = this.#map(rl.value ?? rl.key, 'rateLimit', ['packetsPerSecond', 'burst']);
      if (r) {
        const pps = r.get('packetsPerSecond');
        const burst = r.get('burst');
        rule.rateLimit = {
          packetsPerSecond: pps ? BigInt(this.#uint(pps, `${rp}.rate_limit.packets_per_second`, Number.MAX_SAFE_INTEGER) ?? 0) : 0n,
          burst: burst ? BigInt(this.#uint(burst, `${rp}.rate_limit.burst`, Number.MAX_SAFE_INTEGER) ?? 0) : 0n,
        };
      }
    }
    return rule;
  }

  #portRange(node: Node, pp: string): PortRange | undefined {
    this.#record(pp, node);
    if (isMap(node)) {
      const m = this.#map(node, 'a port range', ['first', 'last']);
      if (!m) return undefined;
      const first = m.get('first');
      const last = m.get('last');
      if (!first) this.#fail(node, 'first: required', `${pp}.first`);
      return { first: first ? (this.#uint(first, `${pp}.first`, 0xffff_ffff) ?? 0) : 0, last: last ? (this.#uint(last, `${pp}.last`, 0xffff_ffff) ?? 0) : 0 };
    }
    const text = this.#scalarText(node, 'a port');
    if (text === undefined) return undefined;
    const range = parsePortRange(text, this.#stats);
    if (!range) this.#fail(node, `${quote(text)} is not a port or a range like "8000-8100"`, pp);
    return range;
  }

  #selector(node: Node | null, keyNode: Node, path: string): LabelSelector | undefined {
    this.#record(path, node ?? keyNode);
    if (node && isScalar(node) && typeof node.value === 'string') {
      try {
        return parseLabelSelector(node.value, this.#stats);
      } catch (err) {
        if (!(err instanceof LabelSelectorSyntaxError)) throw err;
        this.#fail(node, err.message, path);
        return undefined;
      }
    }
    const m = this.#map(node ?? keyNode, 'a label selector', ['matchLabels', 'matchExpressions']);
    if (!m) return undefined;
    const selector: LabelSelector = { matchLabels: this.#stringMap(m.get('matchLabels'), `${path}.match_labels`), matchExpressions: [] };
    const exprs = m.get('matchExpressions');
    if (exprs) {
      this.#record(`${path}.match_expressions`, exprs.key);
      this.#seq(exprs.value, exprs.key, 'matchExpressions').forEach((item, i) => {
        const ep = `${path}.match_expressions[${i}]`;
        this.#record(ep, item);
        const e = this.#map(item, 'a selector expression', ['key', 'operator', 'values']);
        if (!e) return;
        const key = e.get('key');
        const op = e.get('operator');
        const values = e.get('values');
        if (key) this.#record(`${ep}.key`, key.value ?? key.key);
        if (!key || !op) this.#fail(item, 'key and operator are required', ep);
        selector.matchExpressions.push({
          key: key ? (this.#string(key, key.key, 'key') ?? '') : '',
          operator: op ? (this.#enum(op, `${ep}.operator`, OPERATORS, 'In, NotIn, Exists or DoesNotExist') ?? 0) : 0,
          values: values
            ? this.#seq(values.value, values.key, 'values').map((v, j) => {
                this.#record(`${ep}.values[${j}]`, v);
                return this.#scalarText(v, 'a value') ?? '';
              })
            : [],
        });
      });
    }
    return selector;
  }

  #rollout(node: Node | null, keyNode: Node, path: string): RolloutStrategy | undefined {
    this.#record(path, keyNode);
    const m = this.#map(node ?? keyNode, 'rolloutStrategy', ['immediate', 'staged']);
    if (!m) return undefined;
    if (m.size !== 1) {
      this.#fail(node ?? keyNode, 'give exactly one of immediate or staged', path);
      return undefined;
    }
    if (m.has('immediate')) return { strategy: { $case: 'immediate', immediate: {} } };
    const entry = m.get('staged')!;
    const sp = `${path}.staged`;
    this.#record(sp, entry.key);
    const s = this.#map(entry.value ?? entry.key, 'staged', ['waves', 'gates', 'reportTimeout']);
    if (!s) return undefined;
    const staged: RolloutStrategy_Staged = { waves: [], gates: undefined, reportTimeout: undefined };
    const waves = s.get('waves');
    if (waves) {
      this.#record(`${sp}.waves`, waves.key);
      this.#seq(waves.value, waves.key, 'waves').forEach((item, i) => {
        const wp = `${sp}.waves[${i}]`;
        this.#record(wp, item);
        const w = this.#map(item, 'a wave', ['name', 'percent', 'selector', 'bakeTime', 'shadowBakeTime']);
        if (!w) return;
        const wave: Wave = { name: '', target: undefined, bakeTime: undefined, shadowBakeTime: undefined };
        const name = w.get('name');
        if (name) wave.name = this.#string(name, name.key, 'name') ?? '';
        const percent = w.get('percent');
        const selector = w.get('selector');
        if (percent && selector) this.#fail(selector.key, 'give percent or selector, not both', wp);
        else if (percent) wave.target = { $case: 'percent', percent: this.#number(percent, `${wp}.percent`) ?? 0 };
        else if (selector) wave.target = { $case: 'selector', selector: this.#selector(selector.value, selector.key, `${wp}.selector`) ?? { matchLabels: {}, matchExpressions: [] } };
        const bake = w.get('bakeTime');
        if (bake) wave.bakeTime = this.#duration(bake, `${wp}.bake_time`);
        const shadow = w.get('shadowBakeTime');
        if (shadow) wave.shadowBakeTime = this.#duration(shadow, `${wp}.shadow_bake_time`);
        staged.waves.push(wave);
      });
    }
    const gates = s.get('gates');
    if (gates) {
      this.#record(`${sp}.gates`, gates.key);
      const g = this.#map(gates.value ?? gates.key, 'gates', ['ignoreNacks', 'maxDropRatioIncreasePoints', 'maxUnreportedPercent', 'maxWouldDropPercent', 'minShadowPackets']);
      if (g) {
        const ignore = g.get('ignoreNacks');
        const drop = g.get('maxDropRatioIncreasePoints');
        const unreported = g.get('maxUnreportedPercent');
        const wouldDrop = g.get('maxWouldDropPercent');
        const minShadow = g.get('minShadowPackets');
        staged.gates = {
          ignoreNacks: ignore ? (this.#bool(ignore, `${sp}.gates.ignore_nacks`) ?? false) : false,
          maxDropRatioIncreasePoints: drop ? (this.#number(drop, `${sp}.gates.max_drop_ratio_increase_points`) ?? 0) : 0,
          maxUnreportedPercent: unreported ? (this.#number(unreported, `${sp}.gates.max_unreported_percent`) ?? 0) : 0,
          maxWouldDropPercent: wouldDrop ? (this.#number(wouldDrop, `${sp}.gates.max_would_drop_percent`) ?? 0) : 0,
          minShadowPackets: minShadow ? BigInt(this.#uint(minShadow, `${sp}.gates.min_shadow_packets`, Number.MAX_SAFE_INTEGER) ?? 0) : 0n,
        };
      }
    }
    const timeout = s.get('reportTimeout');
    if (timeout) staged.reportTimeout = this.#duration(timeout, `${sp}.report_timeout`);
    return { strategy: { $case: 'staged', staged } };
  }

  // --- typed readers -------------------------------------------------------------------

  #pos(node: Node): SourcePosition {
    return this.#at(node.range?.[0] ?? 0);
  }

  #record(path: string, node: Node): void {
    if (this.#stats) this.#stats.steps++;
    this.fields.set(path, this.#pos(node));
  }

  #fail(node: Node | null | undefined, message: string, field?: string): void {
    this.problems.push({ ...(node ? { position: this.#pos(node) } : {}), ...(field ? { field } : {}), message });
  }

  #map(node: Node | null, what: string, allowed: readonly string[]): Entries | undefined {
    const n = node && isAlias(node) ? undefined : node;
    if (!n || !isMap(n)) {
      this.#fail(node, `${what} must be a mapping`);
      return undefined;
    }
    const out: Entries = new Map();
    for (const pair of n.items) {
      if (this.#stats) this.#stats.steps++;
      const key = pair.key as Node | null;
      if (!key || !isScalar(key) || typeof key.value !== 'string') {
        this.#fail(key ?? n, `keys of ${what} must be strings`);
        continue;
      }
      const name: string = key.value;
      if (out.has(name)) {
        this.#fail(key, `${quote(name)} is given twice in ${what}`);
        continue;
      }
      if (!allowed.includes(name)) {
        const hint = name.length > 64 ? undefined : allowed.find((a) => a.toLowerCase() === name.toLowerCase());
        this.#fail(key, `unknown field ${quote(name)} in ${what}${hint ? ` (did you mean ${JSON.stringify(hint)}?)` : `; known: ${allowed.join(', ')}`}`);
        continue;
      }
      out.set(name, { key, value: pair.value as Node | null });
    }
    return out;
  }

  #seq(node: Node | null, keyNode: Node, what: string): Node[] {
    if (node === null) return [];
    if (!isSeq(node)) {
      this.#fail(node, `${what} must be a list`);
      return [];
    }
    return node.items.filter((i): i is Node => i !== null && typeof i === 'object');
  }

  /** A scalar's text; numbers and booleans are kept as written ("1.10" stays "1.10"). */
  #scalarText(node: Node | null, what: string): string | undefined {
    if (!node || !isScalar(node) || node.value === null || typeof node.value === 'object') {
      this.#fail(node, `${what} must be a string`);
      return undefined;
    }
    return typeof node.value === 'string' ? node.value : (node.source ?? String(node.value));
  }

  #string(entry: { key: Node; value: Node | null } | undefined, at: Node, what: string): string | undefined {
    if (!entry) return undefined;
    if (!entry.value || !isScalar(entry.value) || typeof entry.value.value !== 'string') {
      this.#fail(entry.value ?? at, `${what} must be a string`);
      return undefined;
    }
    return entry.value.value;
  }

  #stringMap(entry: { key: Node; value: Node | null } | undefined, path: string): Record<string, string> {
    const out: Record<string, string> = {};
    if (!entry || entry.value === null) return out;
    this.#record(path, entry.key);
    const node = entry.value;
    if (!isMap(node)) {
      this.#fail(node, `${path.split('.').pop()} must be a mapping of strings`, path);
      return out;
    }
    for (const pair of node.items) {
      const key = pair.key as Node | null;
      if (!key || !isScalar(key)) continue;
      const k = typeof key.value === 'string' ? key.value : (key.source ?? String(key.value));
      if (k === '__proto__') {
        this.#fail(key, `${quote(k)} is not a valid key`, path);
        continue;
      }
      if (Object.prototype.hasOwnProperty.call(out, k)) {
        this.#fail(key, `${quote(k)} is given twice`, path);
        continue;
      }
      this.#record(`${path}[${quote(k)}]`, (pair.value as Node | null) ?? key);
      const v = this.#scalarText(pair.value as Node | null, `the value of ${quote(k)}`);
      if (v !== undefined) out[k] = v;
    }
    return out;
  }

  #uint(entry: { key: Node; value: Node | null }, path: string, max: number): number | undefined {
    this.#record(path, entry.value ?? entry.key);
    const v = entry.value && isScalar(entry.value) ? entry.value.value : undefined;
    const n = typeof v === 'number' ? v : typeof v === 'string' && v.length <= 32 && /^\d+$/.test(v.trim()) ? Number(v) : NaN;
    if (!Number.isInteger(n) || n < 0 || n > max) {
      this.#fail(entry.value ?? entry.key, `must be a whole number from 0 to ${max}`, path);
      return undefined;
    }
    return n;
  }

  #number(entry: { key: Node; value: Node | null }, path: string): number | undefined {
    this.#record(path, entry.value ?? entry.key);
    const v = entry.value && isScalar(entry.value) ? entry.value.value : undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) {
      this.#fail(entry.value ?? entry.key, 'must be a number', path);
      return undefined;
    }
    return v;
  }

  #bool(entry: { key: Node; value: Node | null }, path: string): boolean | undefined {
    this.#record(path, entry.value ?? entry.key);
    const v = entry.value && isScalar(entry.value) ? entry.value.value : undefined;
    if (typeof v !== 'boolean') {
      this.#fail(entry.value ?? entry.key, 'must be true or false', path);
      return undefined;
    }
    return v;
  }

  #duration(entry: { key: Node; value: Node | null }, path: string): Duration | undefined {
    this.#record(path, entry.value ?? entry.key);
    const v = entry.value && isScalar(entry.value) ? entry.value.value : undefined;
    const ms = typeof v === 'number' ? v * 1000 : typeof v === 'string' && v.length <= 64 ? parseDurationMs(v) : undefined;
    if (ms === undefined || ms < 0) {
      this.#fail(entry.value ?? entry.key, 'must be a duration like "30s", "5m" or "1h30m"', path);
      return undefined;
    }
    return msToDuration(ms);
  }

  #enum<T>(entry: { key: Node; value: Node | null }, path: string, table: Record<string, T>, expected: string): T | undefined {
    this.#record(path, entry.value ?? entry.key);
    const v = entry.value && isScalar(entry.value) ? entry.value.value : undefined;
    // Accept kubectl-style spellings and the proto names: "rate_limit", "rate-limit", "RATE_LIMIT", "ACTION_RATE_LIMIT".
    const norm = typeof v === 'string' && v.length <= 64 ? v.toLowerCase().replace(/^(protocol|action|interface_role|operator|established_on_deny|scheduler|session_affinity|forwarding_mode|prefix_list_use|type)_/, '').replace(/[-_]/g, '') : undefined;
    const hit = norm === undefined ? undefined : table[norm];
    if (hit === undefined) {
      this.#fail(entry.value ?? entry.key, `${typeof v === 'string' ? quote(v) : JSON.stringify(v ?? null)?.slice(0, 64)} is not one of ${expected}`, path);
      return undefined;
    }
    return hit;
  }
}
