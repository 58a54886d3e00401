import type { PeerCertificate } from 'node:tls';
import { PermissionDeniedError, UnauthenticatedError } from '../errors.js';
import { describeIdentity, identityFromPeerCertificate, type Identity, type Role } from '../pki/identity.js';
import { sameLabels } from '@edgeplane/proto';
import type { EnrolledLabels } from '../trust-store.js';

/** Who may call what: every gRPC method of the edgeplane services, and only these. */
const READ: readonly Role[] = ['viewer', 'operator', 'admin'];
const WRITE: readonly Role[] = ['operator', 'admin'];
const ADMIN: readonly Role[] = ['admin'];
const NODE: readonly Role[] = ['node'];

/**
 * The one table of method -> roles (full gRPC path), the standard services included. `anyone`
 * is callable without a client certificate: Enroll (the join token is the credential) and
 * health (load balancers and orchestrators probe it without identities, like Kubernetes'
 * /livez; it says only SERVING or NOT_SERVING). Reflection (the API's schema) needs an identity
 * that may read the API. A method not listed is refused: the machine roles controller and nats
 * appear nowhere, so their certificates call nothing.
 */
export const METHOD_ROLES: Readonly<Record<string, readonly Role[] | 'anyone'>> = {
  '/edgeplane.v1.IntentService/ApplyPolicy': WRITE,
  '/edgeplane.v1.IntentService/DeletePolicy': WRITE,
  '/edgeplane.v1.IntentService/GetPolicy': READ,
  '/edgeplane.v1.IntentService/ListPolicies': READ,
  '/edgeplane.v1.IntentService/WatchPolicies': READ,
  '/edgeplane.v1.IntentService/ApplyService': WRITE,
  '/edgeplane.v1.IntentService/DeleteService': WRITE,
  '/edgeplane.v1.IntentService/GetService': READ,
  '/edgeplane.v1.IntentService/ListServices': READ,
  '/edgeplane.v1.IntentService/PauseRollout': WRITE,
  '/edgeplane.v1.IntentService/ResumeRollout': WRITE,
  '/edgeplane.v1.IntentService/PromoteRollout': WRITE,
  '/edgeplane.v1.IntentService/AbortRollout': WRITE,
  '/edgeplane.v1.IntentService/ResetHistory': ADMIN,
  // Prefix lists and emergency blocks: writes as policies are, reads as policies are.
  '/edgeplane.v1.BlocklistService/UpdatePrefixList': WRITE,
  '/edgeplane.v1.BlocklistService/DeletePrefixList': WRITE,
  '/edgeplane.v1.BlocklistService/GetPrefixList': READ,
  '/edgeplane.v1.BlocklistService/ListPrefixLists': READ,
  '/edgeplane.v1.BlocklistService/CreateBlock': WRITE,
  '/edgeplane.v1.BlocklistService/LiftBlock': WRITE,
  '/edgeplane.v1.BlocklistService/ListBlocks': READ,
  '/edgeplane.v1.FleetService/ListNodes': READ,
  '/edgeplane.v1.FleetService/GetNode': READ,
  '/edgeplane.v1.FleetService/WatchNodes': READ,
  '/edgeplane.v1.FleetService/GetPolicyCounters': READ,
  '/edgeplane.v1.FleetService/GetRevisionStatus': READ,
  '/edgeplane.v1.FleetService/GetRollout': READ,
  '/edgeplane.v1.FleetService/ListRollouts': READ,
  '/edgeplane.v1.FleetService/WatchRollout': READ,
  // Reads one node's connection table through its agent: a read, like GetNode.
  '/edgeplane.v1.FleetService/ListConnections': READ,
  // What the nodes' own health checks say of services' backends: a read.
  '/edgeplane.v1.FleetService/GetServiceHealth': READ,
  '/edgeplane.v1.AgentService/Connect': NODE,
  '/edgeplane.v1.TrustService/Enroll': 'anyone',
  '/edgeplane.v1.TrustService/RenewCertificate': NODE,
  '/edgeplane.v1.TrustService/CreateJoinToken': ADMIN,
  '/edgeplane.v1.TrustService/RevokeNode': ADMIN,
  '/edgeplane.v1.TrustService/IssueCertificate': ADMIN,
  '/edgeplane.v1.TrustService/SetNodeLabels': ADMIN,
  '/edgeplane.v1.TrustService/ListCertificates': ADMIN,
  '/edgeplane.v1.TrustService/RevokeCertificate': ADMIN,
  '/grpc.health.v1.Health/Check': 'anyone',
  '/grpc.health.v1.Health/Watch': 'anyone',
  '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo': READ,
  '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo': READ,
  // The dashboard (dashboard/dashboard-server.ts, --dashboard-listen): every route over HTTPS,
  // authorized here like a method by `dashboard <HTTP method> <path>`. It reads only: it has no
  // route that changes anything, so viewers and up see all of it and nobody writes through it.
  'dashboard GET /': READ,
  'dashboard GET /app.js': READ,
  'dashboard GET /app.css': READ,
  'dashboard GET /favicon.svg': READ,
  'dashboard GET /api/nodes': READ,
  'dashboard GET /api/policies': READ,
  'dashboard GET /api/services': READ,
  'dashboard GET /api/rollouts': READ,
  'dashboard GET /api/rollout': READ,
  'dashboard GET /api/counters': READ,
  'dashboard GET /api/events': READ,
};

