import * as grpc from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import { addReflection } from './reflection.js';
import {
  AgentServiceService,
  DescriptorIndex,
  BlocklistServiceService,
  type BlocklistServiceServer,
  FleetServiceService,
  MAX_REQUEST_BYTES,
  TrustServiceService,
  type TrustServiceServer,
  type AgentServiceServer,
  type FleetServiceServer,
  type IntentServiceServer,
} from '@edgeplane/proto';
import type { AuthenticatedCall } from './authorize.js';
import { toStatus, type ErrorLogger } from './to-status.js';
import { intentServiceWithWirePrecheck } from './wire-precheck.js';

/**
 * Transport security of the gRPC listener: plaintext (loopback only, checked by the config),
 * or TLS with a serving certificate chain and the CA that client certificates must chain to.
 * Client certificates are requested but not required at the handshake, so Enroll can be
 * called without one; every other method is refused without one (grpc/authorize.ts), and
 * grpc-js exposes only verified certificates (getAuthContext).
 */
export type TlsOptions =
  | { insecure: true }
  | {
      insecure?: false;
      /** PEM: the serving certificate, then its chain (the CA, so agents can pin its fingerprint). */
      certChainPem: string;
      keyPem: string;
      /** PEM: the CA client certificates must be signed by. */
      clientCaPem: string;
    };

/** What the server needs of the authorizer (grpc/authorize.ts) for the standard services. */
export interface MethodAuthorizer {
  /** @throws UnauthenticatedError or PermissionDeniedError when the call's caller may not call `method`. */
  authorize(method: string, call: AuthenticatedCall): unknown;
}

/** Options of {@link startGrpcServer}. */
export interface GrpcServerOptions {
  /** host:port; port 0 picks a free one. */
  listen: string;
  tls: TlsOptions;
  /** Authorizes the standard health and reflection services (the edgeplane handlers authorize their own calls). */
  auth: MethodAuthorizer;
  /** Where unexpected errors of those authorizations are reported (toStatus). */
  log: ErrorLogger;
  intent: IntentServiceServer;
  /** Prefix lists and emergency blocks. */
  blocklist: BlocklistServiceServer;
  fleet: FleetServiceServer;
  agent: AgentServiceServer;
  trust: TrustServiceServer;
  /** Largest request accepted, bytes (default MAX_REQUEST_BYTES: the largest valid ApplyPolicy); larger ones fail RESOURCE_EXHAUSTED. */
  maxRequestBytes?: number;
  /**
   * HTTP/2 keepalive: a PING to every client connection after this long (default 30 s); a
   * connection whose PING is not answered within `keepaliveTimeoutMs` (default 10 s) is closed.
   * This is how a dead agent host is noticed: agents send application heartbeats rarely.
   */
  keepaliveMs?: number;
  keepaliveTimeoutMs?: number;
}

const SERVICE_NAMES = ['edgeplane.v1.IntentService', 'edgeplane.v1.BlocklistService', 'edgeplane.v1.FleetService', 'edgeplane.v1.AgentService', 'edgeplane.v1.TrustService'];

/** A running gRPC server. */
export interface GrpcServer {
  /** The bound address, host:port. */
  address: string;
  health: HealthImplementation;
  /**
   * Sets every service's health to SERVING or NOT_SERVING (e.g. while the intent log is
   * unreachable). No effect once shutdown() began: a stopping server stays NOT_SERVING.
   */
  setServing(serving: boolean): void;
  /** Stops accepting calls and waits for running ones up to `graceMs`, then cancels them. Idempotent. */
  shutdown(graceMs: number): Promise<void>;
}

/** A certificate provider that always offers the same material (grpc-js's experimental provider API). */
class StaticCertificateProvider implements grpc.experimental.CertificateProvider {
  #ca: Buffer;
  #identity: { certificate: Buffer; privateKey: Buffer };

  constructor(caPem: string, certPem: string, keyPem: string) {
    this.#ca = Buffer.from(caPem);
    this.#identity = { certificate: Buffer.from(certPem), privateKey: Buffer.from(keyPem) };
  }

