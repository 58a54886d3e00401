import { hostname } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { MAX_INTENT_BYTES, MAX_POLICIES, MAX_RULES_PER_POLICY } from '@edgeplane/proto';
import { ConfigError } from './errors.js';

/** Everything the controller is configured with. */
export interface ControllerConfig {
  listen: string;
  insecure: boolean;
  tlsCert?: string;
  tlsKey?: string;
  /** The CA (given, or created in DATA_DIR/pki on first start). */
  caCert: string;
  caKey: string;
  /** The fleet name in identities (spiffe://edgeplane/<fleet>/...). */
  fleet: string;
  /** Extra DNS names / IP addresses in the serving certificate the CA issues. */
  tlsSans: string[];
  nodeCertLifetimeMs: number;
  /** NATS servers; empty = start an embedded nats-server. */
  natsServers: string[];
  /** Port of the embedded nats-server (0 = any free port). */
  embeddedNatsPort: number;
  embeddedNatsHost: string;
  /** Keys of the NATS authority (operator, accounts, users) and the issued-credentials record. */
  natsAuthDir: string;
  /**
   * Connect to --nats servers without credentials. Only for a server that runs without
   * authorization (development, old test harnesses): agents could then write the log bus.
   */
  natsAnonymous: boolean;
  /** TLS of the embedded nats-server (certificate and key), and the CA clients verify NATS servers with. */
  natsTlsCert?: string;
  natsTlsKey?: string;
  natsTlsCa?: string;
  /** Print the nats-server authorization configuration (resolver in this directory) and exit. */
  printNatsServerConfig?: string;
  dataDir: string;
  signingKey: string;
  controllerId: string;
  streamReplicas: number;
  ruleGrowthGuard: number;
  maxRulesPerPolicy: number;
  maxPolicies: number;
  maxIntentBytes: number;
  snapshotEvery: number;
  retainEntries: number;
  prometheusPort?: number;
  prometheusHost: string;
  otlpEndpoint?: string;
  counterIntervalMs: number;
  heartbeatIntervalMs: number;
  shutdownGraceMs: number;
}

/** The --help text. */
export const HELP = `edgeplane-controller: the edgeplane control plane (gRPC API, intent log, node registry)

Usage: edgeplane-controller [flags]

Every flag can also be set by the environment variable shown.

  --listen HOST:PORT        gRPC address (EDGEPLANE_LISTEN, default 0.0.0.0:7443; port 0 = any)
  Trust (mutual TLS is the default; every method checks the caller's role, see README "Trust"):
  --ca-cert FILE, --ca-key FILE
                            the fleet CA (EDGEPLANE_CA_CERT, EDGEPLANE_CA_KEY); default DATA_DIR/pki/ca.pem and
                            ca-key.pem, created on first start (key mode 0600) together with an admin client
                            certificate in DATA_DIR/admin/ (ca.pem, admin.pem, admin-key.pem)
  --fleet NAME              fleet name in identities (EDGEPLANE_FLEET, default "default")
  --tls-cert FILE           serving certificate, PEM (EDGEPLANE_TLS_CERT); default one the CA issues on each start
  --tls-key FILE            its private key, PEM (EDGEPLANE_TLS_KEY)
  --tls-san NAME[,NAME...]  extra DNS names or IP addresses of the issued serving certificate (EDGEPLANE_TLS_SAN)
  --node-cert-lifetime SEC  lifetime of node certificates (default 86400; agents renew at 70 %)
  --insecure                plaintext gRPC, only on a loopback --listen address; every caller is then an admin
                            (development and tests only) (EDGEPLANE_INSECURE=1)
  --nats URL[,URL...]       NATS servers (EDGEPLANE_NATS_URL); unset = start an embedded nats-server
                            with JetStream in DATA_DIR/nats and stop it on exit
  --embedded-nats HOST:PORT address of the embedded nats-server (EDGEPLANE_EMBEDDED_NATS, default 127.0.0.1:4222)
  --nats-auth-dir DIR       NATS operator, account and user keys (mode 0600) and the issued node credentials
                            (EDGEPLANE_NATS_AUTH_DIR, default DATA_DIR/nats-auth); replicas share it. The embedded
                            nats-server runs with it (JWT mode); external servers need --print-nats-server-config
  --print-nats-server-config RESOLVER_DIR
                            print the nats-server authorization block (operator, system account, full resolver
                            storing account JWTs in RESOLVER_DIR, preloaded accounts) for NATS-AUTH-DIR and exit
  --nats-anonymous          connect to --nats without credentials (a server without authorization; development
                            only: any client could then write the log) (EDGEPLANE_NATS_ANONYMOUS=1)
  --nats-tls-cert FILE      certificate of the embedded nats-server, PEM (EDGEPLANE_NATS_TLS_CERT)
  --nats-tls-key FILE       its key (EDGEPLANE_NATS_TLS_KEY)
  --nats-tls-ca FILE        CA the NATS servers' certificates chain to (EDGEPLANE_NATS_TLS_CA)
  --data-dir DIR            state directory (EDGEPLANE_DATA_DIR, default /var/lib/edgeplane/controller)
  --signing-key FILE        Ed25519 key that signs the intent log, created on first start with mode 0600
                            (EDGEPLANE_SIGNING_KEY, default DATA_DIR/signing-key.pem); replicas share it
  --controller-id ID        this replica's id in log entries (EDGEPLANE_CONTROLLER_ID, default HOST-PID)
  --stream-replicas N       JetStream replicas of the log when creating it (EDGEPLANE_STREAM_REPLICAS, default 1; 3 in a cluster)
  --rule-growth-guard N     a write growing a policy past N rules needs allow_large_growth (default 10000)
  --max-rules-per-policy N  (default 65536)
  --max-policies N          policies the intent may hold (default 10000)
  --max-intent-bytes N      encoded bytes of all policies together (default 67108864)
  --snapshot-every N        snapshot the intent every N revisions (default 1000; 0 = never)
  --retain-entries N        keep N entries below the newest snapshot (default 10000)
  --prometheus-port PORT    serve metrics at http://HOST:PORT/metrics (EDGEPLANE_PROMETHEUS_PORT; unset = off)
  --prometheus-host HOST    (EDGEPLANE_PROMETHEUS_HOST, default 0.0.0.0)
  --otlp-endpoint URL       export traces by OTLP/HTTP (OTEL_EXPORTER_OTLP_ENDPOINT; unset = no export)
  --counter-interval SEC    how often agents report counters (default 5)
  --heartbeat-interval SEC  application heartbeat of agent streams (default 5)
  --shutdown-grace SEC      on SIGTERM, time given to running calls (default 10)
  -h, --help                this text

On start the controller prints one JSON line to stdout: {"event":"ready","grpc":...,"nats":...}.
Exit codes: 0 after a graceful stop, 1 on a start-up failure, 2 on bad flags.`;

