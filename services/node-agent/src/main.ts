#!/usr/bin/env node
// The agent process: the only place concrete adapters (NATS, gRPC, the eBPF datapath, the
// OpenTelemetry SDK) are constructed and wired together.
import { mkdirSync, readFileSync, realpathSync } from 'node:fs';
import { release, hostname } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { keyIdOf, quietIpServernameWarning } from '@edgeplane/proto';
import { ifindex as interfaceIndex, trimNativeHeap } from 'libbpf-ts';
import { startTelemetry } from '@edgeplane/telemetry';
import { AgentRuntime, type InterfaceAttacher } from './agent/agent-runtime.js';
import { observeBlocklists } from './agent/blocklist-metrics.js';
import { AGENT_HELP, AgentConfigError, enrolledSettings, parseAgentConfig, type AgentConfig } from './agent/config.js';
import { ensureBpffs } from './agent/bpffs.js';
import { controlTargets, resolveControlEndpoints } from './agent/control-endpoints.js';
import type { AgentLogger } from './agent/node-agent.js';
import { agentNatsOptions } from './agent/nats-connect-options.js';
import { trimAfterMajorCollections } from './agent/native-heap.js';
import { enrollNode, loadNodeCredentials, NodeIdentity, type NodeCredentials } from './agent/node-identity.js';
import { StateFile } from './agent/state-file.js';
import { UplinkSysctls } from './agent/uplink-sysctls.js';
import { VerifiedHead } from './agent/verified-head.js';
import type { Datapath } from './datapath/datapath.js';
import { ConntrackSweeper } from './datapath/conntrack-sweeper.js';
import { TableCompilers } from './datapath/compile-tables.js';
import { EbpfDatapath } from './datapath/ebpf-datapath.js';
import type { InterfaceRole } from './datapath/interface-role.js';
import { MemoryDatapath } from './datapath/memory-datapath.js';
import { NO_LB_CAPACITY } from './datapath/lb-tables.js';
import { LAYOUT_VERSION } from './datapath/pin-layout.js';
import type { LbSpec } from './datapath/service-compile.js';

const VERSION = '0.1.0';

/** V8's collector, present when node runs with --expose-gc. */
declare const gc: (() => void) | undefined;

const log: AgentLogger = (level, msg, fields = {}) => process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields }) + '\n');

/** Credentials given on the command line (--insecure, or --tls-ca with an optional client pair); undefined when the node uses its enrolled identity. */
function staticCredentials(config: AgentConfig): grpc.ChannelCredentials | undefined {
  if (config.insecure) return grpc.credentials.createInsecure();
  if (!config.tlsCa) return undefined;
  return grpc.credentials.createSsl(readFileSync(config.tlsCa), config.tlsKey ? readFileSync(config.tlsKey) : null, config.tlsCert ? readFileSync(config.tlsCert) : null);
}

/**
 * Enrolls at the first controller replica that answers: one that cannot be reached (the
 * enrollment's cause is not a gRPC status) is skipped; a refusal (a used or bad token) is final.
 * @throws EnrollmentError from the last replica tried.
 */
async function enrollAtAny(config: AgentConfig): Promise<NodeCredentials> {
  let last: unknown;
  for (const address of config.controllers) {
    try {
      return await enrollNode({ address, token: config.joinToken!, caFingerprint: config.caFingerprint!, nodeName: config.nodeName, stateDir: config.stateDir });
    } catch (err) {
      last = err;
      const code = ((err as Error).cause as { code?: unknown } | undefined)?.code;
      if (typeof code === 'number' && code !== grpc.status.UNAVAILABLE && code !== grpc.status.DEADLINE_EXCEEDED) throw err;
      log('warn', 'enrollment: controller unreachable; trying the next', { controller: address, error: (err as Error).message });
    }
  }
  throw last;
}

/**
 * The node's enrolled identity: loaded from STATE_DIR/identity, or enrolled now with the join
 * token; renewal starts. The caller closes it.
 */
