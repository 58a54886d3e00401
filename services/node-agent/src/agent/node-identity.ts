// The agent's identity: enrollment with a single-use join token, the certificate and keys it
// keeps in its state directory, grpc-js credentials that follow renewals, and the renewal
// itself (at 70 % of the certificate's life, over the current mutual TLS identity).
import { createHash, generateKeyPairSync, sign, X509Certificate } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect as tlsConnect, type DetailedPeerCertificate, type PeerCertificate } from 'node:tls';
import * as grpc from '@grpc/grpc-js';
import { createUser, fromSeed } from '@nats-io/nkeys';
import { TrustServiceClient, type EnrollResponse, type RenewCertificateResponse } from '@edgeplane/proto';

/** Enrollment, pinning or renewal failed: `operation: reason`, with the cause. */
export class EnrollmentError extends Error {
  override name = 'EnrollmentError';
}

/** What a node keeps of its identity (all PEM except the NATS parts). */
export interface NodeCredentials {
  nodeName: string;
  certPem: string;
  keyPem: string;
  caPem: string;
  notAfter: Date;
  /** The NATS user seed ("SU...") and the JWT the controller issued for it ('' = none). */
  natsSeed: string;
  natsJwt: string;
  /**
   * The labels bound to the node at enrollment (the join token's), or by an admin since (learnt
   * from a welcome): the hello carries exactly these.
   */
  labels: Record<string, string>;
  /** The fleet the node enrolled in (the controller's log fleet id); '' for credentials stored before it was returned. */
  fleetId: string;
}

const DIR = 'identity';
const URI_PREFIX = 'spiffe://edgeplane/';

function files(stateDir: string): Record<'cert' | 'key' | 'ca' | 'natsSeed' | 'natsJwt' | 'meta', string> {
  const d = join(stateDir, DIR);
  return { cert: join(d, 'node.pem'), key: join(d, 'node-key.pem'), ca: join(d, 'ca.pem'), natsSeed: join(d, 'nats.seed'), natsJwt: join(d, 'nats.jwt'), meta: join(d, 'meta.json') };
}

function writeAtomic(path: string, content: string, mode: number): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, content, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, path);
}

/** Stores credentials in STATE_DIR/identity (keys and NATS secrets 0600, directory 0700). */
export function saveNodeCredentials(stateDir: string, c: NodeCredentials): void {
  const f = files(stateDir);
  mkdirSync(join(stateDir, DIR), { recursive: true, mode: 0o700 });
  writeAtomic(f.key, c.keyPem, 0o600);
  writeAtomic(f.cert, c.certPem, 0o644);
  writeAtomic(f.ca, c.caPem, 0o644);
  writeAtomic(f.natsSeed, c.natsSeed, 0o600);
  writeAtomic(f.natsJwt, c.natsJwt, 0o600);
  writeAtomic(f.meta, JSON.stringify({ nodeName: c.nodeName, labels: c.labels, fleetId: c.fleetId }), 0o644);
}

/** Loads stored credentials; undefined when the node never enrolled. @throws EnrollmentError if they are damaged. */
export function loadNodeCredentials(stateDir: string): NodeCredentials | undefined {
  const f = files(stateDir);
  if (!existsSync(f.cert)) return undefined;
  try {
    const certPem = readFileSync(f.cert, 'utf8');
    const meta = JSON.parse(readFileSync(f.meta, 'utf8')) as { nodeName: string; labels: Record<string, string>; fleetId?: string };
    return {
      nodeName: meta.nodeName,
      labels: meta.labels,
      fleetId: meta.fleetId ?? '',
      certPem,
      keyPem: readFileSync(f.key, 'utf8'),
      caPem: readFileSync(f.ca, 'utf8'),
      notAfter: new Date(new X509Certificate(certPem).validTo),
      natsSeed: readFileSync(f.natsSeed, 'utf8'),
      natsJwt: readFileSync(f.natsJwt, 'utf8'),
    };
  } catch (cause) {
    throw new EnrollmentError(`load node credentials from ${join(stateDir, DIR)}: ${(cause as Error).message}`, { cause });
  }
}

/** The role of the one edgeplane identity URI in a peer certificate (`spiffe://edgeplane/<fleet>/<role>/<name>`), if exactly one. */
function peerRole(cert: PeerCertificate): string | undefined {
  const uris = (cert.subjectaltname ?? '').split(', ').filter((s) => s.startsWith(`URI:${URI_PREFIX}`));
  return uris.length === 1 ? uris[0]!.split('/')[4] : undefined;
}

/**
 * Verifies that the peer is a controller of the fleet: its certificate carries a
 * `spiffe://edgeplane/<fleet>/controller/<id>` URI (host names are not what identifies it).
 */
