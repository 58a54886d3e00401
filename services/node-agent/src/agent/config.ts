import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { parseArgs } from 'node:util';
import { MAGLEV_TABLE_SIZES, MAX_SERVICES, checkDnsLabel, checkLabelKey, checkLabelValue, parseDurationMs, publicKeyFromRaw } from '@edgeplane/proto';
import type { KeyObject } from 'node:crypto';
import { createPublicKey } from 'node:crypto';
import { isInterfaceRole, type InterfaceRole } from '../datapath/interface-role.js';
import { DEFAULT_CONNTRACK_CONFIG, MAX_CONNTRACK_TIMEOUT_MS, type ConntrackConfig } from '../datapath/conntrack.js';
import { DEFAULT_LB_CAPACITY, LB_BLOCK_SLOTS, lbBlocks, type LbCapacity } from '../datapath/lb-tables.js';
import { CT4_MAX_SLOTS, CT4_MIN_SLOTS } from '../datapath/ct4-table.js';
import type { NodeCredentials } from './node-identity.js';

/**
 * Bounds of the load-balancing capacity flags (bpf/LB.md, "Maps"; each map holds two
 * generations, preallocated when the datapath is first loaded):
 * - `--lb-services`: 1 .. MAX_SERVICES, the most services the whole intent holds, so a node
 *   never needs more VIP entries;
 * - `--lb-slots`: whole blocks of LB_BLOCK_SLOTS, from the blocks of the smallest Maglev table
 *   (256 slots: one service) to 64 Mi (128 MiB per generation, 256 MiB for both; 6.4 times
 *   LB.md's target of 10,000 services x 10 backends);
 * - `--lb-backends`: 1 .. 4 Mi (an array rounds each 20-byte entry to 24: 96 MiB per generation;
 *   32 times the target's 2^17).
 */
export const LB_CAPACITY_BOUNDS = {
  services: { min: 1, max: MAX_SERVICES },
  slots: { min: lbBlocks(MAGLEV_TABLE_SIZES[0]!) * LB_BLOCK_SLOTS, max: 64 * 2 ** 20 },
  backends: { min: 1, max: 4 * 2 ** 20 },
} as const;

/** Bad flags or environment; the agent does not start. */
export class AgentConfigError extends Error {
  override name = 'AgentConfigError';
}

/** Everything the agent is configured with. */
export interface AgentConfig {
  nodeName: string;
  labels: Record<string, string>;
  /** The controller replicas' gRPC addresses, in the order the agent tries them (at least one). */
  controllers: string[];
  natsServers: string[];
  /** This node's NATS credentials (issued at enrollment); none = anonymous, which an edgeplane NATS refuses. */
  natsCreds?: string;
  natsJwt?: string;
  natsSeed?: string;
  /** CA the NATS servers' certificates chain to (tls:// URLs). */
  natsTlsCa?: string;
  interfaces: { name: string; role: InterfaceRole }[];
  pinRoot: string;
  /** Forget the pinned datapath before opening it (EbpfDatapath.reset): the way back from a newer layout. */
  resetDatapath: boolean;
  stateDir: string;
  trustedKeys: KeyObject[];
  /** Raise intent-stale when the newest verified controller heartbeat is older than this. */
  staleAfterMs: number;
  /** Operator reset keys: a history reset signed by one lifts a rollback refusal. */
  resetKeys: KeyObject[];
  /** The fleet whose log entries this agent accepts (unset: any fleet's, signed by a trusted key). */
  fleetId?: string;
  insecure: boolean;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  /** Single-use join token and the CA fingerprint it is used with (first start: enrollment). */
  joinToken?: string;
  caFingerprint?: string;
  datapath: 'ebpf' | 'memory';
  /** Capacity of the established connection table (ep_ct) and of the new-flow table (ep_ct_new), set at first load. */
  ctEntries: number;
  ctNewEntries: number;
  /** Slots of the IPv4 flow table in front of ep_ct (ep_ct4), set at first load. */
  ct4Slots: number;
  /** Connection timeouts, written at every start. */
  conntrack: ConntrackConfig;
  /** What each generation of the uplink's load-balancing maps holds (--lb-services, --lb-slots, --lb-backends), set at first load. */
  lbCapacity: LbCapacity;
  /** Where the uplink policy runs: XDP (native, generic, auto) or 'tc' (clsact ingress, no XDP). */
  xdpMode: 'native' | 'generic' | 'auto' | 'tc';
  /** How TC programs are attached (--tc-attach): tcx, clsact filters, or auto (tcx where the kernel has it). */
  tcAttach: 'auto' | 'tcx' | 'cls_bpf';
  heartbeatIntervalMs: number;
  counterIntervalMs: number;
  interfaceCheckMs: number;
  otlpEndpoint?: string;
  prometheusPort?: number;
}

