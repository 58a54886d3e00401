// End to end, everything real: nats-server, the controller process, three agents in network
// namespaces enforcing with eBPF, traffic from the fleet's "internet" namespace, the CLI.
import test from 'ava';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { Action, Policy, Protocol } from '@edgeplane/proto';
import { TestControlPlane, until } from './support/control-plane.js';
import { FleetNetwork, type FleetNode } from './support/fleet.js';
import { call } from './support/grpc.js';

const CLI_MAIN = fileURLToPath(new URL('../packages/cli/dist/main.js', import.meta.url));
const run = promisify(execFile);

let cp: TestControlPlane;
let net: FleetNetwork;
let nodes: FleetNode[];

const LABELS: Record<string, string>[] = [
  { role: 'edge', site: 'ams1' },
  { role: 'edge', site: 'fra1' },
  { role: 'core', site: 'ams1' },
];

test.before(async () => {
  net = new FleetNetwork();
  cp = await TestControlPlane.start();
  nodes = [1, 2, 3].map((i) => net.addNode(i, `e2e-${i}`));
  await Promise.all(nodes.map((n, i) => n.startAgent(cp, LABELS[i]!)));
  await until('three connected agents', async () => (await Promise.all(nodes.map((n) => cp.nodeStatus(n.name)))).every((s) => s?.connected === true), 20_000, output);
});

test.after.always(async () => {
  await net?.remove();
  await cp?.close();
});

function output(): string {
  return [...nodes.map((n) => n.agent?.output ?? ''), cp.controller.output].join('\n');
}

/** Denies ICMP from every node's source 0 on the nodes `selector` picks. */
function noPing(selector: Record<string, string>): Policy {
  return Policy.fromPartial({
    metadata: { name: 'e2e-no-ping', labels: { suite: 'e2e' } },
    spec: {
      nodeSelector: { matchLabels: selector },
      defaultAction: Action.ACTION_ALLOW,
      rules: [{ priority: 10, name: 'no-ping', sourceCidrs: nodes.map((n) => `${n.sources[0]}/32`), protocol: Protocol.PROTOCOL_ICMP, action: Action.ACTION_DENY }],
    },
  });
}

async function converged(revision: bigint): Promise<void> {
  await until(`all nodes at revision ${revision}`, async () => (await Promise.all(nodes.map((n) => cp.nodeStatus(n.name)))).every((s) => s?.appliedRevision === revision), 20_000, output);
}

/** Replies to 3 pings from source 0 and from source 1, per node. */
async function replies(): Promise<[number, number][]> {
  return Promise.all(nodes.map(async (n) => [await n.ping(0), await n.ping(1)] as [number, number]));
}

let created = 0n;

test.serial('e2e - a policy selecting 2 of 3 nodes drops the denied source on exactly those 2', async (t) => {
  t.deepEqual(await replies(), [[3, 3], [3, 3], [3, 3]], 'no policy: everything passes');
  created = await cp.apply(noPing({ role: 'edge' }));
  await converged(created);
  const status = await call(cp.api.fleet, cp.api.fleet.getRevisionStatus, { revision: created, nodeLabelSelector: '' });
  t.like(status, { nodesTotal: 3, nodesApplied: 3, nodesFailed: 0, nodesPending: 0 });
  t.deepEqual(await replies(), [[0, 3], [0, 3], [3, 3]], 'edge nodes drop source 0; the core node does not; source 1 passes everywhere');
});