export function checkControllerIdentity(_host: string, cert: PeerCertificate): Error | undefined {
  return peerRole(cert) === 'controller' ? undefined : new Error('the server certificate is not an edgeplane controller identity');
}

/**
 * Verifies that the peer is a NATS server of the fleet: its certificate carries a
 * `spiffe://edgeplane/<fleet>/nats/<name>` URI. Node, people and controller certificates chain
 * to the same CA, so the chain alone would let any of them pose as a NATS server.
 */
export function checkNatsServerIdentity(_host: string, cert: PeerCertificate): Error | undefined {
  return peerRole(cert) === 'nats' ? undefined : new Error('the NATS server certificate is not an edgeplane NATS server identity');
}

function fingerprintOf(raw: Buffer): string {
  return `sha256:${createHash('sha256').update(raw).digest('hex')}`;
}

/**
 * Connects to the controller once without trusting anything, finds the CA with the pinned
 * fingerprint in the chain it presents, checks that it signed the server's certificate, and
 * returns that CA (PEM) to verify every later connection with.
 * @throws EnrollmentError if no certificate in the chain has the fingerprint or it did not sign the server's.
 */
export async function fetchPinnedCa(address: string, fingerprint: string, timeoutMs = 10_000): Promise<string> {
  const want = fingerprint.toLowerCase();
  if (!/^sha256:[0-9a-f]{64}$/.test(want)) throw new EnrollmentError(`pin CA: ${JSON.stringify(fingerprint)} is not sha256:<64 hex digits>`);
  const i = address.lastIndexOf(':');
  const host = address.slice(0, i).replace(/^\[|\]$/g, '');
  const port = Number(address.slice(i + 1));
  const chain = await new Promise<DetailedPeerCertificate>((resolve, reject) => {
    const sock = tlsConnect({ host, port, rejectUnauthorized: false, ALPNProtocols: ['h2'], ...(/^[\d.:]+$/.test(host) ? {} : { servername: host }) }, () => {
      const c = sock.getPeerCertificate(true);
      sock.destroy();
      resolve(c);
    });
    sock.setTimeout(timeoutMs, () => sock.destroy(new Error(`no TLS handshake within ${timeoutMs} ms`)));
    sock.on('error', (cause) => reject(new EnrollmentError(`pin CA: connect ${address}: ${cause.message}`, { cause })));
  });
  const leaf = new X509Certificate(chain.raw);
  const seen = new Set<string>();
  for (let c: DetailedPeerCertificate | undefined = chain; c && !seen.has(c.fingerprint256); c = c.issuerCertificate) {
    seen.add(c.fingerprint256);
    if (fingerprintOf(c.raw) !== want) continue;
    const ca = new X509Certificate(c.raw);
    if (!ca.ca || !leaf.checkIssued(ca) || !leaf.verify(ca.publicKey)) throw new EnrollmentError('pin CA: the pinned CA did not sign the server certificate');
    return ca.toString();
  }
  throw new EnrollmentError(`pin CA: ${address} presented no certificate with fingerprint ${want}`);
}

function unaryCall<Res>(fn: (cb: (err: grpc.ServiceError | null, res: Res) => void) => unknown): Promise<Res> {
  return new Promise((resolve, reject) => fn((err, res) => (err ? reject(err) : resolve(res))));
}

/** Options of {@link enrollNode}. */
export interface EnrollOptions {
  address: string;
  token: string;
  caFingerprint: string;
  nodeName: string;
  stateDir: string;
  deadlineMs?: number;
}

/**
 * Enrolls the node: pins the CA by fingerprint, generates the node's ECDSA P-256 key and NATS
 * nkey here (they never leave the node), calls TrustService.Enroll with a proof of possession,
 * and stores the result in STATE_DIR/identity. Returns the stored credentials.
 * @throws EnrollmentError (with the gRPC error as cause: UNAUTHENTICATED for a bad, used or expired token).
 */
