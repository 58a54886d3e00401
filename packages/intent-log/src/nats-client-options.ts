import { readFileSync } from 'node:fs';
import type { PeerCertificate } from 'node:tls';
import { jwtAuthenticator, nkeys, type NodeConnectionOptions } from '@nats-io/transport-node';
import { natsInboxPrefix } from '@edgeplane/proto';
import { NatsCredentialsError } from './errors.js';

/**
 * How a client proves who it is to NATS, and the TLS it uses. Either a creds file (the user
 * JWT and nkey seed in the format `nsc` and the controller write), or the JWT and seed given
 * separately. Nothing at all means anonymous, which an edgeplane NATS server refuses.
 */
export interface NatsClientCredentials {
  /** A `.creds` file: `-----BEGIN NATS USER JWT-----` and `-----BEGIN USER NKEY SEED-----` blocks. */
  credsFile?: string;
  /** The user JWT (with seed). */
  jwt?: string;
  /** The user nkey seed, `SU...` (with jwt). */
  seed?: string;
  /** TLS: the CA that signed the servers' certificates, and a client certificate if they require one. */
  tls?: NatsClientTls;
}

/** TLS of {@link NatsClientCredentials}: PEM files, or the CA as PEM text and a server identity check. */
export interface NatsClientTls {
  caFile?: string;
  /** The CA as PEM text (an agent's enrolled CA); used instead of caFile. */
  caPem?: string;
  certFile?: string;
  keyFile?: string;
  /**
   * Checks the server's certificate after its chain verified against the CA, instead of
   * matching the host name (Node's tls checkServerIdentity: an Error refuses the server).
   */
  checkServerIdentity?: (host: string, cert: PeerCertificate) => Error | undefined;
}

const JWT_BLOCK = /-----BEGIN NATS USER JWT-----\s*\n\s*([A-Za-z0-9_\-.=]+)\s*\n/;
const SEED_BLOCK = /-----BEGIN USER NKEY SEED-----\s*\n\s*(SU[A-Z2-7]+)\s*\n/;

/**
 * Parses a creds file's text.
 * @returns the JWT and the seed.
 * @throws NatsCredentialsError if either block is missing.
 */
export function parseCreds(text: string): { jwt: string; seed: string } {
  const jwt = JWT_BLOCK.exec(text)?.[1];
  const seed = SEED_BLOCK.exec(text)?.[1];
  if (!jwt || !seed) throw new NatsCredentialsError('parse nats creds: expected a NATS USER JWT and a USER NKEY SEED block');
  return { jwt, seed };
}

/**
 * Formats a creds file (the layout nats tools read) from a user JWT and seed. The text holds a
 * secret: write it with mode 0600.
 */
export function formatCreds(jwt: string, seed: string): string {
  return `-----BEGIN NATS USER JWT-----\n${jwt}\n------END NATS USER JWT------\n\n************************* IMPORTANT *************************\nNKEY Seed printed below can be used to sign and prove identity.\nNKEYs are sensitive and should be treated as secrets.\n\n-----BEGIN USER NKEY SEED-----\n${seed}\n------END USER NKEY SEED------\n\n*************************************************************\n`;
}

/**
 * The connection options that authenticate a client: a JWT authenticator (the server sends a
 * nonce, the client signs it with the seed), the user's own inbox prefix (node users may
 * subscribe only to `natsInboxPrefix(theirKey).>`) and TLS. Spread them into `connect()`.
 * Reads the files once, now.
 * @returns options for `connect()`; empty when credentials has nothing (anonymous).
 * @throws NatsCredentialsError if a file cannot be read or the seed is not a user seed.
 */
/**
 * The user public key (U...) of the credentials' seed: what names the user's inbox and
 * inbox prefix (natsInboxPrefix).
 * @returns undefined for anonymous credentials.
 * @throws NatsCredentialsError as {@link natsClientOptions}.
 */
export function natsCredentialsPublicKey(credentials: NatsClientCredentials): string | undefined {
  const { seed } = readCredentials(credentials);
  if (!seed) return undefined;
  return userPublicKey(seed);
}

function userPublicKey(seed: string): string {
  let publicKey: string;
  try {
    const kp = nkeys.fromSeed(new TextEncoder().encode(seed));
    publicKey = kp.getPublicKey();
    kp.clear();
  } catch (cause) {
    throw new NatsCredentialsError('nats credentials: the seed is not an nkey seed', { cause });
  }
  if (!publicKey.startsWith('U')) throw new NatsCredentialsError('nats credentials: the seed is not a user seed (SU...)');
  return publicKey;
}

function readCredentials(credentials: NatsClientCredentials): { jwt?: string | undefined; seed?: string | undefined } {
  if (!credentials.credsFile) return { jwt: credentials.jwt, seed: credentials.seed };
  let text: string;
  try {
    text = readFileSync(credentials.credsFile, 'utf8');
  } catch (cause) {
    throw new NatsCredentialsError(`read nats creds ${credentials.credsFile}`, { cause });
  }
  return parseCreds(text);
}

export function natsClientOptions(credentials: NatsClientCredentials): Pick<NodeConnectionOptions, 'authenticator' | 'inboxPrefix' | 'tls'> {
  const { jwt, seed } = readCredentials(credentials);
  const out: Pick<NodeConnectionOptions, 'authenticator' | 'inboxPrefix' | 'tls'> = {};
  if (jwt || seed) {
    if (!jwt || !seed) throw new NatsCredentialsError('nats credentials: a JWT needs its seed and a seed its JWT');
    const publicKey = userPublicKey(seed);
    out.authenticator = jwtAuthenticator(jwt, new TextEncoder().encode(seed));
    out.inboxPrefix = natsInboxPrefix(publicKey);
  }
  const tls = credentials.tls;
  if (tls && (tls.caFile || tls.caPem || tls.certFile || tls.keyFile)) {
    if (!!tls.certFile !== !!tls.keyFile) throw new NatsCredentialsError('nats tls: a client certificate needs its key and a key its certificate');
    out.tls = {
      ...(tls.caPem ? { ca: tls.caPem } : tls.caFile ? { caFile: tls.caFile } : {}),
      ...(tls.certFile ? { certFile: tls.certFile, keyFile: tls.keyFile! } : {}),
      // nats.js spreads its tls options into Node's tls.connect().
      ...(tls.checkServerIdentity ? ({ checkServerIdentity: tls.checkServerIdentity } as object) : {}),
    };
  }
  return out;
}
