import { readFileSync } from 'node:fs';
import { jwtAuthenticator, type NodeConnectionOptions } from '@nats-io/transport-node';
import { natsClientOptions, type NatsClientCredentials } from '@edgeplane/intent-log';
import { AgentConfigError, type AgentConfig } from './config.js';
import { checkNatsServerIdentity } from './node-identity.js';

/**
 * The agent's NATS connection options: its servers, reconnect forever (DESIGN.md: NATS
 * reconnects forever), and its own credentials (user JWT + nkey seed issued at enrollment,
 * which also fix its inbox prefix) and TLS CA. Reads the credential files now. Without
 * --nats-creds/--nats-jwt, `enrolled` (the NATS JWT and seed enrollment stored, read again at
 * every connect so a renewed JWT is used after a reconnect) is used when it has a JWT, and then
 * the server must serve TLS with a NATS server identity from the enrolled CA (`caPem`).
 * @returns options for `connect()`; `anonymous` is true when no credentials were configured.
 * @throws AgentConfigError if a credential file cannot be read or is malformed.
 */
export function agentNatsOptions(
  config: Pick<AgentConfig, 'nodeName' | 'natsServers' | 'natsCreds' | 'natsJwt' | 'natsSeed' | 'natsTlsCa'>,
  enrolled?: () => { natsJwt: string; natsSeed: string; caPem?: string },
): { options: NodeConnectionOptions; anonymous: boolean } {
  const read = (flag: string, file: string): string => {
    try {
      return readFileSync(file, 'utf8').trim();
    } catch (cause) {
      throw new AgentConfigError(`${flag} ${file}: ${(cause as Error).message}`, { cause });
    }
  };
  const credentials: NatsClientCredentials = {
    ...(config.natsCreds ? { credsFile: config.natsCreds } : {}),
    ...(config.natsJwt ? { jwt: read('--nats-jwt', config.natsJwt), seed: read('--nats-seed', config.natsSeed!) } : {}),
    ...(config.natsTlsCa ? { tls: { caFile: config.natsTlsCa } } : {}),
  };
  const fromEnrollment = !config.natsCreds && !config.natsJwt && enrolled && enrolled().natsJwt ? enrolled : undefined;
  let auth;
  try {
    // An enrolled node verifies the server with the CA it pinned at enrollment (unless
    // --nats-tls-ca names another), by chain and NATS server identity (spiffe://.../nats/<name>),
    // as the gRPC side checks the controller identity: it reaches the server by whatever
    // address, which the certificate need not name.
    const caPem = fromEnrollment && !config.natsTlsCa ? fromEnrollment().caPem : undefined;
    const tls = caPem ? { tls: { caPem, checkServerIdentity: checkNatsServerIdentity } } : {};
    auth = natsClientOptions(fromEnrollment ? { ...credentials, ...tls, jwt: fromEnrollment().natsJwt, seed: fromEnrollment().natsSeed } : credentials);
  } catch (cause) {
    throw new AgentConfigError((cause as Error).message, { cause });
  }
  if (fromEnrollment) {
    // The same key pair for the node's life; the JWT is renewed with its certificate.
    auth.authenticator = jwtAuthenticator(
      () => fromEnrollment().natsJwt,
      () => new TextEncoder().encode(fromEnrollment().natsSeed),
    );
  }
  return {
    anonymous: auth.authenticator === undefined,
    options: {
      servers: config.natsServers,
      name: `edgeplane-agent ${config.nodeName}`,
      waitOnFirstConnect: true,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      reconnectJitter: 250,
      timeout: 5000,
      ...auth,
    },
  };
}
