// Issue 12 hardening: one fleet id (log and certificates), labels bound at enrollment, the
// admin path that changes them, and the authz-denied metric that counts refusals.
import test from 'ava';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { call, detailsOf } from '../../../test/support/grpc.js';
import { parseConfig, startController, type ControllerConfig } from '../src/index.js';
import { agentStream, clientsFor, createToken, enroll, newKey, startTlsController, type ClientCert, type Clients } from './trust-helpers.js';

let env: Awaited<ReturnType<typeof startTlsController>>;
let admin: Clients;
let anon: Clients;
const open: Clients[] = [];

function as(cert?: ClientCert): Clients {
  const c = clientsFor(env.controller.address, env.ca, cert);
  open.push(c);
  return c;
}

/** The controller's edgeplane_authz_denied count for `reason`, from its Prometheus endpoint. */
async function deniedCount(reason: string): Promise<number> {
  const body = await (await fetch(env.controller.prometheusUrl!)).text();
  let sum = 0;
  for (const line of body.split('\n')) {
    if (line.startsWith('edgeplane_authz_denied') && line.includes(`reason="${reason}"`)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}

async function nodeLabels(name: string): Promise<Record<string, string> | undefined> {
  return (await call(admin.fleet, admin.fleet.getNode, { name }).catch(() => undefined))?.node?.labels;
}

test.before(async () => {
  env = await startTlsController(['--prometheus-port', '0', '--prometheus-host', '127.0.0.1']);
  admin = as(env.admin);
  anon = as();
});
test.after.always(async () => {
  for (const c of open) c.close();
  await env?.stop();
});

test('enroll - returns the fleet id, which is the fleet of every certificate the CA issues', async (t) => {
  const n = await enroll(anon, await createToken(admin, 900, { site: 'ams1' }), 'fleet-1');
  t.is(n.response.fleetId, env.controller.fleetId);
  t.deepEqual(n.response.labels, { site: 'ams1' });
  t.regex(new X509Certificate(n.certPem).subjectAltName ?? '', new RegExp(`URI:spiffe://edgeplane/${env.controller.fleetId}/node/fleet-1`));
  t.regex(new X509Certificate(env.admin.certPem).subjectAltName ?? '', new RegExp(`URI:spiffe://edgeplane/${env.controller.fleetId}/admin/admin`));
});

test('hello - the enrolled labels are accepted and welcomed; other labels are LABELS_MISMATCH and counted', async (t) => {
  const n = as(await enroll(anon, await createToken(admin, 900, { site: 'ams1', tier: 'edge' }), 'labels-1'));
  const ok = agentStream(n.agent, 'labels-1', { tier: 'edge', site: 'ams1' });
  const welcome = await ok.next((m) => m.message?.$case === 'welcome');
  t.deepEqual(welcome.message?.$case === 'welcome' ? welcome.message.welcome.enrolledLabels : undefined, { site: 'ams1', tier: 'edge' });
  ok.close();
  t.deepEqual(await nodeLabels('labels-1'), { site: 'ams1', tier: 'edge' });

  const before = await deniedCount('LABELS_MISMATCH');
  const claims: Record<string, string>[] = [{ site: 'ams1', tier: 'edge', role: 'canary' }, { site: 'fra1', tier: 'edge' }, { site: 'ams1' }, {}];
  for (const claimed of claims) {
    const s = agentStream(n.agent, 'labels-1', claimed);
    const status = await s.end();
    t.is(status?.code, grpc.status.PERMISSION_DENIED, JSON.stringify(claimed));
    t.is(detailsOf(status)?.errorInfo?.reason, 'LABELS_MISMATCH');
  }
  t.is(await deniedCount('LABELS_MISMATCH'), before + 4);
  t.deepEqual(await nodeLabels('labels-1'), { site: 'ams1', tier: 'edge' }, 'the claimed labels were not recorded');
});

test('hello - a node reporting as another node is NODE_MISMATCH and counted', async (t) => {
  const n = as(await enroll(anon, await createToken(admin), 'spoof-1'));
  await enroll(anon, await createToken(admin, 900, { role: 'canary' }), 'spoof-2');
  const before = await deniedCount('NODE_MISMATCH');
  const s = agentStream(n.agent, 'spoof-2', { role: 'canary' });
  const status = await s.end();
  t.is(status?.code, grpc.status.PERMISSION_DENIED);
  t.is(detailsOf(status)?.errorInfo?.reason, 'NODE_MISMATCH');
  t.is(await deniedCount('NODE_MISMATCH'), before + 1);
  t.is(await nodeLabels('spoof-2'), undefined, 'spoof-2 was not reported for');
});

test('set node labels - admin only; the node is told its new labels and may say hello with the old ones until it used the new ones', async (t) => {
  const cert = await enroll(anon, await createToken(admin, 900, { site: 'ams1' }), 'relabel-1');
  const n = as(cert);
  const first = agentStream(n.agent, 'relabel-1', { site: 'ams1' });
  await first.next((m) => m.message?.$case === 'welcome');

  // Neither the node itself nor an operator may change labels.
  const opKey = newKey();
  const op = as({ keyPem: opKey.keyPem, certPem: (await call(admin.trust, admin.trust.issueCertificate, { role: 'operator', name: 'ops', publicKey: opKey.publicDer, lifetime: undefined })).certificate });
  for (const c of [n, op]) {
    const err = await t.throwsAsync(call(c.trust, c.trust.setNodeLabels, { nodeName: 'relabel-1', labels: { site: 'x' } }));
    t.is((err as unknown as grpc.ServiceError).code, grpc.status.PERMISSION_DENIED);
  }
  // Bad input changes nothing.
  const bad = await t.throwsAsync(call(admin.trust, admin.trust.setNodeLabels, { nodeName: 'relabel-1', labels: { 'not a key!': 'v' } }));
  t.is((bad as unknown as grpc.ServiceError).code, grpc.status.INVALID_ARGUMENT);
  const ghost = await t.throwsAsync(call(admin.trust, admin.trust.setNodeLabels, { nodeName: 'never-enrolled', labels: {} }));
  t.is((ghost as unknown as grpc.ServiceError).code, grpc.status.NOT_FOUND);
  t.deepEqual(await nodeLabels('relabel-1'), { site: 'ams1' });

  const res = await call(admin.trust, admin.trust.setNodeLabels, { nodeName: 'relabel-1', labels: { site: 'fra1', tier: 'canary' } });
  t.deepEqual(res.labels, { site: 'fra1', tier: 'canary' });
  t.is((await first.end())?.code, grpc.status.UNAVAILABLE, 'the open stream was closed');
  t.deepEqual(await nodeLabels('relabel-1'), { site: 'fra1', tier: 'canary' }, 'the registry has them before the next hello');

  // The node still knows only its old labels: accepted, recorded with the new ones, told them.
  const old = agentStream(n.agent, 'relabel-1', { site: 'ams1' });
  const w = await old.next((m) => m.message?.$case === 'welcome');
  t.deepEqual(w.message?.$case === 'welcome' ? w.message.welcome.enrolledLabels : undefined, { site: 'fra1', tier: 'canary' });
  t.deepEqual(await nodeLabels('relabel-1'), { site: 'fra1', tier: 'canary' });
  old.close();
  // Once it said hello with the new ones, the old ones are refused.
  const fresh = agentStream(n.agent, 'relabel-1', { site: 'fra1', tier: 'canary' });
  await fresh.next((m) => m.message?.$case === 'welcome');
  fresh.close();
  const stale = agentStream(n.agent, 'relabel-1', { site: 'ams1' });
  t.is(detailsOf(await stale.end())?.errorInfo?.reason, 'LABELS_MISMATCH');
});

test('fleet id - a CA made for another fleet than the log is a config error', async (t) => {
  const dataDir = mkdtempSync(join(tmpdir(), 'ctl-fleet-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  // A new log (its own embedded NATS) for another fleet; the running controller's CA names its own.
  // (Without --fleet-id a new data dir takes the fleet its CA names.)
  const config = parseConfig(
    ['--listen', '127.0.0.1:0', '--embedded-nats', '127.0.0.1:0', '--data-dir', dataDir, '--shutdown-grace', '1', '--fleet-id', 'another-fleet', '--ca-cert', join(env.dataDir, 'pki', 'ca.pem'), '--ca-key', join(env.dataDir, 'pki', 'ca-key.pem')],
    {},
  ) as ControllerConfig;
  const err = await t.throwsAsync(startController(config, { log: () => undefined }));
  t.is(err?.name, 'ConfigError');
  t.regex(err?.message ?? '', new RegExp(`made for fleet "${env.controller.fleetId}"`));
});

test('fleet id - --fleet is the deprecated name of --fleet-id; ids are lower-case names', (t) => {
  const parse = (args: string[], e: Record<string, string> = {}): ControllerConfig => parseConfig(['--data-dir', '/tmp/x', ...args], e) as ControllerConfig;
  t.is(parse(['--fleet', 'eu-1']).fleetId, 'eu-1');
  t.is(parse(['--fleet-id', 'eu-1']).fleetId, 'eu-1');
  t.is(parse([], { EDGEPLANE_FLEET: 'eu-2' }).fleetId, 'eu-2');
  t.is(parse([], {}).fleetId, undefined);
  t.throws(() => parse(['--fleet', 'a', '--fleet-id', 'b']), { name: 'ConfigError', message: /deprecated/ });
  t.throws(() => parse(['--fleet-id', 'EU']), { name: 'ConfigError', message: /lower-case/ });
});
