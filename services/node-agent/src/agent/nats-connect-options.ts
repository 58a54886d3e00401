import { readFileSync } from 'node:fs';
import type { NodeConnectionOptions } from '@nats-io/transport-node';
import { natsClientOptions, type NatsClientCredentials } from '@edgeplane/intent-log';
import { AgentConfigError, type AgentConfig } from './config.js';

/**
 * The agent's NATS connection options: its servers, reconnect forever (DESIGN.md: NATS
 * reconnects forever), and its own credentials (user JWT + nkey seed issued at enrollment,
 * which also fix its inbox prefix) and TLS CA. Reads the credential files now.
 * @returns options for `connect()`; `anonymous` is true when no credentials were configured.
 * @throws AgentConfigError if a credential file cannot be read or is malformed.
 */
export function agentNatsOptions(config: Pick<AgentConfig, 'nodeName' | 'natsServers' | 'natsCreds' | 'natsJwt' | 'natsSeed' | 'natsTlsCa'>): { options: NodeConnectionOptions; anonymous: boolean } {
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
  let auth;
  try {
    auth = natsClientOptions(credentials);
  } catch (cause) {
    throw new AgentConfigError((cause as Error).message, { cause });
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