/** The identity of a plaintext caller on a loopback listener started with --insecure. */
export const INSECURE_IDENTITY: Identity = { fleet: 'default', role: 'admin', name: 'insecure-loopback' };

/** Who called, as the authorizer established it. */
export interface Caller {
  /** Undefined only for `anyone` methods called without a certificate. */
  identity: Identity | undefined;
  /**
   * True on an --insecure loopback listener: the caller is {@link INSECURE_IDENTITY} and may
   * also speak AgentService for any node (development and tests only).
   */
  insecure: boolean;
  /** The serial number of the caller's certificate (hex, as TLS gives it); undefined without one. */
  serial?: string;
}

/** What a call exposes for authorization (grpc-js server calls have it). */
export interface AuthenticatedCall {
  getAuthContext(): { transportSecurityType?: string; sslPeerCertificate?: PeerCertificate } | null;
}

/** Options of {@link Authorizer}. */
export interface AuthorizerOptions {
  insecure: boolean;
  fleet: string;
  /**
   * True if the caller was revoked: nodes by name, any certificate by its serial number (hex,
   * as the TLS peer certificate gives it).
   */
  isRevoked(identity: Identity, serial: string | undefined): boolean;
  /**
   * The labels bound to a node at enrollment (TrustStore); a node's hello must carry them.
   * Unset: hello labels are not checked (only with insecure).
   */
  enrolledLabels?(node: string): Promise<EnrolledLabels | undefined>;
  /** Called once a node said hello with its current labels after an admin change. */
  forgetPreviousLabels?(node: string): Promise<void>;
  /** Called for every refusal (metrics, logs). */
  onDenied?(method: string, identity: Identity | undefined, reason: string): void;
}

/**
 * Establishes the caller of every call from its verified TLS peer certificate and checks it
 * against {@link METHOD_ROLES}. Used by every handler wrapper in services.ts and, for the
 * standard health and reflection services, by grpc/server.ts.
 */
export class Authorizer {
  #options: AuthorizerOptions;

  constructor(options: AuthorizerOptions) {
    this.#options = options;
  }

  /** The caller's identity from the call's verified peer certificate, if any (no role check). */
  identityOf(call: AuthenticatedCall): Identity | undefined {
    if (this.#options.insecure) return INSECURE_IDENTITY;
    return this.#identityOfCertificate(call.getAuthContext()?.sslPeerCertificate);
  }

  #identityOfCertificate(cert: Parameters<typeof identityFromPeerCertificate>[0]): Identity | undefined {
    const id = identityFromPeerCertificate(cert);
    return id && id.fleet === this.#options.fleet ? id : undefined;
  }