test.serial('e2e - rule counters reach the controller and edgeplane describe policy', async (t) => {
  await until('fleet counters for both edge nodes', async () => {
    const r = await call(cp.api.fleet, cp.api.fleet.getPolicyCounters, { policy: 'e2e-no-ping', nodeLabelSelector: '', perNode: true });
    const perNode = new Map(r.nodes.map((n) => [n.node, n.counters.reduce((s, c) => s + c.packets, 0n)]));
    return (perNode.get('e2e-1') ?? 0n) >= 3n && (perNode.get('e2e-2') ?? 0n) >= 3n;
  }, 15_000, output);
  const r = await call(cp.api.fleet, cp.api.fleet.getPolicyCounters, { policy: 'e2e-no-ping', nodeLabelSelector: '', perNode: true });
  const fleet = r.fleet.find((c) => c.rule?.priority === 10);
  t.true((fleet?.packets ?? 0n) >= 6n, `fleet-wide packets ${fleet?.packets}`);
  t.is(r.nodes.find((n) => n.node === 'e2e-3')?.counters.reduce((s, c) => s + c.packets, 0n) ?? 0n, 0n, 'the unselected node counted nothing');

  const { stdout } = await run(process.execPath, [CLI_MAIN, 'describe', 'policy', 'e2e-no-ping', '--server', cp.address, ...cp.cliTlsArgs], { timeout: 20_000 });
  const lines = stdout.split('\n');
  const header = lines.findIndex((l) => /\bPRIORITY\b.*\bPACKETS\b/.test(l));
  t.true(header >= 0, stdout);
  const columns = lines[header]!.trim().split(/\s+/);
  const row = lines.slice(header + 1).find((l) => l.trim().split(/\s+/)[1] === 'no-ping');
  t.truthy(row, stdout);
  const packets = BigInt(row!.trim().split(/\s+/)[columns.indexOf('PACKETS')]!);
  t.true(packets >= 6n, `describe shows ${packets} packets for the rule\n${stdout}`);
  t.regex(stdout, /Nodes \(2 selected; 2 at revision/);
});

test.serial('e2e - an update converges on all 3 nodes and moves enforcement to the newly selected ones', async (t) => {
  const updated = await cp.apply(noPing({ site: 'ams1' }));
  t.true(updated > created);
  await converged(updated);
  t.deepEqual(await replies(), [[0, 3], [3, 3], [0, 3]], 'ams1 nodes drop source 0; fra1 no longer does');
  const status = await call(cp.api.fleet, cp.api.fleet.getRevisionStatus, { revision: updated, nodeLabelSelector: '' });
  t.like(status, { nodesTotal: 3, nodesApplied: 3, nodesFailed: 0 });
});

test.serial('e2e - delete restores traffic on every node', async (t) => {
  const deleted = await cp.delete('e2e-no-ping');
  await converged(deleted);
  t.deepEqual(await replies(), [[3, 3], [3, 3], [3, 3]]);
  for (const n of nodes) t.true(n.xdpProgramId() > 0, `${n.name}: the program stays attached with an empty rule set`);
});

test.serial('e2e - an emergency block drops a source on the selected node only; its drops reach GetNode and edgeplane describe node; unblock lifts it', async (t) => {
  const cli = (...args: string[]) => run(process.execPath, [CLI_MAIN, ...args, '--server', cp.address, ...cp.cliTlsArgs], { timeout: 20_000 });
  const source = nodes[1]!.sources[0]!;
  const made = await cli('block', `${source}/32`, '--for', '10m', '--selector', 'site=fra1', '--reason', 'e2e scanner');
  const id = /^block (\S+) until/.exec(made.stdout)?.[1];
  t.truthy(id, made.stdout);
  await until('the block enforced on e2e-2', async () => (await nodes[1]!.ping(0)) === 0, 20_000, output);
  t.deepEqual(await replies(), [[3, 3], [0, 3], [3, 3]], 'only the fra1 node drops source 0');

  const blocklist = async (name: string) => (await call(cp.api.fleet, cp.api.fleet.getNode, { name })).blocklists.find((b) => b.role === 'uplink');
  await until('e2e-2 reports its blocklist drops', async () => ((await blocklist('e2e-2'))?.ipv4DroppedPackets ?? 0n) >= 3n, 15_000, output);
  const reported = (await blocklist('e2e-2'))!;
  t.is(reported.ipv4Entries, 1n);
  t.true(reported.ipv4DroppedBytes >= reported.ipv4DroppedPackets * 28n, `bytes ${reported.ipv4DroppedBytes}`);
  t.is((await blocklist('e2e-1'))?.ipv4DroppedPackets ?? 0n, 0n, 'an unselected node dropped nothing');
  t.is((await blocklist('e2e-1'))?.ipv4Entries ?? 0n, 0n, 'an unselected node holds no prefix');

  const { stdout } = await cli('describe', 'node', 'e2e-2');
  const lines = stdout.split('\n');
  const header = lines.findIndex((l) => /\bROLE\b.*\bIPV4-PREFIXES\b.*\bDROPPED-IPV4\b/.test(l));
  t.true(header >= 0 && lines[header - 1] === 'Source blocklist:', stdout);
  const row = lines[header + 1]!.trim().split(/\s+/);
  t.is(row[0], 'uplink', stdout);
  t.is(row[1], '1', stdout);
  t.true(BigInt(row[3]!) >= 3n, stdout);

  await cli('unblock', id!);
  await until('the block lifted on e2e-2', async () => (await nodes[1]!.ping(0)) === 3, 20_000, output);
  await until('e2e-2 reports an empty blocklist', async () => (await blocklist('e2e-2'))?.ipv4Entries === 0n, 15_000, output);
});