async function nodeIdentity(config: AgentConfig): Promise<NodeIdentity> {
  let creds = loadNodeCredentials(config.stateDir);
  if (creds && creds.nodeName !== config.nodeName) throw new AgentConfigError(`STATE_DIR/identity belongs to node ${creds.nodeName}, not ${config.nodeName}`);
  if (!creds) {
    if (!config.joinToken || !config.caFingerprint) throw new AgentConfigError('this node is not enrolled: give --join-token and --ca-fingerprint');
    creds = await enrollAtAny(config);
    log('info', 'enrolled', { node: creds.nodeName, notAfter: creds.notAfter.toISOString() });
  }
  const identity = new NodeIdentity(creds, {
    address: config.controllers,
    stateDir: config.stateDir,
    onRenewed: (notAfter) => log('info', 'node certificate renewed', { notAfter: notAfter.toISOString() }),
    onError: (message, err) => log('error', message, { error: (err as Error).message }),
  });
  identity.start();
  return identity;
}

/** The interface attacher over the eBPF datapaths of each role. */
function ebpfAttacher(ebpf: Record<InterfaceRole, EbpfDatapath>, xdpMode: AgentConfig['xdpMode']): InterfaceAttacher {
  return {
    ensureAttached(iface, role) {
      if (ebpf[role].isAttached(iface, role, { xdpMode })) return false;
      ebpf[role].attach(iface, role, { xdpMode });
      return true;
    },
    isAttached: (iface, role) => ebpf[role].isAttached(iface, role, { xdpMode }),
    programId: (role) => (role === 'uplink' && xdpMode !== 'tc' ? ebpf.uplink.xdpProgram.id : ebpf[role].tcProgram.id),
    attachMode: (iface, role) => ebpf[role].attachMode(iface, role),
    ifindex: (iface) => interfaceIndex(iface),
  };
}

/** The uplinks' settings for IPv4 DSR and full NAT (UplinkSysctls), the values to restore kept in the state directory. */
function uplinkSysctls(config: AgentConfig, log: AgentLogger): (lb: LbSpec | undefined) => void {
  const sysctls = new UplinkSysctls({ uplinks: config.interfaces.filter((i) => i.role === 'uplink').map((i) => i.name), savedFile: join(config.stateDir, 'uplink-sysctls.json'), log });
  return (lb) => sysctls.follow(lb);
}

/** A started agent: how to stop it, and the line that says it is ready (for main to write once it can be stopped gracefully). */
interface Started {
  shutdown: () => Promise<void>;
  ready: string;
}

