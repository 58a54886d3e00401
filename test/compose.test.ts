// The compose deployment, validated as far as a machine without a container engine allows:
// docker-compose checks the file against the compose schema, and the NATS cluster and
// controller flags the file gives its services are run here on the local nats-server and
// controller, on free ports, to show they form a JetStream cluster holding a 3-replica log.
import test from 'ava';
import { execFile, execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { connect } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { ApplyPolicyRequest, INTENT_STREAM, Policy, Protocol, Action } from '@edgeplane/proto';
import { freePort, natsClientOptions } from '@edgeplane/intent-log';
import { NatsAuthority } from '@edgeplane/controller';
import { CONTROLLER_MAIN } from './support/fleet.js';
import { call, clients } from './support/grpc.js';
import { Supervised } from './support/supervisor.js';
import { adminTlsOf, until } from './support/control-plane.js';

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
  services: Record<string, { command?: string[]; environment?: Record<string, string> }>;
}

(hasNats ? test.serial : test.serial.skip)('compose - the NATS cluster flags form a JetStream cluster that keeps a 3-replica log writable after losing a server', async (t) => {
  const compose = parseYaml(readFileSync(COMPOSE_FILE, 'utf8'), { merge: true }) as ComposeFile;
  const names = ['nats-1', 'nats-2', 'nats-3'];
  const dir = mkdtempSync(join(tmpdir(), 'compose-cluster-'));
  const servers: Supervised[] = [];
  const live: { controller?: Supervised; api?: ReturnType<typeof clients> } = {};
  t.teardown(async () => {
    live.api?.close();
    await live.controller?.stop(3000);
    for (const s of servers) await s.stop(3000);
    rmSync(dir, { recursive: true, force: true });
  });

  // The NATS secrets as ./init-nats-secrets makes them (the authority, the servers'
  // authorization, the route password), with the route addresses mapped to free local ports.
  const ports = new Map<string, { client: number; cluster: number; http: number }>();
  for (const n of names) ports.set(n, { client: await freePort(), cluster: await freePort(), http: await freePort() });
  const secrets = join(dir, 'secrets');
  await run(INIT_SECRETS, [secrets, '/unused', names.map((n) => `127.0.0.1:${ports.get(n)!.cluster}`).join(' ')], { timeout: 60_000 });
  const clusterConf = readFileSync(join(secrets, 'nats-cluster.conf'), 'utf8');
  t.regex(clusterConf, /authorization \{ user: route, password: "[0-9a-f]{48}" \}/);
  t.is(statSync(join(secrets, 'nats-cluster.conf')).mode & 0o777, 0o600);
  const natsConf = readFileSync(NATS_CONF, 'utf8');
  t.regex(natsConf, /include "secrets\/nats-auth.conf"/);
  t.regex(natsConf, /include "secrets\/nats-cluster.conf"/);
  for (const n of names) {
    const p = ports.get(n)!;
    // Each local server gets the file's nats.conf and the secrets it includes; only what must
    // differ on one machine differs: the resolver directory and the route listen port.
    mkdirSync(join(dir, n, 'secrets'), { recursive: true });
    writeFileSync(join(dir, n, 'edgeplane.conf'), natsConf);
    const auth = await run(process.execPath, [CONTROLLER_MAIN, '--nats-auth-dir', join(secrets, 'nats-auth'), '--print-nats-server-config', join(dir, n, 'jwt')]);
    writeFileSync(join(dir, n, 'secrets', 'nats-auth.conf'), auth.stdout);
    writeFileSync(join(dir, n, 'secrets', 'nats-cluster.conf'), clusterConf.replace('listen: "0.0.0.0:6222"', `listen: "127.0.0.1:${p.cluster}"`));
    const args = (compose.services[n]?.command ?? []).map((a) =>
      a
        .replace(/^--port=4222$/, `--port=${p.client}`)
        .replace(/^--http_port=8222$/, `--http_port=${p.http}`)
        .replace(/^--store_dir=\/data$/, `--store_dir=${join(dir, n, 'data')}`)
        .replace(/^--config=\/etc\/nats\/edgeplane\.conf$/, `--config=${join(dir, n, 'edgeplane.conf')}`),
    );
    t.true(args.includes('--jetstream'), `${n} runs JetStream: ${args.join(' ')}`);
    // --cluster on the command line would drop the route authorization of the config file.
    t.false(args.some((a) => a.startsWith('--cluster') || a.startsWith('--routes')), `${n} takes its cluster only from the config: ${args.join(' ')}`);
    t.false(args.some((a) => /=\/data$|[=:](6222|4222|8222)$/.test(a)), `every fixed port and path was mapped: ${args.join(' ')}`);
    servers.push(await Supervised.start(n, { command: 'nats-server', args: ['-a', '127.0.0.1', ...args] }));
  }
  const urls = names.map((n) => `nats://127.0.0.1:${ports.get(n)!.client}`);

  // The controller with the file's flags, the addresses, key and data directory made local.
  const ctlArgs = (compose.services['controller-1']?.command ?? [])
    .filter((a) => !a.endsWith('.js'))
    .map((a) =>
      a
        .replace(/^--listen=.*/, '--listen=127.0.0.1:0')
        .replace(/^--nats=.*/, `--nats=${urls.join(',')}`)
        .replace(/^--signing-key=.*/, `--signing-key=${join(dir, 'signing-key.pem')}`)
        .replace(/^--ca-cert=.*/, `--ca-cert=${join(dir, 'ca.pem')}`)
        .replace(/^--ca-key=.*/, `--ca-key=${join(dir, 'ca-key.pem')}`)
        .replace(/^--data-dir=.*/, `--data-dir=${join(dir, 'ctl')}`)
        .replace(/^--nats-auth-dir=.*/, `--nats-auth-dir=${join(secrets, 'nats-auth')}`),
    );
  t.true(ctlArgs.includes('--stream-replicas=3'));
  t.true(ctlArgs.some((a) => a.startsWith('--nats-auth-dir=')), 'the controllers use the NATS authority');
  const controller = (live.controller = await Supervised.start('controller', { command: process.execPath, args: [CONTROLLER_MAIN, '--shutdown-grace=1', ...ctlArgs], readyEvent: 'ready', readyTimeoutMs: 60_000 }));
  // The file serves mutual TLS: the test calls with the admin identity the controller wrote.
  const c = (live.api = clients(String(controller.ready.grpc), adminTlsOf(join(dir, 'ctl'))));
  const apply = (name: string) =>
    call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({
      policy: Policy.fromPartial({ metadata: { name }, spec: { nodeSelector: { matchLabels: { role: 'edge' } }, rules: [{ priority: 1, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 23, last: 23 }], action: Action.ACTION_DENY }] } }),
    }));
  const first = await apply('compose-one');
  t.is(first.revision, 1n);

  await t.throwsAsync(connect({ servers: urls, reconnect: false }), undefined, 'anonymous clients are refused');
  const nc = await connect({ servers: urls, ...natsClientOptions(await NatsAuthority.open(join(secrets, 'nats-auth')).controllerCredentials('compose-test')) });
  t.teardown(() => nc.close());
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(INTENT_STREAM);
  t.is(info.config.num_replicas, 3, 'the log is created with 3 replicas');
  await until('two current followers', async () => {
    const i = await jsm.streams.info(INTENT_STREAM);
    return (i.cluster?.replicas ?? []).filter((r) => r.current).length === 2;
  }, 20_000, () => servers.map((s) => s.output).join('\n'));

  // One server dies: the other two are a quorum, and the log takes writes again.
  const leader = (await jsm.streams.info(INTENT_STREAM)).cluster?.leader;
  const victim = servers.find((s) => s.name !== leader) ?? servers[0]!;
  await victim.kill('SIGKILL');
  let second: bigint | undefined;
  await until('a write with one server down', async () => {
    second = (await apply('compose-two').catch(() => undefined))?.revision;
    return second !== undefined;
  }, 30_000, () => `${controller.output}\n${servers.map((s) => s.output).join('\n')}`);
  t.is(second, 2n);

  // A server without the route password cannot join: the cluster refuses its route.
  const intruderPort = await freePort();
  const intruder = await Supervised.start('intruder', {
    command: 'nats-server',
    args: ['-a', '127.0.0.1', '-p', String(intruderPort), '--server_name', 'intruder', '--cluster_name', 'edgeplane', '--cluster', `nats://127.0.0.1:${await freePort()}`, '--routes', names.map((n) => `nats://127.0.0.1:${ports.get(n)!.cluster}`).join(','), '-DV'],
  });
  servers.push(intruder);
  const alive = servers.filter((s) => s !== victim && s !== intruder);
  await until('the cluster refused the intruder\'s route', async () => alive.length > 0 && /Route Error 'Authorization Violation'/.test(intruder.output), 20_000, () => `${alive.map((s) => s.output).join('\n')}\n${intruder.output}`);
  const routez = await fetch(`http://127.0.0.1:${ports.get(alive[0]!.name)!.http}/routez`).then((r) => r.json() as Promise<{ routes?: { remote_id?: string; ip?: string; port?: number }[] }>);
  t.is((routez.routes ?? []).length, 1, `only the other live server is routed: ${JSON.stringify(routez.routes)}`);
});