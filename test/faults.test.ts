// Faults with the whole system running: one control plane (nats-server + controller process)
// and three agents in network namespaces enforcing with eBPF, shared by the tests in order.
import test from 'ava';
import * as grpc from '@grpc/grpc-js';
import { Action, ApplyPolicyRequest, IntentServiceClient, Policy, Protocol, type ApplyPolicyResponse } from '@edgeplane/proto';
import { TestControlPlane, until } from './support/control-plane.js';
import { FleetNetwork, type FleetNode } from './support/fleet.js';
import { call } from './support/grpc.js';

let cp: TestControlPlane;
let net: FleetNetwork;
let nodes: FleetNode[];
/** Per node, every agent log line since the agent started (`output` keeps only the newest). */
const logs = new Map<string, string[]>();

const LABELS: Record<string, string>[] = [
  { role: 'edge', site: 'ams1' },
  { role: 'edge', site: 'fra1' },
  { role: 'edge', site: 'lon1' },
];

test.before(async () => {
  net = new FleetNetwork();
  cp = await TestControlPlane.start();
  nodes = [1, 2, 3].map((i) => net.addNode(i, `fault-${i}`));
  await Promise.all(
    nodes.map(async (n, i) => {
      const lines: string[] = [];
      logs.set(n.name, lines);
      const agent = await n.startAgent(cp, LABELS[i]!);
      agent.onLine((l) => lines.push(l));
    }),
  );
  await until('three connected agents', async () => (await statuses()).every((s) => s?.connected === true), 20_000, output);
});

test.after.always(async () => {
  await net?.remove();
  await cp?.close();
});

function output(): string {
  return [...nodes.map((n) => n.agent?.output ?? ''), cp.controller.output, cp.nats.log].join('\n');
}

function statuses() {
  return Promise.all(nodes.map((n) => cp.nodeStatus(n.name)));
}

async function converged(revision: bigint, ms = 30_000, which: FleetNode[] = nodes): Promise<void> {
  await until(`${which.map((n) => n.name).join(',')} at revision ${revision}`, async () => (await Promise.all(which.map((n) => cp.nodeStatus(n.name)))).every((s) => s?.appliedRevision === revision), ms, output);
}

/** The revisions an agent logged as applied, in order. */
function appliedRevisions(node: FleetNode): bigint[] {
  return (logs.get(node.name) ?? []).flatMap((l) => {
    const m = /"msg":"applied","revision":"(\d+)"/.exec(l);
    return m ? [BigInt(m[1]!)] : [];
  });
}

const increasing = (xs: bigint[]): boolean => xs.every((x, i) => i === 0 || x > xs[i - 1]!);

/** A one-rule policy for every node: deny UDP to `port`. */
function churn(name: string, port: number): Policy {
  return Policy.fromPartial({
    metadata: { name },
    spec: { nodeSelector: { matchLabels: { role: 'edge' } }, rules: [{ priority: 100, protocol: Protocol.PROTOCOL_UDP, destinationPorts: [{ first: port, last: port }], action: Action.ACTION_DENY }] },
  });
}

type Outcome = ApplyPolicyResponse | grpc.ServiceError;
const acknowledged = (m: Map<string, Outcome>): [string, ApplyPolicyResponse][] => [...m].filter((e): e is [string, ApplyPolicyResponse] => 'revision' in e[1]);

test.serial('faults - controller kill -9 during 100 applies: acknowledged applies survive once; agents converge after the restart', async (t) => {
  const client = new IntentServiceClient(cp.address, grpc.credentials.createSsl(cp.adminTls.ca, cp.adminTls.key, cp.adminTls.cert));
  t.teardown(() => client.close());
  const names = Array.from({ length: 100 }, (_, i) => `burst-${i}`);
  const results = new Map<string, Outcome>();
  const queue = [...names];
  const burst = Promise.all(
    Array.from({ length: 4 }, async () => {
      for (let name = queue.shift(); name; name = queue.shift()) {
        const policy = churn(name, 3000 + names.indexOf(name));
        results.set(name, await call(client, client.applyPolicy, ApplyPolicyRequest.fromPartial({ policy })).catch((e: unknown) => e as grpc.ServiceError));
      }
    }),
  );
  await until('20 acknowledged applies', () => acknowledged(results).length >= 20, 20_000, output);
  await cp.controller.kill('SIGKILL');
  await burst;
  const ok = acknowledged(results);
  t.true(ok.length >= 20 && ok.length < 100, `the kill landed mid-burst (${ok.length} acknowledged)`);

  await cp.controller.start();
  const { last, upserts } = await cp.audit();
  for (const [name, r] of ok) t.deepEqual(upserts.get(name), [r.revision], `${name} is in the log once, at the revision its response named`);
  for (const [name, list] of upserts) t.is(list.length, 1, `${name} is stored once`);
  t.true(last >= BigInt(ok.length));

  await converged(last, 40_000);
  const rs = await call(cp.api.fleet, cp.api.fleet.getRevisionStatus, { revision: last, nodeLabelSelector: '' });
  t.like(rs, { nodesTotal: 3, nodesApplied: 3, nodesFailed: 0 });
});

