#!/usr/bin/env node
// The controller process: the only place concrete adapters (NATS, JetStream, gRPC, the
// OpenTelemetry SDK, an embedded nats-server) are constructed and wired together.
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { randomUUID, X509Certificate } from 'node:crypto';
import { hostname } from 'node:os';
import { setFlagsFromString } from 'node:v8';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { Kvm } from '@nats-io/kv';
import { DEFAULT_POLICY_LIMITS, NODE_REGISTRY_BUCKET, REPLICAS_BUCKET, INTENT_STREAM, INTENT_SUBJECT, TRUST_BUCKET, keyIdOf, publicKeyFromRaw } from '@edgeplane/proto';
import { IntentLog, NatsServer, natsClientOptions, type NatsClientTls } from '@edgeplane/intent-log';
import { startTelemetry, type SpanProcessor, type Telemetry } from '@edgeplane/telemetry';
import { AgentSessions } from './agent-sessions.js';
import { parseConfig, HELP, type ControllerConfig } from './config.js';
import { CounterStore } from './counter-store.js';
import { ServiceHealthStore } from './service-health-store.js';
import { ConfigError, UnauthenticatedError, UnavailableError } from './errors.js';
import { FleetApi } from './fleet-api.js';
import { startGrpcServer, type GrpcServer } from './grpc/server.js';
import { Authorizer } from './grpc/authorize.js';
import { agentServiceHandlers, blocklistServiceHandlers, fleetServiceHandlers, intentServiceHandlers, trustServiceHandlers } from './grpc/services.js';
import { BlocklistApi } from './blocklist-api.js';
import { IntentApi } from './intent-api.js';
import { IntentStore } from './intent-store.js';
import { KvNodeStore } from './kv-node-store.js';
import { natsAccountPusher } from './nats-account-pusher.js';
import { NatsAuthority } from './nats-authority.js';
import { registerFleetMetrics } from './metrics.js';
import { RolloutManager } from './rollout-manager.js';
import { RolloutLease } from './rollout-lease.js';
import { ReplicaFleetSync } from './replica-fleet-sync.js';
import { ConnectionRelay } from './connection-relay.js';
import { watchStalls } from './stall-watch.js';
import { whenJetStreamReady } from './jetstream-ready.js';
import { NodeRegistry } from './node-registry.js';
import type { NatsCredentialIssuer } from './nats-credential-issuer.js';
import { generateKeyPair, loadOrCreateCertificateAuthority, writeFileAtomic, type CertificateAuthority, type IssuedCertificate } from './pki/certificate-authority.js';
import { checkNatsServerIdentity } from './pki/identity.js';
import { writeNatsServerCertificate } from './pki/nats-server-certificate.js';
import { FLEET_ID, isLoopback } from './config.js';
import { commitSigningKeyFile, loadOrCreateSigningKey, prepareNextSigningKey, retiredSigningKeys } from './signing-key.js';
import { TrustApi } from './trust-api.js';
import { TrustStore, normalizeSerial } from './trust-store.js';
import { startDashboard } from './dashboard/dashboard-server.js';

/**
 * How long a starting controller waits for a forming JetStream cluster to place its streams and
 * buckets (jetstream-ready.ts). Servers started together form a cluster in seconds; one that has
 * not formed in two minutes needs the operator, who then sees JetStream's own error.
 */
const JETSTREAM_READY_TIMEOUT_MS = 120_000;

/** A running controller. */
export interface RunningController {
  /** The gRPC address, host:port. */
  address: string;
  /** The NATS URL the controller uses (the embedded server's when it started one). */
  natsUrl: string;
  /** The raw Ed25519 public key agents must trust. */
  publicKey: Uint8Array;
  keyId: string;
  /** The fleet id agents must be given (--fleet-id). */
  fleetId: string;
  prometheusUrl: string | undefined;
  /** The dashboard's URL (--dashboard-listen), undefined when it is off. */
  dashboardUrl: string | undefined;
  /**
   * Issues and revokes node NATS credentials (enrollment uses it); undefined with --nats-anonymous.
   * Node connections then need the user JWT it returns and the node's own nkey seed.
   */
  natsCredentials: NatsCredentialIssuer | undefined;
  /** `sha256:<hex>` of the fleet CA certificate (agents' --ca-fingerprint). */
  caFingerprint: string;
  /** The fleet CA certificate, PEM. */
  caCertPem: string;
  /** Graceful stop: health NOT_SERVING, running calls get the grace period, then everything closes. Idempotent. */
  close(): Promise<void>;
}

