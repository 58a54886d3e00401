import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ReflectionService } from '@grpc/reflection';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import {
  AgentServiceService,
  FleetServiceService,
  MAX_REQUEST_BYTES,
  PROTO_FILES,
  PROTO_INCLUDE_DIR,
  type AgentServiceServer,
  type FleetServiceServer,
  type IntentServiceServer,
} from '@edgeplane/proto';
import { ConfigError } from '../errors.js';
import { intentServiceWithWirePrecheck } from './wire-precheck.js';

/** Transport security of the gRPC listener. */
export type TlsOptions =
  | { insecure: true }
  | {
      insecure?: false;
      certFile: string;
      keyFile: string;
      /** With a client CA, clients must present a certificate it signed (mutual TLS). */
      clientCaFile?: string;
    };

/** Options of {@link startGrpcServer}. */
export interface GrpcServerOptions {
  /** host:port; port 0 picks a free one. */
  listen: string;
  tls: TlsOptions;
  intent: IntentServiceServer;
  fleet: FleetServiceServer;
  agent: AgentServiceServer;
  /** Largest request accepted, bytes (default MAX_REQUEST_BYTES: the largest valid ApplyPolicy); larger ones fail RESOURCE_EXHAUSTED. */
  maxRequestBytes?: number;
}

const SERVICE_NAMES = ['edgeplane.v1.IntentService', 'edgeplane.v1.FleetService', 'edgeplane.v1.AgentService'];

/** A running gRPC server. */
export interface GrpcServer {
  /** The bound address, host:port. */
  address: string;
  health: HealthImplementation;
  /** Stops accepting calls and waits for running ones up to `graceMs`, then cancels them. Idempotent. */
  shutdown(graceMs: number): Promise<void>;
}

function credentials(tls: TlsOptions): grpc.ServerCredentials {
  if (tls.insecure) return grpc.ServerCredentials.createInsecure();
  try {
    const ca = tls.clientCaFile ? readFileSync(tls.clientCaFile) : null;
    return grpc.ServerCredentials.createSsl(ca, [{ cert_chain: readFileSync(tls.certFile), private_key: readFileSync(tls.keyFile) }], Boolean(ca));
  } catch (cause) {
    throw new ConfigError(`load TLS material: ${(cause as Error).message}`, { cause });
  }
}

/**
 * Starts the gRPC server with the three edgeplane services, the standard health service
 * (grpc.health.v1, SERVING once started) and server reflection (so grpcurl and clients in other
 * languages need no .proto files).
 * @throws ConfigError for unreadable TLS material; Error if the address cannot be bound.
 */
export async function startGrpcServer(options: GrpcServerOptions): Promise<GrpcServer> {
  const creds = credentials(options.tls);
  const max = options.maxRequestBytes ?? MAX_REQUEST_BYTES;
  const server = new grpc.Server({ 'grpc.max_receive_message_length': max, 'grpc.keepalive_time_ms': 30_000, 'grpc.keepalive_timeout_ms': 10_000, 'grpc.keepalive_permit_without_calls': 1 });
  server.addService(intentServiceWithWirePrecheck(), options.intent);
  server.addService(FleetServiceService, options.fleet);
  server.addService(AgentServiceService, options.agent);
  const health = new HealthImplementation(Object.fromEntries(['', ...SERVICE_NAMES].map((s) => [s, 'NOT_SERVING' as const])));
  health.addToServer(server);
  const definitions = protoLoader.loadSync([...PROTO_FILES, healthProtoPath], { includeDirs: [PROTO_INCLUDE_DIR], keepCase: true, longs: String, enums: String, defaults: true });
  new ReflectionService(definitions).addToServer(server);

  const port = await new Promise<number>((resolve, reject) => server.bindAsync(options.listen, creds, (err, p) => (err ? reject(err) : resolve(p))));
  for (const s of ['', ...SERVICE_NAMES]) health.setStatus(s, 'SERVING');
  const host = options.listen.slice(0, options.listen.lastIndexOf(':'));
  let stopping: Promise<void> | undefined;
  return {
    address: `${host}:${port}`,
    health,
    shutdown(graceMs: number): Promise<void> {
      stopping ??= new Promise<void>((resolve) => {
        for (const s of ['', ...SERVICE_NAMES]) health.setStatus(s, 'NOT_SERVING');
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      return stopping;
    },
  };
}
