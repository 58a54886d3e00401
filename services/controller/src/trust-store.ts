import { createHash, randomBytes } from 'node:crypto';
import { KvWatchInclude, type KV } from '@nats-io/kv';
import { NotFoundError, PreconditionError, UnauthenticatedError } from './errors.js';
import type { Role } from './pki/identity.js';

/** A join token as stored: only its hash is the key. */
interface TokenRecord {
  expiresAt: number;
  labels: Record<string, string>;
  createdBy: string;
  /** Set (by compare-and-set) when a node enrolled with it. */
  usedBy?: string;
}

/** A node's revocation as stored. */
export interface Revocation {
  node: string;
  at: number;
  by: string;
  reason: string;
}

/** A node's enrollment as stored (key `node.<name>`). */
interface EnrollmentRecord {
  at: number;
  /** The labels bound at enrollment or by an admin since; absent on records written before labels were bound (= none). */
  labels?: Record<string, string>;
  /** The labels before the last admin change: still accepted in a hello until the node has learnt the new ones. */
  previousLabels?: Record<string, string>;
}

/** A person or pipeline certificate as recorded at issue (key `cert.<serial>`). */
export interface CertificateRecord {
  /** Upper-case hex without leading zeros ({@link normalizeSerial}). */
  serial: string;
  role: Role;
  name: string;
  notAfter: number;
  issuedAt: number;
  issuedBy: string;
}

/** A certificate's revocation as stored (key `certrevoked.<serial>`); every replica watches them. */
export interface CertificateRevocation {
  serial: string;
  at: number;
  by: string;
  reason: string;
}

/** A recorded certificate with its revocation, if any. */
export interface CertificateStatus extends CertificateRecord {
  revoked: CertificateRevocation | undefined;
}

/**
 * A certificate serial number as the trust store keys it: upper-case hex without leading zeros
 * (Node's X509Certificate and TLS peer certificates both give hex, with case and padding varying).
 * @returns undefined for anything that is not 1 to 40 bytes of hex.
 */
export function normalizeSerial(serial: string): string | undefined {
  const s = serial.replace(/:/g, '').toUpperCase();
  if (!/^[0-9A-F]{1,80}$/.test(s)) return undefined;
  return s.replace(/^0+(?=.)/, '');
}

/** The labels a hello may carry for a node, from {@link TrustStore.enrolledLabels}. */
export interface EnrolledLabels {
  /** The labels bound to the node now. */
  labels: Record<string, string>;
  /** Also accepted: the labels before the last admin change. */
  previous: Record<string, string> | undefined;
}

/** The token prefix: recognisable in logs and secret scanners. */
const TOKEN_PREFIX = 'ept_';
const enc = new TextEncoder();
const dec = new TextDecoder();

function tokenKey(token: string): string {
  return `token.${createHash('sha256').update(token).digest('hex')}`;
}

/**
 * The controller's trust state in a controller-only NATS KV bucket (TRUST_BUCKET): single-use
 * join tokens (stored hashed, consumed by compare-and-set so two replicas cannot both accept
 * one), the names enrolled so far (each name enrolls once) with their labels, the person and
 * pipeline certificates issued, and revocations of nodes and certificates. Every replica
 * watches the bucket: revocations and admins' label changes written by any replica reach it
 * through that one watch. Owns the watch; close() stops it (idempotent).
 */
export class TrustStore {
  #kv: KV;
  #revoked = new Map<string, Revocation>();
  #revokedCerts = new Map<string, CertificateRevocation>();
  #listeners = new Set<(r: Revocation) => void>();
  #labelListeners = new Set<(node: string, labels: Record<string, string>) => void>();
  #stop: (() => void) | undefined;
  #now: () => number;

  constructor(kv: KV, options: { now?: () => number } = {}) {
    this.#kv = kv;
    this.#now = options.now ?? Date.now;
  }

