import test, { type ExecutionContext } from 'ava';
import * as grpc from '@grpc/grpc-js';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { spawn } from 'node:child_process';
import { connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { connect } from '@nats-io/transport-node';
import { ApplyPolicyRequest, IntentServiceClient, publicKeyFromRaw, type ApplyPolicyResponse } from '@edgeplane/proto';
import { IntentChain, IntentLog, NatsServer } from '@edgeplane/intent-log';
import { Supervised } from '../../../test/support/supervisor.js';
import { call, clients, standardServices } from '../../../test/support/grpc.js';
import { samplePolicy } from './helpers.js';

const MAIN = fileURLToPath(new URL('../dist/main.js', import.meta.url));

function controllerProcess(name: string, args: string[]): Promise<Supervised> {
  return Supervised.start(name, { command: process.execPath, args: [MAIN, '--insecure', '--listen', '127.0.0.1:0', '--shutdown-grace', '1', ...args], readyEvent: 'ready' });
}

/**
 * Runs `fn` with a fresh directory, removed after the test's other teardowns (they run last
 * registered first): a controller a teardown stops may still write into it until it is stopped.
 */
async function withTemp<T>(t: ExecutionContext, fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = mkdtempSync(join(tmpdir(), 'ctl-fault-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return fn(dir);
}

/** Reads the whole log and checks it: gapless, hash-chained, signed; returns the chain and each policy's upsert revisions. */
async function audit(natsUrl: string, publicKeyB64: string): Promise<{ chain: IntentChain; upserts: Map<string, bigint[]> }> {
  const nc = await connect({ servers: natsUrl });
  try {
    const log = await IntentLog.open(nc, { create: false });
    const key = publicKeyFromRaw(Buffer.from(publicKeyB64, 'base64'));
    const { keyIdOf } = await import('@edgeplane/proto');
    const chain = new IntentChain(new Map([[keyIdOf(key), key]]));
    const upserts = new Map<string, bigint[]>();
    const { last } = await log.bounds();
    for await (const { revision, signed } of log.read(1n, last)) {
      const r = chain.append(signed); // throws on a gap, a fork or a bad signature
      if (r.entry.revision !== revision) throw new Error(`entry ${r.entry.revision} stored at ${revision}`);
      // Whole policies and patches alike (the chain applied both).
      for (const { type, policy: p } of r.changes) if (type !== 'deleted') upserts.set(p.metadata!.name, [...(upserts.get(p.metadata!.name) ?? []), revision]);
    }
    if (chain.revision !== last) throw new Error(`chain ends at ${chain.revision}, stream at ${last}`);
    return { chain, upserts };
  } finally {
    await nc.close();
  }
}

async function applyMany(
  address: string,
  names: string[],
  concurrency: number,
  results = new Map<string, ApplyPolicyResponse | grpc.ServiceError>(),
): Promise<Map<string, ApplyPolicyResponse | grpc.ServiceError>> {
  const client = new IntentServiceClient(address, grpc.credentials.createInsecure());
  const queue = [...names];
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      for (let name = queue.shift(); name; name = queue.shift()) {
        results.set(
          name,
          await call(client, client.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy(name) })).catch((e: unknown) => e as grpc.ServiceError),
        );
      }
    }),
  );
  client.close();
  return results;
}

const okResults = (m: Map<string, ApplyPolicyResponse | grpc.ServiceError>): [string, ApplyPolicyResponse][] =>
  [...m].filter((e): e is [string, ApplyPolicyResponse] => 'revision' in e[1]);