/** The --help text. */
export const AGENT_HELP = `edgeplane-agent: enforces edgeplane intent on this node with eBPF (XDP on uplinks, TC on workloads)

Usage: edgeplane-agent [flags]

  --node-name NAME          this node's id, an RFC 1123 label (EDGEPLANE_NODE_NAME, default the hostname)
  --labels K=V,K=V          node labels that policies select on (EDGEPLANE_NODE_LABELS); an enrolled node's
                            labels are its join token's, bound at enrollment: this must then be unset or equal
  --controller HOST:PORT[,HOST:PORT...]
                            the controller's gRPC address, or its replicas' (EDGEPLANE_CONTROLLER, default
                            127.0.0.1:7443): the agent uses one at a time and moves to the next when its stream
                            fails; each must serve a certificate of the fleet CA
  --nats URL[,URL...]       NATS servers holding the intent log (EDGEPLANE_NATS_URL, default nats://127.0.0.1:4222)
  --nats-creds FILE         this node's NATS credentials: user JWT + nkey seed (EDGEPLANE_NATS_CREDS)
  --nats-jwt FILE, --nats-seed FILE   the same as two files: the JWT and the seed (EDGEPLANE_NATS_JWT, EDGEPLANE_NATS_SEED)
  --nats-tls-ca FILE        CA that signed the NATS servers' certificates, checked with their host names
                            (EDGEPLANE_NATS_TLS_CA); default for an enrolled node: the enrolled CA, and the
                            server must present a NATS server identity (spiffe://edgeplane/<fleet>/nats/<name>)
  --interface NAME=ROLE     enforce on an interface; ROLE is uplink (XDP) or workload (TC ingress+egress);
                            repeatable (EDGEPLANE_INTERFACES=eth0=uplink,veth1=workload)
  --pin-root DIR            bpffs directory for pinned programs and maps, mounted if it is not one
                            (EDGEPLANE_PIN_ROOT, default /run/edgeplane/bpf)
  --reset-datapath          forget the datapath pinned under --pin-root before starting (after a downgrade,
                            whose agent refuses a newer pinned layout): pins removed, uplink egress trackers
                            detached, XDP and TC programs left enforcing until this agent replaces them
                            after applying its rule set; counters, token buckets and the connection table
                            are lost; give it for one start only (bpf/README.md, "Upgrades and the pinned layout")
  --state-dir DIR           where the last applied revision is kept (EDGEPLANE_STATE_DIR, default /var/lib/edgeplane/agent)
  --trusted-key KEY         a controller public key: base64 of the raw 32-byte Ed25519 key, or @FILE with a
                            PEM public key; repeatable (EDGEPLANE_TRUSTED_KEYS, comma-separated); required
  --reset-key KEY           an operator reset key (as --trusted-key): a history reset it signed lets the
                            agent accept a shorter or different log it refused (rollback-refused);
                            repeatable (EDGEPLANE_RESET_KEYS); unset: only a new state directory does
  --stale-after SEC         raise intent-stale when no verified controller heartbeat arrived for SEC seconds
                            (EDGEPLANE_STALE_AFTER, default 30)
  --fleet-id ID             accept only log entries of this fleet (EDGEPLANE_FLEET_ID; the controller prints
                            it as fleetId when ready); an enrolled node follows the fleet it enrolled in and
                            refuses a different one; unset without enrollment accepts any trusted-key fleet
  --join-token TOKEN        single-use token from \`edgeplane token create\` (EDGEPLANE_JOIN_TOKEN): on first start
                            the agent generates its key, enrolls, and keeps its certificate in STATE_DIR/identity
                            (renewed at 70 % of its life); later starts use the stored identity
  --ca-fingerprint sha256:HEX   the fleet CA the controller must present when enrolling (EDGEPLANE_CA_FINGERPRINT)
  --insecure                plaintext gRPC to the controller (EDGEPLANE_INSECURE=1)
  --tls-ca FILE             CA that signed the controller's certificate (EDGEPLANE_TLS_CA)
  --tls-cert FILE, --tls-key FILE   client certificate for mutual TLS (EDGEPLANE_TLS_CERT, EDGEPLANE_TLS_KEY)
  --datapath ebpf|memory    (EDGEPLANE_DATAPATH, default ebpf; memory enforces nothing on packets: for simulations)
  --xdp-mode native|generic|auto|tc   where the uplink policy runs (default auto: native XDP, else generic XDP);
                            tc runs the same program at TC (clsact) ingress instead of XDP: use it on veth and
                            on NICs without native XDP, where generic XDP copies every packet first
  --tc-attach auto|tcx|cls_bpf   how programs sit at TC hooks (EDGEPLANE_TC_ATTACH, default auto: tcx on
                            kernels with it, 6.6+, else clsact filters); the agent moves its programs between
                            the two without a gap; set cls_bpf before downgrading to an agent without tcx
  Connection tracking (bpf/CONNTRACK.md; used by stateful policies):
  --ct-entries N            capacity of the established-connection table per role (EDGEPLANE_CT_ENTRIES, default
                            262144, 54 MiB preallocated per role; set when the datapath is first loaded: a
                            change needs --reset-datapath); when it is full new flows are not tracked (counted
                            as insert failures) and no established flow is evicted
  --ct-new-entries N        capacity of the LRU table of flows without a reply yet (default 65536, 13.5 MiB)
  --ct4-slots N             slots of the IPv4 flow table in front of the established table (EDGEPLANE_CT4_SLOTS,
                            a power of two, default 262144, 20 MiB per role; set at first load): IPv4 TCP/UDP
                            flows without NAT live there, one cache line each; a flow that finds its 8
                            slots taken goes to the established table instead
  --ct-timeout-tcp-syn D, --ct-timeout-tcp-established D, --ct-timeout-tcp-closing D,
  --ct-timeout-udp D, --ct-timeout-icmp D
                            idle timeouts (defaults 60s, 6h, 10s, 60s, 60s; D like 90s, 10m, 1h30m, 7d, at least 1s, at most 30d)
  Load balancing (bpf/LB.md; services the node fronts on its uplinks): per generation, two preallocated,
  set when the datapath is first loaded (a change needs --reset-datapath); services that do not fit are
  refused (a NACK naming the limit), the previous revision stays:
  --lb-services N           VIP entries (EDGEPLANE_LB_SERVICES, default ${DEFAULT_LB_CAPACITY.services}, at most ${LB_CAPACITY_BOUNDS.services.max})
  --lb-slots N              Maglev table slots over all services, a multiple of ${LB_BLOCK_SLOTS} (EDGEPLANE_LB_SLOTS,
                            default ${DEFAULT_LB_CAPACITY.slots}, 2 bytes each; ${LB_CAPACITY_BOUNDS.slots.min} .. ${LB_CAPACITY_BOUNDS.slots.max})
  --lb-backends N           backends over all services (EDGEPLANE_LB_BACKENDS, default ${DEFAULT_LB_CAPACITY.backends}, at most ${LB_CAPACITY_BOUNDS.backends.max})
  --heartbeat-interval SEC  until the controller sends its settings (default 60)
  --counter-interval SEC    until the controller sends its settings (default 5)
  --interface-check SEC     how often attachments are checked and restored (default 2)
  --otlp-endpoint URL       export traces by OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT)
  --prometheus-port PORT    serve metrics (EDGEPLANE_PROMETHEUS_PORT)
  -h, --help                this text

The agent enforces the last applied revision from its state file before it reaches NATS or
the controller, and keeps enforcing when both are gone: programs stay attached and pinned when
it exits. It prints {"event":"ready",...} on stdout once the datapath is up.
Exit codes: 0 after a graceful stop, 1 on a start-up failure, 2 on bad flags.`;

