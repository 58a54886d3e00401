// The compose deployment, validated as far as a machine without a container engine allows:
// docker-compose checks the file against the compose schema, and the NATS cluster and
// controller flags the file gives its services are run here on the local nats-server and
// controller, on free ports, to show they form a JetStream cluster holding a 3-replica log,
// with TLS for clients and password plus mutual TLS for routes, serving a controller and an
// enrolled agent.
import test from 'ava';
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { X509Certificate } from 'node:crypto';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { ApplyPolicyRequest, INTENT_STREAM, Policy, Protocol, Action } from '@edgeplane/proto';
import { freePort, natsClientOptions } from '@edgeplane/intent-log';
import { CertificateAuthority, NatsAuthority, checkNatsServerIdentity, generateKeyPair } from '@edgeplane/controller';
import { AGENT_MAIN, CONTROLLER_MAIN } from './support/fleet.js';
import { plaintextNatsProbe } from './support/nats-probe.js';
import { call, clients } from './support/grpc.js';
import { Supervised } from './support/supervisor.js';
import { adminTlsOf, joinTokenArgs, until } from './support/control-plane.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CHECK = join(ROOT, 'scripts', 'check-compose');
const COMPOSE_FILE = join(ROOT, 'deploy', 'compose', 'docker-compose.yml');
const NATS_CONF = join(ROOT, 'deploy', 'compose', 'nats.conf');
const INIT_SECRETS = join(ROOT, 'deploy', 'compose', 'init-nats-secrets');
const run = promisify(execFile);

function installed(cmd: string, args: string[]): boolean {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
}

const hasCompose = installed('docker-compose', ['version']);
const hasNats = installed('nats-server', ['--version']);
if (!hasCompose) console.warn('compose tests skipped: docker-compose is not installed (Debian: apt install docker-compose); scripts/check-compose cannot run');
if (!hasNats) console.warn('compose cluster test skipped: nats-server is not installed');

