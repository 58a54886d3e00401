import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { service as healthService } from 'grpc-health-check';
import { BlocklistServiceClient, FleetServiceClient, IntentServiceClient, TrustServiceClient, STATUS_DETAILS_KEY, decodeStatusDetails, type StatusDetails } from '@edgeplane/proto';

type Callback<Res> = (err: grpc.ServiceError | null, res: Res) => void;

/** Calls a generated unary method and returns a promise (with a deadline, default 30 s). */
export function call<Req, Res>(client: grpc.Client, method: (req: Req, md: grpc.Metadata, opts: grpc.CallOptions, cb: Callback<Res>) => unknown, req: Req, deadlineMs = 30_000): Promise<Res> {
  return new Promise((resolve, reject) => method.call(client, req, new grpc.Metadata(), { deadline: Date.now() + deadlineMs }, (err: grpc.ServiceError | null, res: Res) => (err ? reject(err) : resolve(res))));
}

/** Decodes the google.rpc.Status details of a gRPC error. */
export function detailsOf(err: unknown): StatusDetails | undefined {
  const raw = (err as grpc.ServiceError)?.metadata?.get(STATUS_DETAILS_KEY)[0];
  return Buffer.isBuffer(raw) ? decodeStatusDetails(raw) : undefined;
}

/** PEM material of a client identity: the CA to verify the controller by, a certificate and its key. */
export interface ClientTls {
  ca: Buffer;
  cert: Buffer;
  key: Buffer;
}

/** Clients for a controller address: mutual TLS with `tls`, else plaintext. Close them with `close()`. */
export function clients(address: string, tls?: ClientTls): { intent: IntentServiceClient; fleet: FleetServiceClient; trust: TrustServiceClient; blocklist: BlocklistServiceClient; close(): void } {
  const creds = tls ? grpc.credentials.createSsl(tls.ca, tls.key, tls.cert) : grpc.credentials.createInsecure();
  const intent = new IntentServiceClient(address, creds);
  const fleet = new FleetServiceClient(address, creds);
  const trust = new TrustServiceClient(address, creds);
  const blocklist = new BlocklistServiceClient(address, creds);
  return {
    intent,
    fleet,
    trust,
    blocklist,
    close() {
      intent.close();
      fleet.close();
      trust.close();
      blocklist.close();
    },
  };
}

/** A client of the standard services (grpc.health.v1 and grpc.reflection.v1) over given credentials. */
export interface StandardServicesClient {
  /** Health Check of `service` ('' = the server): resolves with the status name, rejects with the gRPC error. */
  health(service?: string): Promise<string>;
  /** Health Watch of `service`: every status the server sends, until the returned stop is called. */
  watchHealth(service: string, onStatus: (status: string) => void): () => void;
  /** One reflection request on its own stream: resolves with the first response, rejects with the gRPC error. */
  reflect(request: object): Promise<Record<string, unknown>>;
  close(): void;
}

/** Returns a {@link StandardServicesClient} for `address` (insecure credentials by default). */
export function standardServices(address: string, creds: grpc.ChannelCredentials = grpc.credentials.createInsecure()): StandardServicesClient {
  const require = createRequire(import.meta.url);
  const root = join(dirname(require.resolve('@grpc/reflection')), '..', 'proto');
  const def = protoLoader.loadSync('grpc/reflection/v1/reflection.proto', { includeDirs: [root], keepCase: true });
  const pkg = grpc.loadPackageDefinition(def) as unknown as { grpc: { reflection: { v1: { ServerReflection: typeof grpc.Client } } } };
  const opts = { 'grpc.use_local_subchannel_pool': 1 };
  const reflection = new pkg.grpc.reflection.v1.ServerReflection(address, creds, opts) as grpc.Client & { ServerReflectionInfo: () => grpc.ClientDuplexStream<object, Record<string, unknown>> };
  const Health = grpc.makeClientConstructor(healthService, 'grpc.health.v1.Health');
  const h = new Health(address, creds, opts) as unknown as grpc.Client & {
    check: (req: object, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: Error | null, r: { status: string }) => void) => void;
    watch: (req: object) => grpc.ClientReadableStream<{ status: string }>;
  };
  return {
    health: (service = '') => new Promise((resolve, reject) => h.check({ service }, new grpc.Metadata(), { deadline: Date.now() + 30_000 }, (e, r) => (e ? reject(e) : resolve(r.status)))),
    watchHealth(service, onStatus) {
      const call = h.watch({ service });
      call.on('data', (r: { status: string }) => onStatus(r.status));
      call.on('error', () => undefined); // cancelled by stop, or the server went away
      return () => call.cancel();
    },
    reflect: (request) =>
      new Promise((resolve, reject) => {
        const s = reflection.ServerReflectionInfo();
        s.on('data', (d: Record<string, unknown>) => {
          resolve(d);
          s.end();
        });
        s.on('error', reject);
        s.write(request);
      }),
    close() {
      reflection.close();
      h.close();
    },
  };
}