function num(name: string, text: string | undefined, fallback: number): number {
  if (text === undefined || text === '') return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new AgentConfigError(`--${name}: ${JSON.stringify(text)} is not a whole number`);
  return n;
}

/** "90", "90s", "15m", "1h30m", "6h", "1d" -> milliseconds (1 s .. 30 d), read by the shared parseDurationMs. @throws AgentConfigError naming the flag. */
export function parseTimeout(name: string, text: string | undefined, fallbackMs: number): number {
  if (text === undefined || text === '') return fallbackMs;
  const ms = parseDurationMs(text) ?? NaN;
  if (!(ms >= 1000 && ms <= MAX_CONNTRACK_TIMEOUT_MS)) throw new AgentConfigError(`--${name}: ${JSON.stringify(text.slice(0, 40))} is not a duration from 1s to 30d (e.g. 90s, 10m, 1h30m, 6h, 7d; a bare number is seconds)`);
  return ms;
}

function parseKey(text: string): KeyObject {
  try {
    if (text.startsWith('@')) return createPublicKey(readFileSync(text.slice(1)));
    return publicKeyFromRaw(Buffer.from(text, 'base64'));
  } catch (cause) {
    throw new AgentConfigError(`--trusted-key ${JSON.stringify(text.slice(0, 60))}: ${(cause as Error).message}`, { cause });
  }
}

