import type { PeerCertificate } from 'node:tls';

/**
 * What an identity may be: a node agent, a person or pipeline with a role, a controller replica,
 * or a NATS server (its serving and route certificate: it may call no gRPC method).
 */
export type Role = 'node' | 'viewer' | 'operator' | 'admin' | 'controller' | 'nats';

/** Every role, in order of privilege for people (node, controller and nats are machine roles). */
export const ROLES: readonly Role[] = ['node', 'viewer', 'operator', 'admin', 'controller', 'nats'];

/** Who a caller is, as its certificate says. */
export interface Identity {
  /** The fleet (trust domain path); one controller CA serves one fleet. */
  fleet: string;
  role: Role;
  /** Node name for role node, the replica id for controller, the server name for nats, the person's or pipeline's name otherwise. */
  name: string;
}

/** The fleet name used when none is configured. */
export const DEFAULT_FLEET = 'default';

const NAME = /^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/;
const PREFIX = 'spiffe://edgeplane/';

/**
 * The URI SAN an identity is encoded as: `spiffe://edgeplane/<fleet>/<role>/<name>`. The only
 * encoder; {@link parseIdentityUri} is the only decoder.
 * @throws Error if a part is not a lower-case DNS-like name or the role is unknown.
 */
export function identityUri(id: Identity): string {
  for (const [k, v] of [['fleet', id.fleet], ['name', id.name]] as const) {
    if (!NAME.test(v)) throw new Error(`identity ${k} ${JSON.stringify(v)}: lower-case letters, digits, '.', '_' or '-', at most 63`);
  }
  if (!ROLES.includes(id.role)) throw new Error(`identity role ${JSON.stringify(id.role)}: one of ${ROLES.join(', ')}`);
  return `${PREFIX}${id.fleet}/${id.role}/${id.name}`;
}

/** Parses an identity URI; returns undefined for anything that is not exactly one. */
export function parseIdentityUri(uri: string): Identity | undefined {
  if (!uri.startsWith(PREFIX)) return undefined;
  const parts = uri.slice(PREFIX.length).split('/');
  if (parts.length !== 3) return undefined;
  const [fleet, role, name] = parts as [string, string, string];
  if (!NAME.test(fleet) || !NAME.test(name) || !ROLES.includes(role as Role)) return undefined;
  return { fleet, role: role as Role, name };
}

/**
 * The identity in a TLS peer certificate (Node's `subjectaltname`, e.g.
 * `DNS:x, URI:spiffe://edgeplane/default/node/n1`). A certificate with no identity URI, or
 * with more than one, has none: undefined.
 */
export function identityFromPeerCertificate(cert: Pick<PeerCertificate, 'subjectaltname'> | undefined): Identity | undefined {
  const san = cert?.subjectaltname;
  if (!san) return undefined;
  const found = san
    .split(', ')
    .filter((s) => s.startsWith('URI:'))
    .map((s) => parseIdentityUri(s.slice(4)))
    .filter((i): i is Identity => i !== undefined);
  return found.length === 1 ? found[0] : undefined;
}

/** `role/name` for logs and error messages. */
export function describeIdentity(id: Identity): string {
  return `${id.role}/${id.name}`;
}

/**
 * A Node TLS `checkServerIdentity` for NATS connections: the server must present a NATS server
 * identity (`spiffe://edgeplane/<fleet>/nats/<name>`). Used instead of host-name checks when the
 * servers' certificates come from the fleet CA, which also signs node, people and controller
 * certificates: the chain alone would let any of those pose as a NATS server. The fleet is
 * the CA's (one CA serves one fleet).
 * @returns undefined when the certificate is a NATS server identity, else the Error to refuse with.
 */
export function checkNatsServerIdentity(_host: string, cert: Pick<PeerCertificate, 'subjectaltname'>): Error | undefined {
  return identityFromPeerCertificate(cert)?.role === 'nats' ? undefined : new Error('the NATS server certificate is not an edgeplane NATS server identity (spiffe://edgeplane/<fleet>/nats/<name>)');
}
