import { generateKeyPairSync, sign } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import {
  AgentServiceClient,
  BlocklistServiceClient,
  FleetServiceClient,
  IntentServiceClient,
  TrustServiceClient,
  type ConnectRequest,
  type ConnectResponse,
  type EnrollResponse,
} from '@edgeplane/proto';
import { call } from '../../../test/support/grpc.js';
import { enrollProofMessage, parseConfig, startController, type ControllerConfig, type RunningController } from '../src/index.js';

/** A client key pair and certificate (PEM). */
export interface ClientCert {
  keyPem: string;
  certPem: string;
}

/** Every client of one identity, over mutual TLS (or none, with `cert` undefined). */
export interface Clients {
  intent: IntentServiceClient;
  fleet: FleetServiceClient;
  agent: AgentServiceClient;
  trust: TrustServiceClient;
  blocklist: BlocklistServiceClient;
  close(): void;
}

/** Starts a controller with mutual TLS (the default) on loopback, temp data dir, embedded NATS. */
export async function startTlsController(extra: string[] = []): Promise<{ controller: RunningController; dataDir: string; admin: ClientCert; ca: string; stop(): Promise<void> }> {
  const dataDir = mkdtempSync(join(tmpdir(), 'ctl-trust-'));
  const config = parseConfig(['--listen', '127.0.0.1:0', '--embedded-nats', '127.0.0.1:0', '--data-dir', dataDir, '--shutdown-grace', '1', '--heartbeat-interval', '1', ...extra], {}) as ControllerConfig;
  const controller = await startController(config, { log: () => undefined });
  const admin = { keyPem: readFileSync(join(dataDir, 'admin', 'admin-key.pem'), 'utf8'), certPem: readFileSync(join(dataDir, 'admin', 'admin.pem'), 'utf8') };
  return {
    controller,
    dataDir,
    admin,
    ca: readFileSync(join(dataDir, 'admin', 'ca.pem'), 'utf8'),
    async stop() {
      await controller.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Clients with a client certificate (or none). Each gets its own channel (no shared subchannel). */
export function clientsFor(address: string, ca: string, cert?: ClientCert): Clients {
  const creds = grpc.credentials.createSsl(Buffer.from(ca), cert ? Buffer.from(cert.keyPem) : null, cert ? Buffer.from(cert.certPem) : null);
  const opts = { 'grpc.use_local_subchannel_pool': 1 };
  const intent = new IntentServiceClient(address, creds, opts);
  const fleet = new FleetServiceClient(address, creds, opts);
  const agent = new AgentServiceClient(address, creds, opts);
  const trust = new TrustServiceClient(address, creds, opts);
  const blocklist = new BlocklistServiceClient(address, creds, opts);
  return {
    intent,
    fleet,
    agent,
    trust,
    blocklist,
    close() {
      for (const c of [intent, fleet, agent, trust, blocklist]) c.close();
    },
  };
}

/** A fresh ECDSA P-256 key: private PEM and public SPKI DER. */
export function newKey(): { keyPem: string; publicDer: Buffer; privateKey: ReturnType<typeof generateKeyPairSync>['privateKey'] } {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return { keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, publicDer: publicKey.export({ type: 'spki', format: 'der' }), privateKey };
}

/** Creates a join token as admin. */
export async function createToken(admin: Clients, ttlSeconds = 900, labels: Record<string, string> = {}): Promise<string> {
  const res = await call(admin.trust, admin.trust.createJoinToken, { ttl: { seconds: BigInt(ttlSeconds), nanos: 0 }, labels });
  return res.token;
}

/** Enrolls a node with a token over an unauthenticated TLS client; returns its certificate (and what Enroll said). */
export async function enroll(anon: Clients, token: string, nodeName: string): Promise<ClientCert & { response: EnrollResponse }> {
  const key = newKey();
  const res = await call(anon.trust, anon.trust.enroll, { token, nodeName, publicKey: key.publicDer, proof: sign('sha256', enrollProofMessage(nodeName, token), key.privateKey), natsPublicKey: '' });
  return { keyPem: key.keyPem, certPem: res.certificate, response: res };
}

/** An agent's side of a Connect stream: sends a hello for `nodeName` with `labels`, queues what comes back. */
export function agentStream(client: AgentServiceClient, nodeName: string, labels: Record<string, string> = {}) {
  const stream = client.connect();
  const received: ConnectResponse[] = [];
  let ended: grpc.ServiceError | null | undefined;
  const waiters: (() => void)[] = [];
  const wake = (): void => void waiters.splice(0).forEach((w) => w());
  stream.on('data', (m: ConnectResponse) => {
    received.push(m);
    wake();
  });
  stream.on('error', (e: grpc.ServiceError) => {
    ended = e;
    wake();
  });
  stream.on('end', () => {
    ended ??= null;
    wake();
  });
  const send = (m: ConnectRequest): void => void stream.write(m);
  send({ message: { $case: 'hello', hello: { nodeName, labels, info: { agentVersion: 't', kernelRelease: '6.18', hostname: nodeName, datapath: 'memory', capabilities: { xdpNative: true, xdpGeneric: true, tc: true, maxRules: 65536, ipv6: true } }, interfaces: [], receivedRevision: 0n, appliedRevision: 0n, sessionId: 's', conditions: [], appliedUnknown: false, lastReport: undefined } } });
  return {
    stream,
    send,
    received,
    get ended() {
      return ended;
    },
    /** Resolves with the first message matching, or rejects when the stream ended first. */
    async next(pred: (m: ConnectResponse) => boolean): Promise<ConnectResponse> {
      for (;;) {
        const hit = received.find(pred);
        if (hit) return hit;
        if (ended !== undefined) throw Object.assign(new Error(`stream ended: ${ended?.message ?? 'OK'}`), { status: ended });
        await new Promise<void>((r) => waiters.push(r));
      }
    },
    /** Resolves with the status the stream ended with. */
    async end(): Promise<grpc.ServiceError | null> {
      while (ended === undefined) await new Promise<void>((r) => waiters.push(r));
      return ended;
    },
    close(): void {
      stream.cancel();
    },
  };
}
