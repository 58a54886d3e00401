import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect } from '@nats-io/transport-node';
import * as grpc from '@grpc/grpc-js';
import { ApplyPolicyRequest, TrustServiceClient, keyIdOf, publicKeyFromRaw, type NodeStatus, type Policy } from '@edgeplane/proto';
import { IntentChain, IntentLog, NatsServer, freePort } from '@edgeplane/intent-log';
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

/**
 * A real control plane for tests that cross processes: a nats-server with JetStream on
 * 0.0.0.0 (agents in namespaces reach it over their mgmt link) and a controller process
 * serving mutual TLS (its default) there. Tests call it with the admin certificate the
 * controller wrote on first start; agents enroll with join tokens ({@link agentTrustArgs}).
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
  #closed = false;

  private constructor(dir: string, nats: NatsServer, controller: Supervised, grpcPort: number) {
    this.dir = dir;
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

  /** Starts nats-server and the controller; closes what it started if a later step fails. */
  static async start(extra: string[] = []): Promise<TestControlPlane> {
    const dir = mkdtempSync(join(tmpdir(), 'ep-cp-'));
    let nats: NatsServer | undefined;
    let controller: Supervised | undefined;
    try {
      nats = await NatsServer.start({ dataDir: join(dir, 'nats'), host: '0.0.0.0' });
      const grpcPort = await freePort('0.0.0.0');
      controller = await Supervised.start('controller', {
        command: process.execPath,
        args: [
          CONTROLLER_MAIN, '--listen', `0.0.0.0:${grpcPort}`, '--nats', `nats://127.0.0.1:${nats.port}`, '--nats-anonymous',
          '--data-dir', join(dir, 'ctl'), '--heartbeat-interval', '1', '--counter-interval', '1', '--shutdown-grace', '1',
          '--rule-growth-guard', '100000', ...extra,
        ],
        readyEvent: 'ready',
      });
      return new TestControlPlane(dir, nats, controller, grpcPort);
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
    const nc = await connect({ servers: `nats://127.0.0.1:${this.nats.port}` });
    try {
      const log = await IntentLog.open(nc, { create: false });
      const key = publicKeyFromRaw(Buffer.from(this.publicKeyB64, 'base64'));
      const chain = new IntentChain(new Map([[keyIdOf(key), key]]));
      const upserts = new Map<string, bigint[]>();
      const { last } = await log.bounds();
      for await (const { revision, signed } of log.read(1n, last)) {
        const r = chain.append(signed);
        if (r.entry.revision !== revision) throw new Error(`entry ${r.entry.revision} stored at ${revision}`);
        for (const p of r.entry.change?.upserts ?? []) upserts.set(p.metadata!.name, [...(upserts.get(p.metadata!.name) ?? []), revision]);
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