function tableSize(name: string, text: string | undefined, fallback: number): number {
  const n = num(name, text, fallback);
  if (n < 16 || n > 16_777_216) throw new AgentConfigError(`--${name}: ${n} is outside 16 .. 16777216`);
  return n;
}

/** --ct4-slots: a power of two within ep_ct4's bounds. @throws AgentConfigError. */
function ct4Slots(text: string | undefined): number {
  const n = num('ct4-slots', text, 262_144);
  if (n < CT4_MIN_SLOTS || n > CT4_MAX_SLOTS || (n & (n - 1)) !== 0) throw new AgentConfigError(`--ct4-slots: ${n} is not a power of two in ${CT4_MIN_SLOTS} .. ${CT4_MAX_SLOTS}`);
  return n;
}

/** One --lb-* capacity: a whole number within its bounds (and whole blocks, for slots). @throws AgentConfigError naming the flag. */
function lbCapacity(name: 'services' | 'slots' | 'backends', text: string | undefined): number {
  const n = num(`lb-${name}`, text, DEFAULT_LB_CAPACITY[name]);
  const { min, max } = LB_CAPACITY_BOUNDS[name];
  if (n < min || n > max) throw new AgentConfigError(`--lb-${name}: ${n} is outside ${min} .. ${max}`);
  if (name === 'slots' && n % LB_BLOCK_SLOTS !== 0) throw new AgentConfigError(`--lb-slots: ${n} is not a multiple of ${LB_BLOCK_SLOTS} (tables are laid out in blocks of ${LB_BLOCK_SLOTS} slots)`);
  return n;
}