  // grpc-js registers its watcher after adding the listener: an update delivered synchronously
  // would be lost and every connection dropped, so updates are delivered on the next tick.
  addCaCertificateListener(listener: grpc.experimental.CaCertificateUpdateListener): void {
    process.nextTick(() => listener({ caCertificate: this.#ca }));
  }

  removeCaCertificateListener(): void {}

  addIdentityCertificateListener(listener: grpc.experimental.IdentityCertificateUpdateListener): void {
    process.nextTick(() => listener(this.#identity));
  }

  removeIdentityCertificateListener(): void {}
}

function credentials(tls: TlsOptions): grpc.ServerCredentials {
  if (tls.insecure) return grpc.ServerCredentials.createInsecure();
  const provider = new StaticCertificateProvider(tls.clientCaPem, tls.certChainPem, tls.keyPem);
  // requireClientCertificate false: requested and verified when sent, optional at the handshake (Enroll).
  return grpc.experimental.createCertificateProviderServerCredentials(provider, provider, false);
}

/**
 * A view of `server` whose addService authorizes every call of the services added through it
 * (by the method's full path, grpc/authorize.ts) before the handler runs: how the standard
 * services, which add themselves (`addToServer(server)`), get the same checks as ours. A refused
 * call ends with the status toStatus gives and never reaches the handler.
 */
function authorizedServer(server: grpc.Server, auth: MethodAuthorizer, log: ErrorLogger): Pick<grpc.Server, 'addService'> {
  return {
    addService(service: grpc.ServiceDefinition, implementation: grpc.UntypedServiceImplementation): void {
      const wrapped: grpc.UntypedServiceImplementation = {};
      for (const [key, method] of Object.entries(service)) {
        const handler = implementation[key] ?? implementation[method.originalName ?? ''];
        if (!handler) continue;
        const refused = (call: AuthenticatedCall): grpc.ServiceError | undefined => {
          try {
            auth.authorize(method.path, call);
            return undefined;
          } catch (err) {
            return Object.assign(new Error((err as Error).message), toStatus(err, log)) as grpc.ServiceError;
          }
        };
        if (!method.requestStream && !method.responseStream) {
          const h = handler as grpc.handleUnaryCall<unknown, unknown>;
          wrapped[key] = ((call, callback) => {
            const err = refused(call);
            if (err) callback(err);
            else h(call, callback);
          }) as grpc.handleUnaryCall<unknown, unknown>;
        } else if (!method.requestStream) {
          const h = handler as grpc.handleServerStreamingCall<unknown, unknown>;
          wrapped[key] = ((call) => {
            const err = refused(call);
            // grpc-js sends a stream's status from an 'error' event.
            if (err) call.emit('error', err);
            else h(call);
          }) as grpc.handleServerStreamingCall<unknown, unknown>;
        } else if (method.responseStream) {
          const h = handler as grpc.handleBidiStreamingCall<unknown, unknown>;
          wrapped[key] = ((call) => {
            const err = refused(call);
            if (err) call.emit('error', err);
            else h(call);
          }) as grpc.handleBidiStreamingCall<unknown, unknown>;
        } else {
          const h = handler as grpc.handleClientStreamingCall<unknown, unknown>;
          wrapped[key] = ((call, callback) => {
            const err = refused(call);
            if (err) callback(err);
            else h(call, callback);
          }) as grpc.handleClientStreamingCall<unknown, unknown>;
        }
      }
      server.addService(service, wrapped);
    },
  };
}

/**
 * Starts the gRPC server with the four edgeplane services, the standard health service
 * (grpc.health.v1, SERVING once started; open to anyone, for load balancers) and server
 * reflection (so grpcurl and clients in other languages need no .proto files; callers that may
 * read the API only). Both standard services are authorized by `options.auth` like ours.
 * @throws Error if the address cannot be bound.
 */
export async function startGrpcServer(options: GrpcServerOptions): Promise<GrpcServer> {
  const creds = credentials(options.tls);
  const max = options.maxRequestBytes ?? MAX_REQUEST_BYTES;
  // Channelz off: nothing here serves it, and grpc-js otherwise keeps per-connection trackers and
  // stamps the time on every message of every agent stream (10,000 streams and their heartbeats).
  const server = new grpc.Server({
    'grpc.max_receive_message_length': max,
    'grpc.keepalive_time_ms': options.keepaliveMs ?? 30_000,
    'grpc.keepalive_timeout_ms': options.keepaliveTimeoutMs ?? 10_000,
    'grpc.keepalive_permit_without_calls': 1,
    'grpc.enable_channelz': 0,
  });
  server.addService(intentServiceWithWirePrecheck(), options.intent);
  server.addService(BlocklistServiceService, options.blocklist);
  server.addService(FleetServiceService, options.fleet);
  server.addService(AgentServiceService, options.agent);
  server.addService(TrustServiceService, options.trust);
  const health = new HealthImplementation(Object.fromEntries(['', ...SERVICE_NAMES].map((s) => [s, 'NOT_SERVING' as const])));
  const authorized = authorizedServer(server, options.auth, options.log);
  health.addToServer(authorized as grpc.Server);
  addReflection(authorized, DescriptorIndex.load(), [...SERVICE_NAMES, 'grpc.health.v1.Health']);

  const port = await new Promise<number>((resolve, reject) => server.bindAsync(options.listen, creds, (err, p) => (err ? reject(err) : resolve(p))));
  const setAll = (status: 'SERVING' | 'NOT_SERVING'): void => {
    for (const s of ['', ...SERVICE_NAMES]) health.setStatus(s, status);
  };
  setAll('SERVING');
  const host = options.listen.slice(0, options.listen.lastIndexOf(':'));
  let stopping: Promise<void> | undefined;
  return {
    address: `${host}:${port}`,
    health,
    setServing(serving: boolean): void {
      if (!stopping) setAll(serving ? 'SERVING' : 'NOT_SERVING');
    },
    shutdown(graceMs: number): Promise<void> {
      stopping ??= new Promise<void>((resolve) => {
        setAll('NOT_SERVING');
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
