// The agent's runtime (what main.ts and the fleet simulation run) against a real control plane
// (nats-server + controller process), with in-memory datapaths that take injected faults: the
// intent arrives over NATS, ACKs and conditions reach the controller's NodeStatus.
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Action, InterfaceRole, Policy, Protocol, TrustServiceClient } from '@edgeplane/proto';
import { AgentRuntime } from '../src/agent/agent-runtime.js';
import type { NodeIdentity } from '../src/agent/node-identity.js';
import { StateFile } from '../src/agent/state-file.js';
import { DatapathError } from '../src/datapath/errors.js';
import { MemoryDatapath } from '../src/datapath/memory-datapath.js';
import { buildFrame } from '../src/datapath/packet.js';
import { TestControlPlane, until } from '../../../test/support/control-plane.js';
import { call } from '../../../test/support/grpc.js';
import { enrollTestNode, testRuntimeOptions } from './runtime-helpers.js';

let cp: TestControlPlane;
const dir = mkdtempSync(join(tmpdir(), 'agent-runtime-test-'));
const logs: string[] = [];
/** Enrolled identities (their renewal timers), closed after the runtimes. */
const identities: NodeIdentity[] = [];

test.before(async () => {
  cp = await TestControlPlane.start();
});

test.after.always(async () => {
  for (const id of identities) id.close();
  await cp?.close();
  rmSync(dir, { recursive: true, force: true });
});

function denyPort(name: string, port: number): Policy {
  return Policy.fromPartial({
    metadata: { name },
    spec: { nodeSelector: { matchLabels: { role: 'rt' } }, interfaceRole: InterfaceRole.INTERFACE_ROLE_ALL, defaultAction: Action.ACTION_ALLOW, rules: [{ priority: 10, name: 'deny', protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: port, last: 0 }], action: Action.ACTION_DENY }] },
  });
}

const verdict = (dp: MemoryDatapath, port: number): string => dp.classify(buildFrame({ src: '198.18.0.7', dst: '10.0.0.1', protocol: 'tcp', srcPort: 40_000, dstPort: port })).verdict;

async function start(name: string, uplink: MemoryDatapath, workload: MemoryDatapath, labels: Record<string, string> = { role: 'rt' }): Promise<AgentRuntime> {
  const log = (line: string): void => void logs.push(`${name} ${line}`);
  const identity = await enrollTestNode(cp, name, labels, join(dir, name), log);
  const runtime = await AgentRuntime.start({ ...testRuntimeOptions(cp, identity, { uplink, workload }, join(dir, name), log), retryMinMs: 50, retryMaxMs: 200 });
  identities.push(identity);
  return runtime;
}

const context = (): string => `${logs.slice(-40).join('\n')}\n${cp.controller.output}`;

test.serial('AgentRuntime - follows the log and ACKs; a failed rollback shows in NodeStatus as unknown with its condition until the retry restores a known revision', async (t) => {
  const uplink = new MemoryDatapath();
  const workload = new MemoryDatapath();
  const runtime = await start('rt-1', uplink, workload);
  t.teardown(() => runtime.close());
  await runtime.synced();
  await until('connected', () => runtime.connected, 15_000, context);

  const r1 = await cp.apply(denyPort('rt-p', 23));
  await until(`revision ${r1} applied`, async () => (await cp.nodeStatus('rt-1'))?.appliedRevision === r1, 15_000, context);
  t.is(verdict(uplink, 23), 'drop');
  t.is(verdict(workload, 23), 'drop');

  // The workload refuses the next revision and the uplink refuses to go back.
  const known = JSON.stringify(uplink.ruleSet);
  let uplinkBroken = true;
  workload.injectApplyFault(() => new DatapathError('apply workload: injected'));
  uplink.injectApplyFault((rs) => (uplinkBroken && JSON.stringify(rs) === known ? new DatapathError('apply uplink: injected rollback failure') : undefined));
  const r2 = await cp.apply(denyPort('rt-p', 24));
  await until('applied_unknown in NodeStatus', async () => (await cp.nodeStatus('rt-1'))?.appliedUnknown === true, 15_000, context);
  await until('the condition in NodeStatus', async () => (await cp.nodeStatus('rt-1'))?.conditions.some((c) => c.type === 'apply-rollback-failed') === true, 15_000, context);
  const s = (await cp.nodeStatus('rt-1'))!;
  t.is(s.appliedRevision, r1, 'the last revision known to be enforced');
  t.is(s.lastErrorRevision, r2);
  t.regex(s.lastError, /^apply-rollback-failed: /);
  t.is(s.conditions.find((c) => c.type === 'apply-rollback-failed')?.revision, r2);

  // The retry restores revision 1 once the uplink takes it.
  uplinkBroken = false;
  await until('a known revision again', async () => (await cp.nodeStatus('rt-1'))?.appliedUnknown === false, 15_000, context);
  await until('the condition cleared', async () => (await cp.nodeStatus('rt-1'))?.conditions.length === 0, 15_000, context);
  t.is(verdict(uplink, 23), 'drop');
  t.is(verdict(uplink, 24), 'pass');

  // With the workload fixed, the next revision applies everywhere.
  workload.injectApplyFault(undefined);
  const r3 = await cp.apply(denyPort('rt-p', 25));
  await until(`revision ${r3} applied`, async () => (await cp.nodeStatus('rt-1'))?.appliedRevision === r3, 15_000, context);
  t.is(verdict(workload, 25), 'drop');
});