/** Parses flags over environment over defaults. @throws AgentConfigError naming the flag. */
export function parseAgentConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): AgentConfig | 'help' {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        'node-name': { type: 'string' },
        labels: { type: 'string' },
        controller: { type: 'string' },
        nats: { type: 'string' },
        'nats-creds': { type: 'string' },
        'nats-jwt': { type: 'string' },
        'nats-seed': { type: 'string' },
        'nats-tls-ca': { type: 'string' },
        interface: { type: 'string', multiple: true },
        'pin-root': { type: 'string' },
        'ct-entries': { type: 'string' },
        'ct4-slots': { type: 'string' },
        'ct-new-entries': { type: 'string' },
        'ct-timeout-tcp-syn': { type: 'string' },
        'ct-timeout-tcp-established': { type: 'string' },
        'ct-timeout-tcp-closing': { type: 'string' },
        'ct-timeout-udp': { type: 'string' },
        'ct-timeout-icmp': { type: 'string' },
        'lb-services': { type: 'string' },
        'lb-slots': { type: 'string' },
        'lb-backends': { type: 'string' },
        'reset-datapath': { type: 'boolean' },
        'state-dir': { type: 'string' },
        'trusted-key': { type: 'string', multiple: true },
        'fleet-id': { type: 'string' },
        'reset-key': { type: 'string', multiple: true },
        'stale-after': { type: 'string' },
        insecure: { type: 'boolean' },
        'tls-ca': { type: 'string' },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        'join-token': { type: 'string' },
        'ca-fingerprint': { type: 'string' },
        datapath: { type: 'string' },
        'xdp-mode': { type: 'string' },
        'tc-attach': { type: 'string' },
        'heartbeat-interval': { type: 'string' },
        'counter-interval': { type: 'string' },
        'interface-check': { type: 'string' },
        'otlp-endpoint': { type: 'string' },
        'prometheus-port': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (cause) {
    throw new AgentConfigError((cause as Error).message, { cause });
  }
  if (values.help) return 'help';
  const nodeName = values['node-name'] || env.EDGEPLANE_NODE_NAME || hostname();
  const nameProblem = checkDnsLabel(nodeName);
  if (nameProblem) throw new AgentConfigError(`--node-name ${JSON.stringify(nodeName)} ${nameProblem}`);
  const labels: Record<string, string> = {};
  for (const pair of (values.labels ?? env.EDGEPLANE_NODE_LABELS ?? '').split(',').filter(Boolean)) {
    const i = pair.indexOf('=');
    const k = i < 0 ? pair : pair.slice(0, i);
    const v = i < 0 ? '' : pair.slice(i + 1);
    const problem = checkLabelKey(k) ?? checkLabelValue(v);
    if (problem) throw new AgentConfigError(`--labels ${JSON.stringify(pair)}: ${problem}`);
    labels[k] = v;
  }
  const interfaces = (values.interface ?? (env.EDGEPLANE_INTERFACES ?? '').split(',').filter(Boolean)).map((spec) => {
    const [name, role] = spec.split('=');
    if (!name || !isInterfaceRole(role)) throw new AgentConfigError(`--interface ${JSON.stringify(spec)}: expected NAME=uplink or NAME=workload`);
    return { name, role };
  });
  const keys = values['trusted-key'] ?? (env.EDGEPLANE_TRUSTED_KEYS ?? '').split(',').filter(Boolean);
  if (keys.length === 0) throw new AgentConfigError('--trusted-key is required: the agent applies only entries signed by a key it trusts');
  const datapath = values.datapath ?? env.EDGEPLANE_DATAPATH ?? 'ebpf';
  if (datapath !== 'ebpf' && datapath !== 'memory') throw new AgentConfigError(`--datapath ${JSON.stringify(datapath)}: expected ebpf or memory`);
  const xdpMode = values['xdp-mode'] ?? 'auto';
  if (!['native', 'generic', 'auto', 'tc'].includes(xdpMode)) throw new AgentConfigError(`--xdp-mode ${JSON.stringify(xdpMode)}: expected native, generic, auto or tc`);
  const tcAttach = values['tc-attach'] ?? env.EDGEPLANE_TC_ATTACH ?? 'auto';
  if (!['auto', 'tcx', 'cls_bpf'].includes(tcAttach)) throw new AgentConfigError(`--tc-attach ${JSON.stringify(tcAttach)}: expected auto, tcx or cls_bpf`);
  const insecure = values.insecure ?? ['1', 'true'].includes(env.EDGEPLANE_INSECURE ?? '');
  const tlsCa = values['tls-ca'] ?? env.EDGEPLANE_TLS_CA;
  const tlsCert = values['tls-cert'] ?? env.EDGEPLANE_TLS_CERT;
  const tlsKey = values['tls-key'] ?? env.EDGEPLANE_TLS_KEY;
  const joinToken = values['join-token'] ?? env.EDGEPLANE_JOIN_TOKEN;
  const caFingerprint = values['ca-fingerprint'] ?? env.EDGEPLANE_CA_FINGERPRINT;
  if (joinToken && !caFingerprint) throw new AgentConfigError('--join-token needs --ca-fingerprint sha256:... (printed by `edgeplane token create`)');
  // Without TLS files the agent uses its enrolled identity (STATE_DIR/identity) or enrolls with a join token.
  if (!insecure && !tlsCa && !tlsCert && !joinToken && !caFingerprint) {
    throw new AgentConfigError('TLS is the default: give --join-token and --ca-fingerprint (first start), --ca-fingerprint alone once enrolled, or --tls-ca/--tls-cert/--tls-key, or --insecure');
  }
  const natsCreds = values['nats-creds'] ?? env.EDGEPLANE_NATS_CREDS;
  const natsJwt = values['nats-jwt'] ?? env.EDGEPLANE_NATS_JWT;
  const natsSeed = values['nats-seed'] ?? env.EDGEPLANE_NATS_SEED;
  const natsTlsCa = values['nats-tls-ca'] ?? env.EDGEPLANE_NATS_TLS_CA;
  if (!!natsJwt !== !!natsSeed) throw new AgentConfigError('--nats-jwt and --nats-seed go together');
  if (natsCreds && natsJwt) throw new AgentConfigError('give --nats-creds or --nats-jwt/--nats-seed, not both');
  const otlp = values['otlp-endpoint'] ?? env.OTEL_EXPORTER_OTLP_ENDPOINT;
  const prom = values['prometheus-port'] ?? env.EDGEPLANE_PROMETHEUS_PORT;
  const fleetId = values['fleet-id'] ?? env.EDGEPLANE_FLEET_ID;
  if (fleetId !== undefined && !/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(fleetId)) throw new AgentConfigError(`--fleet-id ${JSON.stringify(fleetId.slice(0, 80))}: 1-63 letters, digits, '.', '_' or '-'`);
  const controllerText = values.controller ?? env.EDGEPLANE_CONTROLLER ?? '127.0.0.1:7443';
  const controllers = controllerText.split(',').map((s) => s.trim()).filter(Boolean);
  if (controllers.length === 0) throw new AgentConfigError(`--controller ${JSON.stringify(controllerText.slice(0, 200))}: HOST:PORT, or several separated by commas`);
  return {
    ...(fleetId ? { fleetId } : {}),
    nodeName,
    labels,
    controllers,
    natsServers: (values.nats ?? env.EDGEPLANE_NATS_URL ?? 'nats://127.0.0.1:4222').split(',').map((s) => s.trim()).filter(Boolean),
    ...(natsCreds ? { natsCreds } : {}),
    ...(natsJwt ? { natsJwt, natsSeed: natsSeed! } : {}),
    ...(natsTlsCa ? { natsTlsCa } : {}),
    interfaces,
    pinRoot: values['pin-root'] ?? env.EDGEPLANE_PIN_ROOT ?? '/run/edgeplane/bpf',
    resetDatapath: values['reset-datapath'] ?? false,
    stateDir: values['state-dir'] ?? env.EDGEPLANE_STATE_DIR ?? '/var/lib/edgeplane/agent',
    trustedKeys: keys.map(parseKey),
    staleAfterMs: num('stale-after', values['stale-after'] ?? env.EDGEPLANE_STALE_AFTER, 30) * 1000,
    resetKeys: (values['reset-key'] ?? (env.EDGEPLANE_RESET_KEYS ?? '').split(',').filter(Boolean)).map(parseKey),
    insecure,
    ...(tlsCa ? { tlsCa } : {}),
    ...(tlsCert ? { tlsCert } : {}),
    ...(tlsKey ? { tlsKey } : {}),
    ...(joinToken ? { joinToken } : {}),
    ...(caFingerprint ? { caFingerprint } : {}),
    datapath,
    ctEntries: tableSize('ct-entries', values['ct-entries'] ?? env.EDGEPLANE_CT_ENTRIES, 262_144),
    ctNewEntries: tableSize('ct-new-entries', values['ct-new-entries'] ?? env.EDGEPLANE_CT_NEW_ENTRIES, 65_536),
    ct4Slots: ct4Slots(values['ct4-slots'] ?? env.EDGEPLANE_CT4_SLOTS),
    conntrack: {
      tcpSynMs: parseTimeout('ct-timeout-tcp-syn', values['ct-timeout-tcp-syn'], DEFAULT_CONNTRACK_CONFIG.tcpSynMs),
      tcpEstablishedMs: parseTimeout('ct-timeout-tcp-established', values['ct-timeout-tcp-established'], DEFAULT_CONNTRACK_CONFIG.tcpEstablishedMs),
      tcpClosingMs: parseTimeout('ct-timeout-tcp-closing', values['ct-timeout-tcp-closing'], DEFAULT_CONNTRACK_CONFIG.tcpClosingMs),
      udpMs: parseTimeout('ct-timeout-udp', values['ct-timeout-udp'], DEFAULT_CONNTRACK_CONFIG.udpMs),
      icmpMs: parseTimeout('ct-timeout-icmp', values['ct-timeout-icmp'], DEFAULT_CONNTRACK_CONFIG.icmpMs),
    },
    lbCapacity: {
      services: lbCapacity('services', values['lb-services'] ?? env.EDGEPLANE_LB_SERVICES),
      slots: lbCapacity('slots', values['lb-slots'] ?? env.EDGEPLANE_LB_SLOTS),
      backends: lbCapacity('backends', values['lb-backends'] ?? env.EDGEPLANE_LB_BACKENDS),
    },
    xdpMode: xdpMode as AgentConfig['xdpMode'],
    tcAttach: tcAttach as AgentConfig['tcAttach'],
    heartbeatIntervalMs: num('heartbeat-interval', values['heartbeat-interval'], 60) * 1000,
    counterIntervalMs: num('counter-interval', values['counter-interval'], 5) * 1000,
    interfaceCheckMs: num('interface-check', values['interface-check'], 2) * 1000,
    ...(otlp ? { otlpEndpoint: otlp } : {}),
    ...(prom ? { prometheusPort: num('prometheus-port', prom, 0) } : {}),
  };
}

