import * as grpc from '@grpc/grpc-js';
import { FleetServiceClient, IntentServiceClient, TrustServiceClient, STATUS_DETAILS_KEY, decodeStatusDetails, type StatusDetails } from '@edgeplane/proto';

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
export function clients(address: string, tls?: ClientTls): { intent: IntentServiceClient; fleet: FleetServiceClient; trust: TrustServiceClient; close(): void } {
  const creds = tls ? grpc.credentials.createSsl(tls.ca, tls.key, tls.cert) : grpc.credentials.createInsecure();
  const intent = new IntentServiceClient(address, creds);
  const fleet = new FleetServiceClient(address, creds);
  const trust = new TrustServiceClient(address, creds);
  return {
    intent,
    fleet,
    trust,
    close() {
      intent.close();
      fleet.close();
      trust.close();
    },
  };
}
