import { verify, type KeyObject } from 'node:crypto';
import {
  checkDnsLabel,
  validateLabels,
  type CreateJoinTokenRequest,
  type CreateJoinTokenResponse,
  type Duration,
  type EnrollRequest,
  type EnrollResponse,
  type CertificateInfo,
  type IssueCertificateRequest,
  type IssueCertificateResponse,
  type ListCertificatesRequest,
  type ListCertificatesResponse,
  type RevokeCertificateRequest,
  type RevokeCertificateResponse,
  type RenewCertificateRequest,
  type RenewCertificateResponse,
  type RevokeNodeRequest,
  type RevokeNodeResponse,
  type SetNodeLabelsRequest,
  type SetNodeLabelsResponse,
} from '@edgeplane/proto';
import { CertificateIssueError, NotFoundError, PreconditionError, UnauthenticatedError, ValidationError } from './errors.js';
import type { NatsCredentialIssuer } from './nats-credential-issuer.js';
import { p256PublicKey, type CertificateAuthority } from './pki/certificate-authority.js';
import { describeIdentity, type Identity, type Role } from './pki/identity.js';
import { normalizeSerial, type CertificateStatus, type TrustStore } from './trust-store.js';
import type { Caller } from './grpc/authorize.js';

/** The message an enrolling node signs with its new key (proof of possession). */
export function enrollProofMessage(nodeName: string, token: string): Buffer {
  return Buffer.from(`edgeplane-enroll-v1\n${nodeName}\n${token}`);
}

/** The message a renewing node signs with its new key. */
export function renewProofMessage(nodeName: string): Buffer {
  return Buffer.from(`edgeplane-renew-v1\n${nodeName}`);
}

/** Options of {@link TrustApi}. */
export interface TrustApiOptions {
  ca: CertificateAuthority;
  store: TrustStore;
  /** Issues NATS credentials at enrollment and withdraws them at revocation; unset = none. */
  natsCredentials?: NatsCredentialIssuer;
  /** Lifetime of node certificates (default 24 h). */
  nodeCertLifetimeMs?: number;
  /** The clock (tests). Default Date.now. */
  now?: () => number;
}

/** A recorded certificate as the API shows it. */
function certificateInfo(c: CertificateStatus): CertificateInfo {
  return {
    serialNumber: c.serial,
    role: c.role,
    name: c.name,
    notAfter: new Date(c.notAfter),
    issuedAt: new Date(c.issuedAt),
    issuedBy: c.issuedBy,
    revoked: c.revoked !== undefined,
    revokedAt: c.revoked ? new Date(c.revoked.at) : undefined,
    revokedBy: c.revoked?.by ?? '',
    revokeReason: c.revoked?.reason ?? '',
  };
}

const MINUTE = 60_000;
const DAY = 24 * 60 * MINUTE;
const PEOPLE_ROLES: readonly Role[] = ['viewer', 'operator', 'admin'];

function durationMs(d: Duration | undefined, fallback: number, max: number, field: string): number {
  if (!d || (d.seconds === 0n && d.nanos === 0)) return fallback;
  const ms = Number(d.seconds) * 1000 + Math.floor(d.nanos / 1e6);
  if (!(ms > 0) || ms > max) throw new ValidationError(`${field} out of range`, [{ field, description: `must be between 1 ms and ${max / MINUTE} minutes`, reason: 'OUT_OF_RANGE' }]);
  return ms;
}

function checkProof(key: KeyObject, message: Buffer, proof: Uint8Array, field: string): void {
  let ok = false;
  try {
    ok = proof.length > 0 && proof.length <= 256 && verify('sha256', message, key, proof);
  } catch {
    ok = false;
  }
  if (!ok) throw new ValidationError('proof of possession does not verify', [{ field, description: 'must be an ECDSA-SHA256 signature by the key sent', reason: 'BAD_PROOF' }]);
}

function publicKeyOf(bytes: Uint8Array, field: string): KeyObject {
  try {
    return p256PublicKey(bytes);
  } catch (err) {
    throw new ValidationError(`${field}: ${(err as Error).message}`, [{ field, description: 'must be an ECDSA P-256 DER SubjectPublicKeyInfo', reason: 'BAD_KEY' }]);
  }
}

