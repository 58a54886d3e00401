// Backend health through the real controller (issue 14): mutual TLS, enrolled nodes speaking
// AgentService.Connect with their own certificates, FleetService.GetServiceHealth over gRPC as a
// viewer calls it. The agents' side (real probes of real servers) is in the node agent's
// service-health test; here the reports are written by hand, hostile ones included.
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { ApplyServiceRequest, HealthCheck_Type, MAX_BACKEND_HEALTH_ENTRIES, MAX_BACKEND_HEALTH_PER_NODE, MAX_UNHEALTHY_NODES_LISTED, MAX_UNHEALTHY_VERDICTS_LISTED, Protocol, Service, type BackendVerdict, type DeepPartial, type ServiceSpec } from '@edgeplane/proto';
import { call, detailsOf } from '../../../test/support/grpc.js';
import { until } from '../../../test/support/control-plane.js';
import { CounterStore } from '../src/counter-store.js';
import { FleetApi } from '../src/fleet-api.js';
import { NodeRegistry } from '../src/node-registry.js';
import { ServiceHealthStore } from '../src/service-health-store.js';
import { agentStream, clientsFor, createToken, enroll, newKey, startTlsController, type ClientCert, type Clients } from './trust-helpers.js';

let env: Awaited<ReturnType<typeof startTlsController>>;
let admin: Clients;
let viewer: Clients;
const open: Clients[] = [];
const nodes = new Map<string, Clients>();
const SITE = { site: 'ams1' };

function as(cert?: ClientCert): Clients {
  const c = clientsFor(env.controller.address, env.ca, cert);
  open.push(c);
  return c;
}

async function issue(role: string, name: string): Promise<ClientCert> {
  const key = newKey();
  const res = await call(admin.trust, admin.trust.issueCertificate, { role, name, publicKey: key.publicDer, lifetime: undefined });
  return { keyPem: key.keyPem, certPem: res.certificate };
}

function service(name: string, spec: DeepPartial<ServiceSpec> = {}): Service {
  return Service.fromPartial({
    metadata: { name },
    spec: {
      nodeSelector: { matchLabels: SITE },
      vip: '192.0.2.10',
      protocol: Protocol.PROTOCOL_TCP,
      port: 443,
      backends: [{ address: '10.0.0.1' }, { address: '10.0.0.2', port: 8080 }],
      healthCheck: { type: HealthCheck_Type.TYPE_TCP, interval: { seconds: 1n, nanos: 0 } },
      ...spec,
    },
  });
}

test.before(async () => {
  env = await startTlsController();
  admin = as(env.admin);
  viewer = as(await issue('viewer', 'alice'));
  const anon = as();
  for (const name of ['edge-a', 'edge-b', 'edge-x']) nodes.set(name, as(await enroll(anon, await createToken(admin, 900, SITE), name)));
  // The registry knows a node from its first hello: every node says hello once.
  for (const name of nodes.keys()) {
    const s = await connect(name);
    s.close();
  }
  await call(admin.intent, admin.intent.applyService, ApplyServiceRequest.fromPartial({ service: service('web') }));
  await call(admin.intent, admin.intent.applyService, ApplyServiceRequest.fromPartial({ service: service('plain', { vip: '192.0.2.11', healthCheck: undefined }) }));
});
test.after.always(async () => {
  for (const c of open) c.close();
  await env?.stop();
});

const health = (names: string[], as: Clients = viewer) => call(as.fleet, as.fleet.getServiceHealth, { names });
const verdict = (address: string, port: number, healthy: boolean, reason = '', svc = 'web'): BackendVerdict => ({ service: svc, address, port, healthy, reason, since: new Date() });
/** The (healthy, unhealthy, unknown) node counts of each backend of `name`. */
async function counts(name: string): Promise<[string, number, number, number][]> {
  const res = await health([name]);
  return res.services[0]!.backends.map((b) => [`${b.address}:${b.port}`, b.nodesHealthy, b.nodesUnhealthy, b.nodesUnknown]);
}

