// The certificate a NATS server serves clients and routes with: issued by the fleet CA to a NATS
// server identity (spiffe://edgeplane/<fleet>/nats/<name>), which authorize.ts lets call no gRPC
// method and which agents and controllers require of the NATS servers they connect to.
import { join } from 'node:path';
import { CertificateIssueError } from '../errors.js';
import { generateKeyPair, writeFileAtomic, type CertificateAuthority } from './certificate-authority.js';

/** Lifetime of NATS server certificates: a year (the embedded server's is issued again at every start). */
export const NATS_CERT_LIFETIME_MS = 365 * 86_400_000;

/** Options of {@link writeNatsServerCertificate}. */
export interface NatsServerCertificateOptions {
  /** The server's name: the `<name>` of its identity (a lower-case DNS-like name). */
  name: string;
  /** Host names and IP addresses the certificate names (clients and routes that check host names). */
  hosts: readonly string[];
  /** Directory written: server.pem (the certificate, then the CA), server-key.pem (0600), ca.pem. */
  dir: string;
}

/** The files {@link writeNatsServerCertificate} wrote (nats-server's tls block reads them). */
export interface NatsServerCertificateFiles {
  certFile: string;
  keyFile: string;
  caFile: string;
}

function isIp(n: string): boolean {
  return /^[0-9.]+$/.test(n) || n.includes(':');
}

/**
 * Generates a key, has the CA issue a NATS server certificate for `name` and `hosts` (client
 * and server use: the same certificate authenticates a server's outgoing routes), and writes it,
 * its key (mode 0600) and the CA certificate to `dir` atomically. Returns the file paths.
 * @throws CertificateIssueError for a bad name or host; errors of the file system.
 */
export async function writeNatsServerCertificate(ca: CertificateAuthority, options: NatsServerCertificateOptions): Promise<NatsServerCertificateFiles> {
  const hosts = [...new Set(options.hosts.map((h) => h.trim()).filter(Boolean))];
  for (const h of hosts) {
    if (!/^[A-Za-z0-9.:_-]{1,253}$/.test(h)) throw new CertificateIssueError(`issue nats server certificate: ${JSON.stringify(h.slice(0, 80))} is not a host name or IP address`);
  }
  const keys = generateKeyPair();
  const issued = await ca.issue({
    identity: { fleet: ca.fleet, role: 'nats', name: options.name },
    publicKey: keys.publicKeyDer,
    lifetimeMs: NATS_CERT_LIFETIME_MS,
    dnsNames: hosts.filter((h) => !isIp(h)),
    ipAddresses: hosts.filter(isIp),
  });
  const files = { certFile: join(options.dir, 'server.pem'), keyFile: join(options.dir, 'server-key.pem'), caFile: join(options.dir, 'ca.pem') };
  writeFileAtomic(files.keyFile, keys.privateKeyPem, 0o600);
  writeFileAtomic(files.certFile, issued.certPem + ca.certPem, 0o644);
  writeFileAtomic(files.caFile, ca.certPem, 0o644);
  return files;
}