  /**
   * Returns the caller of `method`.
   * @throws UnauthenticatedError without a usable certificate or for a revoked one;
   *   PermissionDeniedError if the caller's role may not call `method`.
   */
  authorize(method: string, call: AuthenticatedCall): Caller {
    const allowed = METHOD_ROLES[method];
    if (this.#options.insecure) return { identity: INSECURE_IDENTITY, insecure: true };
    // getAuthContext() builds the whole peer certificate object on every call: read it once.
    const cert = call.getAuthContext()?.sslPeerCertificate;
    const identity = this.#identityOfCertificate(cert);
    if (allowed === 'anyone') return { identity, insecure: false };
    if (!identity) throw this.#deny(method, undefined, new UnauthenticatedError(`${method} needs a client certificate from this fleet's CA`, 'NO_IDENTITY'));
    const serial = cert?.serialNumber;
    // A revoked certificate no longer proves who the caller is: UNAUTHENTICATED (like an expired
    // one), before any role check, whatever the method.
    if (this.#options.isRevoked(identity, serial)) throw this.#deny(method, identity, new UnauthenticatedError(`${describeIdentity(identity)} was revoked`, 'REVOKED'));
    if (!allowed || !allowed.includes(identity.role)) {
      throw this.#deny(method, identity, new PermissionDeniedError(`${describeIdentity(identity)} may not call ${method}`, 'ROLE_NOT_ALLOWED'));
    }
    return { identity, insecure: false, ...(serial ? { serial } : {}) };
  }

  /**
   * Checks that a caller speaks for `nodeName` (AgentService hellos).
   * @throws PermissionDeniedError if it is a node certificate for another name.
   */
  checkNode(method: string, caller: Caller, nodeName: string): void {
    if (caller.insecure) return;
    if (caller.identity?.role !== 'node' || caller.identity.name !== nodeName) {
      throw this.#deny(method, caller.identity, new PermissionDeniedError(`${caller.identity ? describeIdentity(caller.identity) : 'caller'} may not speak for node ${nodeName}`, 'NODE_MISMATCH'));
    }
  }

  /**
   * Checks an AgentService hello: the caller speaks for the node it names
   * ({@link checkNode}) and reports exactly the labels bound to it at enrollment (or the ones
   * before an admin's last change, which the welcome then replaces). Returns the labels the
   * controller records for the node: the enrolled ones, or the hello's on an --insecure listener.
   * @throws PermissionDeniedError (NODE_MISMATCH, NOT_ENROLLED, LABELS_MISMATCH).
   */
  async checkHello(method: string, caller: Caller, nodeName: string, labels: Record<string, string>): Promise<Record<string, string>> {
    this.checkNode(method, caller, nodeName);
    const source = this.#options.enrolledLabels;
    if (caller.insecure || !source) {
      if (!this.#options.insecure) throw this.#deny(method, caller.identity, new PermissionDeniedError('node labels cannot be checked', 'NOT_ENROLLED'));
      return labels;
    }
    const enrolled = await source(nodeName);
    if (!enrolled) throw this.#deny(method, caller.identity, new PermissionDeniedError(`node ${nodeName} has no enrollment record`, 'NOT_ENROLLED'));
    if (sameLabels(labels, enrolled.labels)) {
      if (enrolled.previous) await this.#options.forgetPreviousLabels?.(nodeName);
      return enrolled.labels;
    }
    if (enrolled.previous && sameLabels(labels, enrolled.previous)) return enrolled.labels;
    throw this.#deny(
      method,
      caller.identity,
      new PermissionDeniedError(`node ${nodeName} reported labels other than those bound at enrollment (an admin changes them with SetNodeLabels)`, 'LABELS_MISMATCH'),
    );
  }

  #deny<E extends UnauthenticatedError | PermissionDeniedError>(method: string, identity: Identity | undefined, err: E): E {
    this.#options.onDenied?.(method, identity, err.reason);
    return err;
  }
}