test('two controllers writing to one stream - revisions stay gapless and unique, each names its change', (t) =>
  withTemp(t, async (dir) => {
    const nats = await NatsServer.start({ dataDir: join(dir, 'nats') });
    const key = join(dir, 'key.pem');
    const a = await controllerProcess('ctl-a', ['--nats', nats.url, '--nats-anonymous', '--data-dir', join(dir, 'a'), '--signing-key', key, '--controller-id', 'a']);
    const b = await controllerProcess('ctl-b', ['--nats', nats.url, '--nats-anonymous', '--data-dir', join(dir, 'b'), '--signing-key', key, '--controller-id', 'b']);
    t.teardown(async () => {
      await a.stop();
      await b.stop();
      await nats.close();
    });
    const names = (p: string): string[] => Array.from({ length: 60 }, (_, i) => `${p}-${i}`);
    const [ra, rb] = await Promise.all([applyMany(a.ready.grpc as string, names('from-a'), 4), applyMany(b.ready.grpc as string, names('from-b'), 4)]);
    const ok = [...okResults(ra), ...okResults(rb)];
    t.is(ok.length, 120, `every apply succeeds (conflicts are retried inside the controller)\n${a.output}\n${b.output}`);
    const revisions = ok.map(([, r]) => r.revision);
    t.is(new Set(revisions).size, 120, 'no two responses name the same revision');
    const { chain, upserts } = await audit(nats.url, a.ready.publicKey as string);
    t.is(chain.revision, 120n, 'the log holds exactly the 120 changes, gapless');
    for (const [name, r] of ok) t.deepEqual(upserts.get(name), [r.revision], `${name} is stored once, at the revision its response named`);
    // Each controller also sees the other's writes.
    const ca = clients(a.ready.grpc as string);
    t.teardown(() => ca.close());
    const got = await call(ca.intent, ca.intent.getPolicy, { name: 'from-b-59' });
    t.is(got.policy?.metadata?.resourceVersion, rb.get('from-b-59') && 'revision' in rb.get('from-b-59')! ? (rb.get('from-b-59') as ApplyPolicyResponse).revision : -1n);
  }));

test('controller kill -9 mid-burst - every acknowledged apply survives once, and the chain verifies', (t) =>
  withTemp(t, async (dir) => {
    const nats = await NatsServer.start({ dataDir: join(dir, 'nats') });
    const ctl = await controllerProcess('ctl', ['--nats', nats.url, '--nats-anonymous', '--data-dir', join(dir, 'c')]);
    t.teardown(async () => {
      await ctl.stop();
      await nats.close();
    });
    const names = Array.from({ length: 100 }, (_, i) => `burst-${i}`);
    const seen = new Map<string, ApplyPolicyResponse | grpc.ServiceError>();
    const burst = applyMany(ctl.ready.grpc as string, names, 4, seen);
    while (okResults(seen).length < 20) await new Promise((r) => setTimeout(r, 5));
    await ctl.kill('SIGKILL');
    const results = await burst;
    const ok = okResults(results);
    t.true(ok.length > 0 && ok.length < 100, `the kill landed mid-burst (${ok.length} acknowledged)`);
    await ctl.start();
    const { upserts } = await audit(nats.url, ctl.ready.publicKey as string);
    for (const [name, r] of ok) t.deepEqual(upserts.get(name), [r.revision], `${name}`);
    for (const [name, list] of upserts) t.is(list.length, 1, `${name} stored once`);
    // The restarted controller rebuilt the same state and serves it.
    const c = clients(ctl.ready.grpc as string);
    t.teardown(() => c.close());
    const listed = await call(c.intent, c.intent.listPolicies, { pageSize: 1000, pageToken: '', labelSelector: '' });
    t.is(listed.policies.length, upserts.size);
  }));