/**
 * The labels and fleet an enrolled node runs with: exactly the labels bound at enrollment (the
 * controller refuses a hello with others, LABELS_MISMATCH) and the fleet it enrolled in.
 * @throws AgentConfigError if --labels or --fleet-id are given and disagree with the enrollment.
 */
export function enrolledSettings(config: Pick<AgentConfig, 'labels' | 'fleetId'>, creds: Pick<NodeCredentials, 'labels' | 'fleetId'>): { labels: Record<string, string>; fleetId: string | undefined } {
  const fmt = (l: Record<string, string>): string => Object.entries(l).sort().map(([k, v]) => `${k}=${v}`).join(',') || '(none)';
  if (Object.keys(config.labels).length > 0 && fmt(config.labels) !== fmt(creds.labels)) {
    throw new AgentConfigError(`--labels ${fmt(config.labels)}: this node enrolled with labels ${fmt(creds.labels)}; an enrolled node's labels are bound at enrollment and only an admin changes them (edgeplane node label); drop --labels or give exactly those`);
  }
  if (config.fleetId && creds.fleetId && config.fleetId !== creds.fleetId) {
    throw new AgentConfigError(`--fleet-id ${config.fleetId}: this node enrolled in fleet ${creds.fleetId}; drop --fleet-id or enroll again (new state directory)`);
  }
  return { labels: { ...creds.labels }, fleetId: creds.fleetId || config.fleetId };
}