/** Extra wiring for tests: span processors to receive the controller's spans. */
export interface StartExtras {
  spanProcessors?: SpanProcessor[];
  log?: (line: Record<string, unknown>) => void;
  /** Issues nodes' NATS credentials at enrollment and withdraws them at revocation. */
  natsCredentials?: NatsCredentialIssuer;
}

/**
 * On first start (no DATA_DIR/admin yet) writes an admin client certificate, its key (0600)
 * and the CA into DATA_DIR/admin, like kubeadm's admin.conf: the CLI's first credentials.
 */
async function writeAdminBundle(ca: CertificateAuthority, dataDir: string): Promise<{ dir: string; issued: IssuedCertificate } | undefined> {
  const dir = join(dataDir, 'admin');
  if (existsSync(join(dir, 'admin.pem'))) return undefined;
  const keys = generateKeyPair();
  const cert = await ca.issue({ identity: { fleet: ca.fleet, role: 'admin', name: 'admin' }, publicKey: keys.publicKeyDer, lifetimeMs: 365 * 86_400_000 });
  writeFileAtomic(join(dir, 'ca.pem'), ca.certPem, 0o644);
  writeFileAtomic(join(dir, 'admin-key.pem'), keys.privateKeyPem, 0o600);
  writeFileAtomic(join(dir, 'admin.pem'), cert.certPem, 0o644);
  return { dir, issued: cert };
}

/** The serving certificate chain: the one given, or one the CA issues now for this host. */
async function servingCertificate(config: ControllerConfig, ca: CertificateAuthority): Promise<{ certChainPem: string; keyPem: string }> {
  if (config.tlsCert && config.tlsKey) {
    try {
      return { certChainPem: readFileSync(config.tlsCert, 'utf8'), keyPem: readFileSync(config.tlsKey, 'utf8') };
    } catch (cause) {
      throw new ConfigError(`load TLS material: ${(cause as Error).message}`, { cause });
    }
  }
  const host = config.listen.slice(0, config.listen.lastIndexOf(':')).replace(/^\[|\]$/g, '');
  const names = new Set(['localhost', '127.0.0.1', '::1', hostname(), ...config.tlsSans]);
  if (host !== '0.0.0.0' && host !== '::') names.add(host);
  const isIp = (n: string): boolean => /^[0-9.]+$/.test(n) || n.includes(':');
  const keys = generateKeyPair();
  const issued = await ca.issue({
    identity: { fleet: ca.fleet, role: 'controller', name: identityName(config.controllerId, 'controller') },
    publicKey: keys.publicKeyDer,
    lifetimeMs: 365 * 86_400_000,
    dnsNames: [...names].filter((n) => !isIp(n)),
    ipAddresses: [...names].filter(isIp),
  });
  // The chain carries the CA so an enrolling agent can pin it by fingerprint.
  return { certChainPem: issued.certPem + ca.certPem, keyPem: keys.privateKeyPem };
}

/**
 * The fleet a CA certificate file names (`CN=edgeplane <fleet> CA`, as the controller and the
 * deploy README make it), or undefined when the file is missing, unreadable or names none
 * (loadOrCreateCertificateAuthority reports a bad file).
 */
function fleetOfCaFile(file: string): string | undefined {
  if (!existsSync(file)) return undefined;
  try {
    const named = /(?:^|,\s*)CN=edgeplane (\S+) CA(?:,|$)/.exec(new X509Certificate(readFileSync(file)).subject.replace(/\n/g, ', '))?.[1];
    return named !== undefined && FLEET_ID.test(named) ? named : undefined;
  } catch {
    return undefined;
  }
}

/** True when both files hold the same certificate (the first in each): false if either is unreadable. */
function sameCertificate(a: string, b: string): boolean {
  try {
    return new X509Certificate(readFileSync(a)).fingerprint256 === new X509Certificate(readFileSync(b)).fingerprint256;
  } catch {
    return false;
  }
}

/** An identity name (identity.ts) from a free-form id such as a controller id or host name. */
function identityName(id: string, fallback: string): string {
  return id.toLowerCase().replace(/[^a-z0-9._-]/g, '-').slice(0, 63).replace(/^[^a-z0-9]+|[^a-z0-9]+$/g, '') || fallback;
}

