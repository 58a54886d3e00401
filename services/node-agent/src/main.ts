#!/usr/bin/env node
// The agent process: the only place concrete adapters (NATS, gRPC, the eBPF datapath, the
// OpenTelemetry SDK) are constructed and wired together.
import { readFileSync, realpathSync } from 'node:fs';
import { release, hostname } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { randomUUID } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { InterfaceRole as ProtoRole, RevisionOutcome, keyIdOf, type NodeInterface } from '@edgeplane/proto';
import { IntentLog } from '@edgeplane/intent-log';
import { startTelemetry } from '@edgeplane/telemetry';
import { AGENT_HELP, AgentConfigError, parseAgentConfig, type AgentConfig } from './agent/config.js';
import { ensureBpffs } from './agent/bpffs.js';
import { ControllerLink } from './agent/controller-link.js';
import { enrollNode, loadNodeCredentials, NodeIdentity } from './agent/node-identity.js';
import { IntentFollower } from './agent/intent-follower.js';
import { NodeAgent, type AgentLogger } from './agent/node-agent.js';
import { StateFile } from './agent/state-file.js';
import type { Datapath } from './datapath/datapath.js';
import { EbpfDatapath, type InterfaceRole } from './datapath/ebpf-datapath.js';
import { MemoryDatapath } from './datapath/memory-datapath.js';
import { agentNatsOptions } from './agent/nats-connect-options.js';

const VERSION = '0.1.0';

const log: AgentLogger = (level, msg, fields = {}) => process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level, msg, ...fields }) + '\n');

function staticCredentials(config: AgentConfig): grpc.ChannelCredentials | undefined {
  if (config.insecure) return grpc.credentials.createInsecure();
  if (!config.tlsCa) return undefined;
  return grpc.credentials.createSsl(readFileSync(config.tlsCa), config.tlsKey ? readFileSync(config.tlsKey) : null, config.tlsCert ? readFileSync(config.tlsCert) : null);
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
    creds = await enrollNode({ address: config.controller, token: config.joinToken, caFingerprint: config.caFingerprint, nodeName: config.nodeName, stateDir: config.stateDir });
    log('info', 'enrolled', { node: creds.nodeName, notAfter: creds.notAfter.toISOString() });
  }
  const identity = new NodeIdentity(creds, {
    address: config.controller,
    stateDir: config.stateDir,
    onRenewed: (notAfter) => log('info', 'node certificate renewed', { notAfter: notAfter.toISOString() }),
    onError: (message, err) => log('error', message, { error: (err as Error).message }),
  });
  identity.start();
  return identity;
}