test.serial('faults - nats-server kill -9 and restart: every agent catches up to the newest revision, none skipped or rejected', async (t) => {
  const mark = new Map(nodes.map((n) => [n.name, appliedRevisions(n).length]));
  const before = await cp.apply(churn('nats-pre', 4000));
  await converged(before);

  // Writes keep coming while NATS dies and returns; some fail, the rest must reach every node.
  let stop = false;
  let failed = 0;
  const written: bigint[] = [];
  const writer = (async () => {
    for (let i = 0; !stop; i++) {
      const r = await cp.apply(churn(`nats-${i % 5}`, 4100 + i)).catch(() => undefined);
      if (r !== undefined) written.push(r);
      else failed++;
      await new Promise((res) => setTimeout(res, r === undefined ? 100 : 20));
    }
  })();
  await new Promise((r) => setTimeout(r, 300));
  await cp.nats.kill('SIGKILL');
  await new Promise((r) => setTimeout(r, 1000));
  await cp.nats.restart();
  await until('writes after the restart', () => written.length > 0 && written.at(-1)! > before + 5n, 30_000, output).catch((e: unknown) => {
    stop = true;
    throw e;
  });
  const afterRestart = written.length;
  await until('10 more writes', () => written.length >= afterRestart + 10, 20_000, output).finally(() => (stop = true));
  await writer;

  const { last } = await cp.audit();
  t.is(last, written.at(-1) ?? -1n, 'the newest acknowledged write is the end of the log');
  t.log(`${written.length} writes acknowledged across the outage, ${failed} refused while NATS was down`);
  await converged(last, 40_000);
  for (const [i, s] of (await statuses()).entries()) {
    const n = nodes[i]!;
    t.is(s?.lastError, '', `${n.name} reported no error`);
    const applied = appliedRevisions(n).slice(mark.get(n.name));
    t.true(increasing(applied), `${n.name} applied in order: ${applied.join(',')}`);
    t.is(applied.at(-1), last, `${n.name} applied the newest revision`);
    const lines = logs.get(n.name)!.join('\n');
    t.notRegex(lines, /"msg":"(rejected|rejected log message|resynced the intent log)"/, `${n.name} saw no gap, fork or bad entry`);
  }
});

test.serial('faults - one agent cut off while 50 changes land converges on the exact revision; the others stay current throughout', async (t) => {
  const [a, b, cut] = nodes as [FleetNode, FleetNode, FleetNode];
  const start = await cp.apply(churn('link', 5000));
  await converged(start);
  const mark = appliedRevisions(cut).length;
  cut.mgmt('down');
  t.teardown(() => cut.mgmt('up'));
  let last = 0n;
  let worstLagMs = 0;
  for (let i = 1; i <= 50; i++) {
    last = await cp.apply(churn('link', 5000 + i));
    const t0 = Date.now();
    await converged(last, 10_000, [a, b]);
    worstLagMs = Math.max(worstLagMs, Date.now() - t0);
  }
  t.log(`connected nodes reached each of 50 revisions within ${worstLagMs} ms`);
  t.not((await cp.nodeStatus(cut.name))?.appliedRevision, last, 'the cut-off node did not get the changes');
  t.is(appliedRevisions(cut).length, mark, 'nor applied anything while cut off');
  cut.mgmt('up');
  await converged(last, 30_000, [cut]);
  // The backlog is coalesced: applied once as its final state when it comes as one burst (no
  // gap over the agent's coalescing wait, 25 ms). An entry that arrives alone before the rest is
  // applied first: seen once in CI on a loaded machine, [45, 94] (the cause was not found; a
  // resumed TCP connection delivering its first segment alone would do it). Never one apply per
  // entry.
  const applied = appliedRevisions(cut).slice(mark);
  t.log(`applies after the reconnect: ${applied.join(', ')}`);
  t.is(applied.at(-1), last, 'the last apply is of exactly the newest revision');
  t.true(applied.length <= 3, `coalesced: ${applied.length} applies for 50 entries`);
  t.deepEqual(applied, [...applied].sort((x, y) => (x < y ? -1 : x > y ? 1 : 0)), 'in order');
  for (const s of await statuses()) t.is(s?.appliedRevision, last);
});

test.serial('faults - agent kill -9 under traffic: enforcement continues and the restarted agent re-adopts the same program', async (t) => {
  const node = nodes[0]!;
  const revision = await cp.apply(
    Policy.fromPartial({
      metadata: { name: 'kill-no-ping' },
      spec: { nodeSelector: { matchLabels: { role: 'edge' } }, rules: [{ priority: 10, sourceCidrs: [`${node.sources[0]}/32`], protocol: Protocol.PROTOCOL_ICMP, action: Action.ACTION_DENY }] },
    }),
  );
  await converged(revision);
  t.is(await node.ping(0), 0);
  t.is(await node.ping(1), 3);
  const idBefore = node.xdpProgramId();
  t.true(idBefore > 0);
  const count = 40;
  const denied = net.topo.ping(net.inet, node.uplinkIp, { count, source: node.sources[0], intervalS: 0.05, waitS: 1 });
  const allowed = net.topo.ping(net.inet, node.uplinkIp, { count, source: node.sources[1], intervalS: 0.05, waitS: 1 });
  await new Promise((r) => setTimeout(r, 400));
  await node.agent!.kill('SIGKILL');
  t.is(node.agent!.pid, undefined, 'the agent is dead');
  await new Promise((r) => setTimeout(r, 800));
  t.is(node.xdpProgramId(), idBefore, 'still attached while the agent is dead');
  await node.agent!.start();
  t.is(await denied, 0, 'no denied packet passed');
  t.is(await allowed, count, 'every allowed packet passed');
  t.is(node.xdpProgramId(), idBefore, 'the restarted agent re-adopted the same program');
  t.true(node.agent!.ready.adopted as boolean);
  t.is(node.agent!.ready.xdpProgramId, idBefore);
  await until('the restarted agent reports the revision', async () => (await cp.nodeStatus(node.name))?.connected === true && (await cp.nodeStatus(node.name))?.appliedRevision === revision, 20_000, output);
});