/** A node's stream, welcomed; `sync()` resolves once the controller has handled everything sent before it (heartbeats are echoed in order). */
async function connect(name: string) {
  const s = agentStream(nodes.get(name)!.agent, name, SITE);
  await s.next((m) => m.message?.$case === 'welcome');
  let seq = 0n;
  return Object.assign(s, {
    async sync(): Promise<void> {
      const sequence = ++seq;
      s.send({ message: { $case: 'heartbeat', heartbeat: { sequence, time: new Date() } } });
      await s.next((m) => m.message?.$case === 'heartbeat' && m.message.heartbeat.sequence === sequence);
    },
  });
}

test.serial('GetServiceHealth - per backend the nodes healthy, unhealthy with their reasons, unknown; a change updates it; a node whose stream ended is unknown', async (t) => {
  const a = await connect('edge-a');
  t.teardown(() => a.close());
  t.deepEqual(await counts('web'), [
    ['10.0.0.1:443', 0, 0, 3],
    ['10.0.0.2:8080', 0, 0, 3],
  ], 'before any report every selected node is unknown');

  a.send({ message: { $case: 'backendHealth', backendHealth: { replace: true, revision: 1n, backends: [verdict('10.0.0.1', 443, true), verdict('10.0.0.2', 8080, false, 'connect: ECONNREFUSED')] } } });
  await a.sync();
  const res = await health(['web']);
  const web = res.services[0]!;
  t.true(web.healthChecked);
  t.is(web.nodesSelected, 3);
  t.deepEqual(await counts('web'), [
    ['10.0.0.1:443', 1, 0, 2],
    ['10.0.0.2:8080', 0, 1, 2],
  ]);
  t.deepEqual(web.backends[1]!.unhealthy.map((u) => [u.node, u.reason]), [['edge-a', 'connect: ECONNREFUSED']]);
  t.truthy(web.backends[1]!.unhealthy[0]!.since);

  // A change alone updates; a replace forgets what is not in it.
  a.send({ message: { $case: 'backendHealth', backendHealth: { replace: false, revision: 1n, backends: [verdict('10.0.0.2', 8080, true)] } } });
  await a.sync();
  t.deepEqual(await counts('web'), [
    ['10.0.0.1:443', 1, 0, 2],
    ['10.0.0.2:8080', 1, 0, 2],
  ]);
  a.send({ message: { $case: 'backendHealth', backendHealth: { replace: true, revision: 1n, backends: [verdict('10.0.0.2', 8080, false, 'HTTP 503')] } } });
  await a.sync();
  t.deepEqual(await counts('web'), [
    ['10.0.0.1:443', 0, 0, 3],
    ['10.0.0.2:8080', 0, 1, 2],
  ]);

  a.close();
  await until('edge-a disconnected', async () => (await call(viewer.fleet, viewer.fleet.getNode, { name: 'edge-a' })).node?.status?.connected === false);
  t.deepEqual(await counts('web'), [
    ['10.0.0.1:443', 0, 0, 3],
    ['10.0.0.2:8080', 0, 0, 3],
  ], 'a node whose stream ended has not said');
});

test.serial('GetServiceHealth - a service without a health check: not checked, every node unknown', async (t) => {
  const res = await health(['plain', 'web']);
  t.deepEqual(res.services.map((s) => [s.name, s.healthChecked]), [
    ['plain', false],
    ['web', true],
  ]);
  t.deepEqual(await counts('plain'), [
    ['10.0.0.1:443', 0, 0, 3],
    ['10.0.0.2:8080', 0, 0, 3],
  ]);
});