/**
 * The fleet id the embedded NATS server's certificate (and so the CA) is made for, before the
 * log can be read: --fleet-id, else DATA_DIR/fleet-id, else the fleet the existing CA names,
 * else a new id. Writes DATA_DIR/fleet-id when it was not there.
 * @throws ConfigError if DATA_DIR/fleet-id holds no valid fleet id or disagrees with --fleet-id.
 */
function embeddedFleetId(config: ControllerConfig): string {
  const file = join(config.dataDir, 'fleet-id');
  let stored: string | undefined;
  if (existsSync(file)) {
    stored = readFileSync(file, 'utf8').trim();
    if (!FLEET_ID.test(stored)) throw new ConfigError(`${file}: ${JSON.stringify(stored.slice(0, 80))} is not a fleet id`);
    if (config.fleetId && config.fleetId !== stored) throw new ConfigError(`--fleet-id ${config.fleetId}: ${file} names fleet ${stored}`);
  }
  const fromCa = !stored && !config.fleetId ? fleetOfCaFile(config.caCert) : undefined;
  const fleet = stored ?? config.fleetId ?? fromCa ?? randomUUID().toLowerCase();
  if (!stored) writeFileAtomic(file, fleet + '\n', 0o644);
  return fleet;
}

/**
 * Issues the embedded nats-server's certificate from the fleet CA (a NATS server identity named
 * after this controller; the DNS and IP names of this host for clients that check names) into
 * DATA_DIR/nats-tls. Returns the files for NatsServer's tls option.
 */
async function writeEmbeddedNatsCertificate(config: ControllerConfig, ca: CertificateAuthority): Promise<{ certFile: string; keyFile: string }> {
  const hosts = new Set(['localhost', '127.0.0.1', '::1', hostname(), ...config.tlsSans]);
  if (config.embeddedNatsHost !== '0.0.0.0' && config.embeddedNatsHost !== '::') hosts.add(config.embeddedNatsHost);
  const { certFile, keyFile } = await writeNatsServerCertificate(ca, { name: identityName(config.controllerId, 'nats'), hosts: [...hosts], dir: join(config.dataDir, 'nats-tls') });
  // No caFile: the server must not require client certificates (clients authenticate by JWT).
  return { certFile, keyFile };
}

/**
 * --issue-nats-cert: issues a NATS server certificate from the fleet CA (--ca-cert/--ca-key,
 * created like on a first start when neither file exists, for --fleet-id, else a new fleet) for
 * the names of --san (the first is the identity's name) into the directory. For deployments
 * whose NATS servers the controller does not start (deploy/compose/init-nats-secrets).
 * @returns what was written, for the operator.
 * @throws ConfigError for a bad CA, name or fleet; CertificateIssueError for a bad host name.
 */
async function issueNatsCertificate(config: ControllerConfig, dir: string): Promise<string> {
  const [name] = config.sans;
  if (!name || !FLEET_ID.test(name)) throw new ConfigError(`--san: the first name (${JSON.stringify((name ?? '').slice(0, 80))}) names the NATS server identity: a lower-case DNS-like name such as nats-1`);
  const fleet = config.fleetId ?? fleetOfCaFile(config.caCert) ?? randomUUID().toLowerCase();
  const { ca, created } = await loadOrCreateCertificateAuthority({ certFile: config.caCert, keyFile: config.caKey }, fleet);
  const files = await writeNatsServerCertificate(ca, { name, hosts: config.sans, dir });
  return `${created ? `created the fleet CA ${config.caCert} (fleet ${ca.fleet}, ${ca.fingerprint})\n` : ''}nats/${name} of fleet ${ca.fleet}: ${files.certFile} (key ${files.keyFile}, CA ${files.caFile}), names ${config.sans.join(', ')}\n`;
}

function logger(extra?: StartExtras['log']): (level: string, msg: string, fields?: Record<string, unknown>) => void {
  return (level, msg, fields = {}) => {
    const line = { time: new Date().toISOString(), level, msg, ...fields };
    if (extra) extra(line);
    else process.stderr.write(JSON.stringify(line) + '\n');
  };
}