/** Runs scripts/check-compose; resolves with exit code and output. */
async function check(file?: string): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await run(CHECK, file ? [file] : [], { timeout: 60_000 });
    return { code: 0, out: stdout + stderr };
  } catch (err) {
    const e = err as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof e.code === 'number' ? e.code : -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` };
  }
}

(hasCompose ? test : test.skip)('compose - scripts/check-compose accepts deploy/compose/docker-compose.yml', async (t) => {
  const r = await check();
  t.is(r.code, 0, r.out);
  t.regex(r.out, /is valid/);
});

(hasCompose ? test : test.skip)('compose - scripts/check-compose rejects a file docker-compose cannot use', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'compose-bad-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const bad = join(dir, 'docker-compose.yml');
  writeFileSync(bad, readFileSync(COMPOSE_FILE, 'utf8').replace('privileged: true', 'privileged: true\n    privilegd: true'));
  const r = await check(bad);
  t.is(r.code, 1, r.out);
  t.regex(r.out, /privilegd/);
});

interface ComposeFile {
  services: Record<string, { command?: string[]; environment?: Record<string, string>; volumes?: string[] }>;
}

/** A nats-server configuration for an intruder that tries to join the cluster by its routes (with route TLS, or none). */
function intruderConfig(o: { port: number; cluster: number; routes: string[]; tls: { cert: string; key: string; ca: string } | undefined }): string {
  return [
    `port: ${o.port}`,
    'cluster {',
    '  name: edgeplane',
    `  listen: "127.0.0.1:${o.cluster}"`,
    ...(o.tls ? [`  tls { cert_file: ${JSON.stringify(o.tls.cert)}, key_file: ${JSON.stringify(o.tls.key)}, ca_file: ${JSON.stringify(o.tls.ca)}, timeout: 5 }`] : []),
    `  routes: [ ${o.routes.map((r) => JSON.stringify(r)).join(', ')} ]`,
    '}',
    '',
  ].join('\n');
}

(hasNats ? test.serial : test.serial.skip)('compose - the NATS cluster (TLS for clients, password and mutual TLS for routes) keeps a 3-replica log writable after losing a server, and serves a controller and an enrolled agent', async (t) => {
  const compose = parseYaml(readFileSync(COMPOSE_FILE, 'utf8'), { merge: true }) as ComposeFile;
  const names = ['nats-1', 'nats-2', 'nats-3'];
  const dir = mkdtempSync(join(tmpdir(), 'compose-cluster-'));
  const servers: Supervised[] = [];
  const serverStarts: (() => Promise<unknown>)[] = [];
  const live: { controller?: Supervised; agent?: Supervised; api?: ReturnType<typeof clients> } = {};
  t.teardown(async () => {
    live.api?.close();
    await live.agent?.stop(3000);
    await live.controller?.stop(3000);
    for (const s of servers) await s.stop(3000);
    rmSync(dir, { recursive: true, force: true });
  });

  // The NATS secrets as ./init-nats-secrets makes them (the fleet CA, the authority, the
  // servers' authorization and certificates, the route password), with the route addresses
  // mapped to free local ports on "localhost" (the name route certificates are checked by).
  const ports = new Map<string, { client: number; cluster: number; http: number }>();
  for (const n of names) ports.set(n, { client: await freePort(), cluster: await freePort(), http: await freePort() });
  const secrets = join(dir, 'secrets');
  const routeHosts = names.map((n) => `localhost:${ports.get(n)!.cluster}`);
  await run(INIT_SECRETS, [secrets, '/unused', routeHosts.join(' ')], { timeout: 120_000 });
  const clusterConf = readFileSync(join(secrets, 'nats-cluster.conf'), 'utf8');
  t.regex(clusterConf, /authorization \{ user: route, password: "[0-9a-f]{48}" \}/);
  t.regex(clusterConf, /ca_file: "\/etc\/nats\/tls\/ca.pem"/, 'routes verify certificates against the fleet CA');
  // nats-server accepts a route by its certificate alone (no password) with either of these.
  t.notRegex(clusterConf.replace(/#.*/g, ""), /verify_and_map|verify_cert_and_check_known_urls/);
  t.is(statSync(join(secrets, 'nats-cluster.conf')).mode & 0o777, 0o600);
  const fleet = /CN=edgeplane (\S+) CA/.exec(new X509Certificate(readFileSync(join(secrets, 'ca.pem'))).subject.replace(/\n/g, ', '))?.[1];
  t.truthy(fleet, 'init made a fleet CA');
  for (const n of names) {
    const cert = new X509Certificate(readFileSync(join(secrets, 'nats-tls', n, 'server.pem')));
    t.is(cert.subjectAltName, `URI:spiffe://edgeplane/${fleet}/nats/${n}, DNS:${n}, DNS:localhost`, `${n} is a NATS server identity named for its route address`);
    t.is(statSync(join(secrets, 'nats-tls', n, 'server-key.pem')).mode & 0o777, 0o600);
  }
  // Running it again renews the certificates and keeps the password.
  await run(INIT_SECRETS, [secrets, '/unused', routeHosts.join(' ')], { timeout: 120_000 });
  t.is(readFileSync(join(secrets, 'nats-cluster.conf'), 'utf8'), clusterConf);
  const natsConf = readFileSync(NATS_CONF, 'utf8');
  t.regex(natsConf, /include "secrets\/nats-auth.conf"/);
  t.regex(natsConf, /include "secrets\/nats-cluster.conf"/);
  t.regex(natsConf, /tls \{\s*cert_file: "\/etc\/nats\/tls\/server.pem"/, 'clients connect with TLS');
  for (const n of names) {
    const p = ports.get(n)!;
    // The file mounts the server's own certificate directory where the configuration looks.
    const mounts = compose.services[n]?.volumes ?? [];
    t.true(mounts.includes(`./secrets/nats-tls/${n}:/etc/nats/tls:ro`), `${n} mounts its certificate: ${mounts.join(' ')}`);
    const local = (text: string): string => text.replaceAll('/etc/nats/tls/', `${join(secrets, 'nats-tls', n)}/`);
    // Each local server gets the file's nats.conf and the secrets it includes; only what must
    // differ on one machine differs: the mount points, the resolver directory and the route listen port.
    mkdirSync(join(dir, n, 'secrets'), { recursive: true });
    writeFileSync(join(dir, n, 'edgeplane.conf'), local(natsConf));
    const auth = await run(process.execPath, [CONTROLLER_MAIN, '--nats-auth-dir', join(secrets, 'nats-auth'), '--print-nats-server-config', join(dir, n, 'jwt')]);
    writeFileSync(join(dir, n, 'secrets', 'nats-auth.conf'), auth.stdout);
    writeFileSync(join(dir, n, 'secrets', 'nats-cluster.conf'), local(clusterConf).replace('listen: "0.0.0.0:6222"', `listen: "127.0.0.1:${p.cluster}"`));
    const args = (compose.services[n]?.command ?? []).map((a) =>
      a
        .replace(/^--port=4222$/, `--port=${p.client}`)
        .replace(/^--http_port=8222$/, `--http_port=${p.http}`)
        .replace(/^--store_dir=\/data$/, `--store_dir=${join(dir, n, 'data')}`)
        .replace(/^--config=\/etc\/nats\/edgeplane\.conf$/, `--config=${join(dir, n, 'edgeplane.conf')}`),
    );
    t.true(args.includes('--jetstream'), `${n} runs JetStream: ${args.join(' ')}`);
    // --cluster on the command line would drop the route authorization of the config file.
    t.false(args.some((a) => a.startsWith('--cluster') || a.startsWith('--routes') || a.startsWith('--tls')), `${n} takes its cluster and TLS only from the config: ${args.join(' ')}`);
    t.false(args.some((a) => /=\/data$|[=:](6222|4222|8222)$/.test(a)), `every fixed port and path was mapped: ${args.join(' ')}`);
    serverStarts.push(async () => servers.push(await Supervised.start(n, { command: 'nats-server', args: ['-a', '127.0.0.1', ...args] })));
  }
  // Two of the three servers first: a log of 3 replicas cannot be placed yet.
  for (const start of serverStarts.slice(0, 2)) await start();
  const urls = names.map((n) => `nats://127.0.0.1:${ports.get(n)!.client}`);

  // The controller with the file's flags, the addresses, key and data directory made local.
  const ctlArgs = (compose.services['controller-1']?.command ?? [])
    .filter((a) => !a.endsWith('.js'))
    .map((a) =>
      a
        .replace(/^--listen=.*/, '--listen=127.0.0.1:0')
        .replace(/^--nats=.*/, `--nats=${urls.join(',')}`)
        .replace(/^--signing-key=.*/, `--signing-key=${join(dir, 'signing-key.pem')}`)
        .replace(/^--ca-cert=\/run\/secrets\/ca_cert$/, `--ca-cert=${join(secrets, 'ca.pem')}`)
        .replace(/^--ca-key=\/run\/secrets\/ca_key$/, `--ca-key=${join(secrets, 'ca-key.pem')}`)
        .replace(/^--nats-tls-ca=\/run\/secrets\/ca_cert$/, `--nats-tls-ca=${join(secrets, 'ca.pem')}`)
        .replace(/^--data-dir=.*/, `--data-dir=${join(dir, 'ctl')}`)
        .replace(/^--nats-auth-dir=.*/, `--nats-auth-dir=${join(secrets, 'nats-auth')}`),
    );
  t.true(ctlArgs.includes('--stream-replicas=3'));
  t.true(ctlArgs.some((a) => a.startsWith('--nats-auth-dir=')), 'the controllers use the NATS authority');
  t.true(ctlArgs.includes(`--nats-tls-ca=${join(secrets, 'ca.pem')}`), 'the controllers verify the servers with the fleet CA');
  t.false(ctlArgs.some((a) => a.includes('/run/secrets/')), `every secret was mapped: ${ctlArgs.join(' ')}`);
  // Compose starts the controllers beside a cluster still forming: the controller waits for the
  // third server to join rather than failing on "no suitable peers for placement" (or on a
  // timeout: on a loaded machine the two servers may not have elected a meta leader yet, and the
  // stream request then gets no answer at all).
  const controllerStart = Supervised.start('controller', { command: process.execPath, args: [CONTROLLER_MAIN, '--shutdown-grace=1', ...ctlArgs], readyEvent: 'ready', readyTimeoutMs: 60_000 });
  controllerStart.catch(() => undefined);
  await new Promise((r) => setTimeout(r, 3000));
  for (const start of serverStarts.slice(2)) await start();
  // A start that fails shows the servers' side too (a refusal's reason is in their log).
  const controller = (live.controller = await controllerStart.catch((err: Error) => {
    throw new Error(`${err.message}\n${servers.map((s) => s.output).join('\n')}`, { cause: err });
  }));
  t.regex(controller.output, /waiting for the JetStream cluster to form; retrying.*(no suitable peers|timeout)/, 'the controller waited for the cluster to place its log');
  t.is(controller.ready.fleetId, fleet, 'the log takes the fleet of the CA init made');
  // The file serves mutual TLS: the test calls with the admin identity the controller wrote.
  const adminTls = adminTlsOf(join(dir, 'ctl'));
  const c = (live.api = clients(String(controller.ready.grpc), adminTls));
  const apply = (name: string) =>
    call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({
      policy: Policy.fromPartial({ metadata: { name }, spec: { nodeSelector: { matchLabels: { role: 'edge' } }, rules: [{ priority: 1, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 23, last: 23 }], action: Action.ACTION_DENY }] } }),
    }));
  const first = await apply('compose-one');
  t.is(first.revision, 1n);

  // Clients: plaintext is refused by every server, TLS without credentials too.
  for (const n of names) {
    const { info, rest } = await plaintextNatsProbe('127.0.0.1', ports.get(n)!.client);
    t.regex(info, /"tls_required":true/, `${n} requires TLS`);
    t.notRegex(rest, /PONG/, `${n} answers no plaintext client`);
  }
  const caFile = join(secrets, 'ca.pem');
  await t.throwsAsync(connect({ servers: urls, reconnect: false, ...natsClientOptions({ tls: { caFile } }) }), undefined, 'anonymous clients are refused');
  const nc = await connect({ servers: urls, ...natsClientOptions({ ...(await NatsAuthority.open(join(secrets, 'nats-auth')).controllerCredentials('compose-test')), tls: { caFile, checkServerIdentity: checkNatsServerIdentity } }) });
  t.teardown(() => nc.close());
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(INTENT_STREAM);
  t.is(info.config.num_replicas, 3, 'the log is created with 3 replicas');
  await until('two current followers', async () => {
    const i = await jsm.streams.info(INTENT_STREAM);
    return (i.cluster?.replicas ?? []).filter((r) => r.current).length === 2;
  }, 20_000, () => servers.map((s) => s.output).join('\n'));

  // An agent enrolls with a join token, as the file's agent service does, and applies the log
  // over NATS TLS (verifying the servers with its enrolled CA and their NATS identity).
  const agentEnv = compose.services.agent?.environment ?? {};
  t.regex(agentEnv.EDGEPLANE_JOIN_TOKEN ?? '', /EDGEPLANE_JOIN_TOKEN/, 'the agent enrolls with a join token');
  live.agent = await Supervised.start('agent', {
    command: process.execPath,
    args: [AGENT_MAIN, '--node-name', 'edge-compose', '--controller', String(controller.ready.grpc), '--nats', urls.join(','), '--datapath', 'memory', '--state-dir', join(dir, 'agent'), '--trusted-key', String(controller.ready.publicKey), ...(await joinTokenArgs(String(controller.ready.grpc), adminTls, { role: 'edge' }))],
    readyEvent: 'ready',
    readyTimeoutMs: 60_000,
  });
  await until('the agent applied revision 1', async () => (await call(c.fleet, c.fleet.getNode, { name: 'edge-compose' }).catch(() => undefined))?.node?.status?.appliedRevision === 1n, 60_000, () => live.agent!.output);

  // One server dies: the other two are a quorum, and the log takes writes again; the agent follows.
  const leader = (await jsm.streams.info(INTENT_STREAM)).cluster?.leader;
  const victim = servers.find((s) => s.name !== leader) ?? servers[0]!;
  await victim.kill('SIGKILL');
  let second: bigint | undefined;
  await until('a write with one server down', async () => {
    second = (await apply('compose-two').catch(() => undefined))?.revision;
    return second !== undefined;
  }, 30_000, () => `${controller.output}\n${servers.map((s) => s.output).join('\n')}`);
  t.is(second, 2n);
  await until('the agent applied revision 2', async () => (await call(c.fleet, c.fleet.getNode, { name: 'edge-compose' })).node?.status?.appliedRevision === 2n, 60_000, () => live.agent!.output);

  // Routes: an intruder is refused without the password (with a valid NATS server certificate),
  // with the password but a certificate from another CA, and with the password but no TLS.
  const alive = servers.filter((s) => s !== victim);
  const password = /password: "([0-9a-f]{48})"/.exec(clusterConf)![1]!;
  const routesOf = (auth: string): string[] => names.map((n) => `nats://${auth}localhost:${ports.get(n)!.cluster}`);
  const fleetCa = await CertificateAuthority.fromPem(readFileSync(caFile, 'utf8'), readFileSync(join(secrets, 'ca-key.pem'), 'utf8'), fleet!);
  const otherCa = (await CertificateAuthority.create(fleet!)).ca;
  const certIn = async (name: string, ca: CertificateAuthority, identity: Parameters<CertificateAuthority['issue']>[0]['identity']) => {
    const keys = generateKeyPair();
    const issued = await ca.issue({ identity, publicKey: keys.publicKeyDer, lifetimeMs: 3_600_000, dnsNames: ['localhost'] });
    mkdirSync(join(dir, name), { recursive: true });
    writeFileSync(join(dir, name, 'cert.pem'), issued.certPem);
    writeFileSync(join(dir, name, 'key.pem'), keys.privateKeyPem, { mode: 0o600 });
    writeFileSync(join(dir, name, 'ca.pem'), fleetCa.certPem);
    return { cert: join(dir, name, 'cert.pem'), key: join(dir, name, 'key.pem'), ca: join(dir, name, 'ca.pem') };
  };
  // Where the refusal shows: the intruder's log for a refused password, the refusing server's
  // for a failed route TLS handshake (with TLS 1.3 the dialling side only sees the close).
  const intruders = [
    { name: 'no-password', routes: routesOf(''), tls: await certIn('no-password', fleetCa, { fleet: fleet!, role: 'nats', name: 'nats-9' }), refusal: /Route Error 'Authorization Violation'/ },
    { name: 'other-ca', routes: routesOf(`route:${password}@`), tls: await certIn('other-ca', otherCa, { fleet: fleet!, role: 'nats', name: 'nats-1' }), refusal: /TLS route handshake error.*(unknown authority|bad certificate|failed to verify)/ },
    { name: 'no-tls', routes: routesOf(`route:${password}@`), tls: undefined, refusal: /TLS route handshake error.*(first record does not look like a TLS handshake|tls:)/ },
  ];
  for (const intruder of intruders) {
    const conf = join(dir, intruder.name, 'nats.conf');
    mkdirSync(join(dir, intruder.name), { recursive: true });
    writeFileSync(conf, intruderConfig({ port: await freePort(), cluster: await freePort(), routes: intruder.routes, tls: intruder.tls }));
    let refused = false;
    const seen = (line: string): void => void (refused ||= intruder.refusal.test(line));
    const unsubscribe = alive.map((a) => a.onLine(seen));
    const s = await Supervised.start(`intruder-${intruder.name}`, { command: 'nats-server', args: ['-a', '127.0.0.1', '--server_name', `intruder-${intruder.name}`, '-c', conf, '-D'] });
    servers.push(s);
    unsubscribe.push(s.onLine(seen));
    await until(`the cluster refused the route of intruder ${intruder.name}`, () => refused || intruder.refusal.test(s.output), 20_000, () => `${alive.map((a) => a.output).join('\n')}\n${s.output}`);
    unsubscribe.forEach((u) => u());
    for (const a of alive) {
      const routez = await fetch(`http://127.0.0.1:${ports.get(a.name)!.http}/routez`).then((r) => r.json() as Promise<{ routes?: { remote_id?: string }[] }>);
      t.is((routez.routes ?? []).length, 1, `${a.name} routes only the other live server, not intruder ${intruder.name}: ${JSON.stringify(routez.routes)}`);
    }
    await s.stop(3000);
  }
});
