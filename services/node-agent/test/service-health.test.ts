// The agent's backend health checks end to end (issue 14): a real control plane (nats-server and
// the controller process, mutual TLS), the agent's own runtime with in-memory datapaths, and
// backends that are real HTTP servers on loopback. The node probes them itself, acts on its own
// verdicts with no log entry, and the controller shows them fleet-wide (GetServiceHealth).
// Waits are bounded polls; nothing asserts a duration.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplyServiceRequest, HealthCheck_Type, Protocol, Service, type BackendVerdict, type DeepPartial, type ServiceSpec } from '@edgeplane/proto';
import { AgentRuntime } from '../src/agent/agent-runtime.js';
import type { NodeIdentity } from '../src/agent/node-identity.js';
import { ServiceHealth, serviceBackendTargets } from '../src/agent/service-health.js';
import { MemoryDatapath } from '../src/datapath/memory-datapath.js';
import { TestControlPlane, until } from '../../../test/support/control-plane.js';
import { call } from '../../../test/support/grpc.js';
import { enrollTestNode, startBackendPair, testRuntimeOptions } from './runtime-helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'service-health-test-'));
const logs: string[] = [];
const identities: NodeIdentity[] = [];
let cp: TestControlPlane | undefined;

test.after.always(async () => {
  for (const id of identities) id.close();
  await cp?.close();
  rmSync(dir, { recursive: true, force: true });
});

function service(name: string, spec: DeepPartial<ServiceSpec> = {}): Service {
  return Service.fromPartial({
    metadata: { name },
    spec: { nodeSelector: { matchLabels: { role: 'lb' } }, vip: '192.0.2.20', protocol: Protocol.PROTOCOL_TCP, port: 80, backends: [{ address: '10.0.0.1' }, { address: '10.0.0.2', port: 8080 }], ...spec },
  });
}

// ---- pure: which backends a node probes, and how ----

test('serviceBackendTargets - the defaults of HealthCheck: TCP, 5 s, 2 s, 2/2, the backend port else the service port; only services that select the node and have a check', (t) => {
  const targets = serviceBackendTargets(
    [
      service('checked', { healthCheck: {} }),
      service('unchecked', { vip: '192.0.2.21' }),
      service('elsewhere', { vip: '192.0.2.22', nodeSelector: { matchLabels: { role: 'other' } }, healthCheck: {} }),
    ],
    { role: 'lb' },
  );
  t.deepEqual(
    targets.map((x) => [x.service, x.address, x.port, x.target.port, x.target.probe]),
    [
      ['checked', '10.0.0.1', 80, 80, { kind: 'tcp', httpPath: '/', intervalMs: 5000, timeoutMs: 2000, healthyThreshold: 2, unhealthyThreshold: 2 }],
      ['checked', '10.0.0.2', 8080, 8080, { kind: 'tcp', httpPath: '/', intervalMs: 5000, timeoutMs: 2000, healthyThreshold: 2, unhealthyThreshold: 2 }],
    ],
  );
});

test('serviceBackendTargets - an HTTP check with its own port, a 1 s interval (the timeout is then the interval) and thresholds', (t) => {
  const [first] = serviceBackendTargets([service('web', { healthCheck: { type: HealthCheck_Type.TYPE_HTTP, port: 9000, interval: { seconds: 1n, nanos: 0 }, healthyThreshold: 3, unhealthyThreshold: 1 } })], { role: 'lb' });
  t.deepEqual(first?.target, { address: '10.0.0.1', port: 9000, probe: { kind: 'http', httpPath: '/', intervalMs: 1000, timeoutMs: 1000, healthyThreshold: 3, unhealthyThreshold: 1 } });
  t.is(first?.port, 80, 'the verdict is the backend\'s (its port), whatever port is probed');
  const invalid = service('bad', { healthCheck: { timeout: { seconds: 9n, nanos: 0 }, interval: { seconds: 1n, nanos: 0 } } });
  t.deepEqual(serviceBackendTargets([invalid], { role: 'lb' }), [], 'an invalid service is not probed (compile refuses it)');
});

test('ServiceHealth - every backend eligible before a verdict and without a check; a retarget to the same probes changes nothing; close twice is safe', (t) => {
  const h = new ServiceHealth();
  const hc = { healthCheck: { interval: { seconds: 300n, nanos: 0 } } };
  t.true(h.retarget([service('a', hc), service('b', { ...hc, vip: '192.0.2.21' }), service('c', { vip: '192.0.2.22' })], { role: 'lb' }, 7n));
  t.false(h.retarget([service('a', hc), service('b', { ...hc, vip: '192.0.2.21' }), service('c', { vip: '192.0.2.22' })], { role: 'lb' }, 8n), 'the same probes: nothing to resend');
  t.is(h.revision, 8n);
  t.true(h.eligible('a', '10.0.0.1', 80));
  t.true(h.eligible('c', '10.0.0.1', 80));
  t.deepEqual(
    h.verdicts().map((v) => [v.service, v.address, v.port, v.healthy]),
    [
      ['a', '10.0.0.1', 80, true],
      ['a', '10.0.0.2', 8080, true],
      ['b', '10.0.0.1', 80, true],
      ['b', '10.0.0.2', 8080, true],
    ],
  );
  t.true(h.retarget([], { role: 'lb' }, 9n));
  t.deepEqual(h.verdicts(), []);
  h.close();
  t.notThrows(() => h.close());
});

