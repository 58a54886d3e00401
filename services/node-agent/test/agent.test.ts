import test from 'ava';
import { generateKeyPairSync } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import { headers, type NatsConnection } from '@nats-io/transport-node';
import {
  Action,
  ApplyPolicyRequest,
  INTENT_LIVE_SUBJECT,
  LogEntry,
  Policy,
  Protocol,
  encodeSignedLogEntry,
  signLogEntry,
  type Rule,
} from '@edgeplane/proto';
import { TestControlPlane } from '../../../test/support/control-plane.js';
import { FleetNetwork, type FleetNode } from '../../../test/support/fleet.js';
import { call, type clients } from '../../../test/support/grpc.js';
import { sh } from '../../../test/support/topology.js';

let net: FleetNetwork;
let cp: TestControlPlane;
let c: ReturnType<typeof clients>;
let nc: NatsConnection;

test.before(async () => {
  net = new FleetNetwork();
  // The secure path as deployed: TLS NATS with per-node credentials, mutual TLS gRPC; the tests
  // call as the admin and publish forged entries with the controller's NATS rights.
  cp = await TestControlPlane.start(['--heartbeat-interval', '1', '--counter-interval', '1', '--rule-growth-guard', '100000']);
  c = cp.api;
  nc = await cp.natsConnect();
});

test.after.always(async () => {
  await nc?.close();
  await net?.remove();
  await cp?.close();
});

async function until(what: string, pred: () => Promise<boolean> | boolean, ms = 15_000, node?: FleetNode): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${node?.agent?.output ?? ''}\n${cp.controller.output}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

async function nodeStatus(name: string) {
  return (await call(c.fleet, c.fleet.getNode, { name }).catch(() => undefined))?.node?.status;
}

async function apply(policy: Policy): Promise<bigint> {
  return (await call(c.intent, c.intent.applyPolicy, ApplyPolicyRequest.fromPartial({ policy, allowLargeGrowth: true }))).revision;
}

function icmpDeny(name: string, selector: Record<string, string>, source: string): Policy {
  return Policy.fromPartial({
    metadata: { name },
    spec: { nodeSelector: { matchLabels: selector }, defaultAction: Action.ACTION_ALLOW, rules: [{ priority: 10, name: 'no-ping', sourceCidrs: [`${source}/32`], protocol: Protocol.PROTOCOL_ICMP, action: Action.ACTION_DENY }] },
  });
}

// An agent cut off while entries land, and an agent killed with -9 under traffic: whole-system
// tests with three agents in test/faults.test.ts (they check more than one agent alone could).

let node: FleetNode;

test.serial('agent - a policy that selects the node is enforced on real packets and the controller shows the ACK', async (t) => {
  node = net.addNode(1, 'edge-1');
  await node.startAgent(cp, { role: 'edge', site: 'ams1' });
  await until('the agent to connect', async () => (await nodeStatus('edge-1'))?.connected === true, 15_000, node);
  t.is(await node.ping(0), 3, 'no policy yet: pings pass');
  const revision = await apply(icmpDeny('no-ping-edge', { role: 'edge' }, node.sources[0]));
  await until('the ACK', async () => (await nodeStatus('edge-1'))?.appliedRevision === revision, 15_000, node);
  t.is(await node.ping(0), 0, 'the denied source gets no replies');
  t.is(await node.ping(1), 3, 'the other source still does');
  await until('counters at the controller', async () => {
    const r = await call(c.fleet, c.fleet.getPolicyCounters, { policy: 'no-ping-edge', nodeLabelSelector: '', perNode: true });
    return (r.fleet[0]?.packets ?? 0n) >= 3n;
  });
  const status = await call(c.fleet, c.fleet.getRevisionStatus, { revision, nodeLabelSelector: 'role=edge' });
  t.like(status, { nodesTotal: 1, nodesApplied: 1, nodesFailed: 0 });
  // describe node: each interface with its real index and the mode its program runs in, as the kernel says.
  const ifindex = (dev: string): number => (JSON.parse(sh('ip', ['-n', node.ns, '-j', 'link', 'show', 'dev', dev])) as { ifindex: number }[])[0]!.ifindex;
  const described = (await call(c.fleet, c.fleet.getNode, { name: 'edge-1' })).node!.interfaces;
  const up0 = described.find((i) => i.name === 'up0');
  const wl0 = described.find((i) => i.name === 'wl0');
  t.is(up0?.ifindex, ifindex('up0'));
  t.regex(up0?.attachMode ?? '', /^xdp-(native|generic)$/, 'the mode the XDP program runs in, never the asked-for "auto"');
  t.is(wl0?.ifindex, ifindex('wl0'));
  t.is(wl0?.attachMode, 'tcx', 'in the tcx chains (this kernel has tcx)');
});