/**
 * TrustService's behaviour: enrollment with single-use join tokens, renewal, operator
 * certificates and node revocation. Authorization (who may call which method) happened
 * before these are called (grpc/authorize.ts); these check what depends on the request.
 */
export class TrustApi {
  #o: TrustApiOptions;
  #nodeLifetime: number;

  constructor(options: TrustApiOptions) {
    this.#o = options;
    this.#nodeLifetime = options.nodeCertLifetimeMs ?? DAY;
  }

  /**
   * Exchanges a join token for a node certificate bound to the node name, plus NATS credentials.
   * Everything is checked before the token is consumed; a consumed token is spent even if a
   * later step fails (the operator creates another).
   * @throws ValidationError, UnauthenticatedError (token), PreconditionError (name taken or revoked).
   */
  async enroll(req: EnrollRequest): Promise<EnrollResponse> {
    const problem = checkDnsLabel(req.nodeName);
    if (problem) throw new ValidationError('invalid node name', [{ field: 'node_name', description: problem, reason: 'INVALID_NAME' }]);
    const key = publicKeyOf(req.publicKey, 'public_key');
    checkProof(key, enrollProofMessage(req.nodeName, req.token), req.proof, 'proof');
    if (this.#o.natsCredentials && req.natsPublicKey !== "" && !/^U[A-Z2-7]{55}$/.test(req.natsPublicKey)) {
      throw new ValidationError('invalid NATS public key', [{ field: 'nats_public_key', description: 'must be a NATS user nkey (U...)', reason: 'BAD_KEY' }]);
    }
    if (this.#o.store.isRevoked(req.nodeName)) throw new UnauthenticatedError(`node ${req.nodeName} was revoked`, 'REVOKED');
    const labels = await this.#o.store.consumeToken(req.token, req.nodeName);
    await this.#o.store.recordEnrollment(req.nodeName, labels);
    const issued = await this.#o.ca.issue({ identity: { fleet: this.#o.ca.fleet, role: 'node', name: req.nodeName }, publicKey: key, lifetimeMs: this.#nodeLifetime });
    const natsJwt = this.#o.natsCredentials && req.natsPublicKey ? await this.#o.natsCredentials.issueNode(req.nodeName, req.natsPublicKey, issued.notAfter) : '';
    return { certificate: issued.certPem, caCertificate: this.#o.ca.certPem, notAfter: issued.notAfter, natsJwt, labels, fleetId: this.#o.ca.fleet };
  }

  /**
   * Renews a node's certificate for the same name, with a new key if one is sent, and its NATS
   * user JWT when it sends its NATS key.
   * @throws ValidationError for a bad key or proof.
   */
  async renew(node: Identity, currentKey: KeyObject, req: RenewCertificateRequest): Promise<RenewCertificateResponse> {
    let key = currentKey;
    if (req.publicKey.length > 0) {
      key = publicKeyOf(req.publicKey, 'public_key');
      checkProof(key, renewProofMessage(node.name), req.proof, 'proof');
    }
    if (this.#o.natsCredentials && req.natsPublicKey !== '' && !/^U[A-Z2-7]{55}$/.test(req.natsPublicKey)) {
      throw new ValidationError('invalid NATS public key', [{ field: 'nats_public_key', description: 'must be a NATS user nkey (U...)', reason: 'BAD_KEY' }]);
    }
    const issued = await this.#o.ca.issue({ identity: node, publicKey: key, lifetimeMs: this.#nodeLifetime });
    // The NATS user JWT expires with the certificate; renewing one renews the other.
    const natsJwt = this.#o.natsCredentials && req.natsPublicKey ? await this.#o.natsCredentials.issueNode(node.name, req.natsPublicKey, issued.notAfter) : '';
    return { certificate: issued.certPem, caCertificate: this.#o.ca.certPem, notAfter: issued.notAfter, natsJwt };
  }

  /** Creates a join token (default 15 minutes, at most 24 hours). @throws ValidationError. */
  async createJoinToken(caller: Identity, req: CreateJoinTokenRequest): Promise<CreateJoinTokenResponse> {
    const ttl = durationMs(req.ttl, 15 * MINUTE, DAY, 'ttl');
    const violations = validateLabels(req.labels, 'labels');
    if (violations.length > 0) throw new ValidationError('invalid labels', violations);
    const { token, expiresAt } = await this.#o.store.createToken(ttl, req.labels, describeIdentity(caller));
    return { token, expiresAt, caFingerprint: this.#o.ca.fingerprint };
  }

  /** Revokes a node: refused on every replica once their watch sees it, NATS credentials withdrawn. */
  async revokeNode(caller: Identity, req: RevokeNodeRequest): Promise<RevokeNodeResponse> {
    const problem = checkDnsLabel(req.nodeName);
    if (problem) throw new ValidationError('invalid node name', [{ field: 'node_name', description: problem, reason: 'INVALID_NAME' }]);
    const r = await this.#o.store.revoke(req.nodeName, describeIdentity(caller), req.reason.slice(0, 1024));
    await this.#o.natsCredentials?.revokeNode(req.nodeName);
    return { revokedAt: new Date(r.at) };
  }

  /**
   * Replaces an enrolled node's labels (the whole set). Every replica sees the change through
   * the trust store's watch and closes the node's open streams there, so it says hello again
   * and learns them from the welcome. Returns the labels now bound.
   * @throws ValidationError (name, labels), NotFoundError (not enrolled), PreconditionError (revoked).
   */
  async setNodeLabels(req: SetNodeLabelsRequest): Promise<SetNodeLabelsResponse> {
    const problem = checkDnsLabel(req.nodeName);
    if (problem) throw new ValidationError('invalid node name', [{ field: 'node_name', description: problem, reason: 'INVALID_NAME' }]);
    const violations = validateLabels(req.labels, 'labels');
    if (violations.length > 0) throw new ValidationError('invalid labels', violations);
    const labels = await this.#o.store.setLabels(req.nodeName, req.labels);
    return { labels };
  }

  /** The person and pipeline certificates issued (unexpired ones unless asked), oldest first. */
  async listCertificates(req: ListCertificatesRequest): Promise<ListCertificatesResponse> {
    const now = (this.#o.now ?? Date.now)();
    const all = await this.#o.store.certificates();
    return { certificates: all.filter((c) => req.includeExpired || c.notAfter > now).map(certificateInfo) };
  }

  /**
   * Revokes person or pipeline certificates by serial number or by name (every unexpired one
   * issued to the name). Refused if it would leave no usable admin certificate: the recorded
   * unexpired, unrevoked admin certificates plus the caller's own, minus those revoked now,
   * must not be none (so an admin can revoke its own certificate only while another admin
   * certificate exists, and nobody locks the fleet out of administration). Idempotent.
   * Returns the certificates revoked (by this call or before).
   * @throws ValidationError (not exactly one of serial and name; a bad serial or name),
   *   NotFoundError (no such certificate or name), PreconditionError (LAST_ADMIN).
   */
  async revokeCertificate(caller: Caller, req: RevokeCertificateRequest): Promise<RevokeCertificateResponse> {
    if ((req.serialNumber === '') === (req.name === '')) {
      throw new ValidationError('give exactly one of serial_number and name', [{ field: 'serial_number', description: 'exactly one of serial_number and name', reason: 'ONE_OF' }]);
    }
    const now = (this.#o.now ?? Date.now)();
    const all = await this.#o.store.certificates();
    let targets: CertificateStatus[];
    let serials: string[];
    if (req.serialNumber !== '') {
      const serial = normalizeSerial(req.serialNumber);
      if (serial === undefined) throw new ValidationError('invalid serial number', [{ field: 'serial_number', description: 'must be hex (as edgeplane cert list prints it)', reason: 'INVALID_SERIAL' }]);
      // A certificate issued before certificates were recorded is not listed: its serial still
      // revokes it (whatever it is; the caller's own counts as the admin certificate it is).
      targets = all.filter((c) => c.serial === serial);
      serials = [serial];
    } else {
      const problem = checkDnsLabel(req.name);
      if (problem) throw new ValidationError('invalid name', [{ field: 'name', description: problem, reason: 'INVALID_NAME' }]);
      targets = all.filter((c) => c.name === req.name && c.notAfter > now);
      if (targets.length === 0) throw new NotFoundError(`no unexpired certificate was issued to ${req.name}`);
      serials = targets.map((c) => c.serial);
    }
    const revoking = new Set(serials);
    const own = caller.serial !== undefined ? normalizeSerial(caller.serial) : undefined;
    const admins = new Set(all.filter((c) => c.role === 'admin' && c.notAfter > now && !c.revoked).map((c) => c.serial));
    if (own !== undefined && caller.identity?.role === 'admin') admins.add(own);
    const left = [...admins].filter((s) => !revoking.has(s));
    if (admins.size > 0 && left.length === 0) {
      throw new PreconditionError('this would revoke the last admin certificate; issue another admin certificate first (edgeplane cert issue --role admin)', 'LAST_ADMIN');
    }
    const by = caller.identity ? describeIdentity(caller.identity) : 'unknown';
    const reason = req.reason.slice(0, 1024);
    for (const s of serials) await this.#o.store.revokeCertificate(s, by, reason);
    return {
      revoked: serials.map((s) => {
        const r = this.#o.store.certificateRevocation(s);
        const known = targets.find((c) => c.serial === s);
        if (known) return certificateInfo({ ...known, revoked: r });
        const self = s === own && caller.identity;
        return { serialNumber: s, role: self ? caller.identity!.role : '', name: self ? caller.identity!.name : '', notAfter: undefined, issuedAt: undefined, issuedBy: '', revoked: true, revokedAt: r ? new Date(r.at) : undefined, revokedBy: r?.by ?? by, revokeReason: r?.reason ?? reason };
      }),
    };
  }

  /**
   * Issues a certificate for a person or pipeline (viewer, operator, admin; default 90 days, at
   * most 1 year) and records it (serial, identity, role, not-after) for listing and revocation.
   * @throws ValidationError (role, name, lifetime, key).
   */
  async issueCertificate(caller: Identity | undefined, req: IssueCertificateRequest): Promise<IssueCertificateResponse> {
    if (!PEOPLE_ROLES.includes(req.role as Role)) {
      throw new ValidationError('invalid role', [{ field: 'role', description: `must be one of ${PEOPLE_ROLES.join(', ')} (nodes enroll with join tokens)`, reason: 'INVALID_ROLE' }]);
    }
    const problem = checkDnsLabel(req.name);
    if (problem) throw new ValidationError('invalid name', [{ field: 'name', description: problem, reason: 'INVALID_NAME' }]);
    const lifetime = durationMs(req.lifetime, 90 * DAY, 365 * DAY, 'lifetime');
    const key = publicKeyOf(req.publicKey, 'public_key');
    try {
      const issued = await this.#o.ca.issue({ identity: { fleet: this.#o.ca.fleet, role: req.role as Role, name: req.name }, publicKey: key, lifetimeMs: lifetime });
      const serial = normalizeSerial(issued.serialNumber)!;
      // Recorded before it is handed out: a certificate nobody can list is one nobody revokes by name.
      await this.#o.store.recordCertificate({ serial, role: req.role as Role, name: req.name, notAfter: Math.floor(issued.notAfter.getTime() / 1000) * 1000, issuedAt: (this.#o.now ?? Date.now)(), issuedBy: caller ? describeIdentity(caller) : 'unknown' });
      return { certificate: issued.certPem, caCertificate: this.#o.ca.certPem, notAfter: issued.notAfter, serialNumber: serial };
    } catch (err) {
      if (err instanceof CertificateIssueError) throw new ValidationError(err.message, [{ field: 'public_key', description: err.message, reason: 'BAD_KEY' }]);
      throw err;
    }
  }
}