test('nats-server kill -9 and restart - acknowledged applies survive, the controller carries on', (t) =>
  withTemp(t, async (dir) => {
    const nats = await NatsServer.start({ dataDir: join(dir, 'nats') });
    const ctl = await controllerProcess('ctl', ['--nats', nats.url, '--nats-anonymous', '--data-dir', join(dir, 'c')]);
    t.teardown(async () => {
      await ctl.stop();
      await nats.close();
    });
    const first = await applyMany(ctl.ready.grpc as string, Array.from({ length: 30 }, (_, i) => `pre-${i}`), 3);
    const during = applyMany(ctl.ready.grpc as string, Array.from({ length: 40 }, (_, i) => `mid-${i}`), 2);
    await new Promise((r) => setTimeout(r, 100));
    await nats.kill('SIGKILL');
    await new Promise((r) => setTimeout(r, 500));
    await nats.restart();
    const mid = await during;
    const after = await applyMany(ctl.ready.grpc as string, Array.from({ length: 10 }, (_, i) => `post-${i}`), 2);
    t.is(okResults(first).length, 30);
    t.is(okResults(after).length, 10, `the controller writes again after NATS is back\n${ctl.output}`);
    const { upserts } = await audit(nats.url, ctl.ready.publicKey as string);
    for (const [name, r] of [...okResults(first), ...okResults(mid), ...okResults(after)]) t.deepEqual(upserts.get(name), [r.revision], name);
    for (const [name, list] of upserts) t.is(list.length, 1, `${name} stored once`);
  }));

test('node registry - survives a controller restart', (t) =>
  withTemp(t, async (dir) => {
    const ctl = await controllerProcess('ctl', ['--embedded-nats', '127.0.0.1:0', '--data-dir', join(dir, 'c')]);
    t.teardown(() => ctl.stop());
    const { AgentServiceClient } = await import('@edgeplane/proto');
    const agent = new AgentServiceClient(ctl.ready.grpc as string, grpc.credentials.createInsecure());
    const stream = agent.connect();
    stream.on('error', () => undefined);
    const welcomed = new Promise((r) => stream.once('data', r));
    stream.write({ message: { $case: 'hello', hello: { nodeName: 'persist-me', labels: { site: 'x' }, info: undefined, interfaces: [], receivedRevision: 0n, appliedRevision: 0n, sessionId: '1', conditions: [], appliedUnknown: false, lastReport: undefined } } });
    await welcomed;
    stream.end();
    agent.close();
    await new Promise((r) => setTimeout(r, 300));
    await ctl.stop();
    await ctl.start();
    const c = clients(ctl.ready.grpc as string);
    t.teardown(() => c.close());
    const node = await call(c.fleet, c.fleet.getNode, { name: 'persist-me' });
    t.deepEqual(node.node?.labels, { site: 'x' });
    t.false(node.node?.status?.connected);
  }));

test('node registry - a hello carries the agent\'s last outcome: a restarted controller shows it at once, and an older one does not replace a newer', (t) =>
  withTemp(t, async (dir) => {
    const ctl = await controllerProcess('ctl', ['--embedded-nats', '127.0.0.1:0', '--data-dir', join(dir, 'c')]);
    t.teardown(() => ctl.stop());
    const { AgentServiceClient, RevisionOutcome } = await import('@edgeplane/proto');
    const hello = async (lastReport: { revision: bigint; outcome: number; reason: string } | undefined): Promise<void> => {
      const agent = new AgentServiceClient(ctl.ready.grpc as string, grpc.credentials.createInsecure());
      const stream = agent.connect();
      stream.on('error', () => undefined);
      const welcomed = new Promise((r) => stream.once('data', r));
      const report = lastReport && { ...lastReport, appliedRevision: lastReport.revision, time: new Date(), traceContext: undefined, applyDuration: undefined, appliedUnknown: false };
      stream.write({ message: { $case: 'hello', hello: { nodeName: 'outcome', labels: {}, info: undefined, interfaces: [], receivedRevision: 7n, appliedRevision: 6n, sessionId: String(Math.random()), conditions: [], appliedUnknown: false, lastReport: report } } });
      await welcomed;
      stream.end();
      agent.close();
      await new Promise((r) => setTimeout(r, 200));
    };
    // The controller has never heard this node's outcomes (it restarted, or the node comes from another replica).
    await hello({ revision: 7n, outcome: RevisionOutcome.REVISION_OUTCOME_NACK, reason: 'injected: 66000 uplink rules' });
    const c = clients(ctl.ready.grpc as string);
    t.teardown(() => c.close());
    let node = (await call(c.fleet, c.fleet.getNode, { name: 'outcome' })).node!;
    t.like(node.status, { lastOutcome: RevisionOutcome.REVISION_OUTCOME_NACK, lastOutcomeRevision: 7n, lastError: 'injected: 66000 uplink rules', lastErrorRevision: 7n });
    await hello({ revision: 3n, outcome: RevisionOutcome.REVISION_OUTCOME_ACK, reason: '' });
    node = (await call(c.fleet, c.fleet.getNode, { name: 'outcome' })).node!;
    t.like(node.status, { lastOutcome: RevisionOutcome.REVISION_OUTCOME_NACK, lastOutcomeRevision: 7n }, 'an older report does not replace a newer');
    await hello(undefined);
    node = (await call(c.fleet, c.fleet.getNode, { name: 'outcome' })).node!;
    t.like(node.status, { lastOutcomeRevision: 7n }, 'a hello without one keeps what is known');
  }));