  /**
   * Starts watching the bucket (writes by any replica, this one included), then loads the
   * revocations already stored: a revocation written in between is seen by one or the other.
   */
  async start(onError: (message: string, err: unknown) => void): Promise<void> {
    const watch = await this.#kv.watch({ key: '>', include: KvWatchInclude.UpdatesOnly });
    this.#stop = () => watch.stop();
    void (async () => {
      try {
        for await (const e of watch) {
          if (e.operation !== 'PUT' || e.value.length === 0) continue;
          try {
            this.#seen(e.key, e.value);
          } catch (err) {
            onError(`trust bucket entry ${e.key}`, err);
          }
        }
      } catch (err) {
        onError('watch the trust bucket', err);
      }
    })();
    for (const prefix of ['revoked', 'certrevoked']) {
      const keys: string[] = [];
      for await (const k of await this.#kv.keys(`${prefix}.>`)) keys.push(k);
      for (const k of keys) {
        const e = await this.#kv.get(k);
        if (e && e.operation === 'PUT' && e.value.length > 0) this.#seen(k, e.value);
      }
    }
  }

  /** One stored entry, from the watch or the start-up load. */
  #seen(key: string, value: Uint8Array): void {
    if (key.startsWith('revoked.')) this.#add(JSON.parse(dec.decode(value)) as Revocation);
    else if (key.startsWith('certrevoked.')) {
      const r = JSON.parse(dec.decode(value)) as CertificateRevocation;
      if (!this.#revokedCerts.has(r.serial)) this.#revokedCerts.set(r.serial, r);
    } else if (key.startsWith('node.')) {
      // An admin's change (SetNodeLabels) keeps the labels before it until the node said hello
      // with the new ones: that is the change to act on. Enrollments and the later cleanup are not.
      const record = JSON.parse(dec.decode(value)) as EnrollmentRecord;
      if (record.previousLabels === undefined) return;
      const node = key.slice('node.'.length);
      for (const l of this.#labelListeners) l(node, record.labels ?? {});
    }
  }

  #add(r: Revocation): void {
    if (this.#revoked.has(r.node)) return;
    this.#revoked.set(r.node, r);
    for (const l of this.#listeners) l(r);
  }

  /** Stops the watch. Idempotent. */
  close(): void {
    this.#stop?.();
    this.#stop = undefined;
  }

  /** Calls `listener` for every revocation seen after now; returns the function that removes it. */
  onRevoked(listener: (r: Revocation) => void): () => void {
    this.#listeners.add(listener);
    return () => this.#listeners.delete(listener);
  }

  /**
   * Calls `listener` whenever an admin changed a node's labels, on any replica (this one
   * included, through the watch); returns the function that removes it.
   */
  onLabelsChanged(listener: (node: string, labels: Record<string, string>) => void): () => void {
    this.#labelListeners.add(listener);
    return () => this.#labelListeners.delete(listener);
  }

  /** True if the certificate with this serial (any form {@link normalizeSerial} takes) was revoked, on any replica once its watch delivered it. */
  isCertificateRevoked(serial: string): boolean {
    const s = normalizeSerial(serial);
    return s !== undefined && this.#revokedCerts.has(s);
  }

  /** Records a person or pipeline certificate just issued (so it can be listed and revoked by name). */
  async recordCertificate(record: CertificateRecord): Promise<void> {
    await this.#kv.put(`cert.${record.serial}`, enc.encode(JSON.stringify(record)));
  }

  /** Every recorded certificate with its revocation, oldest first. */
  async certificates(): Promise<CertificateStatus[]> {
    const keys: string[] = [];
    for await (const k of await this.#kv.keys('cert.>')) keys.push(k);
    const out: CertificateStatus[] = [];
    for (const k of keys) {
      const e = await this.#kv.get(k);
      if (!e || e.operation !== 'PUT' || e.value.length === 0) continue;
      const r = JSON.parse(dec.decode(e.value)) as CertificateRecord;
      out.push({ ...r, revoked: this.#revokedCerts.get(r.serial) });
    }
    return out.sort((a, b) => a.issuedAt - b.issuedAt || a.serial.localeCompare(b.serial));
  }

  /** The revocation of a certificate, if it was revoked. */
  certificateRevocation(serial: string): CertificateRevocation | undefined {
    const s = normalizeSerial(serial);
    return s === undefined ? undefined : this.#revokedCerts.get(s);
  }

  /** Revokes a certificate by serial (idempotent: the first revocation stays); returns the revocation in force. */
  async revokeCertificate(serial: string, by: string, reason: string): Promise<CertificateRevocation> {
    const s = normalizeSerial(serial);
    if (s === undefined) throw new Error(`revoke certificate: serial ${JSON.stringify(serial)} is not hex`);
    const existing = this.#revokedCerts.get(s);
    if (existing) return existing;
    const r: CertificateRevocation = { serial: s, at: this.#now(), by, reason };
    await this.#kv.put(`certrevoked.${s}`, enc.encode(JSON.stringify(r)));
    if (!this.#revokedCerts.has(s)) this.#revokedCerts.set(s, r);
    return this.#revokedCerts.get(s)!;
  }

  /** True if the node was revoked (on any replica, once its watch delivered it). */
  isRevoked(node: string): boolean {
    return this.#revoked.has(node);
  }

  /** Creates a single-use token; returns it (shown once) with its expiry. */
  async createToken(ttlMs: number, labels: Record<string, string>, createdBy: string): Promise<{ token: string; expiresAt: Date }> {
    const token = TOKEN_PREFIX + randomBytes(32).toString('base64url');
    const expiresAt = this.#now() + ttlMs;
    const record: TokenRecord = { expiresAt, labels, createdBy };
    await this.#kv.create(tokenKey(token), enc.encode(JSON.stringify(record)));
    return { token, expiresAt: new Date(expiresAt) };
  }

  /**
   * Consumes a token for `node`: checks it exists, is unused and unexpired, then marks it used
   * with a compare-and-set on its revision. Returns the labels it carries.
   * @throws UnauthenticatedError (reason TOKEN_INVALID, TOKEN_USED or TOKEN_EXPIRED).
   */
  async consumeToken(token: string, node: string): Promise<Record<string, string>> {
    if (!token.startsWith(TOKEN_PREFIX) || token.length > 128) throw new UnauthenticatedError('join token is not valid', 'TOKEN_INVALID');
    const key = tokenKey(token);
    const entry = await this.#kv.get(key);
    if (!entry || entry.operation !== 'PUT' || entry.value.length === 0) throw new UnauthenticatedError('join token is not valid', 'TOKEN_INVALID');
    const record = JSON.parse(dec.decode(entry.value)) as TokenRecord;
    if (record.usedBy !== undefined) throw new UnauthenticatedError('join token was already used', 'TOKEN_USED');
    if (record.expiresAt <= this.#now()) throw new UnauthenticatedError('join token expired', 'TOKEN_EXPIRED');
    try {
      await this.#kv.update(key, enc.encode(JSON.stringify({ ...record, usedBy: node })), entry.revision);
    } catch {
      // Another replica (or a concurrent call) consumed it between our read and write.
      throw new UnauthenticatedError('join token was already used', 'TOKEN_USED');
    }
    return record.labels;
  }

  /**
   * Records that `node` enrolled with `labels`, which are bound to it from now on; a name
   * enrolls once (create fails if the key exists).
   * @throws PreconditionError (NODE_ALREADY_ENROLLED, NODE_REVOKED).
   */
  async recordEnrollment(node: string, labels: Record<string, string>): Promise<void> {
    if (this.isRevoked(node)) throw new PreconditionError(`node ${node} was revoked`, 'NODE_REVOKED');
    const record: EnrollmentRecord = { at: this.#now(), labels };
    try {
      await this.#kv.create(`node.${node}`, enc.encode(JSON.stringify(record)));
    } catch {
      throw new PreconditionError(`node ${node} is already enrolled; revoke it or choose another name`, 'NODE_ALREADY_ENROLLED');
    }
  }

  /**
   * The labels bound to `node` (read from the bucket, so a change by another replica counts at
   * once); undefined if the node never enrolled. A record from before labels were bound has none.
   */
  async enrolledLabels(node: string): Promise<EnrolledLabels | undefined> {
    const entry = await this.#kv.get(`node.${node}`);
    if (!entry || entry.operation !== 'PUT' || entry.value.length === 0) return undefined;
    const record = JSON.parse(dec.decode(entry.value)) as EnrollmentRecord;
    return { labels: record.labels ?? {}, previous: record.previousLabels };
  }

  /**
   * Replaces an enrolled node's labels (compare-and-set, retried on a concurrent change); the
   * labels before stay accepted in hellos until {@link forgetPreviousLabels}. Returns the new labels.
   * @throws NotFoundError if the node never enrolled; PreconditionError (NODE_REVOKED).
   */
  async setLabels(node: string, labels: Record<string, string>): Promise<Record<string, string>> {
    if (this.isRevoked(node)) throw new PreconditionError(`node ${node} was revoked`, 'NODE_REVOKED');
    for (let attempt = 0; ; attempt++) {
      const entry = await this.#kv.get(`node.${node}`);
      if (!entry || entry.operation !== 'PUT' || entry.value.length === 0) throw new NotFoundError(`node ${node} is not enrolled`);
      const record = JSON.parse(dec.decode(entry.value)) as EnrollmentRecord;
      const next: EnrollmentRecord = { ...record, labels, previousLabels: record.labels ?? {} };
      try {
        await this.#kv.update(`node.${node}`, enc.encode(JSON.stringify(next)), entry.revision);
        return labels;
      } catch (err) {
        if (attempt >= 4) throw err;
      }
    }
  }

  /** Drops the previous labels of `node` once it said hello with the current ones (best effort). */
  async forgetPreviousLabels(node: string): Promise<void> {
    const entry = await this.#kv.get(`node.${node}`);
    if (!entry || entry.operation !== 'PUT' || entry.value.length === 0) return;
    const record = JSON.parse(dec.decode(entry.value)) as EnrollmentRecord;
    if (record.previousLabels === undefined) return;
    const { previousLabels: _, ...rest } = record;
    await this.#kv.update(`node.${node}`, enc.encode(JSON.stringify(rest)), entry.revision).catch(() => undefined);
  }

  /** Revokes a node (idempotent: the first revocation stays). */
  async revoke(node: string, by: string, reason: string): Promise<Revocation> {
    const existing = this.#revoked.get(node);
    if (existing) return existing;
    const r: Revocation = { node, at: this.#now(), by, reason };
    await this.#kv.put(`revoked.${node}`, enc.encode(JSON.stringify(r)));
    this.#add(r);
    return r;
  }
}
