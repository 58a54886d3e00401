import type { PeerCertificate } from 'node:tls';

/** What an identity may be: a node agent, a person or pipeline with a role, or a controller replica. */
export type Role = 'node' | 'viewer' | 'operator' | 'admin' | 'controller';

/** Every role, in order of privilege for people (node and controller are machine roles). */
export const ROLES: readonly Role[] = ['node', 'viewer', 'operator', 'admin', 'controller'];

/** Who a caller is, as its certificate says. */
export interface Identity {
  /** The fleet (trust domain path); one controller CA serves one fleet. */
  fleet: string;
  role: Role;
  /** Node name for role node, the person's or pipeline's name otherwise, the replica id for controller. */
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