async function run(config: AgentConfig): Promise<() => Promise<void>> {
  const telemetry = await startTelemetry({
    serviceName: 'edgeplane-agent',
    serviceInstanceId: config.nodeName,
    ...(config.otlpEndpoint ? { otlpEndpoint: config.otlpEndpoint } : {}),
    ...(config.prometheusPort !== undefined ? { prometheusPort: config.prometheusPort } : {}),
  });
  const closers: (() => unknown)[] = [() => telemetry.shutdown()];
  const shutdown = async (): Promise<void> => {
    for (const c of closers.reverse()) await Promise.resolve(c()).catch((err: unknown) => log('error', 'shutdown step', { error: String(err) }));
  };
  try {
    // The datapath first: enforcement must not wait for the network.
    let datapaths: Record<InterfaceRole, Datapath>;
    const ebpf: Partial<Record<InterfaceRole, EbpfDatapath>> = {};
    if (config.datapath === 'ebpf') {
      ensureBpffs(config.pinRoot);
      for (const role of ['uplink', 'workload'] as const) {
        const { mkdirSync } = await import('node:fs');
        mkdirSync(join(config.pinRoot, role), { recursive: true });
        const dp = await EbpfDatapath.open({ pinRoot: join(config.pinRoot, role) });
        closers.push(() => dp.close()); // closes fds only: programs stay attached and pinned
        ebpf[role] = dp;
        log('info', `${dp.adopted ? 'adopted' : 'loaded'} ${role} datapath`, { xdpProgramId: dp.xdpProgram.id, tcProgramId: dp.tcProgram.id });
      }
      datapaths = { uplink: ebpf.uplink!, workload: ebpf.workload! };
    } else {
      const memory = new MemoryDatapath();
      datapaths = { uplink: memory, workload: memory };
    }

    const attached = new Map<string, boolean>();
    const checkInterfaces = (): void => {
      for (const { name, role } of config.interfaces) {
        const dp = ebpf[role];
        if (!dp) continue;
        try {
          if (!dp.isAttached(name, role)) {
            dp.attach(name, role, { xdpMode: config.xdpMode });
            log('info', 'attached', { interface: name, role });
          }
          attached.set(name, true);
        } catch (err) {
          if (attached.get(name) !== false) log('warn', 'interface not ready', { interface: name, role, error: (err as Error).message, cause: String((err as Error).cause ?? '') });
          attached.set(name, false);
        }
      }
    };
    checkInterfaces();
    const watcher = setInterval(checkInterfaces, config.interfaceCheckMs);
    closers.push(() => clearInterval(watcher));

    // The node's identity (enrollment needs the network only on a first start, when there is no
    // applied state to enforce yet); the join token's labels join the configured ones.
    let channelCredentials = staticCredentials(config);
    let labels = config.labels;
    let enrolled: (() => { natsJwt: string; natsSeed: string }) | undefined;
    if (!channelCredentials) {
      const identity = await nodeIdentity(config);
      enrolled = () => identity.credentials;
      closers.push(() => identity.close());
      channelCredentials = identity.channelCredentials();
      labels = { ...identity.credentials.labels, ...config.labels };
    }
    const trusted = new Map(config.trustedKeys.map((k) => [keyIdOf(k), k]));
    const nats = agentNatsOptions(config, enrolled); // read the credential files now: a bad one stops the start
    // The agent reports through the link, and the link's hello reads the agent: tie the knot.
    const linkRef: { link?: ControllerLink } = {};
    const agent = new NodeAgent({
      nodeName: config.nodeName,
      labels,
      datapaths,
      stateFile: new StateFile(join(config.stateDir, 'applied.json')),
      report: (r) => linkRef.link?.report(r),
      log,
    });
    const booted = await agent.boot();

    const sessionId = randomUUID();
    const interfaces = (): NodeInterface[] =>
      config.interfaces.map(({ name, role }) => {
        const dp = ebpf[role];
        let ok = false;
        try {
          ok = dp?.isAttached(name, role) ?? false;
        } catch {
          ok = false;
        }
        return {
          name,
          ifindex: 0,
          role: role === 'uplink' ? ProtoRole.INTERFACE_ROLE_UPLINK : ProtoRole.INTERFACE_ROLE_WORKLOAD,
          attachMode: role === 'uplink' ? `xdp-${config.xdpMode}` : 'tc',
          attached: ok,
          programId: dp ? (role === 'uplink' ? dp.xdpProgram.id : dp.tcProgram.id) : 0,
        };
      });
    const link = new ControllerLink({
      address: config.controller,
      credentials: channelCredentials,
      heartbeatIntervalMs: config.heartbeatIntervalMs,
      counterIntervalMs: config.counterIntervalMs,
      hello: () => ({
        nodeName: config.nodeName,
        labels,
        info: { agentVersion: VERSION, kernelRelease: release(), hostname: hostname(), datapath: config.datapath, capabilities: { xdpNative: true, xdpGeneric: true, tc: true, maxRules: 65_536, ipv6: true } },
        interfaces: interfaces(),
        receivedRevision: agent.status.received,
        appliedRevision: agent.status.applied,
        sessionId,
        conditions: [],
        appliedUnknown: false,
      }),
      counters: () => agent.counterDeltas(),
      onStateChange: (up, reason) => log('info', up ? 'controller connected' : 'controller disconnected', { reason }),
    });
    linkRef.link = link;
    link.start();
    closers.push(() => link.close());

    process.stdout.write(
      JSON.stringify({
        event: 'ready',
        node: config.nodeName,
        applied: String(agent.status.applied),
        xdpProgramId: ebpf.uplink?.xdpProgram.id ?? 0,
        tcProgramId: ebpf.workload?.tcProgram.id ?? 0,
        adopted: ebpf.uplink?.adopted ?? false,
      }) + '\n',
    );

    // NATS last, in the background: it may be down for a long time; the datapath does not care.
    let nc: NatsConnection | undefined;
    let follower: IntentFollower | undefined;
    let stopped = false;
    closers.push(async () => {
      stopped = true;
      follower?.close();
      await nc?.drain().catch(() => nc?.close());
    });
    void (async () => {
      if (nats.anonymous) log('warn', 'no NATS credentials (--nats-creds): connecting anonymously, which an edgeplane NATS server refuses');
      nc = await connect(nats.options);
      if (stopped) return nc.close();
      log('info', 'nats connected', { server: nc.getServer() });
      let intentLog: IntentLog | undefined;
      for (let attempt = 0; !intentLog && !stopped; attempt++) {
        try {
          intentLog = await IntentLog.open(nc, { create: false });
        } catch (err) {
          if (attempt === 0) log('warn', 'intent log not available yet', { error: (err as Error).message });
          await new Promise((r) => setTimeout(r, Math.min(5000, 250 * 2 ** attempt)));
        }
      }
      if (!intentLog || stopped) return;
      follower = new IntentFollower(
        intentLog,
        trusted,
        {
          advanced: (_revision, entries) => agent.intentAdvanced(follower!.chain, entries),
          rejected: (reason, claimed) => {
            log('warn', 'rejected log message', { reason, claimedRevision: claimed === undefined ? undefined : String(claimed) });
            link.report({ revision: claimed ?? 0n, outcome: RevisionOutcome.REVISION_OUTCOME_NACK, reason: `rejected log message: ${reason}`, appliedRevision: agent.status.applied, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: false });
          },
          resynced: (from, to, reason) => log('warn', 'resynced the intent log', { from: String(from), to: String(to), reason }),
          error: (message, err) => log('error', message, { error: (err as Error)?.message }),
        },
        booted,
      );
      for (;;) {
        try {
          await follower.start();
          break;
        } catch (err) {
          log('warn', 'catch up failed; retrying', { error: (err as Error).message });
          await new Promise((r) => setTimeout(r, 1000));
        }
      }
      for await (const s of nc.status()) {
        if (s.type === 'reconnect') {
          log('info', 'nats reconnected');
          await follower.catchUp().catch((err: unknown) => log('warn', 'catch up after reconnect', { error: (err as Error).message }));
        } else if (s.type === 'disconnect') log('warn', 'nats disconnected');
      }
    })().catch((err: unknown) => log('error', 'intent sync stopped', { error: (err as Error).message }));
    return shutdown;
  } catch (err) {
    await shutdown();
    throw err;
  }
}

async function main(): Promise<void> {
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
  let shutdown: () => Promise<void>;
  try {
    shutdown = await run(config);
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
    void shutdown().then(() => process.stdout.write(JSON.stringify({ event: 'stopped' }) + '\n'));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

const invoked = process.argv[1] ? realpathSync(process.argv[1]) : '';
if (invoked === fileURLToPath(import.meta.url)) void main();
