// The fleet's certificate authority: ECDSA P-256 certificates whose one URI SAN names the
// identity (identity.ts). Node's TLS (and so grpc-js and nats.js) accept these keys and
// signatures. @peculiar/x509 builds the certificates over Node's WebCrypto.
import 'reflect-metadata';
import { createHash, createPublicKey, generateKeyPairSync, webcrypto, X509Certificate as NodeX509, type KeyObject } from 'node:crypto';

type CryptoKey = webcrypto.CryptoKey;
type CryptoKeyPair = webcrypto.CryptoKeyPair;
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import * as x509 from '@peculiar/x509';
import { CertificateIssueError, ConfigError } from '../errors.js';
import { identityUri, parseIdentityUri, type Identity } from './identity.js';

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0]);

const ECDSA = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
/** Certificates start 5 minutes in the past: a node whose clock is a little behind still accepts them. */
const BACKDATE_MS = 5 * 60_000;

/** A certificate the CA issued. */
export interface IssuedCertificate {
  /** The certificate, PEM. */
  certPem: string;
  /** Hex serial number. */
  serialNumber: string;
  notAfter: Date;
  identity: Identity;
}

/** Options of {@link CertificateAuthority.issue}. */
export interface IssueOptions {
  identity: Identity;
  /** The subject's public key: SubjectPublicKeyInfo DER, or a KeyObject. Must be ECDSA P-256. */
  publicKey: Uint8Array | KeyObject;
  lifetimeMs: number;
  /** Extra DNS names and IP addresses (serving certificates, for clients that check host names). */
  dnsNames?: string[];
  ipAddresses?: string[];
}

/** A generated ECDSA P-256 key pair: private key PKCS#8 PEM (what Node's TLS loads), public key SPKI DER. */
export interface GeneratedKeyPair {
  privateKeyPem: string;
  publicKeyDer: Uint8Array;
}

/** Generates an ECDSA P-256 key pair. */
export function generateKeyPair(): GeneratedKeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'prime256v1' });
  return { privateKeyPem: privateKey.export({ type: 'pkcs8', format: 'pem' }) as string, publicKeyDer: new Uint8Array(publicKey.export({ type: 'spki', format: 'der' })) };
}

/** `sha256:<hex>` of a certificate's DER: what agents pin the CA by (`--ca-fingerprint`). */
export function certificateFingerprint(certPem: string): string {
  return `sha256:${createHash('sha256').update(new NodeX509(certPem).raw).digest('hex')}`;
}

/**
 * Returns the public key as a KeyObject if it is an ECDSA P-256 SubjectPublicKeyInfo.
 * @throws CertificateIssueError otherwise.
 */
export function p256PublicKey(key: Uint8Array | KeyObject): KeyObject {
  let obj: KeyObject;
  try {
    obj = key instanceof Uint8Array ? createPublicKey({ key: Buffer.from(key), format: 'der', type: 'spki' }) : key;
  } catch (cause) {
    throw new CertificateIssueError('parse public key: not a DER SubjectPublicKeyInfo', { cause });
  }
  if (obj.type !== 'public' || obj.asymmetricKeyType !== 'ec' || obj.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
    throw new CertificateIssueError('check public key: an ECDSA P-256 key is required');
  }
  return obj;
}

/**
 * Issues certificates for one fleet. Holds the CA private key in memory (a non-extractable
 * WebCrypto key); owns nothing that needs closing.
 */
export class CertificateAuthority {
  readonly certPem: string;
  readonly fleet: string;
  /** `sha256:<hex>` of the CA certificate. */
  readonly fingerprint: string;
  #cert: x509.X509Certificate;
  #key: CryptoKey;

  private constructor(certPem: string, cert: x509.X509Certificate, key: CryptoKey, fleet: string) {
    this.certPem = certPem;
    this.#cert = cert;
    this.#key = key;
    this.fleet = fleet;
    this.fingerprint = certificateFingerprint(certPem);
  }