/**
 * Starts a controller from its configuration. Whatever was started before a failing step is
 * closed again before the error is rethrown.
 * @throws ConfigError for bad configuration; other errors when NATS or the listener fail.
 */
export async function startController(config: ControllerConfig, extras: StartExtras = {}): Promise<RunningController> {
  const log = logger(extras.log);
  const onError = (message: string, err: unknown): void => log('error', message, { error: (err as Error)?.message ?? String(err) });
  const cleanups: (() => Promise<unknown>)[] = [];
  const cleanup = async (): Promise<void> => {
    for (const c of cleanups.reverse()) await c().catch((err: unknown) => onError('shutdown step', err));
    cleanups.length = 0;
  };
  try {
    const stopStallWatch = watchStalls((s) => log('warn', 'event loop stalled', { ms: s.ms, heapMiB: s.heapMiB }));
    cleanups.push(async () => stopStallWatch());
    const telemetry: Telemetry = await startTelemetry({
      serviceName: 'edgeplane-controller',
      serviceInstanceId: config.controllerId,
      ...(config.otlpEndpoint ? { otlpEndpoint: config.otlpEndpoint } : {}),
      ...(config.prometheusPort !== undefined ? { prometheusPort: config.prometheusPort, prometheusHost: config.prometheusHost } : {}),
      ...(extras.spanProcessors ? { spanProcessors: extras.spanProcessors } : {}),
    });
    cleanups.push(() => telemetry.shutdown());

    let natsServers = config.natsServers;
    const embeddedNats = natsServers.length === 0;
    // The embedded server serves TLS with a certificate from the fleet CA, so the CA (and the
    // fleet id it is made for) must exist before it starts: the fleet id is --fleet-id, else
    // DATA_DIR/fleet-id, else the CA's, else a new one written there. The log must agree (below).
    let ca: CertificateAuthority | undefined;
    // Servers with certificates from the fleet CA are verified by their NATS server identity
    // (spiffe://edgeplane/<fleet>/nats/<name>), not only by chain: node, people and controller
    // certificates chain to the same CA. Another CA (--nats-tls-ca) is checked by host name.
    let natsTls: NatsClientTls | undefined = config.natsTlsCa
      ? { caFile: config.natsTlsCa, ...(sameCertificate(config.natsTlsCa, config.caCert) ? { checkServerIdentity: checkNatsServerIdentity } : {}) }
      : undefined;
    const openCa = async (fleet: string): Promise<CertificateAuthority> => {
      const opened = await loadOrCreateCertificateAuthority({ certFile: config.caCert, keyFile: config.caKey }, fleet);
      if (opened.created) log('info', 'created the fleet CA', { cert: config.caCert, fingerprint: opened.ca.fingerprint });
      return opened.ca;
    };
    if (embeddedNats) ca = await openCa(embeddedFleetId(config));
    // The embedded server always runs with authorization; --nats-anonymous is for external ones.
    const anonymous = config.natsAnonymous && !embeddedNats;
    const authority = anonymous ? undefined : NatsAuthority.open(config.natsAuthDir);
    if (embeddedNats) {
      const natsDir = join(config.dataDir, 'nats');
      const tls = config.natsTlsCert ? { certFile: config.natsTlsCert, keyFile: config.natsTlsKey! } : await writeEmbeddedNatsCertificate(config, ca!);
      // Without --nats-tls-ca the controller's own connections trust the fleet CA, and only a NATS server identity from it.
      natsTls ??= { caFile: config.caCert, checkServerIdentity: checkNatsServerIdentity };
      const embedded = await NatsServer.start({
        dataDir: natsDir,
        host: config.embeddedNatsHost,
        port: config.embeddedNatsPort,
        configFragment: await authority!.serverConfig(join(natsDir, 'jwt')),
        tls,
        // Restarted when it dies; the connections below reconnect to it on their own.
        supervise: {
          onExit: (why) => log('error', 'embedded nats-server died; restarting it', { why }),
          onRestart: (pid) => log('info', 'embedded nats-server restarted', { pid }),
          onRestartFailed: (err) => log('error', 'embedded nats-server did not start; retrying', { error: err.message }),
        },
      });
      cleanups.push(() => embedded.close());
      natsServers = [embedded.url];
      log('info', 'started embedded nats-server', { url: embedded.url });
    }
    if (anonymous) log('warn', 'connecting to NATS without credentials (--nats-anonymous): any client of that server can write the log bus');
    const natsAuth = authority ? natsClientOptions({ ...(await authority.controllerCredentials(`controller ${config.controllerId}`)), ...(natsTls ? { tls: natsTls } : {}) }) : natsClientOptions(natsTls ? { tls: natsTls } : {});
    const nc: NatsConnection = await connect({ servers: natsServers, name: `edgeplane-controller ${config.controllerId}`, maxReconnectAttempts: -1, reconnectTimeWait: 500, timeout: 5000, noAsyncTraces: true, ...natsAuth });
    // noAsyncTraces: nats.js otherwise builds two Error objects per request for stack context
    // (about a tenth of the controller's CPU at 10,000 agents, bench/fleet.ts); only messages are logged.
    cleanups.push(() => nc.drain().catch(() => nc.close()));
    // While the log's bus is unreachable no write can succeed: health says NOT_SERVING then,
    // so load balancers and orchestrators see it (the gRPC server, once started, follows).
    let natsUp = true;
    let onNatsUp = (_up: boolean): void => undefined;
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type !== 'disconnect' && s.type !== 'reconnect') continue;
        log(s.type === 'disconnect' ? 'warn' : 'info', `nats ${s.type}`, { server: (s as { server?: string }).server });
        natsUp = s.type === 'reconnect';
        onNatsUp(natsUp);
      }
    })();

    if (authority) {
      // A system-account connection pushes account JWT updates (node revocations).
      const sys = await connect({ servers: natsServers, name: `edgeplane-controller-system ${config.controllerId}`, maxReconnectAttempts: -1, reconnectTimeWait: 500, timeout: 5000, noAsyncTraces: true, ...natsClientOptions({ ...(await authority.systemCredentials()), ...(natsTls ? { tls: natsTls } : {}) }) });
      cleanups.push(() => sys.drain().catch(() => sys.close()));
      authority.usePusher(natsAccountPusher(sys));
      // Revocations recorded while no server was told (a failed push, servers restored from
      // an old configuration) take effect now.
      await authority.publishAccount().catch((err: unknown) => onError('push nats account jwt at start', err));
    }

    let key = loadOrCreateSigningKey(config.signingKey);
    // Streams and buckets are placed once the cluster has formed (deploy/compose starts it with us).
    const ready = <T>(what: string, open: () => Promise<T>): Promise<T> =>
      whenJetStreamReady(what, open, { timeoutMs: JETSTREAM_READY_TIMEOUT_MS, onRetry: (w, err, attempt) => log('warn', 'waiting for the JetStream cluster to form; retrying', { what: w, attempt, error: err.message }) });
    const intentLog = await ready('intent log', () => IntentLog.open(nc, { create: true, replicas: config.streamReplicas }));
    // A new log takes the fleet of the CA when it names one (deploy/compose makes the CA first).
    const fleetId = await intentLog.fleetId(ca?.fleet ?? config.fleetId ?? fleetOfCaFile(config.caCert) ?? randomUUID().toLowerCase());
    if (config.fleetId && fleetId !== config.fleetId) throw new ConfigError(`--fleet-id ${config.fleetId}: the log belongs to fleet ${fleetId}`);
    if (ca && fleetId !== ca.fleet) throw new ConfigError(`the log belongs to fleet ${fleetId} but the fleet CA and ${join(config.dataDir, 'fleet-id')} name fleet ${ca.fleet}; start with --fleet-id ${fleetId} and a CA made for it`);
    if (!FLEET_ID.test(fleetId)) throw new ConfigError(`the log's fleet id ${JSON.stringify(fleetId)} is not a lower-case name and cannot name certificate identities; start a new log with a lower-case --fleet-id`);
    // One fleet identity: the CA issues identities in the log's fleet (spiffe://edgeplane/<fleet-id>/...).
    ca ??= await openCa(fleetId);
    const adminBundle = await writeAdminBundle(ca, config.dataDir);
    if (adminBundle) log('info', 'wrote the admin client certificate (keep it safe)', { dir: adminBundle.dir });
    if (config.insecure) {
      log('warn', 'INSECURE: plaintext gRPC without authentication on loopback; every caller is an admin and may speak for any node (development and tests only)', { listen: config.listen });
      if (!isLoopback(config.listen.slice(0, config.listen.lastIndexOf(':')))) throw new ConfigError('--insecure is refused on a non-loopback address');
    }

    const store = new IntentStore(intentLog, {
      controllerId: config.controllerId,
      fleetId,
      signingKey: key.privateKey,
      trusted: new Map([[key.keyId, publicKeyFromRaw(key.publicKey)], ...retiredSigningKeys(config.signingKey).map((k) => [keyIdOf(k), k] as const)]),
      snapshotEvery: config.snapshotEvery,
      patchRatio: config.patchRatio,
      headIntervalMs: config.logHeartbeatMs,
      retainEntries: config.retainEntries,
      onError,
      onWarning: (msg, fields) => log('warn', msg, fields),
    });
    await store.start();
    cleanups.push(() => store.close());
    if (config.rotateSigningKey) {
      // The next key is on disk before the entry that introduces it: a crash in between leaves
      // a .next file and the old key, which still signs (the rotation is simply done again).
      const next = prepareNextSigningKey(config.signingKey);
      const revision = await store.rotateKey(next.privateKey);
      commitSigningKeyFile(config.signingKey, key);
      log('info', 'rotated the log signing key', { from: key.keyId, to: next.keyId, revision: String(revision) });
      key = next;
    }
    // A reconnect may have missed live entries: catch up from the stream.
    void (async () => {
      for await (const s of nc.status()) if (s.type === 'reconnect') await store.catchUp().catch((err: unknown) => onError('catch up after reconnect', err));
    })();

    const kv = await ready(NODE_REGISTRY_BUCKET, () => new Kvm(nc).create(NODE_REGISTRY_BUCKET, { history: 1, replicas: config.streamReplicas }));
    const registry = new NodeRegistry(new KvNodeStore(kv), { onError });
    await registry.load();
    cleanups.push(() => registry.close());
    const trustKv = await ready(TRUST_BUCKET, () => new Kvm(nc).create(TRUST_BUCKET, { history: 1, replicas: config.streamReplicas }));
    const trustStore = new TrustStore(trustKv);
    await trustStore.start(onError);
    cleanups.push(async () => trustStore.close());
    if (adminBundle) {
      // The first admin certificate is listed and revocable like every other one.
      const { issued } = adminBundle;
      await trustStore.recordCertificate({ serial: normalizeSerial(issued.serialNumber)!, role: 'admin', name: issued.identity.name, notAfter: Math.floor(issued.notAfter.getTime() / 1000) * 1000, issuedAt: Date.now(), issuedBy: 'controller' });
    }
    const counters = new CounterStore();
    // What the agents said of their backends: those connected here, and the other replicas' (ReplicaFleetSync).
    const serviceHealth = { store: new ServiceHealthStore(), service: (name: string) => store.chain.services.get(name) };
    registerFleetMetrics(telemetry.meter('@edgeplane/controller'), { counters, registry, revision: () => store.chain.revision });
    // Replicas share what their agents say (node status, counters, backend health) and take
    // turns running the rollout manager, through one controller-only bucket (README, Replicas).
    // A single controller runs the same code: it simply never hears another replica.
    const replicasKv = await ready(REPLICAS_BUCKET, () => new Kvm(nc).create(REPLICAS_BUCKET, { history: 1, replicas: config.streamReplicas, ttl: 60_000 }));
    // Counters that alone changed go to the other replicas in batches (--replica-counters-interval),
    // those of nodes a rollout judges at once: set below, once the rollout manager exists.
    let judged = (_node: string): boolean => true;
    const fleetSync = new ReplicaFleetSync(nc, replicasKv, { registry, counters, health: serviceHealth.store }, {
      controllerId: config.controllerId,
      countersMs: config.replicaCountersIntervalMs,
      deltaMs: config.replicaDeltaMs,
      urgent: (node) => judged(node),
      onError,
      log: (msg, fields) => log('warn', msg, fields),
    });
    await fleetSync.start();
    // Closed after the gRPC server (cleanups run in reverse): the streams' ends go out in its last delta.
    cleanups.push(() => fleetSync.close());
    const lease = new RolloutLease(replicasKv, {
      holder: fleetSync.replica,
      onChange: (held) => log('info', held ? 'holding the rollout lease: this replica advances rollouts' : 'not holding the rollout lease', { replica: fleetSync.replica }),
    });
    lease.start();
    cleanups.push(() => lease.close());

    const sessions = new AgentSessions(registry, counters, {
      controllerId: config.controllerId,
      keys: [{ keyId: key.keyId, publicKey: Buffer.from(key.publicKey) }],
      settings: {
        counterInterval: { seconds: BigInt(Math.floor(config.counterIntervalMs / 1000)), nanos: 0 },
        heartbeatInterval: { seconds: BigInt(Math.floor(config.heartbeatIntervalMs / 1000)), nanos: 0 },
        logStream: INTENT_STREAM,
        logSubject: INTENT_SUBJECT,
      },
      currentRevision: () => store.chain.revision,
      serviceHealth: { ...serviceHealth, refused: (node, reason) => log('warn', 'backend health report refused', { node, reason }) },
      onNodeChanged: (node, status, counters) => fleetSync.changed(node, status, counters),
    });
    const rollouts = new RolloutManager(store, registry, counters, { isLeader: () => lease.held, minGatePackets: config.gateMinPackets, onError, log: (msg, fields) => log('info', msg, fields) });
    judged = (node) => rollouts.judges(node);
    rollouts.start();
    cleanups.push(async () => rollouts.close());
    const intentApi = new IntentApi(store, {
      nodes: () => registry.list().map((n) => ({ name: n.name, labels: n.labels })),
      rolloutEnding: (r) => rollouts.ending(r),
      ruleGrowthGuard: config.ruleGrowthGuard,
      limits: { ...DEFAULT_POLICY_LIMITS, maxRules: config.maxRulesPerPolicy },
      maxPolicies: config.maxPolicies,
      maxServices: config.maxServices,
      maxIntentBytes: config.maxIntentBytes,
    });
    // ListConnections for any node of the fleet: over this replica's stream to it, or relayed to
    // the replica that holds it (README, Replicas).
    const connections = new ConnectionRelay(nc, sessions, { replica: fleetSync.replica, ownerOf: (node) => fleetSync.ownerOf(node), onError });
    connections.start();
    cleanups.push(async () => connections.close());
    const fleetApi = new FleetApi(registry, counters, () => store.chain.revision, rollouts, { querier: connections, timeoutMs: config.connectionsTimeoutMs }, serviceHealth);
    const denied = telemetry.meter('@edgeplane/controller').createCounter('edgeplane_authz_denied', { description: 'Calls refused by authentication or authorization, by method, caller role and reason' });
    const auth = new Authorizer({
      insecure: config.insecure,
      fleet: fleetId,
      enrolledLabels: (node) => trustStore.enrolledLabels(node),
      forgetPreviousLabels: (node) => trustStore.forgetPreviousLabels(node),
      isRevoked: (id, serial) => (id.role === 'node' && trustStore.isRevoked(id.name)) || (serial !== undefined && trustStore.isCertificateRevoked(serial)),
      onDenied: (method, id, reason) => {
        denied.add(1, { method, role: id?.role ?? 'none', reason });
        log('warn', 'call refused', { method, caller: id ? `${id.role}/${id.name}` : 'anonymous', reason });
      },
    });
    // A revocation (from any replica, through the KV watch) closes the node's open streams at once.
    trustStore.onRevoked((r) => sessions.closeNode(r.node, new UnauthenticatedError(`node ${r.node} was revoked`, 'REVOKED')));
    // An admin's label change (on any replica, through the same KV watch as revocations): the
    // node says hello again, learns the new labels from the welcome and compiles for them.
    trustStore.onLabelsChanged((node, labels) => {
      registry.relabel(node, labels);
      sessions.closeNode(node, new UnavailableError(`node ${node}: labels changed by an admin; reconnect`));
    });
    const trustApi = new TrustApi({
      ca,
      store: trustStore,
      nodeCertLifetimeMs: config.nodeCertLifetimeMs,
      ...((extras.natsCredentials ?? authority) ? { natsCredentials: (extras.natsCredentials ?? authority)! } : {}),
    });
    const tls = config.insecure ? ({ insecure: true } as const) : { ...(await servingCertificate(config, ca)), clientCaPem: ca.certPem };
    const grpcServer: GrpcServer = await startGrpcServer({
      listen: config.listen,
      tls,
      auth,
      log: onError,
      intent: intentServiceHandlers(intentApi, onError, auth),
      blocklist: blocklistServiceHandlers(new BlocklistApi(store), onError, auth),
      fleet: fleetServiceHandlers(fleetApi, onError, auth),
      agent: agentServiceHandlers(sessions, onError, auth),
      trust: trustServiceHandlers(trustApi, onError, auth),
      keepaliveMs: config.keepaliveMs,
      keepaliveTimeoutMs: Math.min(10_000, config.keepaliveMs),
    });
    onNatsUp = (up) => grpcServer.setServing(up);
    if (!natsUp) grpcServer.setServing(false);
    cleanups.push(async () => {
      const stopping = grpcServer.shutdown(config.shutdownGraceMs);
      sessions.closeAll();
      await stopping;
    });
    // The dashboard reads the same domain APIs over the same certificate and authorizer (README, Dashboard).
    const dashboard = config.dashboardListen
      ? await startDashboard({
          listen: config.dashboardListen,
          tls,
          auth,
          log: onError,
          counterIntervalMs: config.counterIntervalMs,
          sources: { fleet: fleetApi, intent: intentApi, rollouts, onRevision: (l) => store.onChange((revision) => l(revision)), revision: () => store.chain.revision },
        })
      : undefined;
    if (dashboard) {
      cleanups.push(() => dashboard.close());
      log('info', 'dashboard ready', { url: dashboard.url });
    }
    log('info', 'controller ready', { grpc: grpcServer.address, revision: String(store.chain.revision), keyId: key.keyId, fleetId });

    let closing: Promise<void> | undefined;
    return {
      address: grpcServer.address,
      natsUrl: natsServers.join(','),
      publicKey: key.publicKey,
      keyId: key.keyId,
      fleetId,
      prometheusUrl: telemetry.prometheusUrl,
      dashboardUrl: dashboard?.url,
      natsCredentials: authority,
      caFingerprint: ca.fingerprint,
      caCertPem: ca.certPem,
      close: () => (closing ??= cleanup()),
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}

