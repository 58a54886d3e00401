import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import * as grpc from '@grpc/grpc-js';
import { ApplyPolicyRequest, TrustServiceClient, keyIdOf, publicKeyFromRaw, type NodeStatus, type Policy } from '@edgeplane/proto';
import { IntentChain, IntentLog, NatsServer, freePort, natsClientOptions } from '@edgeplane/intent-log';
import { NatsAuthority, defaultCaFiles, generateKeyPair, loadOrCreateCertificateAuthority } from '@edgeplane/controller';
import { CONTROLLER_MAIN, type ControlPlane } from './fleet.js';
import { call, clients, type ClientTls } from './grpc.js';
import { Supervised } from './supervisor.js';

/** The admin identity a controller wrote into DATA_DIR/admin on its first start. */
export function adminTlsOf(dataDir: string): ClientTls {
  const admin = join(dataDir, 'admin');
  return { ca: readFileSync(join(admin, 'ca.pem')), cert: readFileSync(join(admin, 'admin.pem')), key: readFileSync(join(admin, 'admin-key.pem')) };
}

/** The CLI flags for the admin identity in DATA_DIR/admin. */
export function cliTlsArgsOf(dataDir: string): string[] {
  const admin = join(dataDir, 'admin');
  return ['--tls-ca', join(admin, 'ca.pem'), '--tls-cert', join(admin, 'admin.pem'), '--tls-key', join(admin, 'admin-key.pem')];
}

/**
 * Creates a join token as admin carrying `labels` (bound to the node that enrolls with it: its
 * hello must carry exactly these); returns the agent flags that enroll with it.
 */
export async function joinTokenArgs(address: string, tls: ClientTls, labels: Record<string, string> = {}): Promise<string[]> {
  const trust = new TrustServiceClient(address, grpc.credentials.createSsl(tls.ca, tls.key, tls.cert));
  try {
    const res = await call(trust, trust.createJoinToken, { ttl: undefined, labels });
    return ['--join-token', res.token, '--ca-fingerprint', res.caFingerprint];
  } finally {
    trust.close();
  }
}

/** Options of {@link TestControlPlane.start}. */
export interface TestControlPlaneOptions {
  /** More controller flags. */
  extra?: string[];
  /**
   * A nats-server without authorization or TLS and the controller started with
   * --nats-anonymous (the old development path). Only for a test that needs an open bus; every
   * other test runs the secure default.
   */
  anonymousNats?: boolean;
}

/**
 * Prepares what an external nats-server needs to run the README's secure path before the
 * controller first starts: the fleet CA in the controller's default place (DATA_DIR/pki, for
 * `fleet`), a serving certificate for the server from it (a NATS server identity, as agents
 * check it; 127.0.0.1 for loopback clients), and the server's authorization from the NATS
 * authority in DATA_DIR/nats-auth (operator, system account, resolver), which the controller
 * then opens as its own. Returns the NatsServer options and the CA file clients verify by.
 */
async function secureNatsSetup(ctlDir: string, natsDir: string, fleet: string): Promise<{ tls: { certFile: string; keyFile: string }; configFragment: string; caFile: string }> {
  const files = defaultCaFiles(ctlDir);
  const { ca } = await loadOrCreateCertificateAuthority(files, fleet);
  const keys = generateKeyPair();
  const issued = await ca.issue({ identity: { fleet, role: 'nats', name: 'nats' }, publicKey: keys.publicKeyDer, lifetimeMs: 86_400_000, dnsNames: ['localhost'], ipAddresses: ['127.0.0.1'] });
  const tlsDir = join(ctlDir, 'nats-tls');
  mkdirSync(tlsDir, { recursive: true, mode: 0o700 });
  const tls = { certFile: join(tlsDir, 'server.pem'), keyFile: join(tlsDir, 'server-key.pem') };
  writeFileSync(tls.keyFile, keys.privateKeyPem, { mode: 0o600 });
  writeFileSync(tls.certFile, issued.certPem + ca.certPem);
  const configFragment = await NatsAuthority.open(join(ctlDir, 'nats-auth')).serverConfig(join(natsDir, 'jwt'));
  return { tls, configFragment, caFile: files.certFile };
}