  /** Creates a new CA (10 years) and returns it with its private key PEM, which the caller stores. */
  static async create(fleet: string): Promise<{ ca: CertificateAuthority; keyPem: string }> {
    const keys = (await webcrypto.subtle.generateKey(ECDSA, true, ['sign', 'verify'])) as CryptoKeyPair;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      name: `CN=edgeplane ${fleet} CA, O=edgeplane`,
      keys,
      signingAlgorithm: SIGN,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter: new Date(now + 10 * 365 * 86_400_000),
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      ],
    });
    const pkcs8 = Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey));
    const keyPem = `-----BEGIN PRIVATE KEY-----\n${pkcs8.toString('base64').replace(/.{64}/g, '$&\n').replace(/\n?$/, '\n')}-----END PRIVATE KEY-----\n`;
    return { ca: await CertificateAuthority.fromPem(cert.toString('pem') + '\n', keyPem, fleet), keyPem };
  }

  /**
   * A CA from its certificate and PKCS#8 private key (PEM).
   * @throws ConfigError if they cannot be parsed, the certificate is no CA, they do not match, or
   *   the CA names another fleet than `fleet`.
   */
  static async fromPem(certPem: string, keyPem: string, fleet: string): Promise<CertificateAuthority> {
    let cert: x509.X509Certificate;
    let key: CryptoKey;
    try {
      cert = new x509.X509Certificate(certPem);
      const der = Buffer.from(keyPem.replace(/-----[A-Z ]+-----/g, '').replace(/\s+/g, ''), 'base64');
      key = await webcrypto.subtle.importKey('pkcs8', der, ECDSA, false, ['sign']);
    } catch (cause) {
      throw new ConfigError('load CA: certificate or key is not ECDSA P-256 PEM (PKCS#8 key)', { cause });
    }
    if (!cert.getExtension(x509.BasicConstraintsExtension)?.ca) throw new ConfigError('load CA: the certificate is not a CA certificate');
    // A CA this controller created names its fleet (`CN=edgeplane <fleet> CA`): one made for
    // another fleet would issue identities the authorizer refuses (and nodes of that fleet would
    // pass for ours), so it is a configuration error. A CA from elsewhere names none: not checked.
    const named = /(?:^|,\s*)CN=edgeplane (\S+) CA(?:,|$)/.exec(cert.subject)?.[1];
    if (named !== undefined && named !== fleet) {
      throw new ConfigError(`load CA: the CA was made for fleet ${JSON.stringify(named)} but the log's fleet id is ${JSON.stringify(fleet)}; one fleet, one id: start with --fleet-id ${named} on a new log, or give a CA made for this fleet (--ca-cert/--ca-key)`);
    }
    // The key must match the certificate: sign and verify once.
    const probe = Buffer.from('edgeplane ca key check');
    const sig = await webcrypto.subtle.sign(SIGN, key, probe);
    if (!(await webcrypto.subtle.verify(SIGN, await cert.publicKey.export(ECDSA, ['verify']), sig, probe))) throw new ConfigError('load CA: the key does not match the certificate');
    return new CertificateAuthority(certPem.endsWith('\n') ? certPem : certPem + '\n', cert, key, fleet);
  }

  /**
   * Issues a certificate for an identity (client and server use).
   * @throws CertificateIssueError for a key that is not ECDSA P-256 or a bad identity.
   */
  async issue(options: IssueOptions): Promise<IssuedCertificate> {
    if (options.identity.fleet !== this.fleet) throw new CertificateIssueError(`issue certificate: identity fleet ${options.identity.fleet} is not ${this.fleet}`);
    let uri: string;
    try {
      uri = identityUri(options.identity);
    } catch (cause) {
      throw new CertificateIssueError(`issue certificate: ${(cause as Error).message}`, { cause });
    }
    const spki = p256PublicKey(options.publicKey).export({ type: 'spki', format: 'der' });
    const now = Date.now();
    const notAfter = new Date(now + options.lifetimeMs);
    const names: x509.JsonGeneralName[] = [{ type: 'url', value: uri }];
    for (const d of options.dnsNames ?? []) names.push({ type: 'dns', value: d });
    for (const ip of options.ipAddresses ?? []) names.push({ type: 'ip', value: ip });
    const cert = await x509.X509CertificateGenerator.create({
      subject: `CN=${options.identity.name}, OU=${options.identity.role}, O=edgeplane ${this.fleet}`,
      issuer: this.#cert.subject,
      publicKey: new Uint8Array(spki),
      signingKey: this.#key,
      signingAlgorithm: SIGN,
      notBefore: new Date(now - BACKDATE_MS),
      notAfter,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension(names, false),
        await x509.AuthorityKeyIdentifierExtension.create(this.#cert),
      ],
    });
    return { certPem: cert.toString('pem') + '\n', serialNumber: cert.serialNumber, notAfter, identity: options.identity };
  }

  /** True if `certPem` was signed by this CA and its identity URI parses (validity dates are not checked). */
  async signed(certPem: string): Promise<Identity | undefined> {
    const cert = new x509.X509Certificate(certPem);
    if (!(await cert.verify({ publicKey: this.#cert.publicKey, signatureOnly: true }))) return undefined;
    const san = cert.getExtension(x509.SubjectAlternativeNameExtension);
    const uris = san?.names.items.filter((n) => n.type === 'url').map((n) => parseIdentityUri(n.value)) ?? [];
    return uris.length === 1 ? uris[0] : undefined;
  }
}

/** Writes a file atomically with the given mode (keys 0600, certificates 0644). */
export function writeFileAtomic(path: string, content: string, mode: number): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, content, { mode });
  chmodSync(tmp, mode);
  renameSync(tmp, path);
}

/** Where {@link loadOrCreateCertificateAuthority} finds or puts the CA. */
export interface CaFiles {
  certFile: string;
  keyFile: string;
}

/** The default CA files in a data directory: DIR/pki/ca.pem and DIR/pki/ca-key.pem. */
export function defaultCaFiles(dataDir: string): CaFiles {
  return { certFile: join(dataDir, 'pki', 'ca.pem'), keyFile: join(dataDir, 'pki', 'ca-key.pem') };
}

/**
 * Loads the CA from its files, or creates both (key mode 0600) when neither exists.
 * Returns whether it was created (first start).
 * @throws ConfigError when only one file exists or they do not load.
 */
export async function loadOrCreateCertificateAuthority(files: CaFiles, fleet: string): Promise<{ ca: CertificateAuthority; created: boolean }> {
  const haveCert = existsSync(files.certFile);
  const haveKey = existsSync(files.keyFile);
  if (haveCert !== haveKey) throw new ConfigError(`load CA: ${haveCert ? files.keyFile : files.certFile} is missing (give both CA files or neither)`);
  if (haveCert) {
    let certPem: string;
    let keyPem: string;
    try {
      certPem = readFileSync(files.certFile, 'utf8');
      keyPem = readFileSync(files.keyFile, 'utf8');
    } catch (cause) {
      throw new ConfigError(`load CA: ${(cause as Error).message}`, { cause });
    }
    return { ca: await CertificateAuthority.fromPem(certPem, keyPem, fleet), created: false };
  }
  const { ca, keyPem } = await CertificateAuthority.create(fleet);
  writeFileAtomic(files.keyFile, keyPem, 0o600);
  writeFileAtomic(files.certFile, ca.certPem, 0o644);
  return { ca, created: true };
}