test.serial('backend health report - naming a service or backend the intent does not have is refused whole: nothing changes, the stream stays open', async (t) => {
  const b = await connect('edge-b');
  t.teardown(() => b.close());
  b.send({ message: { $case: 'backendHealth', backendHealth: { replace: true, revision: 1n, backends: [verdict('10.0.0.1', 443, false, 'connect: ETIMEDOUT')] } } });
  await b.sync();
  const before = await counts('web');
  t.deepEqual(before[0], ['10.0.0.1:443', 0, 1, 2]);

  for (const hostile of [
    [verdict('10.0.0.1', 443, true), verdict('10.0.0.9', 443, true, '', 'ghost')],
    [verdict('10.0.0.1', 443, true), verdict('10.0.0.3', 443, true)],
    // The backend's port is 8080: 443 is another backend, which the service does not have.
    [verdict('10.0.0.2', 443, true)],
  ]) {
    b.send({ message: { $case: 'backendHealth', backendHealth: { replace: true, revision: 1n, backends: hostile } } });
    await b.sync();
    t.deepEqual(await counts('web'), before, 'a replace that names what the intent does not have changed nothing');
  }
  t.is(b.ended, undefined, 'the stream is still open');
});

test.serial('backend health report - too many entries, a bad address, a bad port, a duplicate, a long reason: INVALID_ARGUMENT ends the stream, nothing kept', async (t) => {
  const before = await counts('web');
  const cases: [string, BackendVerdict[], RegExp][] = [
    ['too many', Array.from({ length: MAX_BACKEND_HEALTH_ENTRIES + 1 }, (_, i) => verdict(`10.1.${i >> 8}.${i & 255}`, 443, true)), /^backend_health\.backends$/],
    ['bad address', [verdict('10.0.0.01', 443, true)], /^backend_health\.backends\[0\]\.address$/],
    ['bad port', [verdict('10.0.0.1', 70_000, true)], /^backend_health\.backends\[0\]\.port$/],
    ['duplicate', [verdict('10.0.0.1', 443, true), verdict('10.0.0.1', 443, false, 'x')], /^backend_health\.backends\[1\]$/],
    ['long reason', [verdict('10.0.0.1', 443, false, 'x'.repeat(5000))], /^backend_health\.backends\[0\]\.reason$/],
  ];
  for (const [what, backends, field] of cases) {
    const x = await connect('edge-x');
    x.send({ message: { $case: 'backendHealth', backendHealth: { replace: true, revision: 1n, backends } } });
    const err = await x.end();
    t.is(err?.code, grpc.status.INVALID_ARGUMENT, what);
    t.regex(detailsOf(err)?.fieldViolations[0]?.field ?? '', field, what);
    const res = await health(['web']);
    t.true(
      res.services[0]!.backends.every((b) => b.unhealthy.every((u) => u.node !== 'edge-x')),
      `${what}: nothing of edge-x kept`,
    );
    t.deepEqual(await counts('web'), before, `${what}: counts unchanged`);
  }
});

test('GetServiceHealth - a viewer may call it, a node may not; bad and unknown names are refused', async (t) => {
  await t.notThrowsAsync(health(['web']));
  const node = await t.throwsAsync(health(['web'], nodes.get('edge-a')!));
  t.is((node as grpc.ServiceError).code, grpc.status.PERMISSION_DENIED);
  const none = (await t.throwsAsync(health([]))) as grpc.ServiceError;
  t.is(none.code, grpc.status.INVALID_ARGUMENT);
  t.deepEqual(detailsOf(none)?.fieldViolations.map((v) => [v.field, v.reason]), [['names', 'REQUIRED']]);
  const many = (await t.throwsAsync(health(Array.from({ length: 17 }, (_, i) => `s${i}`)))) as grpc.ServiceError;
  t.deepEqual(detailsOf(many)?.fieldViolations.map((v) => [v.field, v.reason]), [['names', 'TOO_MANY_NAMES']]);
  const bad = (await t.throwsAsync(health(['web', 'Not_A_Name']))) as grpc.ServiceError;
  t.deepEqual(detailsOf(bad)?.fieldViolations.map((v) => [v.field, v.reason]), [['names[1]', 'INVALID_NAME']]);
  const missing = (await t.throwsAsync(health(['web', 'ghost']))) as grpc.ServiceError;
  t.is(missing.code, grpc.status.NOT_FOUND);
});

