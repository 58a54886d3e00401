import type { Flags, OptionSpec } from './command.js';
import { parseDurationMs } from './duration.js';
import { UsageError } from './errors.js';
import type { ConnectionOptions } from './grpc-api.js';

/** The default controller address. */
export const DEFAULT_SERVER = '127.0.0.1:7443';

/** Flags every command takes. Each can be set by the environment variable named. */
export const GLOBAL_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  server: { type: 'string', short: 's', value: 'HOST:PORT', env: 'EDGEPLANE_SERVER', description: `controller gRPC address (default ${DEFAULT_SERVER})` },
  insecure: { type: 'boolean', env: 'EDGEPLANE_INSECURE', description: 'plaintext gRPC, for a controller started with --insecure (EDGEPLANE_INSECURE=1)' },
  'tls-ca': { type: 'string', value: 'FILE', env: 'EDGEPLANE_TLS_CA', description: 'CA bundle (PEM) that signed the controller certificate (default: system roots)' },
  'tls-cert': { type: 'string', value: 'FILE', env: 'EDGEPLANE_TLS_CERT', description: 'client certificate (PEM) for mutual TLS' },
  'tls-key': { type: 'string', value: 'FILE', env: 'EDGEPLANE_TLS_KEY', description: 'client private key (PEM) for mutual TLS' },
  'request-timeout': { type: 'string', value: 'DURATION', env: 'EDGEPLANE_REQUEST_TIMEOUT', description: 'deadline of every call to the controller (default 10s)' },
  help: { type: 'boolean', short: 'h', description: 'show help' },
};

function truthy(v: string | undefined): boolean {
  return v !== undefined && !['', '0', 'false', 'no'].includes(v.toLowerCase());
}

/**
 * Connection options from flags over environment over defaults.
 * @throws UsageError for a bad --request-timeout or half of a client key pair.
 */
export function connectionOptions(flags: Flags, env: NodeJS.ProcessEnv): ConnectionOptions {
  const timeoutText = flags.string('request-timeout') ?? env.EDGEPLANE_REQUEST_TIMEOUT ?? '10s';
  const requestTimeoutMs = parseDurationMs(timeoutText);
  if (requestTimeoutMs === undefined || requestTimeoutMs <= 0) throw new UsageError(`--request-timeout: ${JSON.stringify(timeoutText)} is not a duration like 10s`);
  const tlsCa = flags.string('tls-ca') ?? env.EDGEPLANE_TLS_CA;
  const tlsCert = flags.string('tls-cert') ?? env.EDGEPLANE_TLS_CERT;
  const tlsKey = flags.string('tls-key') ?? env.EDGEPLANE_TLS_KEY;
  if (Boolean(tlsCert) !== Boolean(tlsKey)) throw new UsageError('--tls-cert and --tls-key go together');
  return {
    server: flags.string('server') || env.EDGEPLANE_SERVER || DEFAULT_SERVER,
    insecure: flags.boolean('insecure') || truthy(env.EDGEPLANE_INSECURE),
    ...(tlsCa ? { tlsCa } : {}),
    ...(tlsCert ? { tlsCert } : {}),
    ...(tlsKey ? { tlsKey } : {}),
    requestTimeoutMs,
  };
}