/**
 * A real control plane for tests that cross processes, secure like the README's path: a
 * nats-server with JetStream on 0.0.0.0 (agents in namespaces reach it over their mgmt link)
 * that serves TLS from the fleet CA and admits only users of the controller's NATS authority
 * (JWTs: the controller's, and each node's from its enrollment), and a controller process
 * serving mutual TLS (its default). Tests call it with the admin certificate the controller
 * wrote on first start; agents enroll with join tokens ({@link agentTrustArgs}) and so get
 * their own NATS credentials. `anonymousNats` keeps the old open bus for a test that needs it.
 * The controller's gRPC port is chosen free once and kept, so `controller.restart()` comes
 * back where the agents look for it; its data directory (and so its signing key) is kept too.
 * close() stops both and removes the directory; it never throws and is idempotent.
 */
export class TestControlPlane implements ControlPlane {
  readonly nats: NatsServer;
  readonly controller: Supervised;
  readonly grpcPort: number;
  readonly publicKeyB64: string;
  readonly dir: string;
  readonly api: ReturnType<typeof clients>;
  /** The admin identity (DATA_DIR/admin). */
  readonly adminTls: ClientTls;
  /** The CA file NATS clients verify the server by; undefined with `anonymousNats`. */
  readonly natsCaFile: string | undefined;
  /** The controller's NATS flags (server, TLS CA and fleet, or --nats-anonymous), for a test that starts another controller process on the same bus. */
  readonly natsArgs: string[];
  #closed = false;

  private constructor(dir: string, nats: NatsServer, controller: Supervised, grpcPort: number, natsCaFile: string | undefined, natsArgs: string[]) {
    this.dir = dir;
    this.natsCaFile = natsCaFile;
    this.natsArgs = natsArgs;
    this.nats = nats;
    this.controller = controller;
    this.grpcPort = grpcPort;
    this.publicKeyB64 = String(controller.ready.publicKey);
    this.adminTls = adminTlsOf(join(dir, 'ctl'));
    this.api = clients(this.address, this.adminTls);
  }

  /** The CLI's flags for the admin identity. */
  get cliTlsArgs(): string[] {
    return cliTlsArgsOf(join(this.dir, 'ctl'));
  }

  /** A join token for a node (carrying `labels`) and the CA fingerprint, as agent flags. */
  agentTrustArgs(_name?: string, labels: Record<string, string> = {}): Promise<string[]> {
    return joinTokenArgs(this.address, this.adminTls, labels);
  }

  /**
   * Starts nats-server and the controller (secure unless `anonymousNats`); closes what it
   * started if a later step fails. An array is the controller's extra flags (older callers).
   */
  static async start(options: TestControlPlaneOptions | string[] = {}): Promise<TestControlPlane> {
    const o: TestControlPlaneOptions = Array.isArray(options) ? { extra: options } : options;
    const dir = mkdtempSync(join(tmpdir(), 'ep-cp-'));
    const ctlDir = join(dir, 'ctl');
    let nats: NatsServer | undefined;
    let controller: Supervised | undefined;
    try {
      let natsArgs: string[];
      let caFile: string | undefined;
      if (o.anonymousNats) {
        nats = await NatsServer.start({ dataDir: join(dir, 'nats'), host: '0.0.0.0' });
        natsArgs = ['--nats', `nats://127.0.0.1:${nats.port}`, '--nats-anonymous'];
      } else {
        const fleet = `test-${randomBytes(4).toString('hex')}`;
        const secure = await secureNatsSetup(ctlDir, join(dir, 'nats'), fleet);
        caFile = secure.caFile;
        nats = await NatsServer.start({ dataDir: join(dir, 'nats'), host: '0.0.0.0', tls: secure.tls, configFragment: secure.configFragment });
        natsArgs = ['--nats', `nats://127.0.0.1:${nats.port}`, '--nats-tls-ca', secure.caFile, '--fleet-id', fleet];
      }
      const grpcPort = await freePort('0.0.0.0');
      controller = await Supervised.start('controller', {
        command: process.execPath,
        args: [
          CONTROLLER_MAIN, '--listen', `0.0.0.0:${grpcPort}`, ...natsArgs,
          '--data-dir', ctlDir, '--heartbeat-interval', '1', '--counter-interval', '1', '--shutdown-grace', '1',
          '--rule-growth-guard', '100000', ...(o.extra ?? []),
        ],
        readyEvent: 'ready',
      });
      return new TestControlPlane(dir, nats, controller, grpcPort, caFile, natsArgs);
    } catch (err) {
      await controller?.stop(2000);
      await nats?.close();
      rmSync(dir, { recursive: true, force: true });
      throw err;
    }
  }