test('ServiceHealthStore - at most MAX_BACKEND_HEALTH_PER_NODE verdicts per node: new ones past it are dropped and counted, known ones still update; forget empties the node', (t) => {
  const store = new ServiceHealthStore();
  const reports = MAX_BACKEND_HEALTH_PER_NODE / MAX_BACKEND_HEALTH_ENTRIES;
  for (let r = 0; r <= reports; r++) {
    const backends = Array.from({ length: MAX_BACKEND_HEALTH_ENTRIES }, (_, i) => verdict(`10.${r}.${i >> 8}.${i & 255}`, 443, true));
    store.add('n1', { replace: r === 0, revision: 1n, backends });
  }
  t.is(store.dropped, MAX_BACKEND_HEALTH_ENTRIES, 'the whole report past the bound');
  t.is(store.verdict('n1', 'web', `10.${reports}.0.0`, 443), undefined);
  store.add('n1', { replace: false, revision: 1n, backends: [verdict('10.0.0.0', 443, false, 'HTTP 500')] });
  t.is(store.verdict('n1', 'web', '10.0.0.0', 443)?.reason, 'HTTP 500', 'a known backend still updates at the bound');
  store.forget('n1');
  t.is(store.size, 0);
  t.is(store.verdict('n1', 'web', '10.0.0.0', 443), undefined);
});

test('FleetApi.getServiceHealth - unhealthy nodes listed at most MAX_UNHEALTHY_NODES_LISTED per backend and MAX_UNHEALTHY_VERDICTS_LISTED per answer, all counted', (t) => {
  const registry = new NodeRegistry({ load: async () => [], save: async () => undefined });
  const store = new ServiceHealthStore();
  const NODES = 12;
  const BACKENDS = Math.ceil(MAX_UNHEALTHY_VERDICTS_LISTED / MAX_UNHEALTHY_NODES_LISTED) + 1;
  const backends = Array.from({ length: BACKENDS }, (_, i) => ({ address: `10.0.${i >> 8}.${i & 255}`, port: 443 }));
  const svc = service('big', { backends, nodeSelector: {} });
  for (let n = 0; n < NODES; n++) {
    const node = `n${String(n).padStart(2, '0')}`;
    registry.hello({ nodeName: node, labels: {}, info: undefined, interfaces: [], receivedRevision: 0n, appliedRevision: 0n, sessionId: 's', conditions: [], appliedUnknown: false, lastReport: undefined }, 's');
    store.add(node, { replace: true, revision: 1n, backends: backends.map((b) => verdict(b.address, 443, false, `down on ${node}`, 'big')) });
  }
  const api = new FleetApi(registry, new CounterStore(), () => 1n, undefined, undefined, { store, service: (name) => (name === 'big' ? svc : undefined) });
  const [big] = api.getServiceHealth({ names: ['big'] }).services;
  t.true(big!.backends.every((b) => b.nodesUnhealthy === NODES && b.nodesHealthy === 0 && b.nodesUnknown === 0), 'every verdict counted');
  t.deepEqual(big!.backends[0]!.unhealthy.map((u) => u.node), Array.from({ length: MAX_UNHEALTHY_NODES_LISTED }, (_, n) => `n${String(n).padStart(2, '0')}`), 'the first nodes by name');
  t.is(big!.backends.reduce((sum, b) => sum + b.unhealthy.length, 0), MAX_UNHEALTHY_VERDICTS_LISTED);
  t.true(big!.backends.at(-1)!.unhealthy.length < MAX_UNHEALTHY_NODES_LISTED, 'the answer\'s bound cut the last backend\'s list');
});