test('embedded nats-server - started without --nats, stopped with the controller on SIGTERM', (t) =>
  withTemp(t, async (dir) => {
    const ctl = await controllerProcess('ctl', ['--embedded-nats', '127.0.0.1:0', '--data-dir', join(dir, 'c')]);
    const url = new URL(ctl.ready.nats as string);
    const listening = (): Promise<boolean> =>
      new Promise((r) => {
        const s = tcpConnect({ host: url.hostname, port: Number(url.port) }, () => {
          s.destroy();
          r(true);
        });
        s.on('error', () => r(false));
      });
    t.true(await listening());
    const exit = await ctl.kill('SIGTERM');
    t.is(exit.code, 0, ctl.output);
    t.false(await listening(), 'the embedded nats-server is gone');
    t.regex(ctl.output, /"event":"stopped"/);
  }));

/** The pid in a nats-server pid file, or undefined. */
/**
 * The pid a pid file names, or undefined while there is none: the supervisor removes a dead
 * server's file before it starts the next (NatsServer's stopOrphan), so the file may go between
 * any two reads, and a new one may be read before nats-server wrote its pid.
 */
const pidIn = (file: string): number | undefined => {
  try {
    return Number(readFileSync(file, 'utf8').trim()) || undefined;
  } catch {
    return undefined;
  }
};
/** Whether `pid` runs and is not a zombie (a process may be reaped between any two reads). */
const alive = (pid: number): boolean => {
  try {
    return !readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z ');
  } catch {
    return false;
  }
};
async function until(what: string, pred: () => boolean | Promise<boolean>, ms = 20_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

test('embedded nats-server - killed, it is started again; health says NOT_SERVING until the log is back, and writes succeed after', (t) =>
  withTemp(t, async (dir) => {
    const ctl = await controllerProcess('ctl', ['--embedded-nats', '127.0.0.1:0', '--data-dir', join(dir, 'c')]);
    t.teardown(() => ctl.stop());
    const std = standardServices(ctl.ready.grpc as string);
    const statuses: string[] = [];
    const stop = std.watchHealth('edgeplane.v1.IntentService', (s) => statuses.push(s));
    t.teardown(() => {
      stop();
      std.close();
    });
    await until('the first health status', () => statuses.length > 0);
    t.deepEqual(statuses, ['SERVING']);
    const pidFile = join(dir, 'c', 'nats', 'nats-server.pid');
    const first = pidIn(pidFile)!;
    t.true(alive(first));
    process.kill(first, 'SIGKILL');
    await until('a new nats-server', () => (pidIn(pidFile) ?? first) !== first && alive(pidIn(pidFile)!));
    await until('health back to SERVING', () => statuses.at(-1) === 'SERVING' && statuses.includes('NOT_SERVING'));
    t.deepEqual(statuses.slice(0, 2), ['SERVING', 'NOT_SERVING'], 'not serving while the log was unreachable');
    t.regex(ctl.output, /embedded nats-server died; restarting it/);
    t.regex(ctl.output, /embedded nats-server restarted/);
    const c = clients(ctl.ready.grpc as string);
    t.teardown(() => c.close());
    const written = await call(c.intent, c.intent.applyPolicy, { policy: samplePolicy('after-restart'), validateOnly: false, allowLargeGrowth: false });
    t.true(written.revision > 0n, 'a write after the restart');
  }));

test('embedded nats-server - dies with a controller killed with -9; one an earlier controller left running is stopped by the next start', (t) =>
  withTemp(t, async (dir) => {
    const { freePort } = await import('@edgeplane/intent-log');
    const port = await freePort();
    const args = ['--embedded-nats', `127.0.0.1:${port}`, '--data-dir', join(dir, 'c')];
    const ctl = await controllerProcess('ctl', args);
    t.teardown(() => ctl.stop());
    const pidFile = join(dir, 'c', 'nats', 'nats-server.pid');
    const first = pidIn(pidFile)!;
    await ctl.kill('SIGKILL');
    await until('the nats-server of the killed controller to end', () => !alive(first));

    // An orphan as an older controller (without the parent-death signal) would leave it: the
    // same config, port, store and pid file, its parent gone.
    const natsDir = join(dir, 'c', 'nats');
    const orphan = spawn('nats-server', ['-c', join(natsDir, 'nats-server.conf'), '-a', '127.0.0.1', '-p', String(port), '-js', '-sd', join(natsDir, 'jetstream'), '-P', pidFile], { detached: true, stdio: 'ignore' });
    orphan.unref();
    t.teardown(() => {
      if (orphan.pid !== undefined && alive(orphan.pid)) process.kill(orphan.pid, 'SIGKILL');
    });
    await until('the orphan to listen', () => pidIn(pidFile) === orphan.pid);
    await new Promise((r) => setTimeout(r, 300));
    await ctl.start();
    t.false(alive(orphan.pid!), 'the orphan was stopped');
    const now = pidIn(pidFile)!;
    t.not(now, orphan.pid);
    t.true(alive(now));
    const c = clients(ctl.ready.grpc as string);
    t.teardown(() => c.close());
    const written = await call(c.intent, c.intent.applyPolicy, { policy: samplePolicy('after-orphan'), validateOnly: false, allowLargeGrowth: false });
    t.true(written.revision > 0n);
  }));

test('command line - --help documents flags and exit codes; bad flags exit 2; --insecure only on loopback', (t) => {
  const help = execFileSync(process.execPath, [MAIN, '--help'], { encoding: 'utf8' });
  t.regex(help, /--ca-cert/);
  t.regex(help, /--insecure/);
  t.regex(help, /Exit codes/);
  const run = (args: string[]): { status: number | null; stderr: string } => {
    try {
      execFileSync(process.execPath, [MAIN, ...args], { encoding: 'utf8', stdio: 'pipe' });
      return { status: 0, stderr: '' };
    } catch (e) {
      const err = e as { status: number | null; stderr: string };
      return { status: err.status, stderr: err.stderr };
    }
  };
  const bad = run(['--no-such-flag']);
  t.is(bad.status, 2);
  t.regex(bad.stderr, /no-such-flag/);
  const exposed = run(['--insecure', '--listen', '0.0.0.0:0']);
  t.is(exposed.status, 2);
  t.regex(exposed.stderr, /--insecure .*refused on 0\.0\.0\.0/);
});

test('TLS - by default the controller serves mutual TLS from its own CA; a certificate of another CA gets nothing', (t) =>
  withTemp(t, async (dir) => {
    const ssl = (args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
    ssl(['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'other.key', '-out', 'other.pem', '-days', '1', '-subj', '/CN=other-ca']);
    writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=URI:spiffe://edgeplane/default/admin/mallory\n');
    ssl(['req', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', 'mallory.key', '-out', 'mallory.csr', '-subj', '/CN=mallory']);
    ssl(['x509', '-req', '-in', 'mallory.csr', '-CA', 'other.pem', '-CAkey', 'other.key', '-CAcreateserial', '-out', 'mallory.pem', '-days', '1', '-extfile', 'ext.cnf']);
    const ctl = await Supervised.start('ctl-tls', {
      command: process.execPath,
      args: [MAIN, '--listen', '127.0.0.1:0', '--embedded-nats', '127.0.0.1:0', '--data-dir', join(dir, 'c')],
      readyEvent: 'ready',
    });
    t.teardown(() => ctl.stop());
    t.regex(String(ctl.ready.caFingerprint), /^sha256:[0-9a-f]{64}$/);
    const { readFileSync, statSync } = await import('node:fs');
    t.is(statSync(join(dir, 'c', 'pki', 'ca-key.pem')).mode & 0o777, 0o600);
    t.is(statSync(join(dir, 'c', 'admin', 'admin-key.pem')).mode & 0o777, 0o600);
    const ca = readFileSync(join(dir, 'c', 'admin', 'ca.pem'));
    const opts = { 'grpc.use_local_subchannel_pool': 1 };
    const admin = new IntentServiceClient(ctl.ready.grpc as string, grpc.credentials.createSsl(ca, readFileSync(join(dir, 'c', 'admin', 'admin-key.pem')), readFileSync(join(dir, 'c', 'admin', 'admin.pem'))), opts);
    const forged = new IntentServiceClient(ctl.ready.grpc as string, grpc.credentials.createSsl(ca, readFileSync(join(dir, 'mallory.key')), readFileSync(join(dir, 'mallory.pem'))), opts);
    const noCert = new IntentServiceClient(ctl.ready.grpc as string, grpc.credentials.createSsl(ca), opts);
    const plain = new IntentServiceClient(ctl.ready.grpc as string, grpc.credentials.createInsecure(), opts);
    t.teardown(() => [admin, forged, noCert, plain].forEach((c) => c.close()));
    const ok = await call(admin, admin.listPolicies, { pageSize: 1, pageToken: '', labelSelector: '' });
    t.is(ok.revision, 0n);
    for (const c of [forged, noCert]) {
      const refused = await t.throwsAsync<grpc.ServiceError>(call(c, c.listPolicies, { pageSize: 1, pageToken: '', labelSelector: '' }));
      t.is(refused?.code, grpc.status.UNAUTHENTICATED);
    }
    await t.throwsAsync(call(plain, plain.listPolicies, { pageSize: 1, pageToken: '', labelSelector: '' }));
  }));

test('an entry larger than NATS accepts is refused as INVALID_ARGUMENT and writes nothing', (t) =>
  withTemp(t, async (dir) => {
    const nats = await NatsServer.start({ dataDir: join(dir, 'nats'), maxPayload: 64 * 1024 });
    const ctl = await controllerProcess('ctl', ['--nats', nats.url, '--nats-anonymous', '--data-dir', join(dir, 'c'), '--rule-growth-guard', '100000']);
    t.teardown(async () => {
      await ctl.stop();
      await nats.close();
    });
    const c = clients(ctl.ready.grpc as string);
    t.teardown(() => c.close());
    const small = await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('small', {}, 10) }));
    const err = await t.throwsAsync<grpc.ServiceError>(call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy: samplePolicy('huge', {}, 8000) })));
    t.is(err?.code, grpc.status.INVALID_ARGUMENT, 'not UNAVAILABLE: retrying cannot help');
    t.regex(err?.details ?? '', /exceeds what the NATS server accepts \(max_payload 65536/);
    const listed = await call(c.intent, c.intent.listPolicies, { pageSize: 100, pageToken: '', labelSelector: '' });
    t.is(listed.revision, small.revision);
    t.deepEqual(listed.policies.map((p) => p.metadata?.name), ['small']);
  }));