  get natsPort(): number {
    return this.nats.port;
  }

  /**
   * Options for a NATS connection with the controller's rights (the test acting as a
   * controller replica, or as whoever holds the bus): its credentials and TLS, or none on an
   * anonymous bus. Servers are the caller's.
   */
  async natsControllerOptions(): Promise<NodeConnectionOptions> {
    if (!this.natsCaFile) return {};
    return natsClientOptions({ ...(await NatsAuthority.open(join(this.dir, 'ctl', 'nats-auth')).controllerCredentials('test')), tls: { caFile: this.natsCaFile } });
  }

  /** A NATS connection with the controller's rights ({@link natsControllerOptions}) on loopback; the caller closes it. */
  async natsConnect(options: NodeConnectionOptions = {}): Promise<NatsConnection> {
    return connect({ servers: `127.0.0.1:${this.nats.port}`, ...(await this.natsControllerOptions()), ...options });
  }

  /** The controller's gRPC address from the root namespace. */
  get address(): string {
    return `127.0.0.1:${this.grpcPort}`;
  }

  /** A node's status at the controller, or undefined if it is unknown or the call fails. */
  async nodeStatus(name: string): Promise<NodeStatus | undefined> {
    return (await call(this.api.fleet, this.api.fleet.getNode, { name }).catch(() => undefined))?.node?.status;
  }

  /** Applies a policy (large growth allowed) and returns the revision. */
  async apply(policy: Policy): Promise<bigint> {
    return (await call(this.api.intent, this.api.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy, allowLargeGrowth: true }))).revision;
  }

  /** Deletes a policy (missing is fine) and returns the revision. */
  async delete(name: string): Promise<bigint> {
    return (await call(this.api.intent, this.api.intent.deletePolicy, { name, validateOnly: false, allowMissing: true })).revision;
  }

  /**
   * Reads the whole log and checks it: gapless, hash-chained, signed by this controller.
   * Returns the last revision and, per policy name, the revisions that upserted it.
   * @throws on a gap, a fork, a bad signature or an entry stored at the wrong sequence.
   */
  async audit(): Promise<{ last: bigint; upserts: Map<string, bigint[]> }> {
    const nc = await this.natsConnect();
    try {
      const log = await IntentLog.open(nc, { create: false });
      const key = publicKeyFromRaw(Buffer.from(this.publicKeyB64, 'base64'));
      const chain = new IntentChain(new Map([[keyIdOf(key), key]]));
      const upserts = new Map<string, bigint[]>();
      const { last } = await log.bounds();
      for await (const { revision, signed } of log.read(1n, last)) {
        const r = chain.append(signed);
        if (r.entry.revision !== revision) throw new Error(`entry ${r.entry.revision} stored at ${revision}`);
        // Whole policies and patches alike (the chain applied both).
        for (const { type, policy: p } of r.changes) if (type !== 'deleted') upserts.set(p.metadata!.name, [...(upserts.get(p.metadata!.name) ?? []), revision]);
      }
      if (chain.revision !== last) throw new Error(`chain ends at ${chain.revision}, stream at ${last}`);
      return { last, upserts };
    } finally {
      await nc.close();
    }
  }

  /** Stops the controller and nats-server and removes the data. Idempotent; never throws. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.api.close();
    await this.controller.stop(3000).catch(() => undefined);
    await this.nats.close().catch(() => undefined);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Polls `pred` every 100 ms until it holds; throws after `ms` with `context()` (process output) in the message. */
export async function until(what: string, pred: () => Promise<boolean> | boolean, ms = 15_000, context: () => string = () => ''): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${context()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}
