// The node agent fronting a service end to end (issue 14), with everything real but the
// datapath: nats-server and the controller process (mutual TLS), a service applied through the
// API, the agent's own runtime with in-memory datapaths (LbReference over the laid-out tables
// answers which backend a new flow gets), and backends that are real TCP listeners on loopback
// probed by the agent's health checks. A backend that stops accepting leaves new-flow selection
// on this node with no log entry and no new report, and comes back when it recovers; a restarted
// agent enforces the services of its state file before it reaches anything.
// Waits are bounded polls; nothing asserts a duration.
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ApplyServiceRequest, HealthCheck_Type, Protocol, RevisionOutcome, Service, parseAddress, type RevisionReport } from '@edgeplane/proto';
import { AgentRuntime } from '../src/agent/agent-runtime.js';
import type { NodeIdentity } from '../src/agent/node-identity.js';
import type { FlowTuple } from '../src/datapath/flow-hash.js';
import { MemoryDatapath } from '../src/datapath/memory-datapath.js';
import { TestControlPlane, until } from '../../../test/support/control-plane.js';
import { call } from '../../../test/support/grpc.js';
import { enrollTestNode, startBackendPair, testRuntimeOptions } from './runtime-helpers.js';

const dir = mkdtempSync(join(tmpdir(), 'agent-service-lb-test-'));
const logs: string[] = [];
const identities: NodeIdentity[] = [];
let cp: TestControlPlane | undefined;

test.after.always(async () => {
  for (const id of identities) id.close();
  await cp?.close();
  rmSync(dir, { recursive: true, force: true });
});

const VIP = '192.0.2.30';

/** Which backend port each of 300 new TCP flows from distinct clients to VIP:80 gets on `dp` ("drop"/"pass" as such). */
function selection(dp: MemoryDatapath): Map<string, number> {
  const dst = parseAddress(VIP)!;
  const out = new Map<string, number>();
  for (let i = 0; i < 300; i++) {
    const tuple: FlowTuple = { family: 4, proto: 6, src: new Uint8Array([198, 18, i >> 8, i & 255]), dst, sport: 30_000 + i, dport: 80 };
    const s = dp.selectBackend(tuple);
    const k = s.kind === 'backend' ? `${s.address}:${s.port}` : s.kind;
    out.set(k, (out.get(k) ?? 0) + 1);
  }
  return out;
}

test.serial('agent services - the uplink fronts the service that selects the node; a backend that stops accepting leaves selection without a log entry or a report, comes back when it recovers; a restart enforces the state file', async (t) => {
  cp = await TestControlPlane.start();
  const ctl = cp;
  const [a, b] = await startBackendPair(t, 'tcp');

  const name = 'lb-agent-1';
  const log = (line: string): void => void logs.push(line);
  const identity = await enrollTestNode(ctl, name, { role: 'lb' }, join(dir, name), log);
  identities.push(identity);
  const reports: RevisionReport[] = [];
  const start = (uplink: MemoryDatapath, workload: MemoryDatapath): Promise<AgentRuntime> =>
    AgentRuntime.start({ ...testRuntimeOptions(ctl, identity, { uplink, workload }, join(dir, name), log), hooks: { report: (r) => void reports.push(r) } });
  const uplink = new MemoryDatapath();
  const workload = new MemoryDatapath();
  const runtime = await start(uplink, workload);
  let closed = false;
  t.teardown(async () => {
    if (!closed) await runtime.close();
  });
  const context = (): string => `${logs.slice(-30).join('\n')}\n${ctl.controller.output}`;
  await runtime.synced();
  await until('connected', () => runtime.connected, 15_000, context);

  const service = (svcName: string, vip: string, selector: Record<string, string>): Service =>
    Service.fromPartial({
      metadata: { name: svcName },
      spec: {
        nodeSelector: { matchLabels: selector },
        vip,
        protocol: Protocol.PROTOCOL_TCP,
        port: 80,
        backends: [
          { address: '127.0.0.1', port: a.port },
          { address: '127.0.0.1', port: b.port },
        ],
        healthCheck: { type: HealthCheck_Type.TYPE_TCP, interval: { seconds: 1n, nanos: 0 } },
      },
    });
  await call(ctl.api.intent, ctl.api.intent.applyService, ApplyServiceRequest.fromPartial({ service: service('elsewhere', '192.0.2.31', { role: 'core' }) }));
  const { revision } = await call(ctl.api.intent, ctl.api.intent.applyService, ApplyServiceRequest.fromPartial({ service: service('web', VIP, { role: 'lb' }) }));
  await until(`revision ${revision} applied`, () => runtime.status.applied === revision, 15_000, context);
  t.like(reports.at(-1), { revision, outcome: RevisionOutcome.REVISION_OUTCOME_ACK });
  t.deepEqual(uplink.lb?.services.map((s) => s.name), ['web'], 'the service that selects the node, on the uplink');
  t.is(workload.lb, undefined, 'none on the workload');
  const healthy = uplink.lb!;
  const both = selection(uplink);
  t.deepEqual([...both.keys()].sort(), [`127.0.0.1:${a.port}`, `127.0.0.1:${b.port}`].sort());
  await until('both backends probed healthy', () => runtime.serviceHealth.verdicts().length === 2 && runtime.serviceHealth.verdicts().every((v) => v.healthy), 15_000, context);

  // b stops accepting: after its unhealthy threshold the node takes it out of new-flow selection.
  const reportsBefore = reports.length;
  await b.stop();
  await until('b out of the uplink\'s selection', () => uplink.lb?.services[0]?.backends.some((x) => x.port === b.port && !x.healthy && x.effectiveWeight === 0) === true, 20_000, context);
  t.deepEqual([...selection(uplink)], [[`127.0.0.1:${a.port}`, 300]], 'every new flow gets a');
  t.is(runtime.status.applied, revision, 'the same revision');
  t.true(runtime.status.healthApplies >= 1);
  t.is(reports.length, reportsBefore, 'no ACK or NACK for a health change');
  t.is((await ctl.audit()).last, revision, 'no log entry');

  // Back on its port: healthy after its healthy threshold, and the tables are those of before.
  await b.start(b.port);
  await until('b back in selection', () => uplink.lb?.services[0]?.backends.every((x) => x.healthy) === true, 20_000, context);
  t.deepEqual(uplink.lb!.services.map((s) => [...s.table]), healthy.services.map((s) => [...s.table]));
  t.deepEqual(selection(uplink), both);
  t.is(reports.length, reportsBefore);
  t.is((await ctl.audit()).last, revision);
  t.is((await ctl.nodeStatus(name))?.appliedRevision, revision);

  // A restart: the state file's services are enforced at boot, before NATS or the controller.
  closed = true;
  await runtime.close();
  const uplink2 = new MemoryDatapath();
  const again = await start(uplink2, new MemoryDatapath());
  t.teardown(() => again.close());
  t.is(again.status.applied, revision);
  t.deepEqual(uplink2.lb?.services.map((s) => s.name), ['web'], 'enforced at boot');
  t.deepEqual(selection(uplink2), both);
});