async function run(config: AgentConfig): Promise<Started> {
  const telemetry = await startTelemetry({
    serviceName: 'edgeplane-agent',
    serviceInstanceId: config.nodeName,
    ...(config.otlpEndpoint ? { otlpEndpoint: config.otlpEndpoint } : {}),
    ...(config.prometheusPort !== undefined ? { prometheusPort: config.prometheusPort } : {}),
  });
  // glibc's free pages back after each of V8's major collections (agent/native-heap.ts).
  const closers: (() => unknown)[] = [() => telemetry.shutdown(), trimAfterMajorCollections({ trim: trimNativeHeap, delayMs: 2_000 })];
  const shutdown = async (): Promise<void> => {
    for (const c of closers.reverse()) await Promise.resolve(c()).catch((err: unknown) => log('error', 'shutdown step', { error: String(err) }));
  };
  try {
    // The datapath first: enforcement must not wait for the network.
    let datapaths: Record<InterfaceRole, Datapath>;
    let ebpf: Record<InterfaceRole, EbpfDatapath> | undefined;
    if (config.datapath === 'ebpf') {
      ensureBpffs(config.pinRoot);
      const opened: Partial<Record<InterfaceRole, EbpfDatapath>> = {};
      // One rule set object applied to both roles is compiled, and held in memory, once.
      const compilers = new TableCompilers();
      for (const role of ['uplink', 'workload'] as const) {
        const pinRoot = join(config.pinRoot, role);
        mkdirSync(pinRoot, { recursive: true });
        if (config.resetDatapath) log('warn', `reset ${role} datapath: counters, token buckets and connection table are lost`, { ...EbpfDatapath.reset(pinRoot) });
        const dp = await EbpfDatapath.open({
          pinRoot,
          ctEntries: config.ctEntries,
          ctNewEntries: config.ctNewEntries,
          ct4Slots: config.ct4Slots,
          conntrack: config.conntrack,
          // Services are DNATed at the uplink's XDP hook: only its maps are sized by --lb-*; a
          // workload datapath never fronts a service and takes the smallest maps.
          lbCapacity: role === 'uplink' ? config.lbCapacity : NO_LB_CAPACITY,
          ...(config.tcAttach === 'auto' ? {} : { tcAttach: config.tcAttach }),
          onInstallStep: (step) => log('info', `${role} datapath install: ${step}`),
          compilers,
        });
        closers.push(() => dp.close()); // closes fds only: programs stay attached and pinned
        // Expired connection entries of flows that simply stopped leave the table here.
        const sweeper = new ConntrackSweeper(dp, { onError: (error) => log('warn', 'conntrack sweep', { role, error: String(error) }) });
        closers.push(() => sweeper.close());
        opened[role] = dp;
        const install = dp.install;
        log('info', `${dp.adopted ? 'adopted' : install?.fromVersion === undefined ? 'loaded' : `upgraded (layout ${install.fromVersion} to ${LAYOUT_VERSION})`} ${role} datapath`, {
          xdpProgramId: dp.xdpProgram.id,
          tcProgramId: dp.tcProgram.id,
          ...(install === undefined ? {} : { reusedMaps: install.reusedMaps, createdMaps: install.createdMaps, migratedMaps: install.migratedMaps, switched: install.switched }),
        });
      }
      ebpf = { uplink: opened.uplink!, workload: opened.workload! };
      // The control bypass (bpf/CONNTRACK.md step 2): no policy and no full connection table cuts
      // this node off its controller and NATS. Resolved in the background (enforcement does not
      // wait for DNS), retried until it works, refreshed every 10 minutes.
      const uplink = ebpf.uplink;
      const targets = controlTargets(config.controllers, config.natsServers);
      let controlTimer: NodeJS.Timeout | undefined;
      const refreshControl = (): void => {
        resolveControlEndpoints(targets)
          .then((endpoints) => {
            uplink.setControlEndpoints(endpoints);
            log('info', 'control endpoints set', { endpoints: endpoints.map((e) => `${e.addr}:${e.port}`) });
            controlTimer = setTimeout(refreshControl, 600_000);
          })
          .catch((error: unknown) => {
            log('warn', 'control endpoints: retrying in 10 s', { error: String(error) });
            controlTimer = setTimeout(refreshControl, 10_000);
          })
          .finally(() => controlTimer?.unref());
      };
      refreshControl();
      closers.push(() => clearTimeout(controlTimer));
      datapaths = ebpf;
    } else {
      const memory = new MemoryDatapath({ lbCapacity: config.lbCapacity });
      datapaths = { uplink: memory, workload: memory };
    }

    // The node's identity. Enrollment needs the network only on a first start, when there is no
    // applied state to enforce yet; afterwards the credentials are read from the state dir.
    // An enrolled node's labels and fleet are those bound at enrollment (see enrolledSettings).
    let channelCredentials = staticCredentials(config);
    let labels = config.labels;
    let fleetId = config.fleetId;
    let identity: NodeIdentity | undefined;
    let enrolled: (() => { natsJwt: string; natsSeed: string; caPem: string }) | undefined;
    if (!channelCredentials) {
      const id = (identity = await nodeIdentity(config));
      enrolled = () => id.credentials;
      closers.push(() => id.close());
      channelCredentials = id.channelCredentials();
      ({ labels, fleetId } = enrolledSettings(config, id.credentials));
    }
    const nats = agentNatsOptions(config, enrolled); // reads the credential files now: a bad one stops the start
    if (nats.anonymous) log('warn', 'no NATS credentials (--nats-creds, or enrollment): connecting anonymously, which an edgeplane NATS server refuses');

    const runtime = await AgentRuntime.start({
      nodeName: config.nodeName,
      labels,
      datapaths,
      ...(ebpf ? { blocklists: ebpf.uplink === ebpf.workload ? [ebpf.uplink.blocklist] : [ebpf.uplink.blocklist, ebpf.workload.blocklist] } : {}),
      stateFile: new StateFile(join(config.stateDir, 'applied.json')),
      interfaces: config.interfaces,
      ...(ebpf ? { attacher: ebpfAttacher(ebpf, config.xdpMode) } : {}),
      interfaceCheckMs: config.interfaceCheckMs,
      natsServers: config.natsServers,
      natsOptions: nats.options,
      trustedKeys: new Map(config.trustedKeys.map((k) => [keyIdOf(k), k])),
      resetKeys: new Map(config.resetKeys.map((k) => [keyIdOf(k), k])),
      ...(fleetId ? { fleetId } : {}),
      ...(identity
        ? {
            // An admin changed the node's labels (edgeplane node label): the runtime compiles for
            // them at once; keep them with the credentials for the next start.
            onEnrolledLabels: (l: Record<string, string>) => {
              if (identity.adoptLabels(l)) log('info', 'stored the node labels the controller bound', { labels: l });
            },
          }
        : {}),
      staleAfterMs: config.staleAfterMs,
      verifiedHead: new VerifiedHead(join(config.stateDir, 'verified-head.json')),
      controller: { address: config.controllers, credentials: channelCredentials },
      info: { agentVersion: VERSION, kernelRelease: release(), hostname: hostname(), datapath: config.datapath, capabilities: { xdpNative: true, xdpGeneric: true, tc: true, maxRules: 65_536, ipv6: true } },
      sessionId: randomUUID(),
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      counterIntervalMs: config.counterIntervalMs,
      // A full collection after a large apply (node --expose-gc, as bin/edgeplane-agent runs it):
      // an idle agent would otherwise hold the apply's garbage indefinitely. Then glibc's free
      // pages go back too: what the collection freed outside V8's heap (buffers, the native side
      // of map writes) stays resident in malloc's arenas otherwise (bench/README.md, "agent").
      ...(typeof gc === 'function'
        ? {
            reclaim: () => {
              gc!();
              trimNativeHeap();
            },
          }
        : {}),
      // IPv4 DSR and full NAT need accept_local (and no strict rp_filter) on the uplinks: set
      // before such a service is applied, restored when the last one goes (bpf/LB.md).
      ...(ebpf ? { prepareUplink: uplinkSysctls(config, log) } : {}),
      log,
    });
    closers.push(() => runtime.close());
    if (ebpf) {
      const roles = ebpf.uplink === ebpf.workload ? [{ role: 'uplink', tables: ebpf.uplink.blocklist }] : [{ role: 'uplink', tables: ebpf.uplink.blocklist }, { role: 'workload', tables: ebpf.workload.blocklist }];
      closers.push(observeBlocklists(config.nodeName, roles));
    }

    const ready = JSON.stringify({
      event: 'ready',
      node: config.nodeName,
      applied: String(runtime.status.applied),
      xdpProgramId: ebpf?.uplink.xdpProgram.id ?? 0,
      tcProgramId: ebpf?.workload.tcProgram.id ?? 0,
      adopted: ebpf?.uplink.adopted ?? false,
    });
    return { shutdown, ready };
  } catch (err) {
    await shutdown();
    throw err;
  }
}

async function main(): Promise<void> {
  quietIpServernameWarning();
  let config;
  try {
    config = parseAgentConfig(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`edgeplane-agent: ${(err as Error).message}\nRun with --help for usage.\n`);
    process.exitCode = 2;
    return;
  }
  if (config === 'help') {
    process.stdout.write(AGENT_HELP + '\n');
    return;
  }
  let started: Started;
  try {
    started = await run(config);
  } catch (err) {
    process.stderr.write(`edgeplane-agent: start failed: ${(err as Error).message}${(err as Error).cause ? ` (${String((err as Error).cause)})` : ''}\n`);
    process.exitCode = err instanceof AgentConfigError ? 2 : 1;
    return;
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    log('info', `${signal}: stopping (programs stay attached)`);
    void started.shutdown().then(() => process.stdout.write(JSON.stringify({ event: 'stopped' }) + '\n'));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // Ready only once a SIGTERM stops it gracefully: a supervisor may signal it as soon as it
  // reads this line, and until a listener exists the signal's default action ends the process.
  process.stdout.write(started.ready + '\n');
}

const invoked = process.argv[1] ? realpathSync(process.argv[1]) : '';
if (invoked === fileURLToPath(import.meta.url)) void main();