export async function enrollNode(o: EnrollOptions): Promise<NodeCredentials> {
  const caPem = await fetchPinnedCa(o.address, o.caFingerprint);
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  const nats = createUser();
  const proof = sign('sha256', Buffer.from(`edgeplane-enroll-v1\n${o.nodeName}\n${o.token}`), privateKey);
  const client = new TrustServiceClient(o.address, grpc.credentials.createSsl(Buffer.from(caPem), null, null, { checkServerIdentity: checkControllerIdentity }));
  let res: EnrollResponse;
  try {
    res = await unaryCall<EnrollResponse>((cb) =>
      client.enroll(
        { token: o.token, nodeName: o.nodeName, publicKey: publicKey.export({ type: 'spki', format: 'der' }), proof, natsPublicKey: nats.getPublicKey() },
        new grpc.Metadata(),
        { deadline: Date.now() + (o.deadlineMs ?? 30_000) },
        cb,
      ),
    );
  } catch (cause) {
    throw new EnrollmentError(`enroll ${o.nodeName}: ${(cause as Error).message}`, { cause });
  } finally {
    client.close();
  }
  const creds: NodeCredentials = {
    nodeName: o.nodeName,
    certPem: res.certificate,
    keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string,
    caPem: res.caCertificate,
    notAfter: res.notAfter ?? new Date(new X509Certificate(res.certificate).validTo),
    natsSeed: new TextDecoder().decode(nats.getSeed()),
    natsJwt: res.natsJwt,
    labels: res.labels,
    fleetId: res.fleetId,
  };
  saveNodeCredentials(o.stateDir, creds);
  return creds;
}

/** The NATS public key of a stored seed (for checks and logs). */
export function natsPublicKeyOf(seed: string): string {
  return fromSeed(new TextEncoder().encode(seed)).getPublicKey();
}

/**
 * grpc-js's certificate-provider credentials build a new TLS secure context (parse the key, the
 * certificate and the CA) for every connection attempt: about 8 ms of CPU each. One agent pays
 * that once per reconnect, but an agent whose streams all drop at once, or a simulator hosting
 * thousands (bench/fleet-sim.ts: 4,700 attempts = a 38 s stall that expired every connect
 * deadline), pays it in one burst. This keeps the context built from the newest updates and
 * builds a new one only when an update object changes (NodeIdentity hands grpc-js the same
 * objects until it renews). It wraps grpc-js's internal `getLatestSecureContext`; if a grpc-js
 * release renames it, nothing is wrapped and every attempt builds its own context again, as before.
 * Returns `creds`.
 */
function reuseSecureContext(creds: grpc.ChannelCredentials): grpc.ChannelCredentials {
  const internal = creds as unknown as { getLatestSecureContext?: () => unknown; latestCaUpdate?: unknown; latestIdentityUpdate?: unknown };
  const build = internal.getLatestSecureContext?.bind(creds);
  if (!build) return creds;
  let built: { ca: unknown; id: unknown; context: unknown } | undefined;
  internal.getLatestSecureContext = () => {
    if (!built || built.ca !== internal.latestCaUpdate || built.id !== internal.latestIdentityUpdate || !built.context) {
      built = { ca: internal.latestCaUpdate, id: internal.latestIdentityUpdate, context: build() };
    }
    return built.context;
  };
  return creds;
}

/** Options of {@link NodeIdentity}. */
export interface NodeIdentityOptions {
  /** The controller's address, or its replicas' (a failed renewal tries the next one the next time). */
  address: string | readonly string[];
  stateDir: string;
  /** Share of the certificate's life after which it is renewed. Default 0.7. */
  renewAt?: number;
  onRenewed?: (notAfter: Date) => void;
  onError?: (message: string, err: unknown) => void;
}

/**
 * A node's live mutual TLS identity: grpc-js channel credentials whose certificate follows
 * renewals (connections made after a renewal use the new certificate; open streams are not
 * touched), and the renewal timer. Owns the timer and its TrustService client; close() stops
 * both (idempotent) and does not affect connections made with {@link channelCredentials}.
 */
export class NodeIdentity implements grpc.experimental.CertificateProvider {
  #o: NodeIdentityOptions;
  #creds: NodeCredentials;
  #caListeners = new Set<grpc.experimental.CaCertificateUpdateListener>();
  #idListeners = new Set<grpc.experimental.IdentityCertificateUpdateListener>();
  #channelCredentials: grpc.ChannelCredentials;
  #clients: TrustServiceClient[];
  /** The replica the next renewal asks. */
  #next = 0;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  /** The updates handed to grpc-js: the same objects until a renewal, so the secure context built from them is reused. */
  #caUpdate!: grpc.experimental.CaCertificateUpdate;
  #idUpdate!: grpc.experimental.IdentityCertificateUpdate;

  constructor(credentials: NodeCredentials, options: NodeIdentityOptions) {
    this.#creds = credentials;
    this.#o = options;
    this.#setUpdates();
    this.#channelCredentials = reuseSecureContext(grpc.experimental.createCertificateProviderChannelCredentials(this, this, { checkServerIdentity: checkControllerIdentity }));
    this.#clients = (typeof options.address === 'string' ? [options.address] : options.address).map((a) => new TrustServiceClient(a, this.#channelCredentials));
  }