// ---- end to end ----

test.serial('AgentRuntime service health - a stopped backend is unhealthy at the controller with the reason, healthy again once back, on this node only and with no log entry; relabel retargets', async (t) => {
  cp = await TestControlPlane.start();
  const ctl = cp;
  const [a, b] = await startBackendPair(t, 'http');

  const name = 'lb-1';
  const log = (line: string): void => void logs.push(line);
  const identity = await enrollTestNode(ctl, name, { role: 'lb' }, join(dir, name), log);
  identities.push(identity);
  const dp = new MemoryDatapath();
  const runtime = await AgentRuntime.start(testRuntimeOptions(ctl, identity, { uplink: dp, workload: dp }, join(dir, name), log));
  t.teardown(() => runtime.close());
  const changes: BackendVerdict[] = [];
  runtime.serviceHealth.watch((v) => changes.push(v));
  const context = (): string => `${logs.slice(-30).join('\n')}\n${ctl.controller.output}`;
  await runtime.synced();
  await until('connected', () => runtime.connected, 15_000, context);

  const web = service('web', {
    backends: [
      { address: '127.0.0.1', port: a.port },
      { address: '127.0.0.1', port: b.port },
    ],
    healthCheck: { type: HealthCheck_Type.TYPE_HTTP, httpPath: '/healthz', interval: { seconds: 1n, nanos: 0 } },
  });
  const applied = await call(ctl.api.intent, ctl.api.intent.applyService, ApplyServiceRequest.fromPartial({ service: web }));
  const revision = applied.revision;
  await until(`revision ${revision} applied`, async () => (await ctl.nodeStatus(name))?.appliedRevision === revision, 15_000, context);

  /** [healthy, unhealthy, unknown] nodes of each backend, by port, and the reasons given. */
  const fleet = async (): Promise<Map<number, { counts: number[]; reasons: string[] }>> => {
    const res = await call(ctl.api.fleet, ctl.api.fleet.getServiceHealth, { names: ['web'] });
    return new Map(res.services[0]!.backends.map((x) => [x.port, { counts: [x.nodesHealthy, x.nodesUnhealthy, x.nodesUnknown], reasons: x.unhealthy.map((u) => `${u.node}: ${u.reason}`) }]));
  };
  await until('both backends probed', () => a.probes >= 2 && b.probes >= 2, 15_000, context);
  await until('both backends healthy at the controller', async () => [...(await fleet()).values()].every((x) => x.counts.join() === '1,0,0'), 15_000, context);

  // The backend stops: the node takes it out on its own, the controller hears why.
  await b.stop();
  await until('b unhealthy at the controller', async () => (await fleet()).get(b.port)?.counts.join() === '0,1,0', 20_000, context);
  const down = await fleet();
  t.regex(down.get(b.port)!.reasons[0] ?? '', /^lb-1: http: ECONNREFUSED$/);
  t.is(down.get(a.port)!.counts.join(), '1,0,0', 'the other backend is untouched');
  t.false(runtime.serviceHealth.eligible('web', '127.0.0.1', b.port), 'the compile step would take it out');
  t.true(runtime.serviceHealth.eligible('web', '127.0.0.1', a.port));
  t.like(changes.at(-1), { service: 'web', address: '127.0.0.1', port: b.port, healthy: false });

  // An answer outside 200-399 fails an HTTP probe too.
  a.status = 503;
  await until('a unhealthy (HTTP 503)', async () => (await fleet()).get(a.port)?.reasons.join() === 'lb-1: HTTP 503', 20_000, context);
  a.status = 200;

  // Back on its port: healthy again after the healthy threshold.
  await b.start(b.port);
  await until('both healthy again', async () => [...(await fleet()).values()].every((x) => x.counts.join() === '1,0,0'), 20_000, context);
  t.true(runtime.serviceHealth.eligible('web', '127.0.0.1', b.port));
  t.like(changes.at(-1), { healthy: true, reason: '' });

  // None of it was a log entry.
  const listed = await call(ctl.api.intent, ctl.api.intent.listServices, { pageSize: 0, pageToken: '', labelSelector: '' });
  t.is(listed.revision, revision, 'the revision did not move');
  t.is((await ctl.audit()).last, revision, 'the log holds nothing after the apply');
  t.is((await ctl.nodeStatus(name))?.appliedRevision, revision);

  // New labels that the service does not select: the node stops probing and says so.
  await call(ctl.api.trust, ctl.api.trust.setNodeLabels, { nodeName: name, labels: { role: 'other' } });
  await until('the probes retargeted', () => runtime.serviceHealth.verdicts().length === 0, 20_000, context);
  const res = await call(ctl.api.fleet, ctl.api.fleet.getServiceHealth, { names: ['web'] });
  t.is(res.services[0]!.nodesSelected, 0);
});