test.serial('AgentRuntime - a node an admin relabels compiles for its new labels at once, without a restart; the node cannot relabel itself', async (t) => {
  const uplink = new MemoryDatapath();
  const workload = new MemoryDatapath();
  const runtime = await start('rt-relabel', uplink, workload, { role: 'other' });
  t.teardown(() => runtime.close());
  await runtime.synced();
  await until('connected', () => runtime.connected, 15_000, context);
  const canary = Policy.fromPartial({
    metadata: { name: 'rt-canary' },
    spec: { nodeSelector: { matchLabels: { tier: 'canary' } }, interfaceRole: InterfaceRole.INTERFACE_ROLE_ALL, defaultAction: Action.ACTION_ALLOW, rules: [{ priority: 10, name: 'deny', protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 31, last: 0 }], action: Action.ACTION_DENY }] },
  });
  const r = await cp.apply(canary);
  await until(`revision ${r} applied`, async () => (await cp.nodeStatus('rt-relabel'))?.appliedRevision === r, 15_000, context);
  t.is(verdict(uplink, 31), 'pass', 'not selected yet');

  // The node's own certificate cannot change its labels: only an admin can.
  const identity = identities.find((i) => i.credentials.nodeName === 'rt-relabel')!;
  const self = new TrustServiceClient(cp.address, identity.channelCredentials());
  t.teardown(() => self.close());
  const refused = await new Promise<grpc.ServiceError | null>((resolve) => self.setNodeLabels({ nodeName: 'rt-relabel', labels: { role: 'other', tier: 'canary' } }, (err) => resolve(err)));
  t.is(refused?.code, grpc.status.PERMISSION_DENIED);
  t.is(verdict(uplink, 31), 'pass');

  const applies = runtime.status.applies;
  await call(cp.api.trust, cp.api.trust.setNodeLabels, { nodeName: 'rt-relabel', labels: { role: 'other', tier: 'canary' } });
  await until('the new labels enforced', () => verdict(uplink, 31) === 'drop' && verdict(workload, 31) === 'drop', 15_000, context);
  t.deepEqual(runtime.agent.labels, { role: 'other', tier: 'canary' });
  t.is(runtime.status.applied, r, 'the same revision, compiled again for the new labels');
  t.true(runtime.status.applies > applies);
  await until('the controller records the new labels', async () => (await call(cp.api.fleet, cp.api.fleet.getNode, { name: 'rt-relabel' }).catch(() => undefined))?.node?.labels?.tier === 'canary', 15_000, context);
  await until('connected again', () => runtime.connected, 15_000, context);

  // And back: a label removed unselects the policy.
  await call(cp.api.trust, cp.api.trust.setNodeLabels, { nodeName: 'rt-relabel', labels: { role: 'other' } });
  await until('the policy no longer selects the node', () => verdict(uplink, 31) === 'pass', 15_000, context);
  t.deepEqual(runtime.agent.labels, { role: 'other' });
});

test.serial('AgentRuntime - closing twice is safe, and closing before NATS is reachable stops the connect', async (t) => {
  const runtime = await AgentRuntime.start({
    nodeName: 'rt-closed',
    labels: {},
    datapaths: { uplink: new MemoryDatapath(), workload: new MemoryDatapath() },
    stateFile: new StateFile(join(dir, 'rt-closed', 'applied.json')),
    natsServers: ['nats://127.0.0.1:1'],
    trustedKeys: new Map(),
    controller: { address: '127.0.0.1:1', credentials: grpc.credentials.createInsecure() },
    info: { agentVersion: 'test', kernelRelease: 'test', hostname: 'x', datapath: 'memory', capabilities: undefined },
    sessionId: 's',
    log: () => undefined,
  });
  await runtime.close();
  await runtime.close();
  await runtime.synced();
  t.is(runtime.nats, undefined);
});