test.serial('agent - a policy whose selector does not match changes nothing on the node', async (t) => {
  const revision = await apply(icmpDeny('core-only', { role: 'core' }, node.sources[1]));
  await until('the node to reach the revision', async () => (await nodeStatus('edge-1'))?.appliedRevision === revision, 15_000, node);
  t.is(await node.ping(1), 3, 'a policy for role=core does not touch role=edge');
  t.is(await node.ping(0), 0);
});

function dumpMaps(pinDir: string): string {
  return readdirSync(pinDir)
    .sort()
    .map((f) => {
      try {
        return `${f}\n${sh('bpftool', ['map', 'dump', 'pinned', join(pinDir, f)])}`;
      } catch {
        return `${f} (not a map)`;
      }
    })
    .join('\n');
}

/** Whether both policy generations of the ep_meta map pinned at `path` are valid and hold the same tables. */
function bothGenerationsHold(path: string): boolean {
  // bpftool -j gives each element's raw bytes, and its BTF view under `formatted`.
  type Meta = { key: number; value: { valid: number; fingerprint: number[] } };
  const meta = (JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', path])) as { formatted: Meta }[]).map((m) => m.formatted);
  const [a, b] = [meta.find((m) => m.key === 0)?.value, meta.find((m) => m.key === 1)?.value];
  return a?.valid === 1 && b?.valid === 1 && a.fingerprint.join() === b.fingerprint.join();
}

test.serial('agent - an entry that cannot be applied is NACKed with the reason; the maps stay byte for byte', async (t) => {
  await until('connected', async () => (await nodeStatus('edge-1'))?.connected === true, 15_000, node);
  const big = (name: string, base: number): Policy =>
    Policy.fromPartial({
      metadata: { name },
      spec: { nodeSelector: { matchLabels: { role: 'edge' } }, rules: Array.from({ length: 33_000 }, (_, i): Partial<Rule> => ({ priority: base + i, protocol: Protocol.PROTOCOL_TCP, destinationPorts: [{ first: 1 + (i % 65000), last: 0 }], action: Action.ACTION_DENY })) },
    });
  t.teardown(async () => {
    await call(c.intent, c.intent.deletePolicy, { name: 'big-b', validateOnly: false, allowMissing: true });
    const fixed = (await call(c.intent, c.intent.deletePolicy, { name: 'big-a', validateOnly: false, allowMissing: true })).revision;
    await until('recovery', async () => (await nodeStatus('edge-1'))?.appliedRevision === fixed, 30_000, node);
  });
  // 33,000 rules fit: applied.
  const fits = await apply(big('big-a', 100_000));
  await until('the first large policy', async () => (await nodeStatus('edge-1'))?.appliedRevision === fits, 60_000, node);
  const dumps = () => dumpMaps(join(node.pinRoot, 'uplink')) + dumpMaps(join(node.pinRoot, 'workload'));
  // After a whole write the agent brings the idle generation up to date in the background (fresh
  // inner maps, bpf/README.md): the "before" is the datapath once that is done, both generations
  // holding the policy.
  await until('the idle generation brought up to date', () => bothGenerationsHold(join(node.pinRoot, 'uplink', 'ep_meta')), 30_000, node);
  const mapsBefore = dumps();
  // Another 33,000 on top do not.
  const revision = await apply(big('big-b', 200_000));
  await until('the NACK', async () => (await nodeStatus('edge-1'))?.lastErrorRevision === revision, 30_000, node);
  const status = (await nodeStatus('edge-1'))!;
  t.regex(status.lastError, /660\d\d uplink rules select this node; the datapath holds 65536/);
  t.is(status.appliedRevision, fits, 'the previous revision is still the applied one');
  t.is(dumps(), mapsBefore, 'no map changed');
  t.is(await node.ping(0), 0, 'the previous policy is still enforced');
  const rs = await call(c.fleet, c.fleet.getRevisionStatus, { revision, nodeLabelSelector: '' });
  t.is(rs.nodesFailed, 1);
});

test.serial('agent - a tampered or unsigned entry injected on NATS is skipped without a NACK, logged, and changes nothing', async (t) => {
  const status = (await nodeStatus('edge-1'))!;
  const rogue = generateKeyPairSync('ed25519');
  const forged = signLogEntry(
    LogEntry.fromPartial({ revision: status.appliedRevision + 1n, previousHash: Buffer.alloc(32), change: { upserts: [], deletes: ['no-ping-edge'] } }),
    rogue.privateKey,
  );
  const h = headers();
  h.set('Nats-Sequence', String(status.appliedRevision + 1n));
  nc.publish(INTENT_LIVE_SUBJECT, encodeSignedLogEntry(forged), { headers: h });
  nc.publish(INTENT_LIVE_SUBJECT, new Uint8Array([1, 2, 3]), { headers: h });
  const huge = headers();
  huge.set('Nats-Sequence', '9'.repeat(30));
  nc.publish(INTENT_LIVE_SUBJECT, encodeSignedLogEntry(forged), { headers: huge });
  await nc.flush();
  await until('the rejections in the agent log', () => (node.agent!.output.match(/"msg":"rejected log message"/g) ?? []).length >= 3, 15_000, node);
  t.regex(node.agent!.output, /not trusted/);
  const after = (await nodeStatus('edge-1'))!;
  t.is(after.appliedRevision, status.appliedRevision);
  t.is(after.lastErrorRevision, status.lastErrorRevision, 'no NACK for a message that was never in the log');
  t.is(await node.ping(0), 0, 'the forged delete did not lift the deny');
  // The real log still flows afterwards.
  const revision = await apply(icmpDeny('after-forgery', { role: 'nobody' }, node.sources[1]));
  await until('the next real revision', async () => (await nodeStatus('edge-1'))?.appliedRevision === revision, 15_000, node);
  t.is((await nodeStatus('edge-1'))!.lastErrorRevision, status.lastErrorRevision);
});

test.serial('agent - an uplink that is deleted and recreated gets its program back', async (t) => {
  const ifindex = (): number => (JSON.parse(sh('ip', ['-n', node.ns, '-j', 'link', 'show', 'up0'])) as { ifindex: number }[])[0]!.ifindex;
  const before = ifindex();
  node.recreateUplink();
  // A new veth carries no program: whatever is attached to it now, the agent attached. (Not
  // checked for 0 here: the agent's 1 s check may already have run while the pair was made.)
  t.not(ifindex(), before);
  await until('re-attach', () => node.xdpProgramId() > 0, 10_000, node);
  t.is(await node.ping(0), 0);
  t.is(await node.ping(1), 3);
});

test.serial('agent - boots with NATS and controller unreachable and enforces the state file', async (t) => {
  await node.agent!.kill('SIGKILL');
  node.wipeDatapath();
  t.is(node.xdpProgramId(), 0);
  t.is(await node.ping(0), 3, 'a rebooted node with no agent enforces nothing');
  node.mgmt('down');
  await node.startAgent(cp, { role: 'edge', site: 'ams1' });
  t.false(node.agent!.ready.adopted as boolean, 'fresh programs: nothing was pinned');
  await until('attach', () => node.xdpProgramId() > 0, 10_000, node);
  t.is(await node.ping(0), 0, 'the last applied revision is enforced without NATS or controller');
  t.is(await node.ping(1), 3);
  node.mgmt('up');
  await until('reconnect', async () => (await nodeStatus('edge-1'))?.connected === true, 20_000, node);
});