export async function main(): Promise<void> {
  let config;
  try {
    config = parseConfig(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`edgeplane-controller: ${(err as Error).message}\nRun with --help for usage.\n`);
    process.exitCode = 2;
    return;
  }
  if (config === 'help') {
    process.stdout.write(HELP + '\n');
    return;
  }
  // Read by V8 at every full collection, so setting it now holds for the whole run.
  setFlagsFromString(`--heap-growing-percent=${config.heapGrowingPercent}`);
  if (config.issueNatsCert) {
    try {
      process.stdout.write(await issueNatsCertificate(config, config.issueNatsCert));
    } catch (err) {
      process.stderr.write(`edgeplane-controller: ${(err as Error).message}\n`);
      process.exitCode = 1;
    }
    return;
  }
  if (config.printNatsServerConfig) {
    try {
      process.stdout.write((await NatsAuthority.open(config.natsAuthDir).serverConfig(config.printNatsServerConfig)) + '\n');
    } catch (err) {
      process.stderr.write(`edgeplane-controller: ${(err as Error).message}\n`);
      process.exitCode = 1;
    }
    return;
  }
  let controller: RunningController;
  try {
    controller = await startController(config);
  } catch (err) {
    process.stderr.write(`edgeplane-controller: ${err instanceof ConfigError ? '' : 'start failed: '}${(err as Error).message}\n`);
    process.exitCode = 1;
    return;
  }
  let stopping = false;
  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    process.stderr.write(JSON.stringify({ time: new Date().toISOString(), level: 'info', msg: `${signal}: stopping` }) + '\n');
    void controller.close().then(() => process.stdout.write(JSON.stringify({ event: 'stopped' }) + '\n'));
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  // Ready only once a SIGTERM stops it gracefully: a supervisor may signal it as soon as it
  // reads this line, and until a listener exists the signal's default action ends the process.
  process.stdout.write(
    JSON.stringify({ event: 'ready', grpc: controller.address, nats: controller.natsUrl, keyId: controller.keyId, fleetId: controller.fleetId, publicKey: Buffer.from(controller.publicKey).toString('base64'), prometheus: controller.prometheusUrl, dashboard: controller.dashboardUrl, caFingerprint: controller.caFingerprint }) + '\n',
  );
}

const invoked = process.argv[1] ? realpathSync(process.argv[1]) : '';
if (invoked === fileURLToPath(import.meta.url)) void main();