function int(name: string, text: string | undefined, fallback: number, min = 0): number {
  if (text === undefined || text === '') return fallback;
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new ConfigError(`--${name}: ${JSON.stringify(text)} is not a whole number >= ${min}`);
  return n;
}

function hostPort(name: string, text: string): { host: string; port: number } {
  const i = text.lastIndexOf(':');
  if (i <= 0) throw new ConfigError(`--${name}: ${JSON.stringify(text)} is not HOST:PORT`);
  return { host: text.slice(0, i), port: int(name, text.slice(i + 1), 0) };
}

/** True for a loopback host: 127.0.0.0/8, ::1 or localhost. */
export function isLoopback(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  return h === 'localhost' || h === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(h);
}

/**
 * Parses flags over environment variables over defaults.
 * @throws ConfigError naming the flag.
 */
export function parseConfig(argv: string[], env: NodeJS.ProcessEnv = process.env): ControllerConfig | 'help' {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      strict: true,
      options: {
        listen: { type: 'string' },
        'tls-cert': { type: 'string' },
        'tls-key': { type: 'string' },
        'ca-cert': { type: 'string' },
        'ca-key': { type: 'string' },
        fleet: { type: 'string' },
        'tls-san': { type: 'string' },
        'node-cert-lifetime': { type: 'string' },
        insecure: { type: 'boolean' },
        nats: { type: 'string' },
        'embedded-nats': { type: 'string' },
        'data-dir': { type: 'string' },
        'nats-auth-dir': { type: 'string' },
        'print-nats-server-config': { type: 'string' },
        'nats-anonymous': { type: 'boolean' },
        'nats-tls-cert': { type: 'string' },
        'nats-tls-key': { type: 'string' },
        'nats-tls-ca': { type: 'string' },
        'signing-key': { type: 'string' },
        'controller-id': { type: 'string' },
        'stream-replicas': { type: 'string' },
        'rule-growth-guard': { type: 'string' },
        'max-rules-per-policy': { type: 'string' },
        'max-policies': { type: 'string' },
        'max-intent-bytes': { type: 'string' },
        'snapshot-every': { type: 'string' },
        'retain-entries': { type: 'string' },
        'prometheus-port': { type: 'string' },
        'prometheus-host': { type: 'string' },
        'otlp-endpoint': { type: 'string' },
        'counter-interval': { type: 'string' },
        'heartbeat-interval': { type: 'string' },
        'shutdown-grace': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (cause) {
    throw new ConfigError((cause as Error).message, { cause });
  }
  if (values.help) return 'help';
  const dataDir = values['data-dir'] ?? env.EDGEPLANE_DATA_DIR ?? '/var/lib/edgeplane/controller';
  const embedded = hostPort('embedded-nats', values['embedded-nats'] ?? env.EDGEPLANE_EMBEDDED_NATS ?? '127.0.0.1:4222');
  const insecure = values.insecure ?? ['1', 'true'].includes(env.EDGEPLANE_INSECURE ?? '');
  const tlsCert = values['tls-cert'] ?? env.EDGEPLANE_TLS_CERT;
  const tlsKey = values['tls-key'] ?? env.EDGEPLANE_TLS_KEY;
  if (Boolean(tlsCert) !== Boolean(tlsKey)) throw new ConfigError('--tls-cert and --tls-key go together');
  const caCert = values['ca-cert'] ?? env.EDGEPLANE_CA_CERT;
  const caKey = values['ca-key'] ?? env.EDGEPLANE_CA_KEY;
  if (Boolean(caCert) !== Boolean(caKey)) throw new ConfigError('--ca-cert and --ca-key go together');
  const natsTlsCert = values['nats-tls-cert'] ?? env.EDGEPLANE_NATS_TLS_CERT;
  const natsTlsKey = values['nats-tls-key'] ?? env.EDGEPLANE_NATS_TLS_KEY;
  const natsTlsCa = values['nats-tls-ca'] ?? env.EDGEPLANE_NATS_TLS_CA;
  if (!!natsTlsCert !== !!natsTlsKey) throw new ConfigError('--nats-tls-cert and --nats-tls-key go together');
  const printNats = values['print-nats-server-config'];
  const listen = values.listen ?? env.EDGEPLANE_LISTEN ?? '0.0.0.0:7443';
  const { host } = hostPort('listen', listen);
  if (insecure && !isLoopback(host)) {
    throw new ConfigError(`--insecure serves plaintext without authentication and is refused on ${host}: use a loopback --listen address (127.0.0.1, ::1, localhost) or drop --insecure (mutual TLS is the default)`);
  }
  const fleet = values.fleet ?? env.EDGEPLANE_FLEET ?? 'default';
  if (!/^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$/.test(fleet)) throw new ConfigError(`--fleet: ${JSON.stringify(fleet)} is not a lower-case name`);
  const prometheus = values['prometheus-port'] ?? env.EDGEPLANE_PROMETHEUS_PORT;
  const nats = values.nats ?? env.EDGEPLANE_NATS_URL ?? '';
  const otlp = values['otlp-endpoint'] ?? env.OTEL_EXPORTER_OTLP_ENDPOINT;
  return {
    listen,
    insecure,
    ...(tlsCert ? { tlsCert } : {}),
    ...(tlsKey ? { tlsKey } : {}),
    caCert: caCert ?? join(dataDir, 'pki', 'ca.pem'),
    caKey: caKey ?? join(dataDir, 'pki', 'ca-key.pem'),
    fleet,
    tlsSans: (values['tls-san'] ?? env.EDGEPLANE_TLS_SAN ?? '').split(',').map((x) => x.trim()).filter(Boolean),
    nodeCertLifetimeMs: int('node-cert-lifetime', values['node-cert-lifetime'], 86_400, 60) * 1000,
    natsServers: nats ? nats.split(',').map((s) => s.trim()).filter(Boolean) : [],
    embeddedNatsHost: embedded.host,
    embeddedNatsPort: embedded.port,
    natsAuthDir: values['nats-auth-dir'] ?? env.EDGEPLANE_NATS_AUTH_DIR ?? join(dataDir, 'nats-auth'),
    natsAnonymous: values['nats-anonymous'] ?? ['1', 'true'].includes(env.EDGEPLANE_NATS_ANONYMOUS ?? ''),
    ...(natsTlsCert ? { natsTlsCert, natsTlsKey: natsTlsKey! } : {}),
    ...(natsTlsCa ? { natsTlsCa } : {}),
    ...(printNats ? { printNatsServerConfig: printNats } : {}),
    dataDir,
    signingKey: values['signing-key'] ?? env.EDGEPLANE_SIGNING_KEY ?? join(dataDir, 'signing-key.pem'),
    controllerId: values['controller-id'] ?? env.EDGEPLANE_CONTROLLER_ID ?? `${hostname()}-${process.pid}`,
    streamReplicas: int('stream-replicas', values['stream-replicas'] ?? env.EDGEPLANE_STREAM_REPLICAS, 1, 1),
    ruleGrowthGuard: int('rule-growth-guard', values['rule-growth-guard'], 10_000, 1),
    maxRulesPerPolicy: int('max-rules-per-policy', values['max-rules-per-policy'], MAX_RULES_PER_POLICY, 1),
    maxPolicies: int('max-policies', values['max-policies'], MAX_POLICIES, 1),
    maxIntentBytes: int('max-intent-bytes', values['max-intent-bytes'], MAX_INTENT_BYTES, 1),
    snapshotEvery: int('snapshot-every', values['snapshot-every'], 1000),
    retainEntries: int('retain-entries', values['retain-entries'], 10_000),
    ...(prometheus !== undefined && prometheus !== '' ? { prometheusPort: int('prometheus-port', prometheus, 0) } : {}),
    prometheusHost: values['prometheus-host'] ?? env.EDGEPLANE_PROMETHEUS_HOST ?? '0.0.0.0',
    ...(otlp ? { otlpEndpoint: otlp } : {}),
    counterIntervalMs: int('counter-interval', values['counter-interval'], 5, 1) * 1000,
    heartbeatIntervalMs: int('heartbeat-interval', values['heartbeat-interval'], 5, 1) * 1000,
    shutdownGraceMs: int('shutdown-grace', values['shutdown-grace'], 10) * 1000,
  };
}