  #setUpdates(): void {
    this.#caUpdate = { caCertificate: Buffer.from(this.#creds.caPem) };
    this.#idUpdate = { certificate: Buffer.from(this.#creds.certPem), privateKey: Buffer.from(this.#creds.keyPem) };
  }

  /**
   * Stores labels an admin bound to the node since (from a welcome) with the credentials, so
   * the next start says hello with them. Returns true if they differ from the stored ones.
   */
  adoptLabels(labels: Record<string, string>): boolean {
    const a = Object.entries(this.#creds.labels).sort();
    const b = Object.entries(labels).sort();
    if (JSON.stringify(a) === JSON.stringify(b)) return false;
    this.#creds = { ...this.#creds, labels: { ...labels } };
    saveNodeCredentials(this.#o.stateDir, this.#creds);
    return true;
  }

  /** The current credentials. Callers must not modify them. */
  get credentials(): NodeCredentials {
    return this.#creds;
  }

  /** Channel credentials for every client the agent makes to the controller. */
  channelCredentials(): grpc.ChannelCredentials {
    return this.#channelCredentials;
  }

  /** Starts the renewal timer (renewal at `renewAt` of the certificate's remaining life, retried every 30 s on failure). */
  start(): void {
    this.#schedule();
  }

  #schedule(retryMs?: number): void {
    if (this.#closed) return;
    clearTimeout(this.#timer);
    const cert = new X509Certificate(this.#creds.certPem);
    const from = Date.parse(cert.validFrom);
    const to = Date.parse(cert.validTo);
    const at = from + (to - from) * (this.#o.renewAt ?? 0.7);
    const delay = retryMs ?? Math.max(0, at - Date.now());
    this.#timer = setTimeout(() => void this.renew().catch((err: unknown) => {
      this.#o.onError?.('renew node certificate', err);
      this.#schedule(30_000);
    }), Math.min(delay, 2 ** 31 - 1));
    this.#timer.unref();
  }

  /**
   * Renews now: a new key pair, RenewCertificate over the current identity, store, and hand the
   * new certificate to grpc-js for new connections. Returns the new expiry.
   * @throws EnrollmentError with the gRPC error as cause.
   */
  async renew(): Promise<Date> {
    const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
    const proof = sign('sha256', Buffer.from(`edgeplane-renew-v1\n${this.#creds.nodeName}`), privateKey);
    let res: RenewCertificateResponse;
    const client = this.#clients[this.#next % this.#clients.length]!;
    try {
      res = await unaryCall<RenewCertificateResponse>((cb) =>
        client.renewCertificate({ publicKey: publicKey.export({ type: 'spki', format: 'der' }), proof, natsPublicKey: this.#creds.natsSeed ? natsPublicKeyOf(this.#creds.natsSeed) : '' }, new grpc.Metadata(), { deadline: Date.now() + 30_000 }, cb),
      );
    } catch (cause) {
      this.#next++;
      throw new EnrollmentError(`renew ${this.#creds.nodeName}: ${(cause as Error).message}`, { cause });
    }
    const notAfter = res.notAfter ?? new Date(new X509Certificate(res.certificate).validTo);
    this.#creds = { ...this.#creds, certPem: res.certificate, keyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, caPem: res.caCertificate, notAfter, natsJwt: res.natsJwt || this.#creds.natsJwt };
    saveNodeCredentials(this.#o.stateDir, this.#creds);
    this.#setUpdates();
    for (const l of this.#idListeners) l(this.#idUpdate);
    for (const l of this.#caListeners) l(this.#caUpdate);
    this.#o.onRenewed?.(notAfter);
    this.#schedule();
    return notAfter;
  }

  /** @internal grpc-js CertificateProvider */
  addCaCertificateListener(l: grpc.experimental.CaCertificateUpdateListener): void {
    this.#caListeners.add(l);
    // grpc-js registers its watcher after adding the listener: deliver on the next tick.
    process.nextTick(() => l(this.#caUpdate));
  }

  /** @internal */
  removeCaCertificateListener(l: grpc.experimental.CaCertificateUpdateListener): void {
    this.#caListeners.delete(l);
  }

  /** @internal */
  addIdentityCertificateListener(l: grpc.experimental.IdentityCertificateUpdateListener): void {
    this.#idListeners.add(l);
    process.nextTick(() => l(this.#idUpdate));
  }

  /** @internal */
  removeIdentityCertificateListener(l: grpc.experimental.IdentityCertificateUpdateListener): void {
    this.#idListeners.delete(l);
  }

  /** Stops renewing. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    for (const c of this.#clients) c.close();
  }

  [Symbol.dispose](): void {
    this.close();
  }
}
